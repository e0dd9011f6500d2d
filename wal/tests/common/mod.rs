//! Helpers shared by keel-wal's integration tests.
#![allow(dead_code, reason = "each test file uses its own subset")]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keel_wal::{BackendChoice, LogReader, Lsn, RunId, Wal, WalEntry, WalOptions};

pub mod gate;

/// How long a test waits for what must happen (a commit, a parked thread) before it fails.
pub const LIMIT: Duration = Duration::from_secs(5);

/// Runs `f` on a thread; fails the test when it takes longer than `limit` (a stranded
/// commit, a lost wake-up or a deadlock).
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    outcome
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what}: not done within {limit:?} (a hang?)"))
}

/// Every backend this build can run; each test runs on all of them.
pub fn backends() -> Vec<BackendChoice> {
    BackendChoice::available().to_vec()
}

/// Small segments so tests rotate often, and a bounded record size.
pub fn small_options(backend: BackendChoice) -> WalOptions {
    WalOptions {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend,
        ..WalOptions::default()
    }
}

/// The seed of a randomized test: `KEEL_SEED` when set, else `default`. Printed so that a
/// failure can be replayed.
pub fn seed(default: u64) -> u64 {
    let seed = std::env::var("KEEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("seed: {seed} (replay with KEEL_SEED={seed})");
    seed
}

/// A proptest runner that replays from `seed` and leaves no regression files behind.
pub fn runner(seed: u64, cases: u32) -> proptest::test_runner::TestRunner {
    use proptest::test_runner::{Config, RngSeed, TestRunner};
    TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Opens a log with `options`, commits `count` single writes of `value_len` bytes (LSNs 1 to
/// `count`) and closes it.
pub fn filled_log(dir: &Path, options: WalOptions, count: u64, value_len: usize) {
    let wal = keel_recovery::open_wal(dir, options).unwrap();
    for i in 0..count {
        wal.append(&[write(1, i, "k", value_len)]).wait().unwrap();
    }
    wal.close().unwrap();
}

/// A write of `value_len` bytes.
pub fn write(run: u128, txn_id: u64, key: &str, value_len: usize) -> WalEntry {
    let value = (0..value_len)
        .map(|i| (i as u64).wrapping_mul(txn_id + 31).to_le_bytes()[0])
        .collect();
    WalEntry::Write {
        run_id: RunId::from_u128(run),
        txn_id,
        key: key.as_bytes().to_vec(),
        value,
    }
}

/// Every record of the log, owned, with its LSN; panics on any damage.
pub fn read_all(dir: &Path) -> Vec<(Lsn, WalEntry)> {
    let mut reader = LogReader::open(dir).expect("open reader");
    let mut out = Vec::new();
    while let Some(record) = reader.next_record().expect("clean log") {
        out.push((record.lsn, record.entry.to_owned_entry()));
    }
    out
}

/// Whether this build and machine run io_uring; prints why a uring-only test is skipped.
pub fn uring_available() -> bool {
    let available = BackendChoice::available().contains(&BackendChoice::Uring);
    if !available {
        println!("skipped: io_uring is not available here (or KEEL_BACKEND narrowed it)");
    }
    available
}

/// The first LSN of every segment in `dir`, oldest first.
pub fn segment_lsns(dir: &Path) -> Vec<Lsn> {
    keel_wal::dir::list_directory(dir)
        .unwrap()
        .segments
        .iter()
        .map(|s| s.first_lsn)
        .collect()
}

/// The path of the newest segment in `dir`.
pub fn last_segment(dir: &Path) -> std::path::PathBuf {
    keel_wal::dir::list_directory(dir)
        .unwrap()
        .segments
        .last()
        .expect("a segment")
        .path
        .clone()
}

/// Polls `done` (a condition, not an ordering) until it holds; fails the test after [`LIMIT`].
pub fn wait_for(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < LIMIT, "never {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether a published spare is on disk in `dir`, ready for the next rotation.
pub fn spare_ready(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .any(|f| f.unwrap().file_name().to_string_lossy().ends_with(".ready"))
}

/// The names of the unfinished spares (`spare-<n>.tmp`) in `dir`.
pub fn tmp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect()
}

/// Checks that every acknowledged commit at or above the oldest segment in `dir` reads back.
pub fn check_acked(dir: &Path, acked: &BTreeMap<Lsn, WalEntry>) {
    let oldest = segment_lsns(dir)[0];
    let recovered: BTreeMap<Lsn, WalEntry> = read_all(dir).into_iter().collect();
    for (lsn, e) in acked.range(oldest..) {
        assert_eq!(recovered.get(lsn), Some(e), "commit {lsn} lost");
    }
}

/// Waits until the log's writer waits for work (the point a deterministic test steps from).
pub fn wait_until_idle(wal: &Wal) {
    wait_for("the writer went idle", || wal.writer_idle());
}
