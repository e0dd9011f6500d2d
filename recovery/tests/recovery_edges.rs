//! Edges of recovery that a user meets rarely but must be able to rely on: files an earlier
//! recovery left, a stale record in place of another, a zeroed header with records behind it,
//! a log whose only segment is unreadable under a snapshot, dry runs that predict the real
//! run, checkpoints and payloads beside transactions, empty commits, and reports that say
//! what they are.

mod common;

use std::path::Path;

use keel_recovery::{
    CommittedTxn, Decision, Error, Finding, RecoveryOptions, RecoveryPolicy, Replay, ReplayError,
    recover, recover_empty, recover_with,
};
use keel_wal::segment::{self, HEADER_LEN};
use keel_wal::{ArchivedWalEntry, CorruptionReason, DurableProof, Lsn, RunId, WalEntry};

use common::Collect;

fn refusal(result: Result<keel_recovery::RecoveryReport, Error>) -> (Finding, String) {
    match result {
        Err(error @ Error::Refused { .. }) => {
            let text = error.to_string();
            let Error::Refused { finding, .. } = error else {
                unreachable!()
            };
            (finding, text)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn leftovers_of_an_earlier_recovery_are_passed_over_even_under_absolute() {
    let dir = tempfile::tempdir().unwrap();
    common::committed_log(dir.path(), 20, 2, 100);
    let first = &common::segments(dir.path())[0];
    let discarded = format!("{}.discarded", first.display());
    std::fs::write(&discarded, b"set aside by an earlier recovery").unwrap();
    let creating = dir
        .path()
        .join(format!("{}.creating", segment::file_name(999)));
    std::fs::write(&creating, b"a fresh segment it did not finish").unwrap();
    let before = common::files(dir.path());

    let mut sink = Collect::default();
    let report = recover(dir.path(), RecoveryPolicy::Absolute, &mut sink).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(sink.applied.len(), 20);
    assert!(
        report.to_string().ends_with("clean: no anomalies"),
        "{report}"
    );
    assert_eq!(
        common::files(dir.path()),
        before,
        "the leftovers are left alone"
    );
}

/// A whole, checksummed record of the log (LSN 4) where LSN 7 belongs: the record is valid in
/// itself, so only its LSN tells it is not the one expected.
fn stale_record_log(dir: &Path) {
    common::committed_log(dir, 30, 2, 100);
    let (path, at4, len4) = common::locate(dir, 4);
    let (same, at7, len7) = common::locate(dir, 7);
    assert_eq!(
        (&path, len4),
        (&same, len7),
        "two writes of one size, one segment"
    );
    let bytes = std::fs::read(&path).unwrap();
    let at = |offset: u64| usize::try_from(offset).unwrap();
    common::patch(&path, at7, &bytes[at(at4)..at(at4 + len4)]);
}

#[test]
fn a_stale_record_in_place_of_another_is_damage_never_replayed() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("log");
    stale_record_log(&original);

    let (finding, text) = refusal(recover(
        &original,
        RecoveryPolicy::TolerateTornTail,
        &mut Collect::default(),
    ));
    assert!(
        matches!(
            finding,
            Finding::DamageBelowDurableMark {
                lsn: 7,
                reason: CorruptionReason::LsnMismatch {
                    expected: 7,
                    found: 4
                },
                proof: DurableProof::LaterRecord {
                    lsn: 10,
                    durable_lsn: 9
                },
            }
        ),
        "{finding:?}"
    );
    assert!(text.contains("acknowledged record at LSN 7"), "{text}");

    // Salvaged: transaction 2 (LSNs 7 to 9) lost its first write; it is dropped, not applied
    // in part, and a second recovery gives the same answer.
    let dir = base.path().join("skip");
    common::copy_dir(&original, &dir);
    for round in 0..2 {
        let mut sink = Collect::default();
        let report = recover(&dir, RecoveryPolicy::SkipCorrupted, &mut sink).unwrap();
        let txns: Vec<u64> = sink.applied.iter().map(|a| a.txn).collect();
        let expected: Vec<u64> = (0..30).filter(|&t| t != 2).collect();
        assert_eq!(txns, expected, "round {round}: {report}");
        assert_eq!(report.txns_partial, 1, "round {round}: {report}");
        assert_eq!(report.lsns_lost, [(7, 7)], "round {round}: {report}");
        assert_eq!(report.next_lsn, 91, "round {round}: {report}");
    }
}

#[test]
fn a_zeroed_header_with_records_behind_it_is_a_damaged_header_not_an_empty_segment() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("log");
    common::committed_log(&original, 100, 2, 1000);
    let segments = common::segments(&original);
    assert!(segments.len() >= 3);
    let middle = segments[1].file_name().unwrap().to_owned();
    common::patch(&original.join(&middle), 0, &[0; HEADER_LEN]);

    let (finding, text) = refusal(recover(
        &original,
        RecoveryPolicy::TolerateTornTail,
        &mut Collect::default(),
    ));
    assert_eq!(
        finding,
        Finding::DamagedSegmentHeader {
            reason: CorruptionReason::ZeroedSegmentHeader
        }
    );
    assert!(text.contains("damaged segment header"), "{text}");

    let dir = base.path().join("pit");
    common::copy_dir(&original, &dir);
    let mut sink = Collect::default();
    let report = recover(&dir, RecoveryPolicy::PointInTime, &mut sink).unwrap();
    let cut = common::first_lsn_of(&segments[1]);
    assert_eq!(
        (report.cut_at, report.next_lsn),
        (Some(cut), cut),
        "{report}"
    );
    assert!(sink.applied.iter().all(|a| a.commit_lsn < cut));
    assert_eq!(
        report.segments_discarded.len(),
        segments.len() - 1,
        "{report}"
    );
}

#[test]
fn a_log_whose_only_segment_is_unreadable_continues_above_the_snapshot() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("log");
    common::committed_log(&dir, 10, 1, 50);
    let segments = common::segments(&dir);
    assert_eq!(segments.len(), 1);
    common::patch(&segments[0], 0, b"NOTKEEL!");
    let options = |policy| RecoveryOptions {
        policy,
        covered_through: Some(20),
        dry_run: false,
        ..RecoveryOptions::default()
    };

    // What was lost may lie above the snapshot: not passed over by default.
    let (finding, _) = refusal(recover_with(
        &dir,
        options(RecoveryPolicy::TolerateTornTail),
        &mut Collect::default(),
    ));
    assert!(matches!(finding, Finding::DamagedSegmentHeader { .. }));

    // Cut before it, or skipped: either way nothing is read, and the log goes on above the
    // snapshot.
    for policy in [RecoveryPolicy::PointInTime, RecoveryPolicy::SkipCorrupted] {
        let copy = base.path().join(policy.to_string());
        common::copy_dir(&dir, &copy);
        let mut sink = Collect::default();
        let report = recover_with(&copy, options(policy), &mut sink).unwrap();
        assert!(sink.applied.is_empty());
        let aside = [copy.join(segments[0].file_name().unwrap())];
        assert_eq!(report.segments_discarded, aside, "{policy}: {report}");
        assert_eq!(
            report.next_lsn, 21,
            "{policy}: LSNs never restart below the snapshot"
        );
        let now: Vec<Lsn> = common::segments(&copy)
            .iter()
            .map(|s| common::first_lsn_of(s))
            .collect();
        assert_eq!(
            now,
            [21],
            "{policy}: one fresh segment, where the log continues"
        );
        // As large as the log's own segments (from the file, the header being unreadable),
        // not the default 64 MiB zero-filled and synced.
        assert_eq!(
            std::fs::metadata(&common::segments(&copy)[0])
                .unwrap()
                .len(),
            std::fs::metadata(&segments[0]).unwrap().len(),
            "{policy}: the fresh segment's size"
        );

        // Recovered again, the same answer, and appends go on at 21.
        let report = recover_with(&copy, options(RecoveryPolicy::Absolute), &mut sink).unwrap();
        assert!(report.is_clean(), "{policy}: {report}");
        assert_eq!(report.next_lsn, 21);
        let wal = keel_recovery::open_wal(&copy, common::options()).unwrap();
        assert_eq!(wal.append(&common::txn(1, 50, 1, 10)).wait().unwrap(), 22);
        wal.close().unwrap();
    }
}

