//! Wakes the tasks that wait for the durable position to move ([`crate::Tail`]).
//!
//! A waiter registers its waker, then reads the durable position again; the writer stores
//! the position, then looks for waiters. Each side's store is fenced before its load, so
//! at least one of them sees the other: the waiter finds the new position, or the writer
//! finds the waker (`loom_models` below checks both orders). The writer pays one atomic
//! load per publication when nobody waits.

use std::collections::HashMap;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::task::Waker;

use crate::writer::sync::{AtomicBool, AtomicU64, Mutex, fence, lock};

#[derive(Debug)]
pub(crate) struct DurableWatch {
    /// One waker per waiter (by its id): a waiter polled again replaces its own.
    wakers: Mutex<HashMap<u64, Waker>>,
    /// Some waker is registered (set under the lock, cleared when they are taken).
    armed: AtomicBool,
    next_id: AtomicU64,
}

impl Default for DurableWatch {
    fn default() -> Self {
        DurableWatch {
            wakers: Mutex::new(HashMap::new()),
            armed: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
        }
    }
}

impl DurableWatch {
    /// An id for a new waiter.
    pub(crate) fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed)
    }

    /// Registers `waker` as waiter `id`'s, to be woken at the next publication. The caller
    /// then reads the position again (this fences first), and waits only if it still has to.
    pub(crate) fn register(&self, id: u64, waker: &Waker) {
        let mut wakers = lock(&self.wakers);
        match wakers.get_mut(&id) {
            Some(registered) => registered.clone_from(waker),
            None => {
                wakers.insert(id, waker.clone());
            }
        }
        self.armed.store(true, SeqCst);
        drop(wakers);
        fence(SeqCst);
    }

    /// Forgets waiter `id` (it is dropped).
    pub(crate) fn cancel(&self, id: u64) {
        lock(&self.wakers).remove(&id);
    }

    /// Wakes every waiter, whatever changed (a tail let go by retention, say).
    pub(crate) fn notify_all(&self) {
        self.notify();
    }

    /// After the writer stored a new durable position (or stopped): wakes every waiter.
    pub(crate) fn notify(&self) {
        fence(SeqCst);
        if !self.armed.load(SeqCst) {
            return;
        }
        let wakers = {
            let mut wakers = lock(&self.wakers);
            self.armed.store(false, SeqCst);
            std::mem::take(&mut *wakers)
        };
        // Outside the lock: a waker runs the executor's code.
        for waker in wakers.into_values() {
            waker.wake();
        }
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use std::future::poll_fn;
    use std::sync::Arc;
    use std::task::Poll;

    /// A waiter that finds the position short registers and waits; the writer stores the
    /// position and notifies. In every interleaving the waiter is woken or sees it: a lost
    /// wake-up would leave `block_on` parked for good, which loom reports.
    #[test]
    fn loom_a_waiter_of_the_durable_position_is_never_left_asleep() {
        loom::model(|| {
            let watch = Arc::new(DurableWatch::default());
            let durable = Arc::new(AtomicU64::new(0));
            let writer = {
                let (watch, durable) = (Arc::clone(&watch), Arc::clone(&durable));
                loom::thread::spawn(move || {
                    durable.store(1, Relaxed);
                    watch.notify();
                })
            };
            let id = watch.new_id();
            loom::future::block_on(poll_fn(|cx| {
                if durable.load(Relaxed) >= 1 {
                    return Poll::Ready(());
                }
                watch.register(id, cx.waker());
                if durable.load(Relaxed) >= 1 {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }));
            watch.cancel(id);
            writer.join().unwrap();
        });
    }
}
