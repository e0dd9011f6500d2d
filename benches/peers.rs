//! Side by side: Keel against the raw limit and against the logs people use instead.
//!
//! ```sh
//! bash benches/run-peers.sh --duration 3 --out docs/bench
//! ```
//!
//! Every system runs the same workload, one after another, in fresh directories under the
//! same parent (`--dir`, default the system temporary directory): `C` committer threads, each
//! appending one record of `S` bytes and waiting until it is durable, for `--duration`
//! seconds. Per commit latency goes to a histogram. Systems:
//!
//! - `keel-uring`, `keel-std`: `keel_wal::Wal`, Strict (fdatasync before the ack, group commit);
//! - `raw`: `pwrite` + `fdatasync` of each record on a preallocated file, one at a time: the
//!   cost of one durable write, with no batching (the "physical limit" of a log that syncs every
//!   record; `keel_bench::RawLog`, the baseline `keel bench` runs too);
//! - `okaywal` (feature `peer-okaywal`): entry, chunk, commit (fdatasync, shared by waiters);
//! - `sqlite` (feature `peer-sqlite`, bundled SQLite): WAL mode, `synchronous=FULL`, one insert
//!   per transaction, one connection per committer;
//! - `raft-engine` (feature `peer-raft-engine`): a `LogBatch` with one put, `write(sync=true)`
//!   (leader-based group commit);
//! - `rocksdb` (feature `peer-rocksdb`, Debian's librocksdb 7.8.3 through the `rocksdb` crate):
//!   one `put` per commit with `WriteOptions::set_sync(true)`, default options otherwise (WAL
//!   on; leader-based group commit; memtables flushed to SST files in the background).
//!
//! Output: a Markdown table (stdout and `<out>/peers.md`), JSON (`<out>/peers.json`), and SVG
//! plots drawn here (`<out>/commits-<size>.svg`: commits/s against committers;
//! `<out>/latency-<size>.svg`: p50/p99/p999 at each committer count).

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel_bench::RawLog;
use keel_wal::{BackendChoice, Durability, RunId, Wal, WalEntry, WalOptions};

/// One system under test, shared by all committer threads.
trait Peer: Send + Sync {
    /// Appends `payload` as one record and returns once it is durable.
    fn commit(&self, thread: usize, seq: u64, payload: &[u8]) -> io::Result<()>;

    /// What the system counted during the run, printed on stderr beside its row.
    fn counters(&self) -> Option<String> {
        None
    }
}

struct Keel(Wal);

impl Peer for Keel {
    fn commit(&self, thread: usize, seq: u64, payload: &[u8]) -> io::Result<()> {
        let run_id = RunId::from_u128(thread as u128 + 1);
        let entries = [
            WalEntry::Write {
                run_id,
                txn_id: seq,
                key: seq.to_le_bytes().to_vec(),
                value: payload.to_vec(),
            },
            WalEntry::CommitTxn {
                run_id,
                txn_id: seq,
            },
        ];
        self.0
            .append(&entries)
            .wait()
            .map(drop)
            .map_err(io::Error::other)
    }

    fn counters(&self) -> Option<String> {
        let s = self.0.stats();
        Some(format!(
            "{} commits in {} writes and {} fdatasyncs ({:.1} commits/write, at most {}), \
             {} rotations ({} waited for a spare)",
            s.commits,
            s.writes,
            s.fsyncs,
            s.commits as f64 / s.writes.max(1) as f64,
            s.max_batch_commits,
            s.rotations,
            s.rotation_waits
        ))
    }
}

/// The raw limit, shared with `keel bench`: see [`RawLog`].
impl Peer for RawLog {
    fn commit(&self, _thread: usize, _seq: u64, payload: &[u8]) -> io::Result<()> {
        RawLog::commit(self, payload)
    }
}

#[cfg(feature = "peer-okaywal")]
mod okaywal_peer {
    use super::*;

    /// Counts the entries recovery hands over (reading each whole) when it has a counter;
    /// checkpoints are no-ops: nothing to persist in a benchmark.
    #[derive(Debug, Default)]
    pub struct Manager(pub Option<std::sync::Arc<std::sync::atomic::AtomicU64>>);

    impl okaywal::LogManager for Manager {
        fn recover(&mut self, entry: &mut okaywal::Entry<'_>) -> io::Result<()> {
            if let Some(count) = &self.0
                && entry.read_all_chunks()?.is_some()
            {
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }

        fn checkpoint_to(
            &mut self,
            _last: okaywal::EntryId,
            _entries: &mut okaywal::SegmentReader,
            _wal: &okaywal::WriteAheadLog,
        ) -> io::Result<()> {
            Ok(())
        }
    }

