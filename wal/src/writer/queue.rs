//! The submission queue between callers and the writer thread. LSNs are assigned here, under
//! the queue lock, so queue order is LSN order and an `Async` commit can resolve with its LSN
//! the moment it is queued.

use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use crate::backend::Waker;
use crate::error::{Error, PoisonCause, Result};
use crate::format::reader::RecordPosition;
use crate::format::record::EncodedBatch;
use crate::ids::Lsn;
use crate::options::{AckLevel, Durability};
use crate::writer::completion::{CommitFuture, Resolver};
use crate::writer::sync::{Condvar, Mutex, MutexGuard, lock};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The caller's report of where an append's records went.
type PlacedFn = dyn FnOnce(&[RecordPosition]) + Send;

/// Called by the writer with where each record of an append went (see `Wal::append_placed`).
pub(crate) struct OnPlaced(pub Box<PlacedFn>);

impl std::fmt::Debug for OnPlaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnPlaced")
    }
}

#[derive(Debug)]
pub(crate) struct AppendRequest {
    pub first_lsn: Lsn,
    pub batch: EncodedBatch,
    pub ack: AckLevel,
    pub max_delay: Duration,
    pub max_bytes: u64,
    /// `None` when the caller was answered at enqueue time (`Async`).
    pub resolver: Option<Resolver>,
    pub placed: Option<OnPlaced>,
    /// Queued by a committer that waits for it on its own thread (`may_drive` in
    /// [`Queue::append_closed_deferring`]):
    /// it carries no callback (no `placed`, and its future is waited on, never given an
    /// `on_resolved`), so a driving committer may write it ([`Queue::take_driven`]).
    pub waited: bool,
}

impl AppendRequest {
    /// Whether a driving committer may write it: queued to be waited on, and its future
    /// given no `on_resolved` callback since (a caller that broke that rule of
    /// `Wal::append_closed_by_driving` would have its callback run inside another
    /// committer's `append_wait`; `tests/adversarial_writer_panic_review2.rs`). A callback
    /// given after a driver took the append still runs on that driver, caught if it panics.
    fn drivable(&self) -> bool {
        self.waited && !self.resolver.as_ref().is_some_and(Resolver::has_callback)
    }
}

#[derive(Debug)]
pub(crate) enum Request {
    Append(AppendRequest),
    /// Resolve once everything up to `through` is durable (`ack` [`AckLevel::Durable`]) or
    /// written ([`AckLevel::Written`]). `through` may be below appends queued before it
    /// (`Wal::barrier`): its waiter is placed among theirs in LSN order.
    Sync {
        through: Lsn,
        ack: AckLevel,
        resolver: Resolver,
    },
}

#[derive(Debug)]
pub(crate) struct QueueState {
    pub requests: Vec<Request>,
    pub next_lsn: Lsn,
    pub poisoned: Option<Arc<PoisonCause>>,
    pub closing: bool,
    /// The writer is blocked in its backend and must be woken through `waker`.
    pub writer_parked: bool,
    /// Bytes of the requests waiting in `requests`.
    pub queued_bytes: usize,
    /// The writer takes nothing while this is set ([`crate::Wal::hold_writer`]).
    pub held: bool,
    /// The writer is blocked waiting for work (and holds no [`crate::writer::Baton`]).
    pub writer_idle: bool,
    /// While `writer_idle`: when its wait ends by itself (`None`: only when woken).
    pub idle_until: Option<Instant>,
    /// Callers that found the writer idle and write their own appends ([`Drive`]).
    pub drivers: u32,
    /// A drive ended while the writer was not waiting: its next wait looks again first.
    pub recheck: bool,
    /// The writer thread is gone: the durable position moves no more.
    pub stopped: bool,
}

/// Above this many queued bytes an `Async` commit resolves once written, not at enqueue.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    /// Bytes of every batch queued since open (added under `state`'s lock, read without it).
    appended_bytes: AtomicU64,
    writer_wake: Condvar,
    backend_waker: BackendWaker,
}

