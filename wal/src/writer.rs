//! The writer thread: group commit over a [`Backend`].
//!
//! Each turn it takes everything queued, seals the records into one batch buffer (LSN,
//! durable mark, salted checksums), and submits the batch as one chain: a write, linked to an
//! fdatasync when a commit in it asked for durability, a sync timer fired, or the unsynced
//! bytes passed their bound. Commits that arrive while a chain is in flight go into the next
//! one: that is the group commit. Completions move two watermarks (`written`, `durable`) over
//! the contiguous prefix of completed chains, and waiters are released in LSN order.
//!
//! Failure is sticky: the first failed write or sync poisons the log. Every pending and later
//! commit fails with the cause; nothing is retried, and nothing past the failure is reported
//! written or durable.
//!
//! Rotation barrier: before the first record goes to a new segment, every chain of the old
//! one has completed and the old file is synced. So only the last segment can end torn.
//!
//! Durable witness (`witness.rs`): once the writer has been idle for `witness_idle` (nothing
//! queued, staged or in flight, everything sealed durable) and the durable records of the
//! active segment go beyond what its newest witness claims, it writes a witness slot into the
//! header block, as a chain of its own (a write and an fdatasync), and again at close. Never
//! on the commit path: commits that arrive meanwhile go into their own chains.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::backend::{Backend, Chain, IoFile, WriteOp};
use crate::error::{Error, PoisonCause};
use crate::ids::{DatabaseId, Lsn};
use crate::options::AckLevel;
use crate::prealloc::Preallocator;
use crate::queue::{AppendRequest, Request, refuse};
use crate::reader::RecordPosition;
use crate::record::{self, RECORD_HEADER_LEN, get_u32};
use crate::segment::{self, HEADER_BLOCK_LEN, SegmentHeader};
use crate::wal::Shared;
use crate::watermark::{Waiters, Watermark};
use crate::witness::{self, Witness};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A batch is submitted early once it holds this many bytes, bounding the buffer.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// The segment being appended to.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    pub file: Arc<IoFile>,
    pub header: SegmentHeader,
    /// Where the next record goes.
    pub offset: u64,
    /// Its newest valid witness, written or found at open.
    pub witness: Option<Witness>,
}

#[derive(Debug)]
struct ChainInfo {
    file: Arc<IoFile>,
    write: Option<(Lsn, Lsn)>,
    sync: bool,
    /// For a sync: the writes it covers besides its own, those complete when it was submitted
    /// (an fdatasync covers only writes completed before it started).
    covers: Vec<(Lsn, Lsn)>,
    /// A witness chain: the witness it writes.
    witness: Option<Witness>,
}

/// When the writer writes the durable witness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WitnessTiming {
    /// Witnesses are written at all: at close, and after `idle` when set.
    pub enabled: bool,
    /// How long the writer is idle before it writes one; `None`: only at close.
    pub idle: Option<Duration>,
}

/// The writer's durable-witness schedule.
#[derive(Debug)]
struct WitnessTimer {
    timing: WitnessTiming,
    /// Since when the writer has been idle with a witness to write.
    idle_since: Option<Instant>,
    /// A witness chain is in flight.
    in_flight: bool,
}

/// Records sealed but not yet submitted.
#[derive(Debug, Default)]
struct Batch {
    bytes: Vec<u8>,
    offset: u64,
    lsns: Option<(Lsn, Lsn)>,
    commits: u32,
}

/// When the unsynced data must be synced.
#[derive(Debug)]
struct SyncDue {
    now: bool,
    deadline: Option<Instant>,
    bytes_limit: u64,
    unsynced_bytes: u64,
}

impl Default for SyncDue {
    fn default() -> Self {
        SyncDue {
            now: false,
            deadline: None,
            bytes_limit: u64::MAX,
            unsynced_bytes: 0,
        }
    }
}

impl SyncDue {
    fn is_due(&self, now: Instant, closing: bool) -> bool {
        let unsynced = self.unsynced_bytes > 0;
        self.now
            || self.deadline.is_some_and(|deadline| deadline <= now)
            || (unsynced && self.unsynced_bytes >= self.bytes_limit)
            || (unsynced && closing)
    }
}

