//! Integration tests against the real RabbitMQ at `AMQP_URL` (default 127.0.0.1:5672). One
//! binary, one file per capability; each test gets its own queue prefix, exchange, SQLite file
//! and receivers, so they run in parallel and clean up after themselves.

mod support;

mod admin_api;
mod broker_restart;
mod bulk_replay;
mod bundles;
mod cli;
mod cli_terminal;
mod delivery;
mod deploy;
mod endpoint_health;
mod fairness;
mod faults;
mod fuzz_corpora;
mod hostile_endpoints;
mod hostile_input;
mod invalid_input;
mod openapi;
mod portal;
mod portal_browser;
mod postgres_store;
mod private_broker;
mod reconnect;
mod replay_and_metrics;
mod replay_crash;
mod replay_jobs;
mod replay_postgres;
mod replicas;
mod retention;
mod retries;
mod security;
mod test_events;
mod topology_and_shutdown;
mod trust;
mod upgrade;
mod walkthrough;
