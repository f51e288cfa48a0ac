//! How fast a replay sends, and so how big its batches are; and when it stops sending.

use std::ops::RangeInclusive;

use tokio_util::sync::CancellationToken;

use super::BATCH;

/// The rates a replay may be held to, in replays a second (`replay --rate`, a replay job's
/// `rate`): checked where they come in, against this one range.
pub const RATES: RangeInclusive<u32> = 1..=1_000_000;

/// How fast a replay sends: at most `per_second` tasks a second when set, as fast as the
/// broker confirms otherwise; and, with [`Pace::until`], no further batch once `stop` fires.
#[derive(Debug)]
pub struct Pace {
    per_second: Option<u32>,
    next: Option<tokio::time::Instant>,
    stop: Option<CancellationToken>,
}

impl Pace {
    pub fn new(per_second: Option<u32>) -> Pace {
        Pace {
            per_second: per_second.filter(|n| *n > 0),
            next: None,
            stop: None,
        }
    }

    /// The same pace, and no batch started after `stop` fires (one under way is finished).
    pub fn until(self, stop: CancellationToken) -> Pace {
        Pace {
            stop: Some(stop),
            ..self
        }
    }

    /// Whether to start no further batch.
    pub(super) fn stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(|stop| stop.is_cancelled())
    }

    /// Records per batch: at a set rate, about 50 ms of sending, so the claims (on SQLite, the
    /// store's write lock) are never held long; [`BATCH`] otherwise.
    pub(super) fn batch(&self) -> usize {
        self.per_second
            .map_or(BATCH, |n| (n as usize / 20).clamp(1, BATCH))
    }

    /// Waits for the next send's turn.
    pub(super) async fn turn(&mut self) {
        let Some(per_second) = self.per_second else {
            return;
        };
        let now = tokio::time::Instant::now();
        let at = self.next.map_or(now, |next| next.max(now));
        tokio::time::sleep_until(at).await;
        self.next = Some(at + std::time::Duration::from_secs(1) / per_second);
    }
}