#[derive(Debug)]
pub(crate) struct Writer {
    shared: Arc<Shared>,
    backend: Box<dyn Backend>,
    dir: PathBuf,
    database_id: DatabaseId,
    /// The size of the segments this writer starts (the options'); the active segment's own
    /// size is in its header.
    segment_bytes: u64,
    active: ActiveSegment,
    preallocator: Preallocator,
    next_chain_id: u64,
    in_flight: HashMap<u64, ChainInfo>,
    written: Watermark,
    durable: Watermark,
    /// Highest LSN a submitted sync will cover.
    sync_submitted_through: Lsn,
    /// Highest LSN sealed into a batch.
    sealed_through: Lsn,
    batch: Batch,
    spare_buffers: Vec<Vec<u8>>,
    written_waiters: Waiters,
    durable_waiters: Waiters,
    sync_due: SyncDue,
    poisoned: Option<Arc<PoisonCause>>,
    /// Test hook: derive segment salts from this seed.
    salt_seed: Option<u64>,
    /// Commits a chain carries, a moving average (weight 1/8) scaled by 8.
    chain_commits_x8: u64,
    witness_timer: WitnessTimer,
    /// Test switch: submit chains without their sync, acknowledge as if synced.
    #[cfg(feature = "sim")]
    ack_before_sync: bool,
    /// Test switch: witnesses claim every record written, synced or not.
    #[cfg(feature = "sim")]
    witness_before_sync: bool,
}

impl Writer {
    #[expect(clippy::too_many_arguments, reason = "assembled once, by Wal::open")]
    pub(crate) fn new(
        shared: Arc<Shared>,
        backend: Box<dyn Backend>,
        dir: PathBuf,
        database_id: DatabaseId,
        segment_bytes: u64,
        active: ActiveSegment,
        preallocator: Preallocator,
        durable_through: Lsn,
        salt_seed: Option<u64>,
        witness: WitnessTiming,
    ) -> Self {
        // Wal::open starts a fresh segment when the last one is older or of another size.
        assert_eq!(active.header.version, segment::FORMAT_VERSION);
        assert_eq!(active.header.segment_bytes, segment_bytes);
        let offset = active.offset;
        Writer {
            shared,
            backend,
            database_id,
            segment_bytes,
            active,
            preallocator,
            next_chain_id: 0,
            in_flight: HashMap::new(),
            written: Watermark::new(durable_through),
            durable: Watermark::new(durable_through),
            sync_submitted_through: durable_through,
            sealed_through: durable_through,
            batch: Batch {
                offset,
                ..Batch::default()
            },
            spare_buffers: Vec::new(),
            written_waiters: VecDeque::new(),
            durable_waiters: VecDeque::new(),
            sync_due: SyncDue::default(),
            poisoned: None,
            #[cfg(feature = "sim")]
            ack_before_sync: crate::sim::lookup(&dir).is_some_and(|s| s.broken().ack_before_sync),
            #[cfg(feature = "sim")]
            witness_before_sync: crate::sim::lookup(&dir)
                .is_some_and(|s| s.broken().witness_before_sync),
            dir,
            salt_seed,
            chain_commits_x8: 0,
            witness_timer: WitnessTimer {
                timing: witness,
                idle_since: None,
                in_flight: false,
            },
        }
    }

    /// The writer thread's body: runs until the log is closed and everything is settled.
    pub(crate) fn run(mut self) {
        let mut requests = Vec::new();
        loop {
            // With no room for another chain, wait for one to finish before taking more work:
            // what arrives meanwhile then joins the next chain whole.
            while self.backend.in_flight() >= self.backend.depth() {
                self.reap(true);
            }
            let wait = self.idle_wait();
            let closing = self.shared.queue.take(&mut requests, wait);
            let staged = !requests.is_empty();
            if staged {
                self.witness_timer.idle_since = None;
            }
            for request in requests.drain(..) {
                self.stage(request);
            }
            if self.poisoned.is_none() {
                self.flush(closing);
            }
            if !staged && !closing {
                self.write_witness_when_due();
            }
            if staged {
                self.reap(false);
            } else {
                let block = self.shared.queue.park();
                self.reap(block);
            }
            if self.poisoned.is_some() {
                self.fail_all();
            }
            if closing && self.settled() {
                self.write_witness_at_close();
                break;
            }
        }
        self.drain_in_flight();
        tracing::debug!(dir = %self.dir.display(), durable = self.durable.through(), "writer stopped");
    }

