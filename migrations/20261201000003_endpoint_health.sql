-- Endpoint health. Why a subscription is disabled (NULL while it is enabled): 'manual' (through
-- the API or the portal) or 'auto' (the automatic-disable rule), and since when.
ALTER TABLE subscriptions ADD COLUMN disabled_reason TEXT;
ALTER TABLE subscriptions ADD COLUMN disabled_at TEXT;

-- Attempts per subscription and minute, summed over every replica (each adds its own counts
-- every few seconds). lat_0 .. lat_11 count attempts by duration: up to 5, 10, 25, 50, 100, 250,
-- 500, 1000, 2500, 5000, 10000 ms, and longer. Rows older than a day are deleted.
CREATE TABLE endpoint_minutes (
    subscription_id TEXT NOT NULL,
    minute          TEXT NOT NULL,
    attempts        BIGINT NOT NULL,
    successes       BIGINT NOT NULL,
    lat_0 BIGINT NOT NULL, lat_1 BIGINT NOT NULL, lat_2 BIGINT NOT NULL, lat_3 BIGINT NOT NULL,
    lat_4 BIGINT NOT NULL, lat_5 BIGINT NOT NULL, lat_6 BIGINT NOT NULL, lat_7 BIGINT NOT NULL,
    lat_8 BIGINT NOT NULL, lat_9 BIGINT NOT NULL, lat_10 BIGINT NOT NULL, lat_11 BIGINT NOT NULL,
    PRIMARY KEY (subscription_id, minute)
);

-- The latest of each subscription's attempts (any replica's), and what the automatic-disable rule
-- reads: deliveries that failed every attempt since the last success, and since when it fails.
CREATE TABLE endpoint_state (
    subscription_id TEXT PRIMARY KEY,
    last_attempt_at TEXT,
    last_status     BIGINT,
    last_error      TEXT,
    last_success_at TEXT,
    exhausted       BIGINT NOT NULL,
    failing_since   TEXT
);
