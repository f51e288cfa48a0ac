//! Which deliveries a message leads to: an inbound event fans out to every matching
//! subscription of its account; a message claiming to be a task goes to its one subscription,
//! once its seal verifies; a bundle of tasks to each of theirs.

use futures_util::future::join_all;

use super::{Dispatcher, HandleError};
use crate::broker::Inbound;
use crate::event;
use crate::seal::Unverified;
use crate::wire::bundle;
use crate::wire::{DeadLetter, DeliveryTask, EventRef, Reason};

impl Dispatcher {
    pub(super) async fn route(&self, message: &Inbound) -> Result<(), HandleError> {
        // A message that says it is a task is one only if its seal verifies; whichever route
        // it came by proves nothing, since anyone can publish anywhere.
        // Each boxed: this future is moved into its task when the message is started, and
        // unboxed it held the largest of what either route awaits (a delivery, a dead letter's
        // publish), ~5 KB copied at each move for a message whose deliveries are boxed anyway.
        match message.task_kind() {
            Some(kind) => Box::pin(self.task(message, &kind)).await,
            None => Box::pin(self.event(message)).await,
        }
    }

    async fn event(&self, message: &Inbound) -> Result<(), HandleError> {
        let raw = message.body();
        let event = match event::parse(raw, message.message_id()) {
            Ok(event) => event,
            Err(err) => {
                self.metrics.event_rejected(err.reason(), &err.to_string());
                let dead = DeadLetter::rejected(raw, message.message_id(), &err);
                return self.dead_letter(dead).await;
            }
        };
        self.metrics.event_consumed(event.kind.as_str());
        let subs = self.directory.matching(&event.account_id, event.kind);
        if subs.is_empty() {
            tracing::debug!(event_id = %event.id, account_id = %event.account_id, "no subscription matches");
            return Ok(());
        }
        let ev = EventRef {
            id: &event.id,
            account_id: &event.account_id,
            event: event.kind.as_str(),
            body: &event.body,
        };
        // Each delivery boxed: its future is kilobytes, and `join_all` moves what it is given
        // (the moves showed in the profile); a box moves as a pointer.
        let deliveries = subs
            .iter()
            .map(|sub| Box::pin(self.deliver(&ev, sub, Vec::new(), 0)));
        let results = join_all(deliveries).await;
        results.into_iter().collect()
    }

    async fn task(&self, message: &Inbound, kind: &str) -> Result<(), HandleError> {
        let raw = message.body();
        let (key_id, mac) = message.seal();
        let verified = self
            .keys
            .verify(kind, raw, key_id.as_deref(), mac.as_deref())
            .await;
        if let Err(unverified) = verified {
            // Keys that could not be read again: handed back, as for any store failure.
            let Unverified::Forged(forgery) = unverified else {
                return Err(HandleError::Keys(unverified));
            };
            self.metrics.forged_message("events", &forgery);
            return self
                .dead_letter(DeadLetter::forged_task(raw, &forgery))
                .await;
        }
        // A bundle is its tasks, each run as if it had come alone; the message is settled once
        // they all are, as an event's fan-out is.
        let tasks = match bundle::tasks_in(kind, raw) {
            Ok(tasks) => tasks,
            Err(detail) => {
                return self
                    .dead_letter(DeadLetter::invalid_task(raw, detail))
                    .await;
            }
        };
        let runs = tasks.into_iter().map(|task| Box::pin(self.run_task(task)));
        join_all(runs).await.into_iter().collect()
    }

    /// One task's delivery, to its subscription if that still exists.
    async fn run_task(&self, task: DeliveryTask) -> Result<(), HandleError> {
        // A subscription of another account is as good as gone: the task names both.
        let sub = self
            .directory
            .find(&task.subscription_id)
            .await?
            .filter(|sub| sub.account_id == task.account_id);
        let DeliveryTask {
            event_id,
            account_id,
            subscription_id,
            event,
            body,
            attempts,
            deferrals,
        } = task;
        let ev = EventRef {
            id: &event_id,
            account_id: &account_id,
            event: &event,
            body: &body,
        };
        match sub {
            Some(sub) => self.deliver(&ev, &sub, attempts, deferrals).await,
            None => {
                let dead = DeadLetter::given_up(
                    &ev,
                    &subscription_id,
                    None,
                    attempts,
                    Reason::SubscriptionDeleted,
                );
                self.dead_letter(dead).await
            }
        }
    }
}
