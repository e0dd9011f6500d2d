//! Checkpoints: a snapshot of the state, a `Checkpoint` entry, and the clean-up they allow
//! (older snapshots, and the log below what a restart from the fallback needs). Also the
//! automatic checkpoint, and reading snapshots back as images.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use keel_wal::{Durability, Lsn, RunId, Storage, TxnId, WalEntry, fsutil};

use super::Database;
use super::sync::{lock, read};
use crate::snapshot;
use crate::state::{SYSTEM_RUN, State};
use crate::{Error, Result};

impl Database {
    /// Writes a snapshot of the state, logs a `Checkpoint` entry, and deletes what it makes
    /// redundant: the log is kept back to the previous snapshot (so a damaged newest snapshot
    /// can fall back to it), older snapshots and segments are removed. Returns the snapshot's
    /// LSN.
    ///
    /// Commits go on during the whole checkpoint: the snapshot is written from an immutable
    /// view of the state taken at its LSN (an O(1) copy), a frame at a time. The encoding
    /// and writing happen on the calling thread (automatic checkpoints have a thread of their
    /// own); from an async runtime whose threads must not block, call it from a blocking
    /// task.
    pub async fn checkpoint(&self) -> Result<Lsn> {
        use tracing::Instrument;
        let span = tracing::info_span!("checkpoint", path = %self.inner.path.display());
        self.write_checkpoint().instrument(span).await
    }

    async fn write_checkpoint(&self) -> Result<Lsn> {
        let _turn = self.inner.snapshot_turn.lock().await;
        let dir = self.snapshot_dir();
        self.move_off_install_marker().await?;
        let (lsn, view, max_txn_id, snapshot_bytes) = self.snapshot_view();
        // A crash could otherwise leave a log that restarts below the snapshot.
        if self.inner.wal.durable_lsn() < lsn {
            self.inner.wal.sync().await?;
        }
        let state_bytes = view.data_bytes;
        let signal = &self.inner.checkpoint_signal;
        let storage = self.inner.storage.as_ref();
        let written =
            snapshot::write(storage, &dir, lsn, max_txn_id, &view, &|| signal.stopping())?;
        drop(view);
        // Checked as it was written (every frame's checksum computed here, then synced):
        // reading it back at the next checkpoint would only re-read the page cache, a whole
        // state's worth of CPU while commits run.
        lock(&self.inner.verified_snapshots).insert(lsn);
        // Logged above the snapshot's LSN (every LSN up to it was taken), so recovery tells
        // it from an install marker. Ordered with nothing of the engine's: no `pending` lock.
        let entry = WalEntry::Checkpoint {
            run_id: RunId::from_u128(SYSTEM_RUN),
            snapshot_lsn: lsn,
        };
        self.inner
            .wal
            .append_with(&[entry], Durability::Strict)
            .await?;
        self.release_before(&dir, lsn)?;
        self.inner
            .checkpointed_at_bytes
            .store(snapshot_bytes, Ordering::Relaxed);
        self.inner
            .checkpointed_state_bytes
            .store(state_bytes, Ordering::Relaxed);
        self.inner.snapshot_bytes.store(written, Ordering::Relaxed);
        self.inner.checkpoints.fetch_add(1, Ordering::Relaxed);
        tracing::info!(path = %self.inner.path.display(), lsn, "checkpoint written");
        Ok(lsn)
    }

    /// A snapshot is named by its LSN, and `L.snap` at an install marker's LSN `L` means "the
    /// installed state" to recovery. Should the last record be the marker of an install whose
    /// snapshot write failed, an empty commit first moves the snapshot above it, so the name
    /// never says "install" for a checkpoint of the state before it.
    async fn move_off_install_marker(&self) -> Result<()> {
        while self.snapshot_lsn_now() == self.inner.last_install_marker.load(Ordering::Acquire) {
            let txn_id = self.new_txn_id();
            let empty = self.queue_commit(
                SYSTEM_RUN,
                txn_id,
                Vec::new(),
                Vec::new(),
                None,
                Default::default(),
            )?;
            empty.acknowledged().await?;
        }
        Ok(())
    }

    /// The state as of the snapshot LSN, under the `pending` lock (held only for this):
    /// applies what is visible, takes the LSN, and an immutable view of the state there (an
    /// O(1) clone that later commits do not change), with the transaction-id high mark and
    /// the log the snapshot holds ([`Database::log_bytes`] now: what is appended from here on
    /// counts toward the next automatic checkpoint, though this one is still being written).
    /// Read under the lock, with the view: read after the log's sync, it counted commits
    /// acknowledged meanwhile (`Async`) as in the snapshot
    /// (`tests/adversarial_checkpoint_drop2.rs`). Commits queued and not yet visible still
    /// count as in it: at most a group commit.
    fn snapshot_view(&self) -> (Lsn, State, TxnId, u64) {
        let mut pending = lock(&self.inner.pending);
        let lsn = self.applied_through_locked(&mut pending);
        assert_ne!(
            lsn,
            self.inner.last_install_marker.load(Ordering::Acquire),
            "only commits move the snapshot LSN, and the turn is held"
        );
        let view = read(&self.inner.state).clone();
        let max_txn_id = self.inner.next_txn_id.load(Ordering::Relaxed) - 1;
        (lsn, view, max_txn_id, self.log_bytes())
    }

