//! Opening the log: the lock, the directory read (identity, segment headers), the spares,
//! the last segment's tail repair or a fresh segment, then the writer thread.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{OpenSummary, Shared, Wal};
use crate::backend::{Backend, IoFile};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::ids::{DatabaseId, Lsn};
use crate::options::WalOptions;
use crate::prealloc::Preallocator;
use crate::queue::Queue;
use crate::segment::{
    self, Continuation, DirectoryListing, HEADER_BLOCK_LEN, SegmentFile, SegmentHeader,
};
use crate::stats::Counters;
use crate::storage::{self, Storage};
use crate::tail;
use crate::writer::{self, ActiveSegment, WitnessTiming, Writer};

impl Wal {
    /// Opens (or creates) the log in `dir`: takes its lock, checks identity and format, finds
    /// the tail of the last segment and repairs a torn one, starts a fresh segment when the
    /// last one is of an older format or another size than `options.segment_bytes`, syncs the
    /// directory and its parent, then starts the writer.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<Wal> {
        let dir = dir.as_ref().to_path_buf();
        options.validate()?;
        let storage = Arc::clone(&options.storage);
        let _span = tracing::info_span!("wal_open", dir = %dir.display()).entered();
        if options.create_if_missing {
            fsutil::create_dir_all_durably(storage.as_ref(), &dir)?;
        }
        let lock = fsutil::lock_dir(storage.as_ref(), &dir)?;
        // Everything that can refuse the open comes before anything that changes the disk
        // (the spares, a torn tail, a fresh segment): a refused open leaves the log as it was.
        let backend = storage.backend(&options)?;
        let (listing, database_id, created) = read_directory(&dir, &options)?;
        let preallocator = Preallocator::start(
            &storage,
            &dir,
            options.segment_bytes,
            options.preallocate && storage.background_work(),
            &listing.spares,
        )?;
        let fresh = FreshSegment {
            storage: storage.as_ref(),
            dir: &dir,
            database_id,
            segment_bytes: options.segment_bytes,
            preallocator: &preallocator,
        };
        let (active, next_lsn, truncated_bytes) = fresh.open_active(listing.segments.last())?;
        // The previous process may have died before syncing the directory entries it made
        // (a rotation's rename, a spare, the identity, recovery's fresh segment, the directory
        // itself): nothing is acknowledged before they are durable.
        fsutil::sync_dir_and_parent(storage.as_ref(), &dir)?;
        let active_first_lsn = active.header.first_lsn;
        let backend_kind = backend.kind();
        let shared = new_shared(backend.as_ref(), next_lsn);
        let writer = Writer::new(
            Arc::clone(&shared),
            backend,
            dir.clone(),
            database_id,
            options.segment_bytes,
            active,
            preallocator,
            next_lsn - 1,
            Arc::clone(&storage),
            witness_timing(&options),
        );
        let handle = spawn_writer(writer, &dir)?;
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
            dir,
            database_id,
            durability: options.durability,
            max_record_bytes: options.max_record_bytes,
            backend: backend_kind,
            summary,
            read_files: Mutex::new(HashMap::new()),
            storage,
            _lock: lock,
        })
    }
}

/// Lists `dir`, establishes the log's identity (creating it for a new log) and checks every
/// segment header against it; files that are not the log's are left alone, with a warning.
fn read_directory(
    dir: &Path,
    options: &WalOptions,
) -> Result<(DirectoryListing, DatabaseId, bool)> {
    let listing = segment::list_directory(dir)?;
    let (database_id, created) = establish_identity(dir, options, &listing)?;
    if !listing.segments.is_empty() {
        check_headers(&listing.segments, database_id)?;
    }
    for unknown in &listing.unknown {
        tracing::warn!(file = %unknown.display(), "ignoring a file that is not part of the log");
    }
    Ok((listing, database_id, created))
}

/// The state the handle shares with the writer thread: a queue that assigns LSNs from
/// `next_lsn` on, and counters whose watermarks start at what the log holds.
fn new_shared(backend: &dyn Backend, next_lsn: Lsn) -> Arc<Shared> {
    let shared = Arc::new(Shared {
        queue: Queue::new(next_lsn, backend.waker()),
        counters: Counters::default(),
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
fn spawn_writer(writer: Writer, dir: &Path) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("keel-wal-writer".into())
        .spawn(move || writer.run())
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

/// Reads the identity, or creates it for a new log.
fn establish_identity(
    dir: &Path,
    options: &WalOptions,
    listing: &DirectoryListing,
) -> Result<(DatabaseId, bool)> {
    match fsutil::read_identity(dir)? {
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

/// Every segment header must be readable, of this format, and of this database.
fn check_headers(segments: &[SegmentFile], database_id: DatabaseId) -> Result<()> {
    for segment in segments {
        let file = File::open(&segment.path)
            .map_err(|e| Error::io("opening segment", &segment.path, e))?;
        let header = segment::read_header(&file, segment)?;
        if header.database_id != database_id {
            return Err(Error::ForeignDatabase {
                path: segment.path.clone(),
                expected: database_id,
                found: header.database_id,
            });
        }
    }
    Ok(())
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
    /// The segment appends go to, the LSN the next record gets, and the bytes of a torn tail
    /// zeroed: a fresh first segment for a log with none, else the last segment, repaired
    /// (followed by a fresh one when appends may not continue in it).
    fn open_active(&self, last: Option<&SegmentFile>) -> Result<(ActiveSegment, Lsn, u64)> {
        Ok(match last {
            None => (self.start(1)?, 1, 0),
            Some(last) => {
                let (active, next_lsn, truncated_bytes) = open_last_segment(self.storage, last)?;
                (
                    self.unless_appendable(active, next_lsn)?,
                    next_lsn,
                    truncated_bytes,
                )
            }
        })
    }

    /// Installs a spare as the segment whose first record will be `first_lsn`. An existing
    /// segment of that name (one holding no record) is replaced by the rename.
    fn start(&self, first_lsn: Lsn) -> Result<ActiveSegment> {
        let (spare, _) = self.preallocator.take()?;
        let header = SegmentHeader::new(
            self.database_id,
            first_lsn,
            self.segment_bytes,
            self.storage.seed(),
        )
        .map_err(|e| Error::io("generating salt in", self.dir, e))?;
        let path = self.dir.join(segment::file_name(first_lsn));
        writer::install_segment(self.storage, &spare.file, &spare.path, &path, &header)?;
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

fn open_last_segment(
    storage: &dyn Storage,
    segment: &SegmentFile,
) -> Result<(ActiveSegment, Lsn, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment.path)
        .map_err(|e| Error::io("opening segment", &segment.path, e))?;
    let (file, tail) = tail::repair(storage, file, segment)?;
    // What was found may still sit only in the page cache (after a process crash): make it
    // durable before new records claim it in their durable marks.
    fsutil::sync_file(storage, &file, &segment.path, false)?;
    let io_file = Arc::new(IoFile {
        file,
        path: segment.path.clone(),
    });
    let active = ActiveSegment {
        file: io_file,
        header: tail.header,
        offset: tail.append_offset,
        witness: tail.witness,
    };
    Ok((active, tail.next_lsn, tail.truncated_bytes))
}