/// The backend's [`Waker`], if it has one.
struct BackendWaker(Option<Waker>);

impl std::fmt::Debug for BackendWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(waker)"
        } else {
            "None"
        })
    }
}

impl Queue {
    pub(crate) fn new(next_lsn: Lsn, backend_waker: Option<Waker>) -> Self {
        let state = QueueState {
            requests: Vec::new(),
            next_lsn,
            poisoned: None,
            closing: false,
            writer_parked: false,
            queued_bytes: 0,
            held: false,
            writer_idle: false,
            idle_until: None,
            drivers: 0,
            recheck: false,
            stopped: false,
        };
        Queue {
            state: Mutex::new(state),
            appended_bytes: AtomicU64::new(0),
            writer_wake: Condvar::new(),
            backend_waker: BackendWaker(backend_waker),
        }
    }

    /// Bytes of every batch queued since open, written or not yet.
    pub(crate) fn appended_bytes(&self) -> u64 {
        self.appended_bytes.load(Ordering::Relaxed)
    }

    /// Wakes the writer after new work was queued under `state`'s lock (released here).
    /// The condvar is notified only when the writer waits on it (`writer_idle`, set under
    /// this lock before it waits): a notification is a syscall even with no one waiting,
    /// and appenders would pay it on every append while the writer is busy.
    fn wake_writer(&self, state: MutexGuard<'_, QueueState>) {
        self.writer_wake_after(state).wake();
    }

    /// What [`Queue::wake_writer`] does, with the wake itself left to the returned guard:
    /// the lock is released here, the writer woken when the guard is dropped or woken.
    fn writer_wake_after(&self, mut state: MutexGuard<'_, QueueState>) -> WriterWake<'_> {
        let waiting = std::mem::take(&mut state.writer_idle);
        let parked = std::mem::take(&mut state.writer_parked);
        drop(state);
        WriterWake {
            queue: self,
            waiting,
            parked,
            drive: None,
            baton: None,
        }
    }

    /// The writer is about to block in its backend: returns false (do not block) when work
    /// is already queued; otherwise later requests wake it through the backend's waker.
    pub(crate) fn park(&self) -> bool {
        let mut state = lock(&self.state);
        if !state.requests.is_empty() {
            return false;
        }
        state.writer_parked = self.backend_waker.0.is_some();
        true
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.state).requests.is_empty()
    }

    fn refusal(state: &QueueState) -> Option<Error> {
        if let Some(cause) = &state.poisoned {
            return Some(Error::Poisoned {
                cause: Arc::clone(cause),
            });
        }
        state.closing.then_some(Error::Closed)
    }

    /// Queues a batch of framed entries; they get consecutive LSNs, returned with the future
    /// (`None`: refused, and the future holds why).
    pub(crate) fn append(
        &self,
        batch: EncodedBatch,
        durability: Durability,
        placed: Option<OnPlaced>,
    ) -> (Option<RangeInclusive<Lsn>>, CommitFuture) {
        self.append_closed(batch, durability, placed, |_, _| Ok(()))
    }

    /// Queues a batch as [`Queue::append`] does, after `close` frames its last records under
    /// the queue lock, knowing the LSN the batch's first record gets. `close` failing refuses
    /// the append (the batch then gets no LSN) with its error.
    pub(crate) fn append_closed(
        &self,
        batch: EncodedBatch,
        durability: Durability,
        placed: Option<OnPlaced>,
        close: impl FnOnce(&mut EncodedBatch, Lsn) -> Result<()>,
    ) -> (Option<RangeInclusive<Lsn>>, CommitFuture) {
        let (lsns, future, wake) =
            self.append_closed_deferring(batch, durability, placed, close, false);
        drop(wake);
        (lsns, future)
    }