    /// After the snapshot at `newest` is durable: keeps the newest older snapshot that reads
    /// back whole as its fallback, deletes every other older one (damaged and partial ones
    /// included), and removes the log below what a restart from the fallback needs (see
    /// `retention`).
    fn release_before(&self, dir: &Path, newest: Lsn) -> Result<()> {
        let older: Vec<(Lsn, PathBuf)> = snapshot::list(dir)?
            .into_iter()
            .filter(|(lsn, _)| *lsn < newest)
            .collect();
        let mut fallback = None;
        let mut doomed = Vec::new();
        for (lsn, path) in older {
            if fallback.is_none() && self.snapshot_reads_whole(lsn, &path)? {
                fallback = Some(lsn);
            } else {
                doomed.push(path);
            }
        }
        // Spills are known for commits above the snapshot this process loaded (replay
        // registers those); below it they are not, so a fallback older than that snapshot
        // (a checkpoint at the very LSN it loaded) removes no log this time.
        let known_from = self.inner.snapshot_lsn.unwrap_or(0);
        if let Some(fallback) = fallback.filter(|f| *f >= known_from) {
            let keep_from = lock(&self.inner.spills).keep_from(fallback);
            self.inner.wal.remove_segments_before(keep_from)?;
        }
        remove_snapshots(self.inner.storage.as_ref(), dir, &doomed)?;
        lock(&self.inner.verified_snapshots).retain(|lsn| Some(*lsn) >= fallback);
        Ok(())
    }

    /// The LSN a checkpoint taken now would get: the last one before the first commit not yet
    /// applied.
    fn snapshot_lsn_now(&self) -> Lsn {
        let mut pending = lock(&self.inner.pending);
        self.applied_through_locked(&mut pending)
    }

    /// Whether the snapshot at `lsn` decodes whole (checked once, then remembered). A damaged
    /// one is `false`; failing to read it at all is an error.
    fn snapshot_reads_whole(&self, lsn: Lsn, path: &Path) -> Result<bool> {
        if lock(&self.inner.verified_snapshots).contains(&lsn) {
            return Ok(true);
        }
        match snapshot::verify(path)? {
            Ok(held) if held == lsn => {
                lock(&self.inner.verified_snapshots).insert(lsn);
                Ok(true)
            }
            Ok(held) => {
                tracing::error!(snapshot = %path.display(), held, "snapshot holds another LSN than its name; not kept as a fallback");
                Ok(false)
            }
            Err(why) => {
                tracing::error!(snapshot = %path.display(), %why, "snapshot unreadable; not kept as a fallback");
                Ok(false)
            }
        }
    }

    pub(super) fn snapshot_dir(&self) -> PathBuf {
        self.inner.path.join("snapshots")
    }

    /// The bytes of this database's snapshot at `lsn` (the LSN [`Database::checkpoint`] or
    /// [`Database::install_snapshot`] returned), once they decode whole: an image for
    /// [`crate::SnapshotImage::decode`] and [`Database::install_snapshot`]. An error when
    /// there is no such snapshot (a later checkpoint may have deleted it; the newest two are
    /// kept) or it is damaged.
    pub fn read_snapshot(&self, lsn: Lsn) -> Result<Vec<u8>> {
        let path = snapshot::path_of(&self.snapshot_dir(), lsn);
        let (held, bytes) = snapshot::read_whole(&path)?;
        if held != lsn {
            return Err(Error::Metadata(format!(
                "snapshot {} holds LSN {held}, not the LSN its name gives",
                path.display()
            )));
        }
        Ok(bytes)
    }

    /// The newest of this database's snapshots that decodes whole, with its LSN; damaged newer
    /// ones are passed over (as at open). `None` when there is none.
    pub fn newest_snapshot(&self) -> Result<Option<(Lsn, Vec<u8>)>> {
        snapshot::newest_bytes(&self.snapshot_dir())
    }

    /// Asks the checkpointer thread for a checkpoint when one would now drop at least the
    /// threshold (see [`Database::droppable_bytes`]). Called after a commit's
    /// acknowledgement; it neither waits for the checkpoint nor can fail the commit.
    pub(super) fn maybe_checkpoint(&self) {
        let threshold = self.inner.checkpoint_log_bytes;
        if threshold == 0 {
            return;
        }
        let threshold = threshold.max(self.proportional_threshold());
        if self.droppable_bytes() < threshold {
            return;
        }
        // Before the swap: should the swap find one running, the checkpointer looks again
        // after it (it clears `checkpointing`, then takes this flag). Set after the swap, a
        // checkpoint ending between the two missed it.
        self.inner.checkpoint_missed.store(true, Ordering::Release);
        if self.inner.checkpointing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.checkpoint_signal.request();
    }

