//! Groups of settings shared by `serve` and the operator commands. Each command takes (and its
//! `--help` documents) only the groups it uses; each setting is checked where it is parsed, so
//! every command that takes it refuses a bad value the same way.

use clap::Args;

use super::values::{
    LogFormat, QueueType, RetryDelays, Secret, SecretUrl, UrlList, name_of_at_most,
    parse_amqp_urls, parse_delays,
};

/// The broker.
#[derive(Clone, Debug, Args)]
pub struct AmqpSettings {
    /// RabbitMQ connection URL, or the comma-separated URLs of a cluster's nodes: the first that
    /// answers is used, in the order given; when its node goes away, the next one (wrapping).
    #[arg(
        long,
        env = "AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        value_parser = parse_amqp_urls
    )]
    pub amqp_url: UrlList,
}

/// The exchange producers publish to.
#[derive(Clone, Debug, Args)]
pub struct ExchangeSettings {
    /// Topic exchange producers publish events to (routing key = event name).
    #[arg(long, env = "EVENTS_EXCHANGE", default_value = "clarm.events", value_parser = name_of_at_most(255))]
    pub events_exchange: String,
}

/// The names and kind of the service's queues.
#[derive(Clone, Debug, Args)]
pub struct QueueSettings {
    /// Prefix of every queue the service declares.
    #[arg(long, env = "QUEUE_PREFIX", default_value = "webhooks", value_parser = name_of_at_most(200))]
    pub queue_prefix: String,

    /// `quorum` (replicated, survives node loss) or `classic` (single dev node).
    #[arg(long, env = "QUEUE_TYPE", value_enum, default_value_t = QueueType::Quorum)]
    pub queue_type: QueueType,

    /// Comma-separated retry delays; one delay queue per entry, attempts = 1 + entries.
    #[arg(long, env = "RETRY_DELAYS", default_value = "2s,4s,8s", value_parser = parse_delays)]
    pub retry_delays: RetryDelays,

    /// Times RabbitMQ hands a message of the events queue back (requeued, or its consumer gone)
    /// before it dead-letters it into the dead-letter queue as `delivery_limit` (quorum queues:
    /// `x-delivery-limit`). Part of the queue's arguments: changing it needs `migrate-queues`.
    #[arg(long, env = "DELIVERY_LIMIT", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub delivery_limit: u32,

    /// Lets what is handed to one queue at the same moment travel as one message (a bundle):
    /// retries, deferrals and dead letters, and consecutive replayed records of one account.
    /// Every version from 0.5 reads bundles; set `false` while replicas of 0.4, which cannot,
    /// still consume the same queues (a rolling upgrade).
    #[arg(long, env = "BUNDLES", default_value_t = true, action = clap::ArgAction::Set)]
    pub bundles: bool,
}

/// The store.
#[derive(Clone, Debug, Args)]
pub struct StoreSettings {
    /// Store for subscriptions and the delivery log: `sqlite://FILE` (`serve` creates it if
    /// missing; the operator commands only open an existing one) or `postgres://…` for a store
    /// shared by several instances.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://webhook-dispatcher.db",
        value_parser = |raw: &str| Ok::<SecretUrl, String>(SecretUrl::from(raw.to_string()))
    )]
    pub database_url: SecretUrl,

    /// Most connections this process opens to the store (default: 10 on PostgreSQL, 4 on
    /// SQLite, which takes one writer at a time). With several replicas on one PostgreSQL keep
    /// replicas × this under the server's `max_connections`.
    #[arg(long, env = "DATABASE_POOL_SIZE", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_pool_size: Option<u32>,
}

/// Logging.
#[derive(Clone, Debug, Args)]
pub struct LogSettings {
    /// Log format: `json` or `pretty`. `RUST_LOG` filters.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// The customer portal's links.
#[derive(Clone, Debug, Args)]
pub struct PortalSettings {
    /// Origin the portal's links use, e.g. `https://hooks.example.com` (the portal is under
    /// `/portal`); default `http://` + the address the admin API listens on (`localhost` for
    /// an unspecified address such as 0.0.0.0).
    #[arg(long, env = "PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<url::Url>,

    /// Key that signs portal links and sessions, 32 characters or more; every instance must
    /// use the same. Required unless LISTEN_ADDR is a loopback address, where a key kept in the
    /// store is used instead.
    #[arg(long, env = "PORTAL_KEY", hide_env_values = true, value_parser = parse_portal_key)]
    pub portal_key: Option<Secret>,
}

/// Endpoint health: the automatic-disable rule and the operator's webhook.
#[derive(Clone, Debug, Args)]
pub struct HealthSettings {
    /// Disable a subscription (reason `auto`) once its deliveries have failed, with no
    /// successful attempt, for this long (and at least AUTO_DISABLE_MIN_FAILURES of them failed
    /// every attempt). `0` turns the rule off.
    #[arg(long, env = "AUTO_DISABLE_AFTER", default_value = "24h", value_parser = super::values::parse_duration)]
    pub auto_disable_after: std::time::Duration,

    /// Deliveries that must have failed every attempt before the rule disables a subscription.
    #[arg(long, env = "AUTO_DISABLE_MIN_FAILURES", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub auto_disable_min_failures: u32,

    /// Where operational events (`endpoint.disabled`, `endpoint.enabled`) are POSTed, signed
    /// like any delivery; unset sends none. Reached under the same rules as endpoints
    /// (ALLOW_PRIVATE_TARGETS).
    #[arg(long, env = "OPERATOR_WEBHOOK_URL", value_parser = parse_webhook_url)]
    pub operator_webhook_url: Option<url::Url>,

    /// The operator webhook's signing secret (`whsec_` and base64 of 24 to 64 bytes); required
    /// with OPERATOR_WEBHOOK_URL.
    #[arg(long, env = "OPERATOR_WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_webhook_secret)]
    pub operator_webhook_secret: Option<crate::delivery::SigningKey>,
}

fn parse_webhook_url(raw: &str) -> Result<url::Url, String> {
    crate::subscriptions::validate_url(raw.trim())
}

fn parse_webhook_secret(raw: &str) -> Result<crate::delivery::SigningKey, String> {
    crate::delivery::SigningKey::parse(raw.trim()).map_err(|e| e.to_string())
}

/// Shortest `PORTAL_KEY` accepted.
pub const MIN_PORTAL_KEY: usize = 32;

fn parse_portal_key(raw: &str) -> Result<Secret, String> {
    if raw.chars().count() < MIN_PORTAL_KEY {
        return Err(format!(
            "PORTAL_KEY must be at least {MIN_PORTAL_KEY} characters"
        ));
    }
    Ok(Secret::from(raw.to_string()))
}

fn parse_public_url(raw: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(raw.trim()).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{raw:?} must be an http(s) URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "{raw:?} must have no query, fragment or credentials"
        ));
    }
    if url.path() != "/" {
        return Err(format!(
            "{raw:?} must be an origin only (scheme, host, port): the portal is served at /portal"
        ));
    }
    Ok(url)
}

/// What a command that works on the service's queues needs: the broker and the queue names.
#[derive(Clone, Debug, Args)]
pub struct QueueAccess {
    #[command(flatten)]
    pub amqp: AmqpSettings,
    #[command(flatten)]
    pub queues: QueueSettings,
}
