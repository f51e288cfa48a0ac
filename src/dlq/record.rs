//! What a message in `P.dead` becomes in the delivery log ([`Logger::records_in`]).

use std::collections::HashMap;

use super::Logger;
use crate::broker::{Death, Inbound};
use crate::event;
use crate::seal::{DEAD_LETTER_KIND, Forgery, Unverified};
use crate::store::{StoreError, Trust};
use crate::time::{now_rfc3339, rfc3339};
use crate::wire::bundle::{self, DEAD_LETTER_BUNDLE, DeadLetterBundle, TASK_BUNDLE};
use crate::wire::{self, DeadLetter, DeliveryTask, Reason};

/// A message from `P.dead` as the delivery log will hold it.
pub(super) struct Record {
    pub dead: DeadLetter,
    pub trust: Trust,
    /// Made from what RabbitMQ dead-lettered (not counted when it was published, as the
    /// service's own dead letters are): counted when stored.
    pub broker_made: bool,
    /// Why its seal did not verify, when it did not: counted when stored.
    pub forged: Option<Forgery>,
}

/// Why a message's record cannot be made yet: what it depends on could not be read. Nothing
/// is decided about it; it waits, as for a failure to store it.
#[derive(Debug, thiserror::Error)]
pub(super) enum NotYet {
    /// The keys, to check a seal naming a key not loaded here.
    #[error(transparent)]
    Keys(Unverified),
    /// The record's subscription (its URL).
    #[error("looking up the subscription failed: {0}")]
    Subscription(StoreError),
}

impl Logger {
    /// What a message from `P.dead` is recorded as: one record, or one for each dead letter or
    /// task of a bundle ([`crate::wire::bundle`]). Three kinds arrive there:
    /// - a dead letter the service sealed, or a bundle of them: stored as it says (trusted);
    /// - a message RabbitMQ dead-lettered from `P.events` (its `x-death` names that queue): a
    ///   delivery task whose seal verifies becomes a replayable record of that delivery; any
    ///   other message (an inbound event that expired, say) is kept like a rejected one, raw,
    ///   naming no subscription;
    /// - anything else (no seal, a wrong one, not even JSON): kept raw as untrusted, naming no
    ///   account or subscription, never replayable, and counted as forged.
    pub(super) async fn records_in(&self, message: &Inbound) -> Result<Vec<Record>, NotYet> {
        let data = message.body();
        if let Some(death) = message.death().filter(|d| d.queue == self.events_queue) {
            return self.broker_dead_letters(message, &death).await;
        }
        let is_bundle = message.dead_letters_claimed().is_some();
        let kind = if is_bundle {
            DEAD_LETTER_BUNDLE
        } else {
            DEAD_LETTER_KIND
        };
        let (key_id, mac) = message.seal();
        let verdict = match self
            .keys
            .verify(kind, data, key_id.as_deref(), mac.as_deref())
            .await
        {
            Ok(()) => Ok(()),
            Err(Unverified::Forged(forgery)) => Err(forgery),
            Err(keys) => return Err(NotYet::Keys(keys)),
        };
        Ok(
            match verdict.map(|()| bundle::dead_letters_in(is_bundle, data)) {
                Ok(Ok(dead_letters)) => dead_letters
                    .into_iter()
                    .map(|dead| Record {
                        dead,
                        trust: Trust::Verified,
                        broker_made: false,
                        forged: None,
                    })
                    .collect(),
                // Sealed by the service, yet not a dead letter it can read (another version's?).
                Ok(Err(e)) => vec![untrusted(
                    data,
                    Reason::Unreadable,
                    format!("a sealed message that is not a dead letter this version reads: {e}"),
                )],
                Err(forgery) => {
                    let (reason, claim) = match claimed_reason(data) {
                        Some(claimed) => (
                            Reason::ForgedDeadLetter,
                            format!("; it claims reason {:?}", shorten(&claimed)),
                        ),
                        None => (Reason::Unreadable, String::new()),
                    };
                    vec![Record {
                        forged: Some(forgery.clone()),
                        ..untrusted(data, reason, format!("not believed: {forgery}{claim}"))
                    }]
                }
            },
        )
    }

