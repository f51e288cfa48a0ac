//! One connected generation of consumers and their channels.

use lapin::Channel;

use super::inbound::Consumer;

/// One connected generation: consumers on the events and dead-letter queues. Dropping it closes its channels (lapin closes a channel when its last
/// handle goes), so it must outlive every ack made on it.
pub struct Session {
    pub events: Consumer,
    pub dead: Consumer,
    pub(super) events_channel: Channel,
    pub(super) dead_channel: Channel,
}

impl Session {
    /// Stops both consumers; unacked messages go back to the broker when the channels close. On
    /// a quorum queue the cancel is a round trip through the queue, so acks sent before it are
    /// applied by the time it returns.
    pub async fn cancel_consumers(&self) {
        use lapin::options::BasicCancelOptions;
        let _ = self
            .events_channel
            .basic_cancel(self.events.tag(), BasicCancelOptions::default())
            .await;
        let _ = self
            .dead_channel
            .basic_cancel(self.dead.tag(), BasicCancelOptions::default())
            .await;
    }

    /// Closes the channels; anything still unacked on them returns to its queue.
    pub async fn close(&self) {
        for channel in [&self.events_channel, &self.dead_channel] {
            let _ = channel.close(200, "shutting down".into()).await;
        }
    }
}