    pub struct OkayWal(pub okaywal::WriteAheadLog);

    impl OkayWal {
        /// `checkpoint_after`: bytes before a segment is handed to checkpointing (which
        /// recovery then skips).
        pub fn open(dir: &Path, checkpoint_after: u64) -> io::Result<OkayWal> {
            let wal = okaywal::Configuration::default_for(dir)
                .preallocate_bytes(64 << 20)
                .checkpoint_after_bytes(checkpoint_after)
                .open(Manager(None))?;
            Ok(OkayWal(wal))
        }
    }

    /// Reopens (recovers) the log, reading every entry; returns how many.
    pub fn reopen(dir: &Path) -> io::Result<u64> {
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let wal = okaywal::Configuration::default_for(dir)
            .checkpoint_after_bytes(u64::MAX)
            .open(Manager(Some(std::sync::Arc::clone(&count))))?;
        let n = count.load(Ordering::Relaxed);
        drop(wal);
        Ok(n)
    }

    impl Peer for OkayWal {
        fn commit(&self, _thread: usize, _seq: u64, payload: &[u8]) -> io::Result<()> {
            let mut entry = self.0.begin_entry()?;
            entry.write_chunk(payload)?;
            entry.commit().map(drop)
        }
    }
}

#[cfg(feature = "peer-sqlite")]
mod sqlite_peer {
    use super::*;
    use std::sync::Mutex;

    pub struct Sqlite {
        path: PathBuf,
        synchronous: &'static str,
        connections: Vec<Mutex<Option<rusqlite::Connection>>>,
    }

    impl Sqlite {
        pub fn open(
            dir: &Path,
            committers: usize,
            synchronous: &'static str,
        ) -> io::Result<Sqlite> {
            let path = dir.join("peer.sqlite");
            let sqlite = Sqlite {
                path,
                synchronous,
                connections: (0..committers).map(|_| Mutex::new(None)).collect(),
            };
            let conn = sqlite.connect().map_err(io::Error::other)?;
            conn.execute_batch("CREATE TABLE IF NOT EXISTS log (seq INTEGER, v BLOB)")
                .map_err(io::Error::other)?;
            Ok(sqlite)
        }

        fn connect(&self) -> rusqlite::Result<rusqlite::Connection> {
            let conn = rusqlite::Connection::open(&self.path)?;
            let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
            assert_eq!(mode.to_lowercase(), "wal");
            conn.execute_batch(&format!("PRAGMA synchronous={}", self.synchronous))?;
            conn.busy_timeout(Duration::from_secs(30))?;
            Ok(conn)
        }
    }

    impl Peer for Sqlite {
        fn commit(&self, thread: usize, seq: u64, payload: &[u8]) -> io::Result<()> {
            let mut slot = self.connections[thread]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(self.connect().map_err(io::Error::other)?);
            }
            let conn = slot.as_ref().expect("connected");
            conn.prepare_cached("INSERT INTO log (seq, v) VALUES (?1, ?2)")
                .and_then(|mut insert| insert.execute(rusqlite::params![seq as i64, payload]))
                .map(drop)
                .map_err(io::Error::other)
        }
    }
}

#[cfg(feature = "peer-raft-engine")]
mod raft_engine_peer {
    use super::*;

    pub struct RaftEngine(pub raft_engine::Engine, pub bool);

    impl RaftEngine {
        pub fn open(dir: &Path, sync: bool) -> io::Result<RaftEngine> {
            let config = raft_engine::Config {
                dir: dir.display().to_string(),
                batch_compression_threshold: raft_engine::ReadableSize(0),
                recovery_threads: 2,
                ..raft_engine::Config::default()
            };
            raft_engine::Engine::open(config)
                .map(|engine| RaftEngine(engine, sync))
                .map_err(io::Error::other)
        }
    }

    impl Peer for RaftEngine {
        fn commit(&self, thread: usize, seq: u64, payload: &[u8]) -> io::Result<()> {
            let mut batch = raft_engine::LogBatch::default();
            batch
                .put(
                    thread as u64 + 1,
                    seq.to_be_bytes().to_vec(),
                    payload.to_vec(),
                )
                .map_err(io::Error::other)?;
            self.0
                .write(&mut batch, self.1)
                .map(drop)
                .map_err(io::Error::other)
        }
    }
}

