//! What `keel bench` measures, one run each: Keel's log, the engine on it (`--engine`), and
//! the raw baselines `benches/peers/` runs too: `pwrite + fdatasync` of each record
//! (`keel_bench::RawLog`), group commit by hand (`keel_bench::RawGroupLog`), and group commit
//! on the ring (`keel_bench::RawUringBatched`, where io_uring runs).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::StreamExt;
use hdrhistogram::Histogram;

use keel_bench::{RawGroupLog, RawLog, Trimmer};
use keel_wal::{RunId, WalEntry};

use super::Cell;
use super::args::{BenchArgs, Committers};
use super::drive::{self, Measured};
use super::report::{FeedFigures, Outcome};

/// The target name of the raw baseline's rows (one record per sync).
pub(super) const RAW: &str = "raw pwrite+fdatasync";
/// The target name of the raw group commit's rows (one sync per group).
pub(super) const RAW_GROUP: &str = "raw group-commit";
/// The target name of the batched ring's rows (write→fdatasync chains in flight, each
/// carrying everything queued).
pub(super) const RAW_RING: &str = "raw batched ring";
/// The target name of Keel's rows.
pub(super) const KEEL: &str = "keel";
/// The target name of Keel's rows with covered segments removed as written, and deleted.
pub(super) const KEEL_TRIM: &str = "keel+trim";
/// The target name of Keel's rows with covered segments removed as written, and recycled.
pub(super) const KEEL_RECYCLE: &str = "keel+recycle";
/// The target name of the engine's rows.
pub(super) const DB: &str = "keel-db";
/// The target name of the engine's rows with a change-feed subscriber.
pub(super) const DB_FEED: &str = "keel-db+feed";
/// The target name of the engine's rows whose transactions read before they write.
pub(super) const DB_RW: &str = "keel-db+rw";
/// The target name of the engine's rows whose checkpoints recycle the log segments they free.
pub(super) const DB_RECYCLE: &str = "keel-db+recycle";

/// What the engine's committers do beside committing one put each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DbRows {
    /// Nothing (`keel-db`).
    Plain,
    /// A change-feed subscriber follows every commit (`keel-db+feed`).
    Feed,
    /// Each transaction first reads the key its committer wrote last, so its commit is
    /// validated (serializable isolation) against the commits since (`keel-db+rw`).
    ReadWrite,
    /// The segments checkpoints free are recycled, this many kept (`keel-db+recycle`).
    Recycle(usize),
}

/// Slots of the ring of acknowledgement times a feed subscriber reads (by commit LSN).
const ACK_RING: usize = 1 << 20;

fn entry(writer: u32, sequence: u64, value: &[u8]) -> WalEntry {
    WalEntry::Write {
        run_id: RunId::from_u128(u128::from(writer) + 1),
        txn_id: sequence,
        key: format!("w{writer}-{sequence:012}").into_bytes(),
        value: value.to_vec(),
    }
}

/// How the log's covered segments are treated in a run of [`keel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Trim {
    /// Never removed (`keel` rows).
    Keep,
    /// Removed as written and deleted (`keel+trim`).
    Delete,
    /// Removed as written and recycled, this many kept (`keel+recycle`).
    Recycle(usize),
}

impl Trim {
    fn target(self) -> &'static str {
        match self {
            Trim::Keep => KEEL,
            Trim::Delete => KEEL_TRIM,
            Trim::Recycle(_) => KEEL_RECYCLE,
        }
    }
}

