//! Resuming the log where a recovery left it: the recovery (keel-recovery) took the lock,
//! listed the directory, read the identity, validated every segment and repaired the tail; the
//! log trusts what it established ([`RecoveredLog`]) and reads none of it again. Here: the
//! identity of a new log, the spares, a fresh segment when appends may not continue in the
//! last one, the syncs a crashed process may have skipped, then the writer thread.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{OpenSummary, Wal};
use crate::backend::{Backend, IoFile};
use crate::dir::DirectoryListing;
use crate::dir::fsutil;
use crate::dir::prealloc::Preallocator;
use crate::dir::storage::{self, Storage};
use crate::error::{Error, Result};
use crate::format::segment::{self, Continuation, HEADER_BLOCK_LEN, SegmentHeader};
use crate::format::witness::Witness;
use crate::ids::{DatabaseId, Lsn};
use crate::options::WalOptions;
use crate::writer::Shared;
use crate::writer::baton::Baton;
use crate::writer::durable_watch::DurableWatch;
use crate::writer::queue::Queue;
use crate::writer::stats::Counters;
use crate::writer::{ActiveSegment, WitnessTiming, Writer};

/// Where the log's verified records end: the last segment's header, the offset the next
/// record goes to, and the segment's newest valid durable witness (which claims nothing
/// beyond that offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogEnd {
    /// The header of the last segment, verified.
    pub header: SegmentHeader,
    /// The offset in the last segment where its last valid record ends: the next append's.
    pub offset: u64,
    /// The last segment's newest valid durable witness, if it has one.
    pub witness: Option<Witness>,
}

/// What a recovery established about a log directory, for [`Wal::resume`]: the directory's
/// lock (held since before anything was read), its identity, the files that make up the log
/// after the repair, where its records end and the LSN the next record gets. Built by
/// keel-recovery; [`RecoveredLog::new`] checks that its parts agree.
#[derive(Debug)]
pub struct RecoveredLog {
    dir: PathBuf,
    lock: File,
    database_id: Option<DatabaseId>,
    listing: DirectoryListing,
    end: Option<LogEnd>,
    next_lsn: Lsn,
    truncated_bytes: u64,
}

impl RecoveredLog {
    /// The state of the log in `dir`, locked by `lock`: its identity (`None`: none yet),
    /// its files (`listing`, segments in LSN order), the end of the last segment's records
    /// (`None` exactly when there is no segment), the next LSN, and the non-zero bytes the
    /// repair zeroed. Refuses parts that disagree (a programming error of the caller).
    pub fn new(
        dir: &Path,
        lock: File,
        database_id: Option<DatabaseId>,
        listing: DirectoryListing,
        end: Option<LogEnd>,
        next_lsn: Lsn,
        truncated_bytes: u64,
    ) -> Result<RecoveredLog> {
        let disagree = |what: String| Err(Error::InvalidOptions(format!("recovered log: {what}")));
        match (listing.segments.last(), &end) {
            (None, None) => {}
            (Some(last), Some(end)) => {
                if end.header.first_lsn != last.first_lsn {
                    return disagree(format!(
                        "the end is in the segment of LSN {}, the last segment starts at {}",
                        end.header.first_lsn, last.first_lsn
                    ));
                }
                if next_lsn < end.header.first_lsn
                    || end.offset < HEADER_BLOCK_LEN
                    || end.offset > end.header.segment_bytes
                {
                    return disagree(format!(
                        "next LSN {next_lsn} at offset {} in a segment from LSN {} of {} bytes",
                        end.offset, end.header.first_lsn, end.header.segment_bytes
                    ));
                }
                if end.witness.is_some_and(|w| !w.within(next_lsn, end.offset)) {
                    return disagree("the witness claims more than the log holds".into());
                }
            }
            _ => return disagree("an end without a segment, or a segment without an end".into()),
        }
        if next_lsn == 0 {
            return disagree("LSNs start at 1".into());
        }
        Ok(RecoveredLog {
            dir: dir.to_path_buf(),
            lock,
            database_id,
            listing,
            end,
            next_lsn,
            truncated_bytes,
        })
    }

