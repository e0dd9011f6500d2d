//! Adversarial review of the one open path (`keel_recovery::open_log` = recovery, repair,
//! then `Wal::resume`) on simulated storage.
//!
//! - `an_open_crashed_at_any_event_reopens_to_the_same_log` (passes): a point-in-time open
//!   that sets segments aside, zeroes a tail, lowers a witness and starts a fresh segment of
//!   a new size, crashed at each of its storage events, reopens to the same log; after it
//!   completes, a Strict commit survives a power loss.
//! - `a_sealed_segment_with_a_dead_process_writes_strands_later_commits` (failed before recovery synced the segment it seals): see there.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use keel_recovery::{CommittedTxn, RecoveryPolicy, Replay, ReplayError};
use keel_sim::{CrashPlan, CrashState, Damage, Sim};
use keel_wal::reader::{SegmentEvent, SegmentReader};
use keel_wal::segment;
use keel_wal::{BackendChoice, Durability, Lsn, RunId, Storage, Wal, WalEntry, WalOptions};

const SEGMENT: u64 = 64 * 1024;

fn options(storage: Arc<dyn Storage>, segment_bytes: u64) -> WalOptions {
    WalOptions {
        segment_bytes,
        max_record_bytes: 4096,
        backend: BackendChoice::Std,
        preallocate: false,
        durability: Durability::Strict,
        storage,
        ..WalOptions::default()
    }
}

fn real(segment_bytes: u64) -> WalOptions {
    options(keel_wal::storage::file_system(), segment_bytes)
}

/// Txn `t` of run 1: a write of `len` bytes and its commit.
fn txn(t: u64, len: usize) -> [WalEntry; 2] {
    let run_id = RunId::from_u128(1);
    [
        WalEntry::Write {
            run_id,
            txn_id: t,
            key: format!("k{t}").into_bytes(),
            value: vec![0x5a; len],
        },
        WalEntry::CommitTxn { run_id, txn_id: t },
    ]
}

/// Commit LSNs of the transactions a recovery applied.
#[derive(Default)]
struct Commits(Vec<Lsn>);

impl Replay for Commits {
    fn apply(&mut self, txn: &CommittedTxn<'_>) -> Result<(), ReplayError> {
        self.0.push(txn.commit_lsn);
        Ok(())
    }
}

fn open(
    dir: &Path,
    options: WalOptions,
    policy: RecoveryPolicy,
    covered: Option<Lsn>,
) -> Result<(Wal, Vec<Lsn>), keel_recovery::Error> {
    let mut commits = Commits::default();
    keel_recovery::open_log(dir, options, policy, covered, &mut commits)
        .map(|(wal, _)| (wal, commits.0))
}

/// `(offset, len)` of the record of `lsn` in the segment at `path`.
fn span_of(path: &Path, lsn: Lsn) -> (u64, u64) {
    let first_lsn = segment::parse_file_name(&path.file_name().unwrap().to_string_lossy());
    let file = segment::SegmentFile {
        path: path.to_path_buf(),
        first_lsn: first_lsn.unwrap(),
    };
    let mut reader = SegmentReader::open(&file).unwrap();
    loop {
        match reader.next_event().unwrap() {
            SegmentEvent::Record(r) if r.lsn == lsn => return (r.offset, r.len),
            SegmentEvent::Record(_) => {}
            other => panic!("LSN {lsn} not in {}: {other:?}", path.display()),
        }
    }
}

fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x10;
    file.write_all_at(&byte, offset).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Ten units (LSNs 1..=20) closed (the witness claims 20), then enough large units to rotate
/// into later segments; LSN 19 damaged: a point-in-time recovery cuts there, below the
/// witness, and sets every later segment aside.
fn damaged_log(dir: &Path) {
    let wal = keel_recovery::open_wal(dir, real(SEGMENT)).unwrap();
    for t in 0..10 {
        wal.append(&txn(t, 200)).wait().unwrap();
    }
    wal.close().unwrap();
    let wal = keel_recovery::open_wal(dir, real(SEGMENT)).unwrap();
    for t in 10..40 {
        wal.append(&txn(t, 3000)).wait().unwrap();
    }
    wal.close().unwrap();
    let segments = keel_wal::dir::list_directory(dir).unwrap().segments;
    assert!(segments.len() >= 2);
    let (offset, _) = span_of(&segments[0].path, 19);
    flip(&segments[0].path, offset + 40);
}

fn images(state: &CrashState) -> Vec<(String, CrashPlan)> {
    let n = state.pending.len();
    let mut plans = vec![("process crash".to_string(), CrashPlan::process())];
    for live in [false, true] {
        for keep in 0..=n {
            let what = format!("power loss keeping {keep} of {n} writes, live dirs {live}");
            plans.push((what, CrashPlan::prefix(state, keep, live)));
        }
    }
    plans
}

