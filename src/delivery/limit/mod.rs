//! Per-endpoint concurrency that adapts to what each endpoint shows.
//!
//! An endpoint that hangs keeps its attempts in flight for the whole `DELIVERY_TIMEOUT`, and each
//! holds a prefetched message; without a cap, one such endpoint would fill the prefetch window
//! and stall every other account. A fixed cap is wrong both ways, though: too many for a small
//! receiver that slows down under load, too few for a big one. So each endpoint's limit moves
//! between 1 and `MAX_IN_FLIGHT_PER_ENDPOINT` (AIMD, as TCP does with its window):
//!
//! - every successful attempt adds `1 / limit` (about one more slot per round of the limit's
//!   attempts), unless the endpoint is slow: its recent latency (a moving average) over twice
//!   its fastest latency of the last [`BASELINE_WINDOW`]s plus [`SLOW_MARGIN`], which takes
//!   10 % off (a receiver queueing our requests);
//! - a 429, a 503, a timeout or a connection error halves the limit — at most once per
//!   [`DECREASE_EVERY`], so one burst of failures from requests sent together counts once;
//! - a `Retry-After` on a 429 or 503 pauses the endpoint for that long (at most
//!   [`MAX_PAUSE`]): deliveries to it are deferred to a delay queue without an attempt, and the
//!   2/4/8 s schedule of the attempts themselves is unchanged.
//!
//! A delivery that finds its endpoint full waits for a slot as long as the endpoint makes
//! progress (an attempt finished within the last [`WAIT_FOR_SLOT`]; at most [`MAX_WAIT`]) and is
//! otherwise deferred, so a hanging endpoint's backlog waits in the broker instead of in the
//! prefetch window while a slow one's is served as fast as it answers. Once a wait has timed out, the
//! endpoint counts as stuck for [`STUCK_FOR`]: while it stays full, deliveries to it are deferred
//! at once instead of each holding a prefetched message for the whole wait.
//!
//! The limits are exposed as a distribution with bounded labels:
//! `webhook_endpoint_concurrency_limit{limit="1"|"2-3"|…|"128+"}` counts endpoints per range.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntGaugeVec;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a delivery waits for its endpoint to free a slot before it is deferred.
pub const WAIT_FOR_SLOT: Duration = Duration::from_millis(250);
/// The longest a delivery waits for a slot at an endpoint that keeps making progress.
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// How long an endpoint whose wait timed out is treated as stuck while it stays full.
pub const STUCK_FOR: Duration = Duration::from_secs(1);
/// The limit is halved at most this often.
pub const DECREASE_EVERY: Duration = Duration::from_millis(100);
/// The longest pause a `Retry-After` buys.
pub const MAX_PAUSE: Duration = Duration::from_secs(60);
/// Latency over twice the baseline is slow only if it is also this much over it (a loopback
/// receiver's 1 ms becoming 3 ms is noise, not queueing).
pub const SLOW_MARGIN: Duration = Duration::from_millis(50);
/// The fastest latency is the minimum over the current and the previous window of this length,
/// so an endpoint that became slower for good is learned within two windows.
pub const BASELINE_WINDOW: Duration = Duration::from_secs(10);
/// An endpoint not used for this long is forgotten (its limit starts again at the maximum).
const IDLE_FOR: Duration = Duration::from_secs(600);

/// The ranges the limits' distribution is counted in (the label values).
pub const LIMIT_RANGES: [&str; 8] = [
    "1", "2-3", "4-7", "8-15", "16-31", "32-63", "64-127", "128+",
];

/// What an attempt showed of its endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// 2xx, after `latency`.
    Success(Duration),
    /// 429, 503, a timeout or a connection error: the endpoint is overloaded or away.
    /// `retry_after` is the endpoint's own `Retry-After`.
    Overloaded { retry_after: Option<Duration> },
    /// Any other failure (a 4xx, a 500): says nothing about load.
    Other,
}

struct State {
    limit: f64,
    in_flight: usize,
    stuck_until: Option<Instant>,
    paused_until: Option<Instant>,
    last_decrease: Option<Instant>,
    /// The fastest latency (ms) in the current and the previous window.
    min_ms: [f64; 2],
    window_started: Instant,
    /// The recent latency (ms), a moving average.
    recent_ms: Option<f64>,
    last_used: Instant,
    /// When an attempt to it last finished.
    last_finished: Instant,
}

struct Endpoint {
    state: Mutex<State>,
    freed: Notify,
}

pub struct EndpointLimiter {
    max: usize,
    endpoints: Mutex<Endpoints>,
    distribution: Option<IntGaugeVec>,
}

struct Endpoints {
    by_key: HashMap<String, Arc<Endpoint>>,
    swept: Instant,
}

