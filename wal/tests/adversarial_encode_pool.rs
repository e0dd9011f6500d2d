//! Review of the encode-buffer pool and the writer's `Salter` (commit baa31ed): attempts to
//! lose or corrupt a record through a buffer handed back and reused, a body checksum salted
//! from a stale per-length delta, or a pool that keeps more than its bounds. Nothing was
//! found; these tests pin the properties down, each one failing under a plausible mutation
//! (named in its comment).

mod common;

use std::sync::{Arc, Mutex};

use keel_wal::{Durability, RecordPosition, Wal, WalEntry, WalOptions};

/// `MAX_POOLED_BYTES` and `MAX_POOLED_BUFFER` of `wal/src/writer/buffers.rs`.
const MAX_POOLED_BYTES: u64 = 4 << 20;
const MAX_POOLED_BUFFER: usize = 64 << 10;

const ASYNC: Durability = Durability::Async {
    max_delay: std::time::Duration::from_millis(1),
};

/// Appends `units` through `Wal::encode` and `append_placed`, alternating `Async` and
/// `Strict` (waited for: the writer hands buffers back meanwhile); returns every entry with
/// the position the writer reported for it.
fn append_placed_units(wal: &Wal, units: &[Vec<WalEntry>]) -> Vec<(WalEntry, RecordPosition)> {
    let reported: Arc<Mutex<Vec<RecordPosition>>> = Arc::default();
    let mut futures = Vec::new();
    for (i, unit) in units.iter().enumerate() {
        let sink = Arc::clone(&reported);
        let count = unit.len();
        let durability = if i % 2 == 0 {
            ASYNC
        } else {
            Durability::Strict
        };
        let batch = wal.encode(unit).unwrap();
        let future = wal.append_placed(batch, durability, move |positions| {
            assert_eq!(positions.len(), count, "one position per entry");
            sink.lock().unwrap().extend_from_slice(positions);
        });
        match durability {
            Durability::Strict => future.wait().map(drop).unwrap(),
            _ => futures.push(future),
        }
    }
    for future in futures {
        future.wait().unwrap();
    }
    // Every placed callback ran before the sync resolves (the writer places as it stages).
    wal.sync().wait().unwrap();
    let positions = reported.lock().unwrap().clone();
    let entries: Vec<WalEntry> = units.iter().flatten().cloned().collect();
    assert_eq!(positions.len(), entries.len());
    entries.into_iter().zip(positions).collect()
}

/// Each record read back alone by its position (both checksums verified), then the whole log
/// by a reader after close, then a reopen that must find nothing to cut.
fn check_every_record(
    wal: Wal,
    dir: &std::path::Path,
    options: WalOptions,
    placed: &[(WalEntry, RecordPosition)],
) {
    for (i, (entry, position)) in placed.iter().enumerate() {
        let record = wal
            .read_record(*position)
            .unwrap_or_else(|e| panic!("record {i} at {position:?}: {e}"));
        assert_eq!(&record.entry().to_owned_entry(), entry, "record {i}");
    }
    wal.close().unwrap();
    let read = common::read_all(dir);
    assert_eq!(read.len(), placed.len());
    for ((lsn, entry), (expected, position)) in read.iter().zip(placed) {
        assert_eq!(*lsn, position.lsn);
        assert_eq!(entry, expected, "LSN {lsn}");
    }
    let wal = keel_recovery::open_wal(dir, options).unwrap();
    assert_eq!(wal.open_summary().truncated_bytes, 0, "nothing to cut");
    assert_eq!(wal.next_lsn(), placed.len() as u64 + 1);
    wal.close().unwrap();
}

/// Body lengths that meet in the salter's 64 slots of 8 bytes (512 bytes apart) and follow
/// each other within a segment, appends of one to five records that rotate in their middle
/// (64 KiB segments), and buffers reused from larger records for smaller ones: every record
/// verifies, by position while the log is open and after a reopen.
///
/// Fails with the salter keeping its deltas across a new segment's salt (the reset in
/// `Salter::salt` removed: every record after the first rotation has a wrong body checksum),
/// and with a slot reused for another length (`slot.0 != len` replaced by an
/// empty-slot check: the second length of a slot gets the first one's delta).
#[test]
fn salted_records_verify_across_segments_and_lengths_sharing_a_slot() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let options = common::small_options(backend);
        let wal = keel_recovery::open_wal(dir.path(), options.clone()).unwrap();
        // Value lengths 512 bytes apart share a slot; 0 and 5 make the smallest records.
        let lengths = [100, 612, 1124, 100, 4196, 5, 0, 8292, 612, 13_000];
        let units: Vec<Vec<WalEntry>> = (0..300u64)
            .map(|unit| {
                (0..1 + unit % 5)
                    .map(|j| {
                        let i = unit * 5 + j;
                        let len = lengths[usize::try_from(i).unwrap() % lengths.len()];
                        common::write(1, i, "k", len)
                    })
                    .collect()
            })
            .collect();
        let placed = append_placed_units(&wal, &units);
        let stats = wal.stats();
        assert!(stats.rotations >= 20, "{backend:?}: {stats:?}");
        assert!(stats.buffers_reused > 0, "{backend:?}: {stats:?}");
        // Some appends did rotate in their middle: records of one append in two segments.
        let mut first = 0;
        let split = units.iter().any(|unit| {
            let segments: std::collections::BTreeSet<u64> = placed[first..first + unit.len()]
                .iter()
                .map(|(_, position)| position.segment)
                .collect();
            first += unit.len();
            segments.len() > 1
        });
        assert!(split, "{backend:?}: no append rotated in its middle");
        check_every_record(wal, dir.path(), options, &placed);
    }
}

