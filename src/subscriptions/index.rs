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

    pub fn replace(&self, subscriptions: Vec<Subscription>) {
        let mut next = Snapshot::default();
        for sub in subscriptions {
            let sub = Arc::new(sub);
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

    /// Enabled subscriptions of `account` that selected `kind`.
    pub fn matching(&self, account: &str, kind: EventKind) -> Vec<Arc<Subscription>> {
        self.current()
            .by_account
            .get(account)
            .map(|subs| {
                subs.iter()
                    .filter(|s| s.enabled && s.events.contains(kind))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Subscription>> {
        self.current().by_id.get(id).cloned()
    }
}
