//! After a failed fdatasync poisons the log, no wait may resolve `Ok` for records the
//! failure left not durable, and the log may not publish them durable.
//!
//! A sync chain covers, besides its own write, the writes completed before it was submitted
//! (`ChainInfo::covers`). When two sync chains are in flight over the same completed write
//! and the first sync fails, that write's dirty pages are dropped (fsyncgate, which the sim
//! models): the second sync then succeeds without making it durable. The writer still counts
//! it durable once the second chain completes:
//!
//! - reaped in a later turn than the failure, the position is not published
//!   (`release_waiters` returns early once poisoned), but a barrier queued before the poison
//!   and staged after it checks the writer's own watermark (`Writer::stage`: "a wait for
//!   records that already reached its point resolves, poisoned or not") and resolves `Ok`;
//! - reaped in the same turn, `durable_lsn` is published over the dropped record and a
//!   barrier waiting for it resolves `Ok`.
//!
//! Either way the caller is told LSN 1 is durable and a power loss then loses it.
//!
//! Driven step by step on the sim (manual mode, seeded, latencies of one tick, so the order
//! of completions is fixed), through a backend wrapper that gives the writer a waker (so a
//! second chain joins the first in flight) and can hold completions back.

use std::fs::File;
use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use keel_sim::{CrashPlan, Sim, SimFaults};
use keel_wal::backend::{Backend, BackendKind, Chain, Completion, Waker};
use keel_wal::storage::Defects;
use keel_wal::{
    BackendChoice, CommitFuture, Durability, Lsn, RunId, Storage, Wal, WalEntry, WalOptions,
};

const SEED: u64 = 0x5eed_0053;

#[derive(Debug, Default)]
struct CtlState {
    woken: bool,
    /// The writer waits in the backend for a completion.
    blocked: bool,
    /// Completions stay in the sim while set.
    hold: bool,
    /// Completions handed to the writer.
    delivered: usize,
}

#[derive(Debug, Default)]
struct Ctl {
    state: Mutex<CtlState>,
    changed: Condvar,
}

#[derive(Debug)]
struct WakeBackend {
    inner: Box<dyn Backend>,
    ctl: Arc<Ctl>,
}

impl Backend for WakeBackend {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    fn depth(&self) -> usize {
        self.inner.depth()
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn submit(&mut self, chain: Chain) {
        self.inner.submit(chain);
    }

    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) {
        loop {
            let mut state = self.ctl.state.lock().unwrap();
            if !state.hold {
                drop(state);
                // Takes what the sim completed, without blocking.
                let before = out.len();
                self.inner.wait(0, out);
                state = self.ctl.state.lock().unwrap();
                state.delivered += out.len() - before;
            }
            if out.len() >= min || self.inner.in_flight() == 0 || std::mem::take(&mut state.woken) {
                state.blocked = false;
                return;
            }
            state.blocked = true;
            self.ctl.changed.notify_all();
            // The sim's advances are not signalled here: look again shortly.
            let _ = self
                .ctl
                .changed
                .wait_timeout(state, Duration::from_millis(1))
                .unwrap();
        }
    }

    fn waker(&self) -> Option<Waker> {
        let ctl = Arc::clone(&self.ctl);
        Some(Arc::new(move || {
            ctl.state.lock().unwrap().woken = true;
            ctl.changed.notify_all();
        }))
    }
}

/// The sim, with the writer's backend wrapped.
#[derive(Debug)]
struct WakeStorage {
    sim: Arc<Sim>,
    ctl: Arc<Ctl>,
}

impl Storage for WakeStorage {
    fn backend(
        &self,
        choice: BackendChoice,
        io_depth: usize,
    ) -> keel_wal::Result<Box<dyn Backend>> {
        Ok(Box::new(WakeBackend {
            inner: Storage::backend(&*self.sim, choice, io_depth)?,
            ctl: Arc::clone(&self.ctl),
        }))
    }

