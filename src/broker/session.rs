//! One connected generation of consumers and their channels.

use super::inbound::Consumer;

/// What a session consumes: the queues of the roles a replica runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consuming {
    /// The events queue (the dispatcher).
    pub events: bool,
    /// The dead-letter queue (the DLQ logger).
    pub dead: bool,
}

/// One connected generation: the consumers of the roles this replica runs, and the control
/// consumer every replica has (its own exclusive queue on the control exchange). Dropping it
/// closes its channels (lapin closes a channel when its last handle goes), so it must outlive
/// every ack made on it.
pub struct Session {
    pub events: Option<Consumer>,
    pub dead: Option<Consumer>,
    /// Subscription changes announced by any replica (this one included). Consumed without
    /// acks: a hint missed while disconnected is made up by the full refresh after reconnecting.
    pub control: Consumer,
}

impl Session {
    /// Stops the consumers; unacked messages go back to the broker when the channels close. On
    /// a quorum queue the cancel is a round trip through the queue, so acks sent before it are
    /// applied by the time it returns.
    pub async fn cancel_consumers(&self) {
        for consumer in self.consumers() {
            consumer.cancel().await;
        }
    }

    /// Closes the channels; anything still unacked on them returns to its queue.
    pub async fn close(&self) {
        for consumer in self.consumers() {
            consumer.close_channel().await;
        }
    }

    /// Each consumer is on a channel of its own.
    fn consumers(&self) -> impl Iterator<Item = &Consumer> {
        [
            self.events.as_ref(),
            self.dead.as_ref(),
            Some(&self.control),
        ]
        .into_iter()
        .flatten()
    }
}
