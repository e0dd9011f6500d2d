//! Scans past the end of a segment's readable records, for keel-recovery's judgement of what
//! that end means: whether a later record's durable mark proves the missing records were
//! acknowledged (damage, never a torn tail), and where reading can resume after damage.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};
use crate::format::record::{self, RECORD_ALIGN, RECORD_HEADER_LEN};
use crate::format::segment::{SegmentFile, SegmentHeader};
use crate::ids::Lsn;

/// What lies beyond the tail of a segment.
#[derive(Debug)]
pub enum Beyond {
    /// Nothing but zeros: a clean end.
    Zeros,
    /// Non-zero bytes, none of them a record proving the tail was durable: a torn tail.
    Debris,
    /// A verifiable record whose durable mark reaches the missing LSN.
    LaterMark(record::RecordHeader),
}

/// Visits every 8-byte aligned position of `[from, end)` that starts a non-zero
/// record-header-sized window, in order, reading the file in bounded chunks, until `visit`
/// returns something.
fn scan_headers<T>(
    file: &File,
    segment: &SegmentFile,
    from: u64,
    end: u64,
    mut visit: impl FnMut(u64, &[u8]) -> Option<T>,
) -> Result<Option<T>> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; usize::try_from(CHUNK).expect("1 MiB") + RECORD_HEADER_LEN];
    let mut chunk_start = from;
    while chunk_start + RECORD_HEADER_LEN as u64 <= end {
        let chunk_end = (chunk_start + CHUNK + RECORD_HEADER_LEN as u64).min(end);
        let len = usize::try_from(chunk_end - chunk_start).expect("bounded by CHUNK");
        file.read_exact_at(&mut buf[..len], chunk_start)
            .map_err(|e| Error::io("reading segment", &segment.path, e))?;
        let mut at = 0;
        while at + RECORD_HEADER_LEN <= len && (at as u64) < CHUNK {
            let candidate = &buf[at..at + RECORD_HEADER_LEN];
            if candidate.iter().any(|&b| b != 0)
                && let Some(found) = visit(chunk_start + at as u64, candidate)
            {
                return Ok(Some(found));
            }
            at += RECORD_ALIGN;
        }
        chunk_start += CHUNK;
    }
    Ok(None)
}

/// Scans `[from, end)` for a verifiable record header whose durable mark reaches `lsn`.
pub fn scan_beyond(
    file: &File,
    segment: &SegmentFile,
    header: &SegmentHeader,
    from: u64,
    end: u64,
    lsn: Lsn,
) -> Result<Beyond> {
    let mut debris = false;
    let marked = scan_headers(file, segment, from, end, |_, candidate| {
        debris = true;
        record::parse_header(candidate, header.salt, u64::MAX)
            .ok()
            .filter(|found| found.durable_lsn >= lsn)
    })?;
    Ok(match marked {
        Some(found) => Beyond::LaterMark(found),
        None if debris => Beyond::Debris,
        None => Beyond::Zeros,
    })
}

/// The first verifiable record header in `[from, end)` (8-byte steps) with an LSN of at least
/// `min_lsn`, and its offset: where salvage resumes after damage.
pub fn next_valid_header(
    file: &File,
    segment: &SegmentFile,
    header: &SegmentHeader,
    from: u64,
    end: u64,
    min_lsn: Lsn,
) -> Result<Option<(u64, record::RecordHeader)>> {
    scan_headers(file, segment, from, end, |offset, candidate| {
        record::parse_header(candidate, header.salt, header.payload_limit_at(offset))
            .ok()
            .filter(|found| found.lsn >= min_lsn)
            .map(|found| (offset, found))
    })
}
