//! Refusals held for a moment: once an endpoint has refused a connection, it is not connected
//! to again for [`HOLD`], and the attempts to it in that time fail with that refusal.
//!
//! A refusal is the endpoint's host saying at once that nothing listens on the port. An endpoint
//! that is down refuses every attempt, and each was a new TCP connection (a socket, the connect,
//! the host's reset, the close): more than a quarter of the service's CPU while an outage's first
//! attempts ran, and as many connection attempts a second at the customer's host as its events
//! came in (BENCHMARKS.md, "A refused connection stands for 100 ms"). Held, an endpoint that
//! stays down is connected to about ten times a second whatever its rate of events, and one that
//! comes back is found within [`HOLD`]: only the attempts that start in that time fail
//! needlessly, and they are retried on the usual schedule like any failed attempt.
//!
//! Held per URL: the same URL is the same endpoint whoever subscribed it, and a refusal there
//! says nothing about any other.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a refusal stands for the attempts after it.
pub const HOLD: Duration = Duration::from_millis(100);

/// The URLs that refused a connection within the last hold ([`HOLD`] unless made with
/// [`Refusals::new`]).
pub struct Refusals {
    hold: Duration,
    held: Mutex<Held>,
}

impl Default for Refusals {
    fn default() -> Refusals {
        Refusals::new(HOLD)
    }
}

#[derive(Default)]
struct Held {
    /// When each URL last refused.
    by_url: HashMap<Box<str>, Instant>,
    /// When refusals older than the hold were last dropped.
    pruned: Option<Instant>,
}

impl Refusals {
    /// Refusals that stand for `hold`.
    pub fn new(hold: Duration) -> Refusals {
        Refusals {
            hold,
            held: Mutex::default(),
        }
    }

    /// If `url` refused a connection within the hold before `now`: the error an attempt to it
    /// now records instead of connecting.
    pub fn held(&self, url: &str, now: Instant) -> Option<String> {
        let held = self.held.lock().expect("refusals lock");
        if held.by_url.is_empty() {
            return None;
        }
        let ago = now.saturating_duration_since(*held.by_url.get(url)?);
        drop(held);
        (ago < self.hold).then(|| {
            format!(
                "connection refused {} ms earlier; not connected to again within {} ms of a refusal",
                ago.as_millis(),
                self.hold.as_millis()
            )
        })
    }

    /// `url` refused a connection at `at`.
    pub fn refused(&self, url: &str, at: Instant) {
        let mut held = self.held.lock().expect("refusals lock");
        // Stale refusals are dropped at most once per hold, so a service with many endpoints
        // down does not walk them all on every refusal.
        let hold = self.hold;
        if held
            .pruned
            .is_none_or(|p| at.saturating_duration_since(p) >= hold)
        {
            held.pruned = Some(at);
            held.by_url
                .retain(|_, then| at.saturating_duration_since(*then) < hold);
        }
        match held.by_url.get_mut(url) {
            Some(then) => *then = (*then).max(at),
            None => {
                held.by_url.insert(url.into(), at);
            }
        }
    }

    /// The refusals held now (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.lock().expect("refusals lock").by_url.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_stands_for_its_url_only_and_only_for_the_hold() {
        let refusals = Refusals::default();
        let t0 = Instant::now();
        let url = "http://127.0.0.1:9/gone";
        assert_eq!(refusals.held(url, t0), None, "nothing refused yet");
        refusals.refused(url, t0);
        assert_eq!(
            refusals
                .held(url, t0 + Duration::from_millis(30))
                .as_deref(),
            Some(
                "connection refused 30 ms earlier; not connected to again within 100 ms of a refusal"
            )
        );
        assert_eq!(refusals.held("http://127.0.0.1:9/other", t0), None);
        assert_eq!(
            refusals.held(url, t0 + HOLD),
            None,
            "over once the hold has passed"
        );
        // A later refusal moves it on; an earlier one reported late does not move it back.
        refusals.refused(url, t0 + HOLD);
        refusals.refused(url, t0);
        assert!(
            refusals
                .held(url, t0 + HOLD + Duration::from_millis(99))
                .is_some_and(|e| e.starts_with("connection refused 99 ms earlier"))
        );
    }

    #[test]
    fn old_refusals_are_dropped() {
        let refusals = Refusals::default();
        let t0 = Instant::now();
        for port in 0..100 {
            refusals.refused(&format!("http://127.0.0.1:{port}/"), t0);
        }
        assert_eq!(refusals.len(), 100);
        refusals.refused("http://127.0.0.1:9/gone", t0 + HOLD);
        assert_eq!(refusals.len(), 1, "only the one still held is kept");
    }
}
