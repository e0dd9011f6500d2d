//! The writer's wake an append owes it ([`WriterWake`]), and a committer's drive
//! ([`Drive`]) when it writes its own append instead.

use std::time::Instant;

use super::Queue;
use crate::writer::baton::Baton;

/// A wake of the writer an append owes it, done when dropped (or by [`WriterWake::wake`]).
///
/// An append wakes the writer only when it waits for work; a caller that holds a lock of
/// its own around the append (the engine's commit ordering) drops this after releasing it,
/// so the wake's syscall is not made while other appenders wait for that lock. Until then
/// the writer may sleep on work already queued: keep the guard for no longer than that.
///
/// The guard of an append made to be driven ([`crate::Wal::append_closed_by_driving`])
/// that found the writer idle can write the append on the caller's thread instead
/// ([`WriterWake::drive`]); dropped, it wakes the writer as any other.
#[derive(Debug)]
#[must_use = "dropping the guard wakes the writer: drop it when the caller's own locks are released"]
pub struct WriterWake<'a> {
    pub(super) queue: &'a Queue,
    pub(super) waiting: bool,
    pub(super) parked: bool,
    /// The append found the writer idle and may be driven (with the writer's baton).
    pub(super) drive: Option<Drive<'a>>,
    pub(super) baton: Option<&'a Baton>,
}

impl<'a> WriterWake<'a> {
    /// Wakes the writer now, if the append found it waiting.
    pub fn wake(self) {
        drop(self);
    }

    /// Blocks this thread until `until` (the append's future) resolves or none of its
    /// writes is in flight: when the append found the writer idle, this thread writes (and
    /// syncs, as the append's durability asks) what is queued, the append among it, as
    /// [`crate::Wal::append_wait`] does; else it wakes the writer and returns. Then wait for
    /// the future. Never from an async task: it can wait in `fdatasync`.
    pub fn drive(mut self, until: &crate::CommitFuture) {
        if let (Some(drive), Some(baton)) = (self.drive.take(), self.baton) {
            baton.drive(until, drive);
        }
    }

    /// The writer's baton, for [`WriterWake::drive`].
    pub(crate) fn with_baton(mut self, baton: &'a Baton) -> Self {
        self.baton = Some(baton);
        self
    }
}

impl Drop for WriterWake<'_> {
    fn drop(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.queue.writer_wake.notify_one();
        }
        if std::mem::take(&mut self.parked)
            && let Some(wake) = &self.queue.backend_waker.0
        {
            wake();
        }
        // An undriven `drive` wakes the writer as it drops.
    }
}

/// A committer that found the writer idle writes its append itself, with the writer's
/// baton ([`crate::writer::baton`]). Ended with what it left the writer thread
/// ([`Drive::end`]); dropped unended (the baton was taken, or the driving panicked), it
/// wakes the writer for the queued append.
#[derive(Debug)]
#[must_use = "the append waits for a writer: drive it, or drop this to wake the writer"]
pub(crate) struct Drive<'a> {
    pub(super) queue: &'a Queue,
    pub(super) ended: bool,
}

impl Drive<'_> {
    /// The drive is over: `left` says work is left to the writer thread (chains in flight,
    /// records staged, a sync due), `deadline` when the idle writer must look again.
    pub(crate) fn end(mut self, left: bool, deadline: Option<Instant>) {
        self.ended = true;
        self.queue.end_drive(left, deadline);
    }
}

impl Drop for Drive<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.queue.end_drive(true, None);
        }
    }
}
