"""Dialog tracking: every INVITE dialog through the node (issue 6's state,
started in issue 4 for the dispatcher's active-call counts)."""
