//! Adversarial review of the tail's adaptive reads (`SegmentReader::forget_read_ahead`,
//! `refill`): a tail following a live log, records of every size around the read sizes
//! (16 KiB up to 1 MiB), segments recycled under it, seeks back and forth, every backend.
//! Every record must come once, in order, whole, and only once durable.

mod common;

use keel_wal::{BackendChoice, Durability, Lsn, Wal, WalEntry, WalOptions};

/// A tiny deterministic generator (splitmix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn options(backend: BackendChoice) -> WalOptions {
    WalOptions {
        segment_bytes: 4 << 20,
        max_record_bytes: 1 << 20,
        recycle_segments: 2,
        ..common::small_options(backend)
    }
}

/// A value length around the reader's read sizes.
fn value_len(rng: &mut Rng) -> usize {
    let len = match rng.below(10) {
        0..=5 => rng.below(600),
        6 => rng.below(20_000),
        7 => (16 << 10) - 64 + rng.below(128),
        8 => rng.below(300_000),
        _ => (1 << 20) - 4096 - rng.below(20_000),
    };
    usize::try_from(len).unwrap()
}

fn expected(lsn: Lsn, len: usize) -> WalEntry {
    common::write(1, lsn, "k", len)
}

fn check(record: &keel_wal::OwnedRecord, lens: &[usize], wal: &Wal) {
    let lsn = record.lsn();
    assert!(
        lsn <= wal.durable_lsn(),
        "record {lsn} yielded before it is durable"
    );
    let len = lens[usize::try_from(lsn).unwrap()];
    assert_eq!(
        record.entry().to_owned_entry(),
        expected(lsn, len),
        "record {lsn} ({len} bytes of value)"
    );
}

fn run_model(backend: BackendChoice, seed: u64, steps: u32) {
    let dir = tempfile::tempdir().unwrap();
    let wal = keel_recovery::open_wal(dir.path(), options(backend)).unwrap();
    let mut rng = Rng(seed);
    // lens[lsn]: the value length of the record at lsn (index 0 unused).
    let mut lens = vec![0usize];
    let mut tail = wal.tail(1);
    let mut next = 1;
    for step in 0..steps {
        match rng.below(10) {
            0..=4 => {
                let count = 1 + rng.below(4);
                let first = wal.next_lsn();
                let entries: Vec<_> = (0..count)
                    .map(|i| {
                        let len = value_len(&mut rng);
                        lens.push(len);
                        expected(first + i, len)
                    })
                    .collect();
                let durability = if rng.below(4) == 0 {
                    Durability::Async {
                        max_delay: std::time::Duration::from_millis(1),
                    }
                } else {
                    Durability::Strict
                };
                let last = common::within(common::LIMIT, "append", {
                    let future = wal.append_with(&entries, durability);
                    move || future.wait()
                })
                .unwrap();
                assert_eq!(last, first + count - 1);
            }
            5..=7 => {
                // Read some of what is durable (read-ahead left in the buffer), or all.
                let most = 1 + rng.below(6);
                for _ in 0..most {
                    match tail.try_next() {
                        Ok(Some(record)) => {
                            assert_eq!(record.lsn(), next, "step {step}");
                            check(&record, &lens, &wal);
                            next += 1;
                        }
                        Ok(None) => break,
                        Err(error) => panic!("step {step}: the tail at {next} failed: {error}"),
                    }
                }
            }
            8 => {
                // A checkpoint: frees the segments the tail no longer holds (recycled).
                wal.remove_segments_before(next).unwrap();
            }
            _ => {
                // Seek back (inside the log still there) or forward, then back where it was.
                let oldest = common::segment_lsns(dir.path())[0];
                let to = oldest + rng.below(next - oldest + 1);
                tail.seek(to);
                let mut lsn = to;
                while lsn < next {
                    let record = tail.try_next().unwrap().expect("durable");
                    assert_eq!(record.lsn(), lsn);
                    check(&record, &lens, &wal);
                    lsn += 1;
                }
            }
        }
    }
    common::within(common::LIMIT, "sync", {
        let future = wal.sync();
        move || future.wait()
    })
    .unwrap();
    while let Some(record) = tail.try_next().unwrap() {
        assert_eq!(record.lsn(), next);
        check(&record, &lens, &wal);
        next += 1;
    }
    assert_eq!(next, wal.next_lsn(), "every record read");
    println!(
        "{backend:?}: {} records, {} recycled",
        next - 1,
        wal.stats().segments_recycled
    );
    drop(tail);
    wal.close().unwrap();
}

#[test]
fn a_tail_following_a_live_log_reads_every_record_whole_in_order() {
    let seed = common::seed(48);
    for backend in common::backends() {
        run_model(backend, seed, 600);
    }
}

/// Committers appending while a tail follows: reads race the writer (page cache copies
/// of blocks being written, direct writes rewriting a block's tail). Outcome checked, not
/// timing: every record once, in order, whole.
fn run_racing(backend: BackendChoice, seed: u64, threads: u64, per_thread: u64) {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(keel_recovery::open_wal(dir.path(), options(backend)).unwrap());
    let mut tail = wal.tail(1);
    let committers: Vec<_> = (0..threads)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x1234_5678_9abc_def1));
                for i in 0..per_thread {
                    let len = if rng.below(50) == 0 {
                        usize::try_from(rng.below(200_000)).unwrap()
                    } else {
                        usize::try_from(rng.below(3000)).unwrap()
                    };
                    let durability = if i % 3 == 0 {
                        Durability::Strict
                    } else {
                        Durability::Async {
                            max_delay: std::time::Duration::from_micros(200),
                        }
                    };
                    let entry = common::write(u128::from(t), i, &format!("{t}-{i}"), len);
                    wal.append_with(&[entry], durability).wait().unwrap();
                }
            })
        })
        .collect();
    let total = threads * per_thread;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut next = 1;
    let mut seen = std::collections::HashMap::new();
    while next <= total {
        assert!(
            std::time::Instant::now() < deadline,
            "watchdog: tail stuck at {next}"
        );
        match tail.try_next() {
            Ok(Some(record)) => {
                assert_eq!(record.lsn(), next);
                assert!(next <= wal.durable_lsn());
                let WalEntry::Write {
                    run_id,
                    txn_id,
                    key,
                    value,
                } = record.entry().to_owned_entry()
                else {
                    panic!("not a write")
                };
                let t = u64::try_from(run_id.as_u128()).unwrap();
                let want =
                    common::write(u128::from(t), txn_id, &format!("{t}-{txn_id}"), value.len());
                assert_eq!(
                    WalEntry::Write {
                        run_id,
                        txn_id,
                        key,
                        value
                    },
                    want,
                    "record {next}"
                );
                let last = seen.insert(t, txn_id);
                assert_eq!(
                    last.map_or(0, |l| l + 1),
                    txn_id,
                    "committer {t} out of order"
                );
                next += 1;
                if next % 64 == 0 {
                    wal.remove_segments_before(next).unwrap();
                }
            }
            Ok(None) => std::thread::yield_now(),
            Err(error) => panic!("{backend:?} seed {seed}: the tail at {next} failed: {error}"),
        }
    }
    for c in committers {
        c.join().unwrap();
    }
    println!(
        "{backend:?}: {total} records, {} recycled",
        wal.stats().segments_recycled
    );
    drop(tail);
    Arc::try_unwrap(wal).unwrap().close().unwrap();
}

#[test]
fn a_tail_racing_committers_reads_every_record_whole_in_order() {
    let seed = common::seed(4848);
    for backend in common::backends() {
        run_racing(backend, seed, 4, 1500);
    }
}
