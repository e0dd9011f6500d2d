//! The record frame.
//!
//! ```text
//! offset size field
//!   0     4  header_crc   CRC32 seeded with the segment salt over bytes 4..32
//!   4     4  payload_len  exact length of the rkyv archive, u32 LE
//!   8     8  lsn          this record's LSN, u64 LE
//!  16     8  durable_lsn  highest LSN known durable when this record was written, u64 LE
//!  24     4  body_crc     CRC32 seeded with the segment salt over the padded payload
//!  28     2  kind         1 = entry (an rkyv `WalEntry`), u16 LE
//!  30     2  flags        0, reserved
//!  32     n  payload      payload_len bytes, then zeros up to the next multiple of 8
//! ```
//!
//! Records start at 8-byte aligned offsets (the segment's header block is 4096 bytes), so a
//! payload read into an aligned buffer satisfies rkyv's alignment without a copy. The header
//! checksum covers the length, so a torn or flipped length is never trusted, and is checked
//! before anything is allocated from it.

use crate::error::{CorruptionReason, Error, Result};
use crate::format::checksum::{ChecksumMismatch, Crc, Salter};
use crate::format::entry::{ArchivedWalEntry, WalEntry};
use crate::ids::Lsn;

/// Offset of `header_crc` in a record: the salted CRC32 of bytes 4..32 of the header.
pub const HEADER_CRC_OFFSET: usize = 0;
/// Offset of `payload_len` in a record: the archive's exact length, u32 LE.
pub const PAYLOAD_LEN_OFFSET: usize = HEADER_CRC_OFFSET + 4;
/// Offset of `lsn` in a record: the record's own LSN, u64 LE.
pub const LSN_OFFSET: usize = PAYLOAD_LEN_OFFSET + 4;
/// Offset of `durable_lsn` in a record: the highest LSN known durable when it was written.
pub const DURABLE_LSN_OFFSET: usize = LSN_OFFSET + 8;
/// Offset of `body_crc` in a record: the salted CRC32 of the padded payload.
pub const BODY_CRC_OFFSET: usize = DURABLE_LSN_OFFSET + 8;
/// Offset of `kind` in a record: what the payload is ([`KIND_ENTRY`]), u16 LE.
pub const KIND_OFFSET: usize = BODY_CRC_OFFSET + 4;
/// Offset of `flags` in a record: 0, reserved.
pub const FLAGS_OFFSET: usize = KIND_OFFSET + 2;
/// Size of the record header; the payload starts here.
pub const RECORD_HEADER_LEN: usize = FLAGS_OFFSET + 2;
/// Every record starts and ends on this alignment.
pub const RECORD_ALIGN: usize = 8;
/// The largest payload the format allows; options may lower it, never raise it.
pub const MAX_PAYLOAD_LEN: u32 = 64 * 1024 * 1024;
/// The record kind of an rkyv-archived [`WalEntry`].
pub const KIND_ENTRY: u16 = 1;

