"""State replication between cluster nodes (issue 6): the wire protocol,
records and their merge rule, links to peers, the replicator."""
