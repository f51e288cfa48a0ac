//! What the subscription routes read: the bodies of create and change, their validation (the
//! rules every way of changing a subscription shares), and the public-address check.

use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;

use super::{ApiError, ApiState, read_json_object};
use crate::delivery::guard;
use crate::store::{NewSubscription, SubscriptionPatch};
use crate::subscriptions::{EventSet, validate_account, validate_description, validate_url};

/// A new subscription.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    #[schema(example = "acct_acme")]
    account_id: String,
    /// http(s) endpoint; without credentials or a `#fragment`, at most 2,048 characters.
    #[schema(
        example = "https://example.com/hooks",
        min_length = 1,
        max_length = 2048
    )]
    url: String,
    /// Event names, or `["*"]` for every event.
    #[schema(schema_with = super::openapi::event_names, example = json!(["purchase", "identify"]))]
    events: Vec<String>,
    #[serde(default = "yes")]
    #[schema(default = true)]
    enabled: bool,
    /// At most 1,000 characters.
    #[serde(default)]
    description: Option<String>,
}

fn yes() -> bool {
    true
}

/// The fields to change; at least one. `account_id` cannot change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    #[serde(default)]
    #[schema(min_length = 1, max_length = 2048)]
    url: Option<String>,
    #[serde(default)]
    #[schema(schema_with = super::openapi::event_names)]
    events: Option<Vec<String>>,
    #[serde(default)]
    enabled: Option<bool>,
    /// Absent: unchanged; `null`: cleared.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    description: Option<Option<String>>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl CreateBody {
    pub(super) fn validate(self) -> Result<NewSubscription, ApiError> {
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
    pub(super) fn validate(self) -> Result<SubscriptionPatch, ApiError> {
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
    read_json_object::<CreateBody>(bytes)?.validate()
}

/// A PATCH body as the API reads it; see [`parse_create_body`].
pub fn parse_patch_body(bytes: &[u8]) -> Result<SubscriptionPatch, ApiError> {
    read_json_object::<PatchBody>(bytes)?.validate()
}

/// Refuses an endpoint that is not a public address (unless private targets are allowed).
pub(super) async fn vet(state: &ApiState, url: &url::Url) -> Result<(), ApiError> {
    if state.allow_private_targets {
        return Ok(());
    }
    guard::vet_url(url)
        .await
        .map_err(|blocked| ApiError::Unprocessable(format!("url is not allowed: {blocked}")))
}
