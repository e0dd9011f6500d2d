//! The log handle: appending, syncing, reading back, closing; resuming it where a recovery
//! left it is in [`resume`].

mod resume;

pub use resume::{LogEnd, RecoveredLog};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::thread::JoinHandle;

use crate::backend::BackendKind;
use crate::dir::fsutil;
use crate::dir::storage::Storage;
use crate::error::{Error, Result};
use crate::format::entry::WalEntry;
use crate::format::reader::{self, OwnedRecord, RecordPosition};
use crate::format::record::EncodedBatch;
use crate::format::segment::{self, SegmentFile, SegmentHeader};
use crate::ids::{DatabaseId, Lsn};
use crate::options::Durability;
use crate::tail::Tail;
use crate::writer::Shared;
use crate::writer::completion::{Appended, CommitFuture};
use crate::writer::queue::{OnPlaced, WriterWake};
use crate::writer::stats::WalStats;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Payload bytes reserved for the closing entry of [`Wal::append_closed_by`] before the queue
/// lock is taken (a `CommitSpan` or `Checkpoint` archive is well under it; a larger entry is
/// still framed, with a copy of the batch).
const CLOSING_ENTRY_PAYLOAD_HINT: usize = 128;

/// What opening found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSummary {
    /// Segments present.
    pub segments: usize,
    /// LSN the next record gets.
    pub next_lsn: Lsn,
    /// Non-zero bytes of a torn tail that were zeroed.
    pub truncated_bytes: u64,
    /// Files in the directory that are not Keel's (left alone).
    pub unknown_files: Vec<PathBuf>,
    /// True when the log was created by this open.
    pub created: bool,
}

/// A write-ahead log, open for appends. Cheap to share behind an `Arc`: every method takes
/// `&self`. Dropping it finishes what is queued, syncs, and joins the writer thread.
#[derive(Debug)]
pub struct Wal {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    /// The writer's state, for committers that write their own appends ([`Wal::append_wait`]).
    baton: Arc<crate::writer::baton::Baton>,
    dir: PathBuf,
    database_id: DatabaseId,
    durability: Durability,
    max_record_bytes: u32,
    segment_bytes: u64,
    tail_max_lag_bytes: u64,
    backend: BackendKind,
    summary: OpenSummary,
    /// Segments opened by [`Wal::read_record`], by first LSN.
    read_files: Mutex<ReadFiles>,
    /// Where removed segments go when they are recycled ([`crate::WalOptions::recycle_segments`]).
    recycler: crate::dir::prealloc::Recycler,
    storage: Arc<dyn Storage>,
    _lock: File,
}

impl Wal {
    /// Appends `entries` as one unit with the log's default durability: consecutive LSNs,
    /// one write, acknowledged together. Resolves with the LSN of the last entry.
    pub fn append(&self, entries: &[WalEntry]) -> CommitFuture {
        self.append_with(entries, self.durability)
    }

    /// Appends `entries` as one unit with the given durability (a `Strict` commit inside a
    /// `Batched` log, say).
    pub fn append_with(&self, entries: &[WalEntry], durability: Durability) -> CommitFuture {
        match self.encode(entries) {
            Ok(batch) => self.append_encoded(batch, durability),
            Err(error) => CommitFuture::ready(Err(error)),
        }
    }

    /// Appends `entries` with the log's default durability and waits, blocking this thread,
    /// until the append is acknowledged: what `append(entries).wait()` does, and faster for
    /// a lone committer. When the writer thread is idle, the calling thread writes (and, as
    /// the durability asks, syncs) the append itself, with other `append_wait` appends
    /// queued beside it, instead of waking the writer thread and sleeping until it answers;
    /// when the writer is busy, the append joins its next chain as usual. Other commits'
    /// callbacks (`placed`, [`CommitFuture::on_resolved`]) never run on the calling thread.
    /// Resolves with the LSN of the last entry.
    ///
    /// For blocking code: it may wait for an `fdatasync` on the calling thread, so async
    /// code awaits [`Wal::append`] instead.
    pub fn append_wait(&self, entries: &[WalEntry]) -> Result<Lsn> {
        self.append_encoded_wait(self.encode(entries)?, self.durability)
    }