#[test]
fn an_open_crashed_at_any_event_reopens_to_the_same_log() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("original");
    damaged_log(&original);
    // Reopened with another segment size: the resume starts a fresh segment too.
    let resized = 2 * SEGMENT;
    let reference = base.path().join("reference");
    copy_dir(&original, &reference);
    let (wal, applied) =
        open(&reference, real(resized), RecoveryPolicy::PointInTime, None).unwrap();
    assert_eq!(wal.next_lsn(), 19);
    wal.close().unwrap();
    let mut crashes = 0;
    for event in 0.. {
        let root = base.path().join(format!("run-{event}"));
        let dir = root.join("log");
        copy_dir(&original, &dir);
        let sim = Sim::new(&root, 7).unwrap();
        sim.crash_after_events(event);
        let opened = open(
            &dir,
            options(sim.clone(), resized),
            RecoveryPolicy::PointInTime,
            None,
        );
        let Some(state) = sim.crashed() else {
            // The whole open ran: a Strict commit after it survives a power loss that keeps
            // only what was made durable.
            let (wal, _) = opened.unwrap();
            sim.crash_after_events(1 << 40);
            let acked = wal.append(&txn(100, 10)).wait().unwrap();
            let state = sim.crash();
            drop(wal);
            let image = base.path().join("after-open");
            state
                .materialize(&CrashPlan::keeping(&state, false, |_| false), &image)
                .unwrap();
            let (wal, commits) = open(
                &image.join("log"),
                real(resized),
                RecoveryPolicy::default(),
                None,
            )
            .unwrap();
            wal.close().unwrap();
            assert_eq!(commits.last(), Some(&acked), "{commits:?}");
            break;
        };
        drop(opened);
        drop(sim);
        crashes += 1;
        for (n, (what, plan)) in images(&state).into_iter().enumerate() {
            let image = base.path().join(format!("image-{event}-{n}"));
            state.materialize(&plan, &image).unwrap();
            let what = format!("open crashed at its event {event}, {what}");
            let (wal, again) = open(
                &image.join("log"),
                real(resized),
                RecoveryPolicy::PointInTime,
                None,
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(wal.next_lsn(), 19, "{what}");
            wal.close().unwrap();
            assert_eq!(again, applied, "{what}");
            std::fs::remove_dir_all(&image).unwrap();
        }
    }
    assert!(crashes >= 6, "{crashes} crash points");
}

fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    std::pin::Pin::new(future).poll(&mut cx)
}

/// Waits until the simulated writer blocks on a completion.
fn until_blocked(sim: &Sim) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sim.writer_blocked() {
        assert!(Instant::now() < deadline, "the writer did not block");
        std::thread::yield_now();
    }
}

/// Failed before the fix. A process dies after its last record's write completed and before its fdatasync
/// (nothing acknowledged). The next process's recovery reads that record from the page cache
/// and, because the last segment holds damage its snapshot covers (a media fault at LSN 5,
/// snapshot through LSN 10: skipped), seals the segment with a fresh one. `Wal::resume`
/// syncs "the last segment" so that the previous process's writes are durable before new
/// records vouch for them, but the last segment is now the fresh one: the sealed segment's
/// page-cache records are never synced. A Strict commit is acknowledged in the fresh
/// segment; a power loss drops the unsynced records; the next open, with the same snapshot,
/// finds the sealed segment ending early and the fresh one starting past it (a missing
/// segment above the snapshot) and refuses: the acknowledged commit is stranded.
///
/// Root cause: `open_last_segment` (wal/src/wal/resume.rs) syncs only the segment appends
/// continue in; a recovery that starts a fresh segment (repair.rs `plan.fresh`) leaves the
/// segment it sealed unsynced. (The same held for the old `Wal::open`.) Fix: sync the
/// segment the walk ended in whenever the log resumes elsewhere (in `repair::apply` before
/// `create_empty`, or in `resume` before `start`).
#[test]
fn a_sealed_segment_with_a_dead_process_writes_strands_later_commits() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    let dir = root.join("log");
    let wal = keel_recovery::open_wal(&dir, real(SEGMENT)).unwrap();
    for t in 0..10 {
        wal.append(&txn(t, 200)).wait().unwrap();
    }
    wal.close().unwrap();
    let first = keel_wal::dir::list_directory(&dir).unwrap().segments[0]
        .path
        .clone();
    let (offset_5, _) = span_of(&first, 5);

    // A process appends txn 10 (LSNs 21, 22): its write completes, then it dies.
    let sim = Sim::new(&root, 1).unwrap();
    let (wal, _) = open(
        &dir,
        options(sim.clone(), SEGMENT),
        RecoveryPolicy::default(),
        None,
    )
    .unwrap();
    sim.set_manual(true);
    let mut pending = wal.append(&txn(10, 200));
    until_blocked(&sim);
    assert!(sim.advance(), "the write completes");
    assert!(poll_once(&mut pending).is_pending(), "not acknowledged");
    sim.crash();
    drop(pending);
    drop(wal);
    let unsynced = sim.restart(2).unwrap();
    assert!(unsynced.writes > 0, "{unsynced:?}");
    // A media fault at LSN 5, which the caller's snapshot (through LSN 10) covers.
    let name = first.file_name().unwrap();
    sim.damage(&Damage::BitFlip {
        path: Path::new("log").join(name),
        offset: offset_5 + 40,
        bit: 3,
    })
    .unwrap();

    let (wal, replayed) = open(
        &dir,
        options(sim.clone(), SEGMENT),
        RecoveryPolicy::default(),
        Some(10),
    )
    .unwrap();
    assert_eq!(
        replayed.last(),
        Some(&22),
        "txn 10 read from the page cache"
    );
    let acked = wal.append(&txn(11, 200)).wait().unwrap();
    // Power loss: only what was made durable survives.
    let state = sim.crash();
    drop(wal);
    let image = base.path().join("image");
    state
        .materialize(&CrashPlan::keeping(&state, false, |_| false), &image)
        .unwrap();
    match open(
        &image.join("log"),
        real(SEGMENT),
        RecoveryPolicy::default(),
        Some(10),
    ) {
        Ok((wal, commits)) => {
            wal.close().unwrap();
            assert_eq!(commits.last(), Some(&acked), "{commits:?}");
        }
        Err(e) => panic!(
            "the commit at LSN {acked}, acknowledged as durable, cannot be opened after a power \
             loss (same snapshot, default policy): {e}"
        ),
    }
}
