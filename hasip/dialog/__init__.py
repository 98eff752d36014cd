"""Dialog tracking: every INVITE dialog through the node (replicated to the
cluster; the dispatcher's active-call counts, CDRs and in-dialog keepalives
read it)."""
