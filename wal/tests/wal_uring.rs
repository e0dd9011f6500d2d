//! What only the io_uring backend does: chains through the ring with short writes reissued,
//! a real error from the ring poisoning the log, the probe's fallback and the "uring
//! required" error, and byte-identical segments against the std backend for one seeded
//! workload (but for the durable-witness slots, written when the writer idles, whose timing
//! is the machine's; the closing witness is compared by its claim). (Everything else runs on
//! both backends in the other test files.)

mod common;

use std::path::Path;
use std::sync::Arc;

use keel_sim::Faults;
use keel_wal::{BackendChoice, BackendKind, DatabaseId, Error, Wal, WalOptions};

fn ring_options(faults: &Arc<Faults>) -> WalOptions {
    faults.uring_ring_only(true);
    WalOptions {
        storage: Arc::clone(faults) as _,
        ..common::small_options(BackendChoice::Uring)
    }
}

/// `threads` committers, `per_thread` awaited appends each; returns what was acknowledged.
fn commit_concurrently(
    wal: &Arc<Wal>,
    threads: u64,
    per_thread: u64,
) -> Vec<(u64, keel_wal::Result<u64>)> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = Arc::clone(wal);
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|i| {
                        let key = format!("t{t}-{i}");
                        let entry = common::write(
                            u128::from(t),
                            i,
                            &key,
                            100 + usize::try_from(i % 7).unwrap() * 300,
                        );
                        (t * 1_000_000 + i, wal.append(&[entry]).wait())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

#[test]
fn short_writes_are_reissued_and_nothing_is_lost() {
    if !common::uring_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    faults.uring_short_writes(true);
    let wal = Arc::new(keel_recovery::open_wal(dir.path(), ring_options(&faults)).unwrap());
    assert_eq!(wal.backend(), BackendKind::Uring);
    let acked = commit_concurrently(&wal, 4, 150);
    assert!(
        acked.iter().all(|(_, r)| r.is_ok()),
        "every commit succeeds"
    );
    let stats = wal.stats();
    Arc::into_inner(wal).unwrap().close().unwrap();
    assert!(stats.rotations > 0, "the workload crosses segments");
    let records = common::read_all(dir.path());
    assert_eq!(
        records.len(),
        600,
        "every acknowledged record reads back whole"
    );
    for (i, (lsn, _)) in records.iter().enumerate() {
        assert_eq!(*lsn, i as u64 + 1);
    }
}

#[test]
fn an_error_from_the_ring_poisons_and_keeps_what_was_acknowledged() {
    if !common::uring_available() {
        return;
    }
    for fail_after in [0u32, 5, 40] {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        faults.fail_uring_write_after(fail_after);
        let wal = Arc::new(keel_recovery::open_wal(dir.path(), ring_options(&faults)).unwrap());
        let results = commit_concurrently(&wal, 4, 40);
        let acked: Vec<u64> = results
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok().copied())
            .collect();
        let failed: Vec<&Error> = results
            .iter()
            .filter_map(|(_, r)| r.as_ref().err())
            .collect();
        assert!(
            !failed.is_empty(),
            "fail_after {fail_after}: the bad write fails commits"
        );
        for error in &failed {
            let Error::Poisoned { cause } = error else {
                panic!("fail_after {fail_after}: expected poison, got {error}");
            };
            assert_eq!(cause.operation, "write");
            assert_eq!(cause.error.raw_os_error(), Some(9), "EBADF from the kernel");
        }
        assert!(matches!(
            wal.append(&[common::write(9, 9, "late", 10)]).wait(),
            Err(Error::Poisoned { .. })
        ));
        drop(wal);
        let reopened =
            keel_recovery::open_wal(dir.path(), common::small_options(BackendChoice::Uring))
                .unwrap();
        reopened.close().unwrap();
        let records = common::read_all(dir.path());
        let highest = acked.iter().copied().max().unwrap_or(0);
        assert!(
            records.len() as u64 >= highest,
            "fail_after {fail_after}: acknowledged LSN {highest} lost ({} records remain)",
            records.len()
        );
    }
}

