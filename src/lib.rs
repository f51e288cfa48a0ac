//! webhook-dispatcher: events published on RabbitMQ become signed webhook deliveries.
//!
//! ```text
//! producers ─► EVENTS_EXCHANGE ─► P.events ─► dispatcher ─► match (directory) ─► POST
//!                                   ▲              │ failed attempt n
//!                                   └─ TTL ── P.retry.<delay n> ◄┘
//!                                                  │ out of attempts / invalid input / forged
//!                                                  ▼
//!                                               P.dead ─► DLQ logger ─► store (delivery log)
//! ```
//!
//! Every module, a line each (`pub` where the binary, the tests, the benchmark or the fuzz
//! targets use it):
//! - `app`: wiring; start, reconnect, graceful shutdown.
//! - `config`: settings (clap + env), `serve`'s and the groups operator commands share.
//! - `telemetry`: the tracing subscriber.
//! - `broker`: everything AMQP — connection, topology, confirmed publishing, message framing,
//!   inbound messages (ack, requeue), queue operations. Nothing else uses lapin.
//! - `wire`: the service's own messages: delivery tasks and dead letters (with their reasons).
//! - `seal`: the MAC on those messages and the keys; nothing unsealed is believed.
//! - `event`: inbound events: parse, validate, event id.
//! - `text`: the rules for ids people read (account ids, event ids).
//! - `subscriptions`: the domain type, its validation, the directory the dispatcher and API
//!   find subscriptions in (no store import: the store is a `SubscriptionSource`).
//! - `changes`: a subscription change announced to every replica and applied within a second.
//! - `dispatcher`: consume `P.events`, route, attempt, hand off (retry, defer, dead-letter).
//! - `delivery`: one HTTP attempt: client, SSRF guard, signing, per-endpoint limit, outcome.
//! - `retry`: what comes next after an attempt, or when an endpoint is full.
//! - `endpoint_health`: each endpoint's figures across replicas, and the automatic-disable rule.
//! - `operator`: operational webhooks (`endpoint.disabled`, `endpoint.enabled`).
//! - `dlq`: the dead-letter logger: `P.dead` into the store, verified, committed before acked.
//! - `store`: SQLite/PostgreSQL behind one interface: subscriptions, delivery log, keys.
//! - `catalog`: the six event types, their JSON Schemas and examples.
//! - `api`: the admin HTTP API, its server and its OpenAPI document.
//! - `portal`: the customer portal (Integrations, Delivery Logs), HTML from the server.
//! - `activity`: what this instance's deliveries came to, for the portal.
//! - `ops`: operator tasks shared by the API and the CLI (replay, stats, drain, publish,
//!   queue migration).
//! - `cli`: the operator CLI's terminal side (subcommands, tables, prompts, progress bars).
//! - `metrics`: the Prometheus registry; one call per happening counts and logs it.
//! - `time`: timestamps as stored and shown.
#![forbid(unsafe_code)]

pub mod activity;
pub mod api;
pub mod app;
pub mod broker;
mod catalog;
pub mod changes;
pub mod cli;
pub mod config;
mod delivery;
mod dispatcher;
mod dlq;
pub mod endpoint_health;
pub mod event;
pub mod metrics;
pub mod operator;
mod ops;
pub mod portal;
mod retry;
pub mod seal;
pub mod store;
pub mod subscriptions;
pub mod telemetry;
mod text;
pub mod time;
pub mod wire;

pub use app::App;
pub use config::Config;
