//! Adversarial review of the durable witness: a point-in-time repair interrupted by a crash.
//!
//! A cut below the witness lowers the witness and zeroes what lies beyond the cut. The
//! documented promise (docs/RECOVERY.md, "Crash safety"; docs/FORMAT.md) is that a crash
//! part-way leaves "the damage that made the cut, judged the same way again". Here the
//! damage is proven only by the witness (a damaged record of the last unit, whose records
//! carry no durable mark reaching each other): if the witness is lowered while the records
//! it claimed are still on disk, the next recovery no longer sees a proof, and the default
//! policy cuts acknowledged records as a `TornTail`, reporting that nothing acknowledged was
//! lost, instead of refusing.
//!
//! The real repair runs under simulated storage and is crashed at each of its hook events
//! (a process crash, and power losses keeping any prefix of its pending writes); the default
//! recovery of every image must either still refuse the damage, or find the repair complete.
//!
//! The second test repeats the repair: a first run crashed at each of its events, then a new
//! process on the same storage runs it again, crashed at each of its events. A first run that
//! zeroed the tail and crashed before its sync leaves zeros in the page cache only; the second
//! must sync them before it lowers the witness, or a power loss keeps the lowered witness and
//! loses the zeros (every subset of the pending writes is tried).

use std::path::Path;
use std::sync::Arc;

use keel_recovery::{
    CommittedTxn, Error, Finding, RecoveryOptions, RecoveryPolicy, RecoveryReport, Replay,
    ReplayError, recover, recover_with,
};
use keel_sim::{CrashPlan, CrashState, Sim};
use keel_wal::segment;
use keel_wal::witness::{self, DurableProof};
use keel_wal::{BackendChoice, Durability, Lsn, RunId, WalEntry, WalOptions};

struct Count;

impl Replay for Count {
    fn apply(&mut self, _: &CommittedTxn<'_>) -> Result<(), ReplayError> {
        Ok(())
    }
}

/// Recovers `dir` on the simulated storage `sim`.
fn recover_on(sim: &Arc<Sim>, dir: &Path, policy: RecoveryPolicy) -> Result<RecoveryReport, Error> {
    let options = RecoveryOptions {
        policy,
        storage: Arc::clone(sim) as _,
        ..RecoveryOptions::default()
    };
    recover_with(dir, options, &mut Count)
}

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 64 * 1024,
        max_record_bytes: 4096,
        backend: BackendChoice::Std,
        preallocate: false,
        durability: Durability::Strict,
        ..WalOptions::default()
    }
}

/// Ten units of a write and a commit (LSNs 1 to 20), closed: the close's witness claims 20.
fn witnessed_log(dir: &Path) {
    let wal = keel_recovery::open_wal(dir, options()).unwrap();
    let run_id = RunId::from_u128(1);
    for txn_id in 0..10u64 {
        let unit = [
            WalEntry::Write {
                run_id,
                txn_id,
                key: format!("k{txn_id}").into_bytes(),
                value: vec![0x5a; 200],
            },
            WalEntry::CommitTxn { run_id, txn_id },
        ];
        wal.append(&unit).wait().unwrap();
    }
    wal.close().unwrap();
}

/// Offset of the record of `lsn` in the only segment.
fn offset_of(dir: &Path, lsn: Lsn) -> u64 {
    let listing = keel_wal::dir::list_directory(dir).unwrap();
    let mut reader = keel_wal::reader::SegmentReader::open(&listing.segments[0]).unwrap();
    loop {
        match reader.next_event().unwrap() {
            keel_wal::reader::SegmentEvent::Record(r) if r.lsn == lsn => return r.offset,
            keel_wal::reader::SegmentEvent::Record(_) => {}
            other => panic!("LSN {lsn} not found: {other:?}"),
        }
    }
}

fn witness_lsn(dir: &Path) -> Lsn {
    let listing = keel_wal::dir::list_directory(dir).unwrap();
    let path = &listing.segments[0].path;
    let file = std::fs::File::open(path).unwrap();
    let header = segment::read_header(&file, &listing.segments[0]).unwrap();
    witness::read(&file, path, &header)
        .unwrap()
        .expect("a witness")
        .durable_lsn
}

fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x10;
    file.write_all_at(&byte, offset).unwrap();
}

/// What the default policy makes of an image: it must refuse the witnessed damage (as on the
/// damaged log itself), or find the point-in-time repair complete (clean, ending at `cut`).
fn check_default(image: &Path, cut: Lsn, witnessed: Lsn, what: &str) {
    match recover(image, RecoveryPolicy::default(), &mut Count) {
        Err(Error::Refused {
            finding: Finding::DamageBelowDurableMark { lsn, .. },
            ..
        }) => assert_eq!(lsn, cut, "{what}"),
        Err(other) => panic!("{what}: unexpected error {other}"),
        Ok(report) => check_repaired(&report, cut, witnessed, what),
    }
}

fn check_repaired(report: &RecoveryReport, cut: Lsn, witnessed: Lsn, what: &str) {
    for anomaly in &report.anomalies {
        if let Finding::TornTail { lsn, .. } = anomaly.finding {
            assert!(
                lsn > witnessed,
                "{what}: the default policy cut LSN {lsn} as a torn tail, although the \
                 witness had claimed LSNs through {witnessed} durable (acknowledged data \
                 reported as never acknowledged): {report}"
            );
        }
    }
    assert_eq!(report.next_lsn, cut, "{what}: {report}");
}

fn images(state: &CrashState) -> Vec<(String, CrashPlan)> {
    let mut plans = vec![("process crash".to_string(), CrashPlan::process())];
    for keep in 0..=state.pending.len() {
        for live in [false, true] {
            plans.push((
                format!(
                    "power loss keeping {keep} of {} writes, live dirs {live}",
                    state.pending.len()
                ),
                CrashPlan::prefix(state, keep, live),
            ));
        }
    }
    plans
}

#[test]
fn a_point_in_time_repair_crashed_part_way_never_turns_witnessed_damage_into_a_torn_tail() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("original");
    witnessed_log(&original);
    let witnessed = witness_lsn(&original);
    assert_eq!(witnessed, 20);
    // The write of the last unit (LSN 19) damaged; LSN 20's durable mark (18) does not reach
    // it: only the witness proves it was durable.
    let segment_path = keel_wal::dir::list_directory(&original).unwrap().segments[0]
        .path
        .clone();
    flip(&segment_path, offset_of(&original, 19) + 40);
    match recover(&original, RecoveryPolicy::Absolute, &mut Count) {
        Err(Error::Refused {
            finding:
                Finding::DamageBelowDurableMark {
                    lsn: 19,
                    proof: DurableProof::Witness { .. },
                    ..
                },
            ..
        }) => {}
        other => panic!("expected witnessed damage at LSN 19, got {other:?}"),
    }
    let cut = 19;
    let mut crashes = 0;
    for event in 0.. {
        let root = base.path().join(format!("run-{event}"));
        let dir = root.join("log");
        copy_dir(&original, &dir);
        let sim = Sim::new(&root, 7).unwrap();
        sim.crash_after_events(event);
        let result = recover_on(&sim, &dir, RecoveryPolicy::PointInTime);
        let Some(state) = sim.crashed() else {
            let report = result.unwrap_or_else(|e| panic!("uninterrupted repair: {e}"));
            assert_eq!(report.next_lsn, cut, "{report}");
            drop(sim);
            check_default(&dir, cut, witnessed, "after the whole repair");
            break;
        };
        drop(sim);
        crashes += 1;
        for (n, (what, plan)) in images(&state).into_iter().enumerate() {
            let image = base.path().join(format!("image-{event}-{n}"));
            state.materialize(&plan, &image).unwrap();
            let what = format!("repair crashed at its event {event}, {what}");
            check_default(&image.join("log"), cut, witnessed, &what);
        }
    }
    assert!(crashes >= 2, "the repair has a lowering and a zeroing step");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Power losses over the pending writes: each prefix, and each choice of keeping or losing
