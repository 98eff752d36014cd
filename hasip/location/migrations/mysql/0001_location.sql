-- The location table, with the columns of the seed's (Kamailio usrloc)
-- table that hasip fills, plus the change-feed fields (version, node).
-- Times are UTC.
CREATE TABLE IF NOT EXISTS location (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    ruid VARCHAR(64) NOT NULL,
    username VARCHAR(128) NOT NULL,
    domain VARCHAR(128) DEFAULT NULL,
    contact VARCHAR(1024) NOT NULL,
    received VARCHAR(128) DEFAULT NULL,
    path VARCHAR(1024) DEFAULT NULL,
    expires DATETIME(3) NOT NULL,
    q FLOAT NOT NULL DEFAULT 1.0,
    callid VARCHAR(255) NOT NULL,
    cseq INT NOT NULL,
    last_modified DATETIME(3) NOT NULL,
    flags INT NOT NULL DEFAULT 0,
    user_agent VARCHAR(255) NOT NULL DEFAULT '',
    socket VARCHAR(128) DEFAULT NULL,
    instance VARCHAR(255) DEFAULT NULL,
    reg_id INT NOT NULL DEFAULT 0,
    version BIGINT NOT NULL DEFAULT 0,
    node VARCHAR(64) NOT NULL DEFAULT '',
    UNIQUE KEY ruid_idx (ruid),
    KEY account_idx (username, domain),
    KEY expires_idx (expires)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
