//! Adversarial tests where committers that drive the writer (`Wal::append_wait`) meet
//! segment rotation, segment removal and recycling (`Wal::remove_segments_before` from
//! another thread) and live tails. A review of the drive against rotation found no lost,
//! stranded or misreported commit; these are kept as probes of the meeting points:
//!
//! - a seeded, time-boxed mix of driving committers, removal with recycling and a slow tail
//!   that removals let go (its segments recycled and written over by driven rotations);
//! - a driving committer parked (a gated `Storage::rename`) in the middle of its rotation,
//!   installing the new segment or waiting for the preallocator's spare, while other
//!   committers, a sync, a removal and a tail go on.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use common::gate::Gate;
use common::{LIMIT, within};
use keel_wal::{BackendChoice, Durability, Error, Lsn, WalEntry, WalOptions};

/// Small segments (64 KiB) recycled, and an idle witness, so rotations, recycled spares and
/// witness chains all happen within a short run.
fn options(backend: BackendChoice) -> WalOptions {
    WalOptions {
        durability: Durability::Strict,
        recycle_segments: 2,
        witness_idle: Some(Duration::from_millis(1)),
        ..common::small_options(backend)
    }
}

/// A log in `dir` on `storage`, with [`options`] and no idle witness.
fn open_on(
    dir: &std::path::Path,
    backend: BackendChoice,
    storage: Arc<dyn keel_wal::Storage>,
) -> Arc<keel_wal::Wal> {
    let options = WalOptions {
        storage,
        witness_idle: None,
        ..options(backend)
    };
    Arc::new(keel_recovery::open_wal(dir, options).unwrap())
}

