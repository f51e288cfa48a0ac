-- The key that signs portal links and sessions when PORTAL_KEY is not set (allowed on a loopback
-- LISTEN_ADDR only): kept in the store, so the service and the operator CLI, which share it,
-- sign and check with the same key. One row.
CREATE TABLE portal_keys (
    id         BIGINT PRIMARY KEY,
    secret     TEXT NOT NULL,
    created_at TEXT NOT NULL
);

