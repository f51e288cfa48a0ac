//! Which delivery-log records a replay takes: the filters an operator gives (CLI flags or the
//! bulk API's body), checked and turned into a store selection, and the bulk API's cursor.
//!
//! A selection always has an upper bound: without `until`, the run's start. A replay to an
//! endpoint still down is dead-lettered again seconds later as a new record; without the bound
//! the same run (its later pages) would pick that up and send the event twice.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

use super::OpsError;
use super::when::parse_instant;
use crate::store::{LogFilter, ReplaySelection};

/// The replay filters as typed: times still raw.
#[derive(Debug, Default, Clone)]
pub struct Filters {
    pub account_id: Option<String>,
    pub subscription_id: Option<String>,
    pub event: Option<String>,
    pub reason: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub ids: Vec<String>,
    /// Everything not replayed yet; needed when no other filter is given.
    pub all: bool,
}

impl Filters {
    /// Checks the filters and reads the times relative to `now`: at least one filter or `all`,
    /// no empty value, `since` not in the future and before `until`; `until` is at most `now`
    /// (its default).
    pub fn selection(&self, now: DateTime<Utc>) -> Result<ReplaySelection, OpsError> {
        let bad = |message: String| OpsError::BadInput(message);
        let named = [
            ("account_id", &self.account_id),
            ("subscription_id", &self.subscription_id),
            ("event", &self.event),
            ("reason", &self.reason),
            ("since", &self.since),
            ("until", &self.until),
        ];
        if let Some((name, _)) = named
            .iter()
            .find(|(_, v)| v.as_deref().is_some_and(|v| v.trim().is_empty()))
        {
            return Err(bad(format!("{name} must not be empty")));
        }
        if self.ids.iter().any(|id| id.trim().is_empty()) {
            return Err(bad("ids must not contain an empty id".into()));
        }
        let filtered = named.iter().any(|(_, v)| v.is_some()) || !self.ids.is_empty();
        if !filtered && !self.all {
            return Err(bad(
                "give at least one filter (account, subscription, event, reason, since, until, ids) \
                 or ask for all records explicitly (all)"
                    .into(),
            ));
        }
        let mut times = Filters::times(self.since.clone(), self.until.clone(), now)?;
        let now_text = crate::time::rfc3339(now);
        if let Some(since) = &times.since
            && *since > now_text
        {
            return Err(bad(format!(
                "since ({since}) is in the future (now is {now_text}), so nothing could match; \
                 a clock time (10:00) is today's, in UTC"
            )));
        }
        times.until = Some(replay_bound(times.until.take(), now_text));
        Ok(ReplaySelection {
            filter: LogFilter {
                account_id: self.account_id.clone(),
                subscription_id: self.subscription_id.clone(),
                event: self.event.clone(),
                reason: self.reason.clone(),
                ..times
            },
            ids: self.ids.clone(),
        })
    }

    /// A [`LogFilter`] with only `since` and `until` set, read relative to `now` and checked
    /// (`since` before `until`).
    pub fn times(
        since: Option<String>,
        until: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<LogFilter, OpsError> {
        let read = |raw: Option<String>| {
            raw.map(|raw| parse_instant(&raw, now))
                .transpose()
                .map_err(|e| OpsError::BadInput(e.to_string()))
        };
        let (since, until) = (read(since)?, read(until)?);
        if let (Some(since), Some(until)) = (&since, &until)
            && since >= until
        {
            return Err(OpsError::BadInput(format!(
                "since ({since}) must be before until ({until})"
            )));
        }
        Ok(LogFilter {
            since,
            until,
            ..LogFilter::default()
        })
    }
}

/// The upper bound a replay takes: `until` if given and earlier, else `now` (both as the store
/// writes times). Never past now: a later bound would let a run take its own replays' dead
/// letters.
pub fn replay_bound(until: Option<String>, now: String) -> String {
    match until {
        Some(until) => until.min(now),
        None => now,
    }
}

/// Where a bulk replay goes on: after the record `after`, and only among records dead-lettered
/// before `until` (the first request's bound, so later pages do not take the dead letters of
/// its own replays). Opaque to clients: URL-safe base64 of `after` and `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayCursor {
    pub after: String,
    pub until: String,
}

