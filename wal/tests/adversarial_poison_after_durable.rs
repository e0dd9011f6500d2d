//! A failure that poisons the log never fails what was already durable (found reviewing the
//! weaker per-commit durability of dba7663, whose barriers are waits for earlier records):
//!
//! - Two chains reaped in one turn, one synced and the other failing: the synced one proves
//!   nothing, since it may have run after the failed sync dropped its pages and a file
//!   reports a writeback error to one sync only (fsyncgate; `adversarial_post_poison.rs`).
//!   Both commits fail, in either order of the completions, and nothing is published
//!   durable. (An earlier rule resolved the synced one `Ok`; that acknowledged, in one
//!   ordering, a commit a power loss then lost.)
//! - A barrier (`Wal::barrier`) through records already durable, taken by the writer after
//!   the log was poisoned, resolves `Ok` (it used to be refused with the poison).
//!
//! The interleaving is forced with a backend whose completions the test holds back and
//! hands back together, failing the sync of the chain it names.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use keel_wal::backend::std_io::StdBackend;
use keel_wal::backend::{Backend, BackendKind, Chain, ChainError, Completion, Waker};
use keel_wal::{BackendChoice, Durability, Error, RunId, Storage, WalEntry, WalOptions};

const WATCHDOG: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct State {
    /// Completions are held back while set.
    hold: bool,
    /// Record chains submitted so far.
    submitted: u64,
    /// The sync of the record chain with this submission number (from 1) fails.
    fail: Option<u64>,
    /// Completions are handed back newest first.
    reversed: bool,
    /// The writer waits in the backend for a completion held back.
    parked: bool,
    woken: bool,
}

#[derive(Debug, Default)]
struct Control {
    state: Mutex<State>,
    changed: Condvar,
}

impl Control {
    fn set(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.state.lock().unwrap());
        self.changed.notify_all();
    }

    fn wait_until(&self, what: &str, ready: impl Fn(&State) -> bool) {
        let state = self.state.lock().unwrap();
        let (state, timeout) = self
            .changed
            .wait_timeout_while(state, WATCHDOG, |s| !ready(s))
            .unwrap();
        assert!(!timeout.timed_out(), "{what}: {state:?}");
    }
}

#[derive(Debug)]
struct HeldBackend {
    inner: StdBackend,
    ready: Vec<Completion>,
    control: Arc<Control>,
}

impl Backend for HeldBackend {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    fn depth(&self) -> usize {
        8
    }

    fn in_flight(&self) -> usize {
        self.ready.len()
    }

    fn submit(&mut self, chain: Chain) {
        let fails = {
            let mut state = self.control.state.lock().unwrap();
            if !chain.witness {
                state.submitted += 1;
            }
            !chain.witness && chain.sync && state.fail == Some(state.submitted)
        };
        self.control.changed.notify_all();
        let id = chain.id;
        let mut done = Vec::new();
        self.inner.submit(chain);
        self.inner.wait(0, &mut done);
        for mut completion in done {
            if fails && completion.id == id {
                completion.result = Err(ChainError {
                    operation: "fdatasync",
                    error: std::io::Error::other("injected sync failure"),
                });
            }
            self.ready.push(completion);
        }
    }

    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) {
        let mut state = self.control.state.lock().unwrap();
        loop {
            if !state.hold {
                if state.reversed {
                    self.ready.reverse();
                }
                out.append(&mut self.ready);
            }
            if out.len() >= min || std::mem::take(&mut state.woken) {
                state.parked = false;
                return;
            }
            state.parked = true;
            self.control.changed.notify_all();
            state = self.control.changed.wait(state).unwrap();
        }
    }

    fn waker(&self) -> Option<Waker> {
        let control = Arc::clone(&self.control);
        Some(Arc::new(move || control.set(|s| s.woken = true)))
    }
}

#[derive(Debug)]
struct HeldStorage {
    control: Arc<Control>,
}

impl Storage for HeldStorage {
    fn backend(&self, _: BackendChoice, _: usize) -> keel_wal::Result<Box<dyn Backend>> {
        Ok(Box::new(HeldBackend {
            inner: StdBackend::default(),
            ready: Vec::new(),
            control: Arc::clone(&self.control),
        }))
    }
}

/// Releases the hold however a test ends, so the writer's shutdown never waits on it.
struct Release(Arc<Control>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.set(|s| s.hold = false);
    }
}

fn entry(n: u64) -> WalEntry {
    WalEntry::Write {
        run_id: RunId::from_u128(1),
        txn_id: n,
        key: b"k".to_vec(),
        value: vec![7; 100],
    }
}

fn open(dir: &std::path::Path) -> (keel_wal::Wal, Arc<Control>) {
    let control = Arc::new(Control::default());
    let storage = Arc::new(HeldStorage {
        control: Arc::clone(&control),
    });
    let options = WalOptions {
        backend: BackendChoice::Std,
        witness_idle: None,
        storage,
        ..WalOptions::default()
    };
    (keel_recovery::open_wal(dir, options).unwrap(), control)
}

#[test]
fn a_synced_chain_reaped_with_a_failing_one_fails_too() {
    for reversed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (wal, control) = open(dir.path());
        control.set(|s| {
            s.hold = true;
            s.reversed = reversed;
        });
        let release = Release(Arc::clone(&control));
        let first = wal.append_with(&[entry(1)], Durability::Strict);
        control.wait_until("the first chain submitted", |s| s.submitted == 1);
        control.set(|s| s.fail = Some(2));
        let second = wal.append_with(&[entry(2)], Durability::Strict);
        control.wait_until("both chains in flight, the writer waiting", |s| {
            s.submitted == 2 && s.parked
        });
        drop(release);
        let first = first.wait();
        let second = second.wait();
        assert!(
            matches!(first, Err(Error::Poisoned { .. })),
            "reversed {reversed}: a sync reaped with a failed one proves nothing, yet {first:?}"
        );
        assert!(
            matches!(second, Err(Error::Poisoned { .. })),
            "reversed {reversed}: {second:?}"
        );
        assert_eq!(wal.durable_lsn(), 0, "reversed {reversed}");
        drop(wal);
    }
}

#[test]
fn a_barrier_through_durable_records_taken_after_a_poison_resolves_ok() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, control) = open(dir.path());
    let durable = wal.append_with(&[entry(1)], Durability::Strict).wait();
    assert_eq!(durable.unwrap(), 1);
    control.set(|s| {
        s.hold = true;
        s.fail = Some(2);
    });
    let release = Release(Arc::clone(&control));
    let failing = wal.append_with(&[entry(2)], Durability::Strict);
    control.wait_until("the failing chain in flight, the writer waiting", |s| {
        s.submitted == 2 && s.parked
    });
    // Queued while the writer takes nothing: it is staged after the failure is reaped.
    wal.hold_writer(true);
    let barrier = wal.barrier(1, Durability::Strict);
    drop(release);
    assert!(matches!(failing.wait(), Err(Error::Poisoned { .. })));
    wal.hold_writer(false);
    let barrier = barrier.wait();
    assert_eq!(
        barrier.as_ref().ok(),
        Some(&1),
        "LSN 1 was durable before the poison, yet {barrier:?}"
    );
    drop(wal);
}
