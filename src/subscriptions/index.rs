//! The in-memory subscription index: an immutable snapshot behind a lock held only long enough
//! to clone an `Arc`, so matching never waits on the store or on a reload.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::Subscription;
use crate::event::EventKind;

#[derive(Default)]
struct Snapshot {
    by_account: HashMap<String, Vec<Arc<Subscription>>>,
    by_id: HashMap<String, Arc<Subscription>>,
}

#[derive(Default)]
pub struct SubscriptionIndex {
    snapshot: RwLock<Arc<Snapshot>>,
    /// Serialises reloads so an older read never replaces a newer one.
    reload: tokio::sync::Mutex<()>,
}

impl SubscriptionIndex {
    /// Replaces the index with every subscription `load` returns.
    pub async fn reload<F, Fut, E>(&self, load: F) -> Result<usize, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<Subscription>, E>>,
    {
        let _guard = self.reload.lock().await;
        let all = load().await?;
        let count = all.len();
        self.replace(all);
        Ok(count)
    }

    /// Reads subscription `id` with `load` and puts it in the index, or takes it out when
    /// `load` finds none. Holds the reload lock across the read, like [`Self::reload`].
    pub async fn reload_one<F, Fut, E>(&self, id: &str, load: F) -> Result<(), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Subscription>, E>>,
    {
        let _guard = self.reload.lock().await;
        let found = load().await?;
        let current = self.current();
        let all = current
            .by_id
            .values()
            .filter(|s| s.id != id)
            .cloned()
            .chain(found.map(Arc::new));
        self.replace_shared(all);
        Ok(())
    }

    pub fn replace(&self, subscriptions: Vec<Subscription>) {
        self.replace_shared(subscriptions.into_iter().map(Arc::new));
    }

    fn replace_shared(&self, subscriptions: impl Iterator<Item = Arc<Subscription>>) {
        let mut next = Snapshot::default();
        for sub in subscriptions {
            next.by_account
                .entry(sub.account_id.clone())
                .or_default()
                .push(sub.clone());
            next.by_id.insert(sub.id.clone(), sub);
        }
        *self.snapshot.write().expect("index lock") = Arc::new(next);
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("index lock").clone()
    }

    /// Subscriptions of `account` that selected `kind`, enabled or disabled by the automatic
    /// rule (a manually disabled one gets nothing).
    pub fn matching(&self, account: &str, kind: EventKind) -> Vec<Arc<Subscription>> {
        self.current()
            .by_account
            .get(account)
            .map(|subs| {
                subs.iter()
                    .filter(|s| (s.enabled || s.auto_disabled()) && s.events.contains(kind))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Subscription>> {
        self.current().by_id.get(id).cloned()
    }
}
