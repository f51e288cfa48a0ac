//! Acks for the events consumer, gathered: a settled message is noted here and its task ends;
//! every [`GATHER`] the acks due go out as one `multiple` ack up to the highest delivery tag
//! below which every message has been settled. One frame (and one round through the AMQP
//! client's I/O thread) for many messages, instead of one each: the service's CPU per delivery
//! went from 54 to 42 µs with it (BENCHMARKS.md, "The steady path").
//!
//! A `multiple` ack covers every unsettled tag up to its own, so it is only ever sent up to the
//! first message still under way (or waiting in its lane, or never to be handled). A settled
//! message above such a gap waits for it to close, so that one `multiple` ack covers it later: a
//! lone ack is dear on the broker's side, which finds its tag by walking the channel's unacked
//! messages from the oldest (RabbitMQ's `rabbit_channel:collect_acks`), so with a deep window
//! lone acks above a gap cost the broker in proportion to the window each, and a backlog of
//! them stalled its channel process for seconds (BENCHMARKS.md, "Acks held while the gap
//! moves"). What waits above a gap is acked alone once the gap has stayed at one message for
//! [`HOLD`] (a delivery held up: it will not close soon), once it has waited [`MAX_HOLD`] above
//! gaps that keep moving, or as soon as half the window waits so (the window must keep moving).
//! With fewer than [`SHALLOW`] messages unacked a lone ack is cheap, and what waits above a gap
//! goes alone after one round, as before: a small window's room is not held up. A message
//! handed back (`basic.reject`) is settled at once by its task and noted only so it no longer
//! counts as under way. Nothing is acked
//! before its task says it may be; what an ack that never goes out leaves unacked, the broker
//! hands out again (as before). A round is cut short once half the intake window (`PREFETCH`)
//! is settled and waiting for its ack, so a small window never stalls on the gathering (with
//! `PREFETCH=1` every message is acked as soon as it is settled). With nothing else under way
//! there is nothing to gather: a settled message is acked at once, so a quiet service holds no
//! settled message unacked (a cut connection would have it delivered again).
//!
//! A gap that stays (an attempt to an endpoint that hangs, up to `DELIVERY_TIMEOUT`) would have
//! everything above it acked alone for as long, which costs the broker a quorum-queue command
//! per message. The dispatcher can move its consumer to a fresh channel, whose acks go out
//! gathered again; the move itself costs about as many lone acks as messages are still under way
//! on the old channel (they all settle above the gap). So the gatherer reports a gap
//! ([`Acks::costly_gap`]) once it has had that many acked alone above it (and at least
//! [`MIN_COSTLY`]): moving then at most doubles what the gap cost, and saves everything after.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use window::{Round, Window};

use crate::broker::Settled;
use crate::metrics::Metrics;

/// How long a round gathers acks before sending them.
pub const GATHER: Duration = Duration::from_millis(2);
/// How long a gap may stay at one message before what is settled above it is acked alone: the
/// message is held up (an endpoint that hangs), and the gap will not close soon.
pub const HOLD: Duration = Duration::from_millis(250);
/// The longest a settled message waits above gaps that keep moving (messages under way that
/// settle and are followed by others) before it is acked alone.
pub const MAX_HOLD: Duration = Duration::from_secs(2);
/// With fewer messages unacked than this, a lone ack is cheap for the broker, and what is
/// settled above a gap goes alone after one round instead of being held (a small window must
/// keep moving: what is held takes up its room).
pub const SHALLOW: usize = 1024;
/// The fewest messages acked alone above one gap before it is reported costly.
pub const MIN_COSTLY: usize = 256;

/// What a task tells the gatherer about one message.
enum Note<M> {
    /// Taken from the consumer (by the consume loop, before any task can settle it).
    Received(u64),
    /// Its outcome is safe in the broker: ack it.
    Settled(M),
    /// Handed back to its queue already: never ack it.
    HandedBack(u64),
}

