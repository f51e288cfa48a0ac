//! Typed configuration: every setting is a CLI flag and an environment variable (clap `env`),
//! parsed and validated once at load so the rest of the service never sees a bad value.
//! [`Config`] is `serve`'s; the groups in [`settings`] are shared with the operator commands,
//! each of which takes only the groups it uses; [`values`] are the types they parse into.

mod settings;
mod values;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

pub use settings::{
    AmqpSettings, ExchangeSettings, HealthSettings, LogSettings, MIN_PORTAL_KEY, PortalSettings,
    QueueAccess, QueueSettings, StoreSettings,
};
pub use values::{
    LogFormat, QueueType, RetryDelays, Roles, Secret, SecretUrl, UrlList, delay_label,
    parse_amqp_urls, parse_duration, parse_positive_duration, parse_roles, redact_url,
};

/// Shortest admin token accepted on a non-loopback LISTEN_ADDR (shorter ones are only warned
/// about on loopback).
pub const MIN_PUBLIC_TOKEN: usize = 16;

/// Longest overlap a secret rotation may keep the old secret signing.
pub const MAX_SECRET_OVERLAP: Duration = Duration::from_secs(30 * 24 * 3600);

/// Everything `webhook-dispatcher serve` needs. Field docs are the `--help` text.
#[derive(Clone, Debug, Args)]
pub struct Config {
    /// What this replica runs: `all`, or a comma list of `dispatcher` (delivers: consumes the
    /// events queue), `dlq-logger` (writes the delivery log: consumes the dead-letter queue) and
    /// `api` (the admin API and the customer portal). Every replica serves `/metrics`,
    /// `/healthz` and `/readyz`.
    #[arg(long, env = "ROLES", default_value = "all", value_parser = parse_roles)]
    pub roles: Roles,

    #[command(flatten)]
    pub amqp: AmqpSettings,

    #[command(flatten)]
    pub store: StoreSettings,

    /// Address of the admin API, `/metrics` and the health checks. Port 0 picks a free port.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,

    #[command(flatten)]
    pub exchange: ExchangeSettings,

    #[command(flatten)]
    pub queues: QueueSettings,

    /// Bearer token required on `/v1/*`. May be unset only when LISTEN_ADDR is a loopback address.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// Limit for one whole delivery attempt (connect, send, response).
    #[arg(long, env = "DELIVERY_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub delivery_timeout: Duration,

    /// Allow endpoints on loopback, private, link-local and other non-public addresses.
    #[arg(long, env = "ALLOW_PRIVATE_TARGETS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_private_targets: bool,

    #[command(flatten)]
    pub log: LogSettings,

    /// Messages the broker may hand the dispatcher before it acks (AMQP prefetch): its intake
    /// window. Deep, so a burst leaves the queue quickly and other accounts' events behind it
    /// reach their turn (see `dispatcher::lanes`); `MAX_IN_FLIGHT` bounds what is under way.
    #[arg(long, env = "PREFETCH", default_value_t = 32768, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,

    /// Most HTTP delivery attempts in flight at once.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,

    /// Most attempts in flight to one subscription's endpoint. Past it, deliveries to that
    /// endpoint wait in the delay queues (no attempt spent), so a hanging endpoint cannot take
    /// the whole prefetch window from every other account.
    #[arg(long, env = "MAX_IN_FLIGHT_PER_ENDPOINT", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight_per_endpoint: u32,

    /// On SIGTERM, how long in-flight deliveries may take to finish before their messages are
    /// handed back to the broker unacked.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "15s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How often the subscription index and the message keys are reloaded from the store
    /// (changes made through this instance's API apply at once; this picks up other instances').
    #[arg(long, env = "SUBSCRIPTION_REFRESH", default_value = "10s", value_parser = parse_positive_duration)]
    pub subscription_refresh: Duration,

    #[command(flatten)]
    pub portal: PortalSettings,

    #[command(flatten)]
    pub health: HealthSettings,

    /// After `POST /v1/subscriptions/{id}/rotate-secret`, how long the old secret keeps signing
    /// next to the new one (a request may ask for another overlap, up to 30 days).
    #[arg(long, env = "SECRET_ROTATION_OVERLAP", default_value = "24h", value_parser = parse_overlap)]
    pub secret_rotation_overlap: Duration,