/// A dry run reports exactly what the real run then does, and changes nothing.
fn dry_run_predicts(dir: &Path, policy: RecoveryPolicy) -> keel_recovery::RecoveryReport {
    let before = common::files(dir);
    let dry = RecoveryOptions {
        policy,
        covered_through: None,
        dry_run: true,
        ..RecoveryOptions::default()
    };
    let mut dry_sink = Collect::default();
    let predicted = recover_with(dir, dry, &mut dry_sink).unwrap();
    assert!(predicted.dry_run);
    assert_eq!(common::files(dir), before, "a dry run changes nothing");
    let mut sink = Collect::default();
    let done = recover(dir, policy, &mut sink).unwrap();
    assert_eq!(sink.applied, dry_sink.applied);
    assert_eq!(predicted.segments_discarded, done.segments_discarded);
    assert_eq!(predicted.bytes_truncated, done.bytes_truncated);
    assert_eq!(predicted.cut_at, done.cut_at);
    assert_eq!(predicted.next_lsn, done.next_lsn);
    assert_ne!(common::files(dir), before, "the real run repairs");
    predicted
}

#[test]
fn a_dry_run_of_a_cut_says_what_would_be_set_aside_and_zeroed() {
    // Cut before a damaged middle segment: it and the last are set aside.
    let dir = tempfile::tempdir().unwrap();
    common::committed_log(dir.path(), 100, 2, 1000);
    let segments = common::segments(dir.path());
    common::patch(&segments[1], 0, b"NOTKEEL!");
    let predicted = dry_run_predicts(dir.path(), RecoveryPolicy::PointInTime);
    let mut aside = predicted.segments_discarded.clone();
    aside.sort();
    assert_eq!(aside, segments[1..], "{predicted}");
    let text = predicted.to_string();
    assert!(text.starts_with("dry run (point-in-time)"), "{text}");
    assert!(
        text.contains(&format!(
            "{} segments would be set aside",
            segments.len() - 1
        )),
        "{text}"
    );

    // Cut inside the last segment: the bytes beyond the cut would be zeroed.
    let dir = tempfile::tempdir().unwrap();
    common::committed_log(dir.path(), 30, 2, 100);
    common::damage_record(dir.path(), 40);
    let predicted = dry_run_predicts(dir.path(), RecoveryPolicy::PointInTime);
    assert_eq!(predicted.cut_at, Some(40));
    assert!(predicted.bytes_truncated > 0);
    assert!(
        predicted.to_string().contains(&format!(
            "truncated at LSN 40: {} bytes would be zeroed",
            predicted.bytes_truncated
        )),
        "{predicted}"
    );
}

