//! Scans past the end of a segment's readable records, for keel-recovery's judgement of what
//! that end means: whether a later record's durable mark proves the missing records were
//! acknowledged (damage, never a torn tail), and where reading can resume after damage.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};
use crate::format::record::{self, RECORD_ALIGN, RECORD_HEADER_LEN};
use crate::format::segment::{SegmentFile, SegmentHeader};
use crate::format::zeros;
use crate::ids::Lsn;

/// What lies beyond the tail of a segment.
#[derive(Debug)]
pub enum Beyond {
    /// Nothing but zeros: a clean end. In a recycled segment, nothing of its own: zeros, or
    /// the file's earlier contents (no record header verifies under its salt).
    Zeros,
    /// Non-zero bytes, none of them a record proving the tail was durable: a torn tail. In a
    /// recycled segment, only a record header of its own (verifying under its salt) counts.
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
        // The all-zero windows are skipped a run at a time, not tested one by one.
        while let Some(nonzero) = zeros::first_nonzero(&buf[at..len]) {
            at = first_window_holding(at + nonzero).max(at);
            if at + RECORD_HEADER_LEN > len || at as u64 >= CHUNK {
                break;
            }
            let candidate = &buf[at..at + RECORD_HEADER_LEN];
            debug_assert!(!zeros::is_zero(candidate));
            if let Some(found) = visit(chunk_start + at as u64, candidate) {
                return Ok(Some(found));
            }
            at += RECORD_ALIGN;
        }
        chunk_start += CHUNK;
    }
    Ok(None)
}

/// Whether a header-sized window could be a record of `header`'s segment with an LSN of at
/// least `min_lsn`, by its fields alone: checked before the checksum in recycled segments,
/// whose tails are full of the earlier contents' bytes, so that most windows cost a few
/// comparisons, not a CRC. Every record the segment's writer wrote passes it.
fn could_be_of(window: &[u8], header: &SegmentHeader, min_lsn: Lsn) -> bool {
    let lsn = record::get_u64(window, record::LSN_OFFSET);
    let durable_lsn = record::get_u64(window, record::DURABLE_LSN_OFFSET);
    let kind = u16::from_le_bytes([window[record::KIND_OFFSET], window[record::KIND_OFFSET + 1]]);
    lsn >= min_lsn.max(header.first_lsn) && durable_lsn < lsn && kind == record::KIND_ENTRY
}

/// The first aligned window (offset a multiple of [`RECORD_ALIGN`]) whose header-sized span
/// includes byte `index`.
fn first_window_holding(index: usize) -> usize {
    (index + 1)
        .saturating_sub(RECORD_HEADER_LEN)
        .next_multiple_of(RECORD_ALIGN)
}