fn xorshift(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

/// The entry committer `thread` writes as its `i`th commit: its value is a function of
/// (`txn_id`, length), so any reader can check it.
fn entry(thread: u64, i: u64, len: usize) -> WalEntry {
    common::write(u128::from(thread) + 1, thread << 32 | i, "c", len)
}

/// Whether `entry` is one `entry` makes, whole.
fn well_formed(found: &WalEntry) -> bool {
    match found {
        WalEntry::Write {
            run_id,
            txn_id,
            value,
            ..
        } => {
            let thread = txn_id >> 32;
            *found == entry(thread, txn_id & 0xffff_ffff, value.len())
                && run_id.as_u128() == u128::from(thread) + 1
        }
        _ => false,
    }
}

/// Committers that drive (and some that hand off), a thread removing the log below the
/// durable position (segments recycled and written over by later rotations), and a slow
/// live tail that removals let go: every acknowledged commit at or above the removal bound
/// is in the log after close, whole; the tail reads only well-formed records, in order,
/// with no gap, and is only ever let go (`TailFellBehind`, `LsnRemoved`), never misled.
fn drive_remove_tail_round(backend: BackendChoice, seed: u64, run_for: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        // A tail more than two segments behind is let go, and its segments recycled.
        tail_max_lag_bytes: 2 * 64 * 1024,
        ..options(backend)
    };
    let wal = Arc::new(keel_recovery::open_wal(dir.path(), options).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let removed_below = Arc::new(AtomicU64::new(0));
    let committers: Vec<_> = (0..3u64)
        .map(|t| {
            let wal = Arc::clone(&wal);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut rng = seed ^ (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut acked = BTreeMap::new();
                let mut i = 0;
                while !stop.load(SeqCst) {
                    let r = xorshift(&mut rng);
                    // Up to 12 KiB: a few records fill a 64 KiB segment.
                    let len = (r % 12_000) as usize;
                    let e = entry(t, i, len);
                    let lsn = match r % 8 {
                        0 => wal.append(std::slice::from_ref(&e)).wait().unwrap(),
                        1 => {
                            let batched = Durability::Batched {
                                max_delay: Duration::from_micros(300),
                                max_bytes: 1 << 20,
                            };
                            let batch = wal.encode(std::slice::from_ref(&e)).unwrap();
                            wal.append_encoded_wait(batch, batched).unwrap()
                        }
                        _ => {
                            let lsn = wal.append_wait(std::slice::from_ref(&e)).unwrap();
                            assert!(wal.durable_lsn() >= lsn, "acknowledged, not durable");
                            lsn
                        }
                    };
                    acked.insert(lsn, e);
                    i += 1;
                    if r.is_multiple_of(5) {
                        // Let the writer go idle, so that the next commit drives.
                        std::thread::sleep(Duration::from_micros(r % 300));
                    }
                }
                acked
            })
        })
        .collect();
    let remover = {
        let wal = Arc::clone(&wal);
        let stop = Arc::clone(&stop);
        let removed_below = Arc::clone(&removed_below);
        std::thread::spawn(move || {
            let mut rng = seed.rotate_left(17) | 1;
            while !stop.load(SeqCst) {
                let r = xorshift(&mut rng);
                // Everything below the durable position, less some that the tail may read.
                let below = wal.durable_lsn().saturating_sub(r % 20);
                wal.remove_segments_before(below).unwrap();
                removed_below.fetch_max(below, SeqCst);
                std::thread::sleep(Duration::from_micros(r % 2000));
            }
        })
    };
    let tailer = {
        let wal = Arc::clone(&wal);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut tail = wal.tail(1);
            let mut read = 0u64;
            let mut restarts = 0u64;
            while !stop.load(SeqCst) {
                let at = tail.next_lsn();
                match tail.try_next() {
                    Ok(Some(record)) => {
                        assert_eq!(record.lsn(), at, "the tail skipped or repeated");
                        let found = record.entry().to_owned_entry();
                        assert!(
                            well_formed(&found),
                            "the tail read a damaged record at {at}: {found:?}"
                        );
                        read += 1;
                        if read.is_multiple_of(7) {
                            // A slow tail: removals let it go, recycling its segments.
                            std::thread::sleep(Duration::from_micros(read % 900));
                        }
                    }
                    Ok(None) => std::thread::sleep(Duration::from_micros(200)),
                    Err(Error::TailFellBehind { .. } | Error::LsnRemoved { .. }) => {
                        restarts += 1;
                        let oldest = common::segment_lsns(wal.dir())[0];
                        tail.seek(oldest.max(at));
                    }
                    Err(error) => panic!("the tail at {at}: {error}"),
                }
            }
            (read, restarts)
        })
    };
    std::thread::sleep(run_for);
    stop.store(true, SeqCst);
    let mut acked = BTreeMap::new();
    for committer in committers {
        acked.extend(committer.join().unwrap());
    }
    remover.join().unwrap();
    let (read, restarts) = tailer.join().unwrap();
    let bound = removed_below.load(SeqCst);
    let stats = wal.stats();
    Arc::into_inner(wal).unwrap().close().unwrap();
    let recovered: BTreeMap<Lsn, WalEntry> = common::read_all(dir.path()).into_iter().collect();
    println!(
        "{backend:?}: {} acked, {} drives, {} rotations, {} recycled, tail read {read} \
         ({restarts} restarts), removed below {bound}",
        acked.len(),
        stats.driven,
        stats.rotations,
        stats.segments_recycled
    );
    for (lsn, e) in acked.range(bound..) {
        assert_eq!(
            recovered.get(lsn),
            Some(e),
            "{backend:?}: acknowledged commit {lsn} lost (seed {seed})"
        );
    }
}

#[test]
fn driving_committers_beside_removal_recycling_and_a_tail_lose_nothing() {
    let seed = common::seed(0xd21e_0ca7);
    for backend in common::backends() {
        within(Duration::from_secs(20), "round", move || {
            drive_remove_tail_round(backend, seed, Duration::from_millis(250));
        });
    }
}

/// The committer thread that drives in the parked-rotation tests.
const COMMITTER: &str = "keel-test-driver";

#[derive(Debug)]
struct GatedRenames(Arc<Gate>);

impl keel_wal::Storage for GatedRenames {
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        self.0.pass(Some(to));
        std::fs::rename(from, to)
    }
}

