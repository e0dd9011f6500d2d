//! Adversarial review of dba7663 (weaker durability per commit): an `Async` commit in a
//! `Strict` database resolves at its own point unless a commit ahead of it waits for a
//! stronger one; then it also waits for a log barrier.
//!
//! The barrier covered every record appended before the weak commit, not only the
//! stronger commits ahead of it: a weak commit queued behind a `Strict` one *and* another
//! weak one waited for that other weak commit to be synced too. Once the `Strict` commit was
//! durable, all three were applied (visible to every reader), but the last one's future
//! still waited for a sync nobody else needed; and when that sync failed (the log poisoned),
//! it resolved as an error although its effects had been visible since.
//!
//! The interleaving is forced with a backend that hands completions back one at a time, on
//! the test's say-so, and fails the sync chain it is told to.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::executor::block_on;
use keel::{BackendChoice, Database, Durability, Lsn, Options, RunId};
use keel_wal::Storage;
use keel_wal::backend::std_io::StdBackend;
use keel_wal::backend::{Backend, BackendKind, Chain, ChainError, Completion, Waker};

/// Bounds every wait on the writer (each returns as soon as the writer gets there).
const WATCHDOG: Duration = Duration::from_secs(60);

const ASYNC: Durability = Durability::Async {
    max_delay: Duration::from_secs(600),
};

#[derive(Debug)]
struct StepState {
    /// Record chains' completions handed back so far, and how many may be.
    handed: u64,
    allowed: u64,
    /// The next chain with a sync fails (not run) when set.
    fail_next_sync: bool,
    /// Chains submitted so far.
    submitted: u64,
    /// The writer waits in the backend with nothing it may take.
    parked: bool,
    woken: bool,
}

#[derive(Debug)]
struct Steps {
    state: Mutex<StepState>,
    changed: Condvar,
}

impl Steps {
    fn new() -> Arc<Self> {
        Arc::new(Steps {
            state: Mutex::new(StepState {
                handed: 0,
                allowed: u64::MAX,
                fail_next_sync: false,
                submitted: 0,
                parked: false,
                woken: false,
            }),
            changed: Condvar::new(),
        })
    }

    /// Hands back no more record chains than were handed so far.
    fn hold(&self) {
        let mut state = self.state.lock().unwrap();
        state.allowed = state.handed;
    }

    /// Lets `n` more chains complete.
    fn allow(&self, n: u64) {
        let mut state = self.state.lock().unwrap();
        state.allowed = state.allowed.saturating_add(n);
        drop(state);
        self.changed.notify_all();
    }

    fn fail_next_sync(&self) {
        self.state.lock().unwrap().fail_next_sync = true;
    }

    fn wait_until(&self, what: &str, ready: impl Fn(&StepState) -> bool) {
        let state = self.state.lock().unwrap();
        let (state, timeout) = self
            .changed
            .wait_timeout_while(state, WATCHDOG, |s| !ready(s))
            .unwrap();
        assert!(!timeout.timed_out(), "{what}: {state:?}");
    }
}

#[derive(Debug)]
struct SteppedBackend {
    inner: StdBackend,
    /// Record chains done, handed back in order as `Steps` allows.
    ready: VecDeque<Completion>,
    /// Witness chains done: handed back at once.
    witnesses: Vec<Completion>,
    steps: Arc<Steps>,
}

impl Backend for SteppedBackend {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    fn depth(&self) -> usize {
        8
    }

    fn in_flight(&self) -> usize {
        self.ready.len() + self.witnesses.len()
    }

    fn submit(&mut self, chain: Chain) {
        let mut state = self.steps.state.lock().unwrap();
        state.submitted += 1;
        let fail = chain.sync && !chain.witness && std::mem::take(&mut state.fail_next_sync);
        drop(state);
        self.steps.changed.notify_all();
        let witness = chain.witness;
        let mut done = Vec::new();
        if fail {
            done.push(Completion {
                id: chain.id,
                result: Err(ChainError {
                    operation: "fdatasync",
                    error: std::io::Error::other("injected sync failure"),
                }),
                buf: chain.write.map(|w| w.buf),
            });
        } else {
            self.inner.submit(chain);
            self.inner.wait(0, &mut done);
        }
        if witness {
            self.witnesses.append(&mut done);
        } else {
            self.ready.extend(done);
        }
    }

    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) {
        let mut state = self.steps.state.lock().unwrap();
        loop {
            out.append(&mut self.witnesses);
            while state.handed < state.allowed
                && let Some(done) = self.ready.pop_front()
            {
                state.handed += 1;
                out.push(done);
            }
            if out.len() >= min || std::mem::take(&mut state.woken) {
                state.parked = false;
                return;
            }
            state.parked = true;
            self.steps.changed.notify_all();
            state = self.steps.changed.wait(state).unwrap();
        }
    }

    fn waker(&self) -> Option<Waker> {
        let steps = Arc::clone(&self.steps);
        Some(Arc::new(move || {
            steps.state.lock().unwrap().woken = true;
            steps.changed.notify_all();
        }))
    }
}

