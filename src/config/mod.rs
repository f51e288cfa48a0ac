//! Typed configuration: every setting is a CLI flag and an environment variable (clap `env`),
//! parsed and validated once at load so the rest of the service never sees a bad value.
//! [`Config`] is `serve`'s; the groups in [`settings`] are shared with the operator commands,
//! each of which takes only the groups it uses; [`values`] are the types they parse into and
//! [`checks`] the rules across settings.

mod checks;
mod settings;
mod values;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

pub use checks::ConfigError;
pub use settings::{
    AmqpSettings, ExchangeSettings, HealthSettings, LogSettings, MIN_PORTAL_KEY, PortalSettings,
    QueueAccess, QueueSettings, StoreSettings,
};
pub use values::{
    LogFormat, MAX_SECRET_OVERLAP, QueueType, RetryDelays, Roles, Secret, SecretUrl, UrlList,
    delay_label, parse_amqp_urls, parse_duration, parse_positive_duration, parse_roles, redact_url,
};

/// Shortest admin token accepted on a non-loopback LISTEN_ADDR (shorter ones are only warned
/// about on loopback).
pub const MIN_PUBLIC_TOKEN: usize = 16;
/// `PREFETCH`'s default (the benchmark measures the service with it).
pub const DEFAULT_PREFETCH: u16 = 32768;

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
    #[arg(long, env = "PREFETCH", default_value_t = DEFAULT_PREFETCH, value_parser = clap::value_parser!(u16).range(1..))]
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
    #[arg(long, env = "SECRET_ROTATION_OVERLAP", default_value = "24h", value_parser = values::parse_overlap)]
    pub secret_rotation_overlap: Duration,

    /// How long a delivery-log record is kept after it was dead-lettered (replayed or not);
    /// older ones are deleted in the background, a thousand at a time, by the replicas with the
    /// `dlq-logger` role. `0` keeps every record; otherwise at least an hour and at most 100
    /// years (`6m` is six minutes: months are `6M` or `6months`).
    #[arg(long, env = "DELIVERY_LOG_RETENTION", default_value = "30d", value_parser = values::parse_retention)]
    pub delivery_log_retention: Duration,

    /// The most subscriptions one account may have: creating one more (API or portal) is a 409
    /// `subscription_limit_reached`. Every subscription is matched in memory on every replica,
    /// so an account (or a portal session) cannot make that unbounded.
    #[arg(long, env = "MAX_SUBSCRIPTIONS_PER_ACCOUNT", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_subscriptions_per_account: u32,
}

impl Config {
    /// Whether the admin token is too short to resist guessing (warned about at start).
    pub fn weak_token(&self) -> bool {
        self.admin_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < MIN_PUBLIC_TOKEN)
    }

    /// Number of delivery attempts an event gets: the first plus one per retry delay.
    pub fn max_attempts(&self) -> u32 {
        1 + self.queues.retry_delays.0.len() as u32
    }
}

#[cfg(test)]
mod tests;
