//! What the tests stand on: the service in-process (`app`) or as a child process (`process`,
//! `process_api`, `cli_run`), a private RabbitMQ node (`private_broker`), the shared broker and
//! PostgreSQL, started here when none answers (`stand_in`), the test's own side of the shared
//! broker (`broker`, `proxy`), HTTP receivers (`receiver`), fixtures, metrics and
//! bounded waits (`env`). The benchmark reuses them.

mod app;
mod broker;
mod browser;
mod cli_run;
mod cluster;
mod env;
mod fixtures;
mod metrics;
mod portal;
mod postgres;
mod private_broker;
mod private_node;
mod process;
mod process_api;
mod proxy;
mod receiver;
mod report;
mod stand_in;
mod store_lock;

pub use app::*;
pub use broker::*;
pub use browser::*;
pub use cli_run::*;
pub use cluster::*;
pub use env::*;
pub use fixtures::*;
pub use metrics::*;
pub use portal::*;
pub use postgres::*;
pub use private_broker::*;
pub use private_node::files_in;
pub use process::*;
pub use proxy::*;
pub use receiver::*;
pub use report::*;
pub use stand_in::*;
pub use store_lock::*;