impl ReplayCursor {
    /// Narrows `selection` to this cursor's bound (the first request's, or the selection's own
    /// if earlier) and returns the record to go on after.
    pub fn resume(self, selection: &mut ReplaySelection) -> String {
        let until = match selection.filter.until.take() {
            Some(own) => own.min(self.until),
            None => self.until,
        };
        selection.filter.until = Some(until);
        self.after
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}\n{}", self.after, self.until))
    }

    pub fn decode(raw: &str) -> Result<ReplayCursor, OpsError> {
        let bad = || {
            OpsError::BadInput(format!(
                "cursor {raw:?} is not a next_cursor of this endpoint: pass next_cursor as it came"
            ))
        };
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (after, until) = text.split_once('\n').ok_or_else(bad)?;
        let until = DateTime::parse_from_rfc3339(until).map_err(|_| bad())?;
        if after.trim().is_empty() {
            return Err(bad());
        }
        Ok(ReplayCursor {
            after: after.to_string(),
            until: crate::time::rfc3339(until.with_timezone(&Utc)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-11-27T16:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_selection_needs_a_filter_or_all() {
        let err = Filters::default().selection(now()).unwrap_err();
        assert!(err.to_string().contains("at least one filter"), "{err}");
        let all = Filters {
            all: true,
            ..Filters::default()
        };
        assert!(all.selection(now()).is_ok());
        let ids = Filters {
            ids: vec!["dl_1".into()],
            ..Filters::default()
        };
        assert_eq!(ids.selection(now()).unwrap().ids, ["dl_1"]);
    }

    #[test]
    fn times_are_normalised_and_checked() {
        let f = Filters {
            account_id: Some("acct_acme".into()),
            since: Some("10:00".into()),
            until: Some("2026-11-27T12:00:00+01:00".into()),
            ..Filters::default()
        };
        let s = f.selection(now()).unwrap();
        assert_eq!(s.filter.since.as_deref(), Some("2026-11-27T10:00:00.000Z"));
        assert_eq!(s.filter.until.as_deref(), Some("2026-11-27T11:00:00.000Z"));

        let backwards = Filters {
            since: Some("2h".into()),
            until: Some("3h".into()),
            ..Filters::default()
        };
        let err = backwards.selection(now()).unwrap_err().to_string();
        assert!(err.contains("must be before until"), "{err}");
        let garbage = Filters {
            since: Some("soon".into()),
            ..Filters::default()
        };
        let err = garbage.selection(now()).unwrap_err().to_string();
        assert!(err.contains("\"soon\" is not a time"), "{err}");
        let empty = Filters {
            account_id: Some(" ".into()),
            ..Filters::default()
        };
        let err = empty.selection(now()).unwrap_err().to_string();
        assert_eq!(err, "account_id must not be empty");
    }

    #[test]
    fn until_is_at_most_now_and_since_must_not_be_in_the_future() {
        let f = Filters {
            since: Some("2h".into()),
            ..Filters::default()
        };
        let s = f.selection(now()).unwrap();
        assert_eq!(s.filter.until.as_deref(), Some("2026-11-27T16:00:00.000Z"));
        // 17:00 today is an hour ahead of now (16:00).
        let ahead = Filters {
            since: Some("17:00".into()),
            ..Filters::default()
        };
        let err = ahead.selection(now()).unwrap_err();
        assert!(matches!(err, OpsError::BadInput(_)), "{err:?}");
        assert!(err.to_string().contains("is in the future"), "{err}");
        // An `until` ahead of now is now: the run must not reach its own replays' dead letters.
        let later = Filters {
            until: Some("2026-11-28".into()),
            all: true,
            ..Filters::default()
        };
        let s = later.selection(now()).unwrap();
        assert_eq!(s.filter.until.as_deref(), Some("2026-11-27T16:00:00.000Z"));
        let earlier = Filters {
            until: Some("10:00".into()),
            ..Filters::default()
        };
        let s = earlier.selection(now()).unwrap();
        assert_eq!(s.filter.until.as_deref(), Some("2026-11-27T10:00:00.000Z"));
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = ReplayCursor {
            after: "dl_0192".into(),
            until: "2026-11-27T16:00:00.000Z".into(),
        };
        assert_eq!(ReplayCursor::decode(&cursor.encode()).unwrap(), cursor);
        for raw in ["dl_0192", "", "!!!", &URL_SAFE_NO_PAD.encode("dl_1\nlater")] {
            let err = ReplayCursor::decode(raw).unwrap_err();
            assert!(
                err.to_string().contains("not a next_cursor"),
                "{raw}: {err}"
            );
        }
    }
}