const _: () = assert!(RECORD_HEADER_LEN == 32);
const _: () = assert!(RECORD_HEADER_LEN.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(LSN_OFFSET.is_multiple_of(8) && DURABLE_LSN_OFFSET.is_multiple_of(8));
const _: () = assert!((MAX_PAYLOAD_LEN as usize).is_multiple_of(RECORD_ALIGN));
const _: () = assert!((MAX_PAYLOAD_LEN as u64) + (RECORD_HEADER_LEN as u64) < u32::MAX as u64);

/// The payload length rounded up to the record alignment.
pub(crate) const fn padded_len(payload_len: usize) -> usize {
    payload_len.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// The whole on-disk size of a record with this payload length.
pub const fn record_len(payload_len: usize) -> usize {
    RECORD_HEADER_LEN + padded_len(payload_len)
}

/// A parsed, checksum-verified record header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecordHeader {
    /// Exact length of the payload (the rkyv archive), without its padding.
    pub payload_len: u32,
    /// The record's LSN.
    pub lsn: Lsn,
    /// The highest LSN known durable when the record was written (its durable mark).
    pub durable_lsn: Lsn,
    /// The salted checksum the padded payload must match.
    pub body_crc: u32,
    /// What the payload is; [`KIND_ENTRY`] is the only kind so far.
    pub kind: u16,
}

impl RecordHeader {
    /// Total bytes of the record on disk.
    pub fn record_len(&self) -> usize {
        record_len(self.payload_len as usize)
    }
}

/// Entries framed by a caller, before the writer knows their LSNs and segment.
///
/// Each record's header holds its payload length, kind and the *unsalted* body checksum; the
/// writer fills in the rest when it seals the record ([`seal`]).
#[derive(Debug, Default)]
pub struct EncodedBatch {
    pub(crate) bytes: Vec<u8>,
    pub(crate) count: u32,
    /// The largest payload among the records, checked again by the log that takes the batch.
    pub(crate) largest_payload: u32,
}

impl EncodedBatch {
    /// Frames `entries` (one record each), refusing any payload over `max_payload_len`.
    pub fn encode(entries: &[WalEntry], max_payload_len: u32) -> Result<EncodedBatch> {
        EncodedBatch::encode_into(Vec::new(), entries, max_payload_len)
    }

    /// [`EncodedBatch::encode`] into `buffer` (cleared first), whose capacity is reused.
    pub(crate) fn encode_into(
        mut buffer: Vec<u8>,
        entries: &[WalEntry],
        max_payload_len: u32,
    ) -> Result<EncodedBatch> {
        buffer.clear();
        buffer.reserve(entries.iter().map(estimated_record_len).sum());
        let mut batch = EncodedBatch {
            bytes: buffer,
            count: 0,
            largest_payload: 0,
        };
        for entry in entries {
            batch.push(entry, max_payload_len)?;
        }
        Ok(batch)
    }

    /// Frames one more entry after those already in the batch, refusing a payload over
    /// `max_payload_len` (the batch is then unchanged).
    pub fn push(&mut self, entry: &WalEntry, max_payload_len: u32) -> Result<()> {
        let start = self.bytes.len();
        debug_assert_eq!(start % RECORD_ALIGN, 0);
        self.bytes.resize(start + RECORD_HEADER_LEN, 0);
        let written =
            rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(entry, &mut self.bytes);
        if let Err(err) = written {
            self.bytes.truncate(start);
            return Err(Error::Encode(err.to_string()));
        }
        let payload_len = self.bytes.len() - start - RECORD_HEADER_LEN;
        if payload_len > max_payload_len as usize {
            self.bytes.truncate(start);
            return Err(Error::RecordTooLarge {
                size: payload_len as u64,
                max: max_payload_len.into(),
            });
        }
        let payload_len32 = u32::try_from(payload_len).expect("bounded above");
        self.largest_payload = self.largest_payload.max(payload_len32);
        self.bytes.resize(start + record_len(payload_len), 0);
        let body = &self.bytes[start + RECORD_HEADER_LEN..];
        let unsalted = crc32fast::hash(body);
        let header = &mut self.bytes[start..start + RECORD_HEADER_LEN];
        put_u32(header, PAYLOAD_LEN_OFFSET, payload_len32);
        put_u32(header, BODY_CRC_OFFSET, unsalted);
        header[KIND_OFFSET..KIND_OFFSET + 2].copy_from_slice(&KIND_ENTRY.to_le_bytes());
        self.count += 1;
        Ok(())
    }

    /// Makes room for one more record of up to `payload_len` bytes of payload, so that
    /// framing it later does not move the batch.
    pub(crate) fn reserve_record(&mut self, payload_len: usize) {
        self.bytes.reserve(record_len(payload_len));
    }

    /// Number of records.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// True when there are no records.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The framed records (checksums not yet salted, LSNs not yet stamped).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes on disk.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }
}

/// About the bytes `entry` frames into, so that encoding does not grow the buffer as it goes:
/// the header, the key and value, and the archive's fixed part.
fn estimated_record_len(entry: &WalEntry) -> usize {
    let data = match entry {
        WalEntry::Write { key, value, .. } => key.len() + value.len(),
        WalEntry::Delete { key, .. } => key.len(),
        WalEntry::Payload { payload, .. } => payload.len(),
        _ => 0,
    };
    RECORD_HEADER_LEN + padded_len(data) + 64
}

/// Completes one record framed by [`EncodedBatch`] in place: stamps its LSN and durable mark and
/// seeds both checksums with the segment's salt. Returns the record's length.
pub fn seal(record: &mut [u8], lsn: Lsn, durable_lsn: Lsn, salt: u32) -> usize {
    seal_salting(record, lsn, durable_lsn, salt, |unsalted, len| {
        Crc::salt_unsalted(salt, unsalted, len)
    })
}

/// [`seal`], salting the body checksum through `salter`: the writer keeps one, so records of a
/// length it has sealed before cost no checksum combine.
pub(crate) fn seal_with(
    record: &mut [u8],
    lsn: Lsn,
    durable_lsn: Lsn,
    salt: u32,
    salter: &mut Salter,
) -> usize {
    seal_salting(record, lsn, durable_lsn, salt, |unsalted, len| {
        salter.salt(salt, unsalted, len)
    })
}

/// What [`seal`] and [`seal_with`] share; `salt_body` salts the unsalted body checksum of a
/// body of the given length.
fn seal_salting(
    record: &mut [u8],
    lsn: Lsn,
    durable_lsn: Lsn,
    salt: u32,
    salt_body: impl FnOnce(u32, u64) -> Crc,
) -> usize {
    assert!(
        durable_lsn < lsn,
        "durable mark {durable_lsn} must be below LSN {lsn}"
    );
    let payload_len = get_u32(record, PAYLOAD_LEN_OFFSET) as usize;
    let len = record_len(payload_len);
    let unsalted = get_u32(record, BODY_CRC_OFFSET);
    let body_crc = salt_body(unsalted, (len - RECORD_HEADER_LEN) as u64);
    put_u64(record, LSN_OFFSET, lsn);
    put_u64(record, DURABLE_LSN_OFFSET, durable_lsn);
    put_u32(record, BODY_CRC_OFFSET, body_crc.0);
    let header_crc = Crc::salted(salt, &record[PAYLOAD_LEN_OFFSET..RECORD_HEADER_LEN]);
    put_u32(record, HEADER_CRC_OFFSET, header_crc.0);
    len
}

/// Whether a record-header-sized window's checksum verifies under `salt`: in a recycled
/// segment, the test of whether a window is one of its own records or the file's earlier
/// contents.
pub(crate) fn header_verifies(header: &[u8], salt: u32) -> bool {
    let stored = Crc(get_u32(header, HEADER_CRC_OFFSET));
    stored
        .check(Crc::salted(
            salt,
            &header[PAYLOAD_LEN_OFFSET..RECORD_HEADER_LEN],
        ))
        .is_ok()
}

/// Checks a record header's checksum and length bound. `limit` is the largest payload the
/// place it sits in can hold: nothing is allocated from a length that was not checked.
///
/// Public for the record-decoder fuzz target (`fuzz/targets.rs`); readers use
/// [`crate::SegmentReader`], which calls it.
#[doc(hidden)]
pub fn parse_header(
    header: &[u8],
    salt: u32,
    limit: u64,
) -> Result<RecordHeader, CorruptionReason> {
    assert_eq!(header.len(), RECORD_HEADER_LEN);
    let stored = Crc(get_u32(header, HEADER_CRC_OFFSET));
    let computed = Crc::salted(salt, &header[PAYLOAD_LEN_OFFSET..]);
    stored
        .check(computed)
        .map_err(|ChecksumMismatch { expected, actual }| {
            CorruptionReason::RecordHeaderChecksum { expected, actual }
        })?;
    let parsed = RecordHeader {
        payload_len: get_u32(header, PAYLOAD_LEN_OFFSET),
        lsn: get_u64(header, LSN_OFFSET),
        durable_lsn: get_u64(header, DURABLE_LSN_OFFSET),
        body_crc: get_u32(header, BODY_CRC_OFFSET),
        kind: u16::from_le_bytes([header[KIND_OFFSET], header[KIND_OFFSET + 1]]),
    };
    let limit = limit.min(MAX_PAYLOAD_LEN.into());
    if u64::from(parsed.payload_len) > limit {
        return Err(CorruptionReason::RecordLength {
            length: parsed.payload_len.into(),
            limit,
        });
    }
    if parsed.kind != KIND_ENTRY {
        return Err(CorruptionReason::RecordKind(parsed.kind));
    }
    Ok(parsed)
}

/// Checks the padded body against the header and validates the archive; the returned entry
/// borrows `body`. `body` must start 8-byte aligned in memory.
///
/// Public for the record-decoder fuzz target, as [`parse_header`] is.
#[doc(hidden)]
pub fn check_body<'a>(
    header: &RecordHeader,
    body: &'a [u8],
    salt: u32,
) -> Result<&'a ArchivedWalEntry, CorruptionReason> {
    assert_eq!(body.len(), padded_len(header.payload_len as usize));
    Crc(header.body_crc)
        .check(Crc::salted(salt, body))
        .map_err(
            |ChecksumMismatch { expected, actual }| CorruptionReason::RecordBodyChecksum {
                expected,
                actual,
            },
        )?;
    let payload = &body[..header.payload_len as usize];
    rkyv::access::<ArchivedWalEntry, rkyv::rancor::Error>(payload)
        .map_err(|err| CorruptionReason::InvalidArchive(err.to_string()))
}

