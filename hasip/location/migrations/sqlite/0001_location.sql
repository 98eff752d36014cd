-- The location table (see ../mysql/0001_location.sql); times are seconds
-- since the epoch.
CREATE TABLE IF NOT EXISTS location (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ruid TEXT NOT NULL UNIQUE,
    username TEXT NOT NULL,
    domain TEXT,
    contact TEXT NOT NULL,
    received TEXT,
    path TEXT,
    expires REAL NOT NULL,
    q REAL NOT NULL DEFAULT 1.0,
    callid TEXT NOT NULL,
    cseq INTEGER NOT NULL,
    last_modified REAL NOT NULL,
    flags INTEGER NOT NULL DEFAULT 0,
    user_agent TEXT NOT NULL DEFAULT '',
    socket TEXT,
    instance TEXT,
    reg_id INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0,
    node TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS location_account ON location (username, domain);
CREATE INDEX IF NOT EXISTS location_expires ON location (expires);
