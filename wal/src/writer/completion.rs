//! Commit futures: `Send`, runtime-agnostic, and also waitable from blocking code.
//!
//! The writer holds a [`Resolver`] for each pending commit and the caller a [`CommitFuture`];
//! both point at one [`Slot`]. A slot is resolved exactly once: by the writer, or, if the
//! writer drops its resolver without resolving, with [`Error::Poisoned`] as a panic unwinds
//! (a writer that panicked) and [`Error::Closed`] otherwise, so no caller waits forever.

use std::future::Future;
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::error::{Error, PoisonCause, Result};
use crate::ids::Lsn;
use crate::writer::sync::{AtomicBool, Condvar, Mutex, lock};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Called with a commit's outcome by whoever resolves it (see [`CommitFuture::on_resolved`]).
type ResolvedFn = Box<dyn FnOnce(Result<Lsn>) + Send>;

#[derive(Default)]
struct SlotState {
    outcome: Option<Result<Lsn>>,
    resolved: bool,
    /// A thread blocks in [`CommitFuture::wait`]: only then is the condvar notified (a
    /// notification costs the resolving writer a syscall even with no one waiting, and an
    /// async waiter is woken through its waker instead).
    blocked: bool,
    waker: Option<Waker>,
    callback: Option<ResolvedFn>,
}

impl std::fmt::Debug for SlotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotState")
            .field("outcome", &self.outcome)
            .field("resolved", &self.resolved)
            .field("blocked", &self.blocked)
            .field("waker", &self.waker)
            .field("callback", &self.callback.is_some())
            .finish()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
    /// Set once the caller gave an [`CommitFuture::on_resolved`] callback: read by a driving
    /// committer under the queue's lock ([`Resolver::has_callback`]), which must not take
    /// the slot's lock there (a waker dropped under the slot's lock may take the queue's:
    /// `tests/adversarial_callback_review.rs`).
    has_callback: AtomicBool,
}

/// The writer's end of a commit.
#[derive(Debug)]
pub(crate) struct Resolver {
    slot: Option<Arc<Slot>>,
}

impl Resolver {
    /// Whether its caller gave the future an [`CommitFuture::on_resolved`] callback: a
    /// driving committer leaves such a commit to the writer thread, which runs callbacks.
    pub(crate) fn has_callback(&self) -> bool {
        self.slot
            .as_ref()
            .is_some_and(|slot| slot.has_callback.load(Ordering::Acquire))
    }

    /// A new pending commit: the writer's end and the caller's end.
    pub(crate) fn pair() -> (Resolver, CommitFuture) {
        let slot = Arc::new(Slot::default());
        let future = CommitFuture {
            inner: Inner::Pending(Arc::clone(&slot)),
        };
        (Resolver { slot: Some(slot) }, future)
    }

    /// Resolves the commit and wakes its waiter.
    pub(crate) fn resolve(mut self, outcome: Result<Lsn>) {
        let slot = self.slot.take().expect("a resolver resolves once");
        Self::deliver(&slot, outcome);
    }

    fn deliver(slot: &Slot, outcome: Result<Lsn>) {
        let (blocked, waker) = {
            let mut state = lock(&slot.state);
            assert!(!state.resolved, "commit resolved twice");
            state.resolved = true;
            if let Some(callback) = state.callback.take() {
                drop(state);
                // A caller's callback runs on the writer thread (or on a driving committer's
                // with its own commit resolved): its panic stops there. Unwound, it killed
                // the writer with the rest of its group still in its hands, durable or not
                // (`tests/adversarial_writer_panic_review2.rs`).
                let call = std::panic::AssertUnwindSafe(|| callback(outcome));
                if std::panic::catch_unwind(call).is_err() {
                    tracing::error!("a commit's on_resolved callback panicked");
                }
                return;
            }
            state.outcome = Some(outcome);
            (state.blocked, state.waker.take())
        };
        if blocked {
            slot.ready.notify_all();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            // Dropped unresolved as a panic unwinds (the writer thread's, or a driving
            // committer's, with the commit in its hands): that panic poisons the log as the
            // writer drops, and this commit fails as the queued and later ones then do,
            // `Poisoned`, not as after a close.
            let error = if std::thread::panicking() {
                let cause = PoisonCause::writer_panicked(std::path::PathBuf::new());
                Error::Poisoned {
                    cause: Arc::new(cause),
                }
            } else {
                Error::Closed
            };
            Self::deliver(&slot, Err(error));
        }
    }
}

