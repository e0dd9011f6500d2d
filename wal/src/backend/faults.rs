//! Fault injection at the backend interface, for tests of every backend: a chosen write or
//! fdatasync fails with an error instead of being performed, and completions can be held back
//! and reported out of order (as a pipelined backend reports them), so the writer's
//! watermarks are exercised on any backend.
//!
//! The countdowns of record writes and syncs do not count durable-witness chains (written
//! after an idle delay, so their number depends on timing); [`Faults::fail_witness_after`]
//! aims at those.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use super::{Backend, BackendKind, Chain, ChainError, Completion};

/// Which operations to fail. Counters count down per operation; a counter at 0 fails that
/// operation (once) and disarms; a negative counter is disarmed.
#[derive(Debug)]
pub struct Faults {
    write_countdown: AtomicI64,
    sync_countdown: AtomicI64,
    witness_countdown: AtomicI64,
    held_completions: AtomicUsize,
    uring_probe_fails: AtomicBool,
    uring_short_writes: AtomicBool,
    uring_ring_only: AtomicBool,
    uring_bad_fd_countdown: AtomicI64,
    uring_bad_sync_fd_countdown: AtomicI64,
    uring_enter_countdown: AtomicI64,
    salt_seed: AtomicU64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            write_countdown: AtomicI64::new(-1),
            sync_countdown: AtomicI64::new(-1),
            witness_countdown: AtomicI64::new(-1),
            held_completions: AtomicUsize::new(0),
            uring_probe_fails: AtomicBool::new(false),
            uring_short_writes: AtomicBool::new(false),
            uring_ring_only: AtomicBool::new(false),
            uring_bad_fd_countdown: AtomicI64::new(-1),
            uring_bad_sync_fd_countdown: AtomicI64::new(-1),
            uring_enter_countdown: AtomicI64::new(-1),
            salt_seed: AtomicU64::new(0),
        }
    }
}

impl Faults {
    /// A fault plan with nothing armed.
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    /// The write `after` writes from now fails with EIO (0: the next one).
    pub fn fail_write_after(&self, after: u32) {
        self.write_countdown.store(after.into(), Ordering::SeqCst);
    }

    /// The fdatasync `after` syncs from now fails with EIO (0: the next one).
    pub fn fail_sync_after(&self, after: u32) {
        self.sync_countdown.store(after.into(), Ordering::SeqCst);
    }

    /// The fdatasync of the durable-witness chain `after` witness chains from now fails with
    /// EIO (0: the next one).
    pub fn fail_witness_after(&self, after: u32) {
        self.witness_countdown.store(after.into(), Ordering::SeqCst);
    }

    /// Lets up to `chains` chains be in flight and reports their completions newest first,
    /// one at a time, so every chain but the oldest completes ahead of an earlier one
    /// (0: report each as it completes).
    pub fn hold_completions(&self, chains: usize) {
        self.held_completions.store(chains, Ordering::SeqCst);
    }

    /// The io_uring probe at open fails, as where io_uring is disabled or filtered.
    pub fn fail_uring_probe(&self) {
        self.uring_probe_fails.store(true, Ordering::SeqCst);
    }