    /// The LSN the next record gets.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Wal {
    /// Resumes the log a recovery left in `recovered` (keel-recovery's `open_log` does both):
    /// creates the identity of a new log, starts a fresh segment when the last one is of an
    /// older format or another size than `options.segment_bytes`, makes what the previous
    /// process may have left unsynced durable (the last segment, the directory and its
    /// parent), then starts the writer.
    pub fn resume(recovered: RecoveredLog, options: WalOptions) -> Result<Wal> {
        options.validate()?;
        let backend = options.storage.backend(options.backend, options.io_depth)?;
        Self::resume_on(recovered, options, backend)
    }

    /// [`Wal::resume`] on a backend built beforehand (with `options.storage.backend`), so
    /// that a caller refuses what cannot run before its recovery changes the disk.
    pub fn resume_on(
        recovered: RecoveredLog,
        options: WalOptions,
        backend: Box<dyn Backend>,
    ) -> Result<Wal> {
        options.validate()?;
        let _span = tracing::info_span!("wal_resume", dir = %recovered.dir.display()).entered();
        let storage = Arc::clone(&options.storage);
        let Start {
            database_id,
            created,
            active,
            preallocator,
        } = start(&recovered, &options)?;
        let (next_lsn, truncated_bytes) = (recovered.next_lsn, recovered.truncated_bytes);
        let active_first_lsn = active.header.first_lsn;
        let backend_kind = backend.kind();
        let recycler = preallocator.recycler();
        let shared = new_shared(backend.as_ref(), next_lsn);
        let writer = Writer::new(
            Arc::clone(&shared),
            backend,
            recovered.dir.clone(),
            database_id,
            options.segment_bytes,
            active,
            preallocator,
            next_lsn - 1,
            Arc::clone(&storage),
            witness_timing(&options),
        );
        let baton = crate::writer::baton::Baton::new(writer);
        let handle = spawn_writer(Arc::clone(&baton), &recovered.dir)?;
        let RecoveredLog {
            dir, lock, listing, ..
        } = recovered;
        let summary = summarize(
            listing,
            active_first_lsn,
            next_lsn,
            truncated_bytes,
            created,
        );
        tracing::info!(
            next_lsn,
            backend = backend_kind.name(),
            created,
            truncated_bytes,
            "opened write-ahead log"
        );
        Ok(Wal {
            shared,
            writer: Some(handle),
            baton,
            dir,
            database_id,
            durability: options.durability,
            max_record_bytes: options.record_limit(),
            segment_bytes: options.segment_bytes,
            tail_max_lag_bytes: options.tail_max_lag_bytes,
            backend: backend_kind,
            summary,
            read_files: Mutex::default(),
            recycler,
            storage,
            _lock: lock,
        })
    }
}

/// What the log starts from: its identity (and whether this open created it), the segment
/// appends go to, and the spares.
struct Start {
    database_id: DatabaseId,
    created: bool,
    active: ActiveSegment,
    preallocator: Preallocator,
}

/// Establishes the identity (refusing a foreign one before anything changes), takes over
/// the spares, opens the segment appends go to (a fresh one when needed), and makes durable
/// the directory entries the previous process may have left unsynced.
fn start(recovered: &RecoveredLog, options: &WalOptions) -> Result<Start> {
    let RecoveredLog {
        dir,
        listing,
        end,
        next_lsn,
        ..
    } = recovered;
    let storage = &options.storage;
    let (database_id, created) = establish_identity(dir, options, recovered.database_id, listing)?;
    for unknown in &listing.unknown {
        tracing::warn!(file = %unknown.display(), "ignoring a file that is not part of the log");
    }
    let preallocator = Preallocator::start(
        storage,
        dir,
        options.segment_bytes,
        options.preallocate && storage.background_work(),
        options.recycle_segments,
        &listing.spares,
    )?;
    let fresh = FreshSegment {
        storage: storage.as_ref(),
        dir,
        database_id,
        segment_bytes: options.segment_bytes,
        preallocator: &preallocator,
    };
    let last = listing.segments.last().zip(end.as_ref());
    let active = fresh.open_active(last, *next_lsn)?;
    // The previous process may have died before syncing the directory entries it made (a
    // rotation's rename, a spare, the identity, recovery's fresh segment, the directory
    // itself): nothing is acknowledged before they are durable.
    fsutil::sync_dir_and_parent(storage.as_ref(), dir)?;
    Ok(Start {
        database_id,
        created,
        active,
        preallocator,
    })
}

