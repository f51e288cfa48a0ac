//! `/v1/event-types`: the catalogue of the six events, each with its JSON Schema and example.

use axum::Json;
use axum::extract::Path;
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::ApiError;
use crate::catalog::{self, EventType};
use crate::event::EventKind;
use crate::store::Page;

/// One event type: what it means, the JSON Schema (draft 2020-12) of the body receivers get,
/// and an example body.
#[derive(Serialize, ToSchema)]
pub struct EventTypeView {
    #[schema(example = "purchase")]
    name: &'static str,
    description: &'static str,
    /// JSON Schema (draft 2020-12) of the whole outbound body `{"event","timestamp","data"}`.
    #[schema(value_type = Object)]
    schema: &'static RawValue,
    /// An outbound body of this type.
    #[schema(value_type = Object)]
    example: &'static RawValue,
}

impl From<&'static EventType> for EventTypeView {
    fn from(t: &'static EventType) -> Self {
        EventTypeView {
            name: t.kind.as_str(),
            description: t.description,
            schema: t.schema,
            example: t.example,
        }
    }
}

#[utoipa::path(
    operation_id = "listEventTypes",
    get,
    path = "/event-types",
    tag = "event-types",
    summary = "List the event types",
    description = "The six events, each with a description, the JSON Schema of the body receivers get, and an example.",
    responses((status = 200, description = "Every event type, in one page (`next_cursor` is null)", body = Page<EventTypeView>)),
)]
pub async fn list() -> Json<Page<EventTypeView>> {
    // The list format of every list, though the six always fit in one page.
    let items = catalog::all().iter().map(EventTypeView::from).collect();
    Json(Page {
        items,
        next_cursor: None,
    })
}

#[utoipa::path(
    operation_id = "getEventType",
    get,
    path = "/event-types/{name}",
    tag = "event-types",
    summary = "Read one event type",
    params(("name" = String, Path, description = "Event name, e.g. `purchase`")),
    responses(
        (status = 200, description = "The event type", body = EventTypeView),
        (status = 404, description = "No such event type", body = super::openapi::ErrorBody),
    ),
)]
pub async fn read(Path(name): Path<String>) -> Result<Json<EventTypeView>, ApiError> {
    let kind = EventKind::parse(&name).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no event type {name:?}; the event types are {}",
            event_names()
        ))
    })?;
    Ok(Json(catalog::get(kind).into()))
}

/// `purchase, identify, …`: the names, for error messages.
pub fn event_names() -> String {
    EventKind::ALL.map(EventKind::as_str).join(", ")
}
