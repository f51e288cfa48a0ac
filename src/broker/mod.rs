//! The RabbitMQ side, and the only module that speaks AMQP (lapin, deadpool-lapin): the pooled
//! connection ([`Broker`]), the topology, confirmed publishing ([`Publisher`]), message framing
//! (headers and properties, [`frame`]), the messages consumers hand out ([`Inbound`]: read,
//! ack, requeue), [`Session`], one connected generation of channels and consumers, and the
//! queue operations of the operator commands ([`queues`]). When a connection dies the app
//! builds a new session; lapin's own recovery is not relied on.

mod connection;
mod declare;
pub mod frame;
mod inbound;
mod publish;
pub mod queues;
mod session;
pub mod topology;

pub use connection::{Broker, CLOSE_TIMEOUT, DEAD_PREFETCH};
pub use declare::EventsQueue;
pub use frame::{
    Death, dead_letter_bundle_message, dead_letter_message, event_props, task_bundle_message,
    task_message,
};
pub use inbound::{Consumer, Inbound, Settled};
pub use publish::{Pending, Publisher, Route, TASK_CONFIRM_TIMEOUT};
pub use queues::QueueCounts;
pub use session::{Consuming, Session};
pub use topology::Topology;

use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reach RabbitMQ: {0}")]
    Pool(String),
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error(
        "{kind} {name:?} already exists with other arguments; the service declares it with {wanted}; the broker says: {broker}. \
         Delete it (it is recreated on start) or change QUEUE_PREFIX/QUEUE_TYPE/RETRY_DELAYS to match"
    )]
    TopologyMismatch {
        kind: &'static str,
        name: String,
        wanted: String,
        broker: String,
    },
    #[error("not connected to RabbitMQ")]
    NotConnected,
    #[error("the broker refused the message (nack) for {0}")]
    Nacked(String),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("no queue took the message for {0} (unroutable)")]
    Unroutable(String),
    #[error(
        "the broker did not confirm the message within {0:?} (a resource alarm?); it may still be delivered once the broker takes it"
    )]
    ConfirmTimeout(Duration),
}

impl BrokerError {
    /// A problem retrying will not fix.
    pub fn is_fatal(&self) -> bool {
        matches!(self, BrokerError::TopologyMismatch { .. })
    }
}

impl BrokerError {
    /// A 404 NOT_FOUND channel error (a missing queue or exchange) as [`BrokerError::NotFound`]
    /// naming `what`; any other error as it is.
    pub(crate) fn or_not_found(err: lapin::Error, what: impl FnOnce() -> String) -> BrokerError {
        match err.kind() {
            lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404 => {
                BrokerError::NotFound(what())
            }
            _ => BrokerError::Amqp(err),
        }
    }
}