fn checkpoint(snapshot_lsn: Lsn) -> WalEntry {
    WalEntry::Checkpoint {
        run_id: RunId::from_u128(0),
        snapshot_lsn,
    }
}

fn payload() -> WalEntry {
    WalEntry::Payload {
        run_id: RunId::from_u128(9),
        tag: 1,
        payload: b"component record".to_vec(),
    }
}

/// Transaction 0 (LSNs 1-2), a checkpoint (3), a payload (4), transaction 1 (5-6), a
/// checkpoint (7).
fn mixed_log(dir: &Path) {
    let wal = keel_recovery::open_wal(dir, common::options()).unwrap();
    wal.append(&common::txn(1, 0, 1, 10)).wait().unwrap();
    wal.append(&[checkpoint(2), payload()]).wait().unwrap();
    wal.append(&common::txn(1, 1, 1, 10)).wait().unwrap();
    wal.append(&[checkpoint(6)]).wait().unwrap();
    wal.close().unwrap();
}

#[test]
fn a_sink_that_only_applies_transactions_gets_every_one_beside_checkpoints_and_payloads() {
    struct OnlyTransactions(Vec<Lsn>);
    impl Replay for OnlyTransactions {
        fn apply(&mut self, txn: &CommittedTxn<'_>) -> Result<(), ReplayError> {
            self.0.push(txn.commit_lsn);
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    mixed_log(dir.path());
    let mut sink = OnlyTransactions(Vec::new());
    let report = recover(dir.path(), RecoveryPolicy::Absolute, &mut sink).unwrap();
    assert_eq!(sink.0, [2, 6]);
    assert_eq!((report.checkpoints, report.payloads), (2, 1), "{report}");
    assert!(report.to_string().contains("; 2 checkpoints; 1 payloads"));
}

#[test]
fn checkpoints_a_snapshot_covers_are_counted_not_handed_over() {
    let dir = tempfile::tempdir().unwrap();
    mixed_log(dir.path());
    let options = RecoveryOptions {
        covered_through: Some(4),
        ..RecoveryOptions::default()
    };
    let mut sink = Collect::default();
    let report = recover_with(dir.path(), options, &mut sink).unwrap();
    assert_eq!(sink.checkpoints, [7], "the checkpoint at 3 is covered");
    assert_eq!(report.checkpoints, 2);
    let commits: Vec<Lsn> = sink.applied.iter().map(|a| a.commit_lsn).collect();
    assert_eq!(commits, [6]);
    assert_eq!(report.txns_covered, 1);
}

#[test]
fn a_sink_failing_on_a_checkpoint_or_payload_is_named_as_such_and_nothing_changes() {
    struct FailsOn(&'static str);
    impl Replay for FailsOn {
        fn apply(&mut self, _: &CommittedTxn<'_>) -> Result<(), ReplayError> {
            Ok(())
        }
        fn checkpoint(&mut self, _: Lsn, _: &ArchivedWalEntry) -> Result<(), ReplayError> {
            match self.0 {
                "checkpoint" => Err("its snapshot is unreadable".into()),
                _ => Ok(()),
            }
        }
        fn payload(
            &mut self,
            _: keel_wal::RecordPosition,
            _: &ArchivedWalEntry,
        ) -> Result<(), ReplayError> {
            match self.0 {
                "payload" => Err("unknown tag".into()),
                _ => Ok(()),
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    mixed_log(dir.path());
    // A torn tail, so a successful recovery would change the directory.
    common::damage_record(dir.path(), 7);
    let before = common::files(dir.path());
    for (what, lsn, message) in [
        (
            "checkpoint",
            3,
            "replaying the checkpoint at LSN 3 failed: its snapshot is unreadable",
        ),
        (
            "payload",
            4,
            "replaying the payload at LSN 4 failed: unknown tag",
        ),
    ] {
        let error =
            recover(dir.path(), RecoveryPolicy::PointInTime, &mut FailsOn(what)).unwrap_err();
        assert!(
            matches!(error, Error::Replay { lsn: at, .. } if at == lsn),
            "{error:?}"
        );
        assert_eq!(error.to_string(), message);
        assert_eq!(common::files(dir.path()), before, "nothing changed");
    }
}

#[test]
fn a_commit_with_no_entries_is_applied_empty_at_its_own_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let wal = keel_recovery::open_wal(dir.path(), common::options()).unwrap();
    wal.append(&[common::commit(1, 5)]).wait().unwrap();
    wal.append(&common::txn(1, 6, 1, 10)).wait().unwrap();
    wal.close().unwrap();
    let mut sink = Collect::default();
    let report = recover(dir.path(), RecoveryPolicy::Absolute, &mut sink).unwrap();
    assert_eq!(sink.applied.len(), 2);
    assert_eq!((sink.applied[0].txn, sink.applied[0].commit_lsn), (5, 1));
    assert!(sink.applied[0].entries.is_empty());
    assert_eq!(report.max_txn_id, Some(6));
}

#[test]
fn reports_of_no_log_and_of_an_empty_log_say_so() {
    let none = recover_empty(RecoveryPolicy::PointInTime);
    assert_eq!(
        none.to_string(),
        "recovery (point-in-time): no log yet (a new database)"
    );
    assert_eq!((none.next_lsn, none.records), (1, 0));
    assert!(none.is_clean());

    let dir = tempfile::tempdir().unwrap();
    keel_recovery::open_wal(dir.path(), common::options())
        .unwrap()
        .close()
        .unwrap();
    let report = recover(
        dir.path(),
        RecoveryPolicy::Absolute,
        &mut Collect::default(),
    )
    .unwrap();
    assert_eq!((report.segments, report.records), (1, 0));
    assert_eq!((report.first_lsn, report.next_lsn), (None, 1));
    let text = report.to_string();
    assert!(
        text.contains("1 segments, 0 records, 0 bytes (no records)"),
        "{text}"
    );
}

#[test]
fn an_anomaly_says_where_what_and_what_was_done() {
    let dir = tempfile::tempdir().unwrap();
    common::committed_log(dir.path(), 3, 1, 10);
    std::fs::write(dir.path().join("notes.txt"), b"not a segment").unwrap();
    let report = recover(
        dir.path(),
        RecoveryPolicy::default(),
        &mut Collect::default(),
    )
    .unwrap();
    let [anomaly] = &report.anomalies[..] else {
        panic!("{report}")
    };
    assert_eq!(anomaly.decision, Decision::Continue);
    assert_eq!(
        anomaly.to_string(),
        format!(
            "{} at offset 0: file is not part of the log (reported)",
            dir.path().join("notes.txt").display()
        )
    );
}
