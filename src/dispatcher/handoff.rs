//! Handing a delivery on once its step is decided: done, to a delay queue (a retry, or a
//! deferral that spends no attempt), or to `P.dead` — each with a publisher confirm, so the
//! message it came from can be acked.

use super::{Dispatcher, HandleError};
use crate::broker::{Route, dead_letter_message, task_message};
use crate::delivery::AttemptRecord;
use crate::event::EventKind;
use crate::retry::Next;
use crate::subscriptions::Subscription;
use crate::wire::{DeadLetter, DeliveryTask, EventRef, Reason, TaskKind};

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
                self.park(
                    &queue.name,
                    &ev.task(&sub.id, attempts, 0),
                    TaskKind::Delivery,
                )
                .await?;
                self.metrics.retry_scheduled(&queue.label);
                Ok(())
            }
            Next::Defer(index) => {
                let queue = &self.broker.topology.retries[index];
                let task = ev.task(&sub.id, attempts, deferrals + 1);
                self.park(&queue.name, &task, TaskKind::Deferred).await?;
                self.metrics.delivery_deferred(&sub.id, &queue.label);
                Ok(())
            }
            Next::Exhausted => {
                let dead =
                    DeadLetter::given_up(ev, &sub.id, Some(&sub.url), attempts, Reason::Exhausted);
                self.dead_letter(&dead).await?;
                self.health.exhausted(&sub.id);
                Ok(())
            }
        }
    }

    /// Publishes a delivery task to the delay queue `queue`, sealed, with a confirm.
    async fn park(
        &self,
        queue: &str,
        task: &DeliveryTask,
        kind: TaskKind,
    ) -> Result<(), HandleError> {
        let (body, props) = task_message(task, kind, &self.keys);
        self.broker
            .publisher
            .publish_retrying(Route::queue(queue), &body, props)
            .await?;
        Ok(())
    }

    /// Publishes a dead letter to `P.dead`, sealed, with a confirm, and counts it.
    pub(super) async fn dead_letter(&self, dead: &DeadLetter) -> Result<(), HandleError> {
        let (body, props) = dead_letter_message(dead, &self.keys);
        self.broker
            .publisher
            .publish_retrying(Route::queue(&self.broker.topology.dead), &body, props)
            .await?;
        // The label is one of the six event names or `unknown`, never what a producer wrote
        // (an unknown name of up to 256 KiB would be a new series each time).
        let event = dead
            .event
            .as_deref()
            .and_then(EventKind::parse)
            .map_or("unknown", EventKind::as_str);
        self.metrics.dead_lettered(event, &dead.reason);
        Ok(())
    }
}
