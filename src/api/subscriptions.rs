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

impl CreateBody {
    fn validate(self) -> Result<NewSubscription, ApiError> {
        validate_account(&self.account_id).map_err(ApiError::Unprocessable)?;
        let url = validate_url(&self.url).map_err(ApiError::Unprocessable)?;
        let events = EventSet::parse(&self.events).map_err(ApiError::Unprocessable)?;
        if let Some(d) = &self.description {
            validate_description(d).map_err(ApiError::Unprocessable)?;
        }
        Ok(NewSubscription {
            account_id: self.account_id,
            url,
            events,
            enabled: self.enabled,
            description: self.description,
        })
    }
}

impl PatchBody {
    fn validate(self) -> Result<SubscriptionPatch, ApiError> {
        let mut patch = SubscriptionPatch::default();
        if let Some(url) = &self.url {
            patch.url = Some(validate_url(url).map_err(ApiError::Unprocessable)?);
        }
        if let Some(events) = &self.events {
            patch.events = Some(EventSet::parse(events).map_err(ApiError::Unprocessable)?);
        }
        patch.enabled = self.enabled;
        if let Some(description) = self.description {
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
        Ok(patch)
    }
}

/// A create body as the API reads it (JSON, then validation) without the HTTP around it: the
/// fuzz target's entry point. Malformed JSON is `BadRequest`, a wrong shape `Unprocessable`.
pub fn parse_create_body(bytes: &[u8]) -> Result<NewSubscription, ApiError> {
    body_from_slice::<CreateBody>(bytes)?.validate()
}

/// A PATCH body as the API reads it; see [`parse_create_body`].
pub fn parse_patch_body(bytes: &[u8]) -> Result<SubscriptionPatch, ApiError> {
    body_from_slice::<PatchBody>(bytes)?.validate()
}

fn body_from_slice<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Unprocessable(e.to_string()),
        _ => ApiError::BadRequest(e.to_string()),
    })
}

pub async fn create(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new = body.validate()?;
    let sub = state.store.create_subscription(new).await?;
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
    let patch = body.validate()?;
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
