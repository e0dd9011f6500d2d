//! `Payload` entries (records of components built on the log) reach `Replay::payload` in LSN
//! order between transactions, are counted in the report, and never touch transactions.

use keel_recovery::{CommittedTxn, RecoveryPolicy, Replay, ReplayError};
use keel_wal::{ArchivedWalEntry, EntryKind, Lsn, RunId, WalEntry, WalOptions};

#[derive(Default)]
struct Seen {
    payloads: Vec<(Lsn, u32, Vec<u8>)>,
    txns: Vec<Lsn>,
}

impl Replay for Seen {
    fn apply(&mut self, txn: &CommittedTxn<'_>) -> Result<(), ReplayError> {
        self.txns.push(txn.commit_lsn);
        Ok(())
    }

    fn payload(
        &mut self,
        position: keel_wal::RecordPosition,
        entry: &ArchivedWalEntry,
    ) -> Result<(), ReplayError> {
        let lsn = position.lsn;
        assert_eq!(entry.kind(), EntryKind::Payload);
        assert_eq!(entry.txn_id(), None);
        let ArchivedWalEntry::Payload { tag, payload, .. } = entry else {
            unreachable!("checked above");
        };
        self.payloads
            .push((lsn, tag.to_native(), payload.as_slice().to_vec()));
        Ok(())
    }
}

#[test]
fn payloads_are_replayed_in_order_beside_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let wal = keel_recovery::open_wal(dir.path(), WalOptions::default()).unwrap();
    let run_id = RunId::from_u128(3);
    let mut expected = Vec::new();
    for i in 0..20u32 {
        let payload = vec![u8::try_from(i).unwrap(); usize::try_from(i * 13).unwrap()];
        let lsn = wal
            .append(&[WalEntry::Payload {
                run_id,
                tag: i % 4,
                payload: payload.clone(),
            }])
            .wait()
            .unwrap();
        expected.push((lsn, i % 4, payload));
        wal.append(&[
            WalEntry::Write {
                run_id,
                txn_id: u64::from(i),
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
            WalEntry::CommitTxn {
                run_id,
                txn_id: u64::from(i),
            },
        ])
        .wait()
        .unwrap();
    }
    wal.close().unwrap();
    let mut seen = Seen::default();
    let report = keel_recovery::recover(dir.path(), RecoveryPolicy::default(), &mut seen).unwrap();
    assert_eq!(seen.payloads, expected);
    assert_eq!(report.payloads, 20);
    assert_eq!(report.txns_applied, 20);
    assert_eq!(report.checkpoints, 0);
    assert_eq!(seen.txns.len(), 20);
}
