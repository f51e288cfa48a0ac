//! Subscriptions: the domain type, its validation, and the [`Directory`] the dispatcher and the
//! API find them in (an in-memory index: no store query per event). The store is one
//! [`SubscriptionSource`]; nothing here depends on it.

mod directory;
mod index;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use directory::{Directory, LookupError, SubscriptionSource};
use index::SubscriptionIndex;

use crate::delivery::SigningKey;
use crate::event::EventKind;

/// Which events a subscription selected: a bit per [`EventKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventSet(u8);

impl EventSet {
    pub const ALL: EventSet = EventSet(0b11_1111);

    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & bit(kind) != 0
    }

    /// Parses the API form: `["*"]` or a non-empty list of known event names.
    pub fn parse(names: &[String]) -> Result<EventSet, String> {
        if names.is_empty() {
            return Err("events must list at least one event, or [\"*\"] for all".into());
        }
        if names.iter().any(|n| n == "*") {
            if names.len() > 1 {
                return Err("\"*\" already selects every event; list it alone".into());
            }
            return Ok(EventSet::ALL);
        }
        let mut set = 0u8;
        for name in names {
            let kind = EventKind::parse(name).ok_or_else(|| {
                format!(
                    "unknown event {name:?}; expected \"*\" or some of purchase, identify, goal_achieved, enterprise_alert, visitor_enriched, high_intent_visitor"
                )
            })?;
            set |= bit(kind);
        }
        Ok(EventSet(set))
    }

    /// The API form: `["*"]` for all, else the names in a fixed order.
    pub fn names(self) -> Vec<String> {
        if self == EventSet::ALL {
            return vec!["*".to_string()];
        }
        EventKind::ALL
            .into_iter()
            .filter(|k| self.contains(*k))
            .map(|k| k.as_str().to_string())
            .collect()
    }
}

fn bit(kind: EventKind) -> u8 {
    1 << (kind as u8)
}

/// A stored subscription. `secret` is never serialised; the API adds it where the contract says.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(description = "A webhook endpoint of one account and the events it receives.")]
pub struct Subscription {
    pub id: String,
    #[schema(example = "acct_acme")]
    pub account_id: String,
    #[schema(example = "https://example.com/hooks")]
    pub url: String,
    /// Event names in a fixed order, or `["*"]` for every event.
    #[serde(serialize_with = "serialize_events")]
    #[schema(value_type = Vec<String>, example = json!(["purchase", "identify"]))]
    pub events: EventSet,
    pub enabled: bool,
    /// Why it is disabled: `manual` (the API or the portal) or `auto` (the automatic-disable
    /// rule); null while it is enabled.
    #[schema(example = json!(null))]
    pub disabled_reason: Option<DisabledReason>,
    /// When it was disabled; null while it is enabled.
    #[schema(format = DateTime, example = json!(null))]
    pub disabled_at: Option<String>,
    pub description: Option<String>,
    #[serde(skip)]
    pub secret: SigningKey,
    /// The secret before the last rotation; shown as its expiry only, while it still signs.
    #[serde(
        rename = "previous_secret_expires_at",
        serialize_with = "serialize_previous"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub previous_secret: Option<PreviousSecret>,
    #[serde(skip)]
    pub parsed_url: url::Url,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// Why a subscription is disabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DisabledReason {
    /// Through the API or the portal.
    Manual,
    /// By the automatic-disable rule: it failed every attempt of `AUTO_DISABLE_MIN_FAILURES`
    /// deliveries and succeeded at nothing for `AUTO_DISABLE_AFTER`.
    Auto,
}

impl DisabledReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisabledReason::Manual => "manual",
            DisabledReason::Auto => "auto",
        }
    }

    pub fn parse(text: &str) -> Option<DisabledReason> {
        match text {
            "manual" => Some(DisabledReason::Manual),
            "auto" => Some(DisabledReason::Auto),
            _ => None,
        }
    }
}

impl Subscription {
    /// Disabled by the automatic-disable rule: its events are dead-lettered as
    /// `subscription_disabled` (replayable once it is enabled again), not dropped.
    pub fn auto_disabled(&self) -> bool {
        !self.enabled && self.disabled_reason == Some(DisabledReason::Auto)
    }
}

/// A rotated-out secret that keeps signing, next to the current one, until `expires_at`.
#[derive(Clone, Debug)]
pub struct PreviousSecret {
    pub key: SigningKey,
    pub expires_at: DateTime<Utc>,
}

