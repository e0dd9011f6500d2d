//! Adversarial review of the one open path (`open_log`: recovery hands `LogEnd` and the next
//! LSN to `Wal::resume`). Each test here failed on the code it was written against (23f0554)
//! and passes since the fix in `recovery/src/repair.rs` and `walk/`: it shows a way the log the writer resumes is not where the log's verified records end, so that an
//! acknowledged commit is lost or an open is refused wrongly. See each test's comment.

mod common;

use std::path::{Path, PathBuf};

use common::Collect;
use keel_recovery::RecoveryPolicy;
use keel_wal::{Lsn, WalOptions};

const SKIP: RecoveryPolicy = RecoveryPolicy::SkipCorrupted;

/// Txn `t` of run 1 (one write and its commit: LSNs 2t+1 and 2t+2 in a log of only these).
fn txn(t: u64) -> Vec<keel_wal::WalEntry> {
    common::txn(1, t, 1, 100)
}

/// Txn ids applied by a recovery under `policy` of `dir`, and its report.
fn applied(dir: &Path, policy: RecoveryPolicy) -> (Vec<u64>, keel_recovery::RecoveryReport) {
    let mut sink = Collect::default();
    let (wal, report) =
        keel_recovery::open_log(dir, common::options(), policy, None, &mut sink).unwrap();
    wal.close().unwrap();
    (sink.applied.iter().map(|a| a.txn).collect(), report)
}

/// Ours: one segment (64 KiB) holding LSNs 1..=10 (txns 0..5). Then a segment of the same
/// database starting at LSN 5 and holding LSNs 5..=8 (txns 2 and 3 of another copy of the
/// log, files mixed by hand), put in as the *last* segment: it overlaps what was read and
/// ends inside it. `unwitnessed`: its writer never wrote a witness. Returns the log's
/// directory and the stray segment's path in it.
fn overlapping_last_segment(base: &Path, unwitnessed: bool) -> (PathBuf, PathBuf) {
    let ours = base.join("ours");
    common::committed_log(&ours, 5, 1, 100);
    assert_eq!(common::segments(&ours).len(), 1);
    // The other copy: LSNs 1..=4 in a 32 KiB segment; reopened at 64 KiB, it starts a fresh
    // segment at LSN 5 (another size) and writes LSNs 5..=8 there.
    let other = base.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(ours.join("IDENTITY"), other.join("IDENTITY")).unwrap();
    let small = WalOptions {
        segment_bytes: 32 * 1024,
        ..common::options()
    };
    let wal = keel_recovery::open_wal(&other, small).unwrap();
    for t in 0..2 {
        wal.append(&txn(t)).wait().unwrap();
    }
    wal.close().unwrap();
    let second_life = match unwitnessed {
        true => common::unwitnessed(),
        false => common::options(),
    };
    let wal = keel_recovery::open_wal(&other, second_life).unwrap();
    for t in 2..4 {
        wal.append(&txn(t)).wait().unwrap();
    }
    wal.close().unwrap();
    let stray = common::segments(&other).pop().unwrap();
    assert_eq!(common::first_lsn_of(&stray), 5);
    let spans = common::record_spans(&other, &stray);
    assert_eq!(
        spans.iter().map(|s| s.0).collect::<Vec<Lsn>>(),
        [5, 6, 7, 8]
    );
    let to = ours.join(stray.file_name().unwrap());
    std::fs::copy(&stray, &to).unwrap();
    (ours, to)
}

/// Failed before the fix (the last segment kept must end at the next LSN with nothing passed
/// over in it, or be sealed). SkipCorrupted, an overlapping last segment that ends cleanly inside what was read
/// (LSNs 5..=8 of a log read through 10). The recovery says the next LSN is 11, and the
/// `LogEnd` it hands the writer is the stray segment's end, after LSN 8: the writer appends
/// LSN 11 right after LSN 8. The next recovery (same policy) reads 5..=8 there, expects 9,
/// finds 11 whose durable mark reaches 9: damage below a durable mark, skipped; the commit
/// acknowledged after the open is dropped (a partial transaction: its write at LSN 11 is in
/// the "gap").
///
/// Root cause: `Walk::records` leaves `expected = max(expected, floor)` for a segment that
/// ends below the floor, but the segment's `SegmentEnd.offset` is where *its* records end
/// (LSN 9's place); nothing seals such a last segment (`seal_last` is set only by salvage).
#[test]
fn appends_after_an_overlapping_last_segment_that_ends_early_are_lost() {
    let base = tempfile::tempdir().unwrap();
    let (ours, _) = overlapping_last_segment(base.path(), false);
    let mut sink = Collect::default();
    let (wal, report) =
        keel_recovery::open_log(&ours, common::options(), SKIP, None, &mut sink).unwrap();
    assert_eq!(sink.applied.len(), 5, "{report}");
    assert_eq!(wal.next_lsn(), 11, "{report}");
    let commit = wal.append(&txn(100)).wait().unwrap();
    wal.close().unwrap();
    let (txns, again) = applied(&ours, SKIP);
    assert!(
        txns.contains(&100),
        "txn 100 (committed durably at LSN {commit} after the open) is not replayed by the \
         next recovery under the same policy: {txns:?}\n{again}"
    );
}

