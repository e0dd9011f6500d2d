//! Adversarial review of the preallocator's handling of spares (helper-46): the error of a
//! background fill that failed before a rotation asked for a spare (the speculative fill
//! `replenish` starts after every rotation) must not decide that rotation when a fill made
//! for it would succeed, and a fill that keeps failing must still fail the rotation (no hang).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use common::{LIMIT, within};
use keel_wal::{BackendChoice, Durability, Lsn, Wal, WalEntry, WalOptions};

/// A storage whose publishing of a spare (the rename to `.ready`) fails while `fail` is set,
/// as on a disk that is full for a while; it counts the failures.
#[derive(Debug, Default)]
struct FullForAWhile {
    fail: AtomicBool,
    failures: AtomicU64,
}

impl keel_wal::Storage for FullForAWhile {
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        if to.to_string_lossy().ends_with(".ready") && self.fail.load(SeqCst) {
            self.failures.fetch_add(1, SeqCst);
            return Err(std::io::Error::other(
                "injected: no space left to publish a spare",
            ));
        }
        std::fs::rename(from, to)
    }
}

fn options(backend: BackendChoice, storage: &Arc<FullForAWhile>) -> WalOptions {
    WalOptions {
        durability: Durability::Strict,
        witness_idle: None,
        storage: Arc::clone(storage) as _,
        ..common::small_options(backend)
    }
}

/// Commits until one more rotation has happened; returns the first commit that failed.
fn commit_through_rotation(
    wal: &Arc<Wal>,
    acked: &mut BTreeMap<Lsn, WalEntry>,
    tag: u64,
) -> Result<(), String> {
    let wal = Arc::clone(wal);
    let (mine, outcome) = within(LIMIT, "commits through a rotation", move || {
        let mut mine = BTreeMap::new();
        let before = wal.stats().rotations;
        let mut i = 0;
        while wal.stats().rotations == before {
            let e = common::write(1, tag << 32 | i, "k", 6000);
            i += 1;
            match wal.append_wait(std::slice::from_ref(&e)) {
                Ok(lsn) => mine.insert(lsn, e),
                Err(error) => return (mine, Err(format!("commit {tag}/{i} failed: {error}"))),
            };
        }
        (mine, Ok(()))
    });
    acked.extend(mine);
    outcome
}

/// A log on a [`FullForAWhile`] storage: two segments written and the next spare published.
fn started(backend: BackendChoice) -> (tempfile::TempDir, Arc<FullForAWhile>, Arc<Wal>) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FullForAWhile::default());
    let wal = Arc::new(keel_recovery::open_wal(dir.path(), options(backend, &storage)).unwrap());
    let mut acked = BTreeMap::new();
    let mut tag = 0;
    while common::segment_lsns(dir.path()).len() < 2 {
        commit_through_rotation(&wal, &mut acked, tag).unwrap();
        tag += 1;
    }
    common::wait_for("published a spare", || common::spare_ready(dir.path()));
    (dir, storage, wal)
}

/// A rotation takes the ready spare, and the fill that replaces it (started by the rotation,
/// speculatively) fails on a disk full for a moment; nothing retries it while the log has no
/// rotation to make. By the next rotation the disk has room: a spare can be made, and no
/// segment was freed (nothing to recycle). That rotation must ask for a fill of its own, not
/// fail with the error the earlier one left (which poisons a healthy log: the error of a
/// fill nobody waited for, "a stale one" in docs/DESIGN.md "When a spare cannot be made";
/// before the fix every commit from then on was refused).
#[test]
fn a_fill_that_failed_before_the_rotation_asked_does_not_poison_it() {
    for backend in common::backends() {
        let (dir, storage, wal) = started(backend);
        let mut acked = BTreeMap::new();
        storage.fail.store(true, SeqCst);
        commit_through_rotation(&wal, &mut acked, 100).unwrap();
        common::wait_for("failed the speculative fill", || {
            storage.failures.load(SeqCst) >= 1
        });
        // The disk has room again.
        storage.fail.store(false, SeqCst);
        if let Err(error) = commit_through_rotation(&wal, &mut acked, 101) {
            panic!(
                "{backend:?}: a rotation failed with an earlier fill's error, a spare could be made: {error}"
            );
        }
        commit_through_rotation(&wal, &mut acked, 102).unwrap();
        Arc::into_inner(wal).unwrap().close().unwrap();
        common::check_acked(dir.path(), &acked);
    }
}

/// The other side of the above: on a disk that stays full, the rotation's own fill fails
/// too, and the rotation fails (the log is poisoned, nothing acknowledged is touched)
/// instead of waiting for ever; no failed fill's file stays behind.
#[test]
fn a_fill_that_keeps_failing_still_fails_the_rotation() {
    for backend in common::backends() {
        let (dir, storage, wal) = started(backend);
        let mut acked = BTreeMap::new();
        storage.fail.store(true, SeqCst);
        commit_through_rotation(&wal, &mut acked, 100).unwrap();
        common::wait_for("failed the speculative fill", || {
            storage.failures.load(SeqCst) >= 1
        });
        let error = commit_through_rotation(&wal, &mut acked, 101)
            .expect_err("a rotation with no spare to be had went on");
        assert!(error.contains("injected"), "{backend:?}: {error}");
        let wal = Arc::into_inner(wal).unwrap();
        assert!(
            wal.close().is_err(),
            "{backend:?}: the log was not poisoned"
        );
        let tmps = common::tmp_files(dir.path());
        assert!(tmps.is_empty(), "{backend:?}: failed fills left {tmps:?}");
        common::check_acked(dir.path(), &acked);
    }
}