/// `cell.writers` committers, each appending one `Write` entry of `cell.value_size` bytes and
/// waiting for it (as `--mode` and `--committers` say), on a log opened in `dir`, its covered
/// segments treated as `trim` says.
pub(super) fn keel(
    args: &BenchArgs,
    cell: Cell,
    dir: &Path,
    trim: Trim,
) -> Result<Outcome, String> {
    let options = keel_wal::WalOptions {
        recycle_segments: match trim {
            Trim::Recycle(kept) => kept,
            Trim::Keep | Trim::Delete => 0,
        },
        ..args.wal_options(cell.backend)
    };
    let wal = Arc::new(keel_recovery::open_wal(dir, options).map_err(|e| e.to_string())?);
    let trimming = (trim != Trim::Keep).then(|| Trimmer::start(Arc::clone(&wal)));
    let backend = wal.backend().name();
    let value = vec![0x6b; cell.value_size];
    let record_bytes = keel_wal::EncodedBatch::encode(&[entry(0, 0, &value)], u32::MAX >> 6)
        .map_err(|e| e.to_string())?
        .byte_len();
    let committer = Arc::clone(&wal);
    let label = format!(
        "keel {backend} {:?} w{} {}B",
        args.mode, cell.writers, cell.value_size
    )
    .to_lowercase();
    let run = match args.committers {
        Committers::Threads => {
            drive::threads(args, cell.writers, &label, move |writer, sequence| {
                committer
                    .append_wait(&[entry(writer, sequence, &value)])
                    .map(drop)
                    .map_err(|e| e.to_string())
            })?
        }
        Committers::Tasks => drive::tasks(args, cell.writers, &label, move |writer, sequence| {
            committer.append(&[entry(writer, sequence, &value)])
        })?,
    };
    trimming.map_or(Ok(()), Trimmer::finish)?;
    let stats = wal.stats();
    Arc::into_inner(wal)
        .ok_or("the log is still shared")?
        .close()
        .map_err(|e| e.to_string())?;
    let target = trim.target();
    let mut result = Outcome::new(args, cell, target, backend, run, stats.fsyncs, record_bytes);
    result.rotations = Some((
        stats.rotations,
        stats.rotation_waits,
        stats.segments_recycled,
    ));
    Ok(result)
}

/// `cell.writers` committer threads, each committing transactions of one put of
/// `cell.value_size` bytes through a `Database` in `dir` (automatic checkpoints at their
/// default) and waiting for each, as `--mode` says; with [`DbRows::Feed`], a subscriber
/// thread follows every commit (`Database::subscribe`) and times it from acknowledgement to
/// delivery; with [`DbRows::ReadWrite`], each transaction reads before it writes.
pub(super) fn db(
    args: &BenchArgs,
    cell: Cell,
    dir: &Path,
    rows: DbRows,
) -> Result<Outcome, String> {
    let feed = rows == DbRows::Feed;
    let wal = args.wal_options(cell.backend);
    let defaults = keel::Options::default();
    let options = keel::Options {
        durability: wal.durability,
        backend: wal.backend,
        segment_bytes: wal.segment_bytes,
        max_record_bytes: wal.max_record_bytes,
        checkpoint_log_bytes: args
            .checkpoint_log_mib
            .map_or(defaults.checkpoint_log_bytes, |mib| mib << 20),
        recycle_segments: match rows {
            DbRows::Recycle(kept) => kept,
            // Beside `keel-db+recycle`, the zero-filled log it is compared with.
            _ if args.recycle.is_some() => 0,
            _ => defaults.recycle_segments,
        },
        ..defaults
    };
    let db = Arc::new(keel::Database::open(dir, options).map_err(|e| e.to_string())?);
    let run = futures::executor::block_on(db.begin_run("bench")).map_err(|e| e.to_string())?;
    let backend = db.stats().wal.backend.name();
    let value = vec![0x64; cell.value_size];
    let record_bytes = keel_wal::EncodedBatch::encode(&[entry(0, 0, &value)], u32::MAX >> 6)
        .map_err(|e| e.to_string())?
        .byte_len();
    let target = match rows {
        DbRows::Plain => DB,
        DbRows::Feed => DB_FEED,
        DbRows::ReadWrite => DB_RW,
        DbRows::Recycle(_) => DB_RECYCLE,
    };
    let label = format!(
        "{target} {backend} {:?} w{} {}B",
        args.mode, cell.writers, cell.value_size
    )
    .to_lowercase();
    let start = Instant::now();
    let acks: Arc<Vec<AtomicU64>> = Arc::new(
        (0..if feed { ACK_RING } else { 0 })
            .map(|_| AtomicU64::new(0))
            .collect(),
    );
    let subscriber = feed.then(|| {
        let next = db.stats().wal.durable_lsn + 1;
        Subscriber::start(&db, next, Arc::clone(&acks), start)
    });
    let committer = Arc::clone(&db);
    let ring = Arc::clone(&acks);
    let measured = drive::threads(args, cell.writers, &label, move |writer, sequence| {
        let mut txn = committer.transaction(run).map_err(|e| e.to_string())?;
        if rows == DbRows::ReadWrite && sequence > 0 {
            let last = format!("w{writer}-{:012}", sequence - 1);
            let read = txn.get(last).map_err(|e| e.to_string())?;
            if read.is_none() {
                return Err(format!(
                    "committer {writer} lost its write {}",
                    sequence - 1
                ));
            }
        }
        txn.put(format!("w{writer}-{sequence:012}"), &value)
            .map_err(|e| e.to_string())?;
        let lsn = txn.commit_blocking().map_err(|e| e.to_string())?;
        if let Some(slot) = ring.get(ack_slot(lsn)) {
            slot.store(nanos_since(start), Ordering::Relaxed);
        }
        Ok(())
    })?;
    let committed = measured.commits;
    let delivered_in_time = subscriber
        .as_ref()
        .map(|s| s.delivered.load(Ordering::Relaxed));
    let fsyncs = db.stats().wal.fsyncs;
    Arc::into_inner(db)
        .ok_or("the database is still shared")?
        .close()
        .map_err(|e| e.to_string())?;
    let mut outcome = Outcome::new(args, cell, target, backend, measured, fsyncs, record_bytes);
    if let (Some(subscriber), Some(delivered)) = (subscriber, delivered_in_time) {
        // The database closed: the feed ends after its last commit.
        let latencies = subscriber.finish()?;
        let micros = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
        outcome.feed = Some(FeedFigures {
            delivered,
            delivered_per_commit: delivered as f64 / committed.max(1) as f64,
            p50_us: micros(0.50),
            p99_us: micros(0.99),
        });
    }
    Ok(outcome)
}

