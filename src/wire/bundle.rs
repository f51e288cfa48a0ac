//! Bundles: several delivery tasks (of one account) or several dead letters in one message.
//!
//! A failing endpoint fails thousands of deliveries a second, and each failure used to be one
//! message through a delay queue and back, three times, then one more into `P.dead`. RabbitMQ
//! dead-letters out of a quorum delay queue at a fixed cost per message (~7k messages a second
//! on two cores, BENCHMARKS.md), whatever their size: what the dispatcher hands on at the same
//! moment to the same queue therefore travels as one message ([`crate::dispatcher`] gathers
//! them). Sealed like any message the service publishes; the seal covers the whole bundle.

use serde::{Deserialize, Serialize};

use super::{DeadLetter, DeliveryTask};

/// The [`TASK_HEADER`](super::TASK_HEADER) value, and the seal's kind, of a bundle of tasks.
pub const TASK_BUNDLE: &str = "bundle";
/// Header that marks a message on `P.dead` as a bundle of dead letters (its value: how many);
/// the seal's kind is [`DEAD_LETTER_BUNDLE`].
pub const DEAD_LETTERS_HEADER: &str = "x-webhook-dead-letters";
/// The seal's kind of a bundle of dead letters.
pub const DEAD_LETTER_BUNDLE: &str = "dead_letters";

/// Most items a bundle holds.
pub const MAX_ITEMS: usize = 128;
/// A bundle is closed once its items' JSON reaches this many bytes (one item larger than this
/// travels alone): well below what the broker takes, and a bundle's deliveries are held in
/// memory together while they run.
pub const MAX_BYTES: usize = 256 * 1024;

/// What an attempt record adds to an item's JSON, about.
const ATTEMPT_BYTES: usize = 160;
/// What an item's fields besides its body and attempts add, about.
const ITEM_BYTES: usize = 256;

/// About how many bytes of JSON `task` makes in a bundle.
pub fn task_size(task: &DeliveryTask) -> usize {
    task.body.len() + task.attempts.len() * ATTEMPT_BYTES + ITEM_BYTES
}

/// About how many bytes of JSON `dead` makes in a bundle.
pub fn dead_letter_size(dead: &DeadLetter) -> usize {
    dead.payload.get().len()
        + dead.detail.as_ref().map_or(0, String::len)
        + dead.attempts.len() * ATTEMPT_BYTES
        + ITEM_BYTES
}

/// How many of the leading items, of these sizes, make one bundle: at most `most`, and no more
/// than [`MAX_BYTES`] unless the first alone is larger (it then goes alone).
pub fn bundle_len(sizes: impl IntoIterator<Item = usize>, most: usize) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for size in sizes.into_iter().take(most) {
        if n > 0 && bytes + size > MAX_BYTES {
            break;
        }
        bytes += size;
        n += 1;
    }
    n
}

/// The tasks in a message whose seal verified as `kind`: a bundle's (`kind` [`TASK_BUNDLE`]),
/// or the one task.
pub fn tasks_in(kind: &str, data: &[u8]) -> Result<Vec<DeliveryTask>, String> {
    if kind == TASK_BUNDLE {
        TaskBundle::read(data)
    } else {
        DeliveryTask::read(data).map(|task| vec![task])
    }
}

/// The dead letters in a message whose seal verified: a bundle's, or the one dead letter.
pub fn dead_letters_in(bundle: bool, data: &[u8]) -> Result<Vec<DeadLetter>, String> {
    if bundle {
        DeadLetterBundle::read(data)
    } else {
        serde_json::from_slice::<DeadLetter>(data)
            .map(|dead| vec![dead])
            .map_err(|e| e.to_string())
    }
}

/// Delivery tasks of one account, handed on together. `account_id` comes first so the
/// dispatcher's intake reads it as it reads an event's or a task's (its lane).
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskBundle<T = DeliveryTask> {
    pub account_id: String,
    pub tasks: Vec<T>,
}