/// Commits concurrently on a ring armed with `arm`; every commit that fails must fail with
/// the poison `operation` names (never a panicked writer, never another error), at least one
/// must fail, and everything acknowledged must read back after a reopen.
fn poisoned_by(operation: &str, errno: Option<i32>, arm: impl Fn(&Faults, u32)) {
    for fail_after in [0u32, 3, 20] {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        arm(&faults, fail_after);
        let wal = Arc::new(keel_recovery::open_wal(dir.path(), ring_options(&faults)).unwrap());
        let results = commit_concurrently(&wal, 4, 40);
        let highest = results
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok().copied())
            .max()
            .unwrap_or(0);
        let failed: Vec<&Error> = results
            .iter()
            .filter_map(|(_, r)| r.as_ref().err())
            .collect();
        assert!(!failed.is_empty(), "fail_after {fail_after}: commits fail");
        for error in &failed {
            let Error::Poisoned { cause } = error else {
                panic!("fail_after {fail_after}: expected poison, got {error}");
            };
            assert_eq!(cause.operation, operation, "fail_after {fail_after}");
            if errno.is_some() {
                assert_eq!(cause.error.raw_os_error(), errno, "fail_after {fail_after}");
            }
        }
        let closed = Arc::into_inner(wal).unwrap().close();
        assert!(
            matches!(&closed, Err(Error::Poisoned { cause }) if cause.operation == operation),
            "fail_after {fail_after}: {closed:?}"
        );
        let reopened =
            keel_recovery::open_wal(dir.path(), common::small_options(BackendChoice::Uring))
                .unwrap();
        reopened.close().unwrap();
        let records = common::read_all(dir.path());
        assert!(
            records.len() as u64 >= highest,
            "fail_after {fail_after}: acknowledged LSN {highest} lost ({} records remain)",
            records.len()
        );
    }
}

#[test]
fn a_failed_sync_after_a_short_write_poisons_the_log() {
    if !common::uring_available() {
        return;
    }
    poisoned_by("fdatasync", Some(9), |faults, after| {
        faults.uring_short_writes(true);
        faults.fail_uring_sync_after(after);
    });
}

#[test]
fn a_failed_io_uring_enter_poisons_the_log_and_late_completions_are_ignored() {
    if !common::uring_available() {
        return;
    }
    poisoned_by("io_uring_enter", None, |faults, after| {
        faults.fail_uring_enter_after(after);
    });
}

#[test]
fn a_failed_probe_falls_back_to_std_unless_uring_was_required() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    faults.fail_uring_probe();
    let auto = WalOptions {
        storage: Arc::clone(&faults) as _,
        ..common::small_options(BackendChoice::Auto)
    };
    let wal = keel_recovery::open_wal(dir.path(), auto.clone()).unwrap();
    assert_eq!(wal.backend(), BackendKind::Std);
    assert_eq!(wal.stats().backend, BackendKind::Std);
    wal.append(&[common::write(1, 1, "k", 10)]).wait().unwrap();
    wal.close().unwrap();

    let required = WalOptions {
        backend: BackendChoice::Uring,
        ..auto
    };
    match keel_recovery::open_wal(dir.path(), required) {
        Err(keel_recovery::Error::Wal(Error::BackendUnavailable { backend, reason })) => {
            assert_eq!(backend, "uring");
            let why = if cfg!(all(target_os = "linux", feature = "uring")) {
                "injected probe failure"
            } else {
                "not compiled in"
            };
            assert!(reason.contains(why), "{reason}");
        }
        other => panic!("expected BackendUnavailable, got {other:?}"),
    }
    // The failed open left the log usable.
    assert_eq!(common::read_all(dir.path()).len(), 1);
}

#[test]
fn auto_runs_on_uring_where_it_is_available() {
    if !common::uring_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wal =
        keel_recovery::open_wal(dir.path(), common::small_options(BackendChoice::Auto)).unwrap();
    assert_eq!(wal.stats().backend, BackendKind::Uring);
    wal.close().unwrap();
}

