//! Adversarial tests of a rotation's wait for a spare (`Preallocator::take`) when recycled
//! spares and failed zero fills meet: the log goes on in recycled files past a failed fill,
//! and these check what that leaves behind (the failure's error, the failed fill's file).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use keel_wal::{BackendChoice, Durability, Lsn, Wal, WalEntry, WalOptions};

const LIMIT: Duration = Duration::from_secs(2);

/// A storage whose publishing of a spare (the rename to `.ready`) fails while `fail` is set
/// (as on a full disk) and is held while `hold` is set; it counts both.
#[derive(Debug, Default)]
struct FlakyPublish {
    fail: AtomicBool,
    hold: AtomicBool,
    held: AtomicBool,
    failures: AtomicU64,
    publishes: AtomicU64,
}

impl keel_wal::Storage for FlakyPublish {
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        if to.to_string_lossy().ends_with(".ready") {
            if self.fail.load(SeqCst) {
                self.failures.fetch_add(1, SeqCst);
                return Err(std::io::Error::other(
                    "injected: no space left to publish a spare",
                ));
            }
            while self.hold.load(SeqCst) {
                self.held.store(true, SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
            std::fs::rename(from, to)?;
            self.publishes.fetch_add(1, SeqCst);
            return Ok(());
        }
        std::fs::rename(from, to)
    }
}

fn options(backend: BackendChoice, storage: &Arc<FlakyPublish>, keep: usize) -> WalOptions {
    WalOptions {
        durability: Durability::Strict,
        recycle_segments: keep,
        witness_idle: None,
        storage: Arc::clone(storage) as _,
        ..common::small_options(backend)
    }
}

/// Commits until one more rotation has happened; every commit must be acknowledged.
fn commit_through_rotation(wal: &Wal, acked: &mut BTreeMap<Lsn, WalEntry>, tag: u64) {
    let before = wal.stats().rotations;
    let mut i = 0;
    while wal.stats().rotations == before {
        let e = common::write(1, tag << 32 | i, "k", 6000);
        i += 1;
        match wal.append_wait(std::slice::from_ref(&e)) {
            Ok(lsn) => acked.insert(lsn, e),
            Err(error) => panic!("commit {tag}/{i} failed: {error}"),
        };
    }
}

/// A log in a new directory on a [`FlakyPublish`] storage, `keep` recycled spares: three
/// segments written and the next spare published.
struct Started {
    dir: tempfile::TempDir,
    storage: Arc<FlakyPublish>,
    wal: Arc<Wal>,
    acked: BTreeMap<Lsn, WalEntry>,
}

fn started(backend: BackendChoice, keep: usize) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FlakyPublish::default());
    let wal =
        Arc::new(keel_recovery::open_wal(dir.path(), options(backend, &storage, keep)).unwrap());
    let mut acked = BTreeMap::new();
    let mut tag = 0;
    while common::segment_lsns(dir.path()).len() < 3 {
        commit_through_rotation(&wal, &mut acked, tag);
        tag += 1;
    }
    common::wait_for("published a spare", || common::spare_ready(dir.path()));
    Started {
        dir,
        storage,
        wal,
        acked,
    }
}

/// One zero fill fails (a transient full disk) while a freed segment is at hand; the log goes
/// on in the recycled file, and the next fill succeeds and is used. Then a rotation arrives
/// while the fill after that is still under way: it must wait for it, not fail with the
/// error of the earlier, long since retried fill (which would poison a healthy log).
#[test]
fn a_failed_fill_retried_since_does_not_fail_a_later_rotation() {
    for backend in common::backends() {
        // Three segments and the next spare published.
        let Started {
            dir,
            storage,
            wal,
            mut acked,
        } = started(backend, 1);
        // The next rotation takes the ready spare; its replacement fails.
        storage.fail.store(true, SeqCst);
        commit_through_rotation(&wal, &mut acked, 100);
        common::wait_for("failed a fill", || storage.failures.load(SeqCst) >= 1);
        std::thread::sleep(Duration::from_millis(20));
        // A removal recycles a freed segment; the disk has room again.
        let freed = wal.remove_segments_before(wal.durable_lsn()).unwrap();
        assert!(freed > 0, "{backend:?}: nothing freed");
        storage.fail.store(false, SeqCst);
        // This rotation takes the recycled file; the retried fill succeeds.
        let recycled = wal.stats().segments_recycled;
        commit_through_rotation(&wal, &mut acked, 101);
        assert_eq!(wal.stats().segments_recycled, recycled + 1, "{backend:?}");
        common::wait_for("published the retried spare", || {
            common::spare_ready(dir.path())
        });
        // This rotation takes that spare; the next fill is held as it publishes.
        storage.hold.store(true, SeqCst);
        commit_through_rotation(&wal, &mut acked, 102);
        common::wait_for("held the next fill", || storage.held.load(SeqCst));
        // A rotation now waits for the held fill (released shortly), and goes on.
        let driver = {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                let mut mine = BTreeMap::new();
                commit_through_rotation(&wal, &mut mine, 103);
                mine
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        storage.hold.store(false, SeqCst);
        let started = Instant::now();
        while !driver.is_finished() {
            assert!(started.elapsed() < LIMIT, "{backend:?}: the rotation hangs");
            std::thread::sleep(Duration::from_millis(1));
        }
        match driver.join() {
            Ok(mine) => acked.extend(mine),
            Err(panic) => panic!(
                "{backend:?}: a rotation failed on a fill retried successfully since: {}",
                panic.downcast_ref::<String>().cloned().unwrap_or_default()
            ),
        }
        Arc::into_inner(wal).unwrap().close().unwrap();
        common::check_acked(dir.path(), &acked);
    }
}

/// Zero fills keep failing (a full disk) while a checkpoint frees a segment before every
/// rotation: the log goes on in recycled files, and each rotation asks for a new fill, which
/// fails again. A failed fill's file must not stay behind: otherwise every rotation leaves a
/// segment-sized `spare-<n>.tmp` on the full disk until the next open.
#[test]
fn failed_fills_leave_no_files_while_the_log_goes_on_in_recycled_ones() {
    for backend in common::backends() {
        // Three segments and the next spare published.
        let Started {
            dir,
            storage,
            wal,
            mut acked,
        } = started(backend, 2);
        storage.fail.store(true, SeqCst);
        // The ready spare, then recycled ones only.
        // Each rotation's fill has failed (and the thread is idle) before the next rotation,
        // so that each one asks for a fill of its own.
        commit_through_rotation(&wal, &mut acked, 100);
        common::wait_for("failed a fill", || storage.failures.load(SeqCst) >= 1);
        for round in 0..6u64 {
            std::thread::sleep(Duration::from_millis(5));
            wal.remove_segments_before(wal.durable_lsn()).unwrap();
            commit_through_rotation(&wal, &mut acked, 200 + round);
            common::wait_for("failed the fills", || {
                storage.failures.load(SeqCst) >= round + 2
            });
        }
        std::thread::sleep(Duration::from_millis(20));
        let tmps = common::tmp_files(dir.path());
        println!(
            "{backend:?}: {} failed fills, left: {tmps:?}",
            storage.failures.load(SeqCst)
        );
        assert!(
            tmps.len() <= 1,
            "{backend:?}: {} failed fills left {} files behind: {tmps:?}",
            storage.failures.load(SeqCst),
            tmps.len()
        );
        Arc::into_inner(wal).unwrap().close().unwrap();
        common::check_acked(dir.path(), &acked);
    }
}
