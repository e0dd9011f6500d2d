//! Whatever the bytes of a segment, the reader never panics, never loops, and never returns a
//! record that was not written: it stops with `End` or `Damaged`, and every record it returns
//! before that is one of the originals, in order. Opening the damaged log either succeeds with
//! a prefix of the originals or fails with a clear error; when the close wrote its durable
//! witness, damage never costs a record: the log opens whole or is refused.

mod common;

use std::os::unix::fs::FileExt;

use keel_wal::segment::{self, HEADER_BLOCK_LEN};
use keel_wal::{SegmentEvent, SegmentReader, WalEntry};
use proptest::prelude::*;

/// A one-segment log of `count` records; returns its bytes and the entries.
/// (In `Strict` mode every record's durable mark reaches the record before it, so damage
/// below the last record is damage to acknowledged data; in `Batched` mode with no sync before
/// the close, every mark is 0. With `witness`, the close writes the durable witness, which
/// claims every record: any damage to them is damage to durable data. Without it, in
/// `Batched` mode, any damage is a torn tail.)
fn pristine(
    count: u64,
    durability: keel_wal::Durability,
    witness: bool,
) -> (tempfile::TempDir, Vec<u8>, Vec<WalEntry>) {
    let dir = tempfile::tempdir().unwrap();
    let options = keel_wal::WalOptions {
        durability,
        witness_idle: witness.then_some(keel_wal::DEFAULT_WITNESS_IDLE),
        ..common::small_options(keel_wal::BackendChoice::Std)
    };
    let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
    let entries: Vec<WalEntry> = (0..count)
        .map(|i| {
            common::write(
                5,
                i,
                &format!("key{i}"),
                40 + 13 * usize::try_from(i).unwrap(),
            )
        })
        .collect();
    for entry in &entries {
        wal.append(std::slice::from_ref(entry)).wait().unwrap();
    }
    wal.close().unwrap();
    let bytes = std::fs::read(dir.path().join(segment::file_name(1))).unwrap();
    (dir, bytes, entries)
}

#[derive(Debug, Clone)]
enum Damage {
    Flip { offset: usize, bit: u8 },
    Zero { offset: usize, len: usize },
    Garbage { offset: usize, bytes: Vec<u8> },
}

/// Where records start, as an index into the segment's bytes.
const BASE: usize = 4096;
const _: () = assert!(BASE as u64 == HEADER_BLOCK_LEN);

fn damage(span: usize) -> impl Strategy<Value = Damage> {
    let base = BASE;
    prop_oneof![
        (base..base + span, 0u8..8).prop_map(|(offset, bit)| Damage::Flip { offset, bit }),
        (base..base + span, 1usize..64).prop_map(|(offset, len)| Damage::Zero { offset, len }),
        (base..base + span, prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(offset, bytes)| Damage::Garbage { offset, bytes }),
    ]
}

fn apply(bytes: &mut [u8], damage: &Damage) {
    match damage {
        Damage::Flip { offset, bit } => bytes[*offset] ^= 1 << bit,
        Damage::Zero { offset, len } => {
            let end = (*offset + len).min(bytes.len());
            bytes[*offset..end].fill(0);
        }
        Damage::Garbage {
            offset,
            bytes: garbage,
        } => {
            let end = (*offset + garbage.len()).min(bytes.len());
            bytes[*offset..end].copy_from_slice(&garbage[..end - offset]);
        }
    }
}

#[test]
fn damaged_segments_never_panic_nor_yield_phantoms() {
    let seed = common::seed(0x5eed_0002);
    let hour = std::time::Duration::from_secs(3600);
    let modes = [
        keel_wal::Durability::Strict,
        keel_wal::Durability::Batched {
            max_delay: hour,
            max_bytes: u64::MAX,
        },
    ];
    for durability in modes {
        for witness in [true, false] {
            damage_one_log(seed, durability, witness);
        }
    }
}

fn damage_one_log(seed: u64, durability: keel_wal::Durability, witness: bool) {
    let (dir, original, entries) = pristine(12, durability, witness);
    let opened = std::cell::Cell::new(0u32);
    let refused = std::cell::Cell::new(0u32);
    let path = dir.path().join(segment::file_name(1));
    let written = original.iter().rposition(|&b| b != 0).unwrap() + 64 - BASE;
    let mut runner = common::runner(seed, 256);
    runner
        .run(&prop::collection::vec(damage(written), 1..4), |damages| {
            let mut bytes = original.clone();
            for d in &damages {
                apply(&mut bytes, d);
            }
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .write_all_at(&bytes, 0)
                .unwrap();
            let listing = keel_wal::dir::list_directory(dir.path()).unwrap();
            let mut reader = SegmentReader::open(&listing.segments[0]).unwrap();
            let mut seen = 0;
            while let SegmentEvent::Record(record) = reader.next_event().unwrap() {
                prop_assert!(seen < entries.len(), "more records than were written");
                prop_assert_eq!(record.entry.to_owned_entry(), entries[seen].clone());
                seen += 1;
            }
            match keel_recovery::open_wal(
                dir.path(),
                common::small_options(keel_wal::BackendChoice::Std),
            ) {
                Ok(wal) => {
                    opened.set(opened.get() + 1);
                    let next = wal.next_lsn();
                    prop_assert!(next <= entries.len() as u64 + 1);
                    if witness {
                        prop_assert_eq!(next, entries.len() as u64 + 1, "the witness claims all");
                    }
                    drop(wal);
                    let recovered = common::read_all(dir.path());
                    prop_assert_eq!(recovered.len() as u64, next - 1);
                    for (lsn, entry) in recovered {
                        prop_assert_eq!(&entry, &entries[usize::try_from(lsn - 1).unwrap()]);
                    }
                }
                Err(error) => {
                    refused.set(refused.get() + 1);
                    let is_durable_damage = matches!(
                        error,
                        keel_recovery::Error::Refused {
                            finding: keel_recovery::Finding::DamageBelowDurableMark { .. },
                            ..
                        }
                    );
                    prop_assert!(is_durable_damage, "unexpected error: {}", error);
                    prop_assert!(
                        durability == keel_wal::Durability::Strict || witness,
                        "no durable marks in Batched, and no witness: {}",
                        error
                    );
                }
            }
            Ok(())
        })
        .unwrap();
    println!(
        "{durability:?}, witness {witness}: {} damaged logs opened with a prefix, {} refused as \
         damaged below a durable mark",
        opened.get(),
        refused.get()
    );
    if durability == keel_wal::Durability::Strict || witness {
        assert!(refused.get() > 0, "damage to durable records is reported");
    } else {
        assert!(opened.get() > 0, "torn tails are cut");
    }
}