#[cfg(feature = "peer-rocksdb")]
mod rocksdb_peer {
    use super::*;

    pub struct RocksDb {
        db: rocksdb::DB,
        write: rocksdb::WriteOptions,
    }

    impl RocksDb {
        pub fn open(dir: &Path, sync: bool) -> io::Result<RocksDb> {
            let mut options = rocksdb::Options::default();
            options.create_if_missing(true);
            // As for the other systems: nothing compressed.
            options.set_compression_type(rocksdb::DBCompressionType::None);
            let db = rocksdb::DB::open(&options, dir).map_err(io::Error::other)?;
            let mut write = rocksdb::WriteOptions::default();
            write.set_sync(sync);
            Ok(RocksDb { db, write })
        }

        /// Reopens (replaying the WAL) and reads every record back.
        pub fn reopen(dir: &Path) -> io::Result<u64> {
            let peer = RocksDb::open(dir, true)?;
            let mut records = 0;
            for item in peer.db.iterator(rocksdb::IteratorMode::Start) {
                item.map_err(io::Error::other)?;
                records += 1;
            }
            Ok(records)
        }
    }

    impl Peer for RocksDb {
        fn commit(&self, thread: usize, seq: u64, payload: &[u8]) -> io::Result<()> {
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&(thread as u64).to_be_bytes());
            key[8..].copy_from_slice(&seq.to_be_bytes());
            self.db
                .put_opt(key, payload, &self.write)
                .map_err(io::Error::other)
        }
    }
}

/// `raw-uring`: one thread keeps up to `depth` write→fdatasync chains in flight through
/// io_uring (keel-wal's backend, forced onto the ring), one record per chain and no batching:
/// what the device gives when durable writes overlap.
#[cfg(all(target_os = "linux", feature = "uring"))]
fn run_raw_uring(dir: &Path, depth: usize, size: usize, duration: Duration) -> io::Result<Row> {
    use keel_wal::backend::uring::UringBackend;
    use keel_wal::backend::{Backend, Chain, IoFile, WriteOp};
    let raw = RawLog::open(dir, 256 << 20)?;
    let raw_bytes = raw.size_bytes();
    let (file, path) = raw.into_file();
    let file = Arc::new(IoFile { file, path });
    let requested = depth;
    let depth = depth.clamp(1, 64);
    let mut ring = UringBackend::new(depth, None).map_err(io::Error::other)?;
    let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(io::Error::other)?;
    let mut started_at = std::collections::HashMap::new();
    let (mut next_id, mut offset) = (0u64, 0u64);
    let mut done = Vec::new();
    let started = Instant::now();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    while started.elapsed() < duration || ring.in_flight() > 0 {
        while started.elapsed() < duration && ring.in_flight() < depth {
            let mut buf = spare.pop().unwrap_or_default();
            buf.clear();
            buf.resize(size, 0x5a);
            if offset + size as u64 > raw_bytes {
                offset = 0;
            }
            started_at.insert(next_id, Instant::now());
            ring.submit(Chain {
                id: next_id,
                file: Arc::clone(&file),
                write: Some(WriteOp { offset, buf }),
                sync: true,
                alone: false,
                witness: false,
            });
            next_id += 1;
            offset += size as u64;
        }
        ring.wait(1, &mut done);
        for completion in done.drain(..) {
            completion
                .result
                .map_err(|e| io::Error::other(format!("{}: {}", e.operation, e.error)))?;
            if let Some(t) = started_at.remove(&completion.id) {
                let micros = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                latency.saturating_record(micros.max(1));
            }
            spare.extend(completion.buf);
        }
    }
    Ok(Row {
        system: "raw-uring".into(),
        committers: requested,
        size,
        commits: latency.len(),
        seconds: started.elapsed().as_secs_f64(),
        p50_us: latency.value_at_quantile(0.50) as f64,
        p99_us: latency.value_at_quantile(0.99) as f64,
        p999_us: latency.value_at_quantile(0.999) as f64,
    })
}

/// The systems this build can run, in table order.
fn compiled_systems() -> Vec<&'static str> {
    let mut systems = vec!["raw"];
    if BackendChoice::available().contains(&BackendChoice::Uring) {
        systems.push("raw-uring");
        systems.push("keel-uring");
    }
    systems.push("keel-std");
    #[cfg(feature = "peer-okaywal")]
    systems.push("okaywal");
    #[cfg(feature = "peer-sqlite")]
    systems.push("sqlite");
    #[cfg(feature = "peer-raft-engine")]
    systems.push("raft-engine");
    #[cfg(feature = "peer-rocksdb")]
    systems.push("rocksdb");
    systems
}

