//! The subscription directory: where the dispatcher and the API find subscriptions. It keeps
//! every subscription in the in-memory index (matching never waits on the store), loads one it
//! does not know yet from the source on a miss (created through another instance since the last
//! refresh), reads one subscription again when told it changed ([`crate::changes`]), and
//! refreshes the whole index when told to and periodically.

use std::sync::Arc;

use super::{Subscription, SubscriptionIndex};
use crate::event::EventKind;

/// Where subscriptions are kept (the store implements it); the directory reads through it.
#[async_trait::async_trait]
pub trait SubscriptionSource: Send + Sync {
    async fn all_subscriptions(&self) -> Result<Vec<Subscription>, LookupError>;
    async fn subscription(&self, id: &str) -> Result<Option<Subscription>, LookupError>;
}

/// The source could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading subscriptions failed: {0}")]
pub struct LookupError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

pub struct Directory {
    index: SubscriptionIndex,
    source: Arc<dyn SubscriptionSource>,
    /// The operator's webhook ([`crate::operator`]), found by its id like any subscription but
    /// matched by no event.
    operator: Option<Arc<Subscription>>,
}

impl Directory {
    /// An empty directory over `source`; [`Directory::refresh`] fills it.
    pub fn new(source: Arc<dyn SubscriptionSource>) -> Directory {
        Directory {
            index: SubscriptionIndex::default(),
            source,
            operator: None,
        }
    }

    /// With the operator's webhook.
    pub fn with_operator(mut self, operator: Option<Subscription>) -> Directory {
        self.operator = operator.map(Arc::new);
        self
    }

    /// Subscriptions of `account` that selected `kind` and are enabled or disabled by the
    /// automatic rule (whose events are dead-lettered, not dropped), from memory only.
    pub fn matching(&self, account: &str, kind: EventKind) -> Vec<Arc<Subscription>> {
        self.index.matching(account, kind)
    }

    /// The subscription `id`: from the index, else from the source (a subscription made through
    /// another instance since the last refresh; one row, and only on this rare path).
    pub async fn find(&self, id: &str) -> Result<Option<Arc<Subscription>>, LookupError> {
        if id == crate::operator::SUBSCRIPTION_ID {
            return Ok(self.operator.clone());
        }
        if let Some(sub) = self.index.get(id) {
            return Ok(Some(sub));
        }
        Ok(self.source.subscription(id).await?.map(Arc::new))
    }

    /// Reloads the whole index from the source; returns how many subscriptions it holds.
    pub async fn refresh(&self) -> Result<usize, LookupError> {
        self.index.reload(|| self.source.all_subscriptions()).await
    }

    /// Reads subscription `id` again from the source: changed, added, or gone if the source has
    /// it no more. Serialised with full reloads, so neither puts back an older read.
    pub async fn reload(&self, id: &str) -> Result<(), LookupError> {
        self.index
            .reload_one(id, || self.source.subscription(id))
            .await
    }
}
