//! Torn tails: a cut at every byte of the last batch recovers the longest complete prefix,
//! appends continue at the right LSN, and a stale record beyond a cut never comes back.
//!
//! The torn batches are ones no durable witness claims (written with `witness_idle: None`,
//! as a writer that crashed before it went idle leaves them); the batch before them is
//! claimed, so the tear lies above the witness.

mod common;

use keel_recovery::{Decision, Finding, RecoveryPolicy, recover};
use keel_wal::Durability;

use common::Collect;

#[test]
fn a_cut_at_every_byte_of_the_last_batch_recovers_the_longest_prefix() {
    let base = tempfile::tempdir().unwrap();
    let log = base.path().join("log");
    common::committed_log(&log, 11, 2, 40);
    let wal = keel_recovery::open_wal(&log, common::unwitnessed()).unwrap();
    wal.append(&common::txn(1, 11, 2, 40)).wait().unwrap();
    wal.close().unwrap();
    let last_segment = common::segments(&log).pop().unwrap();
    let spans = common::record_spans(&log, &last_segment);
    // The last batch is the last transaction: two writes and the commit.
    let batch = &spans[spans.len() - 3..];
    let (first_lsn, start) = (batch[0].0, batch[0].1);
    let end = batch[2].1 + batch[2].2;
    let segment_len = std::fs::metadata(&last_segment).unwrap().len();
    let original = std::fs::read(&last_segment).unwrap();
    let at = |offset: u64| usize::try_from(offset).unwrap();
    let mut cuts = 0;
    for cut in start..end {
        let dir = base.path().join(format!("cut-{cut}"));
        common::copy_dir(&log, &dir);
        let segment = dir.join(last_segment.file_name().unwrap());
        // The write reached the disk up to `cut`; the rest is what preallocation left.
        common::patch(
            &segment,
            cut,
            &vec![0u8; usize::try_from(end - cut).unwrap()],
        );
        // A record survives when the cut only zeroed bytes that were zero (its padding).
        let intact = |&&(_, offset, len): &&(u64, u64, u64)| {
            cut >= offset + len
                || original[at(cut.max(offset))..at(offset + len)]
                    .iter()
                    .all(|&b| b == 0)
        };
        let survivors = batch.iter().take_while(intact).count() as u64;
        let torn = batch
            .iter()
            .find(|r| !intact(r))
            .is_some_and(|&(_, offset, _)| cut > offset);
        let whole = survivors == 3;
        let mut sink = Collect::default();
        let report = recover(&dir, RecoveryPolicy::default(), &mut sink)
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let applied = if whole { 12 } else { 11 };
        assert_eq!(
            sink.applied.len(),
            applied,
            "cut at {cut}: the complete prefix"
        );
        assert_eq!(report.txns_applied, applied as u64);
        assert_eq!(report.txns_incomplete, u64::from(!whole && survivors > 0));
        assert_eq!(
            report.next_lsn,
            first_lsn + survivors,
            "cut at {cut}: {report}"
        );
        if torn {
            assert!(
                matches!(report.anomalies[..], [ref a] if matches!(a.finding, Finding::TornTail { .. }) && a.decision == Decision::Truncate),
                "cut at {cut}: {report}"
            );
            assert!(report.bytes_truncated > 0, "cut at {cut}");
        } else {
            assert!(report.is_clean(), "cut at {cut}: {report}");
        }
        // Nothing but zeros beyond the surviving records.
        let tail_start = batch
            .get(usize::try_from(survivors).unwrap())
            .map_or(end, |r| r.1);
        for offset in [tail_start, (tail_start + end) / 2, segment_len - 1] {
            assert_eq!(common::byte_at(&segment, offset), 0, "cut at {cut}");
        }
        // A second recovery truncates nothing and reports the same state.
        let mut again = Collect::default();
        let second = recover(&dir, RecoveryPolicy::default(), &mut again).unwrap();
        assert!(second.is_clean() && second.bytes_truncated == 0, "{second}");
        assert_eq!(again.applied, sink.applied);
        // Appends continue at the right LSN, and a reopen sees prefix + new appends.
        let wal = keel_recovery::open_wal(&dir, common::options()).unwrap();
        let lsn = wal.append(&common::txn(2, 500, 1, 8)).wait().unwrap();
        assert_eq!(lsn, first_lsn + survivors + 1, "cut at {cut}");
        wal.close().unwrap();
        let mut after = Collect::default();
        recover(&dir, RecoveryPolicy::default(), &mut after).unwrap();
        assert_eq!(after.applied.len(), applied + 1);
        assert_eq!(after.applied[..applied], sink.applied[..]);
        assert_eq!(after.applied[applied].txn, 500);
        std::fs::remove_dir_all(&dir).unwrap();
        cuts += 1;
    }
    println!("{cuts} cut points");
}

#[test]
fn a_stale_record_beyond_the_cut_never_comes_back() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("log");
    {
        let wal = keel_recovery::open_wal(&dir, common::unwitnessed()).unwrap();
        for t in 0..3 {
            wal.append(&common::txn(1, t, 1, 30)).wait().unwrap();
        }
        // Two units written in one batch before either was durable: the second one's
        // durable mark does not reach the first.
        let lazy = Durability::Async {
            max_delay: std::time::Duration::from_secs(60),
        };
        let a = wal.append_with(&common::txn(1, 3, 1, 30), lazy);
        let b = wal.append_with(&common::txn(1, 4, 1, 30), lazy);
        a.wait().unwrap();
        b.wait().unwrap();
        wal.close().unwrap();
    }
    let segment = common::segments(&dir).pop().unwrap();
    let spans = common::record_spans(&dir, &segment);
    assert_eq!(spans.len(), 10);
    // Tear transaction 3 (LSNs 7-8): damage its first record; transaction 4 (LSNs 9-10)
    // stays fully written beyond the tear.
    let (torn_lsn, torn_offset, _) = spans[6];
    assert_eq!(torn_lsn, 7);
    common::patch(&segment, torn_offset + 8, &[0xff]);
    let mut sink = Collect::default();
    let report = recover(&dir, RecoveryPolicy::default(), &mut sink).unwrap();
    assert_eq!(sink.applied.len(), 3, "{report}");
    assert_eq!(report.next_lsn, 7);
    let (stale_lsn, stale_offset, stale_len) = spans[8];
    assert_eq!(stale_lsn, 9);
    for offset in stale_offset..stale_offset + stale_len {
        assert_eq!(
            common::byte_at(&segment, offset),
            0,
            "recovery zeroed the stale record"
        );
    }
    // Appends of the same encoded size as the torn unit: if the old bytes were still there,
    // transaction 4's records would line up at exactly the LSNs expected next.
    let wal = keel_recovery::open_wal(&dir, common::options()).unwrap();
    wal.append(&common::txn(9, 3, 1, 30)).wait().unwrap();
    wal.close().unwrap();
    let mut after = Collect::default();
    let report = recover(&dir, RecoveryPolicy::default(), &mut after).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(after.applied.len(), 4);
    assert_eq!(
        after.applied[3].run, 9,
        "the new transaction, not the stale one"
    );
    assert_eq!(
        report.last_lsn,
        Some(8),
        "no stale record after the new appends"
    );
}