    /// [`Wal::append_wait`] for entries framed beforehand, with the given durability.
    pub fn append_encoded_wait(&self, batch: EncodedBatch, durability: Durability) -> Result<Lsn> {
        self.check_batch(&batch)?;
        let (_, future, wake) =
            self.shared
                .queue
                .append_closed_deferring(batch, durability, None, |_, _| Ok(()), true);
        if let Some(wake) = wake {
            wake.with_baton(&self.baton).drive(&future);
        }
        future.wait()
    }

    /// Frames `entries` for [`Wal::append_encoded`] and its kin, as [`EncodedBatch::encode`]
    /// does with this log's [`Wal::max_record_bytes`], into a buffer the writer handed back
    /// from an earlier append: a log's callers should frame through it, so that appends
    /// neither allocate nor leave the writer freeing their memory.
    pub fn encode(&self, entries: &[WalEntry]) -> Result<EncodedBatch> {
        let buffer = self.shared.buffers.take();
        if buffer.capacity() > 0 {
            self.shared.counters.buffers_reused.fetch_add(1, Relaxed);
        }
        EncodedBatch::encode_into(buffer, entries, self.max_record_bytes)
    }

    /// Appends entries framed beforehand with [`EncodedBatch::encode`]. A record over this
    /// log's [`Wal::max_record_bytes`] is refused, whatever limit it was framed with.
    pub fn append_encoded(&self, batch: EncodedBatch, durability: Durability) -> CommitFuture {
        self.append_encoded_at(batch, durability).future
    }

    /// Appends as [`Wal::append_encoded`] does, and says which LSNs the records got
    /// ([`Appended::lsns`], `None` when refused). The LSNs are assigned under the queue's
    /// lock as the append is queued, so they are the append's own whatever other threads
    /// append meanwhile: a caller never needs [`Wal::next_lsn`] to learn where its append
    /// went.
    pub fn append_encoded_at(&self, batch: EncodedBatch, durability: Durability) -> Appended {
        if let Err(error) = self.check_batch(&batch) {
            return Appended::refused(error);
        }
        let (lsns, future) = self.shared.queue.append(batch, durability, None);
        Appended { lsns, future }
    }

    /// Appends `batch` (possibly empty) followed by one closing entry that names where the
    /// unit begins: `closing` is called once, under the queue's lock, with the LSN the unit's
    /// first record gets (the batch's first, or the closing entry's own when the batch is
    /// empty), and the entry it returns is framed as the unit's last record. This is how a
    /// commit record names its transaction's first LSN (`CommitSpan { first_lsn }`) and how a
    /// marker names its own LSN, with no race against other appenders.
    ///
    /// `closing` runs while every other appender waits: keep it to building the entry. A
    /// closing entry over [`Wal::max_record_bytes`] refuses the whole append, as a refused
    /// log does (`lsns` is `None`, the future holds the error).
    pub fn append_closed_by(
        &self,
        batch: EncodedBatch,
        durability: Durability,
        closing: impl FnOnce(Lsn) -> WalEntry,
    ) -> Appended {
        let (appended, wake) = self.append_closed_by_deferring_wake(batch, durability, closing);
        drop(wake);
        appended
    }

    /// [`Wal::append_closed_by`], with the writer's wake left to the returned guard (`None`
    /// when the append was refused): for a caller that appends under a lock of its own and
    /// releases it before dropping the guard, so other appenders waiting for that lock do
    /// not also wait for the wake's syscall. The writer may sleep on the append until the
    /// guard is dropped.
    pub fn append_closed_by_deferring_wake(
        &self,
        batch: EncodedBatch,
        durability: Durability,
        closing: impl FnOnce(Lsn) -> WalEntry,
    ) -> (Appended, Option<WriterWake<'_>>) {
        self.append_closed_with_wake(batch, durability, closing, false)
    }

    /// [`Wal::append_closed_by_deferring_wake`] for a caller that will wait for the append
    /// on its own thread: once its locks are released, it calls [`WriterWake::drive`] with
    /// the append's future (or drops the guard), then waits for the future. When the append
    /// found the writer idle, the drive writes it on the caller's thread, as
    /// [`Wal::append_wait`] does. A driver may write other committers' appends made this way
    /// too, and resolve their futures: give such a future no [`CommitFuture::on_resolved`]
    /// callback. A driver leaves an append whose future has one to the writer thread, but a
    /// callback given after a driver took the append runs on that driver's thread (a panic
    /// in it is caught there, as on the writer thread).
    pub fn append_closed_by_driving(
        &self,
        batch: EncodedBatch,
        durability: Durability,
        closing: impl FnOnce(Lsn) -> WalEntry,
    ) -> (Appended, Option<WriterWake<'_>>) {
        self.append_closed_with_wake(batch, durability, closing, true)
    }