#[derive(Debug)]
struct SteppedStorage {
    steps: Arc<Steps>,
}

impl Storage for SteppedStorage {
    fn backend(&self, _: BackendChoice, _: usize) -> keel_wal::Result<Box<dyn Backend>> {
        Ok(Box::new(SteppedBackend {
            inner: StdBackend::default(),
            ready: VecDeque::new(),
            witnesses: Vec::new(),
            steps: Arc::clone(&self.steps),
        }))
    }
}

/// Lets every chain complete when dropped, however a test ends (the writer's shutdown would
/// otherwise wait for completions held back).
struct Release(Arc<Steps>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.allow(u64::MAX);
    }
}

fn open(dir: &std::path::Path, steps: &Arc<Steps>) -> Database {
    let storage = Arc::new(SteppedStorage {
        steps: Arc::clone(steps),
    });
    let options = Options {
        durability: Durability::Strict,
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        checkpoint_log_bytes: 0,
        backend: BackendChoice::Std,
        storage,
        ..Options::default()
    };
    Database::open(dir, options).unwrap()
}

type Commit = Pin<Box<dyn Future<Output = keel::Result<Lsn>> + Send>>;

/// The commit's outcome if it resolves while the held syncs stay held, polled for up to
/// 10 s: the writer releases a commit's waiter a moment after the one before it, so a
/// single poll right after that one resolved could still find it pending. A commit that
/// waits for a held sync never resolves here, however long it is given.
fn resolves_meanwhile(commit: &mut Commit) -> Option<keel::Result<Lsn>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(outcome) = commit.now_or_never() {
            return Some(outcome);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn commit_of(db: &Database, run: RunId, key: &str, durability: Durability) -> Commit {
    let mut txn = db.transaction(run).unwrap();
    txn.put(key, "v").unwrap();
    Box::pin(txn.commit_with(durability))
}

/// `Strict` commit S (its write and sync in flight, held), then `Async` commits W1 and W2
/// behind it, each with a barrier. Returns them once the writer has taken all three, with
/// W1's sync set to fail when `fail_w1_sync`.
fn strict_then_two_weak(
    db: &Database,
    run: RunId,
    steps: &Arc<Steps>,
    fail_w1_sync: bool,
) -> (Commit, Commit, Commit) {
    steps.hold();
    let mut strict = commit_of(db, run, "strict", Durability::Strict);
    assert!(
        (&mut strict).now_or_never().is_none(),
        "S waits for its sync"
    );
    steps.wait_until("the writer never submitted S", |s| s.parked);
    let submitted = steps.state.lock().unwrap().submitted;
    if fail_w1_sync {
        steps.fail_next_sync();
    }
    let mut w1 = commit_of(db, run, "w1", ASYNC);
    assert!((&mut w1).now_or_never().is_none(), "W1 waits behind S");
    steps.wait_until("the writer never submitted W1", |s| {
        s.submitted > submitted && s.parked
    });
    let submitted = steps.state.lock().unwrap().submitted;
    let mut w2 = commit_of(db, run, "w2", ASYNC);
    assert!((&mut w2).now_or_never().is_none(), "W2 waits behind S");
    steps.wait_until("the writer never submitted W2", |s| {
        s.submitted > submitted && s.parked
    });
    assert_eq!(db.get(run, "w2").unwrap(), None, "not visible before S");
    (strict, w1, w2)
}

/// Once S is durable, W1 and W2 are applied (visible to every reader), and W2 asked for no
/// sync: it resolves then, not once W1's sync (which it does not need) is done. Failed
/// before the fix: W2's barrier covered W1 too, so W2 stayed pending while visible.
#[test]
fn a_weak_commit_behind_a_strict_one_waits_for_that_sync_only() {
    let dir = tempfile::tempdir().unwrap();
    let steps = Steps::new();
    let db = open(dir.path(), &steps);
    let run = block_on(db.begin_run("r")).unwrap();
    let release = Release(Arc::clone(&steps));
    let (strict, w1, mut w2) = strict_then_two_weak(&db, run, &steps, false);

    // S's write and sync complete; W1's (submitted after it) stay in flight.
    steps.allow(1);
    let strict = block_on(strict).unwrap();
    let w1 = block_on(w1).unwrap();
    assert!(db.stats().wal.durable_lsn >= strict);
    assert!(db.stats().wal.durable_lsn < w1, "W1's sync is held back");
    let seen = db.get(run, "w2").unwrap();
    assert!(seen.is_some(), "W2 is visible once S is durable");
    let resolved = resolves_meanwhile(&mut w2);
    assert!(
        resolved.is_some(),
        "W2 is visible (version {:?}) but still waits, for W1's sync",
        seen.map(|v| v.version)
    );
    assert_eq!(resolved.unwrap().unwrap(), seen.unwrap().version);
    drop(release);
    db.close().unwrap();
}

/// The same, with W1's sync failing (the log is poisoned): W2 resolved as an error although
/// its effects had been visible to every reader since S was durable (and W1, in the same
/// position, resolved `Ok`). A commit that resolves as an error is never visible.
#[test]
fn a_visible_weak_commit_does_not_resolve_as_an_error_when_a_later_sync_fails() {
    let dir = tempfile::tempdir().unwrap();
    let steps = Steps::new();
    let db = open(dir.path(), &steps);
    let run = block_on(db.begin_run("r")).unwrap();
    let release = Release(Arc::clone(&steps));
    let (strict, w1, w2) = strict_then_two_weak(&db, run, &steps, true);

    steps.allow(1);
    block_on(strict).unwrap();
    let w1 = block_on(w1).expect("W1 resolves once S is durable");
    let seen = db.get(run, "w2").unwrap().map(|v| v.version);
    assert!(seen.is_some(), "W2 is visible once S is durable");
    assert_eq!(db.get(run, "w1").unwrap().unwrap().version, w1);

    // W1's sync fails: the log is poisoned.
    drop(release);
    let outcome = block_on(w2);
    assert!(
        outcome.is_ok(),
        "W2 was visible (version {seen:?}) and then resolved as an error: {outcome:?}"
    );
    assert_eq!(outcome.ok(), seen);
    drop(db);
}

/// A record appended outside the engine's queue of commits (a checkpoint's entry, `Strict`)
/// between the `Strict` commit S and a weak commit W behind it: W's barrier (through S only)
/// is staged after that entry's waiter, and must still be released once S is durable, not
/// once the entry is (the writer's waiters kept in LSN order).
#[test]
fn a_weak_commit_does_not_wait_for_a_checkpoint_entry_logged_after_the_commit_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let steps = Steps::new();
    let db = open(dir.path(), &steps);
    let run = block_on(db.begin_run("r")).unwrap();
    let release = Release(Arc::clone(&steps));
    steps.hold();
    let mut strict = commit_of(&db, run, "strict", Durability::Strict);
    assert!(
        (&mut strict).now_or_never().is_none(),
        "S waits for its sync"
    );
    steps.wait_until("the writer never submitted S", |s| s.parked);
    let submitted = steps.state.lock().unwrap().submitted;

    // The checkpoint's snapshot stops below S; its entry is appended after S, `Strict`.
    let checkpoint = {
        let db = db.clone();
        std::thread::spawn(move || block_on(db.checkpoint()))
    };
    steps.wait_until("the writer never submitted the checkpoint's entry", |s| {
        s.submitted > submitted && s.parked
    });
    let submitted = steps.state.lock().unwrap().submitted;
    let mut weak = commit_of(&db, run, "weak", ASYNC);
    assert!((&mut weak).now_or_never().is_none(), "W waits behind S");
    // Its barrier staged (in the writer's waiters) before S completes.
    steps.wait_until("the writer never submitted W", |s| {
        s.submitted > submitted && s.parked
    });

    steps.allow(1);
    block_on(strict).unwrap();
    let seen = db.get(run, "weak").unwrap();
    assert!(seen.is_some(), "W is visible once S is durable");
    let resolved = resolves_meanwhile(&mut weak);
    assert!(
        resolved.is_some(),
        "W is visible but still waits, for the checkpoint entry's sync"
    );
    assert_eq!(resolved.unwrap().unwrap(), seen.unwrap().version);
    drop(release);
    checkpoint.join().unwrap().unwrap();
    db.close().unwrap();
}