/// Failed before the fix (the last segment kept must end at the next LSN with nothing passed
/// over in it, or be sealed). As above, but the stray last segment ends in a torn record (LSN 8, never
/// witnessed). The recovery cuts the torn tail and sets `expected` back to the gap's start,
/// 8, ignoring that LSNs 8..=10 were already read (and replayed) from the first segment: the
/// log resumes at LSN 8, handing out LSNs already used, right after LSN 7 in the stray
/// segment. The next recovery reads the first segment through 10, then passes over the
/// stray segment's records below 11 as "already read": the transaction committed after the
/// open (at LSNs 8 and 9) vanishes silently, with no finding about it.
///
/// Root cause: `Walk::resolve` sets `expected = gap.from` on a cut without `max(floor)`; and,
/// as above, a last segment ending below the floor is not sealed.
#[test]
fn a_torn_overlapping_last_segment_hands_out_used_lsns_and_loses_the_next_commit() {
    let base = tempfile::tempdir().unwrap();
    let (ours, stray) = overlapping_last_segment(base.path(), true);
    let (_, offset, len) = *common::record_spans(&ours, &stray)
        .iter()
        .find(|s| s.0 == 8)
        .unwrap();
    let at = offset + len / 2;
    common::patch(&stray, at, &[common::byte_at(&stray, at) ^ 0xff]);
    let mut sink = Collect::default();
    let (wal, report) =
        keel_recovery::open_log(&ours, common::options(), SKIP, None, &mut sink).unwrap();
    assert_eq!(sink.applied.len(), 5, "{report}");
    let next = wal.next_lsn();
    let commit = wal.append(&txn(100)).wait().unwrap();
    wal.close().unwrap();
    let (txns, again) = applied(&ours, SKIP);
    assert!(
        next > 10 && txns.contains(&100),
        "the log resumed at LSN {next} (LSNs through 10 were replayed); txn 100, committed \
         durably at LSN {commit} after the open, is not replayed by the next recovery: \
         {txns:?}\n{again}"
    );
}

/// Failed before the fix (the last segment kept must end at the next LSN with nothing passed
/// over in it, or be sealed). SkipCorrupted: the first segment's records end below its own witness (its last
/// records zeroed: skipped as damage in a sealed segment, nothing readable after it), and
/// every later segment's header is damaged (skipped, set aside). The first segment becomes the
/// last and the log ends at the damage, but its witness still claims the lost records: no
/// cut, so no lowering; no skip "in the last segment", so no fresh segment. `RecoveredLog::new`
/// then refuses the state the repair just made ("invalid options: recovered log: the witness
/// claims more than the log holds"), after the repair set segments aside and the sink
/// replayed everything: the open fails with an internal inconsistency instead of opening.
///
/// Root cause: `repair::plan` decides `seal` from `walk.seal_last` (a skip inside the segment
/// that was last in the listing) and `lower_witness` only for a cut; neither looks at the
/// segment that becomes last once later ones are set aside.
#[test]
fn a_skip_that_makes_a_damaged_sealed_segment_the_last_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    common::committed_log(dir, 3, 1, 60);
    let sealed = common::segments(dir).pop().unwrap();
    let wal = keel_recovery::open_wal(dir, common::options()).unwrap();
    for t in 3..40 {
        wal.append(&common::txn(1, t, 1, 3000)).wait().unwrap();
    }
    wal.close().unwrap();
    let segments = common::segments(dir);
    assert!(segments.len() >= 2 && segments[0] == sealed);
    // The sealed segment's records from LSN 5 on zeroed (its witness claims through 6).
    let spans = common::record_spans(dir, &sealed);
    let (_, from, _) = common::locate(dir, 5);
    let end = spans.last().map(|&(_, o, l)| o + l).unwrap();
    common::patch(
        &sealed,
        from,
        &vec![0; usize::try_from(end - from).unwrap()],
    );
    for later in &segments[1..] {
        common::patch(later, 33, &[common::byte_at(later, 33) ^ 0x40]);
    }
    let opened =
        keel_recovery::open_log(dir, common::options(), SKIP, None, &mut Collect::default());
    let wal = match opened {
        Ok((wal, _)) => wal,
        Err(e) => {
            let aside: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(keel_recovery::DISCARDED_SUFFIX))
                .collect();
            panic!("the open failed after its repair had set {aside:?} aside: {e}")
        }
    };
    let commit = wal.append(&txn(100)).wait().unwrap();
    wal.close().unwrap();
    let (txns, again) = applied(dir, SKIP);
    assert!(txns.contains(&100), "LSN {commit}: {txns:?}\n{again}");
}
