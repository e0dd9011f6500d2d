//! Micro-benchmarks of the record path: framing + checksumming entries (what a caller does
//! before enqueueing), sealing (what the writer does per record), and the zero-copy reader
//! (validated access over a segment file in the page cache).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keel_wal::record::{self, EncodedBatch, MAX_PAYLOAD_LEN};
use keel_wal::{Durability, RunId, SegmentEvent, SegmentReader, WalEntry, WalOptions};

fn write_entry(value_len: usize, txn_id: u64) -> WalEntry {
    WalEntry::Write {
        run_id: RunId::from_u128(42),
        txn_id,
        key: format!("key-{txn_id:08}").into_bytes(),
        value: vec![0x5a; value_len],
    }
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode+checksum");
    for value_len in [128usize, 4096] {
        let entries: Vec<WalEntry> = (0..64).map(|i| write_entry(value_len, i)).collect();
        group.throughput(Throughput::Elements(entries.len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(value_len),
            &entries,
            |b, entries| {
                b.iter(|| EncodedBatch::encode(black_box(entries), MAX_PAYLOAD_LEN).unwrap())
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group("seal");
    for value_len in [128usize, 4096] {
        let batch = EncodedBatch::encode(&[write_entry(value_len, 1)], MAX_PAYLOAD_LEN).unwrap();
        let framed = batch.as_bytes().to_vec();
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::from_parameter(value_len),
            &framed,
            |b, framed| {
                let mut scratch = framed.clone();
                b.iter(|| {
                    scratch.copy_from_slice(framed);
                    record::seal(black_box(&mut scratch), 10, 9, 0x1234_5678)
                })
            },
        );
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let entries = 50_000u64;
    let options = WalOptions {
        durability: Durability::Batched {
            max_delay: std::time::Duration::from_millis(10),
            max_bytes: 1 << 30,
        },
        segment_bytes: 32 << 20,
        ..WalOptions::default()
    };
    let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
    for chunk in 0..entries / 100 {
        let unit: Vec<WalEntry> = (0..100)
            .map(|i| write_entry(128, chunk * 100 + i))
            .collect();
        drop(wal.append(&unit));
    }
    wal.close().unwrap();
    let segment = keel_wal::dir::list_directory(dir.path())
        .unwrap()
        .segments
        .remove(0);
    let bytes = std::fs::metadata(&segment.path).map(|m| m.len()).unwrap();

    let mut group = c.benchmark_group("zero-copy reader");
    group.throughput(Throughput::Elements(entries));
    group.bench_function("128B writes", |b| {
        b.iter(|| {
            let mut reader = SegmentReader::open(&segment).unwrap();
            let mut value_bytes = 0usize;
            while let SegmentEvent::Record(record) = reader.next_event().unwrap() {
                if let keel_wal::ArchivedWalEntry::Write { value, .. } = record.entry {
                    value_bytes += value.len();
                }
            }
            assert_eq!(value_bytes as u64, entries * 128);
        })
    });
    group.finish();
    println!("segment file: {bytes} bytes for {entries} entries");
}

criterion_group!(benches, encode, read);
criterion_main!(benches);
