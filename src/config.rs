//! Typed configuration: every setting is a CLI flag and an environment variable (clap `env`),
//! parsed and validated once at load so the rest of the service never sees a bad value.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Shortest admin token accepted on a non-loopback LISTEN_ADDR (shorter ones are only warned
/// about on loopback).
pub const MIN_PUBLIC_TOKEN: usize = 16;

/// Longest overlap a secret rotation may keep the old secret signing.
pub const MAX_SECRET_OVERLAP: Duration = Duration::from_secs(30 * 24 * 3600);

/// Everything `webhook-dispatcher serve` needs. Field docs are the `--help` text.
#[derive(Clone, Args)]
pub struct Config {
    /// RabbitMQ connection URL.
    #[arg(
        long,
        global = true,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,

    /// Store for subscriptions and the delivery log: `sqlite://FILE` (`serve` creates it if
    /// missing; the operator commands only open an existing one) or `postgres://…` for a store
    /// shared by several instances.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = "sqlite://webhook-dispatcher.db"
    )]
    pub database_url: String,

    /// Address of the admin API, `/metrics` and the health checks. Port 0 picks a free port.
    #[arg(
        long,
        global = true,
        env = "LISTEN_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen_addr: SocketAddr,

    /// Topic exchange producers publish events to (routing key = event name).
    #[arg(
        long,
        global = true,
        env = "EVENTS_EXCHANGE",
        default_value = "clarm.events"
    )]
    pub events_exchange: String,

    /// Prefix of every queue the service declares.
    #[arg(long, global = true, env = "QUEUE_PREFIX", default_value = "webhooks")]
    pub queue_prefix: String,

    /// `quorum` (replicated, survives node loss) or `classic` (single dev node).
    #[arg(long, global = true, env = "QUEUE_TYPE", value_enum, default_value_t = QueueType::Quorum)]
    pub queue_type: QueueType,

    /// Bearer token required on `/v1/*`. May be unset only when LISTEN_ADDR is a loopback address.
    #[arg(long, global = true, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// Limit for one whole delivery attempt (connect, send, response).
    #[arg(long, global = true, env = "DELIVERY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,

    /// Comma-separated retry delays; one delay queue per entry, attempts = 1 + entries.
    #[arg(long, global = true, env = "RETRY_DELAYS", default_value = "2s,4s,8s", value_parser = parse_delays)]
    pub retry_delays: RetryDelays,

    /// Allow endpoints on loopback, private, link-local and other non-public addresses.
    #[arg(long, global = true, env = "ALLOW_PRIVATE_TARGETS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_private_targets: bool,

    /// Log format: `json` or `pretty`. `RUST_LOG` filters.
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Messages the broker may hand the dispatcher before it acks (AMQP prefetch).
    #[arg(long, global = true, env = "PREFETCH", default_value_t = 512, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,

    /// Most HTTP delivery attempts in flight at once.
    #[arg(long, global = true, env = "MAX_IN_FLIGHT", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,

    /// Most attempts in flight to one subscription's endpoint. Past it, deliveries to that
    /// endpoint wait in the delay queues (no attempt spent), so a hanging endpoint cannot take
    /// the whole prefetch window from every other account.
    #[arg(long, global = true, env = "MAX_IN_FLIGHT_PER_ENDPOINT", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight_per_endpoint: u32,

    /// On SIGTERM, how long in-flight deliveries may take to finish before their messages are
    /// handed back to the broker unacked.
    #[arg(long, global = true, env = "SHUTDOWN_GRACE", default_value = "15s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How often the subscription index is reloaded from the store (changes made through this
    /// instance's API apply at once; this picks up other instances' changes).
    #[arg(long, global = true, env = "SUBSCRIPTION_REFRESH", default_value = "10s", value_parser = parse_duration)]
    pub subscription_refresh: Duration,

    /// After `POST /v1/subscriptions/{id}/rotate-secret`, how long the old secret keeps signing
    /// next to the new one (a request may ask for another overlap, up to 30 days).
    #[arg(long, global = true, env = "SECRET_ROTATION_OVERLAP", default_value = "24h", value_parser = parse_duration)]
    pub secret_rotation_overlap: Duration,
}

