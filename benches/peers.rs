//! Side by side: Keel against the raw limit and against the logs people use instead.
//!
//! ```sh
//! cargo bench -p keel-suite --bench peers --features peers -- --duration 3 --out docs/bench
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
//!   record);
//! - `okaywal` (feature `peer-okaywal`): entry, chunk, commit (fdatasync, shared by waiters);
//! - `sqlite` (feature `peer-sqlite`, bundled SQLite): WAL mode, `synchronous=FULL`, one insert
//!   per transaction, one connection per committer;
//! - `raft-engine` (feature `peer-raft-engine`): a `LogBatch` with one put, `write(sync=true)`
//!   (leader-based group commit).
//!
//! Output: a Markdown table (stdout and `<out>/peers.md`), JSON (`<out>/peers.json`), and SVG
//! plots drawn here (`<out>/commits-<size>.svg`: commits/s against committers;
//! `<out>/latency-<size>.svg`: p50/p99/p999 at each committer count).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_wal::{BackendChoice, Durability, RunId, Wal, WalEntry, WalOptions};

/// One system under test, shared by all committer threads.
trait Peer: Send + Sync {
    /// Appends `payload` as one record and returns once it is durable.
    fn commit(&self, thread: usize, seq: u64, payload: &[u8]) -> io::Result<()>;
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
}

/// `pwrite` + `fdatasync` per record, serialized: a file can only be synced as a whole.
struct Raw {
    file: File,
    next: Mutex<u64>,
    size: u64,
}

impl Raw {
    fn open(dir: &Path, size: u64) -> io::Result<Raw> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("raw.log"))?;
        // Preallocated and zero-filled, as Keel's segments are.
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < size {
            file.write_all_at(&zeros, at)?;
            at += zeros.len() as u64;
        }
        file.sync_all()?;
        Ok(Raw {
            file,
            next: Mutex::new(0),
            size,
        })
    }
}

impl Peer for Raw {
    fn commit(&self, _thread: usize, _seq: u64, payload: &[u8]) -> io::Result<()> {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let len = payload.len() as u64;
        if *next + len > self.size {
            *next = 0;
        }
        self.file.write_all_at(payload, *next)?;
        self.file.sync_data()?;
        *next += len;
        Ok(())
    }
}

#[cfg(feature = "peer-okaywal")]
mod okaywal_peer {
    use super::*;

    #[derive(Debug)]
    pub struct Discard;

