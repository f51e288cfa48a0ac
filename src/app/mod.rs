//! Wiring: builds every part from a [`Config`], runs them, and shuts down gracefully when the
//! token passed to [`App::run`] is cancelled.
//!
//! The broker loop is the heart: open a session (connect, declare, consume), run the dispatcher
//! and the DLQ logger on it until the connection is lost, then open a new one. Losing the
//! connection loses nothing: unacked messages return to their queues.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod background;

use crate::activity::Activity;
use crate::api::{self, ApiState};
use crate::broker::{Broker, CLOSE_TIMEOUT, Consuming, Session, TASK_CONFIRM_TIMEOUT, Topology};
use crate::changes::{self, Announcer};
use crate::config::Config;
use crate::delivery::Deliverer;
use crate::dispatcher::{self, Dispatcher};
use crate::dlq;
use crate::endpoint_health::{EndpointHealth, Flusher, Rule};
use crate::metrics::Metrics;
use crate::operator::Notifier;
use crate::portal::{self, Portal};
use crate::seal::Keyring;
use crate::store::Store;
use crate::subscriptions::Directory;

pub struct App {
    cfg: Config,
    /// Taken by `run`.
    listener: Option<TcpListener>,
    store: Store,
    broker: Broker,
    directory: Arc<Directory>,
    keys: Arc<Keyring>,
    activity: Arc<Activity>,
    health: Arc<EndpointHealth>,
    portal: Arc<Portal>,
    metrics: Metrics,
    /// With the `dispatcher` role.
    dispatcher: Option<Arc<Dispatcher>>,
}

impl App {
    /// Validates the config, opens and migrates the store, loads the subscription index and
    /// binds the API port. Does not need the broker: that connection is made (and remade) by `run`.
    pub async fn build(cfg: Config) -> anyhow::Result<App> {
        cfg.validate()?;
        let store = Store::connect_with(
            cfg.store.database_url.expose(),
            cfg.store.database_pool_size,
        )
        .await
        .with_context(|| format!("opening the store at {}", cfg.store.database_url))?;
        store
            .ensure_message_key()
            .await
            .context("creating the message key")?;
        let keys = Arc::new(
            Keyring::load(Arc::new(store.clone()))
                .await
                .context("loading the message keys")?,
        );
        let operator = crate::operator::subscription(&cfg.health);
        let directory = Arc::new(Directory::new(Arc::new(store.clone())).with_operator(operator));
        directory.refresh().await.context("loading subscriptions")?;
        let broker = Broker::new(&cfg.amqp, Topology::new(&cfg), cfg.prefetch)?;
        let metrics = Metrics::new();
        let delay_labels: Vec<String> = broker
            .topology
            .retries
            .iter()
            .map(|r| r.label.clone())
            .collect();
        metrics.init_series(&delay_labels);
        let deliverer = Deliverer::new(
            cfg.delivery_timeout,
            cfg.allow_private_targets,
            cfg.max_in_flight as usize,
        )?;
        let activity = Arc::new(Activity::default());
        let health = Arc::new(EndpointHealth::default());
        let dispatcher = cfg.roles.dispatcher.then(|| {
            Arc::new(Dispatcher::new(dispatcher::Parts {
                directory: directory.clone(),
                activity: activity.clone(),
                health: health.clone(),
                deliverer,
                broker: broker.clone(),
                metrics: metrics.clone(),
                keys: keys.clone(),
                max_in_flight: cfg.max_in_flight as usize,
                max_in_flight_per_endpoint: cfg.max_in_flight_per_endpoint as usize,
                prefetch: usize::from(cfg.prefetch),
            }))
        });
        let listener = TcpListener::bind(cfg.listen_addr)
            .await
            .with_context(|| format!("binding LISTEN_ADDR {}", cfg.listen_addr))?;
        let public_url = match &cfg.portal.public_url {
            Some(url) => url.clone(),
            None => {
                let url = portal::default_public_url(listener.local_addr()?);
                if cfg.listen_addr.ip().is_unspecified() {
                    tracing::warn!(
                        public_url = %url,
                        "PUBLIC_URL is not set: portal links point at {url}, which only this machine reaches; set PUBLIC_URL to the origin customers reach the service at"
                    );
                }
                url
            }
        };
        let portal_key = portal::key(&cfg.portal, &store)
            .await
            .context("reading the portal key")?;
        let portal = Arc::new(Portal::new(portal_key, &public_url));
        Ok(App {
            cfg,
            listener: Some(listener),
            store,
            broker,
            directory,
            keys,
            activity,
            health,
            portal,
            metrics,
            dispatcher,
        })
    }