/// A committer that drives is parked inside its rotation (`at`: installing the new segment,
/// or waiting for the preallocator to publish a spare). Meanwhile other committers (one that
/// would drive, one handing off, a sync), a removal of everything below the next LSN (with
/// recycling) and a live tail go on. Nothing may wait for the parked rotation but what must
/// (the commits behind it); once it goes on, every acknowledged commit is in the log after
/// reopen, and the removal kept the log whole.
fn parked_rotation(backend: BackendChoice, at: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let wal = open_on(
        dir.path(),
        backend,
        Arc::new(GatedRenames(Arc::clone(&gate))),
    );
    let mut acked = BTreeMap::new();
    // Three segments, so the removal has something to recycle.
    while common::segment_lsns(dir.path()).len() < 3 {
        let e = entry(9, acked.len() as u64, 5000);
        acked.insert(wal.append_wait(std::slice::from_ref(&e)).unwrap(), e);
    }
    let mut tail = wal.tail(1);
    let (thread, suffix) = match at {
        "install" => (COMMITTER.to_owned(), ".wal"),
        _ => ("keel-wal-prealloc".to_owned(), ".ready"),
    };
    if at == "prealloc" {
        // The spare made at open is taken by the next rotation: arm for the one after.
        let rotations = wal.stats().rotations;
        while wal.stats().rotations == rotations {
            let e = entry(9, acked.len() as u64, 5000);
            acked.insert(wal.append_wait(std::slice::from_ref(&e)).unwrap(), e);
        }
        // The preallocator is making the next spare, or has: wait until it did.
        common::wait_for("published a spare", || common::spare_ready(dir.path()));
    }
    gate.arm(&thread, Some(suffix));
    let driver = {
        let wal = Arc::clone(&wal);
        std::thread::Builder::new()
            .name(COMMITTER.into())
            .spawn(move || {
                let mut mine = BTreeMap::new();
                let rotations = wal.stats().rotations;
                // Drive until one of this thread's drives rotates (twice when the
                // preallocator is parked: the first rotation takes the ready spare, the
                // second waits for the one being made).
                let wanted = if at == "prealloc" { 2 } else { 1 };
                let mut i = 0;
                while wal.stats().rotations < rotations + wanted {
                    common::wait_until_idle(&wal);
                    let e = entry(1, i, 6000);
                    mine.insert(wal.append_wait(std::slice::from_ref(&e)).unwrap(), e);
                    i += 1;
                }
                mine
            })
            .unwrap()
    };
    gate.wait_parked();
    // The parked committer holds the writer's baton, mid-rotation.
    let others: Vec<_> = (0..3u64)
        .map(|k| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                let e = entry(2 + k, 0, 3000);
                let lsn = match k {
                    0 => wal.append_wait(std::slice::from_ref(&e)).unwrap(),
                    1 => wal.append(std::slice::from_ref(&e)).wait().unwrap(),
                    _ => {
                        let lsn = wal.append_with(
                            std::slice::from_ref(&e),
                            Durability::Async {
                                max_delay: Duration::from_millis(1),
                            },
                        );
                        let lsn = lsn.wait().unwrap();
                        wal.sync().wait().unwrap();
                        lsn
                    }
                };
                (lsn, e)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    let below = wal.next_lsn();
    let removed = within(LIMIT, "a removal beside a parked rotation", {
        let wal = Arc::clone(&wal);
        move || wal.remove_segments_before(below).unwrap()
    });
    // The tail read nothing yet and holds the log from 1: nothing removed.
    assert_eq!(
        removed, 0,
        "{backend:?} {at}: removed under a live tail at 1"
    );
    let mut read = 0;
    while let Some(record) = tail.try_next().unwrap() {
        assert!(well_formed(&record.entry().to_owned_entry()));
        read += 1;
    }
    drop(tail);
    let removed = within(LIMIT, "a removal beside a parked rotation", {
        let wal = Arc::clone(&wal);
        move || wal.remove_segments_before(below).unwrap()
    });
    gate.open();
    let mine = within(LIMIT, "the parked committer", move || {
        driver.join().unwrap()
    });
    acked.extend(mine);
    for other in others {
        let (lsn, e) = within(LIMIT, "a committer behind the parked one", move || {
            other.join().unwrap()
        });
        acked.insert(lsn, e);
    }
    let oldest = common::segment_lsns(dir.path())[0];
    println!("{backend:?} {at}: tail read {read}, removed {removed}, log from {oldest}");
    Arc::into_inner(wal).unwrap().close().unwrap();
    let reopened = keel_recovery::open_wal(dir.path(), options(backend)).unwrap();
    reopened.close().unwrap();
    let recovered: BTreeMap<Lsn, WalEntry> = common::read_all(dir.path()).into_iter().collect();
    for (lsn, e) in acked.range(oldest..) {
        assert_eq!(
            recovered.get(lsn),
            Some(e),
            "{backend:?} {at}: commit {lsn} lost"
        );
    }
    assert!(
        oldest <= *acked.keys().rev().nth(3).unwrap(),
        "{backend:?} {at}: the removal took the log past the commits behind the rotation"
    );
}

#[test]
fn a_rotation_parked_in_a_drive_installing_its_segment_strands_nothing() {
    for backend in common::backends() {
        parked_rotation(backend, "install");
    }
}

#[test]
fn a_rotation_parked_in_a_drive_waiting_for_a_spare_strands_nothing() {
    for backend in common::backends() {
        parked_rotation(backend, "prealloc");
    }
}

/// A storage whose file syncs panic on the preallocator's thread, once armed.
#[derive(Debug, Default)]
struct PanickingPreallocation {
    armed: AtomicBool,
}

impl keel_wal::Storage for PanickingPreallocation {
    fn sync_file(
        &self,
        file: &std::fs::File,
        _: &std::path::Path,
        all: bool,
    ) -> std::io::Result<()> {
        if self.armed.load(SeqCst) && std::thread::current().name() == Some("keel-wal-prealloc") {
            panic!("injected storage panic while preallocating a spare");
        }
        if all {
            file.sync_all()
        } else {
            file.sync_data()
        }
    }
}

/// A storage panic on the preallocator's thread (as a panic on the writer's thread, or in a
/// committer's drive, is survived: the log stops and refuses what waits). The next rotation
/// waits for a spare that will never come: the committer driving it must get an answer (an
/// error is fine), not hang, and so must the committers behind it and the log's close.
#[test]
fn a_storage_panic_on_the_preallocator_thread_does_not_hang_a_driven_rotation() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(PanickingPreallocation::default());
        let wal = open_on(dir.path(), backend, Arc::clone(&storage) as _);
        // The spare made at open is published before the panic is armed.
        common::wait_for("published a spare", || common::spare_ready(dir.path()));
        storage.armed.store(true, SeqCst);
        let (acked, failed) = within(LIMIT, "commits across two rotations", {
            let wal = Arc::clone(&wal);
            move || {
                let mut acked = BTreeMap::new();
                // The first rotation takes the ready spare (its replacement's sync panics);
                // the second needs that replacement.
                for i in 0..60 {
                    common::wait_until_idle(&wal);
                    let e = entry(1, i, 6000);
                    match wal.append_wait(std::slice::from_ref(&e)) {
                        Ok(lsn) => {
                            acked.insert(lsn, e);
                        }
                        Err(error) => return (acked, Some(error.to_string())),
                    }
                }
                (acked, None)
            }
        });
        println!("{backend:?}: {} acknowledged, then {failed:?}", acked.len());
        within(LIMIT, "close", move || {
            let _ = Arc::into_inner(wal).unwrap().close();
        });
        let recovered: BTreeMap<Lsn, WalEntry> = common::read_all(dir.path()).into_iter().collect();
        for (lsn, e) in &acked {
            assert_eq!(
                recovered.get(lsn),
                Some(e),
                "{backend:?}: commit {lsn} lost"
            );
        }
    }
}

