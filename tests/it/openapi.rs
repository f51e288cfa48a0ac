//! `/openapi.json` against the router, from both sides: every documented operation is served,
//! and every route the router serves is documented — adding a route without its
//! `#[utoipa::path]` fails here. Also: the document is open, OpenAPI 3.1, its `$ref`s resolve,
//! and real answers (including errors) match the schemas it gives for them.

use std::collections::BTreeSet;
use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};
use webhook_dispatcher::activity::Activity;
use webhook_dispatcher::api::{self, ApiState};
use webhook_dispatcher::broker::{Publisher, Topology};
use webhook_dispatcher::changes::Announcer;
use webhook_dispatcher::config::Roles;
use webhook_dispatcher::metrics::Metrics;
use webhook_dispatcher::portal::{Portal, PortalKey};
use webhook_dispatcher::seal::Keyring;
use webhook_dispatcher::store::Store;
use webhook_dispatcher::subscriptions::Directory;

use crate::support::*;

const TOKEN: &str = "test-openapi-token-0123456789";

/// The methods probed on every path. (HEAD is answered wherever GET is, by axum itself.)
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// The paths the production router has routes for (the portal's included), read from the router's route table. axum
/// offers no accessor for it, only `Debug`, which prints it as `Node { paths: {RouteId(n):
/// "/path", …} }`; the sanity checks below fail loudly if that format ever changes.
async fn served_paths() -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(&unique("q"), &unique("x"), dir.path(), &[]);
    let store = Store::connect(cfg.store.database_url.expose())
        .await
        .unwrap();
    store.ensure_message_key().await.unwrap();
    let state = ApiState {
        keys: Arc::new(
            Keyring::load(std::sync::Arc::new(store.clone()))
                .await
                .unwrap(),
        ),
        directory: Arc::new(Directory::new(Arc::new(store.clone()))),
        store,
        publisher: Publisher::default(),
        topology: Arc::new(Topology::new(&cfg)),
        metrics: Metrics::new(),
        activity: Arc::new(Activity::default()),
        portal: Arc::new(Portal::new(
            PortalKey::new(b"k".repeat(32)),
            &url::Url::parse("http://127.0.0.1:8080").unwrap(),
        )),
        announcer: Announcer {
            publisher: Publisher::default(),
            exchange: String::new(),
            metrics: Metrics::new(),
        },
        notifier: None,
        roles: Roles::ALL,
        admin_token: None,
        allow_private_targets: true,
        secret_rotation_overlap: cfg.secret_rotation_overlap,
        max_subscriptions_per_account: cfg.max_subscriptions_per_account,
        delivery_timeout: cfg.delivery_timeout,
        jobs_stop: tokio_util::sync::CancellationToken::new(),
    };
    let router = format!("{:?}", api::router(state));
    let table = router
        .split_once("path_router:")
        .and_then(|(_, rest)| rest.split_once("fallback_router:"))
        .map(|(table, _)| table)
        .unwrap_or_else(|| panic!("no route table in the router's Debug output: {router}"));
    let (_, paths) = table
        .split_once("paths: {")
        .unwrap_or_else(|| panic!("no paths in the route table: {table}"));
    let paths: BTreeSet<String> = paths
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert!(
        paths.len() >= 5 && paths.iter().all(|p| p.starts_with('/')),
        "unexpected route table {paths:?} in {table}"
    );
    paths
}

/// `path` with each `{param}` filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                "test-probe"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether the app routes `method path` to a handler: anything but the router's own "no such
/// route" 404 and its 405.
async fn is_served(app: &TestApp, method: &Method, path: &str) -> bool {
    let mut req = app
        .http
        .request(method.clone(), app.url(&concrete(path)))
        .bearer_auth(TOKEN);
    if *method != Method::GET && *method != Method::DELETE {
        req = req.json(&json!({}));
    }
    let resp = req.send().await.expect("probe");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let unrouted = (status == 404 && body["error"]["message"] == "no such route")
        || (status == 405 && body["error"]["code"] == "method_not_allowed");
    !unrouted
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            ops.insert((path.clone(), method.to_uppercase()));
        }
    }
    ops
}

