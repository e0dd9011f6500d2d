//! The background checkpointer: automatic checkpoints run on a thread of their own, so that
//! no commit waits for one. A commit that finds the log grown past
//! [`Options::checkpoint_log_bytes`] only raises a flag; the thread takes the snapshot view,
//! writes it and cleans up while commits go on.
//!
//! The thread lives as long as the database's user handles: the last one dropped (or
//! [`Database::close`]) stops it, interrupting a snapshot being written (at its next frame;
//! the partial file is removed, the next open ignores it), and waits for it, so the
//! directory lock is free once the drop returns.
//!
//! [`Options::checkpoint_log_bytes`]: super::Options::checkpoint_log_bytes

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::Database;
use super::sync::{POISONED, lock};

/// What the committers and the thread share.
#[derive(Debug, Default)]
pub(super) struct Signal {
    flags: Mutex<Flags>,
    /// The thread waits here for a request.
    wake: Condvar,
    /// Callers of [`Signal::wait_idle`] wait here for the thread to finish.
    idle: Condvar,
    /// Set once the last user handle is gone: the thread stops, and a snapshot being written
    /// stops at its next frame.
    stopping: AtomicBool,
}

#[derive(Debug, Default)]
struct Flags {
    /// A checkpoint is asked for.
    due: bool,
    /// One is being written.
    running: bool,
}

impl Signal {
    /// Asks the thread for a checkpoint (a no-op while one is asked for already).
    pub fn request(&self) {
        lock(&self.flags).due = true;
        self.wake.notify_one();
    }

    /// Waits until no automatic checkpoint is asked for or running.
    pub fn wait_idle(&self) {
        let mut flags = lock(&self.flags);
        while (flags.due || flags.running) && !self.stopping() {
            flags = self
                .idle
                .wait(flags)
                .unwrap_or_else(|_| panic!("{POISONED}"));
        }
    }

    /// Whether the database is closing: a checkpoint in progress gives up.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Waits for a request and marks it running; `false` once stopping.
    fn next(&self) -> bool {
        let mut flags = lock(&self.flags);
        loop {
            if self.stopping() {
                return false;
            }
            if std::mem::take(&mut flags.due) {
                flags.running = true;
                return true;
            }
            flags = self
                .wake
                .wait(flags)
                .unwrap_or_else(|_| panic!("{POISONED}"));
        }
    }

    /// The running checkpoint is over.
    fn finished(&self) {
        lock(&self.flags).running = false;
        self.idle.notify_all();
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let _flags = lock(&self.flags);
        self.wake.notify_all();
        self.idle.notify_all();
    }
}

/// The thread, owned by the user handles (never by the thread's own handle).
#[derive(Debug)]
pub(super) struct Checkpointer {
    signal: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread on `db`, an internal handle (one that owns no checkpointer).
    pub fn start(db: Database, signal: Arc<Signal>) -> std::io::Result<Checkpointer> {
        let thread_signal = Arc::clone(&signal);
        let thread = std::thread::Builder::new()
            .name("keel-checkpoint".into())
            .spawn(move || {
                while thread_signal.next() {
                    // Asks from before this one's view are answered by it; a failed one's
                    // are stale here (`tests/adversarial_checkpoint_drop2.rs`).
                    db.inner.checkpoint_missed.store(false, Ordering::Release);
                    let written = futures::executor::block_on(db.run_auto_checkpoint());
                    // Asked for again while it ran: what was logged meanwhile may be due
                    // already (a burst of aborted spills asks for nothing once it ends:
                    // `tests/adversarial_checkpoint_drop.rs`). Asked for before `finished`,
                    // so `wait_idle` waits for that one too. Only after a success (a failing
                    // one is asked for again by the next commit, not in a loop), and only if
                    // asked (the checkpoint's own entry is log too).
                    if written && db.inner.checkpoint_missed.swap(false, Ordering::AcqRel) {
                        db.maybe_checkpoint();
                    }
                    thread_signal.finished();
                }
            })?;
        Ok(Checkpointer {
            signal,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.signal.stop();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the checkpoint thread panicked");
        }
    }
}