/// the writes to the header block (the witness slots) and those beyond it (records, zeros).
fn power_losses(state: &CrashState) -> Vec<(String, CrashPlan)> {
    let n = state.pending.len();
    let header = |i: usize| state.pending[i].offset < segment::HEADER_BLOCK_LEN;
    let mut plans = Vec::new();
    for live in [false, true] {
        for keep in 0..=n {
            plans.push((
                format!("power loss keeping the first {keep} of {n} writes, live dirs {live}"),
                CrashPlan::prefix(state, keep, live),
            ));
        }
        for (keep_header, keep_rest) in [(true, false), (false, true)] {
            plans.push((
                format!(
                    "power loss keeping header-block writes {keep_header}, other writes \
                     {keep_rest} (of {n}), live dirs {live}"
                ),
                CrashPlan::keeping(
                    state,
                    live,
                    |i| {
                        if header(i) { keep_header } else { keep_rest }
                    },
                ),
            ));
        }
    }
    plans
}

/// Runs the repair crashed at `first` on fresh storage, then (when it crashed) a new process
/// on the same storage repeats it crashed at `second`. Returns the second crash's state, or
/// `None` when a run finished (`Some(None)` inside: the first run finished).
fn twice_interrupted(
    original: &Path,
    root: &Path,
    first: u64,
    second: u64,
) -> Option<Option<CrashState>> {
    let dir = root.join("log");
    copy_dir(original, &dir);
    let sim = Sim::new(root, 7).unwrap();
    sim.crash_after_events(first);
    let outcome = recover_on(&sim, &dir, RecoveryPolicy::PointInTime);
    sim.crashed()?;
    drop(outcome);
    sim.restart(8).unwrap();
    sim.crash_after_events(second);
    let outcome = recover_on(&sim, &dir, RecoveryPolicy::PointInTime);
    let state = sim.crashed();
    drop(outcome);
    Some(state)
}

#[test]
fn a_repair_repeated_after_a_process_crash_never_turns_witnessed_damage_into_a_torn_tail() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("original");
    witnessed_log(&original);
    let witnessed = witness_lsn(&original);
    assert_eq!(witnessed, 20);
    // The write of the last unit (LSN 19) damaged: only the witness proves it was durable.
    let segment_path = keel_wal::dir::list_directory(&original).unwrap().segments[0]
        .path
        .clone();
    flip(&segment_path, offset_of(&original, 19) + 40);
    match recover(&original, RecoveryPolicy::Absolute, &mut Count) {
        Err(Error::Refused {
            finding:
                Finding::DamageBelowDurableMark {
                    lsn: 19,
                    proof: DurableProof::Witness { .. },
                    ..
                },
            ..
        }) => {}
        other => panic!("expected witnessed damage at LSN 19, got {other:?}"),
    }
    let cut = 19;
    let mut images = 0;
    'first: for first in 0.. {
        for second in 0.. {
            let root = base.path().join(format!("run-{first}-{second}"));
            let state = match twice_interrupted(&original, &root, first, second) {
                None => break 'first,
                Some(None) => {
                    check_default(
                        &root.join("log"),
                        cut,
                        witnessed,
                        "after the repeated repair",
                    );
                    break;
                }
                Some(Some(state)) => state,
            };
            for (n, (what, plan)) in power_losses(&state).into_iter().enumerate() {
                let image = base.path().join(format!("image-{first}-{second}-{n}"));
                state.materialize(&plan, &image).unwrap();
                let what = format!(
                    "repair crashed at its event {first} (process crash), repeated and crashed \
                     at its event {second}, {what}"
                );
                check_default(&image.join("log"), cut, witnessed, &what);
                std::fs::remove_dir_all(&image).unwrap();
                images += 1;
            }
            std::fs::remove_dir_all(&root).unwrap();
        }
    }
    println!("{images} power-loss images checked");
    assert!(images > 0);
}