    /// How long a delivery-log record is kept after it was dead-lettered (replayed or not);
    /// older ones are deleted in the background, a thousand at a time, by the replicas with the
    /// `dlq-logger` role. `0` keeps every record; otherwise at least an hour and at most 100
    /// years (`6m` is six minutes: months are `6M` or `6months`).
    #[arg(long, env = "DELIVERY_LOG_RETENTION", default_value = "30d", value_parser = parse_retention)]
    pub delivery_log_retention: Duration,
}

/// The shortest retention but `0`: anything shorter is almost surely a slip (`m` for months).
const MIN_RETENTION: Duration = Duration::from_secs(3600);
/// The longest retention: past it the purge's cut-off would be before any date.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 36_525 * 864);

fn parse_retention(raw: &str) -> Result<Duration, String> {
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

fn parse_overlap(raw: &str) -> Result<Duration, String> {
    match parse_duration(raw)? {
        d if d > MAX_SECRET_OVERLAP => Err("must be at most 30 days".into()),
        d => Ok(d),
    }
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
        match (
            &self.health.operator_webhook_url,
            &self.health.operator_webhook_secret,
        ) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid(
                    "OPERATOR_WEBHOOK_URL needs OPERATOR_WEBHOOK_SECRET (whsec_…) to sign with"
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "OPERATOR_WEBHOOK_SECRET is set without OPERATOR_WEBHOOK_URL".into(),
                ));
            }
            _ => {}
        }
        // The token and the portal key guard the admin API and the portal: a replica without
        // the `api` role serves neither.
        if !self.roles.api {
            return Ok(());
        }
        let loopback = self.listen_addr.ip().is_loopback();
        // Reached from beyond this machine: listening off loopback, or published under a
        // PUBLIC_URL that is not this machine (a reverse proxy in front of a loopback listener
        // would otherwise expose an admin API without a token).
        let exposed = if !loopback {
            Some(format!(
                "LISTEN_ADDR ({}) is not a loopback address",
                self.listen_addr
            ))
        } else {
            self.portal
                .public_url
                .as_ref()
                .filter(|url| !is_this_machine(url))
                .map(|url| format!("PUBLIC_URL ({url}) is not this machine"))
        };
        match (&self.admin_token, &exposed) {
            (None, Some(_)) if !loopback => {
                return Err(ConfigError::TokenRequired(self.listen_addr));
            }
            (None, Some(why)) => {
                return Err(ConfigError::Invalid(format!(
                    "ADMIN_TOKEN is required when {why}: the admin API would be reachable through it without a token; set ADMIN_TOKEN"
                )));
            }
            // An empty token would be compared with a missing header read as "": open to all.
            (Some(token), _) if token.expose().trim().is_empty() => {
                return Err(ConfigError::Invalid(
                    "ADMIN_TOKEN is set but empty: set a token of 16 or more characters, or unset it (allowed only on a loopback LISTEN_ADDR)".into(),
                ));
            }
            (Some(_), Some(why)) if self.weak_token() => {
                return Err(ConfigError::Invalid(format!(
                    "ADMIN_TOKEN must be at least {MIN_PUBLIC_TOKEN} characters when {why}"
                )));
            }
            _ => {}
        }
        if let (None, Some(why)) = (&self.portal.portal_key, &exposed) {
            return Err(ConfigError::Invalid(format!(
                "PORTAL_KEY is required when {why}: set one of {MIN_PORTAL_KEY} or more random characters, the same on every instance"
            )));
        }
        Ok(())
    }

    /// Number of delivery attempts an event gets: the first plus one per retry delay.
    pub fn max_attempts(&self) -> u32 {
        1 + self.queues.retry_delays.0.len() as u32
    }
}

