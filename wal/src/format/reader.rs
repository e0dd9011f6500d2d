//! Reading segments back. [`SegmentReader`] streams one segment through a bounded, aligned
//! buffer and reports each record, the clean end of the written data, or damage, without
//! judging it; [`LogReader`](crate::LogReader) walks every segment of a directory in LSN
//! order and treats any anomaly as an error (for logs already recovered). Entries are validated rkyv archives
//! borrowed from the reader's buffer: nothing is deserialized.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;

use crate::error::{CorruptionReason, Error, Result};
use crate::format::entry::ArchivedWalEntry;
use crate::format::record::{self, RECORD_HEADER_LEN};
use crate::format::segment::{self, HEADER_BLOCK_LEN, SegmentFile, SegmentHeader};
use crate::ids::Lsn;

/// Bytes read from the file at a time (a record larger than this is read whole).
pub(crate) const READ_CHUNK: usize = 1 << 20;

/// The least a reader at the live end of a log reads at a time
/// ([`SegmentReader::forget_read_ahead`]).
const LIVE_READ_CHUNK: usize = 16 << 10;

/// Where one record sits: enough to read it back alone with [`crate::Wal::read_record`].
/// Reported by [`crate::Wal::append_placed`] and by [`RecordRef::position`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordPosition {
    /// The segment, by its first LSN (its file name).
    pub segment: Lsn,
    /// Byte offset of the record in the segment file.
    pub offset: u64,
    /// The record's LSN, checked when it is read back.
    pub lsn: Lsn,
}

/// One record read back alone ([`crate::Wal::read_record`]): its checksums verified and its
/// archive validated; the entry is borrowed from an aligned buffer the record owns.
#[derive(Debug)]
pub struct OwnedRecord {
    position: RecordPosition,
    lsn: Lsn,
    body: AlignedVec<16>,
    payload_len: usize,
}

impl OwnedRecord {
    /// A copy of a record read by a [`SegmentReader`], to keep past the reader's next step.
    pub(crate) fn copied_from(record: &RecordRef<'_>) -> OwnedRecord {
        let mut body = AlignedVec::<16>::with_capacity(record.payload.len());
        body.extend_from_slice(record.payload);
        OwnedRecord {
            position: record.position(),
            lsn: record.lsn,
            payload_len: record.payload.len(),
            body,
        }
    }

    /// Where the record sits in the log.
    pub fn position(&self) -> RecordPosition {
        self.position
    }

    /// The record's LSN.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The archive bytes.
    pub fn payload(&self) -> &[u8] {
        &self.body[..self.payload_len]
    }

    /// The entry, zero-copy.
    pub fn entry(&self) -> &ArchivedWalEntry {
        // Validated when the record was read; validation is repeated rather than trusted
        // with unchecked access, which would need `unsafe`.
        rkyv::access::<ArchivedWalEntry, rkyv::rancor::Error>(self.payload())
            .expect("the archive was validated when the record was read")
    }
}

/// Reads the record at `position` of the segment open as `file` (whose header is `header`):
/// checks both checksums, that the record is the one expected (its LSN), and its archive.
pub(crate) fn read_record_at(
    file: &File,
    path: &Path,
    header: &SegmentHeader,
    position: RecordPosition,
) -> Result<OwnedRecord> {
    let damaged = |reason| Error::corruption(path.to_path_buf(), position.offset, reason);
    if position.offset < HEADER_BLOCK_LEN
        || !position.offset.is_multiple_of(record::RECORD_ALIGN as u64)
        // Checked: a position is caller input, and an offset near `u64::MAX` must not wrap.
        || position
            .offset
            .checked_add(RECORD_HEADER_LEN as u64)
            .is_none_or(|end| end > header.segment_bytes)
    {
        return Err(damaged(CorruptionReason::TruncatedRecord));
    }
    let mut head = [0u8; RECORD_HEADER_LEN];
    file.read_exact_at(&mut head, position.offset)
        .map_err(|e| Error::io("reading record from", path, e))?;
    let limit = header.payload_limit_at(position.offset);
    let parsed = record::parse_header(&head, header.salt, limit).map_err(damaged)?;
    if parsed.lsn != position.lsn {
        return Err(damaged(CorruptionReason::LsnMismatch {
            expected: position.lsn,
            found: parsed.lsn,
        }));
    }
    let mut body = AlignedVec::<16>::with_capacity(record::padded_len(parsed.payload_len as usize));
    body.resize(record::padded_len(parsed.payload_len as usize), 0);
    file.read_exact_at(&mut body, position.offset + RECORD_HEADER_LEN as u64)
        .map_err(|e| Error::io("reading record from", path, e))?;
    record::check_body(&parsed, &body, header.salt).map_err(damaged)?;
    Ok(OwnedRecord {
        position,
        lsn: parsed.lsn,
        body,
        payload_len: parsed.payload_len as usize,
    })
}