    #[cfg_attr(
        not(all(target_os = "linux", feature = "uring")),
        expect(dead_code, reason = "read by the uring backend only")
    )]
    pub(crate) fn uring_probe_fails(&self) -> bool {
        self.uring_probe_fails.load(Ordering::SeqCst)
    }

    /// The io_uring backend submits each write with half its length first, so that every
    /// write comes back short and must be reissued before its sync counts.
    pub fn uring_short_writes(&self, on: bool) {
        self.uring_short_writes.store(on, Ordering::SeqCst);
    }

    #[cfg_attr(
        not(all(target_os = "linux", feature = "uring")),
        expect(dead_code, reason = "read by the uring backend only")
    )]
    pub(crate) fn uring_short_writes_on(&self) -> bool {
        self.uring_short_writes.load(Ordering::SeqCst)
    }

    /// The io_uring backend sends every chain through the ring, never the direct path it
    /// takes for a chain alone in flight, so tests exercise the ring with one committer.
    pub fn uring_ring_only(&self, on: bool) {
        self.uring_ring_only.store(on, Ordering::SeqCst);
    }

    #[cfg_attr(
        not(all(target_os = "linux", feature = "uring")),
        expect(dead_code, reason = "read by the uring backend only")
    )]
    pub(crate) fn uring_ring_only_on(&self) -> bool {
        self.uring_ring_only.load(Ordering::SeqCst)
    }

    /// The io_uring write `after` writes from now (0: the next) is submitted on an invalid
    /// file descriptor, so the kernel fails it (EBADF) and cancels its linked sync: a real
    /// error travelling through the ring.
    pub fn fail_uring_write_after(&self, after: u32) {
        self.uring_bad_fd_countdown
            .store(after.into(), Ordering::SeqCst);
    }

    #[cfg_attr(
        not(all(target_os = "linux", feature = "uring")),
        expect(dead_code, reason = "read by the uring backend only")
    )]
    pub(crate) fn uring_bad_fd_trips(&self) -> bool {
        Self::trips(&self.uring_bad_fd_countdown)
    }

    /// The io_uring fdatasync `after` syncs from now (0: the next) is submitted on an invalid
    /// file descriptor, so the kernel fails it (EBADF): a real sync error travelling through
    /// the ring. With [`Faults::uring_short_writes`] the sync runs after a write the kernel
    /// saw as complete (it was asked for half), so both the write's and the sync's outcome
    /// reach the same round.
    pub fn fail_uring_sync_after(&self, after: u32) {
        self.uring_bad_sync_fd_countdown
            .store(after.into(), Ordering::SeqCst);
    }

    #[cfg_attr(
        not(all(target_os = "linux", feature = "uring")),
        expect(dead_code, reason = "read by the uring backend only")
    )]
    pub(crate) fn uring_bad_sync_fd_trips(&self) -> bool {
        Self::trips(&self.uring_bad_sync_fd_countdown)
    }

    /// The io_uring_enter `after` calls from now (0: the next) is performed, waits until every
    /// operation the kernel holds has completed, and then reports a hard failure: the ring is
    /// abandoned while the completions of its chains are still to be reaped.
    pub fn fail_uring_enter_after(&self, after: u32) {
        self.uring_enter_countdown
            .store(after.into(), Ordering::SeqCst);
    }

    #[cfg_attr(
        not(all(target_os = "linux", feature = "uring")),
        expect(dead_code, reason = "read by the uring backend only")
    )]
    pub(crate) fn uring_enter_trips(&self) -> bool {
        Self::trips(&self.uring_enter_countdown)
    }

    /// Segment salts derived from `seed` instead of random ones (0: random), so the same
    /// workload writes byte-identical segments on every backend.
    pub fn deterministic_salts(&self, seed: u64) {
        self.salt_seed.store(seed, Ordering::SeqCst);
    }

    pub(crate) fn salt_seed(&self) -> Option<u64> {
        Some(self.salt_seed.load(Ordering::SeqCst)).filter(|&s| s != 0)
    }

    fn held(&self) -> usize {
        self.held_completions.load(Ordering::SeqCst)
    }

    fn trips(counter: &AtomicI64) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n >= 0).then_some(n - 1)
            })
            .is_ok_and(|previous| previous == 0)
    }
}

/// A countdown never armed.
static NEVER: AtomicI64 = AtomicI64::new(-1);

/// Wraps a backend and fails the operations its [`Faults`] plan names.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: Box<dyn Backend>,
    faults: Arc<Faults>,
    /// Completions not yet reported.
    finished: Vec<Completion>,
}

impl FaultyBackend {
    pub fn new(inner: Box<dyn Backend>, faults: Arc<Faults>) -> Self {
        FaultyBackend {
            inner,
            faults,
            finished: Vec::new(),
        }
    }

    fn injected(chain: Chain, operation: &'static str) -> Completion {
        let error = io::Error::other(format!("injected {operation} failure"));
        let buf = chain.write.map(|w| w.buf);
        Completion {
            id: chain.id,
            result: Err(ChainError { operation, error }),
            buf,
        }
    }
}

impl Backend for FaultyBackend {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    fn depth(&self) -> usize {
        self.inner.depth().max(self.faults.held())
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.finished.len()
    }

    fn submit(&mut self, chain: Chain) {
        let (writes, syncs) = match chain.witness {
            false => (&self.faults.write_countdown, &self.faults.sync_countdown),
            true => (&NEVER, &self.faults.witness_countdown),
        };
        if chain.write.is_some() && Faults::trips(writes) {
            self.finished.push(Self::injected(chain, "write"));
        } else if chain.sync && Faults::trips(syncs) {
            let id = chain.id;
            self.inner.submit(Chain {
                sync: false,
                ..chain
            });
            let mut done = Vec::new();
            while !done.iter().any(|c: &Completion| c.id == id) {
                let in_flight = self.inner.in_flight();
                self.inner.wait(in_flight, &mut done);
            }
            for mut completion in done {
                if completion.id == id && completion.result.is_ok() {
                    let error = io::Error::other("injected fdatasync failure");
                    completion.result = Err(ChainError {
                        operation: "fdatasync",
                        error,
                    });
                }
                self.finished.push(completion);
            }
        } else {
            self.inner.submit(chain);
        }
    }

    fn waker(&self) -> Option<super::Waker> {
        self.inner.waker()
    }

    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) {
        let hold = self.faults.held();
        if hold > 0 {
            while self.inner.in_flight() > 0 {
                let in_flight = self.inner.in_flight();
                self.inner.wait(in_flight, &mut self.finished);
            }
            if min > 0 || self.finished.len() >= hold {
                let release = min.max(1).min(self.finished.len());
                let newest = self.finished.len() - release;
                out.extend(self.finished.drain(newest..).rev());
            }
            return;
        }
        let from_finished = self.finished.len();
        out.append(&mut self.finished);
        let still = min
            .saturating_sub(from_finished)
            .min(self.inner.in_flight());
        self.inner.wait(still, out);
    }
}
