"""The node in its cluster: VIP ownership and the merge rule of replicated records."""