impl TaskBundle {
    /// Reads a bundle whose seal verified, with each task checked as
    /// [`DeliveryTask::read`] checks one, every one of them of the bundle's account.
    pub fn read(data: &[u8]) -> Result<Vec<DeliveryTask>, String> {
        // Parsed once, the tasks with it; then each checked.
        let bundle: TaskBundle =
            serde_json::from_slice(data).map_err(|e| format!("unreadable task bundle: {e}"))?;
        check_count(bundle.tasks.len(), "task")?;
        let account = bundle.account_id;
        bundle
            .tasks
            .into_iter()
            .map(|task| {
                let task = task.checked()?;
                if task.account_id != account {
                    return Err(format!(
                        "task bundle of account {:?} holds a task of account {:?}",
                        account, task.account_id
                    ));
                }
                Ok(task)
            })
            .collect()
    }
}

/// Dead letters handed to `P.dead` together.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLetterBundle<T = DeadLetter> {
    pub dead_letters: Vec<T>,
}

impl DeadLetterBundle {
    /// Reads a bundle whose seal verified.
    pub fn read(data: &[u8]) -> Result<Vec<DeadLetter>, String> {
        let bundle: DeadLetterBundle = serde_json::from_slice(data)
            .map_err(|e| format!("unreadable bundle of dead letters: {e}"))?;
        check_count(bundle.dead_letters.len(), "dead letter")?;
        Ok(bundle.dead_letters)
    }
}

/// A bundle holds at least one item, and at most [`MAX_ITEMS`].
fn check_count(n: usize, what: &str) -> Result<(), String> {
    if n == 0 || n > MAX_ITEMS {
        return Err(format!(
            "a bundle of {n} {what}s (1 to {MAX_ITEMS} are made)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(account: &str, event_id: &str) -> DeliveryTask {
        DeliveryTask::first_attempt(
            event_id,
            account,
            "sub_1",
            "purchase",
            r#"{"event":"purchase"}"#.to_string(),
        )
    }

    fn bundle_json(account: &str, tasks: &[DeliveryTask]) -> Vec<u8> {
        serde_json::to_vec(&TaskBundle {
            account_id: account.to_string(),
            tasks: tasks.iter().collect(),
        })
        .unwrap()
    }

    #[test]
    fn a_bundle_reads_back_as_its_tasks_in_order() {
        let tasks = [task("acct_a", "evt_1"), task("acct_a", "evt_2")];
        let read = TaskBundle::read(&bundle_json("acct_a", &tasks)).unwrap();
        let ids: Vec<&str> = read.iter().map(|t| t.event_id.as_str()).collect();
        assert_eq!(ids, ["evt_1", "evt_2"]);
        assert_eq!(
            crate::dispatcher::lanes::account_of(&bundle_json("acct_a", &tasks)),
            "acct_a"
        );
    }

    #[test]
    fn a_task_of_another_account_spoils_the_bundle() {
        let tasks = [task("acct_a", "evt_1"), task("acct_b", "evt_2")];
        let err = TaskBundle::read(&bundle_json("acct_a", &tasks)).unwrap_err();
        assert!(err.contains("acct_b"), "{err}");
    }

    #[test]
    fn each_task_is_checked_as_a_lone_task_is() {
        let mut bad = task("acct_a", "evt_2");
        bad.event = "not_an_event".to_string();
        let err =
            TaskBundle::read(&bundle_json("acct_a", &[task("acct_a", "evt_1"), bad])).unwrap_err();
        assert!(err.contains("unknown event"), "{err}");
    }

    #[test]
    fn an_empty_or_oversized_bundle_is_refused() {
        assert!(TaskBundle::read(&bundle_json("acct_a", &[])).is_err());
        let many: Vec<DeliveryTask> = (0..=MAX_ITEMS)
            .map(|i| task("acct_a", &format!("evt_{i}")))
            .collect();
        let err = TaskBundle::read(&bundle_json("acct_a", &many)).unwrap_err();
        assert!(err.contains(&format!("{}", MAX_ITEMS + 1)), "{err}");
        let none = serde_json::to_vec(&DeadLetterBundle::<DeadLetter> {
            dead_letters: Vec::new(),
        })
        .unwrap();
        assert!(DeadLetterBundle::read(&none).is_err());
    }
}
