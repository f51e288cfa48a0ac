-- When each record was replayed, kept apart from the record. A replay's claim used to rewrite
-- the record's whole row (its payload and attempts, a few KiB) to set `replayed_at`: on SQLite a
-- page or two of WAL per record, on PostgreSQL a new version of the row and an entry in each of
-- its indexes. A claim now inserts a short row here. `delivery_logs.replayed_at` keeps what was
-- replayed before (copied here too) and what a 0.4 replica still marks during a rolling upgrade;
-- a record is replayed when either says so.
CREATE TABLE delivery_log_replays (
    id          TEXT PRIMARY KEY,
    replayed_at TEXT NOT NULL
);

INSERT INTO delivery_log_replays (id, replayed_at)
    SELECT id, replayed_at FROM delivery_logs WHERE replayed_at IS NOT NULL;
