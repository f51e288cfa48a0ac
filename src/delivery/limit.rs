//! Per-endpoint concurrency. An endpoint that hangs keeps its attempts in flight for the whole
//! `DELIVERY_TIMEOUT`, and each holds a prefetched message; without a cap, one such endpoint
//! would fill the prefetch window and stall every other account.
//!
//! Each subscription may have `max` attempts in flight. A delivery that finds its endpoint full
//! waits up to [`WAIT_FOR_SLOT`] for a slot — a healthy endpoint frees one within milliseconds —
//! and is otherwise deferred to a delay queue (no attempt spent), so a stuck endpoint's backlog
//! waits in the broker instead of in the prefetch window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a delivery waits for its endpoint to free a slot before it is deferred.
pub const WAIT_FOR_SLOT: Duration = Duration::from_millis(250);

pub struct EndpointLimiter {
    max: usize,
    endpoints: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl EndpointLimiter {
    pub fn new(max: usize) -> EndpointLimiter {
        EndpointLimiter {
            max,
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    fn semaphore(&self, key: &str) -> Arc<Semaphore> {
        let mut endpoints = self.endpoints.lock().expect("limiter lock");
        if let Some(sem) = endpoints.get(key) {
            return sem.clone();
        }
        let sem = Arc::new(Semaphore::new(self.max));
        endpoints.insert(key.to_string(), sem.clone());
        sem
    }

    /// A slot for `key`, waiting up to `wait`; `None` if the endpoint stayed full.
    pub async fn acquire(&self, key: &str, wait: Duration) -> Option<OwnedSemaphorePermit> {
        let sem = self.semaphore(key);
        if let Ok(permit) = sem.clone().try_acquire_owned() {
            return Some(permit);
        }
        tokio::time::timeout(wait, sem.acquire_owned())
            .await
            .ok()?
            .ok()
    }

    /// Attempts in flight to `key`.
    pub fn in_flight(&self, key: &str) -> usize {
        let endpoints = self.endpoints.lock().expect("limiter lock");
        endpoints
            .get(key)
            .map_or(0, |s| self.max - s.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_endpoint_waits_briefly_then_gives_up_and_others_are_independent() {
        let limiter = EndpointLimiter::new(2);
        let wait = Duration::from_millis(20);
        let a1 = limiter.acquire("a", wait).await.unwrap();
        let _a2 = limiter.acquire("a", wait).await.unwrap();
        assert!(limiter.acquire("a", wait).await.is_none(), "a is full");
        let _b = limiter.acquire("b", wait).await.expect("b is independent");
        assert_eq!(limiter.in_flight("a"), 2);

        // A slot freed while waiting is taken.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(a1);
        });
        assert!(limiter.acquire("a", Duration::from_secs(1)).await.is_some());
        release.await.unwrap();
    }
}