/// Scans `[from, end)` for a verifiable record header whose durable mark reaches `lsn`.
///
/// In a recycled segment the bytes past its records are the file's earlier contents, which
/// never verify under the segment's salt (a fresh one, never the file's previous salt): only
/// a header that verifies, a record this segment's writer wrote, is debris. The rest could be
/// a torn record of its own whose header did not reach the disk: left in place, it can never
/// verify either, so reading it as the earlier contents loses nothing (`docs/FORMAT.md`,
/// "Recycled segments").
pub fn scan_beyond(
    file: &File,
    segment: &SegmentFile,
    header: &SegmentHeader,
    from: u64,
    end: u64,
    lsn: Lsn,
) -> Result<Beyond> {
    let recycled = header.is_recycled();
    let mut debris = false;
    let marked = scan_headers(file, segment, from, end, |_, candidate| {
        if recycled && !could_be_of(candidate, header, header.first_lsn) {
            return None;
        }
        let parsed = record::parse_header(candidate, header.salt, u64::MAX).ok();
        debris |= !recycled || parsed.is_some();
        parsed.filter(|found| found.durable_lsn >= lsn)
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
        if header.is_recycled() && !could_be_of(candidate, header, min_lsn) {
            return None;
        }
        record::parse_header(candidate, header.salt, header.payload_limit_at(offset))
            .ok()
            .filter(|found| found.lsn >= min_lsn)
            .map(|found| (offset, found))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The windows a byte-at-a-time scan visits: every aligned offset from `from` whose
    /// header-sized window before `end` holds a non-zero byte.
    fn visited_one_by_one(bytes: &[u8], from: usize, end: usize) -> Vec<u64> {
        (from..)
            .step_by(RECORD_ALIGN)
            .take_while(|at| at + RECORD_HEADER_LEN <= end)
            .filter(|&at| bytes[at..at + RECORD_HEADER_LEN].iter().any(|&b| b != 0))
            .map(|at| at as u64)
            .collect()
    }

    fn visited(bytes: &[u8], from: usize, end: usize) -> Vec<u64> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        let segment = SegmentFile { path, first_lsn: 1 };
        let mut seen = Vec::new();
        let found = scan_headers(&file, &segment, from as u64, end as u64, |at, window| {
            assert!(window.iter().any(|&b| b != 0), "an all-zero window at {at}");
            seen.push(at);
            None::<()>
        });
        assert!(found.unwrap().is_none());
        seen
    }

    /// Skipping zero runs visits exactly the windows the byte-at-a-time scan did: isolated
    /// bytes at every offset within a word, runs, the bytes around the 1 MiB chunk boundary,
    /// the last byte, and ends that are not a multiple of the alignment.
    #[test]
    fn skipping_zeros_visits_the_same_windows_as_testing_each() {
        let len = (1 << 20) + 4096 + 5;
        let mut bytes = vec![0u8; len];
        for at in [
            64, 97, 98, 131, 200, 201, 202, 203, 204, 205, 206, 207, 4000,
        ] {
            bytes[at] = 0x11;
        }
        bytes[5000..5100].fill(0xee);
        let chunk = 1 << 20;
        for at in [chunk - 33, chunk - 1, chunk, chunk + 7, chunk + 31, len - 1] {
            bytes[at] = 0x22;
        }
        for (from, end) in [
            (0, len),
            (32, len),
            (32, len - 3),
            (40, chunk + 20),
            (0, 96),
        ] {
            let expected = visited_one_by_one(&bytes, from, end);
            assert!(!expected.is_empty());
            assert_eq!(
                visited(&bytes, from, end),
                expected,
                "from {from}, end {end}"
            );
        }
        let zeros = vec![0u8; len];
        assert!(visited(&zeros, 32, len).is_empty());
    }

    /// Random sparse tails (isolated bytes, short runs), scanned from offsets of every
    /// alignment to ends of every alignment: the same windows as testing each. Seeded: the
    /// failing round is printed.
    #[test]
    fn random_sparse_tails_visit_the_same_windows_as_testing_each() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        // A number below `n`.
        let mut below = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % n as u64).expect("below a usize")
        };
        let dir = tempfile::tempdir().unwrap();
        for round in 0..60 {
            let len = 64 + below(3 * 4096 + 100);
            let mut bytes = vec![0u8; len];
            for _ in 0..below(6) {
                let at = below(len);
                let run = 1 + below(3);
                for b in bytes.iter_mut().skip(at).take(run) {
                    *b = u8::try_from(1 + below(255)).expect("a byte");
                }
            }
            let path = dir.path().join(format!("segment-{round}"));
            std::fs::write(&path, &bytes).unwrap();
            let file = File::open(&path).unwrap();
            let segment = SegmentFile { path, first_lsn: 1 };
            for _ in 0..8 {
                let from = below(len / 2);
                let end = from + 1 + below(len - from);
                let mut seen = Vec::new();
                let found = scan_headers(&file, &segment, from as u64, end as u64, |at, _| {
                    seen.push(at);
                    None::<()>
                });
                assert!(found.unwrap().is_none());
                assert_eq!(
                    seen,
                    visited_one_by_one(&bytes, from, end),
                    "round {round}, from {from}, end {end}, len {len}"
                );
            }
        }
    }
}
