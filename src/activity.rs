//! What this instance saw its deliveries come to, for the people who look at one endpoint: the
//! last attempt per subscription (the portal's "last delivery"), and a way to wait for the first
//! attempt of one event (the portal's "Send test event" shows its outcome). In memory: it is a
//! view of this instance's attempts, not a record (the delivery log is the record).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::delivery::AttemptRecord;

/// One attempt as the portal shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastAttempt {
    pub event_id: String,
    pub attempt: u32,
    pub at: String,
    pub duration_ms: u64,
    /// The endpoint's status, when it answered.
    pub status: Option<u16>,
    /// What went wrong; `None` for a success.
    pub error: Option<String>,
    /// Whether another attempt will follow (a retry is scheduled).
    pub will_retry: bool,
}

impl LastAttempt {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// Most waiters at once: a portal that asks for outcomes nobody delivers must not grow this.
const MAX_WAITERS: usize = 1024;

#[derive(Default)]
pub struct Activity {
    last: Mutex<HashMap<String, LastAttempt>>,
    waiters: Mutex<HashMap<String, oneshot::Sender<LastAttempt>>>,
}

impl Activity {
    /// Records an attempt of `event_id` to `subscription_id`.
    pub fn attempted(
        &self,
        subscription_id: &str,
        event_id: &str,
        record: &AttemptRecord,
        will_retry: bool,
    ) {
        let attempt = LastAttempt {
            event_id: event_id.to_string(),
            attempt: record.attempt,
            at: record.started_at.clone(),
            duration_ms: record.duration_ms,
            status: record.status,
            error: record.error.clone(),
            will_retry,
        };
        if let Some(waiter) = self.waiters.lock().expect("activity lock").remove(event_id) {
            let _ = waiter.send(attempt.clone());
        }
        self.last
            .lock()
            .expect("activity lock")
            .insert(subscription_id.to_string(), attempt);
    }

    /// The last attempt to `subscription_id` this instance made.
    pub fn last(&self, subscription_id: &str) -> Option<LastAttempt> {
        self.last
            .lock()
            .expect("activity lock")
            .get(subscription_id)
            .cloned()
    }

    /// Registers interest in the first attempt of `event_id` (before the event is sent).
    pub fn expect(&self, event_id: &str) -> Option<oneshot::Receiver<LastAttempt>> {
        let mut waiters = self.waiters.lock().expect("activity lock");
        if waiters.len() >= MAX_WAITERS {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        waiters.insert(event_id.to_string(), tx);
        Some(rx)
    }

    /// Waits up to `limit` for the attempt `expect` registered; `None` if it did not come here
    /// in time (another instance made it, or it is still under way).
    pub async fn wait(
        &self,
        event_id: &str,
        rx: oneshot::Receiver<LastAttempt>,
        limit: Duration,
    ) -> Option<LastAttempt> {
        let got = tokio::time::timeout(limit, rx)
            .await
            .ok()
            .and_then(Result::ok);
        self.waiters.lock().expect("activity lock").remove(event_id);
        got
    }
}
