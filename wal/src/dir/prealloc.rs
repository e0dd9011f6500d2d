//! Spare segment files, created full size and zero-filled on a background thread so that
//! rotation never waits for allocation. Overwriting written zeros is much cheaper for
//! fdatasync than appending (no metadata changes per write), which is why the files are
//! written, not just sized.
//!
//! A spare is written as `spare-<n>.tmp`, synced, then renamed to `spare-<n>.ready`; only
//! `.ready` spares are ever used, so a crash mid-fill leaves nothing half-made in use.
//!
//! With [`crate::WalOptions::recycle_segments`], segments a checkpoint freed become spares
//! as they are (`spare-<n>.recycled`: renamed, the directory synced, before one is handed
//! out), and are used before a zero-filled one: the next segment is written over the file's
//! earlier contents, under a new salt (`docs/FORMAT.md`, "Recycled segments").

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::dir::fsutil;
use crate::dir::storage::Storage;
use crate::error::{Error, Result};

/// File names of spares start with this.
pub const SPARE_PREFIX: &str = "spare-";
const READY_SUFFIX: &str = ".ready";
const RECYCLED_SUFFIX: &str = ".recycled";
const ZERO_CHUNK: usize = 1 << 20;
/// The zero fill is synced every this many bytes. One sync of a whole 64 MiB spare holds the
/// device (and, on ext4, the journal) for ~80 ms, and every log fdatasync issued meanwhile
/// waits behind it; measured on 64 KiB records, that was the p99 (~100 ms).
const SYNC_STEP: u64 = 4 << 20;

/// A file of the segment size, not yet named as a segment: zero-filled, or recycled.
#[derive(Debug)]
pub(crate) struct Spare {
    pub file: File,
    pub path: PathBuf,
    /// A segment a checkpoint freed, with the salt its header had (`None`: unreadable).
    pub recycled: Option<Option<u32>>,
}

impl Spare {
    /// The header of the segment this spare becomes: of the current format when
    /// zero-filled; recycled, with a salt other than its earlier one, when recycled.
    pub(crate) fn header_for(
        &self,
        database_id: crate::ids::DatabaseId,
        first_lsn: crate::ids::Lsn,
        segment_bytes: u64,
        salt_seed: Option<u64>,
    ) -> Result<crate::format::segment::SegmentHeader> {
        use crate::format::segment::SegmentHeader;
        let header = match self.recycled {
            None => SegmentHeader::new(database_id, first_lsn, segment_bytes, salt_seed),
            Some(old_salt) => {
                SegmentHeader::recycled(database_id, first_lsn, segment_bytes, salt_seed, old_salt)
            }
        };
        header.map_err(|e| Error::io("generating salt for", &self.path, e))
    }
}

#[derive(Debug, Default)]
struct State {
    ready: Option<Spare>,
    /// Recycled spares, oldest first, at most `Shared::keep_recycled`.
    recycled: std::collections::VecDeque<Spare>,
    wanted: bool,
    /// The background thread is making a spare (asked for already: asking again would make
    /// a second one, and the first would be left on disk unused).
    making: bool,
    /// Fills the background thread has started, counted from 1.
    fills: u64,
    /// The error of the last fill that failed, with its number (see [`State::fills`]).
    failed: Option<(u64, String)>,
    /// The background thread ended by a panic (a [`Storage`] that panics): no spare will
    /// come from it, and a rotation waiting for one fails instead of waiting for ever.
    gone: bool,
    stopping: bool,
    sequence: u64,
}

#[derive(Debug)]
struct Shared {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    segment_bytes: u64,
    /// How many recycled spares are kept ([`crate::WalOptions::recycle_segments`]).
    keep_recycled: usize,
    state: Mutex<State>,
    changed: Condvar,
}