/// A storage whose publishing of a spare (the rename to `.ready`) can be held at a gate, and
/// fails for the next `fail_next` publishings (a disk full for exactly that many fills).
#[derive(Debug, Default)]
struct GatedFull {
    gate: common::gate::Gate,
    fail_next: AtomicU64,
    failures: AtomicU64,
}

impl keel_wal::Storage for GatedFull {
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        if to.to_string_lossy().ends_with(".ready") {
            self.gate.pass(Some(to));
            let failing = self
                .fail_next
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                self.failures.fetch_add(1, SeqCst);
                return Err(std::io::Error::other(
                    "injected: no space left to publish a spare",
                ));
            }
        }
        std::fs::rename(from, to)
    }
}

/// A log on a [`GatedFull`] storage with two segments written and the next spare published,
/// then one more rotation, whose speculative fill is held at its publishing (the gate parked):
/// the next rotation will find no spare and that fill in progress, started before it asked.
fn parked_fill(backend: BackendChoice, fail: u64) -> (tempfile::TempDir, Arc<GatedFull>, Arc<Wal>) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(GatedFull::default());
    let options = WalOptions {
        durability: Durability::Strict,
        witness_idle: None,
        storage: Arc::clone(&storage) as _,
        ..common::small_options(backend)
    };
    let wal = Arc::new(keel_recovery::open_wal(dir.path(), options).unwrap());
    let mut acked = BTreeMap::new();
    let mut tag = 0;
    while common::segment_lsns(dir.path()).len() < 2 {
        commit_through_rotation(&wal, &mut acked, tag).unwrap();
        tag += 1;
    }
    common::wait_for("published a spare", || common::spare_ready(dir.path()));
    storage.gate.arm("keel-wal-prealloc", Some(".ready"));
    storage.fail_next.store(fail, SeqCst);
    commit_through_rotation(&wal, &mut acked, 50).unwrap();
    storage.gate.wait_parked();
    common::check_acked(dir.path(), &acked);
    (dir, storage, wal)
}

/// Commits through one more rotation on another thread while this one opens the parked
/// fill's gate, in whatever order against the rotation's wait for a spare.
fn rotate_opening_the_gate(
    storage: &GatedFull,
    wal: &Arc<Wal>,
    acked: &mut BTreeMap<Lsn, WalEntry>,
    tag: u64,
) -> Result<(), String> {
    let rotating = {
        let wal = Arc::clone(wal);
        std::thread::spawn(move || {
            let mut mine = BTreeMap::new();
            let outcome = commit_through_rotation(&wal, &mut mine, tag);
            (mine, outcome)
        })
    };
    storage.gate.open();
    let (mine, outcome) = rotating.join().unwrap();
    acked.extend(mine);
    outcome
}

/// The fill in progress when a rotation asks (started before it) fails; the disk has room
/// for the next. The rotation must drop that fill's error, ask for a fill of its own and go
/// on in it, not wait for ever (no fill asked after the stale error is dropped) nor fail.
/// The gate opens while the rotation runs, in whatever order against its wait: the outcome
/// must be the same in every order (the failed fill started before the rotation either way).
#[test]
fn a_fill_in_progress_when_the_rotation_asks_that_fails_is_retried() {
    for backend in common::backends() {
        let (dir, storage, wal) = parked_fill(backend, 1);
        let mut acked = BTreeMap::new();
        let outcome = rotate_opening_the_gate(&storage, &wal, &mut acked, 101);
        if let Err(error) = outcome {
            panic!("{backend:?}: a rotation failed with a fill started before it: {error}");
        }
        assert_eq!(storage.failures.load(SeqCst), 1, "{backend:?}");
        commit_through_rotation(&wal, &mut acked, 102).unwrap();
        Arc::into_inner(wal).unwrap().close().unwrap();
        let tmps = common::tmp_files(dir.path());
        assert!(tmps.is_empty(), "{backend:?}: failed fills left {tmps:?}");
        common::check_acked(dir.path(), &acked);
    }
}

/// The same on a disk that stays full: the fill in progress fails, the one the rotation
/// asks for fails too, and the rotation fails after exactly that one retry (bounded: not a
/// retry loop while the disk is full), poisoning the log with nothing acknowledged lost and
/// no failed fill's file left.
#[test]
fn a_fill_in_progress_that_fails_on_a_disk_that_stays_full_fails_the_rotation_once_retried() {
    for backend in common::backends() {
        let (dir, storage, wal) = parked_fill(backend, u64::MAX);
        let mut acked = BTreeMap::new();
        let outcome = rotate_opening_the_gate(&storage, &wal, &mut acked, 101);
        let error = outcome.expect_err("a rotation with no spare to be had went on");
        assert!(error.contains("injected"), "{backend:?}: {error}");
        let wal = Arc::into_inner(wal).unwrap();
        assert!(
            wal.close().is_err(),
            "{backend:?}: the log was not poisoned"
        );
        // The fill in progress, the rotation's own, and at most the one its failure asks
        // for after it (made in the background while the log closes).
        let failures = storage.failures.load(SeqCst);
        assert!(
            (2..=3).contains(&failures),
            "{backend:?}: {failures} failed fills"
        );
        let tmps = common::tmp_files(dir.path());
        assert!(tmps.is_empty(), "{backend:?}: failed fills left {tmps:?}");
        common::check_acked(dir.path(), &acked);
    }
}