fn ack_slot(lsn: keel_wal::Lsn) -> usize {
    usize::try_from(lsn).unwrap_or(usize::MAX) % ACK_RING
}

/// Nanoseconds since `start`, plus one (0 marks an empty slot).
fn nanos_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX) + 1
}

/// A thread that follows the engine's change feed and times each delivery.
struct Subscriber {
    delivered: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Result<Histogram<u64>, String>>,
}

impl Subscriber {
    fn start(
        db: &keel::Database,
        from: keel_wal::Lsn,
        acks: Arc<Vec<AtomicU64>>,
        start: Instant,
    ) -> Subscriber {
        let mut feed = db.subscribe(from);
        let delivered = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&delivered);
        let thread = std::thread::spawn(move || {
            let mut latencies = Histogram::<u64>::new_with_bounds(1_000, 600_000_000_000, 3)
                .map_err(|e| e.to_string())?;
            while let Some(event) = futures::executor::block_on(feed.next()) {
                let keel::FeedEvent::Commit(commit) = event.map_err(|e| e.to_string())? else {
                    continue;
                };
                let now = nanos_since(start);
                // 0: its committer has not noted its acknowledgement yet (it is woken after
                // the durable position moves, as the feed is): counted as no wait.
                let acked = acks[ack_slot(commit.commit_lsn)].load(Ordering::Relaxed);
                let waited = if acked == 0 {
                    0
                } else {
                    now.saturating_sub(acked)
                };
                latencies.saturating_record(waited.max(1_000));
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(latencies)
        });
        Subscriber { delivered, thread }
    }

    fn finish(self) -> Result<Histogram<u64>, String> {
        self.thread
            .join()
            .map_err(|_| "the feed subscriber panicked".to_string())?
    }
}

/// The bytes of a Keel record holding one value of `value_size` bytes, about: what the raw
/// baselines write per commit.
fn raw_record_bytes(value_size: usize) -> usize {
    (value_size + 64).div_ceil(8) * 8
}

/// The raw baselines' file: room for 4096 records (at least 1 MiB) before it wraps.
fn raw_file_bytes(record_bytes: usize) -> u64 {
    (record_bytes as u64 * 4096).max(1 << 20)
}