/// An attempt's place at its endpoint; dropping it frees the place. [`Slot::finished`] tells the
/// limiter what the attempt showed.
pub struct Slot<'a> {
    limiter: &'a EndpointLimiter,
    endpoint: Arc<Endpoint>,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The endpoint stayed at its limit.
    AtLimit,
    /// The endpoint asked for a pause (`Retry-After`) that has not ended.
    Paused,
}

fn range_of(limit: usize) -> usize {
    (usize::BITS - limit.max(1).leading_zeros() - 1).min(LIMIT_RANGES.len() as u32 - 1) as usize
}

impl EndpointLimiter {
    /// Limits between 1 and `max`; with `distribution`, the endpoints per limit range are kept
    /// there (labelled by [`LIMIT_RANGES`]).
    pub fn new(max: usize, distribution: Option<IntGaugeVec>) -> EndpointLimiter {
        EndpointLimiter {
            max: max.max(1),
            endpoints: Mutex::new(Endpoints {
                by_key: HashMap::new(),
                swept: Instant::now(),
            }),
            distribution,
        }
    }

    fn moved(&self, from: Option<usize>, to: Option<usize>) {
        let (from, to) = (from.map(range_of), to.map(range_of));
        if from == to {
            return;
        }
        if let Some(gauge) = &self.distribution {
            if let Some(r) = from {
                gauge.with_label_values(&[LIMIT_RANGES[r]]).dec();
            }
            if let Some(r) = to {
                gauge.with_label_values(&[LIMIT_RANGES[r]]).inc();
            }
        }
    }

    fn endpoint(&self, key: &str) -> Arc<Endpoint> {
        let now = Instant::now();
        let mut endpoints = self.endpoints.lock().expect("limiter lock");
        if now.duration_since(endpoints.swept) >= IDLE_FOR / 10 {
            endpoints.swept = now;
            endpoints.by_key.retain(|_, e| {
                let s = e.state.lock().expect("limiter lock");
                let keep = s.in_flight > 0 || now.duration_since(s.last_used) < IDLE_FOR;
                if !keep {
                    self.moved(Some(s.limit as usize), None);
                }
                keep
            });
        }
        if let Some(endpoint) = endpoints.by_key.get(key) {
            // Used now, under the map's lock: a sweep cannot forget it before `acquire` runs.
            endpoint.state.lock().expect("limiter lock").last_used = now;
            return endpoint.clone();
        }
        let endpoint = Arc::new(Endpoint {
            state: Mutex::new(State {
                limit: self.max as f64,
                in_flight: 0,
                stuck_until: None,
                paused_until: None,
                last_decrease: None,
                min_ms: [f64::INFINITY; 2],
                window_started: now,
                recent_ms: None,
                last_used: now,
                last_finished: now,
            }),
            freed: Notify::new(),
        });
        self.moved(None, Some(self.max));
        endpoints.by_key.insert(key.to_string(), endpoint.clone());
        endpoint
    }