/// Where the dispatcher's tasks note their messages; cheap to clone. The gatherer runs until
/// every clone is dropped, then acks what is due and ends.
pub struct Acks<M = Settled> {
    to: mpsc::UnboundedSender<Note<M>>,
    due: Arc<Due>,
}

impl<M> Clone for Acks<M> {
    fn clone(&self) -> Self {
        Acks {
            to: self.to.clone(),
            due: self.due.clone(),
        }
    }
}

/// Whether a gatherer has ended, from [`Acks::watch`].
pub struct AcksWatch(std::sync::Weak<Due>);

impl AcksWatch {
    pub fn ended(&self) -> bool {
        self.0.strong_count() == 0
    }
}

/// What the gatherer is woken for before its round ends: half the window settled and not
/// taken in yet, or nothing under way any more.
struct Due {
    settled: AtomicUsize,
    enough: usize,
    /// Received and neither settled nor handed back.
    under_way: AtomicUsize,
    now: Notify,
    /// The tag of the last gap reported costly, and the report.
    costly_gap: AtomicU64,
    costly: Notify,
}

/// A message the gatherer can ack: the events consumer's, or a test's stand-in.
pub trait Ackable: Send + 'static {
    fn tag(&self) -> u64;
    /// Acks it, alone or (`multiple`) with every unsettled message before it on its channel;
    /// false if the ack did not go out.
    fn ack(&self, multiple: bool) -> impl Future<Output = bool> + Send;
}

impl Ackable for Settled {
    fn tag(&self) -> u64 {
        self.delivery_tag()
    }

    fn ack(&self, multiple: bool) -> impl Future<Output = bool> + Send {
        Settled::ack(self, multiple)
    }
}

impl<M: Ackable> Acks<M> {
    /// The notes' end and the gatherer, to be spawned (on the tracker the message tasks run on,
    /// so shutdown waits for its last acks). `window` is the consumer's prefetch.
    pub fn start(
        metrics: Metrics,
        window: usize,
    ) -> (Acks<M>, impl Future<Output = ()> + Send + 'static) {
        Acks::start_with(metrics, window, SHALLOW)
    }

    /// [`Acks::start`] with what counts as [`SHALLOW`].
    fn start_with(
        metrics: Metrics,
        window: usize,
        shallow: usize,
    ) -> (Acks<M>, impl Future<Output = ()> + Send + 'static) {
        let (to, notes) = mpsc::unbounded_channel();
        let due = Arc::new(Due {
            settled: AtomicUsize::new(0),
            enough: (window / 2).max(1),
            under_way: AtomicUsize::new(0),
            now: Notify::new(),
            costly_gap: AtomicU64::new(0),
            costly: Notify::new(),
        });
        (
            Acks {
                to,
                due: due.clone(),
            },
            gather(notes, due, metrics, shallow),
        )
    }

    /// The message tagged `tag` was taken from the consumer.
    pub fn received(&self, tag: u64) {
        self.due.under_way.fetch_add(1, Ordering::AcqRel);
        let _ = self.to.send(Note::Received(tag));
    }

    /// `message` may be acked: it is, within two rounds.
    pub fn settled(&self, message: M) {
        // Counted before it is sent: the gatherer takes the count off once it has the note, and
        // must never take off one not yet added.
        let enough = self.due.settled.fetch_add(1, Ordering::AcqRel) + 1 >= self.due.enough;
        let _ = self.to.send(Note::Settled(message));
        if self.left_none() || enough {
            self.due.now.notify_one();
        }
    }

    /// The message tagged `tag` was handed back (rejected) by its task.
    pub fn handed_back(&self, tag: u64) {
        let _ = self.to.send(Note::HandedBack(tag));
        if self.left_none() {
            self.due.now.notify_one();
        }
    }