/// `cell.writers` threads committing one record's worth of bytes each through [`RawLog`]:
/// one at a time, each with its `fdatasync`, into a preallocated file in `dir`.
pub(super) fn raw(args: &BenchArgs, cell: Cell, dir: &Path) -> Result<Outcome, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let record_bytes = raw_record_bytes(cell.value_size);
    let log = RawLog::open(dir, raw_file_bytes(record_bytes))
        .map_err(|e| format!("preallocating {}: {e}", dir.display()))?;
    let log = Arc::new(log);
    let committer = Arc::clone(&log);
    let record = vec![0x72u8; record_bytes];
    let label = format!("raw w{} {}B", cell.writers, cell.value_size);
    let run: Measured = drive::threads(args, cell.writers, &label, move |_, _| {
        committer.commit(&record).map_err(|e| e.to_string())
    })?;
    let syncs = log.syncs();
    Ok(Outcome::new(
        args,
        cell,
        RAW,
        "std",
        run,
        syncs,
        record_bytes,
    ))
}

/// Like [`raw`], through [`RawGroupLog`]: the committers that arrive while a group is being
/// written and synced share the next group's one `pwrite` and one `fdatasync`.
pub(super) fn raw_group(args: &BenchArgs, cell: Cell, dir: &Path) -> Result<Outcome, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let record_bytes = raw_record_bytes(cell.value_size);
    let log = RawGroupLog::open(dir, raw_file_bytes(record_bytes))
        .map_err(|e| format!("preallocating {}: {e}", dir.display()))?;
    let log = Arc::new(log);
    let committer = Arc::clone(&log);
    let record = vec![0x67u8; record_bytes];
    let label = format!("raw group w{} {}B", cell.writers, cell.value_size);
    let run: Measured = drive::threads(args, cell.writers, &label, move |_, _| {
        committer.commit(&record).map_err(|e| e.to_string())
    })?;
    let syncs = log.syncs();
    Ok(Outcome::new(
        args,
        cell,
        RAW_GROUP,
        "std",
        run,
        syncs,
        record_bytes,
    ))
}

/// Whether the batched ring runs here, else why not (printed once, and its rows skipped).
pub(super) fn raw_ring_available() -> Result<(), String> {
    #[cfg(all(target_os = "linux", feature = "uring"))]
    return keel_bench::RawUringBatched::available()
        .map_err(|reason| format!("io_uring does not run here ({reason})"));
    #[cfg(not(all(target_os = "linux", feature = "uring")))]
    Err("this build has no io_uring (Linux, with keel-cli's `uring` feature)".to_owned())
}

/// Like [`raw_group`], through `keel_bench::RawUringBatched`: one ring thread keeps up to
/// `--io-depth` (at most one per committer) write→fdatasync chains in flight, each carrying
/// every record queued. Only where [`raw_ring_available`] says it runs.
#[cfg(all(target_os = "linux", feature = "uring"))]
pub(super) fn raw_ring(args: &BenchArgs, cell: Cell, dir: &Path) -> Result<Outcome, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let record_bytes = raw_record_bytes(cell.value_size);
    let depth = usize::try_from(cell.writers)
        .unwrap_or(usize::MAX)
        .min(args.io_depth);
    let log = keel_bench::RawUringBatched::open(dir, raw_file_bytes(record_bytes), depth)
        .map_err(|e| format!("opening the batched ring in {}: {e}", dir.display()))?;
    let log = Arc::new(log);
    let committer = Arc::clone(&log);
    let record = vec![0x62u8; record_bytes];
    let label = format!("raw ring w{} {}B", cell.writers, cell.value_size);
    let run: Measured = drive::threads(args, cell.writers, &label, move |_, _| {
        committer.commit(&record).map_err(|e| e.to_string())
    })?;
    let syncs = log.syncs();
    Ok(Outcome::new(
        args,
        cell,
        RAW_RING,
        "uring",
        run,
        syncs,
        record_bytes,
    ))
}

/// Where io_uring is not compiled in, [`raw_ring_available`] says so and this never runs.
#[cfg(not(all(target_os = "linux", feature = "uring")))]
pub(super) fn raw_ring(_: &BenchArgs, _: Cell, _: &Path) -> Result<Outcome, String> {
    Err(raw_ring_available().expect_err("no io_uring in this build"))
}
