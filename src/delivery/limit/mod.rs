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
//!   its fastest latency of the last [`aimd::BASELINE_WINDOW`]s plus [`aimd::SLOW_MARGIN`], which takes
//!   10 % off (a receiver queueing our requests);
//! - a 429, a 503, a timeout or a connection error halves the limit — at most once per
//!   [`aimd::DECREASE_EVERY`], so one burst of failures from requests sent together counts once;
//! - a `Retry-After` on a 429 or 503 pauses the endpoint for that long (at most
//!   [`MAX_PAUSE`]): deliveries to it are deferred to a delay queue without an attempt, and the
//!   2/4/8 s schedule of the attempts themselves is unchanged.
//!
//! A delivery that finds its endpoint full waits for a slot as long as the endpoint makes
//! progress (an attempt finished within the last [`WAIT_FOR_SLOT`]; at most [`MAX_WAIT`]) and is
//! otherwise deferred, so a hanging endpoint's backlog waits in the broker instead of in the
//! prefetch window while a slow one's is served as fast as it answers. Once a wait has timed out,
//! the endpoint counts as stuck for [`STUCK_FOR`]: while it stays full, deliveries to it are
//! deferred at once instead of each holding a prefetched message for the whole wait.
//!
//! The waits are first come, first served: a freed slot is handed to the longest waiting
//! delivery under the endpoint's lock, and a delivery that arrives while others wait queues
//! behind them. Before, a woken waiter had to take the slot itself and a delivery started at
//! that moment could get there first; some waiters lost turn after turn until their wait ran
//! out and the endpoint was taken for stuck (BENCHMARKS.md, "First come, first served").
//!
//! The rule is [`aimd`]; this module keeps the slots, the waits and the pauses. The limits are
//! exposed as a distribution with bounded labels:
//! `webhook_endpoint_concurrency_limit{limit="1"|"2-3"|…|"128+"}` counts endpoints per range.

mod aimd;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntGaugeVec;
use tokio::sync::oneshot;
use tokio::time::Instant;

use aimd::Aimd;
pub use aimd::Signal;

/// How long a delivery waits for its endpoint to free a slot before it is deferred.
pub const WAIT_FOR_SLOT: Duration = Duration::from_millis(250);
/// The longest a delivery waits for a slot at an endpoint that keeps making progress.
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// How long an endpoint whose wait timed out is treated as stuck while it stays full.
pub const STUCK_FOR: Duration = Duration::from_secs(1);
/// The longest pause a `Retry-After` buys.
pub const MAX_PAUSE: Duration = Duration::from_secs(60);
/// An endpoint not used for this long is forgotten (its limit starts again at the maximum).
const IDLE_FOR: Duration = Duration::from_secs(600);

/// The ranges the limits' distribution is counted in (the label values).
pub const LIMIT_RANGES: [&str; 8] = [
    "1", "2-3", "4-7", "8-15", "16-31", "32-63", "64-127", "128+",
];

struct State {
    limit: Aimd,
    in_flight: usize,
    stuck_until: Option<Instant>,
    paused_until: Option<Instant>,
    last_used: Instant,
    /// When an attempt to it last finished.
    last_finished: Instant,
    /// The deliveries waiting for a slot, longest waiting first.
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
}

/// A delivery waiting for a slot: told, once, whether it got one.
struct Waiter {
    id: u64,
    answer: oneshot::Sender<Turn>,
}

/// What a waiting delivery is told.
enum Turn {
    /// A slot, already counted in `in_flight`: it is the waiter's.
    Slot,
    /// The endpoint paused itself (`Retry-After`).
    Paused,
}