    fn sync_file(&self, file: &File, path: &Path, all: bool) -> io::Result<()> {
        Storage::sync_file(&*self.sim, file, path, all)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        Storage::sync_dir(&*self.sim, dir)
    }

    fn create(&self, path: &Path) -> io::Result<File> {
        Storage::create(&*self.sim, path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        Storage::rename(&*self.sim, from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        Storage::remove_file(&*self.sim, path)
    }

    fn seed(&self) -> Option<u64> {
        Storage::seed(&*self.sim)
    }

    fn background_work(&self) -> bool {
        Storage::background_work(&*self.sim)
    }

    fn witness_when_idle(&self) -> bool {
        false
    }

    fn defects(&self) -> Defects {
        Storage::defects(&*self.sim)
    }
}

fn entry(txn_id: u64) -> WalEntry {
    WalEntry::Write {
        run_id: RunId::from_u128(1),
        txn_id,
        key: b"k".to_vec(),
        value: vec![7; 100],
    }
}

fn poll_now(future: &mut CommitFuture) -> Option<Result<Lsn, String>> {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    match std::pin::Pin::new(future).poll(&mut cx) {
        Poll::Ready(result) => Some(result.map_err(|e| e.to_string())),
        Poll::Pending => None,
    }
}

/// Waits until the writer waits: in the backend, or for work on an empty queue (twice, a
/// while apart, so that a writer just handed work has taken it).
fn settle(wal: &Wal, ctl: &Ctl) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(30));
        while !(ctl.state.lock().unwrap().blocked || wal.writer_idle()) {
            assert!(Instant::now() < deadline, "the writer did not settle");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Waits until `done` (the writer may be busy: a held writer with requests queued and
/// chains in flight polls its backend without blocking).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Lets the writer take requests however the test ends.
struct Unhold<'a>(&'a Wal);

impl Drop for Unhold<'_> {
    fn drop(&mut self) {
        self.0.hold_writer(false);
    }
}

/// Leaves manual mode and lets completions go however the test ends, so the log can close.
struct Auto(Arc<Sim>, Arc<Ctl>);

impl Drop for Auto {
    fn drop(&mut self) {
        self.1.state.lock().unwrap().hold = false;
        self.0.set_manual(false);
    }
}

/// What one run found: the barrier's outcome, the published durable position, and the last
/// LSN a power loss keeps.
fn run(same_turn: bool) -> (Option<Result<Lsn, String>>, Lsn, Lsn) {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("wal");
    let sim = Sim::new(&dir, SEED).unwrap();
    sim.set_manual(true);
    sim.set_max_latency(1);
    let ctl = Arc::new(Ctl::default());
    let options = WalOptions {
        durability: Durability::Strict,
        io_depth: 4,
        witness_idle: None,
        storage: Arc::new(WakeStorage {
            sim: Arc::clone(&sim),
            ctl: Arc::clone(&ctl),
        }),
        ..WalOptions::default()
    };
    let wal = keel_recovery::open_wal(&dir, options).unwrap();
    // Dropped before the log: lets it close without manual steps.
    let _auto = Auto(Arc::clone(&sim), Arc::clone(&ctl));
    settle(&wal, &ctl);
    let batched = Durability::Batched {
        max_delay: Duration::from_secs(3600),
        max_bytes: u64::MAX,
    };

    // LSN 1, written and not synced: a write-only chain.
    let mut first = wal.append_with(&[entry(1)], batched);
    settle(&wal, &ctl);
    assert!(sim.advance(), "the first write");
    settle(&wal, &ctl);
    assert_eq!(poll_now(&mut first), Some(Ok(1)));
    assert_eq!(wal.written_lsn(), 1);
    assert_eq!(wal.durable_lsn(), 0);

    // LSNs 2 and 3, Strict, in two chains in flight together: each a write and its sync,
    // each sync covering LSN 1 as well.
    let mut second = wal.append_with(&[entry(2)], Durability::Strict);
    settle(&wal, &ctl);
    let mut third = wal.append_with(&[entry(3)], Durability::Strict);
    settle(&wal, &ctl);
    assert_eq!(
        sim.operations_in_flight(),
        4,
        "two chains (write and sync each) in flight: {:#?}",
        sim.trace()
    );
    // A Strict barrier through LSN 1, queued now and taken once the writer is let go.
    wal.hold_writer(true);
    let unhold = Unhold(&wal);
    let mut barrier = wal.barrier(1, Durability::Strict);
    // Both writes complete; the second chain's sync (due first) fails and drops what it
    // covered, LSNs 1 and 2; the third chain's sync then succeeds, durable only for LSN 3.
    sim.arm(&SimFaults {
        fail_sync: Some(0),
        ..SimFaults::default()
    });
    assert!(sim.advance(), "the second chain's write");
    assert!(sim.advance(), "the third chain's write");
    ctl.state.lock().unwrap().hold = same_turn;
    assert!(sim.advance(), "the second chain's sync: fails");
    let delivered = |n| ctl.state.lock().unwrap().delivered == n;
    let mut second_outcome = None;
    if !same_turn {
        wait_until("the failure is reaped", || delivered(2));
        second_outcome = poll_now(&mut second);
        assert!(
            second_outcome.as_ref().is_some_and(|r| r.is_err()),
            "the failed sync poisoned the log: {second_outcome:?}"
        );
    }
    assert!(sim.advance(), "the third chain's sync: succeeds");
    ctl.state.lock().unwrap().hold = false;
    wait_until("every chain is reaped", || delivered(3));
    drop(unhold);
    let barrier = {
        let mut outcome = None;
        wait_until("the barrier resolves", || {
            outcome = poll_now(&mut barrier);
            outcome.is_some()
        });
        outcome
    };
    let second = second_outcome.or_else(|| poll_now(&mut second));
    let third = poll_now(&mut third);
    assert!(
        second.as_ref().is_some_and(|r| r.is_err()) && third.as_ref().is_some_and(|r| r.is_err()),
        "LSNs 2 and 3 fail with the poison: {second:?} {third:?}"
    );
    let trace = sim.trace();
    assert!(
        trace
            .iter()
            .any(|line| line.contains("EIO, 2 writes dropped (fsyncgate)")),
        "the failed sync dropped LSNs 1 and 2: {trace:#?}"
    );
    let published = wal.durable_lsn();

    // What a power loss now keeps: the durable image, none of the pending writes.
    let crash = sim.crash();
    let image = base.path().join("image");
    crash
        .materialize(&CrashPlan::prefix(&crash, 0, false), &image)
        .unwrap();
    let recovered = keel_recovery::open_wal(&image, WalOptions::default()).unwrap();
    let kept_through = recovered.next_lsn() - 1;
    drop(recovered);
    drop(wal);
    (barrier, published, kept_through)
}

#[test]
fn a_barrier_after_a_failed_sync_never_resolves_ok_for_records_it_dropped() {
    println!("seed {SEED}");
    let mut failures = Vec::new();
    for same_turn in [false, true] {
        let (barrier, published, kept_through) = run(same_turn);
        println!(
            "same turn {same_turn}: barrier(1, Strict) {barrier:?}, published durable_lsn \
             {published}, a power loss keeps through LSN {kept_through}"
        );
        if barrier.as_ref().is_some_and(|r| r.is_ok()) && kept_through < 1 {
            failures.push(format!(
                "same turn {same_turn}: barrier(1, Strict) resolved {barrier:?}, yet the failed \
                 sync dropped LSN 1: a power loss keeps through LSN {kept_through}"
            ));
        }
        if published > kept_through {
            failures.push(format!(
                "same turn {same_turn}: durable_lsn {published} published, yet a power loss \
                 keeps through LSN {kept_through}"
            ));
        }
    }
    assert!(failures.is_empty(), "seed {SEED}:\n{}", failures.join("\n"));
}

/// The case the fix above leaves, by the design `adversarial_poison_after_durable.rs` pins
/// ("a chain synced in the same turn is durable"): two Strict chains in flight, the second's
/// sync runs first and fails, dropping the first chain's write too (it completed before that
/// sync started); the first chain's sync then succeeds over nothing. Reaped in one turn, the
/// first commit resolves `Ok` and `durable_lsn` is published over it; a power loss loses it.
/// The writer cannot tell from one turn which sync ran first, so no sync of a turn with a
/// failure counts (failed before the fix, with its first part: `Ok(1)` published).
#[test]
fn a_sync_that_ran_after_a_failed_one_in_the_same_turn_is_not_proof() {
    // A seed whose latencies put the second sync ahead of the first (found by trying seeds
    // from 0; the trace check below says when a seed no longer does).
    let seed = (0..200u64)
        .find(|&seed| same_turn_own_write(seed).is_some())
        .expect("a seed that orders the second sync first");
    println!("seed {seed}");
    let (first, published, kept_through) = same_turn_own_write(seed).expect("checked");
    assert!(
        !(first.as_ref().is_some_and(|r| r.is_ok()) || published >= 1) || kept_through >= 1,
        "seed {seed}: the first Strict commit resolved {first:?} and durable_lsn {published} \
         was published, yet a power loss keeps through LSN {kept_through}"
    );
}

/// One run; `None` when the seed's latencies do not order the second sync first.
/// A run's outcome: how the first commit resolved (if it did), the durable LSN published, and
/// the last LSN a power loss keeps.
type Outcome = (Option<Result<Lsn, String>>, Lsn, Lsn);

fn same_turn_own_write(seed: u64) -> Option<Outcome> {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("wal");
    let sim = Sim::new(&dir, seed).unwrap();
    sim.set_manual(true);
    sim.set_max_latency(1);
    let ctl = Arc::new(Ctl::default());
    let options = WalOptions {
        durability: Durability::Strict,
        io_depth: 4,
        witness_idle: None,
        storage: Arc::new(WakeStorage {
            sim: Arc::clone(&sim),
            ctl: Arc::clone(&ctl),
        }),
        ..WalOptions::default()
    };
    let wal = keel_recovery::open_wal(&dir, options).unwrap();
    let _auto = Auto(Arc::clone(&sim), Arc::clone(&ctl));
    settle(&wal, &ctl);
    let mut first = wal.append_with(&[entry(1)], Durability::Strict);
    settle(&wal, &ctl);
    let mut second = wal.append_with(&[entry(2)], Durability::Strict);
    settle(&wal, &ctl);
    assert_eq!(sim.operations_in_flight(), 4, "{:#?}", sim.trace());
    ctl.state.lock().unwrap().hold = true;
    // The first write's sync draws a long latency, the second's a short one.
    sim.set_max_latency(16);
    assert!(sim.advance(), "the first write");
    sim.set_max_latency(1);
    assert!(sim.advance(), "the second write");
    sim.arm(&SimFaults {
        fail_sync: Some(0),
        ..SimFaults::default()
    });
    assert!(sim.advance(), "a sync");
    let trace = sim.trace();
    let failed_first = trace
        .iter()
        .any(|line| line.contains("sync chain 1: EIO, 2 writes dropped"));
    assert!(sim.advance(), "the other sync");
    ctl.state.lock().unwrap().hold = false;
    let mut outcome = None;
    wait_until("the first commit resolves", || {
        outcome = poll_now(&mut first);
        outcome.is_some()
    });
    wait_until("the second commit resolves", || {
        poll_now(&mut second).is_some()
    });
    let published = wal.durable_lsn();
    let crash = sim.crash();
    let image = base.path().join("image");
    crash
        .materialize(&CrashPlan::prefix(&crash, 0, false), &image)
        .unwrap();
    let recovered = keel_recovery::open_wal(&image, WalOptions::default()).unwrap();
    let kept_through = recovered.next_lsn() - 1;
    drop(recovered);
    drop(wal);
    failed_first.then_some((outcome, published, kept_through))
}
