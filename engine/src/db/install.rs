//! Snapshot installs: a whole state from another database's snapshot image, put in place of
//! this one's through the checkpoint machinery (docs/ENGINE.md, "Snapshot images").

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;

use keel_wal::{Durability, EncodedBatch, Lsn, RunId, Storage, Wal, WalEntry, fsutil};

use super::Database;
use super::commit::PendingQueue;
use super::sync::{lock, write};
use crate::snapshot;
use crate::state::{ABANDONED_INSTALL_RUN, SYSTEM_RUN};
use crate::{Error, Result, SnapshotImage};

impl Database {
    /// Replaces the database's whole state (runs, keys, values) with the snapshot image's,
    /// durably, and returns the LSN `L` it is installed at. The image is checked first: a bad
    /// one is an [`Error::InvalidSnapshotImage`] and changes nothing.
    ///
    /// Every LSN in the image (key versions, runs' beginnings and ends) belongs to the log of
    /// the database that wrote it, so all become `L`; transaction ids continue above both
    /// databases' highest. Commits queued before the install are applied first and then
    /// replaced; commits after it apply on top of the installed state. An open transaction is
    /// ordered after the install: its commit applies on top of the installed state, or fails
    /// with [`Error::UnknownRun`] when its run is not in the image. A spilled one keeps the log
    /// from its first entry, as a checkpoint does.
    ///
    /// The steps, each durable before the next (checkpoints wait meanwhile; commits wait
    /// during steps 1 to 3, as while a checkpoint writes its snapshot):
    ///
    /// 1. Under the lock that orders appends, every visible commit is applied and a
    ///    `Checkpoint { snapshot_lsn: L }` entry is logged durably at `L` itself (so the log
    ///    is durable through `L`). A checkpoint's entry always lands above its snapshot, so
    ///    this one marks an install.
    /// 2. The image, rebased onto `L`, is written as the snapshot `L.snap` (temporary file,
    ///    fsync, rename, directory fsync).
    /// 3. It becomes the in-memory state.
    /// 4. Every other snapshot file is deleted: an older snapshot plus the log would rebuild
    ///    the state from before the install.
    /// 5. Log segments wholly below `L + 1` (or below the oldest open spilled transaction)
    ///    are deleted.
    ///
    /// A crash before the rename in step 2 leaves the old state: at open, a marker without
    /// its snapshot file is an install that never happened. A crash after it leaves the
    /// installed state: `L.snap` is the newest snapshot, and commits after `L` replay on
    /// it. Should `L.snap` later be unreadable while the log still holds the marker, opening
    /// fails rather than fall back to the state before the install.
    ///
    /// An error in step 2 removes the new snapshot file (best effort) and leaves the state
    /// unchanged; an error in steps 4 or 5 comes after the install took effect, and only
    /// the clean-up is unfinished (the next checkpoint finishes it).
    pub async fn install_snapshot(&self, image: &[u8]) -> Result<Lsn> {
        use tracing::Instrument;
        let image = SnapshotImage::decode(image)?;
        let span = tracing::info_span!(
            "install_snapshot",
            path = %self.inner.path.display(),
            image_lsn = image.lsn()
        );
        self.write_install(image).instrument(span).await
    }

    async fn write_install(&self, image: SnapshotImage) -> Result<Lsn> {
        let _turn = self.inner.snapshot_turn.lock().await;
        let dir = self.snapshot_dir();
        let keys = image.len();
        let lsn = self.swap_in(&dir, image)?;
        snapshot::remove_all_but(self.inner.storage.as_ref(), &dir, lsn)?;
        lock(&self.inner.verified_snapshots).clear();
        // Spills open now, or committed after the marker, began before the install.
        let keep_from = lock(&self.inner.spills).keep_from(lsn);
        self.inner.wal.remove_segments_before(keep_from)?;
        self.inner
            .checkpointed_at_bytes
            .store(self.log_bytes(), Ordering::Relaxed);
        tracing::info!(path = %self.inner.path.display(), lsn, keys, "snapshot installed");
        Ok(lsn)
    }

