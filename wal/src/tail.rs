//! Finding where the log ends when a writer opens it, and making that end safe to append at.
//!
//! Only the last segment can end torn: the writer makes a segment's records durable before it
//! writes anything to the next one (the rotation barrier in `writer/rotation.rs`). The tail is
//! the first position of the last segment that does not hold the next expected record. What
//! follows it decides what it means:
//! - a later record whose durable mark reaches the missing LSN, or the segment's durable
//!   witness (`witness.rs`) claiming it, proves the missing record had been acknowledged as
//!   durable: that is damage, never a torn tail, and opening fails (also when the written data
//!   simply ends below what the witness claims);
//! - otherwise everything from the tail on was never acknowledged as durable: it is zeroed
//!   (and synced), so that no stale record beyond the cut can ever be read back after new
//!   appends. The cut lies above the witness, which therefore stays true.
//!
//! Full validation of every segment, and the other policies, belong to keel-recovery.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::{CorruptionReason, Error, Result};
use crate::ids::Lsn;
use crate::reader::{SegmentEvent, SegmentReader};
use crate::record::{self, RECORD_ALIGN, RECORD_HEADER_LEN};
use crate::segment::{SegmentFile, SegmentHeader};
use crate::witness::{self, DurableProof, Witness};

/// Where appends continue.
#[derive(Debug)]
pub(crate) struct Tail {
    pub header: SegmentHeader,
    /// Offset of the first free byte.
    pub append_offset: u64,
    /// LSN of the next record.
    pub next_lsn: Lsn,
    /// Non-zero bytes found beyond the tail and zeroed.
    pub truncated_bytes: u64,
    /// The segment's newest valid witness (it claims nothing beyond the tail).
    pub witness: Option<Witness>,
}

/// Scans the last segment (opened read-write as `file`) and repairs a torn tail.
pub(crate) fn repair(
    storage: &dyn crate::Storage,
    file: File,
    segment: &SegmentFile,
) -> Result<(File, Tail)> {
    let mut reader = SegmentReader::from_file(file, segment)?;
    let header = *reader.header();
    let mut expected = header.first_lsn;
    let (tail_offset, damage) = loop {
        match reader.next_event()? {
            SegmentEvent::Record(found) if found.lsn == expected => expected += 1,
            SegmentEvent::Record(found) => {
                let reason = CorruptionReason::LsnMismatch {
                    expected,
                    found: found.lsn,
                };
                break (found.offset, Some(reason));
            }
            SegmentEvent::End { offset } => break (offset, None),
            SegmentEvent::Damaged { offset, reason } => break (offset, Some(reason)),
        }
    };
    let end = reader.end();
    let file = reader.into_file();
    let witness = witness::read(&file, &segment.path, &header)?;
    let beyond = scan_beyond(&file, segment, &header, tail_offset, end, expected)?;
    let proof = match beyond {
        Beyond::LaterMark(found) => Some(DurableProof::LaterRecord {
            lsn: found.lsn,
            durable_lsn: found.durable_lsn,
        }),
        _ => witness
            .filter(|w| w.covers(expected, tail_offset))
            .map(DurableProof::from),
    };
    if let Some(proof) = proof {
        let reason = CorruptionReason::DamageBelowDurableMark {
            lsn: expected,
            proof,
        };
        tracing::error!(segment = %segment.path.display(), offset = tail_offset, ?damage, %proof, "acknowledged record damaged or missing");
        return Err(Error::corruption(&segment.path, tail_offset, reason));
    }
    let truncated_bytes = match beyond {
        Beyond::Debris => crate::fsutil::zero_range(&file, &segment.path, tail_offset, end)?,
        _ => 0,
    };
    if truncated_bytes > 0 {
        crate::fsutil::sync_file(storage, &file, &segment.path, false)?;
        tracing::warn!(
            segment = %segment.path.display(), offset = tail_offset, truncated_bytes, ?damage,
            "truncated a torn tail"
        );
    }
    Ok((
        file,
        Tail {
            header,
            append_offset: tail_offset,
            next_lsn: expected,
            truncated_bytes,
            witness,
        },
    ))
}

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
