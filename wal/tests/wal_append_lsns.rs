//! `Wal::append_encoded_at` and `Wal::append_closed_by` say which LSNs an append got: ranges
//! are consecutive and sized to the batch, never interleave across concurrent appenders, stay
//! in each appender's own order, survive rotations, and match what is read back; a closing
//! entry names its unit's first LSN; a refused append gets no LSN and uses none.

mod common;

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use keel_sim::Faults;
use keel_wal::{Appended, Durability, EncodedBatch, Error, Lsn, RunId, Wal, WalEntry, WalOptions};

/// The closing entry of unit `id`, naming `first_lsn`.
fn span(id: u64, first_lsn: Lsn) -> WalEntry {
    WalEntry::CommitSpan {
        run_id: RunId::from_u128(1),
        txn_id: id,
        first_lsn,
    }
}

/// Unit `id`: `count` writes carrying `id` as their transaction id.
fn unit(wal: &Wal, id: u64, count: u64, value_len: usize) -> EncodedBatch {
    let entries: Vec<WalEntry> = (0..count)
        .map(|_| common::write(1, id, "k", value_len))
        .collect();
    EncodedBatch::encode(&entries, wal.max_record_bytes()).unwrap()
}

/// Appends unit `id` of `count` writes, closed by a `CommitSpan` when `closed`. Returns the
/// reported range after checking it against the future's LSN.
fn append_unit(wal: &Wal, id: u64, count: u64, value_len: usize, closed: bool) -> Appended {
    let batch = unit(wal, id, count, value_len);
    if closed {
        wal.append_closed_by(batch, Durability::Strict, |first| span(id, first))
    } else {
        wal.append_encoded_at(batch, Durability::Strict)
    }
}

/// Waits for `appended` and returns its range, checking its size and the future's LSN.
fn settled(appended: Appended, records: u64) -> RangeInclusive<Lsn> {
    let lsns = appended.lsns.clone().expect("the log took the append");
    assert_eq!(lsns.end() - lsns.start() + 1, records, "{lsns:?}");
    assert_eq!(appended.last_lsn(), Some(*lsns.end()));
    assert_eq!(appended.future.wait().unwrap(), *lsns.end());
    lsns
}

/// Every record at an LSN of `lsns` is unit `id`'s: its writes, then (when closed) its
/// `CommitSpan` naming the range's first LSN.
fn check_read_back(log: &[(Lsn, WalEntry)], id: u64, lsns: &RangeInclusive<Lsn>, closed: bool) {
    for lsn in lsns.clone() {
        let (read_lsn, entry) = &log[usize::try_from(lsn - 1).unwrap()];
        assert_eq!(*read_lsn, lsn);
        match entry {
            WalEntry::CommitSpan {
                txn_id, first_lsn, ..
            } => {
                assert!(closed && lsn == *lsns.end(), "a span at {lsn} in {lsns:?}");
                assert_eq!((*txn_id, *first_lsn), (id, *lsns.start()));
            }
            WalEntry::Write { txn_id, .. } => {
                assert_eq!(*txn_id, id, "LSN {lsn} of {lsns:?}");
                assert!(
                    !closed || lsn < *lsns.end(),
                    "a closed unit ends with its span"
                );
            }
            other => panic!("unexpected entry at {lsn}: {other:?}"),
        }
    }
}

#[test]
fn appends_report_consecutive_ranges_across_rotations() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap();
        let mut units = Vec::new();
        let mut next = 1;
        for id in 0..200u64 {
            let (count, closed) = (id % 4, id % 2 == 0);
            // An unclosed unit needs a record; a closed one may be its span alone.
            let count = if closed { count } else { count + 1 };
            let lsns = settled(
                append_unit(&wal, id, count, 900, closed),
                count + u64::from(closed),
            );
            assert_eq!(*lsns.start(), next, "unit {id} follows the one before");
            next = lsns.end() + 1;
            units.push((id, lsns, closed));
        }
        assert_eq!(wal.next_lsn(), next);
        assert!(wal.stats().rotations >= 2, "the test should cross segments");
        wal.close().unwrap();
        let log = common::read_all(dir.path());
        assert_eq!(log.len() as u64, next - 1);
        for (id, lsns, closed) in &units {
            check_read_back(&log, *id, lsns, *closed);
        }
    }
}

