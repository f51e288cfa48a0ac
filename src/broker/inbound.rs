//! What the consumers hand out: [`Inbound`], one message with its body, the headers the service
//! reads, and its settlement (ack, requeue), each bounded in time.

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::types::ShortString;
use tokio_util::sync::CancellationToken;

use super::BrokerError;
use super::connection::close_channel;
use super::frame::{Death, death, header_text};
use crate::seal::{KEY_HEADER, MAC_HEADER};
use crate::wire::TASK_HEADER;
use crate::wire::bundle::DEAD_LETTERS_HEADER;

/// Longest wait for an ack or nack. On a live connection one completes as soon as its frame is
/// written; but lapin (4.12) can leave one that was under way when the connection dropped
/// pending forever. The broker requeues that message anyway, so waiting longer would only pin
/// the task — and with it the dead session, and graceful shutdown for its whole grace period.
/// A timed-out ack is not withdrawn: on a live connection its frame still goes out.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether an ack or nack completed within [`SETTLE_TIMEOUT`].
async fn settle(op: impl Future<Output = lapin::Result<bool>>) -> bool {
    matches!(tokio::time::timeout(SETTLE_TIMEOUT, op).await, Ok(Ok(true)))
}

/// Acks through `acker` (`multiple`: with every unsettled message before it), bounded by
/// [`SETTLE_TIMEOUT`]; `false` when the ack failed or did not complete.
async fn ack(acker: &lapin::Acker, multiple: bool) -> bool {
    settle(acker.ack(BasicAckOptions { multiple })).await
}

/// One message taken from a queue: what of lapin's [`Delivery`] the service reads, and no more.
///
/// The dispatcher holds up to `PREFETCH` of these at once, most waiting in their account's lane,
/// so their size is most of its memory: a `Delivery` is 432 bytes inline (its properties alone
/// 296), and keeps the exchange's and routing key's names on the heap besides. Kept here:
/// the tag, the body, the acker, and the properties boxed (read once or twice, and needed whole
/// only to publish the message again unchanged).
pub struct Inbound {
    tag: u64,
    body: Box<[u8]>,
    properties: Box<lapin::BasicProperties>,
    acker: lapin::Acker,
}

impl Inbound {
    pub(super) fn new(delivery: Delivery) -> Inbound {
        let Delivery {
            delivery_tag,
            properties,
            data,
            acker,
            ..
        } = delivery;
        Inbound {
            tag: delivery_tag,
            body: data.into_boxed_slice(),
            properties: Box::new(properties),
            acker,
        }
    }

    /// Its delivery tag: its place among the messages of its channel.
    pub fn delivery_tag(&self) -> u64 {
        self.tag
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The AMQP `message_id`, if any.
    pub fn message_id(&self) -> Option<&str> {
        self.properties
            .message_id()
            .as_ref()
            .map(ShortString::as_str)
    }

    /// The task kind this message claims to be (its `x-webhook-task` header), if it claims one.
    /// A claim only: [`Inbound::seal`] is what the claim is checked against.
    pub fn task_kind(&self) -> Option<String> {
        header_text(&self.properties, TASK_HEADER)
    }

    /// How many dead letters it claims to hold, when it claims to be a bundle of them (its
    /// `x-webhook-dead-letters` header): the count (1 to
    /// [`MAX_ITEMS`](crate::wire::bundle::MAX_ITEMS); 1 when unreadable). A claim only, like
    /// [`Inbound::task_kind`]: it picks the seal to check and sizes the logger's batches.
    pub fn dead_letters_claimed(&self) -> Option<usize> {
        let count = header_text(&self.properties, DEAD_LETTERS_HEADER)?;
        Some(
            count
                .parse::<usize>()
                .map_or(1, |n| n.clamp(1, crate::wire::bundle::MAX_ITEMS)),
        )
    }

    pub fn is_task(&self) -> bool {
        self.task_kind().is_some()
    }

    /// The seal headers as they came: (key id, MAC).
    pub fn seal(&self) -> (Option<String>, Option<String>) {
        let props = &*self.properties;
        (
            header_text(props, KEY_HEADER),
            header_text(props, MAC_HEADER),
        )
    }

    /// Whether it carries an AMQP `expiration` (a message that must not outlive it is never
    /// parked: the delay queue would hand it back to the events queue, expiration dropped).
    pub fn expires(&self) -> bool {
        self.properties.expiration().is_some()
    }

    /// Its properties (headers included) as they came, to publish it again unchanged.
    pub(super) fn properties(&self) -> lapin::BasicProperties {
        (*self.properties).clone()
    }

    /// How RabbitMQ dead-lettered it, if it did.
    pub fn death(&self) -> Option<Death> {
        death(&self.properties)
    }

    /// Acks it; `false` when the ack failed or did not complete within [`SETTLE_TIMEOUT`] (the
    /// broker will deliver the message again).
    pub async fn ack(&self) -> bool {
        ack(&self.acker, false).await
    }

    /// Acks it and every message delivered before it on its channel that is not settled yet
    /// (`multiple`): one frame for a whole batch. Only for a consumer whose channel carries
    /// nothing else, whose earlier messages are all in the batch or settled. Bounded like
    /// [`Inbound::ack`].
    pub async fn ack_through(&self) -> bool {
        ack(&self.acker, true).await
    }

    /// Hands it back to its queue as a failed delivery; bounded like [`Inbound::ack`].
    /// `basic.reject`, not `basic.nack`: RabbitMQ 4 counts only a reject toward a quorum queue's
    /// `x-delivery-limit` (a nack is "not processed" and is not counted), and `DELIVERY_LIMIT` is
    /// what ends a message that can never be handed on. RabbitMQ 3 counts both.
    pub async fn requeue(&self) -> bool {
        let requeue = BasicRejectOptions { requeue: true };
        settle(self.acker.reject(requeue)).await
    }

    /// What acking it takes, without its body: a settled message may wait a while for its ack
    /// (see the dispatcher's acks), and its body is not needed for it.
    pub fn into_settled(self) -> Settled {
        Settled {
            tag: self.tag,
            acker: self.acker,
        }
    }

    /// Its body and properties, to publish it again unchanged (queue migration).
    pub(super) fn parts(&self) -> (&[u8], &lapin::BasicProperties) {
        (&self.body, &self.properties)
    }
}

/// A message whose outcome is safe, waiting for its ack: its delivery tag and its channel.
pub struct Settled {
    tag: u64,
    acker: lapin::Acker,
}

impl Settled {
    pub fn delivery_tag(&self) -> u64 {
        self.tag
    }

