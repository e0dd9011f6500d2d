//! Adversarial review (revB): recovery paths that give out LSNs the caller's snapshot already
//! covers, restart LSNs after a crash part-way through a repair, or invent a gap over records
//! that were read. Each test fails on the code it was written against; see the report of
//! branch h-revB for the root causes.

mod common;

use std::path::Path;

use keel_recovery::{RecoveryOptions, RecoveryPolicy, RecoveryReport, recover_with};
use keel_wal::{DatabaseId, Durability, Lsn, RunId, WalEntry, WalOptions};

use common::Collect;

fn run(
    dir: &Path,
    policy: RecoveryPolicy,
    covered_through: Option<Lsn>,
) -> (RecoveryReport, Collect) {
    let mut sink = Collect::default();
    let options = RecoveryOptions {
        policy,
        covered_through,
        ..RecoveryOptions::default()
    };
    let report = recover_with(dir, options, &mut sink).unwrap_or_else(|e| panic!("{policy}: {e}"));
    (report, sink)
}

/// Opens the log as a restarted writer would (after recovery) and commits one transaction of
/// two writes and its `CommitSpan`, acknowledged under `Strict` (after an fdatasync).
/// Returns its commit LSN.
fn commit_one_acknowledged(
    dir: &Path,
    policy: RecoveryPolicy,
    covered: Option<Lsn>,
    txn_id: u64,
) -> Lsn {
    let wal = common::open_after(dir, policy, covered);
    let first = wal.next_lsn();
    let entries = vec![
        common::write(1, txn_id, "after-recovery-0", 10),
        common::write(1, txn_id, "after-recovery-1", 10),
        common::commit_span(1, txn_id, first),
    ];
    let commit = wal
        .append_with(&entries, Durability::Strict)
        .wait()
        .expect("acknowledged");
    wal.close().unwrap();
    commit
}

/// Overwrites the records of LSNs `from..=to` (headers included) with zeros.
fn zero_records(dir: &Path, from: Lsn, to: Lsn) {
    let (path, start, _) = common::locate(dir, from);
    let (same, offset, len) = common::locate(dir, to);
    assert_eq!(path, same, "one segment");
    let end = offset + len;
    common::patch(
        &path,
        start,
        &vec![0; usize::try_from(end - start).unwrap()],
    );
}

/// PointInTime with a snapshot through `S`: damage in a sealed segment loses LSNs from below
/// `S` to above `S + 1`, so it is not covered and the log is cut where the damage starts, at an
/// LSN <= `S`. The next appends then get LSNs the snapshot covers: the next recovery (same
/// snapshot) counts their transaction as covered and never replays it. An acknowledged commit
/// is lost (the engine, which refuses a log that ends below its snapshot, cannot open at all).
#[test]
fn a_point_in_time_cut_below_the_snapshot_gives_out_covered_lsns_again() {
    let dir = tempfile::tempdir().unwrap();
    common::span_log(dir.path(), 100, 2, 1000);
    let segments = common::segments(dir.path());
    assert!(segments.len() >= 3);
    let spans = common::record_spans(dir.path(), &segments[0]);
    let a = spans[10].0;
    let covered = a + 3;
    // LSNs a..=a+5 unreadable: the gap starts at or below S = a+3, resumes at a+6 > S+1.
    zero_records(dir.path(), a, a + 5);
    let (first, _) = run(dir.path(), RecoveryPolicy::PointInTime, Some(covered));
    let commit = commit_one_acknowledged(
        dir.path(),
        RecoveryPolicy::PointInTime,
        Some(covered),
        9_999,
    );
    let (second, sink) = run(dir.path(), RecoveryPolicy::PointInTime, Some(covered));
    assert!(
        sink.applied.iter().any(|t| t.commit_lsn == commit),
        "the transaction acknowledged at LSN {commit} after recovery is not replayed: the \
         first recovery (snapshot through {covered}) left next_lsn {} <= {covered}\n\
         first: {first}\nsecond: {second}",
        first.next_lsn
    );
}

