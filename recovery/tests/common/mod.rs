//! Helpers shared by keel-recovery's tests.
#![allow(dead_code, reason = "each test file uses its own subset")]

use std::path::{Path, PathBuf};

use keel_recovery::{CommittedTxn, RecoveryPolicy, Replay, ReplayError};
use keel_wal::reader::{SegmentEvent, SegmentReader};
use keel_wal::segment;
use keel_wal::{ArchivedWalEntry, BackendChoice, Lsn, RunId, Wal, WalEntry, WalOptions};

/// Small segments so tests cross segments, std backend (recovery does not depend on it).
pub fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        preallocate: false,
        ..WalOptions::default()
    }
}

/// One committed transaction as the sink saw it, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub commit_lsn: Lsn,
    pub run: u128,
    pub txn: u64,
    pub entries: Vec<(Lsn, WalEntry)>,
}

/// A sink that keeps everything it is given.
#[derive(Debug, Default)]
pub struct Collect {
    pub applied: Vec<Applied>,
    pub checkpoints: Vec<Lsn>,
}

impl Replay for Collect {
    fn apply(&mut self, txn: &CommittedTxn<'_>) -> Result<(), ReplayError> {
        self.applied.push(Applied {
            commit_lsn: txn.commit_lsn,
            run: txn.run_id.as_u128(),
            txn: txn.txn_id,
            entries: txn
                .entries()
                .map(|(lsn, entry)| (lsn, entry.to_owned_entry()))
                .collect(),
        });
        Ok(())
    }

    fn checkpoint(&mut self, lsn: Lsn, _entry: &ArchivedWalEntry) -> Result<(), ReplayError> {
        self.checkpoints.push(lsn);
        Ok(())
    }
}

pub fn write(run: u128, txn_id: u64, key: &str, value_len: usize) -> WalEntry {
    WalEntry::Write {
        run_id: RunId::from_u128(run),
        txn_id,
        key: key.as_bytes().to_vec(),
        value: (0..value_len)
            .map(|i| (i as u64 ^ txn_id).to_le_bytes()[0])
            .collect(),
    }
}

pub fn commit(run: u128, txn_id: u64) -> WalEntry {
    WalEntry::CommitTxn {
        run_id: RunId::from_u128(run),
        txn_id,
    }
}

/// A transaction of `writes` writes and its commit, as one unit.
pub fn txn(run: u128, txn_id: u64, writes: usize, value_len: usize) -> Vec<WalEntry> {
    let mut entries: Vec<_> = (0..writes)
        .map(|i| write(run, txn_id, &format!("k{txn_id}-{i}"), value_len))
        .collect();
    entries.push(commit(run, txn_id));
    entries
}

/// The options of a writer that never writes a durable witness: its log ends as one whose
/// writer crashed before it went idle, so damage to the newest records can be a torn tail.
pub fn unwitnessed() -> WalOptions {
    WalOptions {
        witness_idle: None,
        ..options()
    }
}

/// A log of `count` committed transactions (txn ids 0..count, run 1), closed (its witness
/// claims every record).
pub fn committed_log(dir: &Path, count: u64, writes: usize, value_len: usize) {
    committed_log_with(dir, options(), count, writes, value_len);
}

/// [`committed_log`] written with `options`.
pub fn committed_log_with(
    dir: &Path,
    options: WalOptions,
    count: u64,
    writes: usize,
    value_len: usize,
) {
    let wal = keel_recovery::open_wal(dir, options).unwrap();
    for t in 0..count {
        wal.append(&txn(1, t, writes, value_len)).wait().unwrap();
    }
    wal.close().unwrap();
}

/// The segment files of a log directory, in LSN order.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    keel_wal::dir::list_directory(dir)
        .unwrap()
        .segments
        .into_iter()
        .map(|s| s.path)
        .collect()
}

/// `(lsn, offset, len)` of every record of the segment at `path`.
pub fn record_spans(dir: &Path, path: &Path) -> Vec<(Lsn, u64, u64)> {
    let listing = keel_wal::dir::list_directory(dir).unwrap();
    let file = listing.segments.iter().find(|s| s.path == path).unwrap();
    let mut reader = SegmentReader::open(file).unwrap();
    let mut spans = Vec::new();
    while let SegmentEvent::Record(record) = reader.next_event().unwrap() {
        spans.push((record.lsn, record.offset, record.len));
    }
    spans
}