/// Systems that acknowledge before fdatasync (written, or queued), for the throughput table.
fn relaxed_systems() -> Vec<&'static str> {
    let peers = [
        ("sqlite-normal", cfg!(feature = "peer-sqlite")),
        ("raft-engine-nosync", cfg!(feature = "peer-raft-engine")),
        ("rocksdb-nosync", cfg!(feature = "peer-rocksdb")),
    ];
    ["keel-batched", "keel-async"]
        .into_iter()
        .chain(peers.into_iter().filter(|p| p.1).map(|p| p.0))
        .collect()
}

fn open(system: &str, dir: &Path, committers: usize) -> io::Result<Box<dyn Peer>> {
    let keel_with = |backend, durability| -> io::Result<Box<dyn Peer>> {
        let options = WalOptions {
            durability,
            backend,
            max_record_bytes: 1 << 20,
            ..WalOptions::default()
        };
        Ok(Box::new(Keel(
            Wal::open(dir, options).map_err(io::Error::other)?,
        )))
    };
    let keel = |backend| keel_with(backend, Durability::Strict);
    let _ = committers;
    match system {
        "raw" => Ok(Box::new(RawLog::open(dir, 256 << 20)?)),
        "keel-uring" => keel(BackendChoice::Uring),
        "keel-std" => keel(BackendChoice::Std),
        "keel-batched" => keel_with(
            BackendChoice::Auto,
            Durability::Batched {
                max_delay: Duration::from_millis(10),
                max_bytes: 4 << 20,
            },
        ),
        "keel-async" => keel_with(
            BackendChoice::Auto,
            Durability::Async {
                max_delay: Duration::from_millis(10),
            },
        ),
        #[cfg(feature = "peer-okaywal")]
        "okaywal" => Ok(Box::new(okaywal_peer::OkayWal::open(dir, 48 << 20)?)),
        #[cfg(feature = "peer-okaywal")]
        "okaywal-fill" => Ok(Box::new(okaywal_peer::OkayWal::open(dir, u64::MAX)?)),
        #[cfg(feature = "peer-sqlite")]
        "sqlite" => Ok(Box::new(sqlite_peer::Sqlite::open(
            dir, committers, "FULL",
        )?)),
        #[cfg(feature = "peer-sqlite")]
        "sqlite-normal" => Ok(Box::new(sqlite_peer::Sqlite::open(
            dir, committers, "NORMAL",
        )?)),
        #[cfg(feature = "peer-raft-engine")]
        "raft-engine" => Ok(Box::new(raft_engine_peer::RaftEngine::open(dir, true)?)),
        #[cfg(feature = "peer-raft-engine")]
        "raft-engine-nosync" => Ok(Box::new(raft_engine_peer::RaftEngine::open(dir, false)?)),
        #[cfg(feature = "peer-rocksdb")]
        "rocksdb" => Ok(Box::new(rocksdb_peer::RocksDb::open(dir, true)?)),
        #[cfg(feature = "peer-rocksdb")]
        "rocksdb-nosync" => Ok(Box::new(rocksdb_peer::RocksDb::open(dir, false)?)),
        other => Err(io::Error::other(format!("unknown system {other}"))),
    }
}