/// The state the handle shares with the writer thread: a queue that assigns LSNs from
/// `next_lsn` on, and counters whose watermarks start at what the log holds.
fn new_shared(backend: &dyn Backend, next_lsn: Lsn) -> Arc<Shared> {
    let shared = Arc::new(Shared {
        queue: Queue::new(next_lsn, backend.waker()),
        counters: Counters::default(),
        watch: DurableWatch::default(),
        holds: crate::writer::holds::Holds::default(),
        buffers: crate::writer::buffers::BufferPool::default(),
        acknowledged: crate::writer::ack_hook::AckHook::default(),
    });
    shared
        .counters
        .durable_lsn
        .store(next_lsn - 1, std::sync::atomic::Ordering::Relaxed);
    shared
        .counters
        .written_lsn
        .store(next_lsn - 1, std::sync::atomic::Ordering::Relaxed);
    shared
}

/// Starts the writer thread.
fn spawn_writer(baton: Arc<Baton>, dir: &Path) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("keel-wal-writer".into())
        .spawn(move || baton.run())
        .map_err(|e| Error::io("starting writer thread", dir, e))
}

/// What the open found (`listing`, before it started a segment) and made of it.
fn summarize(
    listing: DirectoryListing,
    active_first_lsn: Lsn,
    next_lsn: Lsn,
    truncated_bytes: u64,
    created: bool,
) -> OpenSummary {
    OpenSummary {
        // Plus the segment this open started, unless it replaced an empty last one.
        segments: listing.segments.len()
            + usize::from(
                listing
                    .segments
                    .last()
                    .is_none_or(|last| last.first_lsn != active_first_lsn),
            ),
        next_lsn,
        truncated_bytes,
        unknown_files: listing.unknown,
        created,
    }
}

/// When the writer writes the durable witness: after the options' idle delay and at close;
/// on storage that forbids timers of the log's own (runs replay), as it says.
fn witness_timing(options: &WalOptions) -> WitnessTiming {
    match options.witness_idle {
        None => WitnessTiming {
            enabled: false,
            idle: None,
        },
        Some(idle) => WitnessTiming {
            enabled: true,
            idle: storage::witness_idle(options.storage.as_ref(), idle),
        },
    }
}

/// The identity recovery read, checked against the options; or, for a new log, created.
fn establish_identity(
    dir: &Path,
    options: &WalOptions,
    found: Option<DatabaseId>,
    listing: &DirectoryListing,
) -> Result<(DatabaseId, bool)> {
    match found {
        Some(found) => {
            if let Some(expected) = options.database_id
                && expected != found
            {
                return Err(Error::ForeignDatabase {
                    path: dir.to_path_buf(),
                    expected,
                    found,
                });
            }
            Ok((found, false))
        }
        None if listing.segments.is_empty() && options.create_if_missing => {
            let id = match (options.database_id, options.storage.seed()) {
                (Some(id), _) => id,
                (None, Some(seed)) => {
                    let mut bytes = [0u8; 16];
                    bytes[..8].copy_from_slice(&seed.to_le_bytes());
                    bytes[8..].copy_from_slice(b"keel-sim");
                    DatabaseId(bytes)
                }
                (None, None) => {
                    DatabaseId::random().map_err(|e| Error::io("generating an id for", dir, e))?
                }
            };
            fsutil::write_identity(options.storage.as_ref(), dir, id)?;
            Ok((id, true))
        }
        None if listing.segments.is_empty() => Err(Error::io(
            "opening log in",
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no log here and create_if_missing is off",
            ),
        )),
        None => Err(Error::corruption(
            dir.join(fsutil::IDENTITY_FILE),
            0,
            crate::error::CorruptionReason::Identity("missing while segments exist"),
        )),
    }
}

