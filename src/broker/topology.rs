//! Every exchange and queue name and argument the service uses. Nothing else spells a queue
//! name. Declaring them on the broker is [`super::declare`].

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::config::{Config, QueueSettings, QueueType, delay_label};

/// One delay queue: failed deliveries wait here for `delay`, then dead-letter back to the
/// events queue.
#[derive(Debug, Clone)]
pub struct RetryQueue {
    pub name: String,
    /// `2s`, `4s`, …: the `delay` label of `webhook_retries_scheduled_total`.
    pub label: String,
    pub delay: Duration,
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub events: String,
    pub retries: Vec<RetryQueue>,
    pub dead: String,
    /// Fanout exchange on which replicas announce subscription changes to each other; each
    /// replica hears it on an exclusive queue of its own.
    pub control: String,
    queue_type: QueueType,
    delivery_limit: u32,
    /// Whether what is handed to one queue at the same moment may travel as one message
    /// (`BUNDLES`, [`crate::wire::bundle`]).
    pub bundles: bool,
}

impl Topology {
    /// The topology `serve` declares.
    pub fn new(cfg: &Config) -> Topology {
        Topology::with(&cfg.exchange.events_exchange, &cfg.queues)
    }

    /// The topology of `exchange` and the queues `queues` names.
    pub fn with(exchange: &str, queues: &QueueSettings) -> Topology {
        let p = &queues.queue_prefix;
        Topology {
            exchange: exchange.to_string(),
            events: format!("{p}.events"),
            retries: queues
                .retry_delays
                .0
                .iter()
                .map(|&delay| {
                    let label = delay_label(delay);
                    RetryQueue {
                        name: format!("{p}.retry.{label}"),
                        label,
                        delay,
                    }
                })
                .collect(),
            dead: format!("{p}.dead"),
            control: format!("{p}.control"),
            queue_type: queues.queue_type,
            delivery_limit: queues.delivery_limit,
            bundles: queues.bundles,
        }
    }

    /// The queues alone, for a command that never touches the exchange (its name is empty).
    pub fn queues_only(queues: &QueueSettings) -> Topology {
        Topology::with("", queues)
    }

    /// The exchange alone, for publishing to it like a producer (no queue names).
    pub fn exchange_only(exchange: &str) -> Topology {
        Topology {
            exchange: exchange.to_string(),
            events: String::new(),
            retries: Vec::new(),
            dead: String::new(),
            control: String::new(),
            queue_type: QueueType::Quorum,
            delivery_limit: 20,
            bundles: false,
        }
    }

    /// Every queue name, events queue first.
    pub fn queues(&self) -> Vec<&str> {
        let mut names = vec![self.events.as_str()];
        names.extend(self.retries.iter().map(|r| r.name.as_str()));
        names.push(self.dead.as_str());
        names
    }

