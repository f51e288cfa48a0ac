//! Timestamps as the API and the store write them: RFC 3339, UTC, milliseconds, `Z` — so that
//! text order is time order.

use chrono::{DateTime, SecondsFormat, Utc};

pub fn now_rfc3339() -> String {
    rfc3339(Utc::now())
}

pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}