/// Whether `url` names this machine: `localhost` (or a name under it) or a loopback address.
fn is_this_machine(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn try_parse(args: &[&str]) -> Result<Config, clap::Error> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            cfg: Config,
        }
        let args = std::iter::once("webhook-dispatcher").chain(args.iter().copied());
        <Cli as clap::Parser>::try_parse_from(args).map(|cli| cli.cfg)
    }

    fn parse(args: &[&str]) -> Config {
        try_parse(args).unwrap()
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
            "--portal-key",
            PORTAL_KEY,
        ]);
        assert!(guarded.validate().is_ok(), "{:?}", guarded.validate());
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
            "--portal-key",
            PORTAL_KEY,
        ])
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("at least 16 characters"), "{err}");
        let short_local = parse(&["--listen-addr", "127.0.0.1:8080", "--admin-token", "short"]);
        assert!(short_local.validate().is_ok() && short_local.weak_token());
        assert!(parse(&["--listen-addr", "[::1]:8080"]).validate().is_ok());
    }

    #[test]
    fn a_public_url_off_this_machine_needs_the_token_and_key_a_public_address_does() {
        let proxied = ["--listen-addr", "127.0.0.1:8080", "--public-url"];
        let err = parse(&[&proxied[..], &["https://hooks.example.com"]].concat())
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ADMIN_TOKEN is required when PUBLIC_URL (https://hooks.example.com/) is not this machine"),
            "{err}"
        );
        let token = ["--admin-token", "a-long-enough-token"];
        let err = parse(&[&proxied[..], &["https://hooks.example.com"], &token[..]].concat())
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("PORTAL_KEY is required when PUBLIC_URL"),
            "{err}"
        );
        let err = parse(
            &[
                &proxied[..],
                &["https://hooks.example.com", "--admin-token", "short"],
            ]
            .concat(),
        )
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("at least 16 characters when PUBLIC_URL"),
            "{err}"
        );
        let key = ["--portal-key", PORTAL_KEY];
        assert!(
            parse(
                &[
                    &proxied[..],
                    &["https://hooks.example.com"],
                    &token[..],
                    &key[..]
                ]
                .concat()
            )
            .validate()
            .is_ok()
        );
        for local in [
            "http://localhost:8080",
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
            "http://app.localhost:8080",
        ] {
            let cfg = parse(&[&proxied[..], &[local]].concat());
            assert!(cfg.validate().is_ok(), "{local}: {:?}", cfg.validate());
        }
    }

    const PORTAL_KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_public_listen_address_needs_a_portal_key_of_32_characters() {
        let err = parse(&[
            "--listen-addr",
            "0.0.0.0:8080",
            "--admin-token",
            "a-long-enough-token",
        ])
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("PORTAL_KEY is required"), "{err}");
        // On loopback the key kept in the store does.
        assert!(
            parse(&["--listen-addr", "127.0.0.1:8080"])
                .validate()
                .is_ok()
        );
        // A short key (the Secret template's REPLACE_ME) is refused everywhere, before anything
        // is signed with it.
        let err = try_parse(&["--portal-key", "REPLACE_ME"]).err().unwrap();
        assert!(err.to_string().contains("at least 32 characters"), "{err}");
        assert!(try_parse(&["--portal-key", PORTAL_KEY]).is_ok());
    }

    #[test]
    fn the_public_url_is_an_http_origin() {
        for good in ["https://hooks.example.com", "http://localhost:8080/"] {
            assert!(try_parse(&["--public-url", good]).is_ok(), "{good}");
        }
        for (bad, says) in [
            ("https://hooks.example.com/webhooks", "origin only"),
            ("ftp://hooks.example.com", "http(s) URL"),
            ("https://u:p@hooks.example.com", "credentials"),
            ("hooks.example.com", "not a URL"),
        ] {
            let err = try_parse(&["--public-url", bad]).err().unwrap();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
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
            "--portal-key",
            "portal-key-that-must-not-leak-000",
        ]);
        let printed = format!("{cfg:?}");
        for secret in [
            "token-that-must-not-leak",
            "broker-password",
            "db-password",
            "portal-key-that",
        ] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
    }

    #[test]
    fn a_retention_under_an_hour_or_past_a_century_is_refused() {
        let slip = try_parse(&["--delivery-log-retention", "6m"])
            .unwrap_err()
            .to_string();
        assert!(slip.contains("6m would delete the delivery log"), "{slip}");
        assert!(slip.contains("6M or 6months"), "{slip}");
        assert!(try_parse(&["--delivery-log-retention", "1000000y"]).is_err());
        for ok in ["0", "1h", "6M", "30d", "100y"] {
            let cfg = try_parse(&["--delivery-log-retention", ok]);
            assert!(cfg.is_ok(), "{ok}: {:?}", cfg.err());
        }
        assert_eq!(
            parse(&[]).delivery_log_retention,
            Duration::from_secs(30 * 86_400)
        );
    }

    #[test]
    fn a_rotation_overlap_over_30_days_is_refused() {
        assert!(try_parse(&["--secret-rotation-overlap", "31days"]).is_err());
        assert!(try_parse(&["--secret-rotation-overlap", "30days"]).is_ok());
    }
}