    /// How long the queue may block: not at all with chains in flight, a batch staged, a
    /// sync due (a sync held back while chains were in flight must go out as soon as they
    /// complete, not wait for the next request or the Batched timer) or a witness due; until
    /// the sync deadline when unsynced data waits for the timer, or until the witness is due;
    /// else until work arrives.
    fn idle_wait(&mut self) -> Option<Option<Duration>> {
        let sync_wanted = self.sync_wanted(false);
        if self.backend.in_flight() > 0 || !self.batch.bytes.is_empty() || sync_wanted {
            return None;
        }
        let deadline = match (self.sync_due.deadline, self.witness_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match deadline {
            Some(deadline) => {
                let now = Instant::now();
                (deadline > now).then(|| Some(deadline - now))
            }
            None => Some(None),
        }
    }

    /// The witness the idle writer owes: everything sealed is durable, nothing is staged or
    /// in flight, and the durable records of the active segment go beyond what its newest
    /// witness claims. It claims them all, ending where the next record goes.
    fn witness_wanted(&self) -> Option<Witness> {
        if !self.witness_timer.timing.enabled {
            return None;
        }
        let durable = self.durable.through();
        #[cfg(feature = "sim")]
        if self.witness_before_sync && self.in_flight.is_empty() && self.poisoned.is_none() {
            return self.witness_of_everything_written();
        }
        let header = &self.active.header;
        let claimed = self
            .active
            .witness
            .map_or(header.first_lsn - 1, |w| w.durable_lsn);
        let idle = self.poisoned.is_none()
            && self.in_flight.is_empty()
            && self.batch.bytes.is_empty()
            && durable == self.sealed_through;
        (idle && durable > claimed && durable >= header.first_lsn)
            .then(|| Witness::after(self.active.witness, durable, self.active.offset))
    }

    /// The broken witness of [`crate::sim::Broken::witness_before_sync`].
    #[cfg(feature = "sim")]
    fn witness_of_everything_written(&self) -> Option<Witness> {
        let claimed = self.active.witness.map_or(0, |w| w.durable_lsn);
        let written = self.sealed_through;
        (written > claimed && written >= self.active.header.first_lsn)
            .then(|| Witness::after(self.active.witness, written, self.active.offset))
    }

    /// When the owed witness is due (the idle period starts now if it had not yet).
    fn witness_deadline(&mut self) -> Option<Instant> {
        let idle = self.witness_timer.timing.idle?;
        self.witness_wanted()?;
        let since = *self
            .witness_timer
            .idle_since
            .get_or_insert_with(Instant::now);
        Some(since + idle)
    }

    /// Writes the owed witness once the writer has been idle long enough.
    fn write_witness_when_due(&mut self) {
        let due = self.witness_deadline().is_some_and(|d| d <= Instant::now());
        if due && let Some(witness) = self.witness_wanted() {
            self.submit_witness(witness);
        }
    }

    /// At close, with everything settled: the owed witness, written and synced now.
    fn write_witness_at_close(&mut self) {
        if let Some(witness) = self.witness_wanted() {
            self.submit_witness(witness);
            self.drain_in_flight();
        }
    }

    /// Submits a witness chain: its slot written into the active segment's header block, then
    /// an fdatasync. It claims only records already durable, so it may complete in any order
    /// with later chains.
    fn submit_witness(&mut self, witness: Witness) {
        #[cfg(feature = "sim")]
        let broken = self.witness_before_sync;
        #[cfg(not(feature = "sim"))]
        let broken = false;
        assert!(broken || witness.durable_lsn <= self.durable.through());
        assert!(witness.end_offset >= HEADER_BLOCK_LEN && witness.end_offset <= self.active.offset);
        self.wait_for_capacity();
        if self.poisoned.is_some() {
            return;
        }
        let id = self.next_chain_id;
        self.next_chain_id += 1;
        let write = WriteOp {
            offset: witness::SLOT_OFFSETS[witness.slot()],
            buf: witness.encode(self.active.header.salt).to_vec(),
        };
        let info = ChainInfo {
            file: Arc::clone(&self.active.file),
            write: None,
            sync: true,
            covers: Vec::new(),
            witness: Some(witness),
        };
        self.in_flight.insert(id, info);
        self.witness_timer.idle_since = None;
        self.witness_timer.in_flight = true;
        self.backend.submit(Chain {
            id,
            file: Arc::clone(&self.active.file),
            write: Some(write),
            sync: true,
            alone: false,
            witness: true,
        });
    }

    fn settled(&self) -> bool {
        self.backend.in_flight() == 0
            && self.batch.bytes.is_empty()
            && (self.poisoned.is_some() || self.durable.through() == self.sealed_through)
    }

    fn stage(&mut self, request: Request) {
        if let Some(cause) = &self.poisoned {
            let cause = Arc::clone(cause);
            return refuse(request, || Error::Poisoned {
                cause: Arc::clone(&cause),
            });
        }
        match request {
            Request::Append(append) => self.stage_append(append),
            Request::Sync { through, resolver } => {
                if through <= self.durable.through() {
                    resolver.resolve(Ok(through));
                } else {
                    self.durable_waiters.push_back((through, resolver));
                    self.sync_due.now = true;
                }
            }
        }
    }

    fn stage_append(&mut self, append: AppendRequest) {
        let AppendRequest {
            first_lsn,
            batch,
            ack,
            max_delay,
            max_bytes,
            resolver,
            placed,
        } = append;
        assert_eq!(
            first_lsn,
            self.sealed_through + 1,
            "LSNs are assigned densely in queue order"
        );
        let mut bytes = batch.bytes;
        let mut at = 0;
        let mut lsn = first_lsn;
        let mut positions = Vec::with_capacity(if placed.is_some() {
            batch.count as usize
        } else {
            0
        });
        while at < bytes.len() && self.poisoned.is_none() {
            let len = record::record_len(get_u32(&bytes, at + record::PAYLOAD_LEN_OFFSET) as usize);
            if self.active.offset + len as u64 > self.active.header.segment_bytes {
                self.rotate(lsn);
                if self.poisoned.is_some() {
                    break;
                }
            }
            // Records were checked against `max_record_bytes`, which fits an empty segment.
            assert!(
                self.active.offset + len as u64 <= self.active.header.segment_bytes,
                "a record of {len} bytes does not fit its segment"
            );
            let sealed = record::seal(
                &mut bytes[at..at + len],
                lsn,
                self.durable.through(),
                self.active.header.salt,
            );
            debug_assert_eq!(sealed, len);
            if placed.is_some() {
                positions.push(RecordPosition {
                    segment: self.active.header.first_lsn,
                    offset: self.active.offset,
                    lsn,
                });
            }
            self.append_to_batch(&bytes[at..at + len], lsn);
            at += len;
            lsn += 1;
            if self.batch.bytes.len() >= MAX_BATCH_BYTES {
                self.submit_batch(false);
            }
        }
        self.batch.commits += 1;
        self.shared.counters.commits.fetch_add(1, Relaxed);
        self.shared
            .counters
            .entries
            .fetch_add(u64::from(batch.count), Relaxed);
        let last_lsn = lsn - 1;
        if let Some(placed) = placed
            && self.poisoned.is_none()
        {
            (placed.0)(&positions);
        }
        match (ack, resolver) {
            (_, None) => {}
            (AckLevel::Durable, Some(resolver)) => {
                self.durable_waiters.push_back((last_lsn, resolver));
                self.sync_due.now = true;
            }
            (_, Some(resolver)) => self.written_waiters.push_back((last_lsn, resolver)),
        }
        if ack != AckLevel::Durable {
            let deadline = Instant::now() + max_delay;
            self.sync_due.deadline =
                Some(self.sync_due.deadline.map_or(deadline, |d| d.min(deadline)));
            self.sync_due.bytes_limit = self.sync_due.bytes_limit.min(max_bytes);
        }
        if let Some(cause) = &self.poisoned {
            let cause = Arc::clone(cause);
            self.fail_waiters(&cause);
        }
    }

    fn append_to_batch(&mut self, record: &[u8], lsn: Lsn) {
        if self.batch.bytes.is_empty() {
            self.batch.offset = self.active.offset;
            self.batch.lsns = Some((lsn, lsn));
            if self.batch.bytes.capacity() == 0 {
                self.batch.bytes = self.spare_buffers.pop().unwrap_or_default();
            }
        }
        self.batch.bytes.extend_from_slice(record);
        if let Some((_, last)) = &mut self.batch.lsns {
            *last = lsn;
        }
        self.active.offset += record.len() as u64;
        self.sealed_through = lsn;
        self.sync_due.unsynced_bytes += record.len() as u64;
    }

    /// Whether a sync is due and has something to cover.
    fn sync_wanted(&self, closing: bool) -> bool {
        self.sync_due.is_due(Instant::now(), closing)
            && self.sealed_through > self.sync_submitted_through
    }

    /// Submits what is staged: the batch (with a linked sync when one is due), or a sync
    /// alone when only a sync is due.
    fn flush(&mut self, closing: bool) {
        let sync = self.sync_wanted(closing);
        if self.hold_batch(closing) {
            return;
        }
        if !self.batch.bytes.is_empty() {
            self.submit_batch(sync);
        } else if sync {
            self.submit_sync();
        }
        if self.sync_due.now && self.sealed_through <= self.sync_submitted_through {
            self.sync_due.now = false;
        }
    }

    /// Whether the staged batch should wait for more commits instead of overlapping the
    /// chains in flight. An overlapping chain pays for itself only when it carries as many
    /// commits as the newest one in flight: smaller ones split the group commit into more
    /// fsyncs, each slower under concurrency, and lose throughput (measured: see
    /// `docs/DESIGN.md`, "Pipelining"). With nothing in flight nothing is held.
    fn hold_batch(&self, closing: bool) -> bool {
        let record_chains = self.in_flight.len() - usize::from(self.witness_timer.in_flight);
        !closing
            && record_chains > 0
            && self.batch.bytes.len() < MAX_BATCH_BYTES
            && u64::from(self.batch.commits) * 8 < self.chain_commits_x8
    }

    /// A sync covers only writes complete before it starts, so before one is submitted every
    /// write-only chain in flight must complete: then every sealed record is covered either by
    /// this sync or by the sync linked to its own write.
    fn wait_for_unsynced_writes(&mut self) {
        while self.in_flight.values().any(|chain| !chain.sync) && self.poisoned.is_none() {
            self.reap(true);
        }
    }

    fn wait_for_capacity(&mut self) {
        while self.backend.in_flight() >= self.backend.depth() {
            self.reap(true);
        }
    }

    fn submit_batch(&mut self, sync: bool) {
        self.wait_for_capacity();
        let batch = std::mem::take(&mut self.batch);
        let (first, last) = batch.lsns.expect("a non-empty batch has LSNs");
        let write = WriteOp {
            offset: batch.offset,
            buf: batch.bytes,
        };
        self.submit(Some(write), Some((first, last)), sync, batch.commits);
        self.batch.offset = self.active.offset;
    }

    /// A sync alone covers only writes already completed, so it waits for those in flight.
    fn submit_sync(&mut self) {
        while self.backend.in_flight() > 0 {
            self.reap(true);
        }
        if self.poisoned.is_some() {
            return;
        }
        self.submit(None, None, true, 0);
    }

    fn submit(
        &mut self,
        write: Option<WriteOp>,
        lsns: Option<(Lsn, Lsn)>,
        sync: bool,
        commits: u32,
    ) {
        if sync {
            self.wait_for_unsynced_writes();
        }
        if self.poisoned.is_some() {
            // Nothing is written after a failure; the batch's waiters fail with the cause.
            return;
        }
        let bytes = write.as_ref().map_or(0, |w| w.buf.len());
        self.shared.counters.record_io(bytes, commits, sync);
        let covers = if sync {
            self.written
                .complete_ranges_from(self.active.header.first_lsn)
        } else {
            Vec::new()
        };
        let id = self.next_chain_id;
        self.next_chain_id += 1;
        let info = ChainInfo {
            file: Arc::clone(&self.active.file),
            write: lsns,
            sync,
            covers,
            witness: None,
        };
        if sync {
            self.sync_submitted_through = self.sealed_through.max(self.sync_submitted_through);
            self.sync_due = SyncDue::default();
        }
        // A chain runs alone when nothing is in flight and no other commit waits to join a
        // chain behind it: then a backend may run it directly (see the uring backend).
        let alone = self.in_flight.is_empty() && self.shared.queue.is_empty();
        if write.is_some() {
            self.chain_commits_x8 =
                self.chain_commits_x8 - self.chain_commits_x8 / 8 + u64::from(commits);
        }
        self.in_flight.insert(id, info);
        #[cfg(feature = "sim")]
        let sync = sync && !self.ack_before_sync;
        self.backend.submit(Chain {
            id,
            file: Arc::clone(&self.active.file),
            write,
            sync,
            alone,
            witness: false,
        });
    }

    /// Collects completions (blocking for one when `block`), advances the watermarks and
    /// releases waiters.
    fn reap(&mut self, block: bool) {
        let in_flight = self.backend.in_flight();
        if in_flight == 0 {
            return;
        }
        let mut completions = Vec::new();
        self.backend.wait(usize::from(block), &mut completions);
        for completion in completions {
            let info = self
                .in_flight
                .remove(&completion.id)
                .expect("completion of a known chain");
            if let Some(mut buf) = completion.buf
                && info.witness.is_none()
            {
                buf.clear();
                self.spare_buffers.push(buf);
            }
            if info.witness.is_some() {
                self.witness_timer.in_flight = false;
            }
            match completion.result {
                Ok(()) => self.completed(&info),
                Err(failure) => {
                    let path = info.file.path.clone();
                    self.poison(PoisonCause {
                        operation: failure.operation,
                        path,
                        error: failure.error,
                    });
                }
            }
        }
        self.release_waiters();
    }

    fn completed(&mut self, info: &ChainInfo) {
        if let Some(witness) = info.witness {
            // The rotation barrier drains every chain before the segment changes.
            assert!(Arc::ptr_eq(&info.file, &self.active.file));
            self.active.witness = Some(witness);
            self.shared.counters.witnesses.fetch_add(1, Relaxed);
            self.shared
                .counters
                .witness_lsn
                .store(witness.durable_lsn, Relaxed);
        }
        if let Some((first, last)) = info.write {
            self.written.complete(first, last);
        }
        if info.sync {
            for &(first, last) in info.covers.iter().chain(&info.write) {
                self.durable.complete(first, last);
            }
        }
    }

    fn release_waiters(&mut self) {
        if self.poisoned.is_some() {
            return;
        }
        crate::watermark::publish(
            &self.shared.counters,
            self.written.through(),
            self.durable.through(),
            &mut self.written_waiters,
            &mut self.durable_waiters,
        );
    }

    fn poison(&mut self, cause: PoisonCause) {
        if self.poisoned.is_some() {
            return;
        }
        tracing::error!(%cause, "write-ahead log poisoned: every pending and later commit fails");
        let cause = Arc::new(cause);
        self.shared.queue.poison(Arc::clone(&cause));
        self.poisoned = Some(Arc::clone(&cause));
        self.fail_waiters(&cause);
    }

    fn fail_waiters(&mut self, cause: &Arc<PoisonCause>) {
        let waiters = self
            .written_waiters
            .drain(..)
            .chain(self.durable_waiters.drain(..));
        for (_, resolver) in waiters {
            resolver.resolve(Err(Error::Poisoned {
                cause: Arc::clone(cause),
            }));
        }
    }

    fn fail_all(&mut self) {
        let cause = Arc::clone(self.poisoned.as_ref().expect("poisoned"));
        self.fail_waiters(&cause);
        self.batch = Batch::default();
        self.sync_due = SyncDue::default();
        let mut late = Vec::new();
        self.shared.queue.take(&mut late, None);
        for request in late {
            refuse(request, || Error::Poisoned {
                cause: Arc::clone(&cause),
            });
        }
    }

    fn drain_in_flight(&mut self) {
        while self.backend.in_flight() > 0 {
            self.reap(true);
        }
    }

    /// Starts the segment whose first record is `first_lsn`, after the barrier: the staged
    /// batch written and synced, every chain of the old segment complete.
    fn rotate(&mut self, first_lsn: Lsn) {
        let _span = tracing::info_span!("rotation", first_lsn).entered();
        if !self.batch.bytes.is_empty() {
            self.submit_batch(true);
        } else if self.sealed_through > self.sync_submitted_through {
            self.submit_sync();
        }
        self.drain_in_flight();
        if self.poisoned.is_some() {
            return;
        }
        if let Err(error) = self.start_segment(first_lsn) {
            let error = match error {
                Error::Io { source, .. } => source,
                other => std::io::Error::other(other.to_string()),
            };
            let path = self.dir.join(segment::file_name(first_lsn));
            self.poison(PoisonCause {
                operation: "creating segment",
                path,
                error,
            });
        }
    }

    fn start_segment(&mut self, first_lsn: Lsn) -> crate::error::Result<()> {
        let (spare, waited) = self.preallocator.take()?;
        let header = SegmentHeader::new(
            self.database_id,
            first_lsn,
            self.segment_bytes,
            self.salt_seed,
        )
        .map_err(|e| Error::io("generating salt for", &spare.path, e))?;
        let path = self.dir.join(segment::file_name(first_lsn));
        install_segment(&spare.file, &spare.path, &path, &header)?;
        self.preallocator.replenish();
        self.shared.counters.rotations.fetch_add(1, Relaxed);
        self.shared
            .counters
            .rotation_waits
            .fetch_add(u64::from(waited), Relaxed);
        tracing::info!(segment = %path.display(), first_lsn, waited_for_preallocation = waited, "rotated segment");
        self.active = ActiveSegment {
            file: Arc::new(IoFile {
                file: spare.file,
                path,
            }),
            header,
            offset: HEADER_BLOCK_LEN,
            witness: None,
        };
        self.batch.offset = HEADER_BLOCK_LEN;
        Ok(())
    }
}

impl Drop for Writer {
    /// However the writer stops (a panic included), later and queued requests are refused
    /// instead of waiting for a thread that is gone.
    fn drop(&mut self) {
        self.shared.queue.writer_stopped();
    }
}

/// Turns a zero-filled spare into the segment `path`: header written and synced, the file
/// renamed, the directory synced. Nothing in it is acknowledged before this returns.
pub(crate) fn install_segment(
    file: &std::fs::File,
    spare_path: &std::path::Path,
    path: &std::path::Path,
    header: &SegmentHeader,
) -> crate::error::Result<()> {
    debug_assert!(RECORD_HEADER_LEN as u64 <= HEADER_BLOCK_LEN);
    let len = file
        .metadata()
        .map_err(|e| Error::io("reading metadata of", spare_path, e))?
        .len();
    assert_eq!(
        len,
        header.segment_bytes,
        "{} is installed with the size its header declares",
        spare_path.display()
    );
    file.write_all_at(&header.encode(), 0)
        .map_err(|e| Error::io("writing header of", spare_path, e))?;
    crate::fsutil::sync_file(file, spare_path, false)?;
    std::fs::rename(spare_path, path).map_err(|e| Error::io("renaming spare to", path, e))?;
    let dir = path.parent().expect("segments live in a directory");
    #[cfg(feature = "sim")]
    if crate::sim::lookup(dir).is_some_and(|s| s.broken().skip_rotation_dir_sync) {
        return Ok(());
    }
    crate::fsutil::sync_dir(dir)
}