    /// Where portal links point: `PUBLIC_URL`, or the admin API's own address.
    pub fn public_url(&self) -> &str {
        &self.portal.public_url
    }

    /// The address the admin API listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .expect("bound listener has an address")
    }

    /// Runs until `shutdown` is cancelled, then stops consuming, lets in-flight deliveries finish
    /// within `SHUTDOWN_GRACE` and closes everything. Fails only on a fatal broker error (a
    /// topology mismatch).
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let announcer = Announcer {
            publisher: self.broker.publisher.clone(),
            exchange: self.broker.topology.control.clone(),
            metrics: self.metrics.clone(),
        };
        let notifier = self
            .cfg
            .health
            .operator_webhook_url
            .as_ref()
            .map(|_| Notifier {
                publisher: self.broker.publisher.clone(),
                events_queue: self.broker.topology.events.clone(),
                keys: self.keys.clone(),
            });
        let flush_stop = CancellationToken::new();
        let flusher = tokio::spawn(
            Flusher {
                health: self.health.clone(),
                store: self.store.clone(),
                rule: Rule::from(&self.cfg.health),
                announcer: announcer.clone(),
                notifier: notifier.clone(),
                metrics: self.metrics.clone(),
            }
            .run(flush_stop.clone()),
        );
        let api_state = ApiState {
            store: self.store.clone(),
            directory: self.directory.clone(),
            publisher: self.broker.publisher.clone(),
            topology: self.broker.topology.clone(),
            metrics: self.metrics.clone(),
            keys: self.keys.clone(),
            activity: self.activity.clone(),
            portal: self.portal.clone(),
            announcer,
            notifier,
            roles: self.cfg.roles,
            admin_token: self.cfg.admin_token.clone(),
            allow_private_targets: self.cfg.allow_private_targets,
            secret_rotation_overlap: self.cfg.secret_rotation_overlap,
            max_subscriptions_per_account: self.cfg.max_subscriptions_per_account,
            delivery_timeout: self.cfg.delivery_timeout,
            jobs_stop: shutdown.clone(),
        };
        let api_stop = CancellationToken::new();
        let mut api = {
            let stop = api_stop.clone();
            let router = api::router(api_state);
            let listener = self.listener.take().expect("run is called once");
            tokio::spawn(api::serve(listener, router, stop))
        };
        tracing::info!(addr = %self.cfg.listen_addr, roles = ?self.cfg.roles, config = ?self.cfg, "webhook-dispatcher started");
        if self.cfg.roles.api && self.cfg.weak_token() {
            tracing::warn!("ADMIN_TOKEN is shorter than 16 characters; use a long random token");
        }

        let refresher = tokio::spawn(background::refresh(
            self.directory.clone(),
            self.keys.clone(),
            self.cfg.subscription_refresh,
            shutdown.clone(),
        ));
        let retention = self.cfg.delivery_log_retention;
        let purger = (self.cfg.roles.dlq_logger && !retention.is_zero()).then(|| {
            tokio::spawn(background::purge_delivery_logs(
                self.store.clone(),
                retention,
                self.metrics.clone(),
                shutdown.clone(),
            ))
        });
        let tracker = TaskTracker::new();
        let (result, last_session) = match self.broker_loop(&tracker, &shutdown).await {
            Ok(session) => (Ok(()), session),
            Err(e) => (Err(e), None),
        };

        // Let in-flight deliveries finish (they may still publish retries and must ack on the
        // session's still-open channels), then close.
        tracker.close();
        if tokio::time::timeout(self.cfg.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace = ?self.cfg.shutdown_grace,
                "in-flight deliveries did not finish within the grace period; their messages return to the queue unacked"
            );
        }
        // The API next, while the broker connection is still open: a replay or test event under
        // way gets its confirm instead of losing its channel (bounded by the confirm limit).
        api_stop.cancel();
        if tokio::time::timeout(TASK_CONFIRM_TIMEOUT + CLOSE_TIMEOUT, &mut api)
            .await
            .is_err()
        {
            api.abort();
        }
        // The last counts go to the store (the rule may disable and announce, so the broker is
        // still open).
        flush_stop.cancel();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT * 2, flusher).await;
        if let Some(session) = last_session {
            // Cancel only now, after the last ack: on a quorum queue basic.cancel is a round trip
            // through the queue, so the acks sent before it are applied before the channels
            // close. Acks followed straight by a channel close are sometimes dropped by the
            // broker (rabbitmq-server#10327) and their messages delivered again. Bounded: a
            // broker under a resource alarm stops reading and would never answer.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.cancel_consumers()).await;
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close()).await;
        }
        self.broker.close().await;
        self.metrics.broker_up(false);
        refresher.abort();
        if let Some(purger) = purger {
            purger.abort();
        }
        self.store.close().await;
        tracing::info!("webhook-dispatcher stopped");
        result
    }

    /// Runs sessions until shutdown; returns the live session (if any) so its channels and
    /// consumers stay open while in-flight deliveries ack.
    async fn broker_loop(
        &self,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Arc<Session>>> {
        let mut backoff = Duration::from_millis(100);
        let consuming = Consuming {
            events: self.cfg.roles.dispatcher,
            dead: self.cfg.roles.dlq_logger,
        };
        let mut reconnecting = false;
        loop {
            let opened = tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                opened = self.broker.open_session(consuming) => opened,
            };
            let session = match opened {
                Ok(session) => Arc::new(session),
                Err(e) if e.is_fatal() => return Err(e.into()),
                Err(e) => {
                    self.metrics.broker_up(false);
                    tracing::warn!(error = %e, retry_in = ?backoff, "broker unavailable");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            if reconnecting {
                // Changes announced while this replica was away were not heard: read everything.
                if let Err(e) = self.directory.refresh().await {
                    tracing::warn!(error = %e, "reloading subscriptions after reconnecting failed; the periodic refresh retries");
                }
            }
            reconnecting = true;
            self.metrics.broker_up(true);
            tracing::info!(node = %self.broker.node(), roles = ?self.cfg.roles, "connected to the broker; consuming");
            self.run_session(&session, tracker, shutdown).await;
            if shutdown.is_cancelled() {
                // The consumers stay registered until the in-flight deliveries have acked (see
                // `run`); what the broker sends meanwhile is not taken and goes back on close.
                return Ok(Some(session));
            }
            self.metrics.broker_up(false);
            self.broker.disconnected();
            tracing::warn!("broker session lost; reconnecting");
        }
    }

    /// Consumes on one session until its connection, a consumer or the publish channel is lost,
    /// or shutdown begins. Tasks still running keep the session (and so its channels) alive.
    async fn run_session(
        &self,
        session: &Arc<Session>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let stop = shutdown.child_token();
        let dispatch = async {
            match (&session.events, &self.dispatcher) {
                (Some(events), Some(dispatcher)) => {
                    dispatcher
                        .clone()
                        .consume(
                            events.clone(),
                            session.clone(),
                            tracker.clone(),
                            stop.clone(),
                        )
                        .await
                }
                _ => std::future::pending().await,
            }
        };
        let log = async {
            match &session.dead {
                Some(dead) => {
                    let logger = dlq::Logger {
                        store: self.store.clone(),
                        keys: self.keys.clone(),
                        metrics: self.metrics.clone(),
                        events_queue: self.broker.topology.events.clone(),
                    };
                    dlq::run(dead.clone(), logger, stop.clone()).await
                }
                None => std::future::pending().await,
            }
        };
        let follow = changes::follow(
            session.control.clone(),
            self.directory.clone(),
            self.metrics.clone(),
            stop.clone(),
        );
        let publisher = self.broker.publisher.clone();
        let sampler = tokio::spawn(background::sample_queues(
            self.broker.clone(),
            self.metrics.clone(),
        ));
        tokio::select! {
            _ = dispatch => {}
            _ = log => {}
            _ = follow => {}
            _ = publisher.lost() => tracing::warn!("the publish channel closed"),
        }
        stop.cancel();
        sampler.abort();
    }
}
