//! Each account's share of the deliveries under way. The lanes ([`super::lanes`]) bound the
//! messages of one account under way, but one message becomes a delivery per matching
//! subscription: an account whose events fan out to a few slow endpoints could hold every
//! global permit (`MAX_IN_FLIGHT`), and every other account's deliveries would wait for its
//! slow attempts to end. A delivery takes its account's share before the global permit, so an
//! account has at most `per_account` of them at once, counted in deliveries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Shares {
    per_account: usize,
    /// The accounts with deliveries under way or waiting; an account is forgotten once none is.
    accounts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// One delivery's place in its account's share; dropping it frees the place.
pub struct Share<'a> {
    shares: &'a Shares,
    account: &'a str,
    semaphore: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Shares {
    pub fn new(per_account: usize) -> Shares {
        Shares {
            per_account: per_account.max(1),
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// A place for a delivery of `account`, once it has fewer than `per_account` under way.
    pub async fn acquire<'a>(&'a self, account: &'a str) -> Share<'a> {
        let semaphore = {
            let mut accounts = self.accounts.lock().expect("shares lock");
            match accounts.get(account) {
                Some(semaphore) => semaphore.clone(),
                None => {
                    let semaphore = Arc::new(Semaphore::new(self.per_account));
                    accounts.insert(account.to_string(), semaphore.clone());
                    semaphore
                }
            }
        };
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("a share's semaphore is never closed");
        Share {
            shares: self,
            account,
            semaphore,
            permit: Some(permit),
        }
    }

    #[cfg(test)]
    fn accounts(&self) -> usize {
        self.accounts.lock().expect("shares lock").len()
    }
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        let mut accounts = self.shares.accounts.lock().expect("shares lock");
        self.permit.take();
        // Every clone is taken under this lock: only the map's and this one left means no
        // delivery of the account is under way or waiting.
        if Arc::strong_count(&self.semaphore) == 2 {
            accounts.remove(self.account);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_account_waits_past_its_share_and_others_do_not() {
        let shares = Shares::new(2);
        let a1 = shares.acquire("a").await;
        let _a2 = shares.acquire("a").await;
        let third = tokio::time::timeout(Duration::from_millis(10), shares.acquire("a")).await;
        assert!(third.is_err(), "a third delivery of a waits");
        let _b = tokio::time::timeout(Duration::from_millis(10), shares.acquire("b"))
            .await
            .expect("b has its own share");
        let (third, ()) = tokio::join!(shares.acquire("a"), async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(a1);
        });
        drop(third);
    }

    #[tokio::test]
    async fn an_account_with_nothing_under_way_is_forgotten() {
        let shares = Shares::new(4);
        {
            let _a = shares.acquire("a").await;
            let _b = shares.acquire("b").await;
            assert_eq!(shares.accounts(), 2);
        }
        assert_eq!(shares.accounts(), 0);
        let kept = shares.acquire("a").await;
        {
            let _also = shares.acquire("a").await;
        }
        assert_eq!(shares.accounts(), 1, "a still has one under way");
        drop(kept);
        assert_eq!(shares.accounts(), 0);
    }
}