impl Config {
    /// Whether the admin token is too short to resist guessing (warned about at start).
    pub fn weak_token(&self) -> bool {
        self.admin_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < MIN_PUBLIC_TOKEN)
    }

    /// Checks rules that involve more than one setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let loopback = self.listen_addr.ip().is_loopback();
        match &self.admin_token {
            None if !loopback => return Err(ConfigError::TokenRequired(self.listen_addr)),
            // An empty token would be compared with a missing header read as "": open to all.
            Some(token) if token.expose().trim().is_empty() => {
                return Err(ConfigError::Invalid(
                    "ADMIN_TOKEN is set but empty: set a token of 16 or more characters, or unset it (allowed only on a loopback LISTEN_ADDR)".into(),
                ));
            }
            Some(_) if self.weak_token() && !loopback => {
                return Err(ConfigError::Invalid(format!(
                    "ADMIN_TOKEN must be at least {MIN_PUBLIC_TOKEN} characters when LISTEN_ADDR ({}) is not a loopback address",
                    self.listen_addr
                )));
            }
            _ => {}
        }
        if self.queue_prefix.is_empty() || self.queue_prefix.len() > 200 {
            return Err(ConfigError::Invalid(
                "QUEUE_PREFIX must be 1 to 200 characters".into(),
            ));
        }
        if self.events_exchange.is_empty() || self.events_exchange.len() > 255 {
            return Err(ConfigError::Invalid(
                "EVENTS_EXCHANGE must be 1 to 255 characters".into(),
            ));
        }
        if self.secret_rotation_overlap > MAX_SECRET_OVERLAP {
            return Err(ConfigError::Invalid(
                "SECRET_ROTATION_OVERLAP must be at most 30 days".into(),
            ));
        }
        if self.delivery_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "DELIVERY_TIMEOUT must be above zero".into(),
            ));
        }
        Ok(())
    }

    /// Number of delivery attempts an event gets: the first plus one per retry delay.
    pub fn max_attempts(&self) -> u32 {
        1 + self.retry_delays.0.len() as u32
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field("database_url", &redact_url(&self.database_url))
            .field("listen_addr", &self.listen_addr)
            .field("events_exchange", &self.events_exchange)
            .field("queue_prefix", &self.queue_prefix)
            .field("queue_type", &self.queue_type)
            .field("admin_token", &self.admin_token)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("retry_delays", &self.retry_delays)
            .field("allow_private_targets", &self.allow_private_targets)
            .field("prefetch", &self.prefetch)
            .field("max_in_flight", &self.max_in_flight)
            .field(
                "max_in_flight_per_endpoint",
                &self.max_in_flight_per_endpoint,
            )
            .field("shutdown_grace", &self.shutdown_grace)
            .field("secret_rotation_overlap", &self.secret_rotation_overlap)
            .finish_non_exhaustive()
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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "ADMIN_TOKEN is required when LISTEN_ADDR ({0}) is not a loopback address: set ADMIN_TOKEN or listen on 127.0.0.1"
    )]
    TokenRequired(SocketAddr),
    #[error("{0}")]
    Invalid(String),
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

/// The ordered retry delays; entry n is the wait after failed attempt n.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryDelays(pub Vec<Duration>);

fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw.trim())
        .map_err(|e| format!("{raw:?} is not a duration like 10s or 500ms: {e}"))
}

fn parse_delays(raw: &str) -> Result<RetryDelays, String> {
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
    }

    fn parse(args: &[&str]) -> Config {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            cfg: Config,
        }
        let args = std::iter::once("webhook-dispatcher").chain(args.iter().copied());
        <Cli as clap::Parser>::try_parse_from(args).unwrap().cfg
    }

    #[test]
    fn a_public_listen_address_needs_an_admin_token() {
        let open = parse(&["--listen-addr", "0.0.0.0:8080"]);
        let err = open.validate().unwrap_err();
        assert!(matches!(err, ConfigError::TokenRequired(_)), "{err}");
        assert!(err.to_string().contains("ADMIN_TOKEN is required"));
        let guarded = parse(&[
            "--listen-addr",
            "0.0.0.0:8080",
            "--admin-token",
            "a-long-enough-token",
        ]);
        assert!(guarded.validate().is_ok());
        assert!(
            parse(&["--listen-addr", "127.0.0.1:8080"])
                .validate()
                .is_ok()
        );
        // An empty token is no token: refused everywhere (it matched a missing header).
        for addr in ["0.0.0.0:8080", "127.0.0.1:8080"] {
            let err = parse(&["--listen-addr", addr, "--admin-token", ""])
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains("set but empty"), "{addr}: {err}");
        }
        // A short one (the Secret template's REPLACE_ME) is refused off loopback, warned on it.
        let err = parse(&[
            "--listen-addr",
            "0.0.0.0:8080",
            "--admin-token",
            "REPLACE_ME",
        ])
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("at least 16 characters"), "{err}");
        let short_local = parse(&["--listen-addr", "127.0.0.1:8080", "--admin-token", "short"]);
        assert!(short_local.validate().is_ok() && short_local.weak_token());
        assert!(parse(&["--listen-addr", "[::1]:8080"]).validate().is_ok());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let cfg = parse(&[
            "--admin-token",
            "token-that-must-not-leak",
            "--amqp-url",
            "amqp://svc:broker-password@rabbit:5672/%2f",
            "--database-url",
            "postgres://svc:db-password@db/webhooks",
        ]);
        let printed = format!("{cfg:?}");
        for secret in ["token-that-must-not-leak", "broker-password", "db-password"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
    }

    #[test]
    fn a_rotation_overlap_over_30_days_is_refused() {
        assert!(
            parse(&["--secret-rotation-overlap", "31days"])
                .validate()
                .is_err()
        );
        assert!(
            parse(&["--secret-rotation-overlap", "30days"])
                .validate()
                .is_ok()
        );
    }
}
