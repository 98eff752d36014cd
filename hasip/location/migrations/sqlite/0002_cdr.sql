-- Call detail records: one row per ended dialog (see ../mysql/0002_cdr.sql);
-- times are seconds since the epoch. The dialog id is the key, so a record
-- written twice (two nodes, a retry) is stored once.
CREATE TABLE IF NOT EXISTS cdr (
    dialog_id TEXT PRIMARY KEY,
    call_id TEXT NOT NULL,
    from_tag TEXT NOT NULL,
    to_tag TEXT NOT NULL DEFAULT '',
    from_uri TEXT NOT NULL,
    to_uri TEXT NOT NULL,
    request_uri TEXT NOT NULL,
    caller TEXT NOT NULL DEFAULT '',
    destination TEXT NOT NULL DEFAULT '',
    socket TEXT NOT NULL DEFAULT '',
    nat INTEGER NOT NULL DEFAULT 0,
    started REAL NOT NULL,
    answered REAL,
    ended REAL NOT NULL,
    duration REAL NOT NULL DEFAULT 0,
    end_reason TEXT NOT NULL,
    end_status INTEGER NOT NULL DEFAULT 0,
    node TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS cdr_started ON cdr (started);
