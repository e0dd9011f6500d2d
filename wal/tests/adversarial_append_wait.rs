//! Adversarial tests of leader/follower commits (`Wal::append_wait`): a committer that finds
//! the writer idle writes its own append on its own thread. It must not run other commits'
//! callbacks there (`append_placed`'s `placed`, `CommitFuture::on_resolved`, a refusal's):
//! they belong to the writer thread, and inside a committer's `append_wait` they run under
//! whatever locks that caller holds (one that takes such a lock deadlocks), and a panic in
//! one unwinds through a caller whose own commit is durable.
//!
//! A committer is parked deterministically between finding the writer idle and taking the
//! queue (the window any preemption opens) by a backend whose `in_flight` blocks on a gate for
//! one named thread; meanwhile another component queues a commit with callbacks.

mod common;

use std::sync::{Arc, Mutex, TryLockError, mpsc};

use common::gate::Gate;
use common::{LIMIT, within};
use keel_sim::Faults;
use keel_wal::backend::{Backend, BackendKind, Chain, Completion, Waker};
use keel_wal::{BackendChoice, Durability, Error, Lsn, Storage, Wal, WalOptions};

/// The thread that drives in these tests.
const COMMITTER: &str = "keel-test-committer";
/// The log's own writer thread.
const WRITER: &str = "keel-wal-writer";

/// A real backend whose `in_flight` (the first thing a drive asks, before its take) stops
/// at the gate.
#[derive(Debug)]
struct GatedBackend {
    inner: Box<dyn Backend>,
    gate: Arc<Gate>,
}

impl Backend for GatedBackend {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    fn depth(&self) -> usize {
        self.inner.depth()
    }
    fn in_flight(&self) -> usize {
        self.gate.pass(None);
        self.inner.in_flight()
    }
    fn submit(&mut self, chain: Chain) {
        self.inner.submit(chain);
    }
    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) {
        self.inner.wait(min, out);
    }
    fn waker(&self) -> Option<Waker> {
        self.inner.waker()
    }
}

/// The real file system, with the gated backend (over a fault injector).
#[derive(Debug)]
struct GatedStorage {
    gate: Arc<Gate>,
    faults: Arc<Faults>,
}

impl Storage for GatedStorage {
    fn backend(
        &self,
        choice: BackendChoice,
        io_depth: usize,
    ) -> keel_wal::Result<Box<dyn Backend>> {
        Ok(Box::new(GatedBackend {
            inner: self.faults.backend(choice, io_depth)?,
            gate: Arc::clone(&self.gate),
        }))
    }
}

/// A committer, holding `order` (its own lock, say the one that orders its commits), calls
/// `append_wait` while the writer is idle, so it drives; parked at the gate before its take,
/// it lets `foreign` queue another component's commit. Returns what the committer's
/// `append_wait` gave (`Err`: it panicked) and the log.
fn drive_beside(
    backend: BackendChoice,
    order: &Arc<Mutex<()>>,
    faults: &Arc<Faults>,
    foreign: impl FnOnce(&Arc<Wal>),
) -> (
    std::thread::Result<keel_wal::Result<Lsn>>,
    Arc<Wal>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let options = WalOptions {
        durability: Durability::Strict,
        // Nothing but the appends wakes the writer: the committer finds it idle.
        witness_idle: None,
        storage: Arc::new(GatedStorage {
            gate: Arc::clone(&gate),
            faults: Arc::clone(faults),
        }),
        ..common::small_options(backend)
    };
    let wal = Arc::new(keel_recovery::open_wal(dir.path(), options).unwrap());
    common::wait_until_idle(&wal);
    gate.arm(COMMITTER, None);
    let committer = {
        let (wal, order) = (Arc::clone(&wal), Arc::clone(order));
        std::thread::Builder::new()
            .name(COMMITTER.into())
            .spawn(move || {
                let _ordered = order.lock().unwrap_or_else(|e| e.into_inner());
                wal.append_wait(&[common::write(1, 1, "own", 100)])
            })
            .unwrap()
    };
    gate.wait_parked();
    foreign(&wal);
    gate.open();
    let outcome = within(LIMIT, "the driving committer", move || committer.join());
    (outcome, wal, dir)
}

/// What a callback that takes `order` found: run on the thread holding it, where `lock`
/// never returns (a deadlock), or elsewhere, where it waits its turn.
fn take_order(order: &Mutex<()>) -> Result<String, String> {
    let here = std::thread::current().name().unwrap_or("?").to_string();
    match order.try_lock() {
        Ok(_) => Ok(here),
        Err(TryLockError::WouldBlock) if here == COMMITTER => Err(format!(
            "ran on {here}, inside its append_wait, while it held its own lock: \
             taking that lock there deadlocks"
        )),
        Err(TryLockError::WouldBlock) => {
            drop(order.lock().unwrap_or_else(|e| e.into_inner()));
            Ok(here)
        }
        Err(TryLockError::Poisoned(_)) => Ok(here),
    }
}

