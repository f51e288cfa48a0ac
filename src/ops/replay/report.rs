//! What a replay run reports: each record replayed, skipped (and why) or failed.

use serde::Serialize;

use crate::broker::BrokerError;
use crate::store::{StoreError, Unreadable};

/// Why a record is not replayed. [`code`](Skip::code) is the stable label (API error code,
/// `reason` of a skipped record); the `Display` text says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error(
        "rejected before matching ({0}); there is no delivery to replay: fix the message and publish it again"
    )]
    NotReplayable(String),
    #[error("subscription {0} no longer exists")]
    SubscriptionDeleted(String),
    #[error("subscription {0} is disabled; enable it, then replay")]
    SubscriptionDisabled(String),
    #[error("already replayed{}", .0.as_ref().map(|at| format!(" at {at}")).unwrap_or_default())]
    AlreadyReplayed(Option<String>),
    #[error(
        "its content was not verified as this service's own (forged, or stored by a version that \
         did not check): it is never replayed; if the event is genuine, publish it again"
    )]
    Untrusted,
}

impl Skip {
    pub fn code(&self) -> &'static str {
        match self {
            Skip::NotReplayable(_) => "not_replayable",
            Skip::SubscriptionDeleted(_) => "subscription_deleted",
            Skip::SubscriptionDisabled(_) => "subscription_disabled",
            Skip::AlreadyReplayed(_) => "already_replayed",
            Skip::Untrusted => "untrusted",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Skipped(#[from] Skip),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the record is no longer in the store")]
    Gone,
    #[error(
        "sent, but it could not be marked replayed ({0}): it reads as not replayed, and replaying \
         it again sends it a second time (same webhook-id)"
    )]
    NotMarked(StoreError),
}

/// A record that was skipped, and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Skipped {
    pub id: String,
    /// `not_replayable`, `untrusted`, `subscription_deleted`, `subscription_disabled` or
    /// `already_replayed`.
    #[schema(value_type = String)]
    pub reason: &'static str,
    /// The whole explanation (not in the API's answer, which keeps to `{id, reason}`).
    #[serde(skip)]
    pub detail: String,
}

/// A record whose replay failed (it stays unreplayed: it can be replayed again later).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Failed {
    pub id: String,
    pub error: String,
}

/// What a replay run did, or (dry run) would do: `replayed` lists the ids replayed (or that
/// would be), oldest first.
#[derive(Debug, Default)]
pub struct Report {
    pub replayed: Vec<String>,
    pub skipped: Vec<Skipped>,
    pub failed: Vec<Failed>,
    /// More records matched than the limit let through.
    pub more: bool,
    /// With `more`: the last record looked at; pass it as `after` to go on from there.
    pub next_cursor: Option<String>,
    /// Stopped early (ctrl-c) before the records left; those were not touched.
    pub interrupted: bool,
    /// Stopped at the first record the broker did not take: the ones after it were not
    /// touched (each would wait out the confirm limit too, holding its claim meanwhile).
    pub broker_failed: bool,
    /// Stopped when the store failed to give the next page, after records had been handled:
    /// why. What was done is in the report; the records after `next_cursor` were not touched.
    pub store_failed: Option<String>,
}

impl Report {
    /// Records looked at: replayed, skipped and failed.
    /// Why the last failed record failed ("" if none did): what a stopped run reports.
    pub fn last_error(&self) -> &str {
        self.failed.last().map_or("", |f| f.error.as_str())
    }

    pub fn matched(&self) -> usize {
        self.replayed.len() + self.skipped.len() + self.failed.len()
    }

    /// Files a record that cannot be read as failed: it stays unreplayed until its row is
    /// repaired.
    pub(super) fn unreadable(&mut self, unreadable: Unreadable) {
        self.failed.push(Failed {
            error: unreadable.to_string(),
            id: unreadable.id,
        });
    }