    /// [`Queue::append_closed`], leaving the writer's wake to the returned guard (`None`
    /// when nothing was queued). With `may_drive`, for a caller that will wait for the
    /// append on its own thread: when the writer is idle (and not held) and the append waits
    /// for its write, the writer is not woken and the guard holds a [`Drive`] instead, with
    /// which the caller writes the append itself ([`WriterWake::drive`]).
    pub(crate) fn append_closed_deferring(
        &self,
        batch: EncodedBatch,
        durability: Durability,
        placed: Option<OnPlaced>,
        close: impl FnOnce(&mut EncodedBatch, Lsn) -> Result<()>,
        may_drive: bool,
    ) -> (
        Option<RangeInclusive<Lsn>>,
        CommitFuture,
        Option<WriterWake<'_>>,
    ) {
        // A drive writes no append that carries a callback (`AppendRequest::waited`).
        let waited = may_drive && placed.is_none();
        let (lsns, future, mut state) = match self.enqueue(batch, durability, placed, waited, close)
        {
            Ok(queued) => queued,
            Err(future) => return (None, future, None),
        };
        let wake = if waited && state.writer_idle && !state.held && !future.is_ready() {
            state.drivers += 1;
            drop(state);
            WriterWake {
                queue: self,
                waiting: false,
                parked: false,
                drive: Some(Drive {
                    queue: self,
                    ended: false,
                }),
                baton: None,
            }
        } else {
            self.writer_wake_after(state)
        };
        (Some(lsns), future, Some(wake))
    }

    /// Assigns the batch its LSNs and queues it; returns them with the future, and the queue
    /// lock still held for the writer's wake. `Err`: refused, the future holds why. `waited`:
    /// see [`AppendRequest::waited`].
    fn enqueue(
        &self,
        mut batch: EncodedBatch,
        durability: Durability,
        placed: Option<OnPlaced>,
        waited: bool,
        close: impl FnOnce(&mut EncodedBatch, Lsn) -> Result<()>,
    ) -> std::result::Result<
        (
            RangeInclusive<Lsn>,
            CommitFuture,
            MutexGuard<'_, QueueState>,
        ),
        CommitFuture,
    > {
        let mut ack = durability.ack_level();
        let mut state = lock(&self.state);
        if let Some(error) = Self::refusal(&state) {
            return Err(CommitFuture::ready(Err(error)));
        }
        let first_lsn = state.next_lsn;
        if let Err(error) = close(&mut batch, first_lsn) {
            return Err(CommitFuture::ready(Err(error)));
        }
        assert!(!batch.is_empty(), "an append holds at least one record");
        state.queued_bytes += batch.byte_len();
        self.appended_bytes
            .fetch_add(batch.byte_len() as u64, Ordering::Relaxed);
        if ack == AckLevel::Enqueued && state.queued_bytes > MAX_QUEUED_BYTES {
            ack = AckLevel::Written;
        }
        state.next_lsn += u64::from(batch.len());
        let last_lsn = state.next_lsn - 1;
        let (resolver, future) = match ack {
            AckLevel::Enqueued => (None, CommitFuture::ready(Ok(last_lsn))),
            _ => {
                let (resolver, future) = Resolver::pair();
                (Some(resolver), future)
            }
        };
        state.requests.push(Request::Append(AppendRequest {
            first_lsn,
            batch,
            ack,
            max_delay: durability.max_delay(),
            max_bytes: durability.max_bytes(),
            resolver,
            placed,
            waited,
        }));
        Ok((first_lsn..=last_lsn, future, state))
    }

    /// Queues a request to make everything queued so far durable.
    pub(crate) fn sync(&self) -> CommitFuture {
        self.wait_for(AckLevel::Durable, None)
    }

    /// Queues a request that resolves once everything queued so far, or up to `through`
    /// when it is given (and lower), has reached `ack`: made durable (a sync is due), or
    /// written; at once for [`AckLevel::Enqueued`].
    pub(crate) fn wait_for(&self, ack: AckLevel, through: Option<Lsn>) -> CommitFuture {
        let mut state = lock(&self.state);
        if let Some(error) = Self::refusal(&state) {
            return CommitFuture::ready(Err(error));
        }
        let queued = state.next_lsn - 1;
        let through = through.map_or(queued, |through| through.min(queued));
        if ack == AckLevel::Enqueued {
            return CommitFuture::ready(Ok(through));
        }
        let (resolver, future) = Resolver::pair();
        state.requests.push(Request::Sync {
            through,
            ack,
            resolver,
        });
        self.wake_writer(state);
        future
    }

