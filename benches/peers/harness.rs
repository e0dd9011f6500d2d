//! What every system shares: the [`Peer`] trait, the committer threads of one run, and the
//! [`Row`] a run gives.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::systems;

/// One system under test, shared by all committer threads.
pub trait Peer: Send + Sync {
    /// Appends `payload` as one record and returns once it is durable.
    fn commit(&self, thread: usize, seq: u64, payload: &[u8]) -> io::Result<()>;

    /// What the system counted during the run, printed on stderr beside its row.
    fn counters(&self) -> Option<String> {
        None
    }
}

/// What one system did with one committer count and record size.
#[derive(Clone, Debug)]
pub struct Row {
    pub system: String,
    pub committers: usize,
    pub size: usize,
    pub commits: u64,
    pub seconds: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

impl Row {
    /// From a run's per-commit latency histogram.
    pub fn from_latency(
        system: &str,
        committers: usize,
        size: usize,
        seconds: f64,
        latency: &Histogram<u64>,
    ) -> Row {
        Row {
            system: system.to_owned(),
            committers,
            size,
            commits: latency.len(),
            seconds,
            p50_us: latency.value_at_quantile(0.50) as f64,
            p99_us: latency.value_at_quantile(0.99) as f64,
            p999_us: latency.value_at_quantile(0.999) as f64,
        }
    }

    pub fn rate(&self) -> f64 {
        self.commits as f64 / self.seconds
    }
}

/// A histogram of commit latencies in microseconds, up to a minute.
pub fn latency_histogram() -> io::Result<Histogram<u64>> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)
}

/// Records the time since `started` in microseconds (at least one).
pub fn record_since(latency: &mut Histogram<u64>, started: Instant) {
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    latency.saturating_record(micros.max(1));
}

/// Runs `system` in a fresh directory under `parent`: `committers` threads commit records of
/// `size` bytes for `duration`.
pub fn run_one(
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
        return crate::raw::run_raw_uring(dir.path(), committers, size, duration);
    }
    let peer: Arc<dyn Peer> = Arc::from(systems::open(system, dir.path(), committers)?);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..committers)
        .map(|thread| {
            let (peer, stop) = (Arc::clone(&peer), Arc::clone(&stop));
            std::thread::spawn(move || committer(&*peer, &stop, thread, size))
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut total = latency_histogram()?;
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
    Ok(Row::from_latency(system, committers, size, seconds, &total))
}

/// One committer thread: commits records of `size` bytes until `stop`, timing each.
fn committer(
    peer: &dyn Peer,
    stop: &AtomicBool,
    thread: usize,
    size: usize,
) -> io::Result<Histogram<u64>> {
    let payload = vec![u8::try_from(thread % 251).unwrap_or(0); size];
    let mut latency = latency_histogram()?;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        peer.commit(thread, seq, &payload)?;
        record_since(&mut latency, t);
        seq += 1;
    }
    Ok(latency)
}
