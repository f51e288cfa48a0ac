//! webhook-dispatcher: events published on RabbitMQ become signed webhook deliveries.
//!
//! ```text
//! producers ─► EVENTS_EXCHANGE ─► P.events ─► dispatcher ─► match (in-memory index) ─► POST
//!                                   ▲              │ failed attempt n
//!                                   └─ TTL ── P.retry.<delay n> ◄┘
//!                                                  │ out of attempts / invalid input
//!                                                  ▼
//!                                               P.dead ─► DLQ logger ─► store (delivery log)
//! ```
//! `app` wires it; `broker` owns the AMQP side, `dispatcher` the consume → deliver → retry
//! loop, `delivery` the HTTP attempt, `retry` the next step, `seal` the MAC on the service's own
//! messages (nothing else on the broker is believed), `dlq` persistence of dead letters,
//! `store` SQLite/PostgreSQL, `api` the admin HTTP API (and its OpenAPI document), `catalog`
//! the six event types with the JSON Schemas of their bodies; `ops` the operator's tasks
//! (replay, stats, drain, publish, queue migration) shared by the API and the CLI, whose
//! terminal side is `cli`; `text` the rules for ids people read.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod broker;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod dispatcher;
pub mod dlq;
pub mod event;
pub mod metrics;
pub mod ops;
pub mod retry;
pub mod seal;
pub mod store;
pub mod subscriptions;
pub mod telemetry;
pub mod text;
pub mod time;
pub mod wire;

pub use app::App;
pub use config::Config;