    fn base_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        let kind = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        args.insert("x-queue-type".into(), long_string(kind));
        args
    }

    /// Arguments of the dead-letter queue.
    pub fn plain_args(&self) -> FieldTable {
        self.base_args()
    }

    /// Arguments of the events queue: what RabbitMQ itself dead-letters from it (an event whose
    /// AMQP `expiration` passed before it was consumed, a message handed back more than
    /// `DELIVERY_LIMIT` times) goes to `P.dead`, where the DLQ logger keeps it with its reason,
    /// instead of being dropped. The limit is set explicitly (quorum queues only): RabbitMQ 4
    /// puts a default of 20 on every quorum queue, and what passes it with no dead-letter target
    /// is dropped.
    pub fn events_args(&self) -> FieldTable {
        let mut args = self.events_args_of_0_2();
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
            );
        }
        args
    }

    /// The events queue's arguments as 0.2 declared it: a dead-letter target, no delivery limit.
    fn events_args_of_0_2(&self) -> FieldTable {
        let mut args = self.base_args();
        self.dead_letter_into(&mut args, &self.dead);
        args
    }

    /// The events queue's arguments as earlier versions declared it, newest first, each with the
    /// version: 0.2 (no delivery limit: `DELIVERY_LIMIT` is not applied; RabbitMQ 4's default of
    /// 20 dead-letters into `P.dead`), 0.1 (no dead-letter target either: RabbitMQ drops what
    /// expires, and on RabbitMQ 4 what passes 20 deliveries). Such a queue is used as it is, with
    /// a warning, until `migrate-queues` moves it.
    pub fn earlier_events_args(&self) -> Vec<(&'static str, FieldTable)> {
        vec![
            ("0.2", self.events_args_of_0_2()),
            ("0.1", self.base_args()),
        ]
    }

    /// Where `migrate-queues` keeps the events queue's messages (and routes new events) while it
    /// declares the events queue again with this version's arguments.
    pub fn holding_queue(&self) -> String {
        format!("{}.migrating", self.events)
    }

    /// Dead-letters into `target` through the default exchange; on a quorum queue at least once
    /// (which needs reject-publish overflow), so nothing is dropped on the way.
    fn dead_letter_into(&self, args: &mut FieldTable, target: &str) {
        args.insert("x-dead-letter-exchange".into(), long_string(""));
        args.insert("x-dead-letter-routing-key".into(), long_string(target));
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-dead-letter-strategy".into(),
                long_string("at-least-once"),
            );
            args.insert("x-overflow".into(), long_string("reject-publish"));
        }
    }

    /// Arguments of a delay queue: TTL, then dead-letter through the default exchange straight
    /// into the events queue (not the topic exchange, which other consumers may be bound to).
    pub fn retry_args(&self, retry: &RetryQueue) -> FieldTable {
        let mut args = self.base_args();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(retry.delay.as_millis() as i64),
        );
        self.dead_letter_into(&mut args, &self.events);
        args
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::declare::describe;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cfg: Config,
    }

    fn cfg(args: &[&str]) -> Config {
        let mut argv = vec!["x"];
        argv.extend_from_slice(args);
        Cli::parse_from(argv).cfg
    }

    #[test]
    fn names_follow_the_prefix_and_delays() {
        let t = Topology::new(&cfg(&["--queue-prefix", "p1"]));
        assert_eq!(
            t.queues(),
            [
                "p1.events",
                "p1.retry.2s",
                "p1.retry.4s",
                "p1.retry.8s",
                "p1.dead"
            ]
        );
        assert_eq!(t.exchange, "clarm.events");
    }

    #[test]
    fn the_events_queue_dead_letters_into_the_dead_letter_queue() {
        let t = Topology::new(&cfg(&["--queue-prefix", "p"]));
        assert_eq!(
            describe(&t.events_args()),
            "{x-dead-letter-exchange=\"\", x-dead-letter-routing-key=p.dead, x-dead-letter-strategy=at-least-once, \
             x-delivery-limit=20, x-overflow=reject-publish, x-queue-type=quorum}"
        );
        let earlier: Vec<(&str, String)> = t
            .earlier_events_args()
            .iter()
            .map(|(v, args)| (*v, describe(args)))
            .collect();
        assert_eq!(
            earlier,
            [
                (
                    "0.2",
                    "{x-dead-letter-exchange=\"\", x-dead-letter-routing-key=p.dead, x-dead-letter-strategy=at-least-once, \
                     x-overflow=reject-publish, x-queue-type=quorum}"
                        .to_string()
                ),
                ("0.1", "{x-queue-type=quorum}".to_string())
            ]
        );
        let limited = Topology::new(&cfg(&["--queue-prefix", "p", "--delivery-limit", "5"]));
        assert!(describe(&limited.events_args()).contains("x-delivery-limit=5"));
        // Classic queues have no delivery limit.
        let classic = Topology::new(&cfg(&["--queue-prefix", "p", "--queue-type", "classic"]));
        assert!(!describe(&classic.events_args()).contains("x-delivery-limit"));
        assert_eq!(t.holding_queue(), "p.events.migrating");
    }

    #[test]
    fn quorum_delay_queues_dead_letter_at_least_once_into_the_events_queue() {
        let t = Topology::new(&cfg(&["--queue-prefix", "p"]));
        let args = describe(&t.retry_args(&t.retries[1]));
        assert_eq!(
            args,
            "{x-dead-letter-exchange=\"\", x-dead-letter-routing-key=p.events, x-dead-letter-strategy=at-least-once, \
             x-message-ttl=4000, x-overflow=reject-publish, x-queue-type=quorum}"
        );
        let classic = Topology::new(&cfg(&["--queue-prefix", "p", "--queue-type", "classic"]));
        assert!(!describe(&classic.retry_args(&classic.retries[0])).contains("at-least-once"));
    }
}