#[derive(Debug)]
enum Inner {
    Ready(Option<Result<Lsn>>),
    Pending(Arc<Slot>),
}

/// What [`crate::Wal::append_encoded_at`] and [`crate::Wal::append_closed_by`] give back:
/// where the append went, and when it is acknowledged.
#[derive(Debug)]
#[must_use = "a commit is only known to be durable once its future resolves"]
pub struct Appended {
    /// The LSNs the log gave the append's records, first to last, consecutive. They are
    /// assigned under the queue's lock, so two appends' ranges never interleave and a later
    /// append's range lies above an earlier one's. `None` when the log refused the append
    /// (poisoned, closing, or a batch it does not take): nothing was queued, no LSN was used,
    /// and `future` resolves with the error.
    pub lsns: Option<RangeInclusive<Lsn>>,
    /// Resolves with the last LSN (`*lsns.end()`) once acknowledged, or with the error.
    pub future: CommitFuture,
}

impl Appended {
    /// An append the log refused before queueing it.
    pub(crate) fn refused(error: Error) -> Appended {
        Appended {
            lsns: None,
            future: CommitFuture::ready(Err(error)),
        }
    }

    /// The first LSN the append got, unless it was refused.
    pub fn first_lsn(&self) -> Option<Lsn> {
        self.lsns.as_ref().map(|lsns| *lsns.start())
    }

    /// The last LSN the append got (its commit version), unless it was refused.
    pub fn last_lsn(&self) -> Option<Lsn> {
        self.lsns.as_ref().map(|lsns| *lsns.end())
    }
}

/// Resolves with the LSN of the commit's last entry once the commit reached the durability
/// it asked for, or with the error that prevented it. Await it on any runtime, or call
/// [`CommitFuture::wait`] from blocking code.
#[derive(Debug)]
#[must_use = "a commit is only known to be durable once its future resolves"]
pub struct CommitFuture {
    inner: Inner,
}

impl CommitFuture {
    /// A commit whose outcome is already known.
    pub(crate) fn ready(outcome: Result<Lsn>) -> Self {
        CommitFuture {
            inner: Inner::Ready(Some(outcome)),
        }
    }

    /// Whether the outcome was known when the commit was made (an `Async` commit, or a
    /// refusal): nothing waits for the writer.
    pub(crate) fn is_ready(&self) -> bool {
        matches!(self.inner, Inner::Ready(_))
    }

    /// Whether the commit has been resolved (its outcome may still be to take).
    pub(crate) fn is_resolved(&self) -> bool {
        match &self.inner {
            Inner::Ready(_) => true,
            Inner::Pending(slot) => lock(&slot.state).resolved,
        }
    }

    /// Hands the outcome to `callback` instead of a waiter: it is called exactly once, by
    /// the thread that resolves the commit (the log's writer thread: a committer writing
    /// for it in [`crate::Wal::append_wait`] resolves only commits waited for that way,
    /// never one of these), or at once on this thread when the outcome is already known.
    /// It saves the hop through a task or a waiting thread, for callers that only pass the
    /// outcome on (a channel send, say). Keep it short and never wait in it for the log:
    /// the writer waits for it.
    pub fn on_resolved(self, callback: impl FnOnce(Result<Lsn>) + Send + 'static) {
        match self.inner {
            Inner::Ready(outcome) => callback(outcome.expect("polled after completion")),
            Inner::Pending(slot) => {
                let mut state = lock(&slot.state);
                match state.outcome.take() {
                    Some(outcome) => {
                        drop(state);
                        callback(outcome);
                    }
                    None => {
                        assert!(!state.resolved, "polled after completion");
                        state.callback = Some(Box::new(callback));
                        slot.has_callback.store(true, Ordering::Release);
                    }
                }
            }
        }
    }

    /// Blocks the calling thread until the commit resolves.
    pub fn wait(self) -> Result<Lsn> {
        match self.inner {
            Inner::Ready(outcome) => outcome.expect("polled after completion"),
            Inner::Pending(slot) => {
                let mut state = lock(&slot.state);
                loop {
                    if let Some(outcome) = state.outcome.take() {
                        return outcome;
                    }
                    // Set under the lock the resolver takes: it sees the flag and notifies.
                    state.blocked = true;
                    state = slot.ready.wait(state).expect("commit slot lock poisoned");
                }
            }
        }
    }
}

