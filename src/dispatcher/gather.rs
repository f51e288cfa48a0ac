//! Hand-offs to the same queue gathered into bundles ([`crate::wire::bundle`]), as a database
//! gathers commits: the first item for a queue (and account) is published at once; what arrives
//! for it while that publish awaits its confirm waits, and goes as one message when it returns.
//! At a trickle nothing waits and every item travels alone, as before; when an endpoint fails
//! thousands of deliveries a second, their retries and dead letters travel a bundle at a time,
//! and the broker moves a few hundred messages a second where it moved thousands. Each item's
//! sender is answered only once the message holding it is confirmed, so the message an item
//! came from is still acked only after its outcome is safe in the broker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lapin::BasicProperties;
use tokio::sync::oneshot;

use crate::broker::{BrokerError, Publisher, Route};
use crate::seal::Keyring;
use crate::wire::bundle::{MAX_BYTES, MAX_ITEMS, bundle_len};

/// What a gatherer publishes: one item alone, or several as a bundle.
pub(super) trait Item: Send + 'static {
    /// About how many bytes of JSON it makes in a bundle.
    fn size(&self) -> usize;
    /// One item as a message of its own.
    fn alone(&self, keys: &Keyring) -> (Vec<u8>, BasicProperties);
    /// Several items of the same group (an account, or none) as one message.
    fn bundle(group: &str, items: &[Self], keys: &Keyring) -> (Vec<u8>, BasicProperties)
    where
        Self: Sized;
}

/// Publishes at most this many bundles of one group at once: a second starts only when a full
/// bundle waits, so a group with more to send than one publish at a time carries is not held to
/// one confirm's round trip per bundle.
const MOST_AT_ONCE: usize = 4;

type Answer = oneshot::Sender<Result<(), BrokerError>>;

struct Group<T> {
    waiting: Vec<(T, Answer)>,
    bytes: usize,
    /// Publishing tasks under way for this group.
    publishing: usize,
}

/// Gathers items for queues, by group, into bundles (see the module's introduction).
pub(super) struct Gatherer<T> {
    publisher: Publisher,
    keys: Arc<Keyring>,
    groups: Mutex<HashMap<(String, String), Group<T>>>,
    /// Items per message at most: [`MAX_ITEMS`], or 1 with bundles off (`BUNDLES=false`).
    most: usize,
}

impl<T: Item> Gatherer<T> {
    /// A gatherer that makes bundles, or (`bundles` false) publishes each item alone.
    pub(super) fn new(publisher: Publisher, keys: Arc<Keyring>, bundles: bool) -> Arc<Gatherer<T>> {
        Arc::new(Gatherer {
            publisher,
            keys,
            groups: Mutex::new(HashMap::new()),
            most: if bundles { MAX_ITEMS } else { 1 },
        })
    }

    /// Publishes `item` to `queue`, in a bundle with others of `group` if some are being handed
    /// on at the same time, and returns once the message holding it is confirmed.
    pub(super) async fn send(
        self: &Arc<Self>,
        queue: &str,
        group: &str,
        item: T,
    ) -> Result<(), BrokerError> {
        if self.most == 1 {
            let (body, props) = item.alone(&self.keys);
            return self
                .publisher
                .publish_retrying(Route::queue(queue), &body, props)
                .await;
        }
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut groups = self.groups.lock().expect("gatherer lock");
            let key = (queue.to_string(), group.to_string());
            let g = groups.entry(key).or_insert_with(|| Group {
                waiting: Vec::new(),
                bytes: 0,
                publishing: 0,
            });
            g.bytes += item.size();
            g.waiting.push((item, answer));
            let full = g.waiting.len() >= MAX_ITEMS || g.bytes >= MAX_BYTES;
            let start = g.publishing == 0 || full && g.publishing < MOST_AT_ONCE;
            if start {
                g.publishing += 1;
            }
            start
        };
        if start {
            tokio::spawn(self.clone().publish(queue.to_string(), group.to_string()));
        }
        answered.await.unwrap_or_else(|_| {
            // The publishing task ended without an answer: it panicked.
            Err(BrokerError::NotConnected)
        })
    }

    /// Publishes what waits for `(queue, group)`, a bundle at a time, until nothing does.
    async fn publish(self: Arc<Self>, queue: String, group: String) {
        let key = (queue, group);
        loop {
            let taken = {
                let mut groups = self.groups.lock().expect("gatherer lock");
                let g = groups
                    .get_mut(&key)
                    .expect("a group outlives its publishers");
                let taken = take_bundle(&mut g.waiting, self.most);
                if taken.is_empty() {
                    g.publishing -= 1;
                    if g.publishing == 0 {
                        groups.remove(&key);
                    }
                    return;
                }
                g.bytes -= taken.iter().map(|(item, _)| item.size()).sum::<usize>();
                taken
            };
            let (items, answers): (Vec<T>, Vec<Answer>) = taken.into_iter().unzip();
            let (body, props) = match items.as_slice() {
                [one] => one.alone(&self.keys),
                many => T::bundle(&key.1, many, &self.keys),
            };
            let sent = self
                .publisher
                .publish_retrying(Route::queue(&key.0), &body, props)
                .await;
            for answer in answers {
                let _ = answer.send(sent.clone());
            }
        }
    }
}

/// The oldest waiting items that make one bundle ([`bundle_len`]).
fn take_bundle<T: Item, A>(waiting: &mut Vec<(T, A)>, most: usize) -> Vec<(T, A)> {
    let n = bundle_len(waiting.iter().map(|(item, _)| item.size()), most);
    waiting.drain(..n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Blob(usize);

    impl Item for Blob {
        fn size(&self) -> usize {
            self.0
        }
        fn alone(&self, _: &Keyring) -> (Vec<u8>, BasicProperties) {
            unreachable!()
        }
        fn bundle(_: &str, _: &[Self], _: &Keyring) -> (Vec<u8>, BasicProperties) {
            unreachable!()
        }
    }

    fn sizes(items: &[(Blob, ())]) -> Vec<usize> {
        items.iter().map(|(s, ())| s.0).collect()
    }

    #[test]
    fn a_bundle_takes_the_oldest_items_up_to_its_count() {
        let mut waiting: Vec<(Blob, ())> = (0..MAX_ITEMS + 3).map(|i| (Blob(i), ())).collect();
        let first = take_bundle(&mut waiting, MAX_ITEMS);
        assert_eq!(first.len(), MAX_ITEMS);
        assert_eq!(first[0].0.0, 0);
        assert_eq!(sizes(&waiting), [MAX_ITEMS, MAX_ITEMS + 1, MAX_ITEMS + 2]);
    }

    #[test]
    fn a_bundle_stops_short_of_its_byte_budget_but_a_large_item_goes_alone() {
        let third = MAX_BYTES / 3;
        let mut waiting = vec![(Blob(third), ()), (Blob(third), ()), (Blob(third + 10), ())];
        assert_eq!(sizes(&take_bundle(&mut waiting, MAX_ITEMS)), [third, third]);
        assert_eq!(sizes(&waiting), [third + 10]);
        let mut waiting = vec![(Blob(MAX_BYTES * 2), ()), (Blob(1), ())];
        assert_eq!(
            sizes(&take_bundle(&mut waiting, MAX_ITEMS)),
            [MAX_BYTES * 2]
        );
        assert_eq!(sizes(&take_bundle(&mut waiting, MAX_ITEMS)), [1]);
        assert!(take_bundle(&mut waiting, MAX_ITEMS).is_empty());
    }
}
