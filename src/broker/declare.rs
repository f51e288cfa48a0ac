//! Declaring the topology ([`Topology`]) on the broker: what is missing is created, and an
//! exchange or queue that exists with other arguments is an error naming it and both argument
//! sets ([`BrokerError::TopologyMismatch`]).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use super::BrokerError;
use super::connection::close_channel;
use super::topology::Topology;

impl Topology {
    /// Declares the exchange, all queues and the events binding, each on a channel from `open`
    /// (a refused declare closes its channel). Idempotent. An events queue left by an earlier
    /// version is used as it is: [`EventsQueue::Earlier`].
    pub async fn declare<F, Fut>(&self, open: F) -> Result<EventsQueue, BrokerError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Channel, BrokerError>>,
    {
        let channel = open().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for (name, kind) in [
            (&self.exchange, ExchangeKind::Topic),
            (&self.control, ExchangeKind::Fanout),
        ] {
            channel
                .exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
                .await
                .map_err(|e| mismatch_or(e, "exchange", name, &FieldTable::default()))?;
        }
        for retry in &self.retries {
            declare_queue(&channel, &retry.name, self.retry_args(retry)).await?;
        }
        declare_queue(&channel, &self.dead, self.plain_args()).await?;
        let (channel, events) =
            match declare_queue(&channel, &self.events, self.events_args()).await {
                Ok(()) => (channel, EventsQueue::Current),
                Err(mismatch @ BrokerError::TopologyMismatch { .. }) => {
                    let mut found = None;
                    for (version, args) in self.earlier_events_args() {
                        let again = open().await?;
                        if declare_queue(&again, &self.events, args).await.is_ok() {
                            found = Some((again, EventsQueue::Earlier(version)));
                            break;
                        }
                    }
                    found.ok_or(mismatch)?
                }
                Err(e) => return Err(e),
            };
        channel
            .queue_bind(
                self.events.as_str().into(),
                self.exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        close_channel(&channel, "topology declared").await;
        Ok(events)
    }
}

/// What the events queue turned out to be when the topology was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventsQueue {
    /// Declared with this version's arguments.
    Current,
    /// Declared by an earlier version (`"0.1"`, `"0.2"`; see
    /// [`Topology::earlier_events_args`]): it works, without this version's guarantees.
    /// `webhook-dispatcher migrate-queues` moves it.
    Earlier(&'static str),
}

pub(crate) async fn declare_queue(
    channel: &Channel,
    name: &str,
    args: FieldTable,
) -> Result<(), BrokerError> {
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.into(), options, args.clone())
        .await
        .map_err(|e| mismatch_or(e, "queue", name, &args))?;
    Ok(())
}

/// A 406 PRECONDITION_FAILED on declare means the thing exists with other settings: that is a
/// configuration error to stop on, not a connection problem to retry.
fn mismatch_or(
    err: lapin::Error,
    kind: &'static str,
    name: &str,
    wanted: &FieldTable,
) -> BrokerError {
    if let lapin::ErrorKind::ProtocolError(amqp) = err.kind()
        && amqp.get_id() == 406
    {
        return BrokerError::TopologyMismatch {
            kind,
            name: name.to_string(),
            wanted: describe(wanted),
            broker: amqp.get_message().to_string(),
        };
    }
    BrokerError::Amqp(err)
}

/// `{x-message-ttl=2000, x-queue-type=quorum}`.
pub fn describe(args: &FieldTable) -> String {
    let parts: Vec<String> = args
        .inner()
        .iter()
        .map(|(k, v)| {
            let value = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::LongLongInt(n) => n.to_string(),
                other => format!("{other:?}"),
            };
            format!(
                "{}={}",
                k.as_str(),
                if value.is_empty() {
                    "\"\"".into()
                } else {
                    value
                }
            )
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}
