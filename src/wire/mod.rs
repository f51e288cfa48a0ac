//! Messages the service itself puts on the broker: delivery tasks (retries and replays, on the
//! delay queues and back on `P.events`), dead letters (on `P.dead`, [`dead_letter`]) and
//! subscription changes (on `P.control`, [`control`]); several tasks or dead letters handed on
//! together travel as one message ([`bundle`]).
//! Producers never see these.

pub mod bundle;
pub mod control;
mod dead_letter;

pub use dead_letter::{
    DeadLetter, MAX_KEPT_BYTES, Reason, kept_payload, new_dead_letter_id, raw_dead_letter_id,
    raw_payload,
};

use serde::{Deserialize, Serialize};

use crate::delivery::AttemptRecord;
use crate::event::EventKind;

/// AMQP header that marks a message on `P.events` as a [`DeliveryTask`] rather than an inbound
/// event; its value is the [`TaskKind`]. A message that carries it is a task only if its seal
/// verifies ([`crate::seal`]): anyone can set a header.
pub const TASK_HEADER: &str = "x-webhook-task";

/// Why a delivery task was published; the [`TASK_HEADER`] value, and part of what its seal covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// A failed attempt's retry.
    Delivery,
    /// Put off, no attempt spent: its endpoint was at its in-flight limit.
    Deferred,
    /// A delivery-log record sent again.
    Replay,
    /// A test event an operator asked for.
    Test,
    /// An operational event for the operator's webhook (`OPERATOR_WEBHOOK_URL`).
    Operator,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Delivery => "delivery",
            TaskKind::Deferred => "deferred",
            TaskKind::Replay => "replay",
            TaskKind::Test => "test",
            TaskKind::Operator => "operator",
        }
    }
}

/// One (event, subscription) delivery still to be attempted. The signing secret and URL are
/// not carried: they are looked up when the attempt is made, so a fixed URL or a rotated secret
/// applies to pending retries too, and no secret ever sits in a queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryTask {
    pub event_id: String,
    pub account_id: String,
    pub subscription_id: String,
    pub event: String,
    /// The exact outbound body.
    pub body: String,
    /// Earlier attempts, oldest first; the next attempt's number is `attempts.len() + 1`.
    pub attempts: Vec<AttemptRecord>,
    /// Times the next attempt was put off because its endpoint was at its in-flight limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deferrals: u32,
}

/// The event-level facts every delivery of one event shares (an inbound event's, or a task's).
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    pub id: &'a str,
    pub account_id: &'a str,
    pub event: &'a str,
    /// The exact outbound body.
    pub body: &'a str,
}

impl EventRef<'_> {
    /// The task that carries this event's delivery to `subscription_id` to its next attempt.
    pub fn task(
        &self,
        subscription_id: &str,
        attempts: Vec<AttemptRecord>,
        deferrals: u32,
    ) -> DeliveryTask {
        DeliveryTask {
            event_id: self.id.to_string(),
            account_id: self.account_id.to_string(),
            subscription_id: subscription_id.to_string(),
            event: self.event.to_string(),
            body: self.body.to_string(),
            attempts,
            deferrals,
        }
    }
}

impl DeliveryTask {
    /// The event this task delivers.
    pub fn event_ref(&self) -> EventRef<'_> {
        EventRef {
            id: &self.event_id,
            account_id: &self.account_id,
            event: &self.event,
            body: &self.body,
        }
    }

    /// A task whose next attempt is the first (replays, test events).
    pub fn first_attempt(
        event_id: &str,
        account_id: &str,
        subscription_id: &str,
        event: &str,
        body: String,
    ) -> DeliveryTask {
        DeliveryTask {
            event_id: event_id.to_string(),
            account_id: account_id.to_string(),
            subscription_id: subscription_id.to_string(),
            event: event.to_string(),
            body,
            attempts: Vec::new(),
            deferrals: 0,
        }
    }
}

impl DeliveryTask {
    /// Reads a task whose seal verified. Its content is the service's own, so a failure here is
    /// a bug or a task from an incompatible version; still, nothing is taken on trust that
    /// would be dangerous if it were wrong: the event must be one of the six, the id one a
    /// receiver can use, the attempts no more than any configuration makes.
    pub fn read(data: &[u8]) -> Result<DeliveryTask, String> {
        let task: DeliveryTask =
            serde_json::from_slice(data).map_err(|e| format!("unreadable delivery task: {e}"))?;
        task.checked()
    }

    /// The task, if what [`read`](Self::read) checks holds of it.
    pub(crate) fn checked(self) -> Result<DeliveryTask, String> {
        let operational = self.subscription_id == crate::operator::SUBSCRIPTION_ID
            && crate::operator::EVENTS.contains(&self.event.as_str());
        if EventKind::parse(&self.event).is_none() && !operational {
            return Err(format!("delivery task for unknown event {:?}", self.event));
        }
        crate::text::check_event_id(&self.event_id).map_err(|e| format!("delivery task: {e}"))?;
        if self.attempts.len() > MAX_TASK_ATTEMPTS {
            return Err(format!(
                "delivery task with {} attempts (at most {MAX_TASK_ATTEMPTS})",
                self.attempts.len()
            ));
        }
        Ok(self)
    }
}

/// Most attempts a task may list: one more than the most retry delays a configuration allows.
const MAX_TASK_ATTEMPTS: usize = 21;

fn is_zero(n: &u32) -> bool {
    *n == 0
}