    /// A slot for `key`: waits while the endpoint makes progress, giving up once none of its
    /// attempts has finished for `wait` (it hangs), or after [`MAX_WAIT`] in all; not at all
    /// while the endpoint counts as stuck or is paused.
    pub async fn acquire(&self, key: &str, wait: Duration) -> Result<Slot<'_>, Full> {
        let endpoint = self.endpoint(key);
        let started = Instant::now();
        let mut deadline = started + wait;
        loop {
            // Registered before the check, so a slot freed in between wakes this wait.
            let freed = endpoint.freed.notified();
            {
                let now = Instant::now();
                let mut s = endpoint.state.lock().expect("limiter lock");
                s.last_used = now;
                if s.paused_until.is_some_and(|until| now < until) {
                    return Err(Full::Paused);
                }
                if s.in_flight < (s.limit as usize).max(1) {
                    s.in_flight += 1;
                    return Ok(Slot {
                        limiter: self,
                        endpoint: endpoint.clone(),
                    });
                }
                if s.stuck_until.is_some_and(|until| now < until) {
                    return Err(Full::AtLimit);
                }
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                let mut s = endpoint.state.lock().expect("limiter lock");
                let now = Instant::now();
                // A slow endpoint that keeps finishing attempts is worth waiting for (its
                // deliveries would otherwise be deferred for seconds while it has capacity).
                let progress_until = s.last_finished + wait;
                if progress_until > now && now.duration_since(started) < MAX_WAIT {
                    deadline = progress_until.min(started + MAX_WAIT);
                    continue;
                }
                s.stuck_until = Some(now + STUCK_FOR);
                return Err(Full::AtLimit);
            }
        }
    }

    /// `key`'s limit now (the maximum for an endpoint not seen).
    #[cfg(test)]
    fn limit(&self, key: &str) -> usize {
        let endpoints = self.endpoints.lock().expect("limiter lock");
        endpoints.by_key.get(key).map_or(self.max, |e| {
            (e.state.lock().expect("limiter lock").limit as usize).max(1)
        })
    }

    /// Attempts in flight to `key`.
    #[cfg(test)]
    fn in_flight(&self, key: &str) -> usize {
        let endpoints = self.endpoints.lock().expect("limiter lock");
        endpoints
            .by_key
            .get(key)
            .map_or(0, |e| e.state.lock().expect("limiter lock").in_flight)
    }

    fn adapt(&self, s: &mut State, signal: Signal, now: Instant) {
        let before = s.limit as usize;
        let max = self.max as f64;
        match signal {
            Signal::Success(latency) => {
                let ms = latency.as_secs_f64() * 1000.0;
                if now.duration_since(s.window_started) >= BASELINE_WINDOW {
                    s.window_started = now;
                    s.min_ms = [s.min_ms[1], f64::INFINITY];
                }
                s.min_ms[1] = s.min_ms[1].min(ms);
                let baseline = s.min_ms[0].min(s.min_ms[1]);
                let recent = s.recent_ms.map_or(ms, |r| r + (ms - r) * 0.1);
                s.recent_ms = Some(recent);
                let slow = recent > 2.0 * baseline + SLOW_MARGIN.as_secs_f64() * 1000.0;
                if slow {
                    if self.may_decrease(s, now) {
                        s.limit = (s.limit * 0.9).max(1.0);
                    }
                } else {
                    s.limit = (s.limit + 1.0 / s.limit).min(max);
                }
            }
            Signal::Overloaded { retry_after } => {
                if let Some(pause) = retry_after {
                    let until = now + pause.min(MAX_PAUSE);
                    if s.paused_until.is_none_or(|p| p < until) {
                        s.paused_until = Some(until);
                    }
                }
                if self.may_decrease(s, now) {
                    s.limit = (s.limit / 2.0).max(1.0);
                }
            }
            Signal::Other => {}
        }
        self.moved(Some(before), Some(s.limit as usize));
    }

    fn may_decrease(&self, s: &mut State, now: Instant) -> bool {
        let due = s
            .last_decrease
            .is_none_or(|at| now.duration_since(at) >= DECREASE_EVERY);
        if due {
            s.last_decrease = Some(now);
        }
        due
    }
}