    /// Counts one message off those under way; true if it was the last.
    fn left_none(&self) -> bool {
        self.due.under_way.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// Whether `other` gathers the same channel's acks.
    pub fn same(&self, other: &Acks<M>) -> bool {
        Arc::ptr_eq(&self.due, &other.due)
    }

    /// Tells when the gatherer has ended (its last ack is out), without keeping it going.
    pub fn watch(&self) -> AcksWatch {
        AcksWatch(Arc::downgrade(&self.due))
    }

    /// Messages received and not yet settled or handed back.
    #[cfg(test)]
    pub fn under_way(&self) -> usize {
        self.due.under_way.load(Ordering::Acquire)
    }

    /// Waits until a gap has had as many messages acked alone above it as are under way (at
    /// least [`MIN_COSTLY`]), and returns its delivery tag (each gap is reported once).
    pub async fn costly_gap(&self) -> u64 {
        self.due.costly.notified().await;
        self.due.costly_gap.load(Ordering::Acquire)
    }
}

async fn gather<M: Ackable>(
    mut notes: mpsc::UnboundedReceiver<Note<M>>,
    due: Arc<Due>,
    metrics: Metrics,
    shallow: usize,
) {
    let mut window = Window::new(MIN_COSTLY, due.enough, shallow);
    loop {
        // Idle: wait for a note as long as it takes. Messages waiting above a gap: one round.
        let next = if window.is_idle() {
            notes.recv().await
        } else {
            match tokio::time::timeout(GATHER, notes.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    send(window.round(false, Instant::now()), &due, &metrics).await;
                    continue;
                }
            }
        };
        let Some(note) = next else { break };
        let mut taken = apply(&mut window, note);
        let mut open = take_waiting(&mut notes, &mut window, &mut taken);
        // Gather what else comes meanwhile (until half the window waits, or nothing is under
        // way), then send it all; with nothing under way now there is nothing to wait for.
        if open && window.any_under_way() {
            tokio::select! {
                _ = tokio::time::sleep(GATHER) => {}
                _ = due.now.notified() => {}
            }
            open = take_waiting(&mut notes, &mut window, &mut taken);
        }
        due.settled.fetch_sub(taken, Ordering::AcqRel);
        if !open {
            break;
        }
        send(window.round(false, Instant::now()), &due, &metrics).await;
    }
    // Every task is done: ack everything settled; what was never settled goes back to the queue
    // when the channel closes.
    send(window.round(true, Instant::now()), &due, &metrics).await;
}

/// Takes in the notes already sent, counting the settled ones into `taken`; false once every
/// sender is gone.
fn take_waiting<M: Ackable>(
    notes: &mut mpsc::UnboundedReceiver<Note<M>>,
    window: &mut Window<M>,
    taken: &mut usize,
) -> bool {
    loop {
        match notes.try_recv() {
            Ok(note) => *taken += apply(window, note),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
}

/// Takes `note` in; 1 when it was a settled message.
fn apply<M: Ackable>(window: &mut Window<M>, note: Note<M>) -> usize {
    match note {
        Note::Received(tag) => window.received(tag),
        Note::Settled(message) => {
            window.settled(message.tag(), message, Instant::now());
            return 1;
        }
        Note::HandedBack(tag) => window.handed_back(tag),
    }
    0
}

async fn send<M: Ackable>(round: Round<M>, due: &Due, metrics: &Metrics) {
    if let Some(gap) = round.costly {
        due.costly_gap.store(gap, Ordering::Release);
        due.costly.notify_one();
    }
    let mut failed = 0;
    if let Some(through) = &round.through
        && !through.ack(true).await
    {
        failed += 1 + round.covered.len();
    }
    let alone = join_all(round.alone.iter().map(|message| message.ack(false))).await;
    failed += alone.into_iter().filter(|acked| !acked).count();
    if failed > 0 {
        metrics.ack_failed("events-queue messages", failed as u64);
    }
}

mod window;

#[cfg(test)]
mod tests;
