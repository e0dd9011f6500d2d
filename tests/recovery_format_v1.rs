//! keel-recovery reads a log written in segment format version 1 (what builds before
//! `CommitSpan` wrote), and, once the log was reopened for appends, the version-1 segments
//! followed by the version-2 one the writer started.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use keel_recovery::{CommittedTxn, RecoveryPolicy, Replay, ReplayError, recover};
use keel_wal::segment::{HEADER_BLOCK_LEN, SegmentHeader};
use keel_wal::{BackendChoice, Lsn, RunId, Wal, WalEntry, WalOptions};

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        preallocate: false,
        ..WalOptions::default()
    }
}

#[derive(Default)]
struct Commits(Vec<Lsn>);

impl Replay for Commits {
    fn apply(&mut self, txn: &CommittedTxn<'_>) -> Result<(), ReplayError> {
        self.0.push(txn.commit_lsn);
        Ok(())
    }
}

/// Transactions `txns` of one write (2 KiB) and a commit each; the commit of the last one is
/// a `CommitSpan` when `span`.
fn commit(wal: &Wal, txns: std::ops::Range<u64>, span: bool) {
    let run_id = RunId::from_u128(3);
    for txn_id in txns {
        let first_lsn = wal.next_lsn();
        let write = WalEntry::Write {
            run_id,
            txn_id,
            key: txn_id.to_le_bytes().to_vec(),
            value: vec![7; 2048],
        };
        let commit = if span {
            WalEntry::CommitSpan {
                run_id,
                txn_id,
                first_lsn,
            }
        } else {
            WalEntry::CommitTxn { run_id, txn_id }
        };
        wal.append(&[write, commit]).wait().unwrap();
    }
}

fn set_version_1(path: &Path) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut block = vec![0u8; usize::try_from(HEADER_BLOCK_LEN).unwrap()];
    file.read_exact_at(&mut block, 0).unwrap();
    let header = SegmentHeader::decode(&block, path).unwrap();
    let old = SegmentHeader {
        version: 1,
        ..header
    };
    file.write_all_at(&old.encode(), 0).unwrap();
}

#[test]
fn recovery_reads_version_1_segments_and_the_version_2_segment_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let wal = keel_recovery::open_wal(dir.path(), options()).unwrap();
    commit(&wal, 0..40, false);
    wal.close().unwrap();
    let old = keel_wal::dir::list_directory(dir.path()).unwrap().segments;
    assert!(old.len() >= 2, "the log spans segments");
    for segment in &old {
        set_version_1(&segment.path);
    }

    let mut commits = Commits::default();
    let report = recover(dir.path(), RecoveryPolicy::default(), &mut commits).unwrap();
    assert_eq!(report.txns_applied, 40);
    assert_eq!(report.last_lsn, Some(80));
    assert!(report.anomalies.is_empty(), "{:?}", report.anomalies);

    let wal = keel_recovery::open_wal(dir.path(), options()).unwrap();
    commit(&wal, 40..45, true);
    wal.close().unwrap();
    let now = keel_wal::dir::list_directory(dir.path()).unwrap().segments;
    assert_eq!(now.len(), old.len() + 1);
    assert_eq!(now.last().unwrap().first_lsn, 81);

    let mut commits = Commits::default();
    let report = recover(dir.path(), RecoveryPolicy::default(), &mut commits).unwrap();
    assert_eq!(report.txns_applied, 45);
    assert_eq!(report.last_lsn, Some(90));
    assert_eq!(commits.0.last(), Some(&90));
    assert!(report.anomalies.is_empty(), "{:?}", report.anomalies);
}
