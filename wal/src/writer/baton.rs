//! Leader/follower commits. The writer's state sits behind a baton: the writer thread holds
//! it while it works and lets go of it while it waits for work. A committer that will wait
//! for its append on its own thread ([`crate::Wal::append_wait`]) and finds the writer idle
//! takes the baton and writes (and syncs) its append itself, with the appends of other
//! committers waiting the same way queued beside it, instead of waking the thread and
//! sleeping until it answers: the two thread hand-offs a lone committer paid over a raw
//! `pwrite` + `fdatasync`.
//!
//! A driving committer writes nothing that carries a callback: other appends (their
//! `placed`, and an `on_resolved` their caller may give their future at any time), syncs
//! and barriers stay queued for the thread ([`crate::writer::queue::Queue::take_driven`]).
//! So their callbacks run on the writer thread as before, never inside a committer's
//! `append_wait`, where one that takes a lock the committer holds would deadlock and a
//! panic would unwind through a caller whose own commit is durable. The writer's waiters
//! hold none of theirs while it is idle, so a drive resolves only driven commits.
//!
//! A driving committer runs the same staging, flushing and reaping as the thread, until its
//! own commit resolves or nothing of it is in flight (a `Batched` commit waiting for its
//! sync timer). What it leaves (chains in flight, records staged, a sync or witness due) is
//! the thread's: [`Drive::end`] wakes it when its wait would miss that. Witnesses, closing
//! and stopping stay with the thread. Committers that arrive while one drives wake the
//! thread as usual, which takes the baton once the driver lets go of it.
//!
//! A committer that cannot take the baton at once (the thread just woke) does not wait for
//! it: it wakes the thread and waits for its commit. A panic while driving poisons the
//! baton; the thread then stops, and the writer's drop refuses what is queued.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Instant;

use super::{Turn, Writer};
use crate::writer::completion::CommitFuture;
use crate::writer::queue::Drive;

/// The writer, held by whoever writes: its thread, or a committer driving it.
#[derive(Debug)]
pub(crate) struct Baton(Mutex<Option<Writer>>);

impl Baton {
    pub(crate) fn new(writer: Writer) -> Arc<Baton> {
        Arc::new(Baton(Mutex::new(Some(writer))))
    }

    /// The baton, unless a committer panicked while driving.
    fn lock(&self) -> Option<MutexGuard<'_, Option<Writer>>> {
        self.0.lock().ok()
    }

    /// The writer thread's body: runs until the log is closed and everything is settled,
    /// letting go of the baton while it waits for work.
    pub(crate) fn run(&self) {
        // Declared first, dropped last: however the thread ends, the writer is dropped
        // with it, and its drop refuses what is still queued.
        let _exit = DropWriterOnExit(self);
        let mut requests = Vec::new();
        let Some(mut guard) = self.lock() else { return };
        loop {
            let Some(writer) = guard.as_mut() else { return };
            match writer.turn(&mut requests) {
                Turn::Continue => {}
                Turn::Stop => break,
                Turn::Idle(limit) => {
                    let shared = Arc::clone(&writer.shared);
                    drop(guard);
                    shared.queue.wait_idle(limit);
                    guard = match self.lock() {
                        Some(guard) => guard,
                        None => {
                            tracing::error!("a committer panicked while writing: the writer stops");
                            return;
                        }
                    };
                }
            }
        }
        if let Some(writer) = guard.as_mut() {
            writer.drain_in_flight();
            tracing::debug!(dir = %writer.dir.display(), durable = writer.durable.through(), "writer stopped");
        }
    }

    /// A committer given `drive` (the writer was idle) writes the appends queued, its own
    /// among them, until `until` resolves; it hands the rest back to the thread. When the
    /// baton is taken, it only wakes the thread (dropping `drive`).
    pub(crate) fn drive(&self, until: &CommitFuture, drive: Drive<'_>) {
        let mut guard = match self.0.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => return,
        };
        let Some(writer) = guard.as_mut() else { return };
        let (left, deadline) = writer.drive(until);
        drop(guard);
        drive.end(left, deadline);
    }
}

/// Drops the writer when the writer thread ends, by a panic too.
struct DropWriterOnExit<'a>(&'a Baton);

impl Drop for DropWriterOnExit<'_> {
    fn drop(&mut self) {
        let writer = match self.0.0.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        drop(writer);
    }
}

impl Writer {
    /// A committer's drive: the writer thread's turns without its waits for work (taking
    /// only what a driver may write, [`crate::writer::queue::Queue::take_driven`]), until
    /// `until` resolves or none of the chains it waits for is in flight. Returns whether
    /// work is left to the thread now, and when its next deadline (a sync timer, a
    /// witness) falls.
    fn drive(&mut self, until: &CommitFuture) -> (bool, Option<Instant>) {
        self.shared.counters.driven.fetch_add(1, Relaxed);
        let mut requests = std::mem::take(&mut self.driven_requests);
        loop {
            self.wait_for_capacity();
            let closing = self.shared.queue.take_driven(&mut requests);
            self.stage_all(&mut requests);
            if self.poisoned.is_none() {
                self.flush(closing);
            }
            let waiting = !until.is_resolved() && self.backend.in_flight() > 0;
            if waiting {
                self.reap(true);
            }
            if self.poisoned.is_some() {
                self.fail_all(true);
                break;
            }
            if !waiting || until.is_resolved() {
                break;
            }
        }
        self.driven_requests = requests;
        match self.idle_wait() {
            None => (true, None),
            Some(None) => (false, None),
            Some(Some(wait)) => (false, Some(Instant::now() + wait)),
        }
    }
}