/// A seeded workload of awaited appends (one committer, so each record's durable mark is
/// determined by the workload alone), crossing several segments.
fn seeded_workload(dir: &Path, backend: BackendChoice, seed: u64) {
    let faults = Faults::new();
    faults.deterministic_salts(seed | 1);
    faults.uring_ring_only(true);
    let options = WalOptions {
        storage: faults,
        database_id: Some(DatabaseId([0x5a; 16])),
        preallocate: false,
        ..common::small_options(backend)
    };
    let wal = keel_recovery::open_wal(dir, options).unwrap();
    let mut rng = keel_sim::SimRng::new(seed);
    for txn in 0..300u64 {
        let entries: Vec<_> = (0..=rng.below(3))
            .map(|i| {
                let len = usize::try_from(rng.below(3000)).unwrap();
                common::write(u128::from(rng.below(4)), txn, &format!("k{txn}-{i}"), len)
            })
            .collect();
        wal.append(&entries).wait().unwrap();
        if rng.below(10) == 0 {
            wal.sync().wait().unwrap();
        }
    }
    wal.close().unwrap();
}

/// The log's files, with the witness slots of each segment zeroed.
fn log_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "wal")
                || p.file_name().is_some_and(|n| n == "IDENTITY")
        })
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let mut bytes = std::fs::read(&p).unwrap();
            if name.ends_with(".wal") {
                for offset in keel_wal::witness::SLOT_OFFSETS {
                    let at = usize::try_from(offset).unwrap();
                    bytes[at..at + keel_wal::witness::SLOT_LEN].fill(0);
                }
            }
            (name, bytes)
        })
        .collect();
    files.sort();
    files
}

/// What the last segment's witness claims: every record, after the close.
fn last_witness_claim(dir: &Path) -> (u64, u64) {
    let last = keel_wal::dir::list_directory(dir)
        .unwrap()
        .segments
        .pop()
        .unwrap();
    let file = std::fs::File::open(&last.path).unwrap();
    let header = keel_wal::segment::read_header(&file, &last).unwrap();
    let witness = keel_wal::witness::read(&file, &last.path, &header)
        .unwrap()
        .expect("the close wrote a witness");
    (witness.durable_lsn, witness.end_offset)
}

#[test]
fn the_same_seeded_workload_writes_identical_bytes_on_both_backends() {
    if !common::uring_available() {
        return;
    }
    let seed = common::seed(0x0b17_1de7);
    let (std_dir, uring_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    seeded_workload(std_dir.path(), BackendChoice::Std, seed);
    seeded_workload(uring_dir.path(), BackendChoice::Uring, seed);
    let (on_std, on_uring) = (log_files(std_dir.path()), log_files(uring_dir.path()));
    assert_eq!(
        last_witness_claim(std_dir.path()),
        last_witness_claim(uring_dir.path()),
        "seed {seed}: the closing witnesses claim the same"
    );
    assert!(on_std.len() > 3, "the workload spans several segments");
    let names = |files: &[(String, Vec<u8>)]| files.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&on_std), names(&on_uring), "seed {seed}: same files");
    for ((name, a), (_, b)) in on_std.iter().zip(&on_uring) {
        let first_difference = a.iter().zip(b).position(|(x, y)| x != y);
        assert!(
            a.len() == b.len() && first_difference.is_none(),
            "seed {seed}: {name} differs (lengths {} and {}, first difference at {first_difference:?})",
            a.len(),
            b.len()
        );
    }
}

/// The segment's descriptors the process holds with every bit of `flag` set (from `/proc/self/fdinfo`).
fn descriptors_with(path: &Path, flag: u32) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| {
            let fd = fd.ok()?;
            (std::fs::read_link(fd.path()).ok()? == path).then_some(())?;
            let info = std::fs::read_to_string(format!(
                "/proc/self/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .ok()?;
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
            (u32::from_str_radix(flags, 8).ok()? & flag == flag).then_some(())
        })
        .count()
}