    /// Steps 1 to 3 of an install, under the `pending` lock: logs the marker at `L`, writes
    /// the image rebased onto `L` as the snapshot at `L`, and makes it the state. Returns `L`.
    fn swap_in(&self, dir: &Path, image: SnapshotImage) -> Result<Lsn> {
        let (mut state, image_max_txn_id) = image.into_parts();
        let mut pending = lock(&self.inner.pending);
        // Held until the outcome is noted: a feed that read the marker waits for it here.
        let mut outcomes = lock(&self.inner.installs);
        let lsn = self.log_install_marker(&mut pending)?;
        state.rebase(lsn);
        let local_max_txn_id = self.inner.next_txn_id.load(Ordering::Relaxed) - 1;
        let max_txn_id = local_max_txn_id.max(image_max_txn_id);
        let storage = self.inner.storage.as_ref();
        let written = match snapshot::write(storage, dir, lsn, max_txn_id, &state, &|| false) {
            Ok(written) => written,
            Err(error) => {
                discard_snapshot(storage, dir, lsn);
                // In the log too, before any later commit (`pending` is held): a feed
                // reading the marker after a reopen learns the outcome from it.
                log_abandoned_install(&self.inner.wal, lsn);
                outcomes.failed.insert(lsn);
                return Err(error);
            }
        };
        outcomes.took_effect.insert(lsn);
        self.inner.snapshot_bytes.store(written, Ordering::Relaxed);
        self.inner
            .next_txn_id
            .fetch_max(max_txn_id.saturating_add(1), Ordering::Relaxed);
        self.inner
            .checkpointed_state_bytes
            .store(state.data_bytes, Ordering::Relaxed);
        self.inner
            .state_bytes
            .store(state.data_bytes, Ordering::Relaxed);
        *write(&self.inner.state) = state;
        Ok(lsn)
    }

    /// Logs the install marker (`Checkpoint { snapshot_lsn: L }` at `L`: the log frames it
    /// with its own LSN) and waits until it is durable; then every commit queued before it is
    /// visible, and is applied. Returns `L`. Under the `pending` lock, so no commit is
    /// appended between those applied here and the marker.
    fn log_install_marker(&self, pending: &mut PendingQueue) -> Result<Lsn> {
        let run_id = RunId::from_u128(SYSTEM_RUN);
        let appended = self.inner.wal.append_closed_by(
            EncodedBatch::default(),
            Durability::Strict,
            |snapshot_lsn| WalEntry::Checkpoint {
                run_id,
                snapshot_lsn,
            },
        );
        let marker = appended.first_lsn();
        if let Some(lsn) = marker {
            self.inner.last_install_marker.store(lsn, Ordering::Release);
        }
        let lsn = appended.future.wait()?;
        assert_eq!(marker, Some(lsn), "the marker is its unit's only record");
        self.apply_visible_locked(pending);
        assert!(
            pending.is_empty(),
            "commits queued before a durable LSN are visible"
        );
        Ok(lsn)
    }
}

/// After a failed snapshot write: removes whatever reached the snapshot's name, so a reopen
/// does not load a snapshot the live state never had.
fn discard_snapshot(storage: &dyn Storage, dir: &Path, lsn: Lsn) {
    use std::io::ErrorKind::{NotADirectory, NotFound};
    let path = snapshot::path_of(dir, lsn);
    let outcome = match storage.remove_file(&path) {
        Ok(()) => fsutil::sync_dir(storage, dir).map_err(Error::from),
        Err(e) if matches!(e.kind(), NotFound | NotADirectory) => Ok(()),
        Err(e) => Err(keel_wal::Error::io("removing snapshot", &path, e).into()),
    };
    if let Err(error) = outcome {
        tracing::error!(snapshot = %path.display(), %error, "could not remove the snapshot of a failed install; a reopen may load it");
    }
}

/// What became of the install markers a database knows (`Inner::installs`).
#[derive(Debug, Default)]
pub(super) struct InstallOutcomes {
    /// Installs that never took effect: their snapshot write failed, or (found at open)
    /// their snapshot is absent.
    pub failed: BTreeSet<Lsn>,
    /// Installs that took effect in this process.
    pub took_effect: BTreeSet<Lsn>,
}

/// Logs that the install whose marker is at `marker` never took effect
/// ([`ABANDONED_INSTALL_RUN`]), as the next record: called under the `pending` lock, or at
/// open before anything else is appended. Not waited for: a later commit's sync makes it
/// durable, and a crash before that leaves the marker without its snapshot, which the next
/// open finds failed and records again. A refusal (a poisoned log) is left to that open too.
pub(super) fn log_abandoned_install(wal: &Wal, marker: Lsn) {
    let entry = WalEntry::Checkpoint {
        run_id: RunId::from_u128(ABANDONED_INSTALL_RUN),
        snapshot_lsn: marker,
    };
    drop(wal.append_with(&[entry], Durability::Strict));
}
