//! Reading a whole log directory, segment after segment.

use std::path::Path;

use crate::dir::{fsutil, listing};
use crate::error::{CorruptionReason, Error, Result};
use crate::format::reader::{RecordRef, SegmentEvent, SegmentReader};
use crate::format::segment::SegmentFile;
use crate::ids::{DatabaseId, Lsn};

/// Reads every record of a directory's segments in LSN order, checking continuity. Any
/// damage is an error: use it on a log that was opened (and so repaired) before, or closed
/// cleanly. Records appended while it reads may or may not be seen.
#[derive(Debug)]
pub struct LogReader {
    segments: Vec<SegmentFile>,
    next_segment: usize,
    current: Option<SegmentReader>,
    expected_lsn: Option<Lsn>,
    database_id: Option<DatabaseId>,
    from_lsn: Lsn,
}

impl LogReader {
    /// Reads the log in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let listing = listing::list_directory(dir)?;
        let database_id = fsutil::read_identity(dir)?;
        Ok(LogReader {
            segments: listing.segments,
            next_segment: 0,
            current: None,
            expected_lsn: None,
            database_id,
            from_lsn: 0,
        })
    }

    /// Reads the log in `dir` from `from_lsn` on: segments wholly below it are not opened and
    /// the records below it are skipped. Reading starts at the first record still in the log
    /// when `from_lsn` is below it (segments a checkpoint removed): check the first LSN.
    pub fn open_from(dir: &Path, from_lsn: Lsn) -> Result<Self> {
        let mut reader = Self::open(dir)?;
        reader.next_segment = reader
            .segments
            .iter()
            .rposition(|s| s.first_lsn <= from_lsn)
            .unwrap_or(0);
        reader.from_lsn = from_lsn;
        Ok(reader)
    }

    /// The next record, or `None` after the last one.
    pub fn next_record(&mut self) -> Result<Option<RecordRef<'_>>> {
        loop {
            match &mut self.current {
                Some(reader) => {
                    if !reader.at_clean_end()? {
                        break;
                    }
                    if !reader.still_holds_its_segment() {
                        return Err(removed(reader.path(), self.expected_lsn));
                    }
                    self.current = None;
                }
                None if self.next_segment == self.segments.len() => return Ok(None),
                None => self.open_next_segment()?,
            }
        }
        let reader = self.current.as_mut().expect("positioned on a segment");
        let path = reader.path().to_path_buf();
        match reader.next_event()? {
            SegmentEvent::Record(record) => {
                let expected = self.expected_lsn.expect("set when the segment opened");
                if record.lsn != expected {
                    let reason = CorruptionReason::LsnMismatch {
                        expected,
                        found: record.lsn,
                    };
                    return Err(Error::corruption(path, record.offset, reason));
                }
                self.expected_lsn = Some(expected + 1);
                Ok(Some(record))
            }
            // Recycling renames a segment away before its file is written over: damage read
            // in a segment whose name is gone is the later segment's records.
            SegmentEvent::Damaged { .. } if !path.exists() => {
                Err(removed(&path, self.expected_lsn))
            }
            SegmentEvent::Damaged { offset, reason } => {
                Err(Error::corruption(path, offset, reason))
            }
            SegmentEvent::End { .. } => unreachable!("checked by at_clean_end"),
        }
    }

    fn open_next_segment(&mut self) -> Result<()> {
        let segment = &self.segments[self.next_segment];
        self.next_segment += 1;
        let reader = match SegmentReader::open(segment) {
            Ok(reader) => reader,
            // Removed since the listing, or recycled between the open and the header read
            // and rewritten as a later segment: its name is gone either way.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(removed(&segment.path, self.expected_lsn));
            }
            Err(Error::Corruption { .. }) if !segment.path.exists() => {
                return Err(removed(&segment.path, self.expected_lsn));
            }
            Err(error) => return Err(error),
        };
        let header = *reader.header();
        if let Some(expected) = self.database_id
            && header.database_id != expected
        {
            return Err(Error::ForeignDatabase {
                path: segment.path.clone(),
                expected,
                found: header.database_id,
            });
        }
        if let Some(expected) = self.expected_lsn
            && header.first_lsn != expected
        {
            let reason = CorruptionReason::MissingSegment {
                expected,
                found: header.first_lsn,
            };
            return Err(Error::corruption(&segment.path, 0, reason));
        }
        let mut reader = reader;
        let expected = if self.from_lsn > header.first_lsn {
            reader.skip_below(self.from_lsn)?
        } else {
            header.first_lsn
        };
        self.expected_lsn = Some(expected);
        self.current = Some(reader);
        Ok(())
    }
}

/// The segment at `path` was freed while its file was open here, and the file recycled
/// ([`crate::WalOptions::recycle_segments`]): a later segment is written over it, so what is
/// read there is not damage but records removed from the log.
fn removed(path: &Path, expected: Option<Lsn>) -> Error {
    let oldest = path
        .parent()
        .and_then(|dir| listing::list_directory(dir).ok())
        .and_then(|listing| listing.segments.first().map(|s| s.first_lsn))
        .unwrap_or_default();
    Error::LsnRemoved {
        requested: expected.unwrap_or_default(),
        oldest,
    }
}