impl Future for CommitFuture {
    type Output = Result<Lsn>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Ready(outcome) => Poll::Ready(outcome.take().expect("polled after completion")),
            Inner::Pending(slot) => {
                let mut state = lock(&slot.state);
                if let Some(outcome) = state.outcome.take() {
                    return Poll::Ready(outcome);
                }
                assert!(!state.resolved, "polled after completion");
                let replaced = match &state.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => None,
                    _ => state.waker.replace(cx.waker().clone()),
                };
                // A waker's drop is the caller's code: not under the slot's lock.
                drop(state);
                drop(replaced);
                Poll::Pending
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn dropped_resolver_fails_the_commit() {
        let (resolver, future) = Resolver::pair();
        drop(resolver);
        assert!(matches!(future.wait(), Err(Error::Closed)));
    }

    #[test]
    fn a_callback_gets_the_outcome_once_before_or_after_resolution() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (resolver, future) = Resolver::pair();
        let sink = tx.clone();
        future.on_resolved(move |outcome| sink.send(outcome.unwrap()).unwrap());
        resolver.resolve(Ok(3));
        let (resolver, future) = Resolver::pair();
        resolver.resolve(Ok(4));
        let sink = tx.clone();
        future.on_resolved(move |outcome| sink.send(outcome.unwrap()).unwrap());
        CommitFuture::ready(Ok(5)).on_resolved(move |outcome| tx.send(outcome.unwrap()).unwrap());
        assert_eq!(rx.iter().collect::<Vec<_>>(), vec![3, 4, 5]);
        let (resolver, future) = Resolver::pair();
        let (tx, rx) = std::sync::mpsc::channel();
        future.on_resolved(move |outcome| tx.send(outcome.is_err()).unwrap());
        drop(resolver);
        assert!(rx.recv().unwrap(), "a dropped resolver reports Closed");
    }

    #[test]
    fn resolution_reaches_a_blocked_waiter_and_an_async_one() {
        let (resolver, future) = Resolver::pair();
        let waiter = std::thread::spawn(move || future.wait().unwrap());
        resolver.resolve(Ok(9));
        assert_eq!(waiter.join().unwrap(), 9);
        let (resolver, future) = Resolver::pair();
        let task = std::thread::spawn(move || futures::executor::block_on(future).unwrap());
        resolver.resolve(Ok(10));
        assert_eq!(task.join().unwrap(), 10);
    }
}

/// Model checks of the hand-off (`RUSTFLAGS="--cfg loom" cargo test -p keel-wal --lib loom`):
/// under every interleaving, a waiter, blocking or polling, sees the outcome exactly once, and
/// a dropped resolver never leaves it waiting.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;

    #[test]
    fn loom_a_blocking_waiter_is_never_missed() {
        loom::model(|| {
            let (resolver, future) = Resolver::pair();
            let writer = loom::thread::spawn(move || resolver.resolve(Ok(7)));
            assert_eq!(future.wait().unwrap(), 7);
            writer.join().unwrap();
        });
    }

    #[test]
    fn loom_a_polling_waiter_is_woken() {
        loom::model(|| {
            let (resolver, future) = Resolver::pair();
            let writer = loom::thread::spawn(move || resolver.resolve(Ok(8)));
            assert_eq!(loom::future::block_on(future).unwrap(), 8);
            writer.join().unwrap();
        });
    }

    #[test]
    fn loom_a_resolution_callback_runs_exactly_once() {
        loom::model(|| {
            let (resolver, future) = Resolver::pair();
            let seen = std::sync::Arc::new(loom::sync::atomic::AtomicU64::new(0));
            let writer = loom::thread::spawn(move || resolver.resolve(Ok(5)));
            let sink = std::sync::Arc::clone(&seen);
            future.on_resolved(move |outcome| {
                assert_eq!(outcome.unwrap(), 5);
                sink.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
            writer.join().unwrap();
            assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
        });
    }

    #[test]
    fn loom_a_dropped_resolver_fails_the_waiter() {
        loom::model(|| {
            let (resolver, future) = Resolver::pair();
            let writer = loom::thread::spawn(move || drop(resolver));
            assert!(matches!(future.wait(), Err(Error::Closed)));
            writer.join().unwrap();
        });
    }
}
