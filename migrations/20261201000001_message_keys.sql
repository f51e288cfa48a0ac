-- Keys of the MAC on the service's own broker messages (delivery tasks and dead letters), shared
-- by every instance and the operator CLI through the store. The highest id not retired signs;
-- every key not retired verifies. retires_at: RFC 3339 UTC, set when a newer key is created.
CREATE TABLE message_keys (
    id         BIGINT PRIMARY KEY,
    secret     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    retires_at TEXT
);

-- Whether a delivery-log record's content was verified as the service's own: 1 yes, 0 no (kept
-- for inspection, never replayable), NULL stored before this version checked (never replayable:
-- nothing shows such a record was not forged).
ALTER TABLE delivery_logs ADD COLUMN trusted BIGINT;