/// One verified record, borrowed from the reader.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// The segment the record is in, by its first LSN.
    pub segment: Lsn,
    /// The record's LSN.
    pub lsn: Lsn,
    /// The highest LSN that was durable when this record was written.
    pub durable_lsn: Lsn,
    /// Offset of the record in its segment file.
    pub offset: u64,
    /// Bytes the record takes on disk.
    pub len: u64,
    /// The entry, validated, zero-copy.
    pub entry: &'a ArchivedWalEntry,
    /// The archive bytes the entry lives in (16-byte aligned in memory), for callers that
    /// keep a record beyond the reader's next step.
    pub payload: &'a [u8],
}

impl RecordRef<'_> {
    /// Where the record sits, for [`crate::Wal::read_record`].
    pub fn position(&self) -> RecordPosition {
        RecordPosition {
            segment: self.segment,
            offset: self.offset,
            lsn: self.lsn,
        }
    }
}

/// What a segment holds at the reader's position.
#[derive(Debug)]
pub enum SegmentEvent<'a> {
    /// The next record, verified; the reader has moved past it.
    Record(RecordRef<'a>),
    /// No further record: the next header is all zeros or the segment is full.
    End {
        /// Where the records end: the offset the next record would go to.
        offset: u64,
    },
    /// The bytes at `offset` are not a valid record.
    Damaged {
        /// Where the invalid record starts in the segment file.
        offset: u64,
        /// What is wrong with it.
        reason: CorruptionReason,
    },
}

/// Streams the records of one segment.
#[derive(Debug)]
pub struct SegmentReader {
    file: File,
    path: PathBuf,
    header: SegmentHeader,
    end: u64,
    buf: AlignedVec<16>,
    buf_offset: u64,
    next_offset: u64,
    /// Bytes the next refill reads (at least): [`READ_CHUNK`], or less at a live end.
    chunk: usize,
}

impl SegmentReader {
    /// Opens a segment and checks its header.
    pub fn open(segment: &SegmentFile) -> Result<Self> {
        let file = File::open(&segment.path)
            .map_err(|e| Error::io("opening segment", &segment.path, e))?;
        Self::from_file(file, segment)
    }

    /// Reads a segment through an already open file (read access is enough).
    pub(crate) fn from_file(file: File, segment: &SegmentFile) -> Result<Self> {
        let header = segment::read_header(&file, segment)?;
        Self::with_header(file, segment, header)
    }

    /// Reads a segment whose header the caller has read and checked already (with
    /// [`segment::read_header`]): the header is not read again.
    pub fn with_header(file: File, segment: &SegmentFile, header: SegmentHeader) -> Result<Self> {
        let len = file
            .metadata()
            .map_err(|e| Error::io("reading metadata of", &segment.path, e))?
            .len();
        Ok(SegmentReader {
            file,
            path: segment.path.clone(),
            header,
            end: len.min(header.segment_bytes),
            buf: AlignedVec::with_capacity(READ_CHUNK),
            buf_offset: HEADER_BLOCK_LEN,
            next_offset: HEADER_BLOCK_LEN,
            chunk: READ_CHUNK,
        })
    }

    /// The segment's header.
    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    /// The segment's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the next record would start.
    pub fn offset(&self) -> u64 {
        self.next_offset
    }

    /// The end of the readable region (file length or segment size, whichever is smaller).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Continues reading at `offset` (8-byte aligned, inside the record area), for callers
    /// that skip damaged bytes.
    pub fn reposition(&mut self, offset: u64) {
        assert!(
            offset >= HEADER_BLOCK_LEN && offset.is_multiple_of(record::RECORD_ALIGN as u64),
            "reposition to {offset}"
        );
        self.next_offset = offset;
    }

    /// Drops what was read ahead of the position, so the next read goes to the file: for a
    /// reader of a segment that is still being written, whose read-ahead may predate
    /// records written since.
    ///
    /// The next read is then about as large as what was read since the last one (the log's
    /// growth between two looks), not a whole [`READ_CHUNK`]: a tail that follows a log
    /// group commit by group commit would otherwise copy and zero a megabyte for every few
    /// kilobytes written. Reads grow again as the reader keeps finding records.
    pub(crate) fn forget_read_ahead(&mut self) {
        let read = self.next_offset.saturating_sub(self.buf_offset);
        let read = usize::try_from(read).unwrap_or(READ_CHUNK);
        self.chunk = read.clamp(LIVE_READ_CHUNK, READ_CHUNK);
        self.buf.clear();
        self.buf_offset = self.next_offset;
    }

