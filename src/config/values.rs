//! The value types settings are parsed into: secrets and URLs that never print their secret,
//! durations, retry delays, and the enums.

use std::fmt;
use std::time::Duration;

use clap::ValueEnum;

/// A string that never appears in `Debug` output or logs.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

/// A connection URL whose password never appears in `Debug`/`Display` output or logs: both
/// print [`redact_url`]'s form; [`SecretUrl::expose`] gives the whole URL to the client library.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password masked, fit for a log line or an error.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl From<String> for SecretUrl {
    fn from(value: String) -> Self {
        SecretUrl(value)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `AMQP_URL`: one broker URL, or the comma-separated URLs of a cluster's nodes, in the order
/// the service tries them. Printed with every password masked.
#[derive(Clone, PartialEq, Eq)]
pub struct UrlList(Vec<SecretUrl>);

impl UrlList {
    pub fn urls(&self) -> &[SecretUrl] {
        &self.0
    }

    /// Every URL with its password masked, comma-separated.
    pub fn redacted(&self) -> String {
        self.0
            .iter()
            .map(SecretUrl::redacted)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Parses `AMQP_URL`: `amqp://` or `amqps://` URLs with a host, separated by commas.
pub fn parse_amqp_urls(raw: &str) -> Result<UrlList, String> {
    let mut urls = Vec::new();
    for (n, part) in raw.split(',').enumerate() {
        let part = part.trim();
        let redacted = redact_url(part);
        let url = url::Url::parse(part)
            .map_err(|e| format!("URL {} ({redacted:?}) is not a URL: {e}", n + 1))?;
        if !matches!(url.scheme(), "amqp" | "amqps") || url.host_str().is_none_or(str::is_empty) {
            return Err(format!(
                "URL {} ({redacted:?}) must be amqp:// or amqps:// with a host",
                n + 1
            ));
        }
        urls.push(SecretUrl(part.to_string()));
    }
    Ok(UrlList(urls))
}

impl fmt::Debug for UrlList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for UrlList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replaces the password of a URL with `***` so it can be logged. A URL that does not parse
/// (a password with an unencoded `/`, `#`, `?`…), or that parses without a password although
/// it has an `@` (`amqp://u:12/cd@h` reads as host `u`, port 12), has everything between
/// `://` and its last `@` masked: better a lost user name than a leaked password.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(url) if url.scheme() == "sqlite" => raw.to_string(),
        _ => match raw.split_once("://") {
            Some((scheme, rest)) if rest.contains('@') => {
                let (_, host) = rest.rsplit_once('@').expect("contains @");
                format!("{scheme}://***@{host}")
            }
            _ => raw.to_string(),
        },
    }
}

/// The parts a replica runs (`ROLES`): any of the dispatcher (consumes the events queue), the
/// DLQ logger (consumes the dead-letter queue) and the API (the admin API and the customer
/// portal). `/metrics`, `/healthz` and `/readyz` are served by every replica.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub dispatcher: bool,
    pub dlq_logger: bool,
    pub api: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        dispatcher: true,
        dlq_logger: true,
        api: true,
    };

    /// The roles' names, in a fixed order (`dispatcher,dlq-logger,api`).
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.dispatcher, "dispatcher"),
            (self.dlq_logger, "dlq-logger"),
            (self.api, "api"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// Parses `ROLES`: `all`, or a comma list of `dispatcher`, `dlq-logger`, `api`.
pub fn parse_roles(raw: &str) -> Result<Roles, String> {
    if raw.trim() == "all" {
        return Ok(Roles::ALL);
    }
    let mut roles = Roles {
        dispatcher: false,
        dlq_logger: false,
        api: false,
    };
    for name in raw.split(',').map(str::trim) {
        let slot = match name {
            "dispatcher" => &mut roles.dispatcher,
            "dlq-logger" => &mut roles.dlq_logger,
            "api" => &mut roles.api,
            _ => {
                return Err(format!(
                    "unknown role {name:?}; expected all, or a comma list of dispatcher, dlq-logger, api"
                ));
            }
        };
        if *slot {
            return Err(format!("role {name:?} is listed twice"));
        }
        *slot = true;
    }
    Ok(roles)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QueueType {
    Quorum,
    Classic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// The ordered retry delays; entry n is the wait after failed attempt n.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryDelays(pub Vec<Duration>);

pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw.trim())
        .map_err(|e| format!("{raw:?} is not a duration like 10s or 500ms: {e}"))
}

/// Longest overlap a secret rotation may keep the old secret signing.
pub const MAX_SECRET_OVERLAP: Duration = Duration::from_secs(30 * 24 * 3600);

/// The shortest retention but `0`: anything shorter is almost surely a slip (`m` for months).
const MIN_RETENTION: Duration = Duration::from_secs(3600);
/// The longest retention: past it the purge's cut-off would be before any date.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 36_525 * 864);

pub fn parse_retention(raw: &str) -> Result<Duration, String> {
    match parse_duration(raw)? {
        d if d.is_zero() => Ok(d),
        d if d < MIN_RETENTION => Err(format!(
            "{} would delete the delivery log almost as it is written: give at least 1h \
             (months are written 6M or 6months, minutes 6m), or 0 to keep every record",
            humantime::format_duration(d)
        )),
        d if d > MAX_RETENTION => {
            Err("must be at most 100 years (or 0 to keep every record)".into())
        }
        d => Ok(d),
    }
}

pub fn parse_overlap(raw: &str) -> Result<Duration, String> {
    match parse_duration(raw)? {
        d if d > MAX_SECRET_OVERLAP => Err("must be at most 30 days".into()),
        d => Ok(d),
    }
}

/// A duration above zero.
pub fn parse_positive_duration(raw: &str) -> Result<Duration, String> {
    match parse_duration(raw)? {
        d if d.is_zero() => Err("must be above zero".into()),
        d => Ok(d),
    }
}

pub fn parse_delays(raw: &str) -> Result<RetryDelays, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Ok(RetryDelays(Vec::new()));
    }
    let delays = trimmed
        .split(',')
        .map(parse_duration)
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(bad) = delays
        .iter()
        .find(|d| d.as_millis() == 0 || d.as_millis() > u32::MAX as u128)
    {
        return Err(format!(
            "retry delay {bad:?} must be between 1ms and about 49 days"
        ));
    }
    if delays.len() > 20 {
        return Err("at most 20 retry delays".into());
    }
    let mut labels: Vec<String> = delays.iter().map(|d| delay_label(*d)).collect();
    labels.sort();
    labels.dedup();
    if labels.len() != delays.len() {
        return Err(format!("retry delays must be distinct, got {raw:?}"));
    }
    Ok(RetryDelays(delays))
}