impl Slot<'_> {
    /// Frees the slot and adapts the endpoint's limit to what the attempt showed.
    pub fn finished(self, signal: Signal) {
        let mut s = self.endpoint.state.lock().expect("limiter lock");
        self.limiter.adapt(&mut s, signal, Instant::now());
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut s = self.endpoint.state.lock().expect("limiter lock");
        s.in_flight -= 1;
        s.last_finished = Instant::now();
        drop(s);
        self.endpoint.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_endpoint_waits_briefly_then_gives_up_and_others_are_independent() {
        let limiter = EndpointLimiter::new(2, None);
        let wait = Duration::from_millis(20);
        let a1 = limiter.acquire("a", wait).await.unwrap();
        let _a2 = limiter.acquire("a", wait).await.unwrap();
        assert_eq!(limiter.in_flight("a"), 2);

        // A slot freed while waiting is taken.
        let release = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(a1);
        };
        let (a3, ()) = tokio::join!(limiter.acquire("a", Duration::from_secs(1)), release);
        assert!(a3.is_ok());

        assert_eq!(
            limiter.acquire("a", wait).await.err(),
            Some(Full::AtLimit),
            "a is full and stays full"
        );
        let _b = limiter.acquire("b", wait).await.expect("b is independent");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_endpoint_that_keeps_finishing_is_waited_for_past_the_wait() {
        let limiter = EndpointLimiter::new(1, None);
        let wait = Duration::from_millis(100);
        let held = limiter.acquire("e", Duration::ZERO).await.unwrap();
        let release = async {
            tokio::time::sleep(Duration::from_millis(60)).await;
            drop(held);
        };
        let first = async {
            let slot = limiter.acquire("e", wait).await.expect("freed at 60 ms");
            tokio::time::sleep(Duration::from_millis(60)).await;
            drop(slot);
        };
        let second = async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let started = Instant::now();
            let got = limiter.acquire("e", wait).await.is_ok();
            (got, started.elapsed())
        };
        let ((), (), (got, waited)) = tokio::join!(release, first, second);
        assert!(got, "the endpoint kept finishing attempts");
        assert!(
            waited > wait,
            "waited {waited:?}, past the {wait:?} of no progress"
        );
    }

    #[tokio::test]
    async fn a_stuck_endpoint_is_refused_at_once_until_it_frees_a_slot() {
        let limiter = EndpointLimiter::new(1, None);
        let held = limiter.acquire("a", Duration::ZERO).await.unwrap();
        assert!(
            limiter
                .acquire("a", Duration::from_millis(10))
                .await
                .is_err(),
            "timed out: now stuck"
        );
        let started = std::time::Instant::now();
        assert!(limiter.acquire("a", Duration::from_secs(5)).await.is_err());
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "no wait while stuck"
        );
        drop(held);
        assert!(
            limiter.acquire("a", Duration::ZERO).await.is_ok(),
            "a free slot is taken even while marked stuck"
        );
    }

    /// Drives the limiter as the dispatcher does against a simulated endpoint, a round at a time:
    /// each round sends as many attempts as the limit allows and feeds back what the endpoint
    /// answers for that many at once.
    async fn rounds(
        limiter: &EndpointLimiter,
        n: usize,
        answer: impl Fn(usize) -> Signal,
    ) -> Vec<usize> {
        let mut limits = Vec::new();
        for _ in 0..n {
            let mut slots = Vec::new();
            while let Ok(slot) = limiter.acquire("e", Duration::ZERO).await {
                slots.push(slot);
            }
            let concurrent = slots.len();
            for slot in slots {
                slot.finished(answer(concurrent));
            }
            limits.push(limiter.limit("e"));
            // Past the decrease spacing, so each round may decrease once.
            tokio::time::sleep(DECREASE_EVERY).await;
        }
        limits
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_falls_under_429s_and_slowness_and_rises_again_after() {
        let gauge = IntGaugeVec::new(prometheus::Opts::new("l", "l"), &["limit"]).unwrap();
        let limiter = EndpointLimiter::new(64, Some(gauge.clone()));
        let fast = Signal::Success(Duration::from_millis(2));

        // Healthy: stays at the maximum.
        let healthy = rounds(&limiter, 5, |_| fast).await;
        assert_eq!(healthy, [64; 5]);
        assert_eq!(gauge.with_label_values(&["64-127"]).get(), 1);

        // A receiver that takes 4 at a time and answers 429 past that: halved per round until
        // it fits, then hovering around 4.
        let throttled = rounds(&limiter, 12, |n| {
            if n > 4 {
                Signal::Overloaded { retry_after: None }
            } else {
                fast
            }
        })
        .await;
        assert_eq!(&throttled[..4], [32, 16, 8, 4], "{throttled:?}");
        assert!(
            throttled[4..].iter().all(|&l| (2..=5).contains(&l)),
            "{throttled:?}"
        );
        assert_eq!(gauge.with_label_values(&["64-127"]).get(), 0);

        // Recovered: one more slot per round of the limit's attempts, back to the maximum.
        let recovered = rounds(&limiter, 80, |_| fast).await;
        assert!(recovered.windows(2).all(|w| w[0] <= w[1]), "{recovered:?}");
        assert_eq!(recovered.last(), Some(&64), "{recovered:?}");

        // A receiver that queues: 10 ms per request in flight. The limit falls until the
        // latency is back near the baseline, then rises again when it stops queueing.
        let queueing = rounds(&limiter, 60, |n| {
            Signal::Success(Duration::from_millis(10 * n as u64))
        })
        .await;
        let settled = *queueing.last().unwrap();
        assert!(settled <= 8, "{queueing:?}");
        let recovered = rounds(&limiter, 80, |_| fast).await;
        assert_eq!(recovered.last(), Some(&64), "{recovered:?}");
        assert_eq!(
            LIMIT_RANGES
                .iter()
                .map(|r| gauge.with_label_values(&[r]).get())
                .sum::<i64>(),
            1,
            "one endpoint, in one range"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_pauses_the_endpoint_for_that_long_at_most_a_minute() {
        let limiter = EndpointLimiter::new(8, None);
        let slot = limiter.acquire("e", Duration::ZERO).await.unwrap();
        slot.finished(Signal::Overloaded {
            retry_after: Some(Duration::from_secs(5)),
        });
        assert_eq!(limiter.limit("e"), 4);
        assert_eq!(
            limiter.acquire("e", Duration::from_secs(1)).await.err(),
            Some(Full::Paused)
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        let slot = limiter
            .acquire("e", Duration::ZERO)
            .await
            .expect("pause over");
        slot.finished(Signal::Overloaded {
            retry_after: Some(Duration::from_secs(3600)),
        });
        tokio::time::advance(MAX_PAUSE - Duration::from_secs(1)).await;
        assert!(limiter.acquire("e", Duration::ZERO).await.is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.acquire("e", Duration::ZERO).await.is_ok());

        // A 500 says nothing about load.
        let before = limiter.limit("e");
        let slot = limiter.acquire("e", Duration::ZERO).await.unwrap();
        slot.finished(Signal::Other);
        assert_eq!(limiter.limit("e"), before);
    }
}
