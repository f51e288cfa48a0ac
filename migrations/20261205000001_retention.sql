-- The retention purge (DELIVERY_LOG_RETENTION) finds records by when they were dead-lettered;
-- `since`/`until` filters use it too.
CREATE INDEX delivery_logs_by_time ON delivery_logs (dead_lettered_at);
