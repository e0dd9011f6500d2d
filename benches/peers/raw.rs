//! The raw limits, hand-written loops on a preallocated file: `raw` (`pwrite` + `fdatasync`
//! of each record, one at a time: see [`RawLog`], the baseline `keel bench` runs too),
//! `raw-group` (leader/follower group commit, one `pwrite` + `fdatasync` a group: see
//! [`RawGroupLog`], which `keel bench` runs too), `raw-uring` (one write→fdatasync chain per
//! record, several in flight through io_uring) and `raw-uring-batched` (chains carrying
//! everything queued: see `RawUringBatched`, which `keel bench` runs too).

use std::io;

use keel_bench::{RawGroupLog, RawLog};

use crate::harness::Peer;

/// The raw limit, shared with `keel bench`: see [`RawLog`].
impl Peer for RawLog {
    fn commit(&self, _thread: usize, _seq: u64, payload: &[u8]) -> io::Result<()> {
        RawLog::commit(self, payload)
    }
}

/// Group commit by hand, shared with `keel bench`: see [`RawGroupLog`].
impl Peer for RawGroupLog {
    fn commit(&self, _thread: usize, _seq: u64, payload: &[u8]) -> io::Result<()> {
        RawGroupLog::commit(self, payload)
    }

    fn counters(&self) -> Option<String> {
        Some(format!(
            "{} groups (pwrite + fdatasync), {:.0} bytes a group",
            self.syncs(),
            self.bytes() as f64 / self.syncs().max(1) as f64
        ))
    }
}

/// Group commit on the ring, shared with `keel bench`: see `keel_bench::RawUringBatched`.
#[cfg(all(target_os = "linux", feature = "uring"))]
impl Peer for keel_bench::RawUringBatched {
    fn commit(&self, _thread: usize, _seq: u64, payload: &[u8]) -> io::Result<()> {
        keel_bench::RawUringBatched::commit(self, payload)
    }

    fn counters(&self) -> Option<String> {
        let chains = self.syncs().max(1) as f64;
        Some(format!(
            "{} chains (write + fdatasync), {:.1} records and {:.0} bytes a chain",
            self.syncs(),
            self.records() as f64 / chains,
            self.bytes() as f64 / chains
        ))
    }
}

#[cfg(all(target_os = "linux", feature = "uring"))]
pub use uring::run_raw_uring;

#[cfg(all(target_os = "linux", feature = "uring"))]
mod uring {
    use std::collections::HashMap;
    use std::io;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use hdrhistogram::Histogram;
    use keel_bench::RawLog;
    use keel_wal::backend::uring::UringBackend;
    use keel_wal::backend::{Backend, Chain, Completion, IoFile, WriteOp};

    use crate::harness::{Row, latency_histogram, record_since};

    /// `raw-uring`: one thread keeps up to `depth` write→fdatasync chains in flight through
    /// io_uring (keel-wal's backend, forced onto the ring), one record per chain and no
    /// batching: what the device gives when durable writes overlap.
    pub fn run_raw_uring(
        dir: &Path,
        depth: usize,
        size: usize,
        duration: Duration,
    ) -> io::Result<Row> {
        let raw = RawLog::open(dir, 256 << 20)?;
        let raw_bytes = raw.size_bytes();
        let (file, path) = raw.into_file();
        let requested = depth;
        let depth = depth.clamp(1, 64);
        let mut run = RawUring {
            ring: UringBackend::new(depth, false, None).map_err(io::Error::other)?,
            file: Arc::new(IoFile { file, path }),
            raw_bytes,
            size,
            latency: latency_histogram()?,
            started_at: HashMap::new(),
            next_id: 0,
            offset: 0,
            spare: Vec::new(),
        };
        let mut done = Vec::new();
        let started = Instant::now();
        while started.elapsed() < duration || run.ring.in_flight() > 0 {
            while started.elapsed() < duration && run.ring.in_flight() < depth {
                run.submit_one();
            }
            run.ring.wait(1, &mut done);
            for completion in done.drain(..) {
                run.settle(completion)?;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(Row::from_latency(
            "raw-uring",
            requested,
            size,
            seconds,
            &run.latency,
        ))
    }

    /// The state of a `raw-uring` run.
    struct RawUring {
        ring: UringBackend,
        file: Arc<IoFile>,
        /// The preallocated file's size: writes wrap around to its start.
        raw_bytes: u64,
        size: usize,
        latency: Histogram<u64>,
        /// When each chain in flight was submitted, by id.
        started_at: HashMap<u64, Instant>,
        next_id: u64,
        offset: u64,
        /// Buffers handed back by completed chains, for the next ones.
        spare: Vec<Vec<u8>>,
    }

    impl RawUring {
        /// Submits one record's write→fdatasync chain at the next offset.
        fn submit_one(&mut self) {
            let mut buf = self.spare.pop().unwrap_or_default();
            buf.clear();
            buf.resize(self.size, 0x5a);
            if self.offset + self.size as u64 > self.raw_bytes {
                self.offset = 0;
            }
            self.started_at.insert(self.next_id, Instant::now());
            self.ring.submit(Chain {
                id: self.next_id,
                file: Arc::clone(&self.file),
                write: Some(WriteOp {
                    offset: self.offset,
                    buf,
                }),
                sync: true,
                alone: false,
                witness: false,
            });
            self.next_id += 1;
            self.offset += self.size as u64;
        }

        /// Records a completed chain's latency and keeps its buffer; a failed chain ends
        /// the run.
        fn settle(&mut self, completion: Completion) -> io::Result<()> {
            completion
                .result
                .map_err(|e| io::Error::other(format!("{}: {}", e.operation, e.error)))?;
            if let Some(t) = self.started_at.remove(&completion.id) {
                record_since(&mut self.latency, t);
            }
            self.spare.extend(completion.buf);
            Ok(())
        }
    }
}
