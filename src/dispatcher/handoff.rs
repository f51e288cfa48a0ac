//! Handing a delivery on once its step is decided: done, to a delay queue (a retry, or a
//! deferral that spends no attempt), or to `P.dead` — each with a publisher confirm, so the
//! message it came from can be acked. What is handed to the same queue at the same time goes
//! as one message ([`gather`](super::gather)).

use lapin::BasicProperties;

use super::gather::Item;
use super::{Dispatcher, HandleError};
use crate::broker::topology::RetryQueue;
use crate::broker::{
    dead_letter_bundle_message, dead_letter_message, task_bundle_message, task_message,
};
use crate::delivery::AttemptRecord;
use crate::event::EventKind;
use crate::retry::Next;
use crate::seal::Keyring;
use crate::subscriptions::Subscription;
use crate::wire::bundle::{dead_letter_size, task_size};
use crate::wire::{DeadLetter, DeliveryTask, EventRef, Reason, TaskKind};

/// A task on its way to a delay queue, and why (sent alone, the task header says so).
pub(super) struct Parked {
    task: DeliveryTask,
    kind: TaskKind,
}

impl Item for Parked {
    fn size(&self) -> usize {
        task_size(&self.task)
    }

    fn alone(&self, keys: &Keyring) -> (Vec<u8>, BasicProperties) {
        task_message(&self.task, self.kind, keys)
    }

    fn bundle(account: &str, items: &[Parked], keys: &Keyring) -> (Vec<u8>, BasicProperties) {
        task_bundle_message(account, items.iter().map(|p| &p.task).collect(), keys)
    }
}

impl Item for DeadLetter {
    fn size(&self) -> usize {
        dead_letter_size(self)
    }

    fn alone(&self, keys: &Keyring) -> (Vec<u8>, BasicProperties) {
        dead_letter_message(self, keys)
    }

    fn bundle(_: &str, items: &[DeadLetter], keys: &Keyring) -> (Vec<u8>, BasicProperties) {
        dead_letter_bundle_message(items.iter().collect(), keys)
    }
}

impl Dispatcher {
    /// Carries out `next` for the delivery of `ev` to `sub` after `attempts`; `deferrals` counts
    /// the times it was put off before (a new deferral adds one, anything else starts over).
    pub(super) async fn hand_off(
        &self,
        next: Next,
        ev: &EventRef<'_>,
        sub: &Subscription,
        attempts: Vec<AttemptRecord>,
        deferrals: u32,
    ) -> Result<(), HandleError> {
        match next {
            Next::Done => Ok(()),
            Next::Retry(index) => {
                let queue = &self.broker.topology.retries[index];
                let task = ev.task(&sub.id, attempts, 0);
                self.park(queue, task, TaskKind::Delivery).await?;
                self.metrics.retry_scheduled(&queue.label);
                Ok(())
            }
            Next::Defer(index) => {
                let queue = &self.broker.topology.retries[index];
                let task = ev.task(&sub.id, attempts, deferrals + 1);
                self.park(queue, task, TaskKind::Deferred).await?;
                self.metrics.delivery_deferred(&sub.id, &queue.label);
                Ok(())
            }
            Next::Exhausted => {
                let dead =
                    DeadLetter::given_up(ev, &sub.id, Some(&sub.url), attempts, Reason::Exhausted);
                self.dead_letter(dead).await?;
                self.health.exhausted(&sub.id);
                Ok(())
            }
        }
    }

    /// Publishes a delivery task to the delay queue `queue`, sealed, with a confirm (in a bundle
    /// with its account's other tasks handed to that queue meanwhile).
    async fn park(
        &self,
        queue: &RetryQueue,
        task: DeliveryTask,
        kind: TaskKind,
    ) -> Result<(), HandleError> {
        let account = task.account_id.clone();
        self.retries
            .send(&queue.name, &account, Parked { task, kind })
            .await
            .map_err(HandleError::Broker)
    }

    /// Publishes a dead letter to `P.dead`, sealed, with a confirm (in a bundle with others
    /// handed on meanwhile), and counts it.
    pub(super) async fn dead_letter(&self, dead: DeadLetter) -> Result<(), HandleError> {
        // The label is one of the six event names or `unknown`, never what a producer wrote
        // (an unknown name of up to 256 KiB would be a new series each time).
        let event = dead
            .event
            .as_deref()
            .and_then(EventKind::parse)
            .map_or("unknown", EventKind::as_str);
        let reason = dead.reason.clone();
        self.dead
            .send(&self.broker.topology.dead, "", dead)
            .await
            .map_err(HandleError::Broker)?;
        self.metrics.dead_lettered(event, &reason);
        Ok(())
    }
}
