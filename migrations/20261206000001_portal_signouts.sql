-- Portal sessions signed out before they expired. A session is a signed cookie that carries its
-- own expiry: signing out makes the browser forget it, and its row here makes every replica
-- refuse any copy of it that survived elsewhere (a shared computer, a proxy's log). A row is
-- removed once its session would have expired anyway.
CREATE TABLE portal_signouts (
    session_id TEXT PRIMARY KEY,
    expires_at TEXT NOT NULL
);
CREATE INDEX portal_signouts_by_expiry ON portal_signouts (expires_at);
