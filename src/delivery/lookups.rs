//! DNS lookups for deliveries, shared by the connects that need one host's addresses at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

/// What one lookup found, shared by everyone waiting for it.
type Found = Result<Vec<SocketAddr>, Arc<std::io::Error>>;

/// The system resolver's lookups under way, one per host. Each takes a thread of the runtime's
/// blocking pool for as long as the resolver takes, and a name server an endpoint's owner runs
/// can make that its whole timeout, on every new connection: a burst to such an endpoint (up to
/// `MAX_IN_FLIGHT_PER_ENDPOINT` connects at once) would hold that many threads, and with enough
/// of them every other endpoint's lookups would queue behind. Shared, it holds one per host.
/// Nothing is cached: a lookup that has ended is not reused.
#[derive(Clone, Default)]
pub struct Lookups {
    under_way: Arc<Mutex<HashMap<String, Shared<BoxFuture<'static, Found>>>>>,
}

impl std::fmt::Debug for Lookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.under_way.lock().map_or(0, |m| m.len());
        write!(f, "Lookups({n} under way)")
    }
}

impl Lookups {
    /// What `host` resolves to: the lookup under way for it if there is one, else a new one made
    /// with `lookup` (run as a task of its own, so that it ends even if every waiter is gone).
    pub async fn resolve<F>(&self, host: &str, lookup: impl FnOnce(String) -> F) -> Found
    where
        F: std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'static,
    {
        let shared = {
            let mut under_way = self.under_way.lock().expect("lookups lock");
            match under_way.get(host) {
                Some(shared) => shared.clone(),
                None => {
                    let found = lookup(host.to_string());
                    let (map, key) = (self.under_way.clone(), host.to_string());
                    // Spawned while the lock is held: its removal waits for the insert below.
                    let task = tokio::spawn(async move {
                        let result = found.await.map_err(Arc::new);
                        map.lock().expect("lookups lock").remove(&key);
                        result
                    });
                    let shared = async move {
                        task.await
                            .unwrap_or_else(|e| Err(Arc::new(std::io::Error::other(e))))
                    }
                    .boxed()
                    .shared();
                    under_way.insert(host.to_string(), shared.clone());
                    shared
                }
            }
        };
        shared.await
    }
}

/// The system resolver's answer for `host`, port 0.
pub(super) async fn system_lookup(host: String) -> std::io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lookup that takes `delay`, counting its calls, answering `addr`.
    fn slow_lookup(
        calls: &Arc<std::sync::atomic::AtomicUsize>,
        delay: std::time::Duration,
        addr: &str,
    ) -> impl FnOnce(String) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + use<> {
        let calls = calls.clone();
        let addr: SocketAddr = addr.parse().unwrap();
        move |_host| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                tokio::time::sleep(delay).await;
                Ok(vec![addr])
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn connects_to_one_host_at_once_share_one_lookup_and_nothing_is_cached() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let lookups = Lookups::default();
        let (calls, other_calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let delay = std::time::Duration::from_millis(200);
        // Twenty at once to one host, one to another.
        let same = (0..20).map(|_| {
            let lookups = lookups.clone();
            let lookup = slow_lookup(&calls, delay, "203.0.113.7:0");
            tokio::spawn(async move { lookups.resolve("slow.example", lookup).await })
        });
        let same: Vec<_> = same.collect();
        let other = lookups
            .resolve(
                "other.example",
                slow_lookup(&other_calls, delay, "198.51.100.1:0"),
            )
            .await
            .unwrap();
        assert_eq!(other, ["198.51.100.1:0".parse().unwrap()]);
        for answer in futures_util::future::join_all(same).await {
            assert_eq!(answer.unwrap().unwrap(), ["203.0.113.7:0".parse().unwrap()]);
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one lookup for twenty connects"
        );
        assert_eq!(other_calls.load(Ordering::SeqCst), 1);
        // Ended: the next connect looks the name up again.
        lookups
            .resolve("slow.example", slow_lookup(&calls, delay, "203.0.113.7:0"))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(format!("{lookups:?}"), "Lookups(0 under way)");
    }

    #[tokio::test]
    async fn a_shared_lookup_ends_when_every_waiter_gave_up_and_its_failure_reaches_all() {
        let lookups = Lookups::default();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Every waiter times out before the lookup ends; the lookup still ends and is gone.
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            lookups.resolve(
                "slow.example",
                slow_lookup(
                    &calls,
                    std::time::Duration::from_millis(150),
                    "203.0.113.7:0",
                ),
            ),
        )
        .await;
        assert!(gave_up.is_err());
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(format!("{lookups:?}"), "Lookups(0 under way)");
        // A failure is everyone's, with its kind.
        let failing = |_host: String| async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            Err::<Vec<SocketAddr>, _>(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "resolver timed out",
            ))
        };
        let (a, b) = tokio::join!(
            lookups.resolve("down.example", failing),
            lookups.resolve("down.example", failing)
        );
        for e in [a.unwrap_err(), b.unwrap_err()] {
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        }
    }
}
