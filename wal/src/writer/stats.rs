//! Counters readable from the log handle while it runs.

use std::sync::atomic::Ordering::Relaxed;

use crate::writer::sync::AtomicU64;

use crate::backend::BackendKind;
use crate::ids::Lsn;

/// Buckets of the commits-per-write histogram: bucket `i` counts writes that carried
/// `2^i ..= 2^(i+1) - 1` commits (the last bucket: that many or more).
pub const BATCH_BUCKETS: usize = 16;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub commits: AtomicU64,
    pub entries: AtomicU64,
    pub bytes_written: AtomicU64,
    pub writes: AtomicU64,
    pub fsyncs: AtomicU64,
    pub rotations: AtomicU64,
    pub rotation_waits: AtomicU64,
    pub segments_recycled: AtomicU64,
    pub max_batch_commits: AtomicU64,
    pub batch_commits: [AtomicU64; BATCH_BUCKETS],
    pub written_lsn: AtomicU64,
    pub durable_lsn: AtomicU64,
    pub witnesses: AtomicU64,
    pub witness_lsn: AtomicU64,
    pub buffers_reused: AtomicU64,
    pub driven: AtomicU64,
    pub direct_refused: AtomicU64,
}

impl Counters {
    /// One chain: a write of `bytes` carrying `commits` (none for a sync alone), maybe a sync.
    pub(crate) fn record_io(&self, bytes: usize, commits: u32, sync: bool) {
        self.writes.fetch_add(u64::from(bytes > 0), Relaxed);
        self.bytes_written.fetch_add(bytes as u64, Relaxed);
        self.fsyncs.fetch_add(u64::from(sync), Relaxed);
        if commits > 0 {
            let bucket = (commits.ilog2() as usize).min(BATCH_BUCKETS - 1);
            self.batch_commits[bucket].fetch_add(1, Relaxed);
            self.max_batch_commits.fetch_max(commits.into(), Relaxed);
        }
    }
}

/// A snapshot of a log's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalStats {
    /// The backend the writer runs on.
    pub backend: BackendKind,
    /// Append calls accepted (a transaction's entries are one commit).
    pub commits: u64,
    /// Entries (records) accepted.
    pub entries: u64,
    /// Bytes handed to writes.
    pub bytes_written: u64,
    /// Write operations issued.
    pub writes: u64,
    /// fdatasync operations issued.
    pub fsyncs: u64,
    /// Segments started.
    pub rotations: u64,
    /// Rotations that had to wait for the preallocator.
    pub rotation_waits: u64,
    /// Segments started in a recycled file ([`crate::WalOptions::recycle_segments`]), not a
    /// zero-filled one.
    pub segments_recycled: u64,
    /// The largest number of commits one write carried.
    pub max_batch_commits: u64,
    /// Commits per write, in power-of-two buckets (see [`BATCH_BUCKETS`]).
    pub batch_commits_histogram: [u64; BATCH_BUCKETS],
    /// Every LSN up to this one has reached the kernel.
    pub written_lsn: Lsn,
    /// Every LSN up to this one is durable.
    pub durable_lsn: Lsn,
    /// Durable witnesses written and synced (`witness.rs`): each is one write and one
    /// fdatasync of a segment's header block, counted here and not in `writes` or `fsyncs`.
    pub witnesses: u64,
    /// The LSN the newest completed witness claims durable (0: none yet in this process).
    pub witness_lsn: Lsn,
    /// Appends framed by [`crate::Wal::encode`] into a buffer an earlier append handed back
    /// (no allocation): near `commits` once the log runs, unless values are over 64 KiB.
    pub buffers_reused: u64,
    /// Drives: a committer waiting on its own thread ([`crate::Wal::append_wait`]) found
    /// the writer idle and wrote its append itself, instead of the writer thread.
    pub driven: u64,
    /// Under [`BackendKind::UringDirect`]: segment files the file system refused direct I/O
    /// for, written through the page cache instead (a warning said so). `backend` still
    /// names the backend chosen; 0 means every segment so far was written direct.
    pub direct_refused: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self, backend: BackendKind) -> WalStats {
        WalStats {
            backend,
            commits: self.commits.load(Relaxed),
            entries: self.entries.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            writes: self.writes.load(Relaxed),
            fsyncs: self.fsyncs.load(Relaxed),
            rotations: self.rotations.load(Relaxed),
            rotation_waits: self.rotation_waits.load(Relaxed),
            segments_recycled: self.segments_recycled.load(Relaxed),
            max_batch_commits: self.max_batch_commits.load(Relaxed),
            batch_commits_histogram: std::array::from_fn(|i| self.batch_commits[i].load(Relaxed)),
            written_lsn: self.written_lsn.load(Relaxed),
            durable_lsn: self.durable_lsn.load(Relaxed),
            witnesses: self.witnesses.load(Relaxed),
            witness_lsn: self.witness_lsn.load(Relaxed),
            buffers_reused: self.buffers_reused.load(Relaxed),
            driven: self.driven.load(Relaxed),
            direct_refused: self.direct_refused.load(Relaxed),
        }
    }
}
