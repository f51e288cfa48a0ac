//! The adaptive limit of one endpoint (AIMD, as TCP does with its window): what each attempt's
//! [`Signal`] does to it. Pure arithmetic over the times it is given, so it is tested against
//! simulated endpoints.

use std::time::Duration;

use tokio::time::Instant;

/// The limit is lowered at most this often.
pub const DECREASE_EVERY: Duration = Duration::from_millis(100);
/// Latency over twice the baseline is slow only if it is also this much over it (a loopback
/// receiver's 1 ms becoming 3 ms is noise, not queueing).
pub const SLOW_MARGIN: Duration = Duration::from_millis(50);
/// The fastest latency is the minimum over the current and the previous window of this length,
/// so an endpoint that became slower for good is learned within two windows.
pub const BASELINE_WINDOW: Duration = Duration::from_secs(10);

/// What an attempt showed of its endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// 2xx, after `latency`.
    Success(Duration),
    /// 429, 503, a timeout or a connection error other than a refusal: the endpoint is
    /// overloaded or away.
    /// `retry_after` is the endpoint's own `Retry-After`.
    Overloaded { retry_after: Option<Duration> },
    /// Any other failure (a 4xx, a 500): says nothing about load.
    Other,
}

/// One endpoint's limit, between 1 and its maximum.
pub struct Aimd {
    limit: f64,
    max: f64,
    last_decrease: Option<Instant>,
    /// The fastest latency (ms) in the previous and the current window.
    min_ms: [f64; 2],
    window_started: Instant,
    /// The recent latency (ms), a moving average.
    recent_ms: Option<f64>,
}

impl Aimd {
    /// Starts at `max`.
    pub fn new(max: usize, now: Instant) -> Aimd {
        Aimd {
            limit: max as f64,
            max: max as f64,
            last_decrease: None,
            min_ms: [f64::INFINITY; 2],
            window_started: now,
            recent_ms: None,
        }
    }

    /// Attempts allowed in flight now.
    pub fn current(&self) -> usize {
        (self.limit as usize).max(1)
    }

    /// What an attempt that ended at `now` showed.
    pub fn on(&mut self, signal: Signal, now: Instant) {
        match signal {
            Signal::Success(latency) => {
                if self.slow(latency, now) {
                    self.decrease(0.9, now);
                } else {
                    self.limit = (self.limit + 1.0 / self.limit).min(self.max);
                }
            }
            Signal::Overloaded { .. } => self.decrease(0.5, now),
            Signal::Other => {}
        }
    }

    /// Learns `latency` and says whether the endpoint is queueing: its recent latency over
    /// twice its fastest plus [`SLOW_MARGIN`].
    fn slow(&mut self, latency: Duration, now: Instant) -> bool {
        let ms = latency.as_secs_f64() * 1000.0;
        if now.duration_since(self.window_started) >= BASELINE_WINDOW {
            self.window_started = now;
            self.min_ms = [self.min_ms[1], f64::INFINITY];
        }
        self.min_ms[1] = self.min_ms[1].min(ms);
        let baseline = self.min_ms[0].min(self.min_ms[1]);
        let recent = self.recent_ms.map_or(ms, |r| r + (ms - r) * 0.1);
        self.recent_ms = Some(recent);
        recent > 2.0 * baseline + SLOW_MARGIN.as_secs_f64() * 1000.0
    }

    /// Multiplies the limit by `factor`, at most once per [`DECREASE_EVERY`].
    fn decrease(&mut self, factor: f64, now: Instant) {
        if self
            .last_decrease
            .is_none_or(|at| now.duration_since(at) >= DECREASE_EVERY)
        {
            self.last_decrease = Some(now);
            self.limit = (self.limit * factor).max(1.0);
        }
    }
}