/// Keeps one spare ready.
#[derive(Debug)]
pub(crate) struct Preallocator {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Preallocator {
    /// Starts the background thread (if `background`), reusing a ready spare and up to
    /// `keep_recycled` recycled ones from `found`, and deleting every other leftover spare.
    pub(crate) fn start(
        storage: &Arc<dyn Storage>,
        dir: &Path,
        segment_bytes: u64,
        background: bool,
        keep_recycled: usize,
        found: &[PathBuf],
    ) -> Result<Self> {
        let mut state = State::default();
        for path in found {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let sized = || std::fs::metadata(path).is_ok_and(|m| m.len() == segment_bytes);
            let ready = name.ends_with(READY_SUFFIX) && state.ready.is_none() && sized();
            let recycled =
                name.ends_with(RECYCLED_SUFFIX) && state.recycled.len() < keep_recycled && sized();
            if ready || recycled {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|e| Error::io("opening spare", path, e))?;
                let spare = Spare {
                    recycled: recycled.then(|| earlier_salt(&file)),
                    file,
                    path: path.clone(),
                };
                match recycled {
                    true => state.recycled.push_back(spare),
                    false => state.ready = Some(spare),
                }
            } else {
                storage
                    .remove_file(path)
                    .map_err(|e| Error::io("removing stale spare", path, e))?;
            }
            state.sequence = state.sequence.max(sequence_of(&name) + 1);
        }
        if found.iter().any(|path| !path.exists()) {
            fsutil::sync_dir(storage.as_ref(), dir)?;
        }
        state.wanted = state.ready.is_none();
        let shared = Arc::new(Shared {
            storage: Arc::clone(storage),
            dir: dir.to_path_buf(),
            segment_bytes,
            keep_recycled,
            state: Mutex::new(state),
            changed: Condvar::new(),
        });
        let thread = if background {
            let worker = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name("keel-wal-prealloc".into())
                .spawn(move || worker.run())
                .map_err(|e| Error::io("starting preallocator thread", dir, e))?;
            Some(handle)
        } else {
            None
        };
        Ok(Preallocator { shared, thread })
    }

    /// Starts making the next spare. Called once the spare just taken is installed: a file
    /// being zero-filled while the directory is fsynced would make that fsync (a journal
    /// commit) wait for its dirty data on ext4 in `data=ordered` mode.
    pub(crate) fn replenish(&self) {
        let mut state = lock(&self.shared.state);
        if state.ready.is_none() && !state.wanted && !state.making {
            state.wanted = true;
            self.shared.changed.notify_all();
        }
    }

    /// What frees segments hands them to: see [`Recycler::recycle`].
    pub(crate) fn recycler(&self) -> Recycler {
        Recycler {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Takes the oldest recycled spare, else the ready spare, waiting for the background
    /// thread (or, without one, making it here). A segment recycled while it waits is taken
    /// as soon as it is there, and before the error of a spare that could not be made (a
    /// full disk: freed segments are what lets the log go on). Only a fill started after this
    /// call fails it: one started before (the fill [`Self::replenish`] asked for, which may
    /// have failed long ago, on a disk full then) is retried first. Returns the spare and
    /// whether the caller had to wait.
    pub(crate) fn take(&self) -> Result<(Spare, bool)> {
        let mut state = lock(&self.shared.state);
        let started_before = state.fills;
        let mut waited = false;
        loop {
            if let Some(spare) = state.recycled.pop_front() {
                return Ok((spare, waited));
            }
            if let Some(spare) = state.ready.take() {
                return Ok((spare, waited));
            }
            if let Some((fill, why)) = state.failed.take()
                && fill > started_before
            {
                state.wanted = true;
                self.shared.changed.notify_all();
                return Err(Error::io(
                    "preallocating a segment",
                    &self.shared.dir,
                    std::io::Error::other(why),
                ));
            }
            if state.gone {
                return Err(Error::io(
                    "preallocating a segment",
                    &self.shared.dir,
                    std::io::Error::other("the preallocator thread panicked"),
                ));
            }
            waited = true;
            if !state.wanted && !state.making {
                state.wanted = true;
                self.shared.changed.notify_all();
            }
            if self.thread.is_none() {
                let sequence = state.sequence;
                state.sequence += 1;
                drop(state);
                return Ok((self.shared.make(sequence)?, waited));
            }
            state = self
                .shared
                .changed
                .wait(state)
                .expect("preallocator lock poisoned");
        }
    }
}

impl Drop for Preallocator {
    fn drop(&mut self) {
        lock(&self.shared.state).stopping = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Marks the preallocator gone when its thread unwinds, and wakes whoever waits for a spare.
struct GoneOnPanic<'a>(&'a Shared);

impl Drop for GoneOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut state = self
                .0
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state.gone = true;
            state.making = false;
            self.0.changed.notify_all();
        }
    }
}