    fn append_closed_with_wake(
        &self,
        mut batch: EncodedBatch,
        durability: Durability,
        closing: impl FnOnce(Lsn) -> WalEntry,
        may_drive: bool,
    ) -> (Appended, Option<WriterWake<'_>>) {
        if batch.largest_payload > self.max_record_bytes {
            let error = Error::RecordTooLarge {
                size: batch.largest_payload.into(),
                max: self.max_record_bytes.into(),
            };
            return (Appended::refused(error), None);
        }
        // Room for a small closing entry, so framing it under the lock copies no batch.
        batch.reserve_record(CLOSING_ENTRY_PAYLOAD_HINT);
        let max_record_bytes = self.max_record_bytes;
        let (lsns, future, wake) = self.shared.queue.append_closed_deferring(
            batch,
            durability,
            None,
            |batch, first_lsn| batch.push(&closing(first_lsn), max_record_bytes),
            may_drive,
        );
        let wake = wake.map(|wake| wake.with_baton(&self.baton));
        (Appended { lsns, future }, wake)
    }

    /// A batch must hold an entry, and no record larger than this log takes (the limit its
    /// segments were sized for).
    fn check_batch(&self, batch: &EncodedBatch) -> Result<()> {
        if batch.is_empty() {
            return Err(Error::Encode("an append needs at least one entry".into()));
        }
        if batch.largest_payload > self.max_record_bytes {
            return Err(Error::RecordTooLarge {
                size: batch.largest_payload.into(),
                max: self.max_record_bytes.into(),
            });
        }
        Ok(())
    }

    /// Appends entries framed beforehand with [`EncodedBatch::encode`] (so that a record too
    /// large is refused before anything is queued), and reports where each record went:
    /// `placed` is called once, on the writer thread, with one [`RecordPosition`] per entry
    /// in order, as soon as the records are placed in their segment (before they are
    /// written). It is not called if the append fails before being placed. Keep it short and
    /// never wait in it for the log: the writer waits for it.
    ///
    /// A record can be read back by its position with [`Wal::read_record`] once its commit
    /// resolved, until a [`Wal::remove_segments_before`] removes its segment. Components
    /// built on the log (the Raft log store) keep these positions as their index.
    pub fn append_placed(
        &self,
        batch: EncodedBatch,
        durability: Durability,
        placed: impl FnOnce(&[RecordPosition]) + Send + 'static,
    ) -> CommitFuture {
        if let Err(error) = self.check_batch(&batch) {
            return CommitFuture::ready(Err(error));
        }
        self.shared
            .queue
            .append(batch, durability, Some(OnPlaced(Box::new(placed))))
            .1
    }

    /// Reads back the one record at `position` (from [`Wal::append_placed`] or a reader's
    /// [`crate::RecordRef::position`]) with a positioned read: both checksums and the archive
    /// are verified, and the record must carry the LSN the position names. The record must
    /// have been written (its commit resolved); a removed segment is an I/O error
    /// (`NotFound`), damage a [`Error::Corruption`].
    pub fn read_record(&self, position: RecordPosition) -> Result<OwnedRecord> {
        let segment = self.read_file(position.segment)?;
        let path = self.dir.join(segment::file_name(position.segment));
        match reader::read_record_at(&segment.0, &path, &segment.1, position) {
            // A removal that raced this read recycled the file, and a later segment wrote
            // over it: what the open file holds is no longer this segment's, and no damage.
            // Removed, as a read after the removal reports it.
            Err(Error::Corruption { .. }) if !holds_segment(&path, &segment.1) => {
                self.read_files().open.remove(&position.segment);
                Err(Error::io(
                    "reading record from",
                    path,
                    std::io::ErrorKind::NotFound.into(),
                ))
            }
            read => read,
        }
    }

