//! Adversarial review of the one open path for the Raft log store (failed on the code it was
//! written against; fixed in `KeelLogStore::open`): the store now opens through `keel_recovery::open_log` and builds its
//! index from `Replay::payload`. Recovery hands the sink only payloads, checkpoints and
//! *committed* transactions; a transaction's entries that never commit (a `Write` or
//! `BeginTxn` with no commit, or one ended by `AbortTxn`) are counted and dropped without the
//! sink seeing them. The old open read every record with a `LogReader` and refused any that
//! is not a Raft record (docs/FORMAT.md, "Raft log": "any record that is not a Raft record
//! [is an error] at open, not repaired"). Such a log now opens as if those records were not
//! there.
//!
//! Root cause: `IndexReplay` (raft/src/log_store.rs) can refuse only what reaches it; the
//! recovery report's `txns_incomplete`/`txns_aborted` (or its record count against the
//! payloads replayed) is not checked after the open. Fix: refuse when
//! `report.records != report.payloads` (every record of a Raft log is a payload).

use keel_raft::record;
use keel_raft::{KeelLogStore, TypeConfig};
use keel_wal::{BackendChoice, RunId, WalEntry, WalOptions};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

fn options() -> WalOptions {
    WalOptions {
        backend: BackendChoice::Std,
        segment_bytes: 8192,
        max_record_bytes: 2048,
        ..WalOptions::default()
    }
}

fn raft_entry(index: u64) -> WalEntry {
    let log_id = LogId::new(CommittedLeaderId::new(1, 1), index);
    let entry: Entry<TypeConfig> = Entry {
        log_id,
        payload: EntryPayload::Blank,
    };
    record::entry::<TypeConfig>(&log_id, &entry)
}

#[test]
fn records_that_are_not_raft_records_are_refused_at_open() {
    let run_id = RunId::from_u128(9);
    let strays = [
        (
            "an uncommitted write",
            vec![WalEntry::Write {
                run_id,
                txn_id: 1,
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            }],
        ),
        (
            "an aborted transaction",
            vec![
                WalEntry::BeginTxn { run_id, txn_id: 2 },
                WalEntry::AbortTxn { run_id, txn_id: 2 },
            ],
        ),
    ];
    let mut accepted = Vec::new();
    for (what, stray) in strays {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), options()).unwrap();
        wal.append(&[raft_entry(0), raft_entry(1)]).wait().unwrap();
        wal.append(&stray).wait().unwrap();
        wal.append(&[raft_entry(2)]).wait().unwrap();
        wal.close().unwrap();
        if let Ok(store) = KeelLogStore::<TypeConfig>::open(dir.path(), options()) {
            accepted.push(what);
            drop(store);
        }
    }
    assert!(
        accepted.is_empty(),
        "Raft logs holding records that are not Raft records opened: {accepted:?}"
    );
}