#[test]
fn concurrent_appenders_get_disjoint_ranges_in_their_own_order() {
    let seed = common::seed(16);
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal =
            Arc::new(keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap());
        let appenders: Vec<_> = (0..4u64)
            .map(|thread| {
                let wal = Arc::clone(&wal);
                std::thread::spawn(move || {
                    let mut rng = keel_sim::SimRng::new(seed ^ thread);
                    let mut mine = Vec::new();
                    for n in 0..100u64 {
                        let id = thread * 1000 + n;
                        let closed = rng.below(2) == 0;
                        let count = rng.below(4) + u64::from(!closed);
                        let value_len = usize::try_from(rng.below(1500)).unwrap();
                        let appended = append_unit(&wal, id, count, value_len, closed);
                        mine.push((id, settled(appended, count + u64::from(closed)), closed));
                    }
                    mine
                })
            })
            .collect();
        let mut units = Vec::new();
        for appender in appenders {
            let mine = appender.join().unwrap();
            for pair in mine.windows(2) {
                assert!(
                    pair[0].1.end() < pair[1].1.start(),
                    "one appender's ranges come in its order: {pair:?}"
                );
            }
            units.extend(mine);
        }
        units.sort_by_key(|(_, lsns, _)| *lsns.start());
        let mut next = 1;
        for (_, lsns, _) in &units {
            assert_eq!(*lsns.start(), next, "ranges tile the log: {lsns:?}");
            next = lsns.end() + 1;
        }
        assert_eq!(wal.next_lsn(), next);
        assert!(wal.stats().rotations >= 1, "the test should cross segments");
        Arc::try_unwrap(wal).unwrap().close().unwrap();
        let log = common::read_all(dir.path());
        assert_eq!(log.len() as u64, next - 1);
        for (id, lsns, closed) in &units {
            check_read_back(&log, *id, lsns, *closed);
        }
    }
}

/// Appends that are refused get `None` and use no LSN: an empty batch, a record over the
/// log's limit (in the batch or as the closing entry), and every append once the log is
/// poisoned (whose closing entry is then never framed).
#[test]
fn a_refused_append_gets_no_lsns() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        let options = WalOptions {
            storage: Arc::clone(&faults) as _,
            ..common::small_options(backend)
        };
        let limit = options.max_record_bytes;
        let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
        let refused = |appended: Appended| {
            assert_eq!(appended.lsns, None);
            assert_eq!(appended.first_lsn(), None);
            appended.future.wait().unwrap_err()
        };
        let error = refused(wal.append_encoded_at(EncodedBatch::default(), Durability::Strict));
        assert!(matches!(error, Error::Encode(_)), "{error}");
        let big = EncodedBatch::encode(&[common::write(1, 1, "k", limit as usize)], limit * 2);
        let error = refused(wal.append_encoded_at(big.unwrap(), Durability::Strict));
        assert!(matches!(error, Error::RecordTooLarge { .. }), "{error}");
        let error = refused(
            wal.append_closed_by(unit(&wal, 2, 2, 10), Durability::Strict, |_| {
                common::write(1, 2, "closing", limit as usize)
            }),
        );
        assert!(matches!(error, Error::RecordTooLarge { .. }), "{error}");
        assert_eq!(wal.next_lsn(), 1, "no refused append used an LSN");
        assert_eq!(settled(append_unit(&wal, 3, 1, 10, true), 2), 1..=2);

        faults.fail_sync_after(0);
        let failed = append_unit(&wal, 4, 1, 10, false);
        assert_eq!(failed.lsns, Some(3..=3), "queued before the failure");
        assert!(matches!(failed.future.wait(), Err(Error::Poisoned { .. })));
        let error = refused(append_unit(&wal, 5, 1, 10, false));
        assert!(matches!(error, Error::Poisoned { .. }), "{error}");
        let framed = AtomicBool::new(false);
        let error = refused(
            wal.append_closed_by(unit(&wal, 6, 1, 10), Durability::Strict, |f| {
                framed.store(true, Ordering::Relaxed);
                span(6, f)
            }),
        );
        assert!(matches!(error, Error::Poisoned { .. }), "{error}");
        assert!(
            !framed.load(Ordering::Relaxed),
            "a refused unit is not closed"
        );
        assert_eq!(wal.next_lsn(), 4, "no refused append used an LSN");
        assert!(wal.close().is_err());
    }
}