/// SkipCorrupted with a snapshot through `S` inside the last segment, whose header is
/// damaged: the segment is set aside and the log continues at its first LSN, <= `S`. The next
/// acknowledged commit lands at LSNs the snapshot covers and is never replayed.
#[test]
fn a_skipped_last_segment_below_the_snapshot_gives_out_covered_lsns_again() {
    let dir = tempfile::tempdir().unwrap();
    common::span_log(dir.path(), 100, 2, 1000);
    let last = common::segments(dir.path()).pop().unwrap();
    let last_first = common::first_lsn_of(&last);
    let spans = common::record_spans(dir.path(), &last);
    assert!(
        spans.len() >= 6,
        "{} records in the last segment",
        spans.len()
    );
    let covered = last_first + 5;
    common::patch(&last, 33, &[common::byte_at(&last, 33) ^ 0x40]);
    let (first, _) = run(dir.path(), RecoveryPolicy::SkipCorrupted, Some(covered));
    let commit = commit_one_acknowledged(
        dir.path(),
        RecoveryPolicy::SkipCorrupted,
        Some(covered),
        9_999,
    );
    let (second, sink) = run(dir.path(), RecoveryPolicy::SkipCorrupted, Some(covered));
    assert!(
        sink.applied.iter().any(|t| t.commit_lsn == commit),
        "the transaction acknowledged at LSN {commit} after recovery is not replayed: the \
         first recovery (snapshot through {covered}) left next_lsn {} <= {covered}\n\
         first: {first}\nsecond: {second}",
        first.next_lsn
    );
}

/// A log whose only segment (the older ones removed after a checkpoint) has a damaged header:
/// PointInTime sets it aside and starts an empty segment at its first LSN `F`, "so LSNs never
/// restart". A crash after the set-aside (renamed and synced) and before the empty segment is
/// made leaves no segment at all; the next recovery then reports next LSN 1 and the writer
/// restarts LSNs at 1, where the uninterrupted recovery continues at `F`.
#[test]
fn a_crash_between_setting_aside_every_segment_and_the_fresh_one_restarts_lsns() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("log");
    common::committed_log(&original, 100, 2, 1000);
    let last = common::segments(&original).pop().unwrap();
    let f = common::first_lsn_of(&last);
    {
        let wal = keel_recovery::open_wal(&original, common::options()).unwrap();
        assert!(wal.remove_segments_before(f).unwrap() >= 2);
        wal.close().unwrap();
    }
    assert_eq!(common::segments(&original), vec![last.clone()]);
    common::patch(&last, 33, &[common::byte_at(&last, 33) ^ 0x40]);
    let name = last.file_name().unwrap().to_owned();

    let whole = base.path().join("whole");
    common::copy_dir(&original, &whole);
    let (expected, _) = run(&whole, RecoveryPolicy::PointInTime, None);
    assert_eq!(expected.next_lsn, f, "{expected}");

    // The crashed recovery had done the first step of its plan. (Before the fix that step
    // renamed the only segment aside, leaving none; now the segment whose name the fresh one
    // takes is first kept aside by a hard link, and replaced by an atomic rename after: the
    // crash point between the two is this state.)
    let crashed = base.path().join("crashed");
    common::copy_dir(&original, &crashed);
    let mut aside = name.clone();
    aside.push(keel_recovery::DISCARDED_SUFFIX);
    std::fs::hard_link(crashed.join(&name), crashed.join(aside)).unwrap();
    let (report, _) = run(&crashed, RecoveryPolicy::PointInTime, None);
    let wal = keel_recovery::open_wal(&crashed, common::options()).unwrap();
    let next = wal.next_lsn();
    wal.close().unwrap();
    assert_eq!(
        (report.next_lsn, next),
        (f, f),
        "after a crash part-way through the repair, LSNs restart (uninterrupted: {f})\n{report}"
    );
}