impl Shared {
    fn run(&self) {
        let _gone = GoneOnPanic(self);
        loop {
            let (fill, sequence) = {
                let mut state = lock(&self.state);
                while !state.stopping && !state.wanted {
                    state = self
                        .changed
                        .wait(state)
                        .expect("preallocator lock poisoned");
                }
                if state.stopping {
                    return;
                }
                state.wanted = false;
                state.making = true;
                // A new fill: the error of an earlier one (the log went on in recycled
                // spares meanwhile) is not this one's, and a rotation waits for this one.
                state.failed = None;
                state.fills += 1;
                state.sequence += 1;
                (state.fills, state.sequence - 1)
            };
            let made = self.make(sequence);
            let mut state = lock(&self.state);
            state.making = false;
            match made {
                Ok(spare) => state.ready = Some(spare),
                Err(error) => {
                    tracing::warn!(%error, "could not preallocate a segment");
                    state.failed = Some((fill, error.to_string()));
                }
            }
            self.changed.notify_all();
        }
    }

    fn stopping(&self) -> bool {
        lock(&self.state).stopping
    }

    /// Creates, zero-fills, syncs and publishes one spare. A spare that fails is deleted:
    /// kept, it would hold a segment's space until the next open, and the log goes on (in
    /// recycled spares) and asks for another after a failure, one more file each time.
    fn make(&self, sequence: u64) -> Result<Spare> {
        let tmp = self.dir.join(format!("{SPARE_PREFIX}{sequence}.tmp"));
        let ready = self
            .dir
            .join(format!("{SPARE_PREFIX}{sequence}{READY_SUFFIX}"));
        // A file that could not be created is not this spare's to delete (it may be another's).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io("creating spare", &tmp, e))?;
        let made = self.fill(file, &tmp, &ready);
        if made.is_err() {
            for path in [&tmp, &ready] {
                match self.storage.remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "could not remove a failed spare");
                    }
                }
            }
        }
        made
    }

    /// Zero-fills, syncs and publishes the spare created at `tmp` as `ready`.
    fn fill(&self, file: File, tmp: &Path, ready: &Path) -> Result<Spare> {
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut offset = 0u64;
        while offset < self.segment_bytes {
            if self.stopping() {
                return Err(Error::Closed);
            }
            let len = (self.segment_bytes - offset).min(ZERO_CHUNK as u64);
            let len = usize::try_from(len).expect("bounded by ZERO_CHUNK");
            file.write_all_at(&zeros[..len], offset)
                .map_err(|e| Error::io("zero-filling spare", tmp, e))?;
            offset += len as u64;
            if offset.is_multiple_of(SYNC_STEP) && offset < self.segment_bytes {
                fsutil::sync_file(self.storage.as_ref(), &file, tmp, false)?;
            }
        }
        let storage = self.storage.as_ref();
        fsutil::sync_file(storage, &file, tmp, true)?;
        storage
            .rename(tmp, ready)
            .map_err(|e| Error::io("renaming spare", tmp, e))?;
        fsutil::sync_dir(storage, &self.dir)?;
        Ok(Spare {
            file,
            path: ready.to_path_buf(),
            recycled: None,
        })
    }
}

/// Turns segments a checkpoint freed into spares ([`crate::WalOptions::recycle_segments`]).
#[derive(Debug, Clone)]
pub(crate) struct Recycler {
    shared: Arc<Shared>,
}

