-- Bulk replays run in the background (`POST /v1/replay-jobs`). The replica running a job adds
-- its progress after every batch and reads `cancel_requested`, which any replica's API may set.
-- A job still `running` whose `updated_at` stopped moving belonged to a replica that went away.
CREATE TABLE replay_jobs (
    id               TEXT PRIMARY KEY,
    state            TEXT NOT NULL,
    selection        TEXT NOT NULL,
    rate             BIGINT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    finished_at      TEXT,
    matched          BIGINT,
    replayed         BIGINT NOT NULL,
    skipped          BIGINT NOT NULL,
    failed           BIGINT NOT NULL,
    error            TEXT,
    cancel_requested BIGINT NOT NULL
);
CREATE INDEX replay_jobs_by_time ON replay_jobs (created_at);