#[derive(Clone, Debug)]
struct Row {
    system: String,
    committers: usize,
    size: usize,
    commits: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

impl Row {
    fn rate(&self) -> f64 {
        self.commits as f64 / self.seconds
    }
}

fn run_one(
    system: &str,
    parent: &Path,
    committers: usize,
    size: usize,
    duration: Duration,
) -> io::Result<Row> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("peer-{system}-"))
        .tempdir_in(parent)?;
    #[cfg(all(target_os = "linux", feature = "uring"))]
    if system == "raw-uring" {
        // Chains in flight stand for committers: one record each, at most 64.
        return run_raw_uring(dir.path(), committers, size, duration);
    }
    let peer: Arc<dyn Peer> = Arc::from(open(system, dir.path(), committers)?);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..committers)
        .map(|thread| {
            let (peer, stop) = (Arc::clone(&peer), Arc::clone(&stop));
            std::thread::spawn(move || -> io::Result<hdrhistogram::Histogram<u64>> {
                let payload = vec![u8::try_from(thread % 251).unwrap_or(0); size];
                let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                    .map_err(io::Error::other)?;
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    peer.commit(thread, seq, &payload)?;
                    let micros = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                    latency.saturating_record(micros.max(1));
                    seq += 1;
                }
                Ok(latency)
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut total = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(io::Error::other)?;
    for thread in threads {
        let latency = thread
            .join()
            .map_err(|_| io::Error::other("a committer panicked"))??;
        total.add(&latency).map_err(io::Error::other)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(counters) = peer.counters() {
        eprintln!("  {system} C={committers} {size} B: {counters}");
    }
    drop(peer);
    Ok(Row {
        system: system.to_owned(),
        committers,
        size,
        commits: total.len(),
        seconds,
        p50_us: total.value_at_quantile(0.50) as f64,
        p99_us: total.value_at_quantile(0.99) as f64,
        p999_us: total.value_at_quantile(0.999) as f64,
    })
}

struct Args {
    duration: Duration,
    committers: Vec<usize>,
    sizes: Vec<usize>,
    systems: Vec<String>,
    /// Committer counts of the relaxed-durability table (empty: no such table).
    relaxed_committers: Vec<usize>,
    /// Log size of the recovery table, in MiB (0: no such table).
    recovery_mib: u64,
    dir: PathBuf,
    out: Option<PathBuf>,
}

fn list<T: std::str::FromStr>(value: &str) -> Vec<T> {
    value
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// `cargo bench` runs the harness in `benches/`; a relative path given on the command line is
/// taken from the workspace root, where the command was typed.
fn from_workspace(path: String) -> PathBuf {
    let path = PathBuf::from(path);
    if path.is_absolute() {
        return path;
    }
    match Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        Some(root) => root.join(path),
        None => path,
    }
}

fn parse_args() -> Args {
    let mut args = Args {
        duration: Duration::from_secs(3),
        committers: vec![1, 8, 64, 256],
        sizes: vec![128, 4096, 65536],
        systems: compiled_systems().into_iter().map(str::to_owned).collect(),
        relaxed_committers: vec![1, 64],
        recovery_mib: 0,
        dir: std::env::temp_dir(),
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_default();
        match flag.as_str() {
            "--duration" => args.duration = Duration::from_secs_f64(value().parse().unwrap_or(3.0)),
            "--committers" => args.committers = list(&value()),
            "--sizes" => args.sizes = list(&value()),
            "--systems" => args.systems = value().split(',').map(str::to_owned).collect(),
            "--dir" => args.dir = from_workspace(value()),
            "--relaxed-committers" => args.relaxed_committers = list(&value()),
            "--recovery-mib" => args.recovery_mib = value().parse().unwrap_or(0),
            "--out" => args.out = Some(from_workspace(value())),
            // `cargo bench` passes --bench; criterion-style filters are not used here.
            _ => {}
        }
    }
    args
}

/// One table per record size: absolute figures and ratios to both raw limits and to the best
/// peer of the same class (`systems`).
fn markdown(
    rows: &[Row],
    title: &str,
    systems: &[String],
    sizes: &[usize],
    committers: &[usize],
) -> String {
    let mut out = String::new();
    for &size in sizes {
        let _ = writeln!(out, "\n### {size}-byte records, {title}\n");
        let _ = writeln!(
            out,
            "| committers | system | commits/s | vs raw | vs raw-uring | vs best peer | p50 µs | p99 µs | p999 µs |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|");
        for &c in committers {
            let at = |system: &str| {
                rows.iter()
                    .find(|r| r.size == size && r.committers == c && r.system == system)
                    .map(Row::rate)
            };
            let (raw, raw_uring) = (at("raw"), at("raw-uring"));
            let best_peer = systems
                .iter()
                .filter(|s| !s.starts_with("raw") && !s.starts_with("keel"))
                .filter_map(|s| at(s))
                .fold(None, |best: Option<f64>, rate| {
                    Some(best.map_or(rate, |b| b.max(rate)))
                });
            for system in systems {
                let Some(row) = rows
                    .iter()
                    .find(|r| r.size == size && r.committers == c && &r.system == system)
                else {
                    continue;
                };
                let ratio = |base: Option<f64>| {
                    base.filter(|b| *b > 0.0 && !system.starts_with("raw"))
                        .map_or("–".to_owned(), |b| format!("{:.2}x", row.rate() / b))
                };
                let _ = writeln!(
                    out,
                    "| {c} | {system} | {:.0} | {} | {} | {} | {:.0} | {:.0} | {:.0} |",
                    row.rate(),
                    ratio(raw),
                    ratio(raw_uring),
                    ratio(best_peer),
                    row.p50_us,
                    row.p99_us,
                    row.p999_us
                );
            }
        }
    }
    out
}

fn json(rows: &[Row]) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"system\":\"{}\",\"committers\":{},\"size\":{},\"commits\":{},\"seconds\":{:.3},\"commits_per_s\":{:.1},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{}}}",
                r.system, r.committers, r.size, r.commits, r.seconds, r.rate(), r.p50_us, r.p99_us, r.p999_us
            )
        })
        .collect();
    format!("[\n  {}\n]\n", items.join(",\n  "))
}

