//! Following the log as it grows: the records from an LSN on, each once it is durable.
//!
//! A [`Tail`] reads the segment files (as [`crate::LogReader`] does) and never past the
//! durable position the writer publishes after each `fdatasync`: a record it yields cannot be
//! taken back by a crash, whatever the durability mode its append was acknowledged under.
//! When it reaches the durable position it waits (as a [`Stream`], without a thread) until
//! the writer publishes a new one; it follows the writer into each new segment. It ends
//! (`None`) once the log is closed and every durable record was read; after a poisoned
//! writer it yields the records that were durable, then the poison.
//!
//! **Retention.** A live tail holds the log from its position back from removal
//! ([`crate::Wal::remove_segments_before`] keeps the segment it reads next), up to
//! [`crate::WalOptions::tail_max_lag_bytes`] of log: a tail further behind when segments are
//! removed is let go (it ends with [`Error::TailFellBehind`]) and the log goes as if it were
//! not there. A tail that ended (an error, or the log closed) holds nothing until it is
//! moved ([`Tail::seek`]). The writer never waits for a tail. A tail made at a position already removed
//! ends with [`Error::LsnRemoved`], naming the oldest LSN still there.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::task::{Context, Poll};

use futures::Stream;

use crate::dir::list_directory;
use crate::error::{CorruptionReason, Error, Result};
use crate::format::reader::{OwnedRecord, SegmentEvent, SegmentReader};
use crate::ids::{DatabaseId, Lsn};
use crate::writer::Shared;
use crate::writer::holds::Hold;

/// The durable records of a log from an LSN on, in LSN order, each once: see the module.
/// Made by [`crate::Wal::tail`].
#[derive(Debug)]
pub struct Tail {
    shared: Arc<Shared>,
    dir: PathBuf,
    database_id: DatabaseId,
    /// This tail's waker slot in the writer's watch.
    id: u64,
    next_lsn: Lsn,
    /// The segment being read, positioned at `next_lsn`, and its first LSN.
    reader: Option<(Lsn, SegmentReader)>,
    ended: bool,
    /// What keeps the log from `next_lsn` on, while `held` (a tail that ended holds nothing).
    hold: Arc<Hold>,
    held: bool,
    max_lag: u64,
}

impl Tail {
    pub(crate) fn new(
        shared: Arc<Shared>,
        dir: PathBuf,
        database_id: DatabaseId,
        from: Lsn,
        max_lag: u64,
        keep_from: Option<Lsn>,
    ) -> Tail {
        let id = shared.watch.new_id();
        let from = from.max(1);
        let hold = shared.holds.add(from, keep_from.unwrap_or(Lsn::MAX));
        Tail {
            shared,
            dir,
            database_id,
            id,
            next_lsn: from,
            reader: None,
            ended: false,
            hold,
            held: true,
            max_lag,
        }
    }

    /// Ends the tail: it reads no more (until a seek) and holds no log.
    fn end(&mut self) {
        self.ended = true;
        self.reader = None;
        if self.held {
            self.shared.holds.remove(&self.hold);
            self.held = false;
        }
    }

    /// Moves the tail to `lsn` (at least 1), before or after where it is: the next record
    /// it yields is the one at `lsn`. A tail that ended (an error, or the log closed) reads
    /// again from there.
    pub fn seek(&mut self, lsn: Lsn) {
        self.next_lsn = lsn.max(1);
        self.reader = None;
        self.ended = false;
        if self.hold.fell_behind.load(Relaxed) || !self.held {
            // Let go, or ended: held again, from here.
            self.hold = self.shared.holds.add(self.next_lsn, Lsn::MAX);
            self.held = true;
        } else {
            self.hold.position.store(self.next_lsn, Release);
        }
    }

    /// Keeps the log from `lsn` on from removal too, below the tail's position, for a
    /// reader that may [`Tail::seek`] back to it (`None`: no longer). Counts in the tail's
    /// lag as its position does, except that a removal that would let the tail go for it
    /// drops the keep instead (a seek back then finds the log removed); a tail let go keeps
    /// nothing.
    pub fn keep_from(&mut self, lsn: Option<Lsn>) {
        self.hold.kept_from.store(lsn.unwrap_or(Lsn::MAX), Release);
    }

