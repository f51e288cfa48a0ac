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

    /// Whether a rate is set.
    pub(super) fn paced(&self) -> bool {
        self.per_second.is_some()
    }

    /// Records per batch: at a set rate, 50 ms worth; [`BATCH`] otherwise.
    pub(super) fn batch(&self) -> usize {
        self.per_second
            .map_or(BATCH, |n| (n as usize / 20).clamp(1, BATCH))
    }

    /// Waits for the turn of a batch of `records`, which then goes out at once: the next batch's
    /// turn is `records` sends' time later. Waited before the batch is claimed, so a slow rate
    /// never holds a claim (on SQLite, the store's write lock) while it waits.
    pub(super) async fn turn(&mut self, records: usize) {
        let Some(per_second) = self.per_second else {
            return;
        };
        let now = tokio::time::Instant::now();
        let at = self.next.map_or(now, |next| next.max(now));
        tokio::time::sleep_until(at).await;
        let records = u32::try_from(records).unwrap_or(u32::MAX);
        self.next = Some(at + std::time::Duration::from_secs(1) * records / per_second);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_batch_goes_at_its_turn_and_the_next_waits_for_its_records_time() {
        let mut pace = Pace::new(Some(100));
        assert_eq!(pace.batch(), 5, "50 ms worth");
        let start = Instant::now();
        for (records, turn_ms) in [(5, 0), (5, 50), (2, 100), (1, 120), (5, 130)] {
            pace.turn(records).await;
            assert_eq!(
                start.elapsed(),
                Duration::from_millis(turn_ms),
                "the batch after {records}"
            );
        }
        // A run that fell behind (a slow confirm) does not send a burst to catch up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let late = Instant::now();
        pace.turn(5).await;
        assert_eq!(late.elapsed(), Duration::ZERO);
        pace.turn(5).await;
        assert_eq!(late.elapsed(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_rate_nothing_waits_and_batches_are_full() {
        let mut pace = Pace::new(None);
        assert_eq!(pace.batch(), BATCH);
        let start = Instant::now();
        for _ in 0..3 {
            pace.turn(BATCH).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(Pace::new(Some(1)).batch(), 1);
        assert_eq!(Pace::new(Some(1_000_000)).batch(), BATCH);
    }
}
