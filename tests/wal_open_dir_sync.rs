//! Opening a log makes the directory entries it relies on durable, also those an earlier
//! process made and died before syncing: here, the log directory's own name in its parent.
//! (A segment's name after a rotation is `review_dir_sync.rs`.)

use keel_recovery::{CommittedTxn, RecoveryPolicy, Replay, ReplayError, recover};
use keel_sim::{CrashPlan, Sim};
use keel_wal::{Durability, RunId, WalEntry, WalOptions};

struct Count;
impl Replay for Count {
    fn apply(&mut self, _: &CommittedTxn<'_>) -> Result<(), ReplayError> {
        Ok(())
    }
}

#[test]
fn a_log_directory_whose_name_was_never_synced_is_synced_at_open() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("db");
    let sim = Sim::new(&root, 7).unwrap();
    // A process created the log directory and was killed before it synced the parent.
    let dir = root.join("wal");
    std::fs::create_dir(&dir).unwrap();
    // The restarted process opens (creating the log in the existing directory) and commits.
    let options = WalOptions {
        segment_bytes: 64 * 1024,
        max_record_bytes: 4096,
        preallocate: false,
        storage: sim.clone(),
        ..WalOptions::default()
    };
    let wal = keel_recovery::open_wal(&dir, options).unwrap();
    let mut acked = 0;
    for i in 0..4u64 {
        let entry = WalEntry::Payload {
            run_id: RunId::from_u128(7),
            tag: 1,
            payload: i.to_le_bytes().to_vec(),
        };
        acked = wal
            .append_with(&[entry], Durability::Strict)
            .wait()
            .unwrap();
    }
    // Power loss: every data write kept, directory entries as last synced.
    let state = sim.crash();
    drop(wal);
    let image = base.path().join("image");
    state
        .materialize(&CrashPlan::keeping(&state, false, |_| true), &image)
        .unwrap();
    drop(sim);
    let log = image.join("wal");
    assert!(
        log.is_dir(),
        "the log directory is gone after the power loss"
    );
    let report = recover(&log, RecoveryPolicy::default(), &mut Count).unwrap();
    assert_eq!(report.last_lsn, Some(acked));
}