    /// About how many bytes a checkpoint taken now would drop from what a recovery reads
    /// (the newest snapshot and the log above it): the log written since that snapshot's
    /// view, less what the state grew by since. Values overwritten or deleted, aborted
    /// transactions and the log's framing count; a new key's key and value do not, since
    /// the new snapshot would hold them again. So a state that only grows (every key new)
    /// is not rewritten whole for every threshold of log it grows by: that checkpoint would
    /// write as much as the log did and leave a recovery as much to read.
    pub(super) fn droppable_bytes(&self) -> u64 {
        // A checkpoint finishing meanwhile may store counts newer than the ones read here.
        let grown = self
            .log_bytes()
            .saturating_sub(self.inner.checkpointed_at_bytes.load(Ordering::Relaxed));
        let state_now = self.inner.state_bytes.load(Ordering::Relaxed);
        let state_then = self.inner.checkpointed_state_bytes.load(Ordering::Relaxed);
        let dropped = i128::from(grown) - (i128::from(state_now) - i128::from(state_then));
        u64::try_from(dropped.max(0)).unwrap_or(u64::MAX)
    }

    /// Log bytes since the loaded snapshot as automatic checkpoints count them: every record
    /// this process appended (written yet or still queued, as spills wait for a timer),
    /// after the log a reopen replayed above that snapshot.
    pub(super) fn log_bytes(&self) -> u64 {
        self.inner
            .wal
            .bytes_appended()
            .saturating_add(self.inner.log_bytes_at_open)
    }

    /// [`Options::checkpoint_log_percent`] of the newest snapshot's size.
    ///
    /// [`Options::checkpoint_log_percent`]: super::Options::checkpoint_log_percent
    fn proportional_threshold(&self) -> u64 {
        let snapshot = self.inner.snapshot_bytes.load(Ordering::Relaxed);
        let scaled = u128::from(snapshot) * u128::from(self.inner.checkpoint_log_percent) / 100;
        u64::try_from(scaled).unwrap_or(u64::MAX)
    }

    /// Waits (blocking the calling thread) until no automatic checkpoint is asked for or
    /// being written: every commit acknowledged before the call that asked for one has had
    /// it. For tests and tools; returns at once when automatic checkpoints are off.
    pub fn wait_for_automatic_checkpoint(&self) {
        self.inner.checkpoint_signal.wait_idle();
    }

    /// An automatic checkpoint, on the checkpointer thread. A failure is logged and counted
    /// ([`Stats::auto_checkpoint_failures`]), and the next automatic or explicit checkpoint
    /// tries again.
    ///
    /// A panic in it (from the caller's `Storage`, say) is such a failure too: left to unwind,
    /// it ended the thread with the flags set, so no automatic checkpoint ran again and
    /// [`Database::wait_for_automatic_checkpoint`] waited for good
    /// (`tests/adversarial_bg_checkpoint_panic.rs`). A lock the panic poisoned still stops
    /// every later user of it (`sync`); a partial snapshot it left goes with the next
    /// checkpoint.
    ///
    /// [`Stats::auto_checkpoint_failures`]: super::Stats::auto_checkpoint_failures
    ///
    /// Returns whether it was written.
    pub(super) async fn run_auto_checkpoint(&self) -> bool {
        use futures::FutureExt;
        let outcome = std::panic::AssertUnwindSafe(self.checkpoint())
            .catch_unwind()
            .await;
        let failure = match outcome {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(panic) => Some(format!(
                "the checkpoint panicked: {}",
                panic_message(&*panic)
            )),
        };
        let written = failure.is_none();
        if let Some(error) = failure {
            if self.inner.checkpoint_signal.stopping() {
                tracing::info!(path = %self.inner.path.display(), %error, "automatic checkpoint stopped: the database is closing");
            } else {
                tracing::error!(path = %self.inner.path.display(), %error, "automatic checkpoint failed; the next one retries");
                self.inner
                    .auto_checkpoint_failures
                    .fetch_add(1, Ordering::Relaxed);
                *lock(&self.inner.last_auto_checkpoint_error) = Some(error);
            }
        }
        self.inner.checkpointing.store(false, Ordering::Release);
        written
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "(no message)"
    }
}

/// Deletes the snapshot files in `doomed` (those already gone do not count) and, best effort,
/// the partial snapshots a crashed process left; then syncs `dir` if anything went.
fn remove_snapshots(storage: &dyn Storage, dir: &Path, doomed: &[PathBuf]) -> Result<()> {
    for path in doomed {
        match storage.remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(keel_wal::Error::io("removing old snapshot", path, e).into()),
        }
    }
    let partials = snapshot::remove_partials(storage, dir);
    if !doomed.is_empty() || partials > 0 {
        fsutil::sync_dir(storage, dir)?;
    }
    Ok(())
}