/// Copies the files of `from` into `to` (created).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() == "LOCK" {
            continue;
        }
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

/// Overwrites `bytes` at `offset` of `path`.
pub fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

/// Reads the byte at `offset` of `path`.
pub fn byte_at(path: &Path, offset: u64) -> u8 {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, offset).unwrap();
    b[0]
}

/// The seed of a randomized test: `KEEL_SEED` when set, else `default`; printed.
pub fn seed(default: u64) -> u64 {
    let seed = std::env::var("KEEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("seed: {seed} (replay with KEEL_SEED={seed})");
    seed
}

pub fn begin_txn(run: u128, txn_id: u64) -> WalEntry {
    WalEntry::BeginTxn {
        run_id: RunId::from_u128(run),
        txn_id,
    }
}

/// A commit naming the LSN of its transaction's first entry.
pub fn commit_span(run: u128, txn_id: u64, first_lsn: Lsn) -> WalEntry {
    WalEntry::CommitSpan {
        run_id: RunId::from_u128(run),
        txn_id,
        first_lsn,
    }
}

/// Appends a transaction of `writes` writes and its `CommitSpan` as one unit (the caller is
/// the only writer); returns its first and commit LSNs.
pub fn append_span_txn(
    wal: &Wal,
    run: u128,
    txn_id: u64,
    writes: usize,
    value_len: usize,
) -> (Lsn, Lsn) {
    let first = wal.next_lsn();
    let mut entries: Vec<_> = (0..writes)
        .map(|i| write(run, txn_id, &format!("k{txn_id}-{i}"), value_len))
        .collect();
    entries.push(commit_span(run, txn_id, first));
    let commit = wal.append(&entries).wait().unwrap();
    assert_eq!(commit, first + writes as u64);
    (first, commit)
}

/// A log of `count` transactions committed by `CommitSpan` (txn ids 0..count, run 1), closed.
pub fn span_log(dir: &Path, count: u64, writes: usize, value_len: usize) {
    let wal = keel_recovery::open_wal(dir, options()).unwrap();
    for t in 0..count {
        append_span_txn(&wal, 1, t, writes, value_len);
    }
    wal.close().unwrap();
}

/// `(segment path, offset, len)` of the record at `lsn`.
pub fn locate(dir: &Path, lsn: Lsn) -> (PathBuf, u64, u64) {
    for path in segments(dir) {
        for (l, offset, len) in record_spans(dir, &path) {
            if l == lsn {
                return (path, offset, len);
            }
        }
    }
    panic!("no record {lsn}");
}

/// Flips a byte in the middle of the record at `lsn` (its body checksum then fails).
pub fn damage_record(dir: &Path, lsn: Lsn) {
    let (path, offset, len) = locate(dir, lsn);
    let at = offset + len / 2;
    patch(&path, at, &[byte_at(&path, at) ^ 0xff]);
}

/// The first LSN a segment file's name stands for.
pub fn first_lsn_of(path: &Path) -> Lsn {
    segment::parse_file_name(&path.file_name().unwrap().to_string_lossy()).unwrap()
}

/// Every file of `dir` (but `LOCK`) by name, with its length and CRC: what "nothing
/// changed" compares.
pub fn files(dir: &Path) -> std::collections::BTreeMap<String, (usize, u32)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().unwrap() != "LOCK")
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).unwrap();
            (name, (bytes.len(), crc32fast::hash(&bytes)))
        })
        .collect()
}

/// Opens the log for appends as its owner does after a recovery under `policy` with a
/// snapshot through `covered`: the same recovery runs again (a log with a gap a skip or a
/// snapshot left reopens only under the policy and snapshot that left it).
pub fn open_after(dir: &Path, policy: RecoveryPolicy, covered: Option<Lsn>) -> Wal {
    keel_recovery::open_log(dir, options(), policy, covered, &mut Collect::default())
        .unwrap_or_else(|e| panic!("reopening under {policy} (snapshot {covered:?}): {e}"))
        .0
}