#[tokio::test]
async fn every_documented_operation_is_served_and_every_served_route_is_documented() {
    let app = spawn_app_with(&["--admin-token", TOKEN]).await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200, "the document is open, like /metrics");
    let documented = documented(&doc);
    assert!(documented.len() >= 16, "{documented:?}");

    for (path, method) in &documented {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        assert!(
            is_served(&app, &method, path).await,
            "{method} {path} is documented but not served"
        );
    }

    // The document says bearer on every `/v1` operation: the server must mean it too (a route
    // registered outside the token layer would be served to anyone).
    for (path, method) in &documented {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = app.http.request(method.clone(), app.url(&concrete(path)));
        if method != Method::GET && method != Method::DELETE {
            req = req.json(&json!({}));
        }
        let resp = req.send().await.expect("probe");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if path.starts_with("/v1/") {
            assert_eq!(
                (status, &body["error"]["code"]),
                (401, &json!("unauthorized")),
                "{method} {path} without a token: {body}"
            );
        } else {
            assert_ne!(status, 401, "{method} {path} is open: {body}");
        }
    }

    // The customer portal's HTML pages are not the API and are not in its document.
    let served: BTreeSet<String> = served_paths()
        .await
        .into_iter()
        .filter(|p| p != "/portal" && !p.starts_with("/portal/"))
        .collect();
    let documented_paths: BTreeSet<String> = documented.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(
        served, documented_paths,
        "routes without documentation, or the reverse"
    );
    for path in &served {
        for method in &METHODS {
            if is_served(&app, method, path).await {
                assert!(
                    documented.contains(&(path.clone(), method.to_string())),
                    "{method} {path} is served but not documented"
                );
            }
        }
    }
    app.stop().await.unwrap();
}

/// Every `"$ref"` in `value`, with where it stands.
fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push((at.clone(), r)),
                    _ => refs(v, format!("{at}/{k}"), out),
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn the_document_is_openapi_3_1_with_resolvable_refs_and_bearer_on_v1() {
    let app = spawn_app().await;
    let resp = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc, serde_json::to_value(api::openapi()).unwrap());

    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let mut all = Vec::new();
    refs(&doc, String::new(), &mut all);
    assert!(!all.is_empty());
    for (at, r) in all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: external $ref {r}"));
        assert!(
            doc.pointer(pointer).is_some(),
            "{at}: $ref {r} resolves to nothing"
        );
    }

    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <ADMIN_TOKEN>`, when a token is set"})
    );
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                ids.insert(op["operationId"].as_str().unwrap().to_string()),
                "duplicate operationId at {method} {path}"
            );
            if path.starts_with("/v1/") {
                assert_eq!(op["security"], json!([{"bearer": []}]), "{method} {path}");
                assert!(op["responses"]["401"].is_object(), "{method} {path}");
            } else {
                assert!(op.get("security").is_none(), "{method} {path} is open");
            }
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
        }
    }
    app.stop().await.unwrap();
}

/// A validator for `schema` that resolves `#/components/...` against the document.
fn validator_for(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"))
}

fn response_schema<'a>(doc: &'a Value, path: &str, method: &str, status: u16) -> &'a Value {
    let schema = &doc["paths"][path][method]["responses"][status.to_string()]["content"]["application/json"]
        ["schema"];
    assert!(schema.is_object(), "no schema for {method} {path} {status}");
    schema
}

fn check(doc: &Value, path: &str, method: &str, status: u16, body: &Value) {
    let v = validator_for(doc, response_schema(doc, path, method, status));
    let errors: Vec<String> = v.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: {body} does not match: {errors:?}"
    );
}

