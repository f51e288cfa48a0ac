-- One schema for SQLite and PostgreSQL (the store talks to both through sqlx's Any driver):
-- text ids, text timestamps (RFC 3339 UTC, sortable), JSON as text, booleans as 0/1.
CREATE TABLE subscriptions (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL,
    url         TEXT NOT NULL,
    events      TEXT NOT NULL,
    enabled     BIGINT NOT NULL,
    description TEXT,
    secret      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX subscriptions_by_account ON subscriptions (account_id, id);

CREATE TABLE delivery_logs (
    id               TEXT PRIMARY KEY,
    event_id         TEXT NOT NULL,
    account_id       TEXT,
    subscription_id  TEXT,
    url              TEXT,
    event            TEXT,
    payload          TEXT NOT NULL,
    reason           TEXT NOT NULL,
    detail           TEXT,
    attempts         TEXT NOT NULL,
    dead_lettered_at TEXT NOT NULL,
    replayed_at      TEXT
);
CREATE INDEX delivery_logs_by_account ON delivery_logs (account_id, id);
CREATE INDEX delivery_logs_by_subscription ON delivery_logs (subscription_id, id);
CREATE INDEX delivery_logs_by_event ON delivery_logs (event, id);
