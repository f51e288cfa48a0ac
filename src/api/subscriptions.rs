//! `/v1/subscriptions`: create (with rotate-secret, the only answers that show the secret),
//! list, read, change, delete (test events are in `test_event.rs`). Every change refreshes the
//! in-memory index before answering.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

use super::openapi::ErrorBody;
use super::subscription_bodies::{CreateBody, PatchBody, refused_for_operator, vet};
use super::{ApiError, ApiJson, ApiState, OptionalJson};
use crate::config::MAX_SECRET_OVERLAP;
use crate::delivery::SigningKey;
use crate::store::{Page, Rotated, page_limit};
use crate::subscriptions::Subscription;
use crate::wire::control::Change;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this account's subscriptions.
    account_id: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

/// A subscription as create and rotate-secret show it: with its signing secret.
#[derive(Serialize, ToSchema)]
pub struct SubscriptionWithSecret {
    #[serde(flatten)]
    subscription: Subscription,
    /// `whsec_` + base64 key; shown only in this answer.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    secret: String,
}

impl From<Subscription> for SubscriptionWithSecret {
    fn from(subscription: Subscription) -> Self {
        let secret = subscription.secret.expose().to_string();
        SubscriptionWithSecret {
            subscription,
            secret,
        }
    }
}

#[utoipa::path(
    operation_id = "createSubscription",
    post,
    path = "/subscriptions",
    tag = "subscriptions",
    summary = "Create a subscription",
    request_body = CreateBody,
    responses(
        (status = 201, description = "Created; the only answer besides rotate-secret that shows the secret", body = SubscriptionWithSecret),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 409, description = "`subscription_limit_reached`: the account already has `MAX_SUBSCRIPTIONS_PER_ACCOUNT` subscriptions", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid (unknown event, URL not allowed, …)", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<(StatusCode, Json<SubscriptionWithSecret>), ApiError> {
    let new = body.validate()?;
    vet(&state, &new.url)
        .await
        .map_err(|b| ApiError::Unprocessable(refused_for_operator(b)))?;
    let sub = create_subscription(&state, new).await?;
    Ok((StatusCode::CREATED, Json(sub.into())))
}

#[utoipa::path(
    operation_id = "listSubscriptions",
    get,
    path = "/subscriptions",
    tag = "subscriptions",
    summary = "List subscriptions",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of subscriptions", body = Page<Subscription>),
        (status = 400, description = "A query parameter is malformed or unknown", body = ErrorBody),
    ),
)]
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
            page_limit(query.limit).map_err(ApiError::BadRequest)?,
        )
        .await?;
    Ok(Json(page))
}

#[utoipa::path(
    operation_id = "getSubscription",
    get,
    path = "/subscriptions/{id}",
    tag = "subscriptions",
    summary = "Read a subscription",
    params(("id" = String, Path, description = "Subscription id")),
    responses(
        (status = 200, description = "The subscription", body = Subscription),
        (status = 404, description = "No such subscription", body = ErrorBody),
    ),
)]
pub async fn read(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Subscription>, ApiError> {
    let sub = state
        .store
        .subscription(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(sub))
}

#[utoipa::path(
    operation_id = "updateSubscription",
    patch,
    path = "/subscriptions/{id}",
    tag = "subscriptions",
    summary = "Change a subscription",
    params(("id" = String, Path, description = "Subscription id")),
    request_body = PatchBody,
    responses(
        (status = 200, description = "The changed subscription", body = Subscription),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 404, description = "No such subscription", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "Nothing to change, or a field is invalid", body = ErrorBody),
    ),
)]
pub async fn update(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchBody>,
) -> Result<Json<Subscription>, ApiError> {
    let patch = body.validate()?;
    if let Some(url) = &patch.url {
        vet(&state, url)
            .await
            .map_err(|b| ApiError::Unprocessable(refused_for_operator(b)))?;
    }
    let sub = update_subscription(&state, &id, patch)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(sub))
}

