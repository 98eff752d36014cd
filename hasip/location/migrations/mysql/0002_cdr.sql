-- Call detail records: one row per ended dialog (the seed's statistics
-- store). The dialog id is the key, so a record written twice (two nodes,
-- a retry after a lost commit) is stored once. Times are UTC.
CREATE TABLE IF NOT EXISTS cdr (
    dialog_id VARCHAR(64) NOT NULL PRIMARY KEY,
    call_id VARCHAR(255) NOT NULL,
    from_tag VARCHAR(128) NOT NULL,
    to_tag VARCHAR(128) NOT NULL DEFAULT '',
    from_uri VARCHAR(255) NOT NULL,
    to_uri VARCHAR(255) NOT NULL,
    request_uri VARCHAR(255) NOT NULL,
    caller VARCHAR(128) NOT NULL DEFAULT '',
    destination VARCHAR(255) NOT NULL DEFAULT '',
    socket VARCHAR(128) NOT NULL DEFAULT '',
    nat TINYINT NOT NULL DEFAULT 0,
    started DATETIME(3) NOT NULL,
    answered DATETIME(3) DEFAULT NULL,
    ended DATETIME(3) NOT NULL,
    duration DOUBLE NOT NULL DEFAULT 0,
    end_reason VARCHAR(16) NOT NULL,
    end_status SMALLINT NOT NULL DEFAULT 0,
    node VARCHAR(64) NOT NULL DEFAULT '',
    KEY cdr_started (started)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
