//! `/v1/subscriptions`: create (the only answer that shows the secret), list, read, change,
//! delete. Every change refreshes the in-memory index before answering.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::{ApiError, ApiJson, ApiState};
use crate::store::{NewSubscription, Page, SubscriptionPatch, page_limit};
use crate::subscriptions::{
    EventSet, Subscription, validate_account, validate_description, validate_url,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    account_id: String,
    url: String,
    events: Vec<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    description: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    enabled: Option<bool>,
    /// Absent: unchanged; `null`: cleared.
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    account_id: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

pub async fn create(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    validate_account(&body.account_id).map_err(ApiError::Unprocessable)?;
    let url = validate_url(&body.url).map_err(ApiError::Unprocessable)?;
    let events = EventSet::parse(&body.events).map_err(ApiError::Unprocessable)?;
    if let Some(d) = &body.description {
        validate_description(d).map_err(ApiError::Unprocessable)?;
    }
    let sub = state
        .store
        .create_subscription(NewSubscription {
            account_id: body.account_id,
            url,
            events,
            enabled: body.enabled,
            description: body.description,
        })
        .await?;
    refresh(&state).await?;
    tracing::info!(subscription_id = %sub.id, account_id = %sub.account_id, "subscription created");
    let mut view = view(&sub);
    view["secret"] = Value::String(sub.secret.expose().to_string());
    Ok((StatusCode::CREATED, Json(view)))
}

pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Subscription>>, ApiError> {
    let Query(query) = query?;
    let page = state
        .store
        .list_subscriptions(
            query.account_id.as_deref(),
            query.cursor.as_deref(),
            page_limit(query.limit),
        )
        .await?;
    Ok(Json(page))
}

pub async fn read(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sub = state
        .store
        .subscription(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(view(&sub)))
}

pub async fn update(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchBody>,
) -> Result<Json<Value>, ApiError> {
    let mut patch = SubscriptionPatch::default();
    if let Some(url) = &body.url {
        patch.url = Some(validate_url(url).map_err(ApiError::Unprocessable)?);
    }
    if let Some(events) = &body.events {
        patch.events = Some(EventSet::parse(events).map_err(ApiError::Unprocessable)?);
    }
    patch.enabled = body.enabled;
    if let Some(description) = body.description {
        if let Some(d) = &description {
            validate_description(d).map_err(ApiError::Unprocessable)?;
        }
        patch.description = Some(description);
    }
    if patch.url.is_none()
        && patch.events.is_none()
        && patch.enabled.is_none()
        && patch.description.is_none()
    {
        return Err(ApiError::Unprocessable(
            "nothing to change: send at least one of url, events, enabled, description".into(),
        ));
    }
    let sub = state
        .store
        .update_subscription(&id, patch)
        .await?
        .ok_or_else(|| not_found(&id))?;
    refresh(&state).await?;
    tracing::info!(subscription_id = %sub.id, "subscription updated");
    Ok(Json(view(&sub)))
}

pub async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state.store.delete_subscription(&id).await? {
        return Err(not_found(&id));
    }
    refresh(&state).await?;
    tracing::info!(subscription_id = %id, "subscription deleted");
    Ok(StatusCode::NO_CONTENT)
}

fn view(sub: &Subscription) -> Value {
    serde_json::to_value(sub).expect("subscription serialises")
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no subscription {id:?}"))
}

async fn refresh(state: &ApiState) -> Result<(), ApiError> {
    state.index.reload(&state.store).await?;
    Ok(())
}