struct Endpoint {
    state: Mutex<State>,
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
                    self.moved(Some(s.limit.current()), None);
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
                limit: Aimd::new(self.max, now),
                in_flight: 0,
                stuck_until: None,
                paused_until: None,
                last_used: now,
                last_finished: now,
                waiters: VecDeque::new(),
                next_waiter: 0,
            }),
        });
        self.moved(None, Some(self.max));
        endpoints.by_key.insert(key.to_string(), endpoint.clone());
        endpoint
    }

    /// A slot for `key`: waits in turn while the endpoint makes progress, giving up once none of
    /// its attempts has finished for `wait` (it hangs), or after [`MAX_WAIT`] in all; not at all
    /// while the endpoint counts as stuck or is paused.
    pub async fn acquire(&self, key: &str, wait: Duration) -> Result<Slot<'_>, Full> {
        let endpoint = self.endpoint(key);
        let started = Instant::now();
        let mut waiting = {
            let mut s = endpoint.state.lock().expect("limiter lock");
            s.last_used = started;
            if s.paused_until.is_some_and(|until| started < until) {
                return Err(Full::Paused);
            }
            if s.in_flight < s.limit.current() && s.waiters.is_empty() {
                s.in_flight += 1;
                drop(s);
                return Ok(self.slot(endpoint));
            }
            if s.stuck_until.is_some_and(|until| started < until) {
                return Err(Full::AtLimit);
            }
            let (answer, turn) = oneshot::channel();
            let id = s.next_waiter;
            s.next_waiter += 1;
            s.waiters.push_back(Waiter { id, answer });
            Waiting {
                endpoint: &endpoint,
                id,
                turn,
                queued: true,
            }
        };
        let mut deadline = started + wait;
        let turn = loop {
            if let Ok(answer) = tokio::time::timeout_at(deadline, &mut waiting.turn).await {
                break answer.ok();
            }
            let mut s = endpoint.state.lock().expect("limiter lock");
            // Handed a turn just as the wait ran out: it is taken.
            if let Ok(turn) = waiting.turn.try_recv() {
                break Some(turn);
            }
            let now = Instant::now();
            // A slow endpoint that keeps finishing attempts is worth waiting for (its deliveries
            // would otherwise be deferred for seconds while it has capacity); the place in the
            // queue is kept.
            let progress_until = s.last_finished + wait;
            if progress_until > now && now.duration_since(started) < MAX_WAIT {
                deadline = progress_until.min(started + MAX_WAIT);
                continue;
            }
            s.waiters.retain(|w| w.id != waiting.id);
            waiting.queued = false;
            s.stuck_until = Some(now + STUCK_FOR);
            return Err(Full::AtLimit);
        };
        // Answered, so taken out of the queue by whoever answered.
        waiting.queued = false;
        drop(waiting);
        match turn {
            Some(Turn::Slot) => Ok(self.slot(endpoint)),
            Some(Turn::Paused) => Err(Full::Paused),
            // Not reached: a waiter's sender is only dropped unanswered by the waiter itself,
            // when it leaves the queue; were it, the delivery is deferred like a full endpoint's.
            None => Err(Full::AtLimit),
        }
    }

    fn slot(&self, endpoint: Arc<Endpoint>) -> Slot<'_> {
        Slot {
            limiter: self,
            endpoint,
        }
    }

    /// `key`'s limit now (the maximum for an endpoint not seen).
    #[cfg(test)]
    fn limit(&self, key: &str) -> usize {
        let endpoints = self.endpoints.lock().expect("limiter lock");
        endpoints.by_key.get(key).map_or(self.max, |e| {
            e.state.lock().expect("limiter lock").limit.current()
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
        if let Signal::Overloaded {
            retry_after: Some(pause),
        } = signal
        {
            let until = now + pause.min(MAX_PAUSE);
            if s.paused_until.is_none_or(|p| p < until) {
                s.paused_until = Some(until);
            }
            // Deferred like the deliveries that arrive during the pause.
            for waiter in s.waiters.drain(..) {
                let _ = waiter.answer.send(Turn::Paused);
            }
        }
        let before = s.limit.current();
        s.limit.on(signal, now);
        self.moved(Some(before), Some(s.limit.current()));
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
        s.last_finished = Instant::now();
        s.release();
    }
}

impl State {
    /// Frees a slot, handing it (and any the limit now allows) to the longest waiting delivery.
    fn release(&mut self) {
        self.in_flight -= 1;
        while self.in_flight < self.limit.current() {
            let Some(waiter) = self.waiters.pop_front() else {
                break;
            };
            // A waiter is removed from the queue before it stops listening; a failed send
            // would be one given up meanwhile, and the slot goes to the next.
            if waiter.answer.send(Turn::Slot).is_ok() {
                self.in_flight += 1;
            }
        }
    }
}

/// A delivery's place in its endpoint's queue. Dropped while queued (the delivery cancelled
/// mid-wait), it leaves the queue, and a slot it was handed but never took is freed.
struct Waiting<'a> {
    endpoint: &'a Arc<Endpoint>,
    id: u64,
    turn: oneshot::Receiver<Turn>,
    queued: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.queued {
            return;
        }
        let mut s = self.endpoint.state.lock().expect("limiter lock");
        s.waiters.retain(|w| w.id != self.id);
        if let Ok(Turn::Slot) = self.turn.try_recv() {
            s.release();
        }
    }
}

#[cfg(test)]
mod tests;
