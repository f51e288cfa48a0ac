//! Operational webhooks: what an operator wants to hear about endpoints, POSTed to
//! `OPERATOR_WEBHOOK_URL`, signed (Standard Webhooks) with `OPERATOR_WEBHOOK_SECRET`, with the
//! body `{"event","timestamp","data"}` customers' webhooks have.
//!
//! - `endpoint.disabled`: the automatic-disable rule disabled a subscription. `data`:
//!   `subscription_id`, `account_id`, `url`, `reason` (`auto`), `failures` (deliveries that
//!   failed every attempt since its last success), `last_status`, `last_error`,
//!   `last_success_at`, `disabled_at`.
//! - `endpoint.enabled`: a subscription the rule had disabled was enabled again (API or portal).
//!   `data`: `subscription_id`, `account_id`, `url`, `enabled_at`.
//!
//! They go the way every delivery goes: a sealed task on the events queue, to a subscription of
//! the service's own (`operator`, account `""`, which no customer can have or see), so they are
//! retried after 2, 4 and 8 s and, if every attempt fails, kept in the delivery log (subscription
//! `operator`; not replayable: that subscription is not in the store).

use std::sync::Arc;

use serde_json::{Value, json};

use crate::broker::Publisher;
use crate::config::HealthSettings;
use crate::seal::Keyring;
use crate::store::health::EndpointFigures;
use crate::subscriptions::{EventSet, Subscription};
use crate::time::now_rfc3339;
use crate::wire::{DeliveryTask, TaskKind};

/// The id of the operator's webhook among subscriptions (ours start with `sub_`).
pub const SUBSCRIPTION_ID: &str = "operator";
/// The operational events.
pub const EVENTS: [&str; 2] = ["endpoint.disabled", "endpoint.enabled"];

/// The operator's webhook as a subscription the dispatcher can deliver to, when one is set.
pub fn subscription(settings: &HealthSettings) -> Option<Subscription> {
    let (Some(url), Some(secret)) = (
        &settings.operator_webhook_url,
        &settings.operator_webhook_secret,
    ) else {
        return None;
    };
    Some(Subscription {
        id: SUBSCRIPTION_ID.to_string(),
        account_id: String::new(),
        url: url.to_string(),
        events: EventSet::ALL,
        enabled: true,
        disabled_reason: None,
        disabled_at: None,
        description: Some("operational webhooks (OPERATOR_WEBHOOK_URL)".into()),
        secret: secret.clone(),
        previous_secret: None,
        parsed_url: url.clone(),
        created_at: String::new(),
        updated_at: String::new(),
    })
}

/// Sends operational events.
#[derive(Clone)]
pub struct Notifier {
    pub publisher: Publisher,
    pub events_queue: String,
    pub keys: Arc<Keyring>,
}

impl Notifier {
    pub async fn endpoint_disabled(&self, sub: &Subscription, figures: Option<&EndpointFigures>) {
        let data = json!({
            "subscription_id": sub.id,
            "account_id": sub.account_id,
            "url": sub.url,
            "reason": "auto",
            "failures": figures.map_or(0, |f| f.exhausted),
            "last_status": figures.and_then(|f| f.last_status),
            "last_error": figures.and_then(|f| f.last_error.clone()),
            "last_success_at": figures.and_then(|f| f.last_success_at.clone()),
            "disabled_at": sub.disabled_at,
        });
        self.send("endpoint.disabled", data).await;
    }

    pub async fn endpoint_enabled(&self, sub: &Subscription) {
        let data = json!({
            "subscription_id": sub.id,
            "account_id": sub.account_id,
            "url": sub.url,
            "enabled_at": sub.updated_at,
        });
        self.send("endpoint.enabled", data).await;
    }

    /// Queues `event` for the operator's webhook. A failure is logged (with the event): the
    /// broker did not take it, so it is not retried.
    async fn send(&self, event: &str, data: Value) {
        let event_id = format!("evt_op_{}", uuid::Uuid::new_v4().simple());
        let body = json!({"event": event, "timestamp": now_rfc3339(), "data": data}).to_string();
        let task = DeliveryTask::first_attempt(&event_id, "", SUBSCRIPTION_ID, event, body.clone());
        match self
            .publisher
            .enqueue_task(&self.events_queue, &task, TaskKind::Operator, &self.keys)
            .await
        {
            Ok(()) => tracing::info!(event, event_id, "operational webhook queued"),
            Err(e) => tracing::error!(error = %e, event, body, "operational webhook not queued"),
        }
    }
}
