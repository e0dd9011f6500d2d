//! The raw group commit: leader/follower batching by hand, on the preallocated file of
//! [`RawLog`](crate::RawLog). The best a log can do with `pwrite` and `fdatasync` and no ring,
//! so Keel's Strict rows are also read against it (`vs best raw`), not only against one sync
//! per record.
//!
//! A committer appends its record to the pending buffer under the mutex and gets a sequence
//! number. If no committer leads, it leads: it takes what is pending (every record, unless
//! they would not fit the file together), writes it with one `pwrite` at the next offset
//! (back to the start when it would run past the end), `fdatasync`s once, and publishes the
//! last sequence that sync covered (`synced_through`, a watermark). Records that arrive
//! meanwhile pile up into the next group. The leader leads until its own record is synced,
//! then lets go; a woken follower with records still pending takes over. No lock is held
//! across the write or the sync.
//!
//! A commit returns `Ok` only once an `fdatasync` that started after its bytes were written
//! has completed: a group's bytes are written before its sync, and a record appended while
//! a group is in flight goes into a later group. A failed write or sync fails the log: the
//! committers of that group and every commit after it get the error (after a failed
//! `fdatasync`, a later success proves nothing about the pages the kernel dropped).
//!
//! Std alone (no Linux-only call), so it builds wherever [`RawLog`](crate::RawLog) does.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::raw::{check_fits, preallocate};

/// The file [`RawGroupLog::open`] creates in its directory.
pub const FILE_NAME: &str = "raw-group.log";

/// A preallocated file whose concurrent commits share one `pwrite` and one `fdatasync` per
/// group.
#[derive(Debug)]
pub struct RawGroupLog {
    file: File,
    path: PathBuf,
    size_bytes: u64,
    group: Mutex<Group>,
    /// Signalled when a group is published (synced or failed): its followers return, and one
    /// of those left leads next when no one does.
    published: Condvar,
}

/// What the committers share, under [`RawGroupLog::group`].
#[derive(Debug, Default)]
struct Group {
    /// The records appended and not yet taken by a leader, back to back.
    pending: Vec<u8>,
    /// Where each pending record ends in `pending`.
    record_ends: Vec<usize>,
    /// The sequence of the last record appended (records count from 1).
    appended_through: u64,
    /// The sequence of the last record a leader took.
    taken_through: u64,
    /// The sequence of the last record an `fdatasync` covered: the watermark.
    synced_through: u64,
    /// Whether a committer is writing and syncing a group now.
    leading: bool,
    /// The first failure, kind and message: every commit not synced before it fails.
    failure: Option<(io::ErrorKind, String)>,
    /// Where the next group goes.
    offset: u64,
    syncs: u64,
    bytes: u64,
    /// A synced group's emptied buffer, for the next group to take.
    spare: Vec<u8>,
}

/// The records a leader took: where they go and the sequence of the last.
#[derive(Debug)]
struct Batch {
    bytes: Vec<u8>,
    offset: u64,
    through: u64,
}

/// How many of the pending records (ending at `record_ends`) one group takes: all of them,
/// unless they would not fit a file of `size_bytes` together; then the longest run from the
/// first that does. At least one (every record fits alone: [`RawGroupLog::commit`] refuses
/// the others).
pub(crate) fn records_that_fit(record_ends: &[usize], size_bytes: u64) -> usize {
    assert!(
        record_ends
            .first()
            .is_some_and(|&end| end as u64 <= size_bytes),
        "a leader takes a group only when its first record fits"
    );
    record_ends.partition_point(|&end| end as u64 <= size_bytes)
}

impl Group {
    /// Appends `record` and returns its sequence.
    fn append(&mut self, record: &[u8]) -> u64 {
        self.pending.extend_from_slice(record);
        self.record_ends.push(self.pending.len());
        self.appended_through += 1;
        self.appended_through
    }

    /// Takes the next group out of the pending records and places it in the file.
    fn take_batch(&mut self, size_bytes: u64) -> Batch {
        let count = records_that_fit(&self.record_ends, size_bytes);
        let end = self.record_ends[count - 1];
        let bytes = if count == self.record_ends.len() {
            std::mem::replace(&mut self.pending, std::mem::take(&mut self.spare))
        } else {
            let rest = self.pending.split_off(end);
            std::mem::replace(&mut self.pending, rest)
        };
        self.record_ends.drain(..count);
        self.record_ends.iter_mut().for_each(|e| *e -= end);
        let len = bytes.len() as u64;
        if self.offset + len > size_bytes {
            self.offset = 0;
        }
        let batch = Batch {
            bytes,
            offset: self.offset,
            through: self.taken_through + count as u64,
        };
        self.offset += len;
        self.taken_through = batch.through;
        batch
    }

