"""State replication between cluster nodes: the wire protocol,
records and their merge rule, links to peers, the replicator."""