    /// Refuses all later requests with the poison cause.
    pub(crate) fn poison(&self, cause: Arc<PoisonCause>) {
        lock(&self.state).poisoned = Some(cause);
    }

    /// [`Queue::poison`], keeping an earlier cause (the first failure is the one to report).
    pub(crate) fn poison_unless_poisoned(&self, cause: Arc<PoisonCause>) {
        lock(&self.state).poisoned.get_or_insert(cause);
    }

    /// Asks the writer to finish what is queued, sync, and stop. It ends a hold
    /// ([`Queue::hold`]): held, the writer would take nothing, find itself closing with
    /// nothing staged, and stop with the queue unwritten, `Async` appends in it
    /// acknowledged (`tests/adversarial_writer_panic_review.rs`).
    pub(crate) fn close(&self) {
        let mut state = lock(&self.state);
        state.closing = true;
        state.held = false;
        self.wake_writer(state);
    }

    /// The writer thread is gone: refuse everything from now on, and what is still queued
    /// (with the poison cause when the log is poisoned, else `Closed`).
    pub(crate) fn writer_stopped(&self) {
        let refused: Vec<_> = {
            let mut state = lock(&self.state);
            state.closing = true;
            state.stopped = true;
            let queued = std::mem::take(&mut state.requests);
            let why = || Self::refusal(&state).expect("closing");
            queued.into_iter().map(|request| (request, why())).collect()
        };
        for (request, error) in refused {
            refuse(request, || error);
        }
    }

    /// Why the durable position will move no more: the writer's poison cause, or
    /// `Closed` once the writer thread is gone; `None` while it may still move.
    pub(crate) fn durable_end(&self) -> Option<Error> {
        let state = lock(&self.state);
        if let Some(cause) = &state.poisoned {
            return Some(Error::Poisoned {
                cause: Arc::clone(cause),
            });
        }
        state.stopped.then_some(Error::Closed)
    }

    pub(crate) fn poisoned(&self) -> Option<Arc<PoisonCause>> {
        lock(&self.state).poisoned.clone()
    }

    pub(crate) fn next_lsn(&self) -> Lsn {
        lock(&self.state).next_lsn
    }

    /// Takes every queued request into `out`, without blocking (nothing while held).
    /// Returns whether the log is closing.
    pub(crate) fn take(&self, out: &mut Vec<Request>) -> bool {
        match self.take_unless_idle(out, None) {
            Taken::Work { closing } => closing,
            Taken::Idle(_) => unreachable!("a take that may not wait is never idle"),
        }
    }

    /// A driving committer's take ([`crate::writer::baton`]): the queued requests up to the
    /// first one it may not write (nothing while held), into `out`. It writes only appends
    /// of committers waiting as it does ([`AppendRequest::waited`]): the others' callbacks
    /// (`placed`, `on_resolved`) run on the writer thread, never inside another committer's
    /// `append_wait`, under whatever locks that caller holds, and a panic in one is the
    /// writer's. What it leaves stays queued, in LSN order, for the writer thread (its
    /// queueing woke the thread). Unlike the writer's take, `recheck` is left alone: it is
    /// the thread's. Returns whether the log is closing.
    pub(crate) fn take_driven(&self, out: &mut Vec<Request>) -> bool {
        let mut state = lock(&self.state);
        if state.held {
            return state.closing;
        }
        let mine = state
            .requests
            .iter()
            .position(|request| !matches!(request, Request::Append(a) if a.drivable()))
            .unwrap_or(state.requests.len());
        let mut bytes = 0;
        for request in state.requests.drain(..mine) {
            if let Request::Append(append) = &request {
                bytes += append.batch.byte_len();
            }
            out.push(request);
        }
        state.queued_bytes = state.queued_bytes.saturating_sub(bytes);
        state.closing
    }

