//! Per-endpoint concurrency. An endpoint that hangs keeps its attempts in flight for the whole
//! `DELIVERY_TIMEOUT`, and each holds a prefetched message; without a cap, one such endpoint
//! would fill the prefetch window and stall every other account.
//!
//! Each subscription may have `max` attempts in flight. A delivery that finds its endpoint full
//! waits up to [`WAIT_FOR_SLOT`] for a slot — a healthy endpoint frees one within milliseconds —
//! and is otherwise deferred to a delay queue (no attempt spent), so a stuck endpoint's backlog
//! waits in the broker instead of in the prefetch window. Once a wait has timed out, the endpoint
//! counts as stuck for [`STUCK_FOR`]: while it stays full, deliveries to it are deferred at once
//! instead of each holding a prefetched message for the whole wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a delivery waits for its endpoint to free a slot before it is deferred.
pub const WAIT_FOR_SLOT: Duration = Duration::from_millis(250);
/// How long an endpoint whose wait timed out is treated as stuck while it stays full.
pub const STUCK_FOR: Duration = Duration::from_secs(1);

struct Endpoint {
    slots: Arc<Semaphore>,
    stuck_until: Mutex<Option<Instant>>,
}

pub struct EndpointLimiter {
    max: usize,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
}

impl EndpointLimiter {
    pub fn new(max: usize) -> EndpointLimiter {
        EndpointLimiter {
            max,
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    fn endpoint(&self, key: &str) -> Arc<Endpoint> {
        let mut endpoints = self.endpoints.lock().expect("limiter lock");
        if let Some(endpoint) = endpoints.get(key) {
            return endpoint.clone();
        }
        let endpoint = Arc::new(Endpoint {
            slots: Arc::new(Semaphore::new(self.max)),
            stuck_until: Mutex::new(None),
        });
        endpoints.insert(key.to_string(), endpoint.clone());
        endpoint
    }

    /// A slot for `key`, waiting up to `wait` (not at all while the endpoint counts as stuck);
    /// `None` if the endpoint stayed full.
    pub async fn acquire(&self, key: &str, wait: Duration) -> Option<OwnedSemaphorePermit> {
        let endpoint = self.endpoint(key);
        if let Ok(permit) = endpoint.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        let stuck = endpoint
            .stuck_until
            .lock()
            .expect("limiter lock")
            .is_some_and(|until| Instant::now() < until);
        if stuck {
            return None;
        }
        match tokio::time::timeout(wait, endpoint.slots.clone().acquire_owned()).await {
            Ok(permit) => permit.ok(),
            Err(_) => {
                *endpoint.stuck_until.lock().expect("limiter lock") =
                    Some(Instant::now() + STUCK_FOR);
                None
            }
        }
    }

    /// Attempts in flight to `key`.
    #[cfg(test)]
    fn in_flight(&self, key: &str) -> usize {
        let endpoints = self.endpoints.lock().expect("limiter lock");
        endpoints
            .get(key)
            .map_or(0, |e| self.max - e.slots.available_permits())
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
        assert_eq!(limiter.in_flight("a"), 2);

        // A slot freed while waiting is taken.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(a1);
        });
        let a3 = limiter.acquire("a", Duration::from_secs(1)).await;
        assert!(a3.is_some());
        release.await.unwrap();

        assert!(
            limiter.acquire("a", wait).await.is_none(),
            "a is full and stays full"
        );
        let _b = limiter.acquire("b", wait).await.expect("b is independent");
    }

    #[tokio::test]
    async fn a_stuck_endpoint_is_refused_at_once_until_it_frees_a_slot() {
        let limiter = EndpointLimiter::new(1);
        let held = limiter.acquire("a", Duration::ZERO).await.unwrap();
        assert!(
            limiter
                .acquire("a", Duration::from_millis(10))
                .await
                .is_none(),
            "timed out: now stuck"
        );
        let started = Instant::now();
        assert!(limiter.acquire("a", Duration::from_secs(5)).await.is_none());
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "no wait while stuck"
        );
        drop(held);
        assert!(
            limiter.acquire("a", Duration::ZERO).await.is_some(),
            "a free slot is taken even while marked stuck"
        );
    }
}