/// The gate above, and then a failed publish: the preallocator's rename of a spare to
/// `.ready` fails (as on a full disk) once `fail` is set.
#[derive(Debug)]
struct GatedFailingPublish {
    gate: Arc<Gate>,
    fail: AtomicBool,
}

impl keel_wal::Storage for GatedFailingPublish {
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        self.gate.pass(Some(to));
        let publishing = to.to_string_lossy().ends_with(".ready");
        if publishing && self.fail.load(SeqCst) {
            return Err(std::io::Error::other(
                "injected: no space left to publish a spare",
            ));
        }
        std::fs::rename(from, to)
    }
}

/// A rotation waits for the preallocator's next zero-filled spare (parked as it publishes
/// it). Meanwhile a removal frees segments, which become recycled spares: the rotation
/// takes one of them at once instead of waiting on. And when the zero-filled spare then
/// fails (a full disk), the log goes on in the recycled ones instead of stopping: a
/// checkpoint that frees segments is what a full disk needs. (Before the fix the waiting
/// rotation never looked at the recycled spares: the committer waited for the parked
/// preallocator, and its failure poisoned the log with recycled spares at hand.)
#[test]
fn a_rotation_waiting_for_a_spare_takes_a_recycled_one_that_arrives_meanwhile() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(GatedFailingPublish {
            gate: Arc::new(Gate::default()),
            fail: AtomicBool::new(false),
        });
        let wal = open_on(dir.path(), backend, Arc::clone(&storage) as _);
        let mut acked = BTreeMap::new();
        let mut i = 0;
        let mut commit = |wal: &keel_wal::Wal, acked: &mut BTreeMap<Lsn, WalEntry>| {
            let e = entry(1, i, 6000);
            i += 1;
            acked.insert(wal.append_wait(std::slice::from_ref(&e)).unwrap(), e);
        };
        // Three segments (something to free), and the next spare published.
        while common::segment_lsns(dir.path()).len() < 3 {
            commit(&wal, &mut acked);
        }
        common::wait_for("published a spare", || common::spare_ready(dir.path()));
        // The next rotation takes that spare; the one after waits for its replacement,
        // which the gate parks as it is published.
        storage.gate.arm("keel-wal-prealloc", Some(".ready"));
        let rotations = wal.stats().rotations;
        let waiting = {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                let mut mine = BTreeMap::new();
                let mut k = 0;
                while wal.stats().rotations < rotations + 2 {
                    let e = entry(2, k, 6000);
                    k += 1;
                    mine.insert(wal.append_wait(std::slice::from_ref(&e)).unwrap(), e);
                }
                mine
            })
        };
        storage.gate.wait_parked();
        // The committer reaches the second rotation and waits there: it appends nothing more.
        let started = Instant::now();
        let mut last = (wal.next_lsn(), Instant::now());
        while wal.stats().rotations < rotations + 1 || last.1.elapsed() < Duration::from_millis(100)
        {
            assert!(
                started.elapsed() < LIMIT,
                "{backend:?}: never waited for a spare"
            );
            std::thread::sleep(Duration::from_millis(5));
            if wal.next_lsn() != last.0 {
                last = (wal.next_lsn(), Instant::now());
            }
        }
        let freed = wal.remove_segments_before(wal.durable_lsn()).unwrap();
        assert!(freed > 0, "{backend:?}: nothing freed to recycle");
        let mine = within(
            LIMIT,
            "the rotation, with a recycled spare at hand",
            move || waiting.join().unwrap(),
        );
        acked.extend(mine);
        assert!(
            wal.stats().segments_recycled > 0,
            "{backend:?}: no rotation went into a recycled file"
        );
        // The parked spare now fails to publish: the log goes on in recycled files.
        storage.fail.store(true, SeqCst);
        storage.gate.open();
        let before = wal.stats().rotations;
        let recycled = wal.stats().segments_recycled;
        let wal_for_more = Arc::clone(&wal);
        let more = within(LIMIT, "commits after the failed spare", move || {
            let mut more = BTreeMap::new();
            let mut k = 0;
            while wal_for_more.stats().rotations == before {
                let e = entry(3, k, 6000);
                k += 1;
                match wal_for_more.append_wait(std::slice::from_ref(&e)) {
                    Ok(lsn) => more.insert(lsn, e),
                    Err(error) => panic!("a commit failed with a recycled spare at hand: {error}"),
                };
            }
            more
        });
        acked.extend(more);
        assert!(wal.stats().segments_recycled > recycled, "{backend:?}");
        let oldest = common::segment_lsns(dir.path())[0];
        Arc::into_inner(wal).unwrap().close().unwrap();
        let recovered: BTreeMap<Lsn, WalEntry> = common::read_all(dir.path()).into_iter().collect();
        for (lsn, e) in acked.range(oldest..) {
            assert_eq!(
                recovered.get(lsn),
                Some(e),
                "{backend:?}: commit {lsn} lost"
            );
        }
        println!(
            "{backend:?}: {} acknowledged, log from {oldest}",
            acked.len()
        );
    }
}