    impl okaywal::LogManager for Discard {
        fn recover(&mut self, _entry: &mut okaywal::Entry<'_>) -> io::Result<()> {
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
        pub fn open(dir: &Path) -> io::Result<OkayWal> {
            let wal = okaywal::Configuration::default_for(dir)
                .preallocate_bytes(64 << 20)
                .checkpoint_after_bytes(48 << 20)
                .open(Discard)?;
            Ok(OkayWal(wal))
        }
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

    pub struct Sqlite {
        path: PathBuf,
        connections: Vec<Mutex<Option<rusqlite::Connection>>>,
    }

    impl Sqlite {
        pub fn open(dir: &Path, committers: usize) -> io::Result<Sqlite> {
            let path = dir.join("peer.sqlite");
            let sqlite = Sqlite {
                path,
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
            conn.execute_batch("PRAGMA synchronous=FULL")?;
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

    pub struct RaftEngine(pub raft_engine::Engine);

    impl RaftEngine {
        pub fn open(dir: &Path) -> io::Result<RaftEngine> {
            let config = raft_engine::Config {
                dir: dir.display().to_string(),
                batch_compression_threshold: raft_engine::ReadableSize(0),
                recovery_threads: 2,
                ..raft_engine::Config::default()
            };
            raft_engine::Engine::open(config)
                .map(RaftEngine)
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
                .write(&mut batch, true)
                .map(drop)
                .map_err(io::Error::other)
        }
    }
}

/// The systems this build can run, in table order.
fn compiled_systems() -> Vec<&'static str> {
    let mut systems = vec!["raw"];
    if BackendChoice::available().contains(&BackendChoice::Uring) {
        systems.push("keel-uring");
    }
    systems.push("keel-std");
    #[cfg(feature = "peer-okaywal")]
    systems.push("okaywal");
    #[cfg(feature = "peer-sqlite")]
    systems.push("sqlite");
    #[cfg(feature = "peer-raft-engine")]
    systems.push("raft-engine");
    systems
}

fn open(system: &str, dir: &Path, committers: usize) -> io::Result<Box<dyn Peer>> {
    let keel = |backend| -> io::Result<Box<dyn Peer>> {
        let options = WalOptions {
            durability: Durability::Strict,
            backend,
            max_record_bytes: 1 << 20,
            ..WalOptions::default()
        };
        Ok(Box::new(Keel(
            Wal::open(dir, options).map_err(io::Error::other)?,
        )))
    };
    let _ = committers;
    match system {
        "raw" => Ok(Box::new(Raw::open(dir, 256 << 20)?)),
        "keel-uring" => keel(BackendChoice::Uring),
        "keel-std" => keel(BackendChoice::Std),
        #[cfg(feature = "peer-okaywal")]
        "okaywal" => Ok(Box::new(okaywal_peer::OkayWal::open(dir)?)),
        #[cfg(feature = "peer-sqlite")]
        "sqlite" => Ok(Box::new(sqlite_peer::Sqlite::open(dir, committers)?)),
        #[cfg(feature = "peer-raft-engine")]
        "raft-engine" => Ok(Box::new(raft_engine_peer::RaftEngine::open(dir)?)),
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
    dir: PathBuf,
    out: Option<PathBuf>,
}

fn list<T: std::str::FromStr>(value: &str) -> Vec<T> {
    value
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn parse_args() -> Args {
    let mut args = Args {
        duration: Duration::from_secs(3),
        committers: vec![1, 8, 64, 256],
        sizes: vec![128, 4096, 65536],
        systems: compiled_systems().into_iter().map(str::to_owned).collect(),
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
            "--dir" => args.dir = PathBuf::from(value()),
            "--out" => args.out = Some(PathBuf::from(value())),
            // `cargo bench` passes --bench; criterion-style filters are not used here.
            _ => {}
        }
    }
    args
}

fn markdown(rows: &[Row], args: &Args) -> String {
    let mut out = String::new();
    for &size in &args.sizes {
        let _ = writeln!(
            out,
            "\n### {size}-byte records, Strict (durable before the ack)\n"
        );
        let _ = writeln!(
            out,
            "| committers | system | commits/s | vs raw | vs best peer | p50 µs | p99 µs | p999 µs |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|");
        for &committers in &args.committers {
            let here: Vec<&Row> = rows
                .iter()
                .filter(|r| r.size == size && r.committers == committers)
                .collect();
            let raw = here.iter().find(|r| r.system == "raw").map(|r| r.rate());
            let best_peer = here
                .iter()
                .filter(|r| r.system != "raw" && !r.system.starts_with("keel"))
                .map(|r| r.rate())
                .fold(None, |best: Option<f64>, rate| {
                    Some(best.map_or(rate, |b| b.max(rate)))
                });
            for row in &here {
                let ratio = |base: Option<f64>| {
                    base.filter(|b| *b > 0.0)
                        .map_or("–".to_owned(), |b| format!("{:.2}x", row.rate() / b))
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {} | {} | {:.0} | {:.0} | {:.0} |",
                    committers,
                    row.system,
                    row.rate(),
                    ratio(raw),
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

fn main() {
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
    let table = markdown(&rows, &args);
    println!("{table}");
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).expect("creating the output directory");
        std::fs::write(out.join("peers.md"), &table).expect("writing peers.md");
        std::fs::write(out.join("peers.json"), json(&rows)).expect("writing peers.json");
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
