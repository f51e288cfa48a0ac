//! The OpenAPI 3.1 document of the admin API, served at `/openapi.json`. Paths and operations
//! come from the same `routes!` registrations that build the router (`super::api`); this module
//! adds what is common to them: the bearer scheme and the 401/500 answers on every `/v1`
//! operation, and the schemas of answers that are built as plain JSON (errors, health).

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr, Response, ResponseBuilder};
use utoipa::{OpenApi as _, ToSchema};

/// Name of the bearer security scheme in the document.
const BEARER: &str = "bearer";

/// The error format of every failed request: `{"error":{"code","message"}}`. Built by
/// `ApiError`'s `IntoResponse` as JSON; this type describes it for the document (the OpenAPI
/// integration test checks real error answers against it).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code: `bad_request`, `unauthorized`, `not_found`, `validation_failed`,
    /// `method_not_allowed`, `payload_too_large`, `broker_unavailable`, `store_error`, or a
    /// conflict's own (`subscription_disabled`, `already_replayed`, …).
    #[schema(example = "not_found")]
    code: String,
    /// What exactly was wrong, for people.
    message: String,
}

/// `/healthz`'s answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: String,
}

/// `/readyz`'s answer: `ok` or `unavailable` overall and for each dependency.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    #[schema(example = "ok")]
    status: String,
    #[schema(example = "ok")]
    broker: String,
    #[schema(example = "ok")]
    store: String,
    /// The parts this replica runs (`ROLES`).
    #[schema(example = json!(["dispatcher", "dlq-logger", "api"]))]
    roles: Vec<String>,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "webhook-dispatcher admin API",
        description = "Subscriptions, the delivery log and replay, the event-type catalogue, test events and customer portal links under `/v1` (bearer `ADMIN_TOKEN` when one is set); `/metrics`, `/healthz`, `/readyz` and this document are open; the customer portal (HTML, under `/portal`) is not part of this API. Errors are `{\"error\":{\"code\",\"message\"}}`."
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "subscriptions", description = "Webhook endpoints and the events they receive"),
        (name = "delivery-logs", description = "Dead-lettered deliveries and replay"),
        (name = "event-types", description = "The six events, with JSON Schemas of their bodies"),
        (name = "portal", description = "Links into the customer portal"),
        (name = "operations", description = "Metrics, health and this document"),
    )
)]
pub struct ApiDoc;

/// The document's skeleton (info, tags, shared schemas), before the routes add their paths.
pub fn base() -> OpenApi {
    ApiDoc::openapi()
}

/// Completes the document built by the router: every `/v1` operation gets the bearer
/// requirement and the 401 and 500 answers, done here so no route can miss them.
pub fn finish(mut doc: OpenApi) -> OpenApi {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "`Authorization: Bearer <ADMIN_TOKEN>`, when a token is set",
                ))
                .build(),
        ),
    );
    let error = |text: &str| -> RefOr<Response> {
        ResponseBuilder::new()
            .description(text)
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                        "ErrorBody",
                    ))))
                    .build(),
            )
            .build()
            .into()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for op in operations(item) {
            op.security = Some(vec![SecurityRequirement::new::<_, _, &str>(BEARER, [])]);
            let responses = &mut op.responses.responses;
            responses
                .entry("401".into())
                .or_insert_with(|| error("Missing or wrong bearer token"));
            responses
                .entry("500".into())
                .or_insert_with(|| error("Internal error (the store failed)"));
            if op.request_body.is_some() {
                responses
                    .entry("413".into())
                    .or_insert_with(|| error("Body over 64 KiB"));
            }
        }
    }
    doc
}

fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// The document as served, built once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    super::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
});

#[utoipa::path(
    operation_id = "openapi",
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This OpenAPI 3.1 document",
    responses((status = 200, description = "The OpenAPI document of the admin API", content_type = "application/json", body = Object)),
)]
pub async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// The schema of one event name: one of the six.
pub(super) fn event_name() -> utoipa::openapi::schema::Object {
    name_enum(&[])
}

/// The schema of an `events` list: at least one of the six event names, or `*`.
pub(super) fn event_names() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(name_enum(&["*"]))
        .min_items(Some(1))
        .build()
}

fn name_enum(more: &[&'static str]) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let names = crate::event::EventKind::ALL
        .iter()
        .map(|k| k.as_str())
        .chain(more.iter().copied());
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(names))
        .build()
}