pub(crate) fn get_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

pub(crate) fn get_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

pub(crate) fn put_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u64(bytes: &mut [u8], offset: usize, value: u64) {
    bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RunId;
    use rkyv::util::AlignedVec;

    fn sample() -> WalEntry {
        WalEntry::Write {
            run_id: RunId::from_u128(7),
            txn_id: 3,
            key: b"key".to_vec(),
            value: vec![0xab; 100],
        }
    }

    fn sealed(salt: u32) -> AlignedVec<16> {
        let mut batch = EncodedBatch::encode(&[sample()], MAX_PAYLOAD_LEN).unwrap();
        let len = seal(&mut batch.bytes, 5, 4, salt);
        assert_eq!(len, batch.bytes.len());
        let mut aligned = AlignedVec::new();
        aligned.extend_from_slice(&batch.bytes);
        aligned
    }

    #[test]
    fn sealed_record_parses_and_validates() {
        let bytes = sealed(99);
        let header = parse_header(&bytes[..RECORD_HEADER_LEN], 99, u64::MAX).unwrap();
        assert_eq!(
            (header.lsn, header.durable_lsn, header.kind),
            (5, 4, KIND_ENTRY)
        );
        let entry = check_body(&header, &bytes[RECORD_HEADER_LEN..], 99).unwrap();
        assert_eq!(entry.to_owned_entry(), sample());
    }

    #[test]
    fn another_salt_never_verifies() {
        let bytes = sealed(99);
        let err = parse_header(&bytes[..RECORD_HEADER_LEN], 100, u64::MAX).unwrap_err();
        assert!(matches!(err, CorruptionReason::RecordHeaderChecksum { .. }));
    }

    #[test]
    fn zero_header_never_verifies_for_nonzero_check() {
        let zeros = [0u8; RECORD_HEADER_LEN];
        // With salt 0 an all-zero header would verify; segments never use salt 0.
        assert!(parse_header(&zeros, 0x1234_5678, u64::MAX).is_err());
    }

    #[test]
    fn length_is_bounded_before_use() {
        let bytes = sealed(1);
        let err = parse_header(&bytes[..RECORD_HEADER_LEN], 1, 16).unwrap_err();
        assert!(matches!(
            err,
            CorruptionReason::RecordLength { limit: 16, .. }
        ));
    }

    #[test]
    fn oversized_payload_is_refused() {
        let entry = WalEntry::Write {
            run_id: RunId::SYSTEM,
            txn_id: 1,
            key: vec![],
            value: vec![0; 1000],
        };
        let err = EncodedBatch::encode(&[entry], 512).unwrap_err();
        assert!(
            matches!(err, Error::RecordTooLarge { max: 512, .. }),
            "{err}"
        );
    }
}