    /// Whether the file still holds this reader's segment (its header reads back as it was
    /// opened): a file a checkpoint freed may be recycled ([`crate::WalOptions::recycle_segments`])
    /// and written over by a later segment while it is open here.
    pub(crate) fn still_holds_its_segment(&self) -> bool {
        let mut block = [0u8; segment::HEADER_LEN];
        self.file.read_exact_at(&mut block, 0).is_ok()
            && SegmentHeader::decode(&block, &self.path).is_ok_and(|h| h == self.header)
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Gives the underlying file back.
    pub fn into_file(self) -> File {
        self.file
    }

    /// True when the next position holds no record: an all-zero header or no room for one.
    /// In a recycled segment, also a header whose checksum does not verify under the
    /// segment's salt: the file's earlier contents follow its records, as zeros follow them
    /// in a zero-filled one (`docs/FORMAT.md`, "Recycled segments").
    pub fn at_clean_end(&mut self) -> Result<bool> {
        let offset = self.next_offset;
        if offset + RECORD_HEADER_LEN as u64 > self.end {
            return Ok(true);
        }
        let (recycled, salt) = (self.header.is_recycled(), self.header.salt);
        let header = self.fill(offset, RECORD_HEADER_LEN)?;
        Ok(header.iter().all(|&b| b == 0) || (recycled && !record::header_verifies(header, salt)))
    }

    /// Moves past the records below `lsn`, checking only their header checksums (their bodies
    /// are not read). Stops early at anything that is not such a record, for
    /// [`SegmentReader::next_event`] to report. Returns the LSN expected next.
    pub fn skip_below(&mut self, lsn: Lsn) -> Result<Lsn> {
        let mut expected = self.header.first_lsn;
        while expected < lsn && !self.at_clean_end()? {
            let offset = self.next_offset;
            let limit = self.header.payload_limit_at(offset);
            let salt = self.header.salt;
            let parsed = record::parse_header(self.fill(offset, RECORD_HEADER_LEN)?, salt, limit);
            let Ok(parsed) = parsed else { break };
            let len = parsed.record_len() as u64;
            if parsed.lsn != expected || offset + len > self.end {
                break;
            }
            self.next_offset = offset + len;
            expected += 1;
        }
        Ok(expected)
    }

    /// Reads the next record. After `End` or `Damaged` the position does not move.
    pub fn next_event(&mut self) -> Result<SegmentEvent<'_>> {
        let offset = self.next_offset;
        if self.at_clean_end()? {
            return Ok(SegmentEvent::End { offset });
        }
        let limit = self.header.payload_limit_at(offset);
        let salt = self.header.salt;
        let parsed = match record::parse_header(self.fill(offset, RECORD_HEADER_LEN)?, salt, limit)
        {
            Ok(parsed) => parsed,
            Err(reason) => return Ok(SegmentEvent::Damaged { offset, reason }),
        };
        let len = parsed.record_len() as u64;
        if offset + len > self.end {
            return Ok(SegmentEvent::Damaged {
                offset,
                reason: CorruptionReason::TruncatedRecord,
            });
        }
        let len_usize = usize::try_from(len).expect("bounded by the payload limit");
        self.fill(offset, len_usize)?;
        let start = usize::try_from(offset - self.buf_offset).expect("inside the buffer");
        let body = &self.buf[start + RECORD_HEADER_LEN..start + len_usize];
        match record::check_body(&parsed, body, salt) {
            Ok(entry) => {
                self.next_offset = offset + len;
                let lsn = parsed.lsn;
                Ok(SegmentEvent::Record(RecordRef {
                    segment: self.header.first_lsn,
                    lsn,
                    durable_lsn: parsed.durable_lsn,
                    offset,
                    len,
                    entry,
                    payload: &body[..parsed.payload_len as usize],
                }))
            }
            Err(reason) => Ok(SegmentEvent::Damaged { offset, reason }),
        }
    }

    /// Makes `[offset, offset + len)` resident and returns it. `offset` is 8-byte aligned and
    /// becomes the buffer's start when the buffer is refilled, so payloads stay aligned.
    fn fill(&mut self, offset: u64, len: usize) -> Result<&[u8]> {
        debug_assert_eq!(offset % record::RECORD_ALIGN as u64, 0);
        let resident_end = self.buf_offset + self.buf.len() as u64;
        if offset < self.buf_offset || offset + len as u64 > resident_end {
            self.refill(offset, len)?;
        }
        let start = usize::try_from(offset - self.buf_offset).expect("inside the buffer");
        Ok(&self.buf[start..start + len])
    }

    fn refill(&mut self, offset: u64, len: usize) -> Result<()> {
        let resident_end = self.buf_offset + self.buf.len() as u64;
        let keep = if offset >= self.buf_offset && offset < resident_end {
            let from = usize::try_from(offset - self.buf_offset).expect("inside the buffer");
            self.buf.as_mut_slice().copy_within(from.., 0);
            self.buf.len() - from
        } else {
            0
        };
        self.buf.resize(keep, 0);
        self.buf_offset = offset;
        let want = (len.max(self.chunk) as u64).min(self.end - offset);
        let want = usize::try_from(want).expect("bounded by the chunk or record size");
        // A reader that keeps finding records reads more at a time, up to a whole chunk.
        self.chunk = self.chunk.saturating_mul(2).min(READ_CHUNK);
        if want > keep {
            self.buf.resize(want, 0);
            self.file
                .read_exact_at(&mut self.buf[keep..want], offset + keep as u64)
                .map_err(|e| Error::io("reading segment", &self.path, e))?;
        }
        Ok(())
    }
}