/// One append larger than the writer's batch bound (`MAX_BATCH_BYTES`, 4 MiB: the batch is
/// submitted early in the middle of the append, whose buffer the writer goes on reading),
/// appends of records over the pooled size (their buffers freed, not kept), and small ones
/// framed into the buffers handed back, across a rotation: every record is where it was
/// placed, whole.
///
/// Fails with `seal_records` returning after an early submit (the rest of the append lost:
/// the writer panics on the next append's LSN).
#[test]
fn an_append_over_the_batch_bound_and_records_over_the_pooled_size_keep_every_record() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let options = WalOptions {
            segment_bytes: 16 << 20,
            max_record_bytes: 2 << 20,
            backend,
            ..WalOptions::default()
        };
        let wal = keel_recovery::open_wal(dir.path(), options.clone()).unwrap();
        let mut units = Vec::new();
        for round in 0..4u64 {
            let base = round * 1000;
            // 80 records of 60 KiB in one append: 4.8 MiB.
            units.push(
                (0..80)
                    .map(|j| common::write(2, base + j, "big", 60 << 10))
                    .collect(),
            );
            units.push(vec![common::write(2, base + 100, "huge", 1 << 20)]);
            units.push(vec![common::write(
                2,
                base + 101,
                "over",
                MAX_POOLED_BUFFER,
            )]);
            for j in 0..50usize {
                let txn_id = base + 200 + u64::try_from(j).unwrap();
                units.push(vec![common::write(2, txn_id, "small", j * 37)]);
            }
        }
        let placed = append_placed_units(&wal, &units);
        assert!(
            wal.stats().rotations >= 1,
            "{backend:?}: the test should cross a segment"
        );
        check_every_record(wal, dir.path(), options, &placed);
    }
}

/// Takes every buffer the pool holds (encoding small entries and keeping the batches, as a
/// caller that has not appended yet does): returns how many there were.
fn drain_pool(wal: &Wal) -> u64 {
    let mut kept = Vec::new();
    loop {
        let before = wal.stats().buffers_reused;
        kept.push(wal.encode(&[common::write(3, 0, "probe", 1)]).unwrap());
        if wal.stats().buffers_reused == before {
            return kept.len() as u64 - 1;
        }
    }
}

/// `threads` producers each append `per_thread` writes of `value_len` bytes while the writer
/// is held (so every append frames into a buffer of its own, pooled or new), then the writer
/// takes them all in one turn and hands every buffer back at once. Returns how many appends
/// framed into a pooled buffer.
fn flood(wal: &Arc<Wal>, threads: u64, per_thread: u64, value_len: usize) -> u64 {
    let before = wal.stats().buffers_reused;
    wal.hold_writer(true);
    let producers: Vec<_> = (0..threads)
        .map(|t| {
            let wal = Arc::clone(wal);
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let entry = common::write(4, t * 10_000 + i, "flood", value_len);
                    wal.append_with(&[entry], ASYNC).wait().unwrap();
                }
            })
        })
        .collect();
    for producer in producers {
        producer.join().unwrap();
    }
    wal.hold_writer(false);
    wal.sync().wait().unwrap();
    wal.stats().buffers_reused - before
}

/// The pool keeps no buffer over `MAX_POOLED_BUFFER` and at most `MAX_POOLED_BYTES` in all,
/// however many producers hand it buffers at once, and concurrent producers share what it
/// keeps.
///
/// Fails without the size bound in `BufferPool::give_back` (about 40 buffers of 100 KiB
/// kept), without the total bound (all 480 buffers of 30 KiB kept: 14 MiB), and without the
/// hand-back in the writer's turn (nothing kept).
#[test]
fn the_pool_keeps_within_its_bounds_under_many_producers() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_bytes: 16 << 20,
        max_record_bytes: 256 << 10,
        durability: ASYNC,
        backend: common::backends()[0],
        ..WalOptions::default()
    };
    let wal = Arc::new(keel_recovery::open_wal(dir.path(), options).unwrap());
    assert_eq!(drain_pool(&wal), 0, "a new log pools nothing");

    // Records over the pooled size: 320 buffers of 100 KiB handed back, none kept.
    flood(&wal, 8, 40, 100 << 10);
    assert_eq!(
        drain_pool(&wal),
        0,
        "a buffer over {MAX_POOLED_BUFFER} bytes was kept"
    );

    // 480 buffers of 30 KiB handed back at once: at most 4 MiB of them kept.
    let record_len =
        keel_wal::EncodedBatch::encode(&[common::write(4, 0, "flood", 30 << 10)], u32::MAX >> 8)
            .unwrap()
            .byte_len() as u64;
    let most = MAX_POOLED_BYTES / record_len;
    assert_eq!(flood(&wal, 8, 60, 30 << 10), 0, "the pool was drained");
    let kept = drain_pool(&wal);
    assert!(
        (1..=most).contains(&kept),
        "{kept} buffers of at least {record_len} bytes kept (at most {most})"
    );

    // Again, from a full pool: the producers share its buffers, and it stays bounded.
    flood(&wal, 8, 60, 30 << 10);
    let reused = flood(&wal, 8, 60, 30 << 10);
    assert!(
        (1..=most).contains(&reused),
        "{reused} appends framed into pooled buffers (at most {most})"
    );
    let kept = drain_pool(&wal);
    assert!((1..=most).contains(&kept), "{kept} kept (at most {most})");

    let wal = Arc::into_inner(wal).expect("the producers are done");
    wal.close().unwrap();
    assert_eq!(common::read_all(dir.path()).len(), 320 + 3 * 480);
}