    /// The writer's take: every queued request into `out`, unless there is nothing to do
    /// and the writer may wait for work (`idle_wait`, as long as it holds: `None` without
    /// limit). Then it returns [`Taken::Idle`]: the writer lets go of its baton and calls
    /// [`Queue::wait_idle`].
    pub(crate) fn take_unless_idle(
        &self,
        out: &mut Vec<Request>,
        idle_wait: Option<Option<Duration>>,
    ) -> Taken {
        let mut state = lock(&self.state);
        state.writer_parked = false;
        // Computed with the baton held, so after every drive that ended before: fresh.
        state.recheck = false;
        if let Some(limit) = idle_wait
            && (state.requests.is_empty() || state.held)
            && !state.closing
        {
            return Taken::Idle(limit);
        }
        if !state.held {
            std::mem::swap(out, &mut state.requests);
            state.queued_bytes = 0;
        }
        Taken::Work {
            closing: state.closing,
        }
    }

    /// The idle writer (its baton let go) waits for work, at most `limit` (`None`: until
    /// woken). Returns at once when work is queued, the log is closing, or a drive ended
    /// since the writer took (its `limit` may be stale: the writer looks again). Meanwhile
    /// a committer may find it idle and drive (`may_drive` in [`Queue::append_closed_deferring`]).
    pub(crate) fn wait_idle(&self, limit: Option<Duration>) {
        let mut state = lock(&self.state);
        if (!state.requests.is_empty() && !state.held)
            || state.closing
            || std::mem::take(&mut state.recheck)
        {
            return;
        }
        state.writer_idle = true;
        state.idle_until = limit.map(|limit| Instant::now() + limit);
        let mut state = match limit {
            None => self.writer_wake.wait(state).expect("queue lock poisoned"),
            Some(limit) => {
                self.writer_wake
                    .wait_timeout(state, limit)
                    .expect("queue lock poisoned")
                    .0
            }
        };
        state.writer_idle = false;
        state.idle_until = None;
    }

    /// A drive is over ([`Drive`]): wakes the idle writer when work is left to it
    /// (`left`, or requests queued meanwhile) or when its wait would outlast `deadline`
    /// (a sync or witness the drive left due then); a writer that is not waiting looks
    /// again before it does.
    fn end_drive(&self, left: bool, deadline: Option<Instant>) {
        let mut state = lock(&self.state);
        state.drivers -= 1;
        if !state.writer_idle {
            state.recheck = true;
            return;
        }
        let sooner = match (deadline, state.idle_until) {
            (Some(deadline), Some(until)) => deadline < until,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let queued = !state.requests.is_empty() && !state.held;
        if left || queued || sooner || state.closing {
            self.wake_writer(state);
        }
    }
}

/// What the writer's take found: work (or a close), or nothing to do while it may wait.
#[derive(Debug)]
pub(crate) enum Taken {
    Work { closing: bool },
    Idle(Option<Duration>),
}

impl Queue {
    /// Holds the writer back from taking requests (or lets it go), so that everything
    /// queued meanwhile is taken at once.
    pub(crate) fn hold(&self, held: bool) {
        let mut state = lock(&self.state);
        state.held = held;
        if !held && !state.requests.is_empty() {
            self.wake_writer(state);
        }
    }

    /// Whether the writer is blocked waiting for work, and no committer drives it.
    pub(crate) fn writer_idle(&self) -> bool {
        let state = lock(&self.state);
        state.writer_idle && state.drivers == 0 && (state.requests.is_empty() || state.held)
    }
}

/// Fails a request that can no longer be carried out.
pub(crate) fn refuse(request: Request, error: impl FnOnce() -> Error) {
    match request {
        Request::Append(AppendRequest {
            resolver: Some(resolver),
            ..
        })
        | Request::Sync { resolver, .. } => resolver.resolve(Err(error())),
        Request::Append(AppendRequest { resolver: None, .. }) => {}
    }
}

mod wake;
pub(crate) use wake::Drive;
pub use wake::WriterWake;

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_models;