    /// Acks it (`multiple`: with every unsettled message before it on its channel); as
    /// [`Inbound::ack`] and [`Inbound::ack_through`].
    pub async fn ack(&self, multiple: bool) -> bool {
        ack(&self.acker, multiple).await
    }
}

/// A consumer on one queue, handing out [`Inbound`] messages. It keeps its channel open.
#[derive(Clone)]
pub struct Consumer {
    inner: lapin::Consumer,
    channel: lapin::Channel,
}

impl Consumer {
    pub(super) fn new(inner: lapin::Consumer, channel: lapin::Channel) -> Consumer {
        Consumer { inner, channel }
    }

    /// Asks the broker to send it nothing more. What was already sent still comes out of
    /// [`Consumer::next`], which then ends; the unacked messages stay on the channel, to be
    /// acked there.
    pub async fn cancel(&self) {
        let _ = self
            .channel
            .basic_cancel(self.tag(), lapin::options::BasicCancelOptions::default())
            .await;
    }

    /// Closes its channel; anything still unacked on it returns to its queue.
    pub(super) async fn close_channel(&self) {
        close_channel(&self.channel, "shutting down").await;
    }

    /// The next message; `None` once the consumer ended (its channel or connection closed).
    pub async fn next(&mut self) -> Option<Result<Inbound, BrokerError>> {
        self.inner
            .next()
            .await
            .map(|next| next.map(Inbound::new).map_err(BrokerError::from))
    }

    /// The next message, or `None` once `stop` fires, the consumer ends (its channel or
    /// connection closed) or fails (logged, naming `what` the consumer is).
    pub async fn next_until(&mut self, stop: &CancellationToken, what: &str) -> Option<Inbound> {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            next = self.next() => next,
        };
        match next? {
            Ok(message) => Some(message),
            Err(e) => {
                tracing::warn!(error = %e, consumer = what, "consumer failed");
                None
            }
        }
    }

    /// A message the broker has already handed over, without waiting for one; `None` when none
    /// is there yet (or the consumer ended: the next [`Consumer::next_until`] says so).
    pub fn ready_now(&mut self) -> Option<Inbound> {
        match self.inner.next().now_or_never() {
            Some(Some(Ok(delivery))) => Some(Inbound::new(delivery)),
            _ => None,
        }
    }

    pub(super) fn tag(&self) -> lapin::types::ShortString {
        self.inner.tag()
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, FieldTable, LongString};

    use super::*;

    fn delivery(tag: u64, body: &[u8], properties: lapin::BasicProperties) -> Delivery {
        let mut delivery = Delivery::mock(
            tag,
            "clarm.events".into(),
            "purchase".into(),
            true,
            body.to_vec(),
        );
        delivery.properties = properties;
        delivery
    }

    #[test]
    fn a_message_keeps_all_the_service_reads_and_its_properties_whole() {
        let mut headers = FieldTable::default();
        for (name, value) in [
            (TASK_HEADER, "delivery"),
            (KEY_HEADER, "k1"),
            (MAC_HEADER, "mac"),
            ("x-producer", "checkout"),
        ] {
            headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
        }
        let properties = lapin::BasicProperties::default()
            .with_message_id("evt_1".into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_expiration("60000".into())
            .with_headers(headers);
        let message = Inbound::new(delivery(7, br#"{"a":1}"#, properties.clone()));

        assert_eq!(message.delivery_tag(), 7);
        assert_eq!(message.body(), br#"{"a":1}"#);
        assert_eq!(message.message_id(), Some("evt_1"));
        assert_eq!(message.task_kind().as_deref(), Some("delivery"));
        assert_eq!(
            message.seal(),
            (Some("k1".to_string()), Some("mac".to_string()))
        );
        assert!(message.expires());
        assert!(message.death().is_none());
        assert_eq!(
            message.properties(),
            properties,
            "published again unchanged"
        );
        let (body, kept) = message.parts();
        assert_eq!((body, kept), (&br#"{"a":1}"#[..], &properties));
        assert_eq!(message.into_settled().delivery_tag(), 7);
    }

    #[test]
    fn a_message_without_properties_claims_nothing() {
        let message = Inbound::new(delivery(1, b"{}", lapin::BasicProperties::default()));
        assert_eq!(message.message_id(), None);
        assert!(!message.is_task());
        assert_eq!(message.seal(), (None, None));
        assert!(!message.expires());
    }

    /// What the intake window's memory is made of: each message held costs this much besides
    /// its body and its boxed properties (a lapin `Delivery` held whole was 432 bytes).
    #[test]
    fn a_message_in_hand_is_a_fifth_of_a_delivery() {
        assert!(
            size_of::<Inbound>() <= 96,
            "Inbound grew to {} bytes; lapin's Delivery is {}",
            size_of::<Inbound>(),
            size_of::<Delivery>()
        );
    }
}
