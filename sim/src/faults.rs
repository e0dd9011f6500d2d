//! Fault injection at the backend interface, for tests of every backend, as a
//! [`keel_wal::Storage`] over the real file system: a chosen write or
//! fdatasync fails with an error instead of being performed, and completions can be held back
//! and reported out of order (as a pipelined backend reports them), so the writer's
//! watermarks are exercised on any backend.
//!
//! The countdowns of record writes and syncs do not count durable-witness chains (written
//! after an idle delay, so their number depends on timing); [`Faults::fail_witness_after`]
//! aims at those.

use std::io;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use keel_wal::backend::uring_faults::trips;
use keel_wal::backend::{self, Backend, BackendKind, Chain, ChainError, Completion, Waker};
use keel_wal::{BackendChoice, Storage, UringFaults};

/// Which operations to fail. Counters count down per operation; a counter at 0 fails that
/// operation (once) and disarms; a negative counter is disarmed.
#[derive(Debug)]
pub struct Faults {
    write_countdown: AtomicI64,
    sync_countdown: AtomicI64,
    witness_countdown: AtomicI64,
    held_completions: AtomicUsize,
    uring: Arc<UringFaults>,
    salt_seed: AtomicU64,
    /// Itself, for the backends it wraps.
    me: Weak<Faults>,
}

impl Faults {
    /// A fault plan with nothing armed.
    pub fn new() -> Arc<Faults> {
        Arc::new_cyclic(|me| Faults {
            write_countdown: AtomicI64::new(-1),
            sync_countdown: AtomicI64::new(-1),
            witness_countdown: AtomicI64::new(-1),
            held_completions: AtomicUsize::new(0),
            uring: Arc::new(UringFaults::default()),
            salt_seed: AtomicU64::new(0),
            me: me.clone(),
        })
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
        self.uring.fail_probe();
    }

    /// See [`UringFaults::short_writes`].
    pub fn uring_short_writes(&self, on: bool) {
        self.uring.short_writes(on);
    }

    /// See [`UringFaults::ring_only`].
    pub fn uring_ring_only(&self, on: bool) {
        self.uring.ring_only(on);
    }

    /// See [`UringFaults::refuse_direct`].
    pub fn uring_refuse_direct(&self, on: bool) {
        self.uring.refuse_direct(on);
    }

    /// See [`UringFaults::fail_write_after`].
    pub fn fail_uring_write_after(&self, after: u32) {
        self.uring.fail_write_after(after);
    }

    /// See [`UringFaults::fail_sync_after`].
    pub fn fail_uring_sync_after(&self, after: u32) {
        self.uring.fail_sync_after(after);
    }

    /// See [`UringFaults::fail_enter_after`].
    pub fn fail_uring_enter_after(&self, after: u32) {
        self.uring.fail_enter_after(after);
    }

    /// Segment salts (and a new log's id) derived from `seed` instead of random ones (0:
    /// random), so the same workload writes byte-identical segments on every backend.
    pub fn deterministic_salts(&self, seed: u64) {
        self.salt_seed.store(seed, Ordering::SeqCst);
    }

    fn held(&self) -> usize {
        self.held_completions.load(Ordering::SeqCst)
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
        if chain.write.is_some() && trips(writes) {
            self.finished.push(Self::injected(chain, "write"));
        } else if chain.sync && trips(syncs) {
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

    fn waker(&self) -> Option<Waker> {
        self.inner.waker()
    }

    fn direct_refused(&self) -> u64 {
        self.inner.direct_refused()
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

impl Storage for Faults {
    /// The real backend `options` ask for (io_uring with this plan's faults armed), wrapped
    /// in the injector.
    fn backend(
        &self,
        choice: BackendChoice,
        io_depth: usize,
    ) -> keel_wal::Result<Box<dyn Backend>> {
        let inner = backend::build(choice, io_depth, Some(&self.uring))?;
        let faults = self.me.upgrade().expect("a fault plan in use is alive");
        Ok(Box::new(FaultyBackend::new(inner, faults)))
    }

    fn seed(&self) -> Option<u64> {
        Some(self.salt_seed.load(Ordering::SeqCst)).filter(|&s| s != 0)
    }
}
