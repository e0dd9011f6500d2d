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
mod direct;
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
    UringBackend::new(1, false, faults).map(drop)
}

/// A chain the kernel may still be working on.
#[derive(Debug)]
struct InFlight {
    id: u64,
    file: Arc<super::IoFile>,
    buf: Option<Vec<u8>>,
    offset: u64,
    /// The write widened to whole blocks, written directly instead of `buf` (see
    /// `direct.rs`); with `dsync`, the chain's sync is the write's own.
    aligned: Option<direct::AlignedWrite>,
    /// Its first round was pushed (a direct write may be held behind another first).
    pushed: bool,
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

impl InFlight {
    /// The bytes its write puts in the file: the widened ones of a direct write.
    fn total(&self) -> usize {
        match &self.aligned {
            Some(aligned) => aligned.buf.len(),
            None => self.buf.as_ref().map_or(0, Vec::len),
        }
    }
}

/// io_uring with linked write→fdatasync chains.
pub struct UringBackend {
    /// Records written with `O_DIRECT` (`BackendChoice::UringDirect`): `None` on the plain
    /// ring.
    direct: Option<direct::DirectWrites>,
    /// Slots whose direct write waits for an earlier one of the same block, in order.
    held: VecDeque<usize>,
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

    /// The chain's write widened for a direct write, or `None` (the plain ring, no write, a
    /// witness in the header block, or a file written through the page cache).
    fn align(&mut self, chain: &Chain) -> io::Result<Option<direct::AlignedWrite>> {
        match (&mut self.direct, &chain.write) {
            (Some(direct), Some(write)) if !chain.witness => {
                let refuse = self.faults.as_ref().is_some_and(|f| f.refuse_direct_on());
                direct.prepare(&chain.file, write.offset, &write.buf, chain.sync, refuse)
            }
            _ => Ok(None),
        }
    }

    /// Whether a direct write pushed and not yet completed writes a block `aligned` writes.
    fn overlaps_in_flight(
        &self,
        file: &Arc<super::IoFile>,
        aligned: &direct::AlignedWrite,
    ) -> bool {
        let (first, last) = aligned.blocks();
        self.slots.iter().flatten().any(|c| {
            c.pushed
                && Arc::ptr_eq(&c.file, file)
                && c.aligned.as_ref().is_some_and(|a| {
                    let (a_first, a_last) = a.blocks();
                    a_first <= last && first <= a_last
                })
        })
    }

    /// Pushes the held direct writes, in order, that no longer overlap one in flight.
    fn release_held(&mut self) {
        while let Some(&slot) = self.held.front() {
            let chain = self.slots[slot].as_ref().expect("a held slot is occupied");
            let aligned = chain.aligned.as_ref().expect("only direct writes are held");
            if self.overlaps_in_flight(&chain.file, aligned) {
                return;
            }
            self.held.pop_front();
            self.slots[slot].as_mut().expect("occupied").pushed = true;
            self.push_round(slot);
        }
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
        match self.direct {
            Some(_) => BackendKind::UringDirect,
            None => BackendKind::Uring,
        }
    }

    fn direct_refused(&self) -> u64 {
        self.direct.as_ref().map_or(0, |direct| direct.refused)
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
        let aligned = match self.align(&chain) {
            Ok(aligned) => aligned,
            Err(error) => {
                self.ready.push_back(Completion {
                    id: chain.id,
                    result: Err(ChainError {
                        operation: "reading back the block a direct write starts in",
                        error,
                    }),
                    buf: chain.write.map(|w| w.buf),
                });
                return;
            }
        };
        let on_thread = !self.faults.as_ref().is_some_and(|f| f.ring_only_on());
        if chain.alone && self.in_flight() == 0 && on_thread {
            let result = match &aligned {
                Some(aligned) => direct::run_chain(&chain, aligned),
                None => std_io::run_chain(&chain),
            };
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
        // A direct write with its own sync needs no fdatasync after it.
        let sync = chain.sync && !aligned.as_ref().is_some_and(|a| a.dsync);
        let hold = aligned
            .as_ref()
            .is_some_and(|a| !self.held.is_empty() || self.overlaps_in_flight(&chain.file, a));
        self.slots[slot] = Some(InFlight {
            id: chain.id,
            file: chain.file,
            buf,
            offset,
            aligned,
            pushed: !hold,
            written: 0,
            sync,
            pending: 0,
            round_write: false,
            round_sync: None,
            write_again: false,
            idle_rounds: 0,
            error: None,
            witness: chain.witness,
        });
        if hold {
            self.held.push_back(slot);
        } else {
            self.push_round(slot);
        }
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
