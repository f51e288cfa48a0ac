//! Timestamps as the API and the store write them: RFC 3339, UTC, milliseconds, `Z` — so that
//! text order is time order.

use chrono::{SecondsFormat, Utc};

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}
