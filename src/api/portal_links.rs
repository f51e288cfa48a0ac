//! `POST /v1/portal-links`: a link that signs one account's people into the customer portal,
//! for the product to hand out (a "Manage webhooks" button) or an operator to send.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use super::openapi::ErrorBody;
use super::{ApiError, ApiJson, ApiState};
use crate::portal::{LINK_LIFETIME_DEFAULT, PortalLink};

/// Whose portal, and for how long the link opens it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortalLinkRequest {
    /// The account whose webhooks and delivery logs the portal shows.
    #[schema(example = "acct_7f3a")]
    account_id: String,
    /// Seconds the link can be opened in, 60 to 86400 (default 3600). A session it opens
    /// lasts 8 hours from then, whatever is left of the link.
    #[schema(example = 3600, minimum = 60, maximum = 86400)]
    expires_in: Option<u64>,
}

#[utoipa::path(
    operation_id = "createPortalLink",
    post,
    path = "/portal-links",
    tag = "portal",
    summary = "Create a customer portal link",
    description = "Signs a link that opens the customer portal for one account: its Integrations (webhooks) and Delivery Logs, nothing of any other account. Anyone holding the link until it expires gets in: hand it only to that account's people, over a channel you would send a password over.",
    request_body = PortalLinkRequest,
    responses(
        (status = 201, description = "The link", body = PortalLink),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "A bad account id, an `expires_in` out of range, or an unknown field", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<PortalLinkRequest>,
) -> Result<(StatusCode, Json<PortalLink>), ApiError> {
    let lifetime =
        std::time::Duration::from_secs(req.expires_in.unwrap_or(LINK_LIFETIME_DEFAULT.as_secs()));
    let link = state
        .portal
        .issue(&req.account_id, lifetime, chrono::Utc::now())
        .map_err(ApiError::Unprocessable)?;
    Ok((StatusCode::CREATED, Json(link)))
}