/// `on_resolved` of a commit queued beside a drive runs on the writer thread, where it waits
/// its turn for the committer's lock (as with `append(..).wait()`); resolved by the driving
/// committer inside its `append_wait`, the same callback deadlocks.
#[test]
fn a_foreign_on_resolved_callback_never_runs_inside_append_wait() {
    for backend in common::backends() {
        let order = Arc::new(Mutex::new(()));
        let (seen, outcome) = mpsc::channel();
        let (committed, wal, _dir) = drive_beside(backend, &order, &Faults::new(), |wal| {
            let order = Arc::clone(&order);
            wal.append(&[common::write(2, 1, "foreign", 100)])
                .on_resolved(move |outcome| {
                    let _ = seen.send((take_order(&order), outcome.is_ok()));
                });
        });
        let lsn = committed.expect("the committer panicked").unwrap();
        assert!(wal.durable_lsn() >= lsn, "{backend:?}");
        let (thread, ok) = outcome.recv_timeout(LIMIT).expect("the callback never ran");
        let thread =
            thread.unwrap_or_else(|e| panic!("{backend:?}: the foreign commit's callback {e}"));
        assert_eq!(thread, WRITER, "{backend:?}");
        assert!(ok, "{backend:?}");
    }
}

/// `append_placed` promises `placed` on the writer thread; a driving committer that took the
/// placed append would stage it, and call `placed`, on its own thread inside `append_wait`.
#[test]
fn a_foreign_placed_callback_runs_on_the_writer_thread() {
    for backend in common::backends() {
        let order = Arc::new(Mutex::new(()));
        let (seen, placed) = mpsc::channel();
        let (committed, wal, _dir) = drive_beside(backend, &order, &Faults::new(), |wal| {
            let order = Arc::clone(&order);
            let batch = wal.encode(&[common::write(2, 1, "placed", 100)]).unwrap();
            drop(wal.append_placed(batch, Durability::Strict, move |_| {
                let _ = seen.send(take_order(&order));
            }));
        });
        committed.expect("the committer panicked").unwrap();
        let thread = placed.recv_timeout(LIMIT).expect("placed never ran");
        let thread = thread.unwrap_or_else(|e| panic!("{backend:?}: the placed callback {e}"));
        assert_eq!(thread, WRITER, "{backend:?}");
        drop(wal);
    }
}

/// A panic in another commit's callback is the writer's (it stops, as before); it must not
/// unwind through a committer whose own commit is durable.
#[test]
fn a_foreign_callback_panic_does_not_unwind_through_append_wait() {
    for backend in common::backends() {
        let order = Arc::new(Mutex::new(()));
        let (committed, wal, _dir) = drive_beside(backend, &order, &Faults::new(), |wal| {
            wal.append(&[common::write(2, 1, "foreign", 100)])
                .on_resolved(|_| panic!("a foreign callback panics"));
        });
        let own = committed.unwrap_or_else(|_| {
            panic!("{backend:?}: append_wait panicked with another commit's callback panic")
        });
        let lsn = own.unwrap();
        assert!(wal.durable_lsn() >= lsn, "{backend:?}");
    }
}

/// A drive whose write fails poisons the log; the commit queued beside it is refused, and its
/// callback told so, by the writer thread, not by the committer on its way out of its own
/// failed `append_wait`.
#[test]
fn a_foreign_commit_refused_after_a_failed_drive_is_told_on_the_writer_thread() {
    for backend in common::backends() {
        let order = Arc::new(Mutex::new(()));
        let faults = Faults::new();
        faults.fail_write_after(0);
        let (seen, outcome) = mpsc::channel();
        let (committed, _wal, _dir) = drive_beside(backend, &order, &faults, |wal| {
            let order = Arc::clone(&order);
            wal.append(&[common::write(2, 1, "foreign", 100)])
                .on_resolved(move |outcome| {
                    let _ = seen.send((take_order(&order), outcome));
                });
        });
        let own = committed.expect("the committer panicked");
        assert!(
            matches!(own, Err(Error::Poisoned { .. })),
            "{backend:?}: {own:?}"
        );
        let (thread, foreign) = outcome.recv_timeout(LIMIT).expect("the callback never ran");
        let thread =
            thread.unwrap_or_else(|e| panic!("{backend:?}: the refused commit's callback {e}"));
        assert_eq!(thread, WRITER, "{backend:?}");
        assert!(
            matches!(foreign, Err(Error::Poisoned { .. })),
            "{backend:?}: {foreign:?}"
        );
    }
}
