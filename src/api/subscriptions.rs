//! `/v1/subscriptions`: create (the only answer that shows the secret), list, read, change,
//! delete. Every change refreshes the in-memory index before answering.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;

use super::{ApiError, ApiJson, ApiState};
use crate::config::MAX_SECRET_OVERLAP;
use crate::delivery::guard;
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
    // Read like axum's `Json` (which names the field at fault), without the HTTP around it.
    let classify = |e: &serde_json::Error, text: String| match e.classify() {
        serde_json::error::Category::Data => ApiError::Unprocessable(text),
        _ => ApiError::BadRequest(text),
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| classify(e.inner(), e.to_string()))?;
    de.end().map_err(|e| classify(&e, e.to_string()))?;
    Ok(value)
}

pub async fn create(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new = body.validate()?;
    vet(&state, &new.url).await?;
    let sub = state.store.create_subscription(new).await?;
    refresh(&state).await?;
    tracing::info!(subscription_id = %sub.id, account_id = %sub.account_id, "subscription created");
    Ok((StatusCode::CREATED, Json(view_with_secret(&sub))))
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
    if let Some(url) = &patch.url {
        vet(&state, url).await?;
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// How long the old secret keeps signing; the server's SECRET_ROTATION_OVERLAP if absent.
    #[serde(default)]
    overlap_seconds: Option<u64>,
}

/// `POST /v1/subscriptions/{id}/rotate-secret`: a new secret, shown in this answer only; the old
/// one keeps signing next to it for the overlap. The body (`{"overlap_seconds": N}`) is optional.
pub async fn rotate_secret(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body?;
    let body: RotateBody = if body.iter().all(u8::is_ascii_whitespace) {
        RotateBody::default()
    } else {
        body_from_slice(&body)?
    };
    let overlap = match body.overlap_seconds {
        None => state.secret_rotation_overlap,
        Some(secs) if secs <= MAX_SECRET_OVERLAP.as_secs() => Duration::from_secs(secs),
        Some(_) => {
            return Err(ApiError::Unprocessable(format!(
                "overlap_seconds must be at most {} (30 days)",
                MAX_SECRET_OVERLAP.as_secs()
            )));
        }
    };
    let sub = state
        .store
        .rotate_secret(&id, overlap)
        .await?
        .ok_or_else(|| not_found(&id))?;
    refresh(&state).await?;
    tracing::info!(
        subscription_id = %sub.id,
        overlap = %humantime::format_duration(overlap),
        "subscription secret rotated"
    );
    Ok(Json(view_with_secret(&sub)))
}

/// The SSRF guard's check of a new or changed endpoint, unless private targets are allowed.
async fn vet(state: &ApiState, url: &url::Url) -> Result<(), ApiError> {
    if state.allow_private_targets {
        return Ok(());
    }
    guard::vet_url(url)
        .await
        .map_err(|blocked| ApiError::Unprocessable(format!("url is not allowed: {blocked}")))
}

fn view(sub: &Subscription) -> Value {
    serde_json::to_value(sub).expect("subscription serialises")
}

/// The view plus the secret: only the answers to create and rotate-secret show it.
fn view_with_secret(sub: &Subscription) -> Value {
    let mut view = view(sub);
    view["secret"] = Value::String(sub.secret.expose().to_string());
    view
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no subscription {id:?}"))
}

async fn refresh(state: &ApiState) -> Result<(), ApiError> {
    state.index.reload(&state.store).await?;
    Ok(())
}