impl Recycler {
    /// Makes the segment at `path` (freed: every record in it is below what the log keeps) a
    /// recycled spare, when fewer than `keep_recycled` are kept and it has the options' size:
    /// renamed to `spare-<n>.recycled` and the directory synced, so that its segment name is
    /// gone for good before the file is handed out and its header overwritten (a crash
    /// could otherwise leave the old name on a new header). Returns `false` when it is not
    /// wanted (the caller deletes it), `true` when its segment name is gone (kept, or
    /// deleted here when another removal filled the last place meanwhile).
    pub(crate) fn recycle(&self, path: &Path) -> Result<bool> {
        let shared = &self.shared;
        let sequence = {
            let mut state = lock(&shared.state);
            let sized = std::fs::metadata(path).is_ok_and(|m| m.len() == shared.segment_bytes);
            if state.recycled.len() >= shared.keep_recycled || !sized || state.stopping {
                return Ok(false);
            }
            state.sequence += 1;
            state.sequence - 1
        };
        let spare_path = shared
            .dir
            .join(format!("{SPARE_PREFIX}{sequence}{RECYCLED_SUFFIX}"));
        let storage = shared.storage.as_ref();
        match storage.rename(path, &spare_path) {
            Ok(()) => {}
            // Another removal took it between the listing and here: not this one's to count
            // (the caller's deletion then finds it gone, as two deleting removals do).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("recycling segment", path, e)),
        }
        let opened = fsutil::sync_dir(storage, &shared.dir).and_then(|()| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&spare_path)
                .map_err(|e| Error::io("opening recycled spare", &spare_path, e))
        });
        let file = match opened {
            Ok(file) => file,
            Err(error) => {
                // Neither kept nor handed out, the renamed file would hold a whole segment's
                // space until the next open: deleted, as the removal does without recycling.
                if let Err(e) = storage.remove_file(&spare_path) {
                    tracing::warn!(file = %spare_path.display(), error = %e, "could not remove a recycled spare");
                }
                return Err(error);
            }
        };
        let spare = Spare {
            recycled: Some(earlier_salt(&file)),
            file,
            path: spare_path,
        };
        let mut state = lock(&shared.state);
        if state.recycled.len() >= shared.keep_recycled {
            // Another removal got there first: this one goes.
            drop(state);
            let Spare { file, path, .. } = spare;
            drop(file);
            storage
                .remove_file(&path)
                .map_err(|e| Error::io("removing recycled spare", &path, e))?;
            return Ok(true);
        }
        state.recycled.push_back(spare);
        // A rotation may be waiting for a spare.
        shared.changed.notify_all();
        Ok(true)
    }
}

/// The salt of the segment header a recycled file still holds (`None`: it does not read).
fn earlier_salt(file: &File) -> Option<u32> {
    let mut block = [0u8; crate::format::segment::HEADER_LEN];
    file.read_exact_at(&mut block, 0).ok()?;
    crate::format::segment::SegmentHeader::decode(&block, Path::new("spare"))
        .ok()
        .map(|header| header.salt)
}

fn lock(mutex: &Mutex<State>) -> MutexGuard<'_, State> {
    mutex.lock().expect("preallocator lock poisoned")
}

fn sequence_of(name: &str) -> u64 {
    name.strip_prefix(SPARE_PREFIX)
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dir::storage::FileSystem;

    /// A storage on which every rename finds its source gone, as when another removal took
    /// the segment between this one's listing and its rename.
    #[derive(Debug)]
    struct TakenMeanwhile;

    impl Storage for TakenMeanwhile {
        fn rename(&self, from: &Path, _: &Path) -> std::io::Result<()> {
            std::fs::remove_file(from)?;
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        }

        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            FileSystem.sync_dir(dir)
        }
    }

    /// Two removals racing for one segment: the one whose rename finds it gone is told to
    /// delete it (and its deletion ignores the absence), not failed; nothing is kept.
    #[test]
    fn a_segment_another_removal_took_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(TakenMeanwhile);
        let preallocator = Preallocator::start(&storage, dir.path(), 8192, false, 2, &[]).unwrap();
        let segment = dir.path().join("00000000000000000001.wal");
        std::fs::write(&segment, vec![0u8; 8192]).unwrap();
        let recycled = preallocator.recycler().recycle(&segment);
        assert!(matches!(recycled, Ok(false)), "{recycled:?}");
        assert!(lock(&preallocator.shared.state).recycled.is_empty());
    }
}
