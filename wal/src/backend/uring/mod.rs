//! The io_uring backend (Linux, the default there): the `io-uring` crate driven from the
//! writer's own thread.
//!
//! Each chain becomes one `Write` linked (`IO_LINK`) to an `Fsync` with `DATASYNC`, so the
//! sync starts only after its write completed, and up to [`UringBackend::depth`] chains are in
//! flight at once. Completions are returned in whatever order the kernel posts them; the writer
//! advances its watermarks over the contiguous prefix only.
//!
//! A chain is settled in *rounds*. A round is the set of operations submitted together; when
//! all of a round's operations have completed, the round is judged ([`judge_round`]):
//!
//! | write outcome                 | sync outcome                   | next                          |
//! |-------------------------------|--------------------------------|-------------------------------|
//! | failed (not retryable)        | any (usually ECANCELED)        | the chain fails: `write`      |
//! | short, or EINTR / EAGAIN      | failed (not retryable)         | the chain fails: `fdatasync`  |
//! | short, or EINTR / EAGAIN      | none, done, ECANCELED, EINTR, EAGAIN | new round: rest + a new sync |
//! | complete                      | failed (not retryable)         | the chain fails: `fdatasync`  |
//! | complete                      | ECANCELED, EINTR, EAGAIN       | new round: the sync alone     |
//! | complete                      | done, or no sync               | the chain succeeds            |
//!
//! A sync counts only if the whole write completed before it was submitted: a sync that
//! succeeded after a short write is ignored and reissued after the rest. Failed syncs are never
//! retried, whatever the write did (after a failed fdatasync the kernel may have dropped the
//! dirty pages, so a later "successful" sync proves nothing). A kernel cancels the sync linked
//! to a write it saw come back short, but a sync can still run after a short write (one the
//! kernel saw complete, as the short-write fault submits it), and its error counts. See
//! [`classify`] for the errno table.
//!
//! Buffers are owned by the chain until the kernel has posted every completion that refers to
//! them, also when the log is poisoned or the backend dropped mid-flight: `Drop` waits.
//!
//! The fsync trap: the kernel cannot run an fsync inline and hands every ring fsync to an
//! `iou-wrk` thread, which costs tens of microseconds a commit. A chain that would be alone in
//! flight (the writer says so with [`Chain::alone`]) therefore runs directly on this thread,
//! as the std backend would; the ring pays off when chains overlap.
//!
//! While the writer waits for completions, new requests must still start promptly: a
//! `PollAdd` on an eventfd stays armed in the ring, and the queue writes to the eventfd
//! ([`Backend::waker`]) when the writer is parked in the ring.
//!
//! The module's rooms: `setup.rs` (the ring, its probe, the eventfd), `submit.rs` (rounds
//! pushed, io_uring_enter, an abandoned ring), `complete.rs` (completions reaped, rounds
//! settled), `wake.rs` (the eventfd poll), and `round.rs` (the round and errno tables as pure
//! functions).

mod complete;
mod round;
mod setup;
mod submit;
#[cfg(test)]
mod tests;
mod wake;

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use io_uring::IoUring;

use super::uring_faults::UringFaults;
use super::{Backend, BackendKind, Chain, ChainError, Completion, Waker, std_io};

pub use round::{Action, RoundVerdict, WriteOutcome, classify, judge_round};

/// Marks the eventfd poll's completion.
const WAKE: u64 = u64::MAX;
/// Operation tags in the low bits of a completion's user data.
const OP_WRITE: u64 = 0;
const OP_SYNC: u64 = 1;
/// Rounds a chain may take without the write making progress before it fails.
const MAX_IDLE_ROUNDS: u32 = 64;

/// Why io_uring cannot be used here, for the fallback warning or the "uring required" error.
pub fn probe(faults: Option<&Arc<UringFaults>>) -> Result<(), String> {
    UringBackend::new(1, faults).map(drop)
}

/// A chain the kernel may still be working on.
#[derive(Debug)]
struct InFlight {
    id: u64,
    file: Arc<super::IoFile>,
    buf: Option<Vec<u8>>,
    offset: u64,
    /// Bytes of `buf` known to be on their way to the file.
    written: usize,
    sync: bool,
    /// Operations of the current round not yet completed.
    pending: u8,
    /// Whether the current round holds a write, and its sync's result.
    round_write: bool,
    round_sync: Option<i32>,
    /// The write of this round stopped short or must be retried.
    write_again: bool,
    idle_rounds: u32,
    error: Option<ChainError>,
    /// A durable-witness chain: the test faults aimed at record chains pass it by.
    witness: bool,
}

/// io_uring with linked write→fdatasync chains.
pub struct UringBackend {
    ring: IoUring,
    depth: usize,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    ready: VecDeque<Completion>,
    wake: Arc<OwnedFd>,
    wake_armed: bool,
    woken: bool,
    /// Set once io_uring_enter failed hard: the ring is given up, every later chain fails
    /// with this error, and completions still posted for the abandoned chains are ignored.
    abandoned: Option<(io::ErrorKind, String)>,
    faults: Option<Arc<UringFaults>>,
}

impl UringBackend {
    fn occupied(&self) -> usize {
        self.depth - self.free.len()
    }
}

impl std::fmt::Debug for UringBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringBackend")
            .field("depth", &self.depth)
            .field("in_flight", &self.in_flight())
            .field("wake_armed", &self.wake_armed)
            .finish_non_exhaustive()
    }
}

impl Backend for UringBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Uring
    }

    fn depth(&self) -> usize {
        self.depth
    }

    fn in_flight(&self) -> usize {
        self.occupied() + self.ready.len()
    }

    fn submit(&mut self, chain: Chain) {
        assert!(self.in_flight() < self.depth, "more chains than the depth");
        if let Some(error) = self.abandoned_error() {
            let buf = chain.write.map(|w| w.buf);
            self.ready.push_back(Completion {
                id: chain.id,
                result: Err(error),
                buf,
            });
            return;
        }
        let direct_allowed = !self.faults.as_ref().is_some_and(|f| f.ring_only_on());
        if chain.alone && self.in_flight() == 0 && direct_allowed {
            let result = std_io::run_chain(&chain);
            self.ready.push_back(Completion {
                id: chain.id,
                result,
                buf: chain.write.map(|w| w.buf),
            });
            return;
        }
        let slot = self.free.pop().expect("a free slot below the depth");
        let (offset, buf) = chain
            .write
            .map_or((0, None), |write| (write.offset, Some(write.buf)));
        self.slots[slot] = Some(InFlight {
            id: chain.id,
            file: chain.file,
            buf,
            offset,
            written: 0,
            sync: chain.sync,
            pending: 0,
            round_write: false,
            round_sync: None,
            write_again: false,
            idle_rounds: 0,
            error: None,
            witness: chain.witness,
        });
        self.push_round(slot);
    }

    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) {
        self.woken = false;
        let mut got = 0;
        loop {
            self.drain_completions();
            got += self.ready.len();
            out.extend(self.ready.drain(..));
            if got >= min || self.woken || self.occupied() == 0 {
                return;
            }
            self.arm_wake();
            self.enter(1);
        }
    }

    fn waker(&self) -> Option<Waker> {
        Some(wake::waker(&self.wake))
    }
}

impl Drop for UringBackend {
    /// Buffers may not be freed while the kernel can still touch them: wait for every
    /// operation in flight. Their outcomes no longer matter to anyone.
    fn drop(&mut self) {
        while self.occupied() > 0 {
            self.enter(1);
            self.drain_completions();
            self.ready.clear();
        }
    }
}