    fn read_files(&self) -> std::sync::MutexGuard<'_, ReadFiles> {
        self.read_files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The segment starting at `first_lsn`, opened for reading once and kept (unless a
    /// removal took it meanwhile: then it serves this read only, never holding a removed
    /// file, and its disk space, open).
    fn read_file(&self, first_lsn: Lsn) -> Result<Arc<(File, SegmentHeader)>> {
        if let Some(open) = self.read_files().open.get(&first_lsn) {
            return Ok(Arc::clone(open));
        }
        let segment = SegmentFile {
            path: self.dir.join(segment::file_name(first_lsn)),
            first_lsn,
        };
        let file = File::open(&segment.path)
            .map_err(|e| Error::io("opening segment", &segment.path, e))?;
        let header = match segment::read_header(&file, &segment) {
            Ok(header) => header,
            // Recycled between the open and this read, and rewritten as a later segment:
            // removed, as an open after the removal finds it.
            Err(Error::Corruption { .. }) if first_lsn < self.read_files().removing_below => {
                return Err(Error::io(
                    "opening segment",
                    &segment.path,
                    std::io::ErrorKind::NotFound.into(),
                ));
            }
            Err(error) => return Err(error),
        };
        if header.database_id != self.database_id {
            return Err(Error::ForeignDatabase {
                path: segment.path,
                expected: self.database_id,
                found: header.database_id,
            });
        }
        let open = Arc::new((file, header));
        let mut files = self.read_files();
        if first_lsn >= files.removing_below {
            files.open.insert(first_lsn, Arc::clone(&open));
        }
        Ok(open)
    }

    /// Follows the log from `from` (at least 1): its records in LSN order, each once it is
    /// durable, as a [`futures::Stream`] that waits for the writer at the durable position
    /// and ends when the log is closed (see [`Tail`]). Reading does not hold the log back:
    /// a position a checkpoint removed is [`Error::LsnRemoved`].
    pub fn tail(&self, from: Lsn) -> Tail {
        self.tail_keeping(from, None)
    }

    /// [`Wal::tail`], keeping the log from `keep_from` on too from the start, as
    /// [`Tail::keep_from`] does once the tail exists (no removal comes between the two).
    pub fn tail_keeping(&self, from: Lsn, keep_from: Option<Lsn>) -> Tail {
        Tail::new(
            Arc::clone(&self.shared),
            self.dir.clone(),
            self.database_id,
            from,
            self.tail_max_lag_bytes,
            keep_from,
        )
    }

    /// Resolves once every entry appended before this call is durable, whatever its mode.
    pub fn sync(&self) -> CommitFuture {
        self.shared.queue.sync()
    }

    /// Resolves once every entry up to `through` (clipped to the entries appended before
    /// this call) has reached the point where an append under `durability` resolves:
    /// durable (`Strict`, as [`Wal::sync`]), written (`Batched`), or queued (`Async`: at
    /// once). It forces nothing the mode would not: a `Batched` wait starts no sync. For a
    /// caller that must see some earlier appends acknowledged, under their own mode, before
    /// a later one counts (the engine's commits of weaker durability than their database's,
    /// which become visible only after the commits before them): `through` is the last of
    /// those, so the wait covers nothing appended after them.
    pub fn barrier(&self, through: Lsn, durability: Durability) -> CommitFuture {
        self.shared
            .queue
            .wait_for(durability.ack_level(), Some(through))
    }

    /// Deletes every segment all of whose records are below `lsn`, then syncs the directory;
    /// the last segment (the one appended to) is never deleted. Returns how many were
    /// deleted. With [`crate::WalOptions::recycle_segments`], up to that many become spares that
    /// later segments are written into, instead of being deleted (counted as deleted: their
    /// segment names are gone). For a checkpoint that made everything below `lsn` redundant. Live tails keep
    /// the log from their positions, each up to [`crate::WalOptions::tail_max_lag_bytes`] (see
    /// [`Tail`]).
    pub fn remove_segments_before(&self, lsn: Lsn) -> Result<usize> {
        let segments = crate::dir::list_directory(&self.dir)?.segments;
        // Not past a live tail's position, unless it is too far behind (then it ends).
        let (lsn, let_go) =
            self.shared
                .holds
                .clamp(lsn, &segments, self.segment_bytes, self.tail_max_lag_bytes);
        if let_go {
            self.shared.watch.notify_all();
        }
        let mut removed = 0;
        for pair in segments.windows(2) {
            if pair[1].first_lsn > lsn {
                break;
            }
            {
                // Before the file goes: a read that opened it meanwhile does not keep it.
                let mut files = self.read_files();
                files.open.remove(&pair[0].first_lsn);
                files.removing_below = files.removing_below.max(pair[1].first_lsn);
            }
            if self.recycler.recycle(&pair[0].path)? {
                removed += 1;
                continue;
            }
            match self.storage.remove_file(&pair[0].path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing segment", &pair[0].path, e)),
            }
            // Oldest first, each removal durable before the next: unsynced unlinks may
            // persist in any order, and a crash must never leave a hole in the log.
            fsutil::sync_dir(self.storage.as_ref(), &self.dir)?;
        }
        if removed > 0 {
            tracing::info!(dir = %self.dir.display(), removed, below_lsn = lsn, "removed covered segments");
        }
        Ok(removed)
    }

    /// Counters.
    pub fn stats(&self) -> WalStats {
        self.shared.counters.snapshot(self.backend)
    }

    /// Every LSN up to this one is durable: [`WalStats::durable_lsn`] alone, read without
    /// gathering the other counters (an engine asks for it on every commit).
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.counters.durable_lsn.load(Relaxed)
    }

