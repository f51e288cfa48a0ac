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
        check_new(
            self.account_id,
            &self.url,
            &self.events,
            self.enabled,
            self.description,
        )
        .map_err(FieldErrors::into_api_error)
    }
}

impl PatchBody {
    pub(super) fn validate(self) -> Result<SubscriptionPatch, ApiError> {
        check_change(
            self.url.as_deref(),
            self.events.as_deref(),
            self.enabled,
            self.description,
        )
        .map_err(FieldErrors::into_api_error)
    }
}

/// What is wrong with a subscription's fields, field by field (`account_id`, `url`, `events`,
/// `description`; `form` for the whole), in the order they are checked. The API answers with
/// the first; the portal shows each beside its field.
#[derive(Debug, Default)]
pub struct FieldErrors(Vec<(&'static str, String)>);

impl FieldErrors {
    /// One field's error.
    pub fn single(field: &'static str, message: String) -> FieldErrors {
        FieldErrors(vec![(field, message)])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn push(&mut self, field: &'static str, message: String) {
        self.0.push((field, message));
    }

    /// The message for `field`, if it has one.
    pub fn get(&self, field: &str) -> Option<&String> {
        self.0.iter().find(|(f, _)| *f == field).map(|(_, m)| m)
    }

    pub fn into_api_error(self) -> ApiError {
        let message = self
            .0
            .into_iter()
            .next()
            .map(|(_, m)| m)
            .unwrap_or_default();
        ApiError::Unprocessable(message)
    }

    fn result<T>(self, ok: impl FnOnce() -> T) -> Result<T, FieldErrors> {
        if self.0.is_empty() {
            Ok(ok())
        } else {
            Err(self)
        }
    }
}

/// A new subscription's fields, checked: every rule of every way to create one (API, portal).
pub fn check_new(
    account_id: String,
    url: &str,
    events: &[String],
    enabled: bool,
    description: Option<String>,
) -> Result<NewSubscription, FieldErrors> {
    let mut errors = FieldErrors::default();
    if let Err(e) = validate_account(&account_id) {
        errors.push("account_id", e);
    }
    let url = validate_url(url).map_err(|e| errors.push("url", e)).ok();
    let events = EventSet::parse(events)
        .map_err(|e| errors.push("events", e))
        .ok();
    if let Some(Err(e)) = description.as_deref().map(validate_description) {
        errors.push("description", e);
    }
    errors.result(|| NewSubscription {
        account_id,
        url: url.expect("checked"),
        events: events.expect("checked"),
        enabled,
        description,
    })
}

/// A change's fields, checked (absent: unchanged; `description: Some(None)` clears it).
pub fn check_change(
    url: Option<&str>,
    events: Option<&[String]>,
    enabled: Option<bool>,
    description: Option<Option<String>>,
) -> Result<SubscriptionPatch, FieldErrors> {
    let mut errors = FieldErrors::default();
    let mut patch = SubscriptionPatch {
        enabled,
        ..SubscriptionPatch::default()
    };
    if let Some(url) = url {
        patch.url = validate_url(url).map_err(|e| errors.push("url", e)).ok();
    }
    if let Some(events) = events {
        patch.events = EventSet::parse(events)
            .map_err(|e| errors.push("events", e))
            .ok();
    }
    if let Some(description) = description {
        if let Some(Err(e)) = description.as_deref().map(validate_description) {
            errors.push("description", e);
        }
        patch.description = Some(description);
    }
    if errors.0.is_empty()
        && patch.url.is_none()
        && patch.events.is_none()
        && patch.enabled.is_none()
        && patch.description.is_none()
    {
        errors.push(
            "form",
            "nothing to change: send at least one of url, events, enabled, description".into(),
        );
    }
    errors.result(|| patch)
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

/// Refuses an endpoint that is not a public address (unless private targets are allowed); the
/// error is the message for the `url` field.
pub async fn vet(state: &ApiState, url: &url::Url) -> Result<(), guard::Blocked> {
    if state.allow_private_targets {
        return Ok(());
    }
    guard::vet_url(url).await
}

/// What the admin API says about a refused URL: with the setting that lifts the guard.
pub fn refused_for_operator(blocked: guard::Blocked) -> String {
    format!("url is not allowed: {blocked}")
}