    /// The LSN of the next record this tail yields.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The highest durable LSN: records up to it can be read now.
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.counters.durable_lsn.load(Relaxed)
    }

    /// The next record if it is durable already, without waiting; `Ok(None)` when it is not
    /// (yet). An error ends the tail.
    pub fn try_next(&mut self) -> Result<Option<OwnedRecord>> {
        if self.ended {
            return Ok(None);
        }
        if self.hold.fell_behind.load(Relaxed) {
            self.end();
            return Err(Error::TailFellBehind {
                position: self.next_lsn,
                lag_bytes: self.hold.lag.load(Relaxed),
                max_bytes: self.max_lag,
            });
        }
        if self.next_lsn > self.durable_lsn() {
            return Ok(None);
        }
        match self.read_next() {
            Ok(record) => {
                self.next_lsn += 1;
                self.hold.position.store(self.next_lsn, Relaxed);
                Ok(Some(record))
            }
            Err(error) => {
                self.end();
                Err(error)
            }
        }
    }

    /// Reads the record at `next_lsn`, which is durable.
    fn read_next(&mut self) -> Result<OwnedRecord> {
        // A segment being written may have been read ahead before the record was: once
        // more from the file. Then, at its end, the record is in the next segment.
        let mut fresh = false;
        loop {
            if self.reader.is_none() {
                self.reader = Some(self.open_segment_at(self.next_lsn)?);
                fresh = true;
            }
            let (first, reader) = self.reader.as_mut().expect("opened above");
            let first = *first;
            match reader.next_event()? {
                SegmentEvent::Record(record) if record.lsn == self.next_lsn => {
                    return Ok(OwnedRecord::copied_from(&record));
                }
                SegmentEvent::Record(record) => {
                    let (offset, found) = (record.offset, record.lsn);
                    let reason = CorruptionReason::LsnMismatch {
                        expected: self.next_lsn,
                        found,
                    };
                    return Err(Error::corruption(reader.path(), offset, reason));
                }
                SegmentEvent::End { .. } | SegmentEvent::Damaged { .. } if !fresh => {
                    reader.forget_read_ahead();
                    fresh = true;
                    continue;
                }
                SegmentEvent::End { .. } => {}
                // The segment read last, freed once the tail's position moved past it, may
                // have been recycled and written over by a later segment: what follows its
                // records then is the later segment's, and the record is in the next one.
                SegmentEvent::Damaged { offset, reason } => {
                    if reader.still_holds_its_segment() {
                        return Err(Error::corruption(reader.path(), offset, reason));
                    }
                }
            }
            // Read from the file: the segment ends before the record, which is durable, so
            // it starts the next segment.
            self.reader = None;
            let next = self.open_segment_at(self.next_lsn)?;
            if next.0 == first {
                let path = next.1.path().to_path_buf();
                let offset = next.1.offset();
                return Err(Error::corruption(
                    path,
                    offset,
                    CorruptionReason::MissingSegment {
                        expected: self.next_lsn,
                        found: first,
                    },
                ));
            }
            self.reader = Some(next);
            fresh = true;
        }
    }

    /// Opens the segment that holds `lsn` and moves past the records below it.
    fn open_segment_at(&self, lsn: Lsn) -> Result<(Lsn, SegmentReader)> {
        // Twice at most: a checkpoint may remove the segment between the listing and the
        // open, and the second listing then says where the log starts.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let segments = list_directory(&self.dir)?.segments;
            let oldest = segments.first().map_or(lsn, |s| s.first_lsn);
            let Some(index) = segments.iter().rposition(|s| s.first_lsn <= lsn) else {
                return Err(Error::LsnRemoved {
                    requested: lsn,
                    oldest,
                });
            };
            let segment = &segments[index];
            let mut reader = match SegmentReader::open(segment) {
                Ok(reader) => reader,
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && attempts < 2 =>
                {
                    continue;
                }
                // Recycled between the open and the header read, and rewritten as a later
                // segment (its name gone): removed, as above.
                Err(Error::Corruption { .. }) if !segment.path.exists() && attempts < 2 => {
                    continue;
                }
                Err(error) => return Err(error),
            };
            let found = reader.header().database_id;
            if found != self.database_id {
                return Err(Error::ForeignDatabase {
                    path: segment.path.clone(),
                    expected: self.database_id,
                    found,
                });
            }
            // The records below `lsn` (their headers checked); `next_event` reports whatever
            // stops it short.
            reader.skip_below(lsn)?;
            return Ok((segment.first_lsn, reader));
        }
    }
}

impl Stream for Tail {
    type Item = Result<OwnedRecord>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let tail = self.get_mut();
        loop {
            if tail.ended {
                return Poll::Ready(None);
            }
            match tail.try_next() {
                Ok(Some(record)) => return Poll::Ready(Some(Ok(record))),
                Err(error) => return Poll::Ready(Some(Err(error))),
                Ok(None) => {}
            }
            // Nothing durable to read. The end of the log first: read once the writer is
            // gone, the durable position is final.
            if let Some(end) = tail.shared.queue.durable_end() {
                if tail.next_lsn <= tail.durable_lsn() {
                    continue;
                }
                tail.end();
                return Poll::Ready(match end {
                    Error::Closed => None,
                    poisoned => Some(Err(poisoned)),
                });
            }
            tail.shared.watch.register(tail.id, cx.waker());
            if tail.next_lsn <= tail.durable_lsn()
                || tail.shared.queue.durable_end().is_some()
                || tail.hold.fell_behind.load(Relaxed)
            {
                continue;
            }
            return Poll::Pending;
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.shared.watch.cancel(self.id);
        if self.held {
            self.shared.holds.remove(&self.hold);
        }
    }
}