    /// Files `id` under what `result` says; sets (and returns) [`broker_failed`] when the broker
    /// did not take it, after which a run stops (it stays set).
    ///
    /// [`broker_failed`]: Report::broker_failed
    pub(super) fn record(&mut self, id: &str, result: Result<(), ReplayError>) -> bool {
        self.broker_failed |= matches!(result, Err(ReplayError::Broker(_)));
        match result {
            Ok(()) => self.replayed.push(id.to_string()),
            Err(ReplayError::Skipped(skip)) => self.skipped.push(Skipped {
                id: id.to_string(),
                reason: skip.code(),
                detail: skip.to_string(),
            }),
            Err(e) => self.failed.push(Failed {
                id: id.to_string(),
                error: e.to_string(),
            }),
        }
        self.broker_failed
    }
}

/// How far [`Replayer::run`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Every matching record, a page at a time.
    None,
    /// At most this many records looked at, skipped ones included (an API page: the cursor
    /// goes on after them).
    Looked(usize),
    /// At most this many records replayed (or, in a dry run, replayable); skipped ones do not
    /// count, so records that can never be replayed cannot use up the limit (the CLI, which
    /// has no cursor).
    Replayed(usize),
    /// At most `replayed` replayed, looking at no more than `looked` records: a run on a
    /// request's time (the portal) that many unreplayable records cannot make unbounded.
    ReplayedWithin { replayed: usize, looked: usize },
}

impl Limit {
    /// Whether the limit is reached, counting `queued` records waiting in a batch as replayed.
    pub(super) fn reached(self, report: &Report, queued: usize) -> bool {
        match self {
            Limit::None => false,
            Limit::Looked(n) => report.matched() + queued >= n,
            Limit::Replayed(n) => report.replayed.len() + queued >= n,
            Limit::ReplayedWithin { replayed, looked } => {
                report.replayed.len() + queued >= replayed || report.matched() + queued >= looked
            }
        }
    }

    /// Records worth reading in the next page of at most `page`: for [`Limit::Looked`], what the
    /// limit has left and one more (to tell whether more are left), so a request for one
    /// record does not read a whole page of payloads.
    pub(super) fn page(self, report: &Report, queued: usize, page: usize) -> usize {
        match self {
            Limit::Looked(n) | Limit::ReplayedWithin { looked: n, .. } => n
                .saturating_sub(report.matched() + queued)
                .saturating_add(1)
                .min(page),
            Limit::None | Limit::Replayed(_) => page,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_what_a_looked_limit_has_left_and_one_more() {
        let mut report = Report::default();
        assert_eq!(Limit::Looked(1).page(&report, 0, 500), 2);
        assert_eq!(Limit::Looked(1000).page(&report, 0, 500), 500);
        report.replayed = vec!["dl_1".into(); 7];
        assert_eq!(Limit::Looked(10).page(&report, 2, 500), 2);
        assert_eq!(
            Limit::Looked(5).page(&report, 0, 500),
            1,
            "past the limit: one, to say more are left"
        );
        for other in [Limit::None, Limit::Replayed(1)] {
            assert_eq!(other.page(&report, 0, 500), 500, "{other:?}");
        }
    }

    #[test]
    fn replayed_within_stops_at_whichever_bound_comes_first() {
        let within = Limit::ReplayedWithin {
            replayed: 3,
            looked: 10,
        };
        let mut report = Report {
            skipped: (0..8)
                .map(|n| Skipped {
                    id: format!("dl_{n}"),
                    reason: "subscription_deleted",
                    detail: String::new(),
                })
                .collect(),
            ..Report::default()
        };
        assert!(!within.reached(&report, 1), "9 looked at, 1 replayable");
        assert!(within.reached(&report, 2), "10 looked at");
        assert_eq!(within.page(&report, 0, 500), 3);
        report.skipped.clear();
        assert!(within.reached(&report, 3), "3 replayable");
        assert!(!within.reached(&report, 2));
    }
}
