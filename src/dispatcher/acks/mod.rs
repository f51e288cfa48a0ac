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
//! [`HOLD`] (a delivery held up: it will not close soon; see below for the move that spares
//! them), once it has waited [`MAX_HOLD`] above
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
//! per message. So once a gap has stayed [`HOLD`] with at least [`MIN_COSTLY`] settled above it,
//! the gatherer reports it ([`Acks::costly_gap`]), and gives the dispatcher [`MOVE_GRACE`] to move
//! its consumer to a fresh channel, whose acks go out gathered, before anything goes alone. The
//! channel moved away from is retired ([`Acks::retire`]): nothing more arrives on it, so what
//! settles there waits for the gap to close, up to [`RETIRED_HOLD`], and goes in one `multiple`
//! ack with it — a move costs no lone acks at all. Stopping ([`AcksWatch::flush`]) ends every
//! hold: what is settled then goes out at once, alone where it must.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
/// The fewest messages waiting (or acked alone) above a gap that has stayed [`HOLD`] before it
/// is reported costly: a move is worth a channel's opening.
pub const MIN_COSTLY: usize = 256;
/// How much longer than [`HOLD`] what waits above a reported gap waits before it goes alone: time
/// for the dispatcher to move the consumer away ([`Acks::retire`]), which spares them. A broker
/// busy with lone acks took up to 400 ms to open a channel (BENCHMARKS.md).
pub const MOVE_GRACE: Duration = Duration::from_millis(750);
/// The longest a settled message waits above a gap on a channel the consumer moved away from
/// before it is acked alone. Nothing arrives there any more, so what waits takes no room anyone
/// needs: it waits for the gap (a delivery under way, at most `DELIVERY_TIMEOUT` and a park's
/// confirm) to close and goes with it in one `multiple` ack. What a crash then delivers again is
/// at most this long's settled messages of that channel, never more than its window.
pub const RETIRED_HOLD: Duration = Duration::from_secs(30);

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

    /// Has the gatherer ack what is settled from now on without holding it above a gap (alone
    /// where it must): the service is stopping, and what is not acked before the process ends is
    /// delivered again.
    pub fn flush(&self) {
        if let Some(due) = self.0.upgrade() {
            due.flushing.store(true, Ordering::Release);
        }
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
    /// The consumer moved away from the channel ([`Acks::retire`]).
    retired: AtomicBool,
    /// Shutting down: nothing is held any more ([`AcksWatch::flush`]).
    flushing: AtomicBool,
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
            retired: AtomicBool::new(false),
            flushing: AtomicBool::new(false),
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

    /// The consumer moved away from this channel: what is settled above a gap waits for it to
    /// close (up to [`RETIRED_HOLD`]) instead of going alone.
    pub fn retire(&self) {
        self.due.retired.store(true, Ordering::Release);
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

    /// Waits until a gap has stayed [`HOLD`] with at least [`MIN_COSTLY`] messages settled above
    /// it, and returns its delivery tag (each gap is reported once).
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
                    send(round(&mut window, &due, false), &due, &metrics).await;
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
        send(round(&mut window, &due, false), &due, &metrics).await;
    }
    // Every task is done: ack everything settled; what was never settled goes back to the queue
    // when the channel closes.
    send(round(&mut window, &due, true), &due, &metrics).await;
}

/// The window's round now, as the channel's state (retired, stopping) has it.
fn round<M>(window: &mut Window<M>, due: &Due, last: bool) -> Round<M> {
    if due.retired.load(Ordering::Acquire) {
        window.retire();
    }
    window.round(last || due.flushing.load(Ordering::Acquire), Instant::now())
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
