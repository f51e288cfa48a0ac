//! Operations shared by the operator CLI (`webhook-dispatcher publish | dlq stats | dlq drain |
//! replay`) and the admin API's bulk replay: record selection and time parsing, replay, queue
//! and delivery-log statistics, draining `P.dead`, publishing a validated event. Nothing here
//! prints: the terminal side is in [`crate::cli`].
//!
//! The CLI talks to the broker and the store directly, so it works while the service is down:
//! it connects once (no reconnect loop) and declares nothing — a missing queue or exchange is
//! an error naming it, not something an operator's typo should create.

pub mod drain;
pub mod migrate;
pub mod publish;
pub mod replay;
pub mod select;
pub mod stats;
pub mod when;

use std::sync::Arc;

use crate::broker::{Broker, BrokerError, Topology};
use crate::config::{AmqpSettings, StoreSettings};
use crate::seal::{KeyError, Keyring};
use crate::store::{Store, StoreError};

/// An operation's failure. [`OpsError::BadInput`] is the caller's to fix (CLI exit 2, API 4xx).
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    BadInput(String),
    #[error("cannot reach RabbitMQ at {url}: {error}")]
    BrokerUnreachable { url: String, error: String },
    #[error("cannot open the store at {url}: {error}")]
    StoreUnreachable { url: String, error: StoreError },
    /// The operation failed part-way; the text says what state it left.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Opens the store at `DATABASE_URL` as the service left it: nothing is created or migrated, so
/// a wrong URL (or the default relative SQLite path, run from another directory) is bad input
/// naming the URL, not a fresh empty delivery log.
pub async fn open_store(settings: &StoreSettings) -> Result<Store, OpsError> {
    let url = settings.database_url.redacted();
    Store::open_existing(settings.database_url.expose())
        .await
        .map_err(|error| match error {
            StoreError::NotMigrated(why) => OpsError::BadInput(format!(
                "no delivery log at {url} ({why}): start the service once with this DATABASE_URL, or check the path"
            )),
            error => OpsError::StoreUnreachable { url, error },
        })
}

/// The message keys in `store` (the CLI seals the tasks it enqueues and checks the dead letters
/// it drains with the service's own keys).
pub async fn load_keys(store: &Store) -> Result<Arc<Keyring>, OpsError> {
    match Keyring::load(Arc::new(store.clone())).await {
        Ok(keys) => Ok(Arc::new(keys)),
        Err(KeyError::NoKey) => Err(OpsError::BadInput(KeyError::NoKey.to_string())),
        Err(e @ KeyError::Source(_)) => Err(OpsError::Failed(e.to_string())),
    }
}

/// Connects to the broker at `amqp` once, with a confirm channel in its publisher, for work on
/// `topology`.
pub async fn connect_broker(amqp: &AmqpSettings, topology: Topology) -> Result<Broker, OpsError> {
    let unreachable = |error: BrokerError| OpsError::BrokerUnreachable {
        url: amqp.amqp_url.redacted(),
        error: match error {
            BrokerError::Pool(inner) => inner,
            other => other.to_string(),
        },
    };
    // The CLI consumes nothing: the prefetch is never used.
    let broker = Broker::new(amqp, topology, 1).map_err(unreachable)?;
    broker.connect_publisher().await.map_err(unreachable)?;
    Ok(broker)
}