/// The app and its document: each call is checked against what the document says for it.
struct Checked<'a> {
    app: &'a TestApp,
    doc: &'a Value,
}

impl Checked<'_> {
    /// Sends `method url` (with `body`), checks the answer against the document's schema for
    /// `method template` and the status that came back; returns the status and the answer.
    async fn call(
        &self,
        method: &str,
        template: &str,
        url: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let verb = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (status, answer) = self.app.request(verb, url, body).await;
        check(self.doc, template, method, status.as_u16(), &answer);
        (status.as_u16(), answer)
    }

    /// [`call`](Self::call) that must succeed.
    async fn ok(&self, method: &str, template: &str, url: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.call(method, template, url, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {url}: {status} {answer}"
        );
        answer
    }
}

#[tokio::test]
async fn real_answers_match_the_documented_schemas() {
    let app = spawn_app_with(&["--retry-delays", "50ms"]).await;
    let (_, doc) = app.get("/openapi.json").await;
    let api = Checked {
        app: &app,
        doc: &doc,
    };
    let receiver = Receiver::start().await;
    receiver.always(Reply::Status(500));

    let new = json!({"account_id": "acct_acme", "url": receiver.url, "events": ["*"]});
    let subs = "/v1/subscriptions";
    let created = api.ok("post", subs, subs, Some(new)).await;
    let one = format!("{subs}/{}", created["id"].as_str().unwrap());
    let by_id = "/v1/subscriptions/{id}";
    api.ok("get", by_id, &one, None).await;
    api.ok("get", subs, &format!("{subs}?account_id=acct_acme"), None)
        .await;
    api.ok("patch", by_id, &one, Some(json!({"description": "d"})))
        .await;
    let rotate = format!("{one}/rotate-secret");
    let overlap = Some(json!({"overlap_seconds": 60}));
    api.ok(
        "post",
        "/v1/subscriptions/{id}/rotate-secret",
        &rotate,
        overlap,
    )
    .await;
    let test = format!("{one}/test");
    let test_template = "/v1/subscriptions/{id}/test";
    api.ok("post", test_template, &test, Some(json!({}))).await;
    api.ok("get", "/v1/event-types", "/v1/event-types", None)
        .await;
    let event_type = "/v1/event-types/{name}";
    api.ok("get", event_type, "/v1/event-types/identify", None)
        .await;

    // The test event fails twice and lands in the delivery log.
    app.wait_for_logs("reason=exhausted", 1).await;
    let logs = api
        .ok("get", "/v1/delivery-logs", "/v1/delivery-logs", None)
        .await;
    let log = format!(
        "/v1/delivery-logs/{}",
        logs["items"][0]["id"].as_str().unwrap()
    );
    api.ok("get", "/v1/delivery-logs/{id}", &log, None).await;
    let replay = format!("{log}/replay");
    let replay_template = "/v1/delivery-logs/{id}/replay";
    api.ok("post", replay_template, &replay, None).await;

    // Errors, in the documented error format and with documented statuses.
    let errors = [
        ("get", by_id, "/v1/subscriptions/sub_nope", None, 404),
        ("post", subs, subs, Some(json!({"account_id": "a"})), 422),
        (
            "post",
            test_template,
            &test,
            Some(json!({"event": "refund"})),
            422,
        ),
        ("get", event_type, "/v1/event-types/refund", None, 404),
        ("post", replay_template, &replay, None, 409),
    ];
    for (method, template, url, body, expected) in errors {
        let (status, answer) = api.call(method, template, url, body).await;
        assert_eq!(status, expected, "{method} {url}: {answer}");
    }

    api.ok("get", "/healthz", "/healthz", None).await;
    api.ok("get", "/readyz", "/readyz", None).await;
    let (status, body) = app.request(Method::DELETE, &one, None).await;
    assert_eq!((status.as_u16(), body), (204, Value::Null));
    assert!(doc["paths"][by_id]["delete"]["responses"]["204"].is_object());
    app.stop().await.unwrap();
}