/// The short name of a delay used in queue names and metric labels: `2s`, `500ms`.
pub fn delay_label(delay: Duration) -> String {
    let ms = delay.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A name of 1 to `max` bytes (a queue prefix, an exchange name).
pub fn name_of_at_most(max: usize) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |raw: &str| {
        if raw.is_empty() || raw.len() > max {
            Err(format!("must be 1 to {max} characters"))
        } else {
            Ok(raw.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse_in_order_and_label_like_queue_names() {
        let d = parse_delays("2s, 4s,8s").unwrap();
        assert_eq!(
            d.0,
            vec![
                Duration::from_secs(2),
                Duration::from_secs(4),
                Duration::from_secs(8)
            ]
        );
        let labels: Vec<_> = d.0.iter().map(|d| delay_label(*d)).collect();
        assert_eq!(labels, ["2s", "4s", "8s"]);
        assert_eq!(delay_label(Duration::from_millis(1500)), "1500ms");
        assert_eq!(parse_delays("").unwrap().0, Vec::<Duration>::new());
    }

    #[test]
    fn bad_delays_are_refused_with_the_offending_value() {
        assert!(parse_delays("2s,soon").unwrap_err().contains("soon"));
        assert!(parse_delays("0s").is_err());
        assert!(parse_delays("2s,2s").unwrap_err().contains("distinct"));
    }

    #[test]
    fn urls_lose_their_password_in_debug_output() {
        assert_eq!(
            redact_url("amqp://guest:hunter2@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(redact_url("amqp://host:5672/%2f"), "amqp://host:5672/%2f");
        assert_eq!(redact_url("amqp://u:a@b@h"), "amqp://u:***@h");
        // Passwords the URL parser cannot read, or reads as something else, are masked whole.
        for (raw, redacted) in [
            ("amqp://u:ab/cd@h:5672/%2f", "amqp://***@h:5672/%2f"),
            ("amqp://u:12/cd@h", "amqp://***@h"),
            ("postgres://u:a#b@db/app", "postgres://***@db/app"),
        ] {
            assert_eq!(redact_url(raw), redacted, "{raw}");
            assert!(!redact_url(raw).contains("cd") && !redact_url(raw).contains("a#b"));
        }
        let url = SecretUrl::from("amqp://u:hunter2@h/%2f".to_string());
        assert!(!format!("{url:?} {url}").contains("hunter2"));
        assert_eq!(url.expose(), "amqp://u:hunter2@h/%2f");
    }
}
