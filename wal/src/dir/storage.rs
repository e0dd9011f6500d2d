//! Storage as a parameter: the operations that decide what a crash keeps (file and directory
//! syncs, renames, removals, creation of small files, the lock) and the IO backend records
//! are written through, behind one trait handed to a log in its options
//! ([`crate::WalOptions::storage`]).
//!
//! The default, [`FileSystem`], is the real file system. Tests hand in another: the simulated
//! storage of the dev-only `keel-sim` crate models what a power loss keeps, and its fault
//! injector fails chosen writes and syncs. Everything else (reading, listing, opening files,
//! writes outside the backend) goes to the real file system under every storage: a simulated
//! one keeps real files as its page cache and learns of changes when they are synced.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{self, Backend, BackendChoice};
use crate::error::Result;

/// Where a log's files live and how their changes become durable. Every method has the real
/// file system's behaviour as its default.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// The IO backend a log writes its records through: the one `choice` asks for, with at
    /// most `io_depth` chains in flight ([`crate::WalOptions::backend`], `io_depth`).
    fn backend(&self, choice: BackendChoice, io_depth: usize) -> Result<Box<dyn Backend>> {
        backend::build(choice, io_depth, None)
    }

    /// Makes `file`'s data durable (`fdatasync`; with `all`, its metadata too: `fsync`).
    fn sync_file(&self, file: &File, path: &Path, all: bool) -> io::Result<()> {
        let _ = path;
        if all {
            file.sync_all()
        } else {
            file.sync_data()
        }
    }

    /// Writes `bytes` at `offset` of `file` again, the bytes it holds there, so that the next
    /// sync writes them to the disk even where the cache holds them in pages the kernel counts
    /// clean without having written them (after a failed sync: fsyncgate).
    fn rewrite(&self, file: &File, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let _ = path;
        std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
    }

    /// Makes the directory's entries (creations, renames, unlinks) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    /// Creates (or truncates) a file for writing.
    fn create(&self, path: &Path) -> io::Result<File> {
        File::create(path)
    }

    /// Renames `from` to `to`, replacing `to`; durable once their directory is synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    /// Removes a file; durable once its directory is synced.
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    /// Takes the exclusive lock `path` stands for; it is held while the returned file is
    /// open. `None` when another holder has it.
    fn lock(&self, path: &Path) -> io::Result<Option<File>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    /// A seed for storage whose runs must replay byte for byte: segment salts and a new log's
    /// id derive from it instead of the random source. `None` (the default): random.
    fn seed(&self) -> Option<u64> {
        None
    }

    /// Whether the log may work on threads and timers of its own: the spare preallocation
    /// thread, and the durable witness after `witness_idle` of idleness. Storage that replays
    /// runs exactly answers `false`: spares are then made on the writer thread when needed,
    /// and the witness is written at close only, or, with [`Storage::witness_when_idle`],
    /// as soon as the writer idles.
    fn background_work(&self) -> bool {
        true
    }

    /// Without [`Storage::background_work`]: whether the witness is written as soon as the
    /// writer idles (with no delay) rather than at close only.
    fn witness_when_idle(&self) -> bool {
        false
    }

    /// Defects to build into the log on purpose, so that a simulation can show its checker
    /// catches them. None on the default storage.
    fn defects(&self) -> Defects {
        Defects::default()
    }
}

/// A deliberately broken writer, for checking checkers. Only defects a storage cannot play by
/// itself are here: a storage that acknowledges a sync it did not perform, or drops a
/// directory sync, needs no help from the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Defects {
    /// The durable witness is written as soon as nothing is in flight and claims every
    /// record written, synced or not.
    pub witness_before_sync: bool,
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileSystem;

impl Storage for FileSystem {}

/// The default storage: the real file system.
pub fn file_system() -> Arc<dyn Storage> {
    Arc::new(FileSystem)
}

/// When a log writes its durable witness: after `idle` of idleness and at close, or as
/// `storage` decides when it forbids timers of the log's own.
pub(crate) fn witness_idle(storage: &dyn Storage, idle: Duration) -> Option<Duration> {
    if storage.background_work() {
        Some(idle)
    } else {
        storage.witness_when_idle().then_some(Duration::ZERO)
    }
}
