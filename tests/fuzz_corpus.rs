//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz targets of
//! `fuzz/targets.rs`, so that every input the fuzzers kept (and every crash they once found)
//! runs in `cargo test`. The fuzzers themselves are built and run by `.ci/run` (see
//! `fuzz/README.md`).
//!
//! `write_seed_corpus` (ignored) writes the hand-made seeds the corpus started from.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

use keel_wal::record::{self, RECORD_HEADER_LEN};
use keel_wal::{EncodedBatch, RunId, WalEntry};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = corpus(target);
    assert!(!files.is_empty(), "the {target} corpus is empty");
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&bytes));
        assert!(outcome.is_ok(), "{target}: {} fails", file.display());
    }
    println!("{target}: {} corpus inputs replayed", files.len());
}

#[test]
fn the_record_decoder_corpus_passes() {
    replay("record_decoder", targets::record_decoder);
}

#[test]
fn the_recovery_corpus_passes() {
    replay("recovery", targets::recovery);
}

const SALT: u32 = 0x5eed_cafe;

/// Records for `entries` from LSN `first`, sealed with the targets' salt.
fn sealed(entries: &[WalEntry], first: u64) -> Vec<u8> {
    let mut bytes = EncodedBatch::encode(entries, 1 << 20)
        .unwrap()
        .as_bytes()
        .to_vec();
    let mut at = 0;
    let mut lsn = first;
    while at < bytes.len() {
        let len = record::record_len(u32::from_le_bytes(
            bytes[at + record::PAYLOAD_LEN_OFFSET..at + record::PAYLOAD_LEN_OFFSET + 4]
                .try_into()
                .unwrap(),
        ) as usize);
        record::seal(&mut bytes[at..at + len], lsn, lsn - 1, SALT);
        at += len;
        lsn += 1;
    }
    bytes
}

/// The same entries in the sealed-mode input format: `[len / 2][step][payload]`.
fn sealed_input(entries: &[WalEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let bytes = sealed(std::slice::from_ref(entry), 1);
        let payload_len = u32::from_le_bytes(
            bytes[record::PAYLOAD_LEN_OFFSET..record::PAYLOAD_LEN_OFFSET + 4]
                .try_into()
                .unwrap(),
        ) as usize;
        let payload = &bytes[RECORD_HEADER_LEN..RECORD_HEADER_LEN + payload_len];
        if !payload.len().is_multiple_of(2) || payload.len() > 510 {
            continue;
        }
        out.push(u8::try_from(payload.len() / 2).unwrap());
        out.push(0);
        out.extend_from_slice(payload);
    }
    out
}

fn sample_entries() -> Vec<Vec<WalEntry>> {
    let run_id = RunId::from_u128(3);
    vec![
        vec![
            WalEntry::Write {
                run_id,
                txn_id: 1,
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
            WalEntry::CommitTxn { run_id, txn_id: 1 },
        ],
        vec![
            WalEntry::BeginTxn { run_id, txn_id: 2 },
            WalEntry::Write {
                run_id,
                txn_id: 2,
                key: b"a".to_vec(),
                value: vec![9; 40],
            },
            WalEntry::Delete {
                run_id,
                txn_id: 2,
                key: b"b".to_vec(),
            },
            WalEntry::CommitTxn { run_id, txn_id: 2 },
            WalEntry::Write {
                run_id,
                txn_id: 3,
                key: b"c".to_vec(),
                value: vec![1; 7],
            },
            WalEntry::AbortTxn { run_id, txn_id: 3 },
        ],
        vec![
            WalEntry::Checkpoint {
                run_id: RunId::SYSTEM,
                snapshot_lsn: 0,
            },
            WalEntry::Write {
                run_id,
                txn_id: 4,
                key: vec![],
                value: vec![],
            },
            WalEntry::CommitTxn { run_id, txn_id: 4 },
        ],
    ]
}

#[test]
#[ignore = "writes the seed corpus into fuzz/corpus; run once by hand"]
fn write_seed_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |target: &str, bytes: Vec<u8>| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let name = format!("seed-{:08x}", crc32fast::hash(&bytes));
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    for entries in sample_entries() {
        let raw = sealed(&entries, 1);
        write("record_decoder", [&[0u8][..], &raw].concat());
        write(
            "record_decoder",
            [&[1u8][..], &sealed_input(&entries)].concat(),
        );
        for mode in 0u8..16 {
            let body = if mode & 4 != 0 {
                sealed_input(&entries)
            } else {
                raw.clone()
            };
            write("recovery", [&[mode][..], &body].concat());
        }
    }
}
