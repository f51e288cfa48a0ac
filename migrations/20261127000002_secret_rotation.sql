-- Secret rotation: the secret before the last rotation keeps signing (next to the new one)
-- until previous_secret_expires_at (RFC 3339 UTC). NULL when there is none.
ALTER TABLE subscriptions ADD COLUMN previous_secret TEXT;
ALTER TABLE subscriptions ADD COLUMN previous_secret_expires_at TEXT;