    /// The records of a message RabbitMQ dead-lettered from `P.events`: one, or one per task
    /// of a bundle.
    async fn broker_dead_letters(
        &self,
        message: &Inbound,
        death: &Death,
    ) -> Result<Vec<Record>, NotYet> {
        let data = message.body();
        let reason = Reason::of_death(&death.reason);
        let detail = format!(
            "dead-lettered by RabbitMQ from {} ({}{})",
            death.queue,
            death.reason,
            death
                .count
                .map(|n| format!(", {n} times"))
                .unwrap_or_default()
        );
        // Redelivered copies carry the same bytes and x-death, so they get the same id; each task
        // of a bundle its place in it besides.
        let id_of = |place: Option<usize>| {
            wire::raw_dead_letter_id(
                &[
                    data,
                    reason.as_str().as_bytes(),
                    &death.time.unwrap_or(0).to_be_bytes(),
                    &place.map(|n| n.to_be_bytes().to_vec()).unwrap_or_default(),
                ]
                .concat(),
            )
        };
        let at = death
            .time
            .and_then(|t| chrono::DateTime::from_timestamp(i64::try_from(t).ok()?, 0))
            .map_or_else(now_rfc3339, rfc3339);
        if let Some((tasks, bundled)) = self.verified_tasks(message).await? {
            // A bundle's tasks mostly share a subscription: its URL is looked up once.
            let mut urls: HashMap<String, Option<String>> = HashMap::new();
            let mut records = Vec::with_capacity(tasks.len());
            for (place, task) in tasks.into_iter().enumerate() {
                if !urls.contains_key(&task.subscription_id) {
                    let url = self
                        .store
                        .subscription(&task.subscription_id)
                        .await
                        .map_err(NotYet::Subscription)?
                        .map(|s| s.url);
                    urls.insert(task.subscription_id.clone(), url);
                }
                let url = urls[&task.subscription_id].clone();
                let id = id_of(bundled.then_some(place));
                records.push(task_record(task, url, id, reason, &detail, &at));
            }
            return Ok(records);
        }
        // An inbound event (or whatever else was on the queue): kept raw, like a rejected one.
        let message_id = message.message_id();
        let (event_id, account_id, event) = match event::parse(data, message_id) {
            Ok(ev) => (
                ev.id,
                Some(ev.account_id),
                Some(ev.kind.as_str().to_string()),
            ),
            Err(_) => {
                let fields = event::rejected_fields(data);
                (
                    event::fallback_id(message_id, data),
                    fields.account_id,
                    fields.event,
                )
            }
        };
        let dead = DeadLetter {
            id: id_of(None),
            account_id,
            event,
            dead_lettered_at: at,
            ..DeadLetter::for_raw(data, event_id, reason, detail)
        };
        Ok(vec![Record {
            dead,
            trust: Trust::Verified,
            broker_made: true,
            forged: None,
        }])
    }

    /// The delivery tasks in a message, if it is a task or a bundle of them and its seal
    /// verifies, and whether it was a bundle.
    async fn verified_tasks(
        &self,
        message: &Inbound,
    ) -> Result<Option<(Vec<DeliveryTask>, bool)>, NotYet> {
        let Some(kind) = message.task_kind() else {
            return Ok(None);
        };
        let (key_id, mac) = message.seal();
        match self
            .keys
            .verify(&kind, message.body(), key_id.as_deref(), mac.as_deref())
            .await
        {
            Ok(()) => Ok(bundle::tasks_in(&kind, message.body())
                .ok()
                .map(|tasks| (tasks, kind == TASK_BUNDLE))),
            Err(Unverified::Forged(_)) => Ok(None),
            Err(keys) => Err(NotYet::Keys(keys)),
        }
    }
}

/// What an unverified message claims, for the record's detail.
#[derive(serde::Deserialize)]
struct Claimed {
    reason: String,
}

/// The reason an unverified message claims, for its record's detail: a dead letter's, or the
/// first of a bundle's.
fn claimed_reason(data: &[u8]) -> Option<String> {
    if let Ok(one) = serde_json::from_slice::<Claimed>(data) {
        return Some(one.reason);
    }
    let many = serde_json::from_slice::<DeadLetterBundle<Claimed>>(data).ok()?;
    many.dead_letters.into_iter().next().map(|c| c.reason)
}

/// The record of a message nothing in which is believed.
fn untrusted(data: &[u8], reason: Reason, detail: String) -> Record {
    Record {
        dead: DeadLetter::untrusted(data, reason, detail),
        trust: Trust::Untrusted,
        broker_made: false,
        forged: None,
    }
}

/// Text from outside, cut for a record's detail.
fn shorten(text: &str) -> String {
    text.chars().take(60).collect()
}

/// The record of one delivery task RabbitMQ dead-lettered: replayable, naming its
/// subscription's URL as it is now (`url`).
fn task_record(
    task: DeliveryTask,
    url: Option<String>,
    id: String,
    reason: Reason,
    detail: &str,
    at: &str,
) -> Record {
    let dead = DeadLetter {
        id,
        event_id: task.event_id,
        account_id: Some(task.account_id),
        subscription_id: Some(task.subscription_id),
        url,
        event: Some(task.event),
        payload: wire::raw_payload(task.body.as_bytes()),
        reason: reason.as_str().to_string(),
        detail: Some(detail.to_string()),
        attempts: task.attempts,
        dead_lettered_at: at.to_string(),
    };
    Record {
        dead,
        trust: Trust::Verified,
        broker_made: true,
        forged: None,
    }
}