/// A segment that overlaps an earlier one and ends inside it (files mixed by hand; the docs
/// say it is skipped and "read from the LSN expected on, so no record is taken twice") moves
/// the LSN expected *back* to its own end. The next segment then looks like a gap over LSNs
/// that were all read: they are counted as lost, and the transaction that crosses into the
/// next segment, read whole, is dropped as partial under SkipCorrupted.
#[test]
fn an_overlapping_segment_ending_inside_an_earlier_one_invents_a_gap() {
    let base = tempfile::tempdir().unwrap();
    let id = DatabaseId([0x5a; 16]);
    let options = WalOptions {
        database_id: Some(id),
        ..common::options()
    };
    // The log: transactions of three writes and a CommitSpan (txn t at LSNs 4t+1..=4t+4).
    let log = base.path().join("log");
    let wal = keel_recovery::open_wal(&log, options.clone()).unwrap();
    for t in 0..80 {
        common::append_span_txn(&wal, 1, t, 3, 1000);
    }
    wal.close().unwrap();
    let segments = common::segments(&log);
    assert!(segments.len() >= 2);
    let second = common::first_lsn_of(&segments[1]);
    assert_ne!(
        (second - 1) % 4,
        0,
        "a transaction crosses into the second segment"
    );

    // Another log of the same database, with large records: its second segment starts and
    // ends well inside the first log's first segment.
    let other = base.path().join("other");
    let wal = keel_recovery::open_wal(&other, options).unwrap();
    for i in 0..10u8 {
        let entry = WalEntry::Payload {
            run_id: RunId::from_u128(2),
            tag: 1,
            payload: vec![i; 12_000],
        };
        wal.append(&[entry]).wait().unwrap();
    }
    wal.close().unwrap();
    let stray = common::segments(&other)[1].clone();
    let stray_first = common::first_lsn_of(&stray);
    assert!(
        stray_first > 1 && stray_first + 10 < second,
        "{stray_first} {second}"
    );
    std::fs::copy(&stray, log.join(stray.file_name().unwrap())).unwrap();

    let (report, sink) = run(&log, RecoveryPolicy::SkipCorrupted, None);
    assert_eq!(
        (
            report.txns_applied,
            report.txns_partial,
            report.lsns_skipped
        ),
        (80, 0, 0),
        "every record of the log was read, yet LSNs {:?} are counted lost and {} transactions \
         dropped\n{report}",
        report.lsns_lost,
        80 - sink.applied.len()
    );
}

/// Regression (passes): covered damage in the last segment, then a torn tail in it. The dry
/// run predicts the real run; the real run cuts the tail and seals the segment; a second
/// recovery changes nothing and replays the same.
#[test]
fn covered_damage_then_a_torn_tail_in_the_last_segment_recovers_once() {
    let dir = tempfile::tempdir().unwrap();
    common::span_log(dir.path(), 100, 2, 1000);
    let last = common::segments(dir.path()).pop().unwrap();
    let spans = common::record_spans(dir.path(), &last);
    assert!(
        spans.len() >= 8,
        "{} records in the last segment",
        spans.len()
    );
    let covered = spans[4].0;
    common::damage_record(dir.path(), spans[2].0);
    let (_, end_offset, end_len) = *spans.last().unwrap();
    common::patch(&last, end_offset + end_len + 16, &[0xcd; 700]);
    let policy = RecoveryPolicy::TolerateTornTail;
    let mut sink = Collect::default();
    let options = RecoveryOptions {
        policy,
        covered_through: Some(covered),
        dry_run: true,
        ..RecoveryOptions::default()
    };
    let before = common::files(dir.path());
    let dry = recover_with(dir.path(), options, &mut sink).unwrap();
    assert_eq!(
        common::files(dir.path()),
        before,
        "the dry run changed the directory"
    );
    let (real, first) = run(dir.path(), policy, Some(covered));
    let key = |r: &RecoveryReport| {
        (
            r.next_lsn,
            r.cut_at,
            r.lsns_lost.clone(),
            r.bytes_truncated,
            r.segments_discarded.clone(),
            r.lsns_skipped,
        )
    };
    assert!(
        real.cut_at.is_some() && real.anomalies.len() == 2,
        "covered damage and a cut tail expected: {real}"
    );
    assert_eq!(key(&dry), key(&real), "dry: {dry}\nreal: {real}");
    assert_eq!(sink.applied, first.applied);
    let after = common::files(dir.path());
    let (again, second) = run(dir.path(), policy, Some(covered));
    assert_eq!(
        common::files(dir.path()),
        after,
        "the second recovery changed the directory"
    );
    assert_eq!(second.applied, first.applied, "{again}");
    assert_eq!(again.next_lsn, real.next_lsn, "{again}");
}
