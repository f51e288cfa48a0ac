//! Per-endpoint concurrency. An endpoint that hangs keeps its attempts in flight for the whole
//! `DELIVERY_TIMEOUT`, and each holds a prefetched message; without a cap, one such endpoint
//! would fill the prefetch window and stall every other account. With it, a delivery to an
//! endpoint that already has `max` attempts in flight is deferred to a delay queue (without
//! spending an attempt) and the message is acked, so the endpoint's backlog waits in the broker.

use std::collections::HashMap;
use std::sync::Mutex;

pub struct EndpointLimiter {
    max: usize,
    busy: Mutex<HashMap<String, usize>>,
}

/// An attempt's place in its endpoint's budget; released on drop.
pub struct EndpointSlot<'a> {
    limiter: &'a EndpointLimiter,
    key: String,
}

impl EndpointLimiter {
    pub fn new(max: usize) -> EndpointLimiter {
        EndpointLimiter {
            max,
            busy: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for `key`, or `None` if it already has `max` attempts in flight.
    pub fn try_acquire(&self, key: &str) -> Option<EndpointSlot<'_>> {
        let mut busy = self.busy.lock().expect("limiter lock");
        let count = busy.entry(key.to_string()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(EndpointSlot {
            limiter: self,
            key: key.to_string(),
        })
    }

    /// Attempts in flight to `key` (for tests and introspection).
    pub fn in_flight(&self, key: &str) -> usize {
        self.busy
            .lock()
            .expect("limiter lock")
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for EndpointSlot<'_> {
    fn drop(&mut self) {
        let mut busy = self.limiter.busy.lock().expect("limiter lock");
        if let Some(count) = busy.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                busy.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_endpoint_gets_at_most_max_slots_and_gets_them_back() {
        let limiter = EndpointLimiter::new(2);
        let a1 = limiter.try_acquire("a").unwrap();
        let _a2 = limiter.try_acquire("a").unwrap();
        assert!(limiter.try_acquire("a").is_none(), "a is full");
        let _b = limiter.try_acquire("b").expect("b is independent");
        drop(a1);
        assert_eq!(limiter.in_flight("a"), 1);
        assert!(limiter.try_acquire("a").is_some());
        drop(_b);
        assert_eq!(limiter.in_flight("b"), 0);
        assert!(
            limiter.busy.lock().unwrap().get("b").is_none(),
            "idle endpoints leave no entry"
        );
    }
}