/// How an open starts a segment: of the current format and the options' size.
struct FreshSegment<'a> {
    storage: &'a dyn Storage,
    dir: &'a Path,
    database_id: DatabaseId,
    segment_bytes: u64,
    preallocator: &'a Preallocator,
}

impl FreshSegment<'_> {
    /// The segment appends go to: a fresh first segment for a log with none, else the last
    /// segment where its records end (followed by a fresh one when appends may not continue
    /// in it).
    fn open_active(
        &self,
        last: Option<(&segment::SegmentFile, &LogEnd)>,
        next_lsn: Lsn,
    ) -> Result<ActiveSegment> {
        match last {
            None => self.start(next_lsn),
            Some((segment, end)) => {
                let active = open_last_segment(self.storage, segment, end)?;
                self.unless_appendable(active, next_lsn)
            }
        }
    }

    /// Installs a spare as the segment whose first record will be `first_lsn`. An existing
    /// segment of that name (one holding no record) is replaced by the rename.
    fn start(&self, first_lsn: Lsn) -> Result<ActiveSegment> {
        let (spare, _) = self.preallocator.take()?;
        let header = spare.header_for(
            self.database_id,
            first_lsn,
            self.segment_bytes,
            self.storage.seed(),
        )?;
        let path = self.dir.join(segment::file_name(first_lsn));
        crate::dir::install_segment(self.storage, &spare.file, &spare.path, &path, &header)?;
        self.preallocator.replenish();
        let file = Arc::new(IoFile {
            file: spare.file,
            path,
        });
        Ok(ActiveSegment {
            file,
            header,
            offset: HEADER_BLOCK_LEN,
            witness: None,
        })
    }

    /// `last` (the last segment, durable through `next_lsn - 1`) when appends may continue in
    /// it, else a fresh segment starting at `next_lsn` (see [`segment::continuation`]).
    fn unless_appendable(&self, last: ActiveSegment, next_lsn: Lsn) -> Result<ActiveSegment> {
        match segment::continuation(&last.header, self.segment_bytes) {
            Continuation::Append => Ok(last),
            Continuation::FreshSegment(reason) => {
                tracing::info!(
                    segment = %last.file.path.display(), ?reason, next_lsn,
                    "starting a fresh segment before the first append"
                );
                drop(last);
                self.start(next_lsn)
            }
        }
    }
}

/// The last segment, open for appends at `end`, with every record recovery found in it
/// durable.
///
/// A sync alone does not make them durable when they sit in pages the kernel counts clean
/// without having written them: after a failed fdatasync (fsyncgate) it marks the pages it
/// failed to write clean and keeps them in the cache, so a reopen reads the records back and
/// a sync writes nothing. The first record appended then claims them in its durable mark, and
/// a power loss leaves that acknowledged record behind a hole the default policy refuses to
/// open past (review helper-54: `tests/adversarial_post_poison2.rs`). So what nothing proves
/// durable (past the newest durable witness; all of it without one) is written again, the
/// same bytes ([`Storage::rewrite`]), before the sync. After a clean close the witness covers
/// every record and nothing is written; after a crash, at most what was written in one
/// segment since the writer was last idle.
fn open_last_segment(
    storage: &dyn Storage,
    segment: &segment::SegmentFile,
    end: &LogEnd,
) -> Result<ActiveSegment> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment.path)
        .map_err(|e| Error::io("opening segment", &segment.path, e))?;
    let proven = end.witness.map_or(HEADER_BLOCK_LEN, |w| w.end_offset);
    // What recovery found may still sit only in the page cache (after a process crash):
    // make it durable before new records claim it in their durable marks.
    fsutil::rewrite_and_sync(storage, &file, &segment.path, proven, end.offset)?;
    Ok(ActiveSegment {
        file: Arc::new(IoFile {
            file,
            path: segment.path.clone(),
        }),
        header: end.header,
        offset: end.offset,
        witness: end.witness,
    })
}