#[utoipa::path(
    operation_id = "deleteSubscription",
    delete,
    path = "/subscriptions/{id}",
    tag = "subscriptions",
    summary = "Delete a subscription",
    params(("id" = String, Path, description = "Subscription id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such subscription", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !delete_subscription(&state, &id).await? {
        return Err(not_found(&id));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Optional body of rotate-secret.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// How long the old secret keeps signing; the server's SECRET_ROTATION_OVERLAP if absent.
    #[serde(default)]
    #[schema(maximum = 2592000)]
    overlap_seconds: Option<u64>,
}

/// `POST /v1/subscriptions/{id}/rotate-secret`: a new secret, shown in this answer only; the old
/// one keeps signing next to it for the overlap. The body (`{"overlap_seconds": N}`) is optional.
#[utoipa::path(
    operation_id = "rotateSubscriptionSecret",
    post,
    path = "/subscriptions/{id}/rotate-secret",
    tag = "subscriptions",
    summary = "Rotate the signing secret",
    description = "A new secret, shown in this answer only; the old one keeps signing next to it for the overlap.",
    params(("id" = String, Path, description = "Subscription id")),
    request_body(content = Option<RotateBody>, description = "Optional"),
    responses(
        (status = 200, description = "The subscription with its new secret", body = SubscriptionWithSecret),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 404, description = "No such subscription", body = ErrorBody),
        (status = 422, description = "overlap_seconds over 30 days", body = ErrorBody),
    ),
)]
pub async fn rotate_secret(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<RotateBody>,
) -> Result<Json<SubscriptionWithSecret>, ApiError> {
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
    match rotate_subscription_secret(&state, &id, overlap, None).await? {
        Rotated::Done(sub) | Rotated::Already(sub) => Ok(Json(sub.into())),
        Rotated::Missing => Err(not_found(&id)),
    }
}

pub(super) fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no subscription {id:?}"))
}

/// After the store committed a change to subscription `id`: applies it to this replica's index
/// at once and announces it to the others ([`crate::changes`]). Never fails the change, which is
/// made: a failure here only delays it to the periodic refresh, and is logged.
async fn changed(state: &ApiState, id: &str) {
    if let Err(e) = state.directory.reload(id).await {
        tracing::warn!(error = %e, subscription_id = %id, "applying a change to this replica's index failed; the periodic refresh retries");
    }
    state
        .announcer
        .announce(Change::Subscription(id.to_string()))
        .await;
}

// The changes themselves, shared with the portal: each stored, then applied to matching at once
// here and within a second on every other replica.

/// Stores a checked new subscription.
pub(crate) async fn create_subscription(
    state: &ApiState,
    new: crate::store::NewSubscription,
) -> Result<Subscription, ApiError> {
    let account = new.account_id.clone();
    let limit = state.max_subscriptions_per_account;
    let Some(sub) = state.store.create_subscription(new, limit).await? else {
        return Err(ApiError::Conflict {
            code: "subscription_limit_reached",
            message: format!(
                "account {account:?} already has {limit} subscriptions, the most it may have \
                 (MAX_SUBSCRIPTIONS_PER_ACCOUNT); delete one first"
            ),
        });
    };
    changed(state, &sub.id).await;
    tracing::info!(subscription_id = %sub.id, account_id = %sub.account_id, "subscription created");
    Ok(sub)
}

/// Applies a checked change; `None` if there is no such subscription.
pub(crate) async fn update_subscription(
    state: &ApiState,
    id: &str,
    patch: crate::store::SubscriptionPatch,
) -> Result<Option<Subscription>, ApiError> {
    // Enabling one the rule disabled is news for the operator.
    let was_auto_disabled = if patch.enabled == Some(true) {
        state
            .store
            .subscription(id)
            .await?
            .is_some_and(|sub| sub.auto_disabled())
    } else {
        false
    };
    let Some(sub) = state.store.update_subscription(id, patch).await? else {
        return Ok(None);
    };
    changed(state, id).await;
    tracing::info!(subscription_id = %sub.id, "subscription updated");
    if was_auto_disabled && sub.enabled {
        tracing::info!(subscription_id = %sub.id, "subscription the automatic rule had disabled enabled again");
        if let Some(notifier) = &state.notifier {
            notifier.endpoint_enabled(&sub).await;
        }
    }
    Ok(Some(sub))
}

/// Deletes a subscription; `false` if there was none.
pub(crate) async fn delete_subscription(state: &ApiState, id: &str) -> Result<bool, ApiError> {
    if !state.store.delete_subscription(id).await? {
        return Ok(false);
    }
    changed(state, id).await;
    tracing::info!(subscription_id = %id, "subscription deleted");
    Ok(true)
}

/// Gives a subscription a new secret, the old one signing beside it for `overlap`.
/// Rotates subscription `id`'s secret (with `from`, only if it is still that one: see
/// [`Rotated`]).
pub(crate) async fn rotate_subscription_secret(
    state: &ApiState,
    id: &str,
    overlap: Duration,
    from: Option<&SigningKey>,
) -> Result<Rotated, ApiError> {
    let sub = match state.store.rotate_secret(id, overlap, from).await? {
        Rotated::Done(sub) => sub,
        other => return Ok(other),
    };
    changed(state, id).await;
    tracing::info!(
        subscription_id = %sub.id,
        overlap = %humantime::format_duration(overlap),
        "subscription secret rotated"
    );
    Ok(Rotated::Done(sub))
}