impl Subscription {
    /// The keys a delivery made at `now` is signed with: the current secret, then the previous
    /// one while its overlap lasts (receivers accept either signature).
    pub fn signing_keys(&self, now: DateTime<Utc>) -> Vec<&SigningKey> {
        let mut keys = vec![&self.secret];
        if let Some(previous) = &self.previous_secret
            && now < previous.expires_at
        {
            keys.push(&previous.key);
        }
        keys
    }
}

fn serialize_previous<S: serde::Serializer>(
    previous: &Option<PreviousSecret>,
    s: S,
) -> Result<S::Ok, S::Error> {
    // Once the overlap is over the old secret signs nothing: shown as null, like no rotation.
    previous
        .as_ref()
        .filter(|p| Utc::now() < p.expires_at)
        .map(|p| crate::time::rfc3339(p.expires_at))
        .serialize(s)
}

fn serialize_events<S: serde::Serializer>(events: &EventSet, s: S) -> Result<S::Ok, S::Error> {
    events.names().serialize(s)
}

/// Checks an endpoint URL: absolute, http or https, a host, no credentials, at most 2,048 bytes.
pub fn validate_url(raw: &str) -> Result<url::Url, String> {
    if raw.len() > 2048 {
        return Err("url must be at most 2048 characters".into());
    }
    // The parser would silently drop tabs and line breaks and trim the ends: what was sent would
    // not be what is stored, and a CR/LF is never meant.
    if let Some(c) = raw.chars().find(|c| c.is_control()) {
        return Err(format!(
            "url must not contain control characters (found U+{:04X})",
            c as u32
        ));
    }
    if raw.starts_with(char::is_whitespace) || raw.ends_with(char::is_whitespace) {
        return Err("url must not begin or end with white space".into());
    }
    let url =
        url::Url::parse(raw).map_err(|e| format!("url {raw:?} is not an absolute URL: {e}"))?;
    // Stored and shown normalised (non-ASCII percent-encoded): that form must fit too, or a URL
    // read back from the API could not be sent back unchanged.
    if url.as_str().len() > 2048 {
        return Err(format!(
            "url must be at most 2048 characters once normalised (percent-encoded, it is {})",
            url.as_str().len()
        ));
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "url must use http or https, not {:?}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("url must have a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("url must not contain credentials; the payload is signed instead".into());
    }
    if url.fragment().is_some() {
        return Err("url must not have a #fragment".into());
    }
    Ok(url)
}

/// Checks an account id: the rules of [`crate::text::check_account_id`], the same as on intake.
pub fn validate_account(raw: &str) -> Result<(), String> {
    crate::text::check_account_id(raw)
}

/// Checks a description: at most 1,000 characters.
pub fn validate_description(raw: &str) -> Result<(), String> {
    if raw.chars().count() > 1000 {
        return Err("description must be at most 1000 characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn event_sets_parse_match_and_print_back() {
        let set = EventSet::parse(&names(&["identify", "purchase"])).unwrap();
        assert!(set.contains(EventKind::Purchase) && set.contains(EventKind::Identify));
        assert!(!set.contains(EventKind::GoalAchieved));
        assert_eq!(set.names(), ["purchase", "identify"]);
        let all = EventSet::parse(&names(&["*"])).unwrap();
        assert!(EventKind::ALL.iter().all(|k| all.contains(*k)));
        assert_eq!(all.names(), ["*"]);
    }

    #[test]
    fn bad_event_lists_say_what_is_wrong() {
        assert!(EventSet::parse(&[]).unwrap_err().contains("at least one"));
        assert!(
            EventSet::parse(&names(&["refund"]))
                .unwrap_err()
                .contains("refund")
        );
        assert!(
            EventSet::parse(&names(&["*", "purchase"]))
                .unwrap_err()
                .contains("alone")
        );
    }

    #[test]
    fn urls_must_be_absolute_http_without_credentials() {
        assert!(validate_url("https://example.com/hooks?x=1").is_ok());
        for bad in [
            "example.com/hook",
            "ftp://example.com/",
            "https://u:p@example.com/",
            "/relative",
            "https://example.com/#frag",
            "https://example.com/a\r\nX: y",
            "https://example.com/a\tb",
            " https://example.com/",
            "https://example.com/\u{85}",
        ] {
            assert!(validate_url(bad).is_err(), "{bad}");
        }
        // 2,020 bytes as sent, 6,020 once `é` is percent-encoded.
        let long = format!("https://example.com/{}", "é".repeat(1000));
        assert!(long.len() <= 2048);
        assert!(validate_url(&long).unwrap_err().contains("normalised"));
    }
}
