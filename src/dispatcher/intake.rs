//! Where the events consumer's messages come from: one channel's consumer and its ack
//! gatherer ([`Intake`]), and what moving to a fresh channel needs (see [`Intake`]).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Dispatcher;
use super::acks::Acks;
use crate::broker::{BrokerError, Consumer, Inbound, Session};

/// Channels the events consumer has moved away from that still hold messages under way; no
/// move while this many do.
pub(super) const MAX_LEFT: usize = 2;

/// A message taken from a consumer, with where its ack is gathered (its channel's).
pub(super) struct Taken {
    pub(super) message: Inbound,
    pub(super) acks: Acks,
}

/// One channel's events consumer and its acks.
///
/// A delivery that stays under way (an endpoint that hangs, up to `DELIVERY_TIMEOUT`) is a gap
/// no `multiple` ack may pass: held much longer than `acks::HOLD`, everything above it on its
/// channel would be acked one message at a time, and each lone ack is a command through the
/// quorum queue (the broker's work per message roughly doubles). When the gatherer reports such a
/// gap ([`Acks::costly_gap`]), and the gap is a delivery under way (not a message waiting for its
/// account's turn, which a move would not help), the dispatcher opens a consumer on a fresh
/// channel, cancels the old one and retires its acks ([`Acks::retire`]): what the old one was
/// sent is still taken and handled, and acked on its own channel (open until its last ack) in
/// one `multiple` ack once the gap closes, while new messages arrive on the fresh channel and
/// are acked gathered. At most [`MAX_LEFT`] channels left behind hold messages at
/// once, so the service holds at most `MAX_LEFT + 1` times `PREFETCH` messages.
pub(super) struct Intake {
    pub(super) consumer: Consumer,
    pub(super) acks: Acks,
}

impl Dispatcher {
    /// Starts gathering the acks of `consumer`'s messages; the gatherer holds the session and
    /// the consumer's channel until the last task's ack is out.
    pub(super) fn intake(
        &self,
        consumer: Consumer,
        session: &Arc<Session>,
        tracker: &TaskTracker,
    ) -> Intake {
        let (acks, gatherer) = Acks::start(self.metrics.clone(), self.window);
        let held = (session.clone(), consumer.clone());
        tracker.spawn(async move {
            gatherer.await;
            drop(held);
        });
        Intake { consumer, acks }
    }
}

/// The next message of the consumer moved away from; `None` once it has handed out all it was
/// sent (or the session ended); with none, never.
pub(super) async fn next_of(
    cancelled: &mut Option<Intake>,
    stop: &CancellationToken,
) -> Option<Inbound> {
    match cancelled {
        Some(intake) => {
            intake
                .consumer
                .next_until(stop, "events (moved from)")
                .await
        }
        None => std::future::pending().await,
    }
}

/// A fresh events consumer on its way.
pub(super) type Opening<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Consumer, BrokerError>> + Send + 'a>>;

/// The consumer `opening` brings, once it has (`opening` is then empty); with none, never.
pub(super) async fn opened(opening: &mut Option<Opening<'_>>) -> Result<Consumer, BrokerError> {
    let Some(fresh) = opening.as_mut() else {
        return std::future::pending().await;
    };
    let fresh = fresh.await;
    *opening = None;
    fresh
}