    /// Moves the watermark over a synced group, or fails the log with its error.
    fn publish(&mut self, batch: Batch, result: io::Result<()>) {
        assert!(
            batch.through > self.synced_through,
            "groups are published in order"
        );
        match result {
            Ok(()) => {
                self.synced_through = batch.through;
                self.syncs += 1;
                self.bytes += batch.bytes.len() as u64;
            }
            Err(error) => {
                self.failure
                    .get_or_insert_with(|| (error.kind(), error.to_string()));
            }
        }
        let mut spare = batch.bytes;
        spare.clear();
        self.spare = spare;
    }

    /// The log's failure, as an error for one more committer.
    fn failed(&self) -> Option<io::Error> {
        self.failure.as_ref().map(|(kind, message)| {
            io::Error::new(*kind, format!("the raw group commit failed: {message}"))
        })
    }
}

impl RawGroupLog {
    /// Creates `dir/raw-group.log` (replacing one there), zero-filled to `size_bytes` and
    /// synced whole, as [`RawLog::open`](crate::RawLog::open) does.
    pub fn open(dir: &Path, size_bytes: u64) -> io::Result<RawGroupLog> {
        let path = dir.join(FILE_NAME);
        let file = preallocate(&path, size_bytes)?;
        Ok(RawGroupLog::with_file(file, path, size_bytes))
    }

    /// A group commit into `file`, of `size_bytes`, already preallocated.
    fn with_file(file: File, path: PathBuf, size_bytes: u64) -> RawGroupLog {
        RawGroupLog {
            file,
            path,
            size_bytes,
            group: Mutex::new(Group::default()),
            published: Condvar::new(),
        }
    }

    /// Appends `record` to the next group and returns once an `fdatasync` that started after
    /// it was written has completed. A record longer than the file is refused; after a failed
    /// group every commit fails.
    pub fn commit(&self, record: &[u8]) -> io::Result<()> {
        check_fits(record.len() as u64, self.size_bytes)?;
        let mut group = self.lock();
        if let Some(error) = group.failed() {
            return Err(error);
        }
        let seq = group.append(record);
        loop {
            if group.synced_through >= seq {
                return Ok(());
            }
            if let Some(error) = group.failed() {
                return Err(error);
            }
            group = if group.leading {
                self.published
                    .wait(group)
                    .unwrap_or_else(PoisonError::into_inner)
            } else {
                self.lead(group, seq)
            };
        }
    }

    /// Writes and syncs groups until the one holding `seq` is synced (or the log failed),
    /// waking the followers after each; lets go of the lead with the lock still held after
    /// the last, so a follower left waiting sees it free when it wakes.
    fn lead<'a>(&'a self, group: MutexGuard<'a, Group>, seq: u64) -> MutexGuard<'a, Group> {
        // Declared before the lock's guard, so dropped after it when unwinding.
        let _failing_on_panic = FailOnPanic(self);
        let mut group = group;
        assert!(!group.leading, "one leader at a time");
        assert_eq!(
            group.taken_through, group.synced_through,
            "no group in flight without a leader"
        );
        group.leading = true;
        loop {
            let batch = group.take_batch(self.size_bytes);
            drop(group);
            let result = self.write_and_sync(&batch);
            group = self.lock();
            group.publish(batch, result);
            let done = group.synced_through >= seq || group.failure.is_some();
            if done {
                group.leading = false;
            }
            self.published.notify_all();
            if done {
                return group;
            }
        }
    }

    /// One `pwrite` of the group and one `fdatasync`.
    fn write_and_sync(&self, batch: &Batch) -> io::Result<()> {
        assert!(batch.offset + batch.bytes.len() as u64 <= self.size_bytes);
        self.file.write_all_at(&batch.bytes, batch.offset)?;
        self.file.sync_data()
    }

    fn lock(&self) -> MutexGuard<'_, Group> {
        self.group.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The `fdatasync`s of the groups so far (one each).
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// The bytes of the synced groups.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// The preallocated size.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Fails the log when its leader panics (a broken invariant): the followers get an error
/// instead of waiting forever for a group no one will publish.
struct FailOnPanic<'a>(&'a RawGroupLog);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut group = self.0.lock();
            group.leading = false;
            group
                .failure
                .get_or_insert_with(|| (io::ErrorKind::Other, "its leader panicked".into()));
            drop(group);
            self.0.published.notify_all();
        }
    }
}

#[cfg(test)]
mod tests;
