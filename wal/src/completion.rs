//! Commit futures: `Send`, runtime-agnostic, and also waitable from blocking code.
//!
//! The writer holds a [`Resolver`] for each pending commit and the caller a [`CommitFuture`];
//! both point at one [`Slot`]. A slot is resolved exactly once: by the writer, or, if the
//! writer drops its resolver without resolving (a writer that panicked), with
//! [`Error::Closed`], so no caller waits forever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result};
use crate::ids::Lsn;
use crate::sync::{Condvar, Mutex, lock};
use std::sync::Arc;

#[derive(Debug, Default)]
struct SlotState {
    outcome: Option<Result<Lsn>>,
    resolved: bool,
    waker: Option<Waker>,
}

#[derive(Debug, Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

/// The writer's end of a commit.
#[derive(Debug)]
pub(crate) struct Resolver {
    slot: Option<Arc<Slot>>,
}

impl Resolver {
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
        let waker = {
            let mut state = lock(&slot.state);
            assert!(!state.resolved, "commit resolved twice");
            state.resolved = true;
            state.outcome = Some(outcome);
            state.waker.take()
        };
        slot.ready.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            Self::deliver(&slot, Err(Error::Closed));
        }
    }
}

#[derive(Debug)]
enum Inner {
    Ready(Option<Result<Lsn>>),
    Pending(Arc<Slot>),
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
                match &state.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => state.waker = Some(cx.waker().clone()),
                }
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
    fn loom_a_dropped_resolver_fails_the_waiter() {
        loom::model(|| {
            let (resolver, future) = Resolver::pair();
            let writer = loom::thread::spawn(move || drop(resolver));
            assert!(matches!(future.wait(), Err(Error::Closed)));
            writer.join().unwrap();
        });
    }
}