/// `BackendChoice::UringDirect` writes a Strict log's records through `O_DIRECT | O_DSYNC`
/// descriptors of the segment (no page-cache copy, no separate fdatasync), one record at a
/// time and from several committers, into zero-filled and recycled segments; what it wrote
/// reads back byte for byte, after a reopen too (whose first write starts inside a block it
/// must read back).
#[test]
fn direct_writes_go_through_o_direct_and_read_back() {
    if !common::uring_available() {
        return;
    }
    const O_DIRECT: u32 = 0o40000;
    const O_DSYNC: u32 = 0o10000;
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        recycle_segments: 2,
        ..common::small_options(BackendChoice::UringDirect)
    };
    let (mut expected, mut recycled) = (Vec::new(), 0);
    for life in 0..3u64 {
        let wal = Arc::new(keel_recovery::open_wal(dir.path(), options.clone()).unwrap());
        assert_eq!(wal.backend(), BackendKind::UringDirect);
        for i in 0..40 {
            let entry = common::write(
                1,
                life * 1000 + i,
                "k",
                usize::try_from(i * 37 % 900).unwrap(),
            );
            let lsn = wal.append(std::slice::from_ref(&entry)).wait().unwrap();
            expected.push((lsn, entry));
        }
        let segment = common::last_segment(dir.path());
        assert!(
            descriptors_with(&segment, O_DIRECT | O_DSYNC) > 0,
            "no O_DIRECT descriptor of {}",
            segment.display()
        );
        let acked = commit_concurrently(&wal, 4, 60);
        assert!(acked.iter().all(|(_, r)| r.is_ok()));
        let durable = wal.durable_lsn();
        wal.remove_segments_before(durable).unwrap();
        recycled += wal.stats().segments_recycled;
        Arc::into_inner(wal).unwrap().close().unwrap();
        let all = common::read_all(dir.path());
        for (lsn, entry) in &expected {
            if let Some((_, found)) = all.iter().find(|(l, _)| l == lsn) {
                assert_eq!(found, entry, "LSN {lsn}");
            }
        }
        assert_eq!(all.last().map(|(l, _)| *l), Some(durable));
    }
    assert!(recycled > 0, "no segment was written into a recycled file");
}

/// Where the file system refuses direct I/O (injected here), `uring-direct` writes the
/// segment through the page cache; the backend is still the one chosen, and
/// `WalStats::direct_refused` counts the segments it wrote that way (0 while all went
/// direct), so a user can tell which one they got.
#[test]
fn segments_refused_direct_io_are_counted_in_the_stats() {
    if !common::uring_available() {
        return;
    }
    const O_DIRECT: u32 = 0o40000;
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let options = WalOptions {
        storage: Arc::clone(&faults) as _,
        ..common::small_options(BackendChoice::UringDirect)
    };
    let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
    let mut acked = Vec::new();
    let mut append = |wal: &Wal, i: u64| {
        let entry = common::write(1, i, "k", 3000);
        let lsn = wal.append_wait(std::slice::from_ref(&entry)).unwrap();
        acked.push((lsn, entry));
    };
    append(&wal, 0);
    assert_eq!(
        wal.stats().direct_refused,
        0,
        "the first segment went direct"
    );
    faults.uring_refuse_direct(true);
    // 3 KiB records in 64 KiB segments: 60 of them start a few more segments.
    for i in 1..60 {
        append(&wal, i);
    }
    let stats = wal.stats();
    assert_eq!(stats.backend, BackendKind::UringDirect);
    assert!(stats.rotations >= 2, "{stats:?}");
    assert_eq!(
        stats.direct_refused, stats.rotations,
        "every later segment: {stats:?}"
    );
    let last = common::last_segment(dir.path());
    assert_eq!(
        descriptors_with(&last, O_DIRECT),
        0,
        "no direct descriptor of a refused segment"
    );
    wal.close().unwrap();
    assert_eq!(common::read_all(dir.path()), acked);
}