fn plot_rates(
    rows: &[Row],
    args: &Args,
    size: usize,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let here: Vec<&Row> = rows.iter().filter(|r| r.size == size).collect();
    let top = here.iter().map(|r| r.rate()).fold(1.0, f64::max) * 1.1;
    let most = args.committers.iter().copied().max().unwrap_or(1).max(2);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Durable commits/s, {size}-byte records"),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d((1u32..u32::try_from(most)?).log_scale(), 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("concurrent committers")
        .y_desc("commits/s")
        .draw()?;
    for (i, system) in args.systems.iter().enumerate() {
        let points: Vec<(u32, f64)> = here
            .iter()
            .filter(|r| &r.system == system)
            .map(|r| (u32::try_from(r.committers).unwrap_or(u32::MAX), r.rate()))
            .collect();
        if points.is_empty() {
            continue;
        }
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(system.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot_latency(
    rows: &[Row],
    args: &Args,
    size: usize,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let here: Vec<&Row> = rows.iter().filter(|r| r.size == size).collect();
    let top = here.iter().map(|r| r.p999_us).fold(10.0, f64::max) * 1.5;
    let most = args.committers.iter().copied().max().unwrap_or(1).max(2);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Commit latency, {size}-byte records (solid p50, dashed p99, dotted p999)"),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (1u32..u32::try_from(most)?).log_scale(),
            (5f64..top).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("concurrent committers")
        .y_desc("latency (µs)")
        .draw()?;
    for (i, system) in args.systems.iter().enumerate() {
        let mine: Vec<&&Row> = here.iter().filter(|r| &r.system == system).collect();
        if mine.is_empty() {
            continue;
        }
        let color = Palette99::pick(i).to_rgba();
        let at = |r: &&&Row, v: f64| (u32::try_from(r.committers).unwrap_or(u32::MAX), v.max(5.0));
        let p50: Vec<_> = mine.iter().map(|r| at(r, r.p50_us)).collect();
        let p99: Vec<_> = mine.iter().map(|r| at(r, r.p99_us)).collect();
        let p999: Vec<_> = mine.iter().map(|r| at(r, r.p999_us)).collect();
        chart
            .draw_series(LineSeries::new(p50, color.stroke_width(2)))?
            .label(system.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(DashedLineSeries::new(p99, 6, 4, color.stroke_width(1)))?;
        chart.draw_series(DashedLineSeries::new(p999, 2, 4, color.stroke_width(1)))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

// ---- Recovery: a log filled by a child that then exits without closing, reopened by
// another child that reports its time and peak memory.

/// Systems whose reopen is measured, and the system each fills the log with.
fn recovery_systems() -> Vec<(&'static str, &'static str)> {
    let peers = [
        ("okaywal", "okaywal-fill", cfg!(feature = "peer-okaywal")),
        ("sqlite", "sqlite-normal", cfg!(feature = "peer-sqlite")),
        (
            "raft-engine",
            "raft-engine-nosync",
            cfg!(feature = "peer-raft-engine"),
        ),
        ("rocksdb", "rocksdb-nosync", cfg!(feature = "peer-rocksdb")),
    ];
    std::iter::once(("keel", "keel-batched"))
        .chain(peers.into_iter().filter(|p| p.2).map(|p| (p.0, p.1)))
        .collect()
}

/// Child: fills `dir` with `mib` MiB of 4 KiB records from 16 threads, then exits at once
/// (no close, no checkpoint): the next open must recover all of it.
fn child_fill(system: &str, dir: &Path, mib: u64) -> io::Result<()> {
    let peer: Arc<dyn Peer> = Arc::from(open(system, dir, 16)?);
    let per_thread = (mib << 20) / 4096 / 16;
    let threads: Vec<_> = (0..16)
        .map(|thread| {
            let peer = Arc::clone(&peer);
            std::thread::spawn(move || -> io::Result<()> {
                let payload = vec![0x42u8; 4096];
                for seq in 0..per_thread {
                    peer.commit(thread, seq, &payload)?;
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| io::Error::other("a filler panicked"))??;
    }
    // Everything acknowledged is at least written; give Batched/Async modes their sync.
    std::thread::sleep(Duration::from_millis(100));
    std::process::exit(0);
}

/// Child: opens (recovers) `dir`, reads everything recovery hands over, prints
/// `reopened <seconds> <records> <peak RSS kB>`.
fn child_reopen(system: &str, dir: &Path) -> io::Result<()> {
    let started = Instant::now();
    let records: u64 = match system {
        "keel" => {
            struct Count(u64);
            impl keel_recovery::Replay for Count {
                fn apply(
                    &mut self,
                    txn: &keel_recovery::CommittedTxn<'_>,
                ) -> Result<(), keel_recovery::ReplayError> {
                    self.0 += txn.entries().len() as u64;
                    Ok(())
                }
            }
            let mut count = Count(0);
            keel_recovery::recover(dir, keel_recovery::RecoveryPolicy::default(), &mut count)
                .map_err(io::Error::other)?;
            let wal = Wal::open(dir, WalOptions::default()).map_err(io::Error::other)?;
            drop(wal);
            count.0
        }
        #[cfg(feature = "peer-okaywal")]
        "okaywal" => okaywal_peer::reopen(dir)?,
        #[cfg(feature = "peer-sqlite")]
        "sqlite" => {
            let conn =
                rusqlite::Connection::open(dir.join("peer.sqlite")).map_err(io::Error::other)?;
            let n: i64 = conn
                .query_row("SELECT count(*) FROM log", [], |row| row.get(0))
                .map_err(io::Error::other)?;
            u64::try_from(n).unwrap_or(0)
        }
        #[cfg(feature = "peer-raft-engine")]
        "raft-engine" => {
            let engine = raft_engine_peer::RaftEngine::open(dir, true)?;
            drop(engine);
            0
        }
        #[cfg(feature = "peer-rocksdb")]
        "rocksdb" => rocksdb_peer::RocksDb::reopen(dir)?,
        other => return Err(io::Error::other(format!("no reopen for {other}"))),
    };
    let seconds = started.elapsed().as_secs_f64();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    println!("reopened {seconds:.3} {records} {hwm}");
    Ok(())
}

#[derive(Clone, Debug)]
struct RecoveryRow {
    system: String,
    log_bytes: u64,
    seconds: f64,
    records: u64,
    peak_rss_kb: u64,
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn measure_recovery(
    system: &str,
    filler: &str,
    parent: &Path,
    mib: u64,
) -> io::Result<RecoveryRow> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("recovery-{system}-"))
        .tempdir_in(parent)?;
    let exe = std::env::current_exe()?;
    let status = std::process::Command::new(&exe)
        .args(["--child-fill", filler])
        .arg(dir.path())
        .arg(mib.to_string())
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "filling with {filler} failed: {status}"
        )));
    }
    let output = std::process::Command::new(&exe)
        .args(["--child-reopen", system])
        .arg(dir.path())
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("reopened "))
        .ok_or_else(|| {
            io::Error::other(format!(
                "reopening {system} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        })?;
    let mut parts = line.split_whitespace();
    let mut next = || parts.next().unwrap_or("0").to_owned();
    Ok(RecoveryRow {
        system: system.to_owned(),
        log_bytes: dir_bytes(dir.path()),
        seconds: next().parse().unwrap_or(0.0),
        records: next().parse().unwrap_or(0),
        peak_rss_kb: next().parse().unwrap_or(0),
    })
}

fn recovery_markdown(rows: &[RecoveryRow], mib: u64) -> String {
    let mut out = format!(
        "\n### Recovery: reopening a log of {mib} MiB of 4 KiB records after an unclean exit\n\n\
         | system | on disk MiB | reopen s | MB/s | records read | peak RSS MiB |\n|---|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.3} | {:.0} | {} | {:.1} |",
            r.system,
            r.log_bytes as f64 / 1048576.0,
            r.seconds,
            (mib as f64 * 1.048576) / r.seconds.max(1e-9),
            if r.records > 0 {
                r.records.to_string()
            } else {
                "–".into()
            },
            r.peak_rss_kb as f64 / 1024.0
        );
    }
    out
}

fn main() {
    let raw: Vec<String> = std::env::args().collect();
    if let Some(i) = raw.iter().position(|a| a == "--child-fill") {
        let mib = raw[i + 3].parse().expect("MiB");
        if let Err(e) = child_fill(&raw[i + 1], Path::new(&raw[i + 2]), mib) {
            eprintln!("fill: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Some(i) = raw.iter().position(|a| a == "--child-reopen") {
        if let Err(e) = child_reopen(&raw[i + 1], Path::new(&raw[i + 2])) {
            eprintln!("reopen: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args = parse_args();
    let mut rows = Vec::new();
    eprintln!(
        "peers: {} systems × {:?} committers × {:?} bytes, {:?} each, under {}",
        args.systems.len(),
        args.committers,
        args.sizes,
        args.duration,
        args.dir.display()
    );
    for &size in &args.sizes {
        for &committers in &args.committers {
            for system in &args.systems {
                match run_one(system, &args.dir, committers, size, args.duration) {
                    Ok(row) => {
                        eprintln!(
                            "{system:>12} C={committers:<3} S={size:<5} {:>9.0} commits/s  p50 {:.0} µs  p99 {:.0} µs",
                            row.rate(),
                            row.p50_us,
                            row.p99_us
                        );
                        rows.push(row);
                    }
                    Err(e) => eprintln!("{system} C={committers} S={size}: failed: {e}"),
                }
            }
        }
    }
    let mut table = markdown(
        &rows,
        "Strict (durable before the ack)",
        &args.systems,
        &args.sizes,
        &args.committers,
    );
    let relaxed: Vec<String> = relaxed_systems().into_iter().map(str::to_owned).collect();
    let relaxed_sizes: Vec<usize> = args.sizes.iter().copied().filter(|&s| s <= 4096).collect();
    let mut relaxed_rows = Vec::new();
    for &size in &relaxed_sizes {
        for &committers in &args.relaxed_committers {
            for system in relaxed.iter().chain(["raw".to_owned()].iter()) {
                match run_one(system, &args.dir, committers, size, args.duration) {
                    Ok(row) => {
                        eprintln!(
                            "{system:>18} C={committers:<3} S={size:<5} {:>9.0} commits/s",
                            row.rate()
                        );
                        relaxed_rows.push(row);
                    }
                    Err(e) => eprintln!("{system} C={committers} S={size}: failed: {e}"),
                }
            }
        }
    }
    if !relaxed_rows.is_empty() {
        let mut systems = relaxed.clone();
        systems.push("raw".into());
        table.push_str(&markdown(
            &relaxed_rows,
            "acknowledged before fdatasync (Keel Batched and Async, SQLite synchronous=NORMAL, raft-engine and RocksDB sync=false)",
            &systems,
            &relaxed_sizes,
            &args.relaxed_committers,
        ));
    }
    let mut recovery_rows = Vec::new();
    if args.recovery_mib > 0 {
        for (system, filler) in recovery_systems() {
            match measure_recovery(system, filler, &args.dir, args.recovery_mib) {
                Ok(row) => {
                    eprintln!(
                        "{system:>12} reopen {:.3} s, peak RSS {:.1} MiB",
                        row.seconds,
                        row.peak_rss_kb as f64 / 1024.0
                    );
                    recovery_rows.push(row);
                }
                Err(e) => eprintln!("recovery {system}: failed: {e}"),
            }
        }
        table.push_str(&recovery_markdown(&recovery_rows, args.recovery_mib));
    }
    println!("{table}");
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).expect("creating the output directory");
        std::fs::write(out.join("peers.md"), &table).expect("writing peers.md");
        let mut all = rows.clone();
        all.extend(relaxed_rows.iter().cloned());
        let recovery_json: Vec<String> = recovery_rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"system\":\"{}\",\"log_bytes\":{},\"reopen_s\":{:.3},\"records\":{},\"peak_rss_kb\":{}}}",
                    r.system, r.log_bytes, r.seconds, r.records, r.peak_rss_kb
                )
            })
            .collect();
        let json_text = format!(
            "{{\"commits\": {},\n\"recovery\": [{}]}}\n",
            json(&all),
            recovery_json.join(", ")
        );
        std::fs::write(out.join("peers.json"), json_text).expect("writing peers.json");
        for &size in &args.sizes {
            let rates = out.join(format!("commits-{size}.svg"));
            let latency = out.join(format!("latency-{size}.svg"));
            if let Err(e) = plot_rates(&rows, &args, size, &rates) {
                eprintln!("plot {}: {e}", rates.display());
            }
            if let Err(e) = plot_latency(&rows, &args, size, &latency) {
                eprintln!("plot {}: {e}", latency.display());
            }
        }
        eprintln!("wrote {}", out.display());
    }
}