    /// Every LSN up to this one has reached the kernel: [`WalStats::written_lsn`] alone.
    pub fn written_lsn(&self) -> Lsn {
        self.shared.counters.written_lsn.load(Relaxed)
    }

    /// Bytes written to segments since open: [`WalStats::bytes_written`] alone.
    pub fn bytes_written(&self) -> u64 {
        self.shared.counters.bytes_written.load(Relaxed)
    }

    /// Bytes of every record appended since open, written yet or still queued (a
    /// `Batched` append waits for its timer): what the log will have grown by.
    pub fn bytes_appended(&self) -> u64 {
        self.shared.queue.appended_bytes()
    }

    /// Registers `hook`, called with the written and the durable LSNs each time either
    /// moves: after they are published (so [`Wal::durable_lsn`] reads them) and before the
    /// commits they cover resolve. False when a hook is registered already (it stays).
    ///
    /// It runs on the writer's thread, or on a committer's that drives the writer
    /// ([`Wal::append_wait`]), so it must not block: it may try a lock, never wait for one,
    /// and never wait for the log. A panic in it is logged; the commits resolve regardless.
    /// An engine applies its acknowledged commits there, so that the committers woken next
    /// find them applied.
    pub fn on_acknowledged(&self, hook: impl Fn(Lsn, Lsn) + Send + Sync + 'static) -> bool {
        self.shared.acknowledged.set(Box::new(hook))
    }

    /// The LSN the next appended entry gets.
    pub fn next_lsn(&self) -> Lsn {
        self.shared.queue.next_lsn()
    }

    /// The database this log belongs to.
    pub fn database_id(&self) -> DatabaseId {
        self.database_id
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The largest payload one entry may have.
    pub fn max_record_bytes(&self) -> u32 {
        self.max_record_bytes
    }

    /// What opening found.
    pub fn open_summary(&self) -> &OpenSummary {
        &self.summary
    }

    /// Deterministic scheduling, for simulations and tests: while held, the writer takes no
    /// request, so that what is queued meanwhile is taken at once and batches form the same
    /// way on every run. Holding delays work, never drops it.
    pub fn hold_writer(&self, held: bool) {
        self.shared.queue.hold(held);
    }

    /// Whether the writer is blocked waiting for requests (with everything queued taken,
    /// unless held): the point at which a deterministic test takes its next step.
    pub fn writer_idle(&self) -> bool {
        self.shared.queue.writer_idle()
    }

    /// Finishes what is queued, syncs it, and stops the writer. Fails if the log was
    /// poisoned, with the cause.
    pub fn close(mut self) -> Result<()> {
        self.shutdown();
        match self.shared.queue.poisoned() {
            Some(cause) => Err(Error::Poisoned { cause }),
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) {
        self.shared.queue.close();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(dir = %self.dir.display(), "the writer thread panicked");
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The segments [`Wal::read_record`] keeps open, by first LSN.
#[derive(Debug, Default)]
pub(crate) struct ReadFiles {
    open: HashMap<Lsn, Arc<(File, SegmentHeader)>>,
    /// Segments starting below this LSN are being (or were) removed: none is kept open.
    removing_below: Lsn,
}

/// Whether the file at `path` still begins with `header`: false once it was removed or
/// recycled (a recycled file's header names its new segment, under a new salt).
fn holds_segment(path: &Path, header: &SegmentHeader) -> bool {
    let mut block = [0u8; segment::HEADER_LEN];
    File::open(path).is_ok_and(|file| {
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut block, 0).is_ok()
            && SegmentHeader::decode(&block, path).is_ok_and(|found| found == *header)
    })
}
