//! One channel's ack window: which delivery tags are under way, which settled messages wait for
//! their ack, and what each round sends (see the module above for the rule).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tokio::time::Instant;

use super::{GATHER, HOLD, MAX_HOLD, MOVE_GRACE, RETIRED_HOLD};

/// What one round sends.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Round<T> {
    /// Acked with `multiple` through this one's tag...
    pub(super) through: Option<T>,
    /// ...which covers these too.
    pub(super) covered: Vec<T>,
    /// Acked one by one (settled above a gap for a whole round, or the last round).
    pub(super) alone: Vec<T>,
    /// The gap they waited above, when it has now had enough acked alone above it.
    pub(super) costly: Option<u64>,
}

/// The delivery tags under way and the settled messages not yet acked.
pub(super) struct Window<T> {
    under_way: BTreeSet<u64>,
    /// By tag: the messages settled and not acked yet.
    settled: BTreeMap<u64, T>,
    /// When each was settled, oldest first (tags acked since are skipped when reached).
    ages: VecDeque<(Instant, u64)>,
    /// Waiting above a gap this many, they all go alone: the window must keep moving.
    enough: usize,
    /// With fewer unacked than this, nothing is held ([`SHALLOW`]).
    shallow: usize,
    /// The first tag under way at the last round, since when it has been, how many were acked
    /// alone above it since, and when it was reported.
    gap: Option<u64>,
    gap_since: Instant,
    alone_above_gap: usize,
    reported: Option<Instant>,
    /// The fewest waiting or acked alone above one gap before it is reported ([`MIN_COSTLY`]).
    min_costly: usize,
    /// The consumer moved away from this channel: nothing more arrives, so what waits above a
    /// gap takes no room anyone needs and waits for it up to [`RETIRED_HOLD`].
    retired: bool,
}

impl<T> Window<T> {
    pub(super) fn new(min_costly: usize, enough: usize, shallow: usize) -> Window<T> {
        Window {
            under_way: BTreeSet::new(),
            settled: BTreeMap::new(),
            ages: VecDeque::new(),
            enough: enough.max(1),
            shallow,
            gap: None,
            gap_since: Instant::now(),
            alone_above_gap: 0,
            reported: None,
            min_costly: min_costly.max(1),
            retired: false,
        }
    }

    /// The consumer moved away from this channel: what waits above a gap waits for it.
    pub(super) fn retire(&mut self) {
        self.retired = true;
    }

    pub(super) fn received(&mut self, tag: u64) {
        self.under_way.insert(tag);
    }

    pub(super) fn settled(&mut self, tag: u64, message: T, now: Instant) {
        self.under_way.remove(&tag);
        self.settled.insert(tag, message);
        self.ages.push_back((now, tag));
    }

    pub(super) fn handed_back(&mut self, tag: u64) {
        self.under_way.remove(&tag);
    }

    /// What to send now: everything settled below the first tag under way as one `multiple`
    /// ack. Above it, on a channel still consumed from: everything alone when the gap has stayed
    /// at one message for [`HOLD`] (once it is reported, not before [`MOVE_GRACE`] since: the
    /// move that spares them may be under way), when it is `last`, or when as many wait there
    /// as make half the window; else what has waited [`MAX_HOLD`] (one round, [`GATHER`], with
    /// fewer than [`SHALLOW`] unacked). On a retired channel: alone only when `last`, or once it
    /// waited [`RETIRED_HOLD`]. The rest waits for the gap to close. A gap that has stayed for
    /// [`HOLD`] with at least `min_costly` waiting (or gone alone) above it is reported once.
    pub(super) fn round(&mut self, last: bool, now: Instant) -> Round<T> {
        let mut round = Round {
            through: None,
            covered: Vec::new(),
            alone: Vec::new(),
            costly: None,
        };
        let gap = self.under_way.first().copied();
        if gap != self.gap {
            self.gap = gap;
            self.gap_since = now;
            self.alone_above_gap = 0;
            self.reported = None;
        }
        let held = now.saturating_duration_since(self.gap_since);
        let unacked = self.under_way.len() + self.settled.len();
        let above = match gap {
            Some(gap) => self.settled.split_off(&gap),
            None => BTreeMap::new(),
        };
        let below = std::mem::replace(&mut self.settled, above);
        let mut below: Vec<T> = below.into_values().collect();
        round.through = below.pop();
        round.covered = below;
        // Reported before any goes alone: a move now spares them all.
        if self.reported.is_none()
            && !self.retired
            && gap.is_some()
            && held >= HOLD
            && self.settled.len() + self.alone_above_gap >= self.min_costly
        {
            self.reported = Some(now);
            round.costly = gap;
        }
        let stuck = held >= HOLD
            && self
                .reported
                .is_none_or(|at| now.saturating_duration_since(at) >= MOVE_GRACE);
        // A lone ack walks what is unacked below it on the broker's side: cheap in a shallow
        // window, where what waits a round goes alone; in a deep one it waits for the gap.
        let wait = if self.retired {
            RETIRED_HOLD
        } else if unacked < self.shallow {
            GATHER
        } else {
            MAX_HOLD
        };
        let all = last || (!self.retired && (stuck || self.settled.len() >= self.enough));
        if all {
            round.alone = std::mem::take(&mut self.settled).into_values().collect();
        } else {
            while let Some(&(at, tag)) = self.ages.front() {
                if now.saturating_duration_since(at) < wait {
                    break;
                }
                self.ages.pop_front();
                round.alone.extend(self.settled.remove(&tag));
            }
        }
        if self.settled.is_empty() {
            self.ages.clear();
        }
        self.alone_above_gap += round.alone.len();
        round
    }

    /// Whether any message is under way.
    pub(super) fn any_under_way(&self) -> bool {
        !self.under_way.is_empty()
    }

    pub(super) fn is_idle(&self) -> bool {
        self.settled.is_empty()
    }
}

#[cfg(test)]
mod tests;
