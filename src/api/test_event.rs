//! `POST /v1/subscriptions/{id}/test`: a sample event sent to one endpoint through the normal
//! delivery path (signed, retried, dead-lettered and counted like any delivery), so a customer
//! can check their receiver without waiting for real traffic.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::OptionalJson;
use super::event_types::event_names;
use super::openapi::ErrorBody;
use super::subscriptions::not_found;
use super::{ApiError, ApiState};
use crate::catalog;
use crate::event::EventKind;
use crate::time::now_rfc3339;
use crate::wire::{DeliveryTask, TaskKind};

/// Optional body: which event to send.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestBody {
    /// One of the subscription's events; its first one when absent.
    #[serde(default)]
    #[schema(schema_with = super::openapi::event_name, example = "purchase")]
    event: Option<String>,
}

/// The test event as queued for delivery.
#[derive(Serialize, ToSchema)]
pub struct TestEventSent {
    /// The `webhook-id` the receiver gets (`evt_test_…`).
    event_id: String,
    #[schema(example = "purchase")]
    event: &'static str,
    subscription_id: String,
    /// The exact body the receiver gets.
    #[schema(value_type = Object)]
    payload: Box<RawValue>,
}

#[utoipa::path(
    operation_id = "sendTestEvent",
    post,
    path = "/subscriptions/{id}/test",
    tag = "subscriptions",
    summary = "Send a test event",
    description = "Builds a sample event of the given type from the catalogue's example (this subscription's account, a fresh event id, timestamp now) and queues it for this subscription through the normal delivery path: signed, retried and dead-lettered like any delivery.",
    params(("id" = String, Path, description = "Subscription id")),
    request_body(content = Option<TestBody>, description = "Optional"),
    responses(
        (status = 202, description = "Queued for delivery", body = TestEventSent),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 404, description = "No such subscription", body = ErrorBody),
        (status = 409, description = "The subscription is disabled (`subscription_disabled`)", body = ErrorBody),
        (status = 422, description = "Not one of the six events, or not one the subscription receives", body = ErrorBody),
        (status = 503, description = "The broker is not reachable; nothing was queued", body = ErrorBody),
    ),
)]
pub async fn send(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<TestBody>,
) -> Result<(StatusCode, Json<TestEventSent>), ApiError> {
    let sub = state
        .store
        .subscription(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let requested = match body.event {
        None => None,
        Some(name) => Some(EventKind::parse(&name).ok_or_else(|| {
            ApiError::Unprocessable(format!(
                "unknown event {name:?}; expected one of {}",
                event_names()
            ))
        })?),
    };
    let (event_id, kind, payload) =
        send_test_event(&state, &sub, requested, new_test_event_id()).await?;
    let payload = RawValue::from_string(payload).expect("the sample body is JSON");
    Ok((
        StatusCode::ACCEPTED,
        Json(TestEventSent {
            event_id,
            event: kind.as_str(),
            subscription_id: sub.id,
            payload,
        }),
    ))
}

/// A fresh test event id (`evt_test_…`).
pub(crate) fn new_test_event_id() -> String {
    format!("evt_test_{}", uuid::Uuid::new_v4().simple())
}

/// Queues a test event for `sub` (the `requested` event, else its first) under `event_id`
/// ([`new_test_event_id`]): the catalogue's example, through the normal path. Returns the event id, the
/// event and the body sent. Shared with the portal.
pub(crate) async fn send_test_event(
    state: &ApiState,
    sub: &crate::subscriptions::Subscription,
    requested: Option<EventKind>,
    event_id: String,
) -> Result<(String, EventKind, String), ApiError> {
    if !sub.enabled {
        return Err(ApiError::Conflict {
            code: "subscription_disabled",
            message: format!(
                "subscription {} is disabled; enable it (PATCH {{\"enabled\":true}}) before sending it a test event",
                sub.id
            ),
        });
    }
    let subscribed: Vec<EventKind> = EventKind::ALL
        .into_iter()
        .filter(|k| sub.events.contains(*k))
        .collect();
    let kind = match requested {
        Some(kind) if subscribed.contains(&kind) => kind,
        None if !subscribed.is_empty() => subscribed[0],
        _ => {
            let names: Vec<&str> = subscribed.iter().map(|k| k.as_str()).collect();
            return Err(ApiError::Unprocessable(format!(
                "subscription {} does not receive {}; send one of its events: {}",
                sub.id,
                requested.map_or("any event", EventKind::as_str),
                names.join(", ")
            )));
        }
    };

    let payload = catalog::sample_body(kind, &now_rfc3339());
    let task = DeliveryTask::first_attempt(
        &event_id,
        &sub.account_id,
        &sub.id,
        kind.as_str(),
        payload.clone(),
    );
    state
        .publisher
        .enqueue_task(&state.topology.events, &task, TaskKind::Test, &state.keys)
        .await?;
    tracing::info!(subscription_id = %sub.id, event_id = %event_id, event = %kind, "test event queued");
    Ok((event_id, kind, payload))
}
