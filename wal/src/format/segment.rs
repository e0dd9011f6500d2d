//! Segment files: `<wal dir>/<first LSN, 20 digits>.wal`, created full size.
//!
//! ```text
//! offset size field
//!   0     8  magic             b"KEELWAL\0"
//!   8     4  format_version    u32 LE: 2 written (3 in a recycled file), 1 to 3 read
//!  12     4  flags             0; 1 (recycled) in version 3 (see `docs/FORMAT.md`)
//!  16    16  database_id       the database this segment belongs to
//!  32     8  first_lsn         LSN of the first record, u64 LE
//!  40     8  segment_bytes     size the file was created with, u64 LE
//!  48     4  salt              seeds every record checksum in this segment, never 0
//!  52     8  reserved          zeros
//!  60     4  header_crc        CRC32 (unsalted) over bytes 0..60
//!  64  4032  zeros             records start at offset 4096
//! ```

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{CorruptionReason, Error, Result};
use crate::format::checksum::{ChecksumMismatch, Crc};
use crate::format::record::{
    self, RECORD_ALIGN, RECORD_HEADER_LEN, get_u32, get_u64, put_u32, put_u64,
};
use crate::ids::{DatabaseId, Lsn};

/// The first 8 bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"KEELWAL\0";
/// The segment and record format this build writes into a new (zero-filled) file: version 2
/// added the `CommitSpan` entry and the durable witness.
pub const FORMAT_VERSION: u32 = 2;
/// The format of a segment written into a recycled file (one a checkpoint freed, reused
/// without zero-filling): version 2's layout, with [`FLAG_RECYCLED`] set, so that what
/// follows its records is read as the file's earlier contents, not as a torn tail.
pub const RECYCLED_VERSION: u32 = 3;
/// The newest segment format this build reads.
pub const NEWEST_READABLE_VERSION: u32 = RECYCLED_VERSION;
/// The oldest segment format this build reads. Versions from this one to
/// [`NEWEST_READABLE_VERSION`] are read; appends never go to a segment older than
/// [`FORMAT_VERSION`].
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// The flag of a [`RECYCLED_VERSION`] segment (the only flag, and always set in it).
pub const FLAG_RECYCLED: u32 = 1;
/// Offset of the magic in the segment header.
pub const MAGIC_OFFSET: usize = 0;
/// Offset of the format version (u32 LE) in the segment header.
pub const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
/// Offset of the flags (u32 LE, 0, reserved) in the segment header.
pub const FLAGS_OFFSET: usize = VERSION_OFFSET + 4;
/// Offset of the database id (16 bytes) in the segment header.
pub const DATABASE_ID_OFFSET: usize = FLAGS_OFFSET + 4;
/// Offset of the segment's first LSN (u64 LE) in its header; the file name repeats it.
pub const FIRST_LSN_OFFSET: usize = DATABASE_ID_OFFSET + 16;
/// Offset of the segment's size in bytes (u64 LE) in its header.
pub const SEGMENT_BYTES_OFFSET: usize = FIRST_LSN_OFFSET + 8;
/// Offset of the salt (u32 LE) every checksum of the segment is seeded with.
pub const SALT_OFFSET: usize = SEGMENT_BYTES_OFFSET + 8;
/// Offset of the header checksum (u32 LE, unsalted CRC32 of the bytes before it); 8 reserved
/// bytes lie between the salt and it.
pub const HEADER_CRC_OFFSET: usize = SALT_OFFSET + 4 + 8;
/// Bytes of the header that carry fields.
pub const HEADER_LEN: usize = HEADER_CRC_OFFSET + 4;
/// The header block; the first record starts right after it.
pub const HEADER_BLOCK_LEN: u64 = 4096;
/// The smallest segment: a header block and room for a few small records.
pub const MIN_SEGMENT_BYTES: u64 = HEADER_BLOCK_LEN + 4096;
/// Segment file name extension.
pub const EXTENSION: &str = "wal";

const _: () = assert!(HEADER_LEN == 64);
const _: () = assert!(OLDEST_READABLE_VERSION >= 1 && OLDEST_READABLE_VERSION <= FORMAT_VERSION);
const _: () = assert!(FORMAT_VERSION < RECYCLED_VERSION);
const _: () = assert!(HEADER_LEN as u64 <= HEADER_BLOCK_LEN);
const _: () = assert!(HEADER_BLOCK_LEN.is_multiple_of(RECORD_ALIGN as u64));
const _: () = assert!(FIRST_LSN_OFFSET.is_multiple_of(8) && SEGMENT_BYTES_OFFSET.is_multiple_of(8));

/// A verified segment header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SegmentHeader {
    /// The format version the segment was written in, from [`OLDEST_READABLE_VERSION`] to
    /// [`NEWEST_READABLE_VERSION`] ([`RECYCLED_VERSION`]: written into a recycled file).
    pub version: u32,
    /// The database the segment belongs to; a segment of another is refused.
    pub database_id: DatabaseId,
    /// The LSN of the segment's first record (also in its file name).
    pub first_lsn: Lsn,
    /// The size the segment file was created with; records never cross it.
    pub segment_bytes: u64,
    /// The seed of every checksum in the segment, random per segment, so that stale or
    /// copied bytes do not verify.
    pub salt: u32,
}

impl SegmentHeader {
    /// A header of the current [`FORMAT_VERSION`] with a fresh random salt. The salt is never
    /// 0, and never one under which an all-zero record header would verify.
    ///
    /// With `salt_seed` (tests only) the salt is derived from the seed and the first LSN, so
    /// the same workload writes the same bytes.
    pub fn new(
        database_id: DatabaseId,
        first_lsn: Lsn,
        segment_bytes: u64,
        salt_seed: Option<u64>,
    ) -> std::io::Result<Self> {
        let zeros = [0u8; RECORD_HEADER_LEN];
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            let mut salt = [0u8; 4];
            match salt_seed {
                None => getrandom::fill(&mut salt).map_err(std::io::Error::other)?,
                Some(seed) => {
                    let mut material = [0u8; 24];
                    material[..8].copy_from_slice(&seed.to_le_bytes());
                    material[8..16].copy_from_slice(&first_lsn.to_le_bytes());
                    material[16..].copy_from_slice(&attempt.to_le_bytes());
                    salt = crc32fast::hash(&material).to_le_bytes();
                }
            }
            let salt = u32::from_le_bytes(salt);
            if salt != 0 && Crc::salted(salt, &zeros[4..]).0 != 0 {
                return Ok(SegmentHeader {
                    version: FORMAT_VERSION,
                    database_id,
                    first_lsn,
                    segment_bytes,
                    salt,
                });
            }
        }
    }

    /// The header of a segment written into a recycled file whose earlier header had
    /// `old_salt` (`None`: unreadable): [`RECYCLED_VERSION`], and a fresh salt that is not
    /// the old one, so no record the file held before verifies in it.
    pub fn recycled(
        database_id: DatabaseId,
        first_lsn: Lsn,
        segment_bytes: u64,
        salt_seed: Option<u64>,
        old_salt: Option<u32>,
    ) -> std::io::Result<Self> {
        let mut seed = salt_seed;
        loop {
            let header = Self::new(database_id, first_lsn, segment_bytes, seed)?;
            if Some(header.salt) != old_salt {
                return Ok(SegmentHeader {
                    version: RECYCLED_VERSION,
                    ..header
                });
            }
            // The same salt again (1 in 2^32, or a seed that derives it): draw another.
            seed = seed.map(|s| s.wrapping_add(0x9e37_79b9_7f4a_7c15));
        }
    }

    /// Whether the segment was written into a recycled file: what follows its records is
    /// the file's earlier contents (records of other salts, parts of them), not zeros.
    pub fn is_recycled(&self) -> bool {
        self.version == RECYCLED_VERSION
    }

    /// The header block as written to disk.
    pub fn encode(&self) -> Vec<u8> {
        let mut block = vec![0u8; HEADER_BLOCK_LEN.try_into().expect("4096")];
        block[MAGIC_OFFSET..MAGIC_OFFSET + 8].copy_from_slice(&MAGIC);
        put_u32(&mut block, VERSION_OFFSET, self.version);
        if self.is_recycled() {
            put_u32(&mut block, FLAGS_OFFSET, FLAG_RECYCLED);
        }
        block[DATABASE_ID_OFFSET..DATABASE_ID_OFFSET + 16].copy_from_slice(&self.database_id.0);
        put_u64(&mut block, FIRST_LSN_OFFSET, self.first_lsn);
        put_u64(&mut block, SEGMENT_BYTES_OFFSET, self.segment_bytes);
        put_u32(&mut block, SALT_OFFSET, self.salt);
        let crc = crc32fast::hash(&block[..HEADER_CRC_OFFSET]);
        put_u32(&mut block, HEADER_CRC_OFFSET, crc);
        block
    }

    /// Parses and checks a header block: magic, format version (any this build reads),
    /// checksum, field sanity. A block shorter than the header is an error, not a panic.
    pub fn decode(block: &[u8], path: &Path) -> Result<SegmentHeader> {
        let corrupt = |reason| Error::corruption(path, 0, reason);
        if block.len() < HEADER_LEN {
            return Err(corrupt(CorruptionReason::SegmentTooShort {
                actual: block.len() as u64,
            }));
        }
        if block[..HEADER_LEN].iter().all(|&b| b == 0) {
            return Err(corrupt(CorruptionReason::ZeroedSegmentHeader));
        }
        if block[MAGIC_OFFSET..MAGIC_OFFSET + 8] != MAGIC {
            return Err(corrupt(CorruptionReason::BadMagic));
        }
        let stored = Crc(get_u32(block, HEADER_CRC_OFFSET));
        let check = stored.check(Crc(crc32fast::hash(&block[..HEADER_CRC_OFFSET])));
        let version = get_u32(block, VERSION_OFFSET);
        if let Err(ChecksumMismatch { expected, actual }) = check {
            return Err(corrupt(CorruptionReason::SegmentHeaderChecksum {
                expected,
                actual,
            }));
        }
        if !(OLDEST_READABLE_VERSION..=NEWEST_READABLE_VERSION).contains(&version) {
            let path = path.to_path_buf();
            return Err(Error::UnknownFormatVersion {
                path,
                found: version,
                supported: NEWEST_READABLE_VERSION,
            });
        }
        // Versions 1 and 2 never set a flag (their readers ignored the field).
        if version == RECYCLED_VERSION && get_u32(block, FLAGS_OFFSET) != FLAG_RECYCLED {
            return Err(corrupt(CorruptionReason::SegmentHeaderField(
                "flags other than `recycled` in a recycled segment",
            )));
        }
        let header = SegmentHeader {
            version,
            database_id: DatabaseId(
                block[DATABASE_ID_OFFSET..DATABASE_ID_OFFSET + 16]
                    .try_into()
                    .expect("16"),
            ),
            first_lsn: get_u64(block, FIRST_LSN_OFFSET),
            segment_bytes: get_u64(block, SEGMENT_BYTES_OFFSET),
            salt: get_u32(block, SALT_OFFSET),
        };
        if header.first_lsn == 0 {
            return Err(corrupt(CorruptionReason::SegmentHeaderField(
                "first LSN is 0",
            )));
        }
        if header.salt == 0 {
            return Err(corrupt(CorruptionReason::SegmentHeaderField("salt is 0")));
        }
        if header.segment_bytes < MIN_SEGMENT_BYTES
            || !header.segment_bytes.is_multiple_of(RECORD_ALIGN as u64)
        {
            return Err(corrupt(CorruptionReason::SegmentHeaderField(
                "segment size out of range",
            )));
        }
        Ok(header)
    }

    /// The largest payload a record starting at `offset` can carry in this segment.
    pub(crate) fn payload_limit_at(&self, offset: u64) -> u64 {
        self.segment_bytes
            .saturating_sub(offset)
            .saturating_sub(RECORD_HEADER_LEN as u64)
            .min(record::MAX_PAYLOAD_LEN.into())
    }
}

/// Whether a writer opening the log may append to the last segment it found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Continuation {
    /// Append after its last record.
    Append,
    /// First start a fresh segment at the next LSN, of the current format and the options'
    /// size; the last segment keeps what it holds and is read by its own header.
    FreshSegment(FreshReason),
}

/// Why appends cannot continue in the last segment.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum FreshReason {
    /// It has an older format version: it must not receive records of a later format.
    OlderFormat { found: u32 },
    /// Its size is not the one the options ask for: records are checked against the options'
    /// size, and every record must fit the segment it is written into.
    Geometry { found: u64 },
}

/// Decides whether appends continue in `last`, the last segment found at open, for a writer
/// whose segments are `segment_bytes` long:
///
/// | last segment's version | its `segment_bytes`     | continuation                  |
/// |------------------------|-------------------------|-------------------------------|
/// | older than current     | any                     | fresh segment (`OlderFormat`) |
/// | current                | other than the options' | fresh segment (`Geometry`)    |
/// | current                | the options'            | append                        |
///
/// A fresh segment is how a changed `segment_bytes` or `max_record_bytes` (validated against
/// `segment_bytes`) and a new format version take effect: at a rotation, never inside a
/// segment written under other terms.
pub(crate) fn continuation(last: &SegmentHeader, segment_bytes: u64) -> Continuation {
    // A recycled segment (version 3) is version 2 in a reused file: appends continue in it.
    if last.version < FORMAT_VERSION {
        Continuation::FreshSegment(FreshReason::OlderFormat {
            found: last.version,
        })
    } else if last.segment_bytes != segment_bytes {
        Continuation::FreshSegment(FreshReason::Geometry {
            found: last.segment_bytes,
        })
    } else {
        Continuation::Append
    }
}

/// The file name of the segment whose first record has `first_lsn`.
pub fn file_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}.{EXTENSION}")
}

/// The first LSN a segment file name stands for, if it is one.
pub fn parse_file_name(name: &str) -> Option<Lsn> {
    let stem = name.strip_suffix(".wal")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// One segment file found in a directory.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SegmentFile {
    /// Where the file is.
    pub path: PathBuf,
    /// The first LSN its name stands for.
    pub first_lsn: Lsn,
}

/// Reads and checks the header of a segment file, and that its name agrees with it.
pub fn read_header(file: &File, segment: &SegmentFile) -> Result<SegmentHeader> {
    let path = &segment.path;
    let len = file
        .metadata()
        .map_err(|e| Error::io("reading metadata of", path, e))?
        .len();
    if len < HEADER_BLOCK_LEN {
        return Err(Error::corruption(
            path,
            0,
            CorruptionReason::SegmentTooShort { actual: len },
        ));
    }
    let mut block = [0u8; HEADER_LEN];
    file.read_exact_at(&mut block, 0)
        .map_err(|e| Error::io("reading header of", path, e))?;
    let header = SegmentHeader::decode(&block, path)?;
    if header.first_lsn != segment.first_lsn {
        let reason = CorruptionReason::SegmentNameMismatch {
            named: segment.first_lsn,
            stored: header.first_lsn,
        };
        return Err(Error::corruption(path, 0, reason));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SegmentHeader {
        SegmentHeader::new(DatabaseId([7; 16]), 42, 1 << 20, None).unwrap()
    }

    #[test]
    fn header_round_trips() {
        let h = header();
        assert_eq!(
            SegmentHeader::decode(&h.encode(), Path::new("x")).unwrap(),
            h
        );
    }

    /// Headers of every readable version decode with their version; the ones around them are
    /// refused as unknown.
    #[test]
    fn every_readable_version_decodes_and_no_other() {
        for version in 0..=NEWEST_READABLE_VERSION + 1 {
            let h = SegmentHeader {
                version,
                ..header()
            };
            let decoded = SegmentHeader::decode(&h.encode(), Path::new("s"));
            if (OLDEST_READABLE_VERSION..=NEWEST_READABLE_VERSION).contains(&version) {
                assert_eq!(decoded.unwrap(), h, "version {version}");
            } else {
                assert!(
                    matches!(decoded, Err(Error::UnknownFormatVersion { found, .. }) if found == version),
                    "version {version}: {decoded:?}"
                );
            }
        }
        assert_eq!(header().version, FORMAT_VERSION);
    }

    /// A recycled header: version 3, its flag set (and required), a salt other than the old
    /// one even when the seed derives it, and appends continue in it.
    #[test]
    fn a_recycled_header_has_its_flag_and_a_new_salt() {
        let id = DatabaseId([7; 16]);
        let old = SegmentHeader::new(id, 42, 1 << 20, Some(5)).unwrap();
        let h = SegmentHeader::recycled(id, 42, 1 << 20, Some(5), Some(old.salt)).unwrap();
        assert!(h.is_recycled() && !old.is_recycled());
        assert_ne!(h.salt, old.salt, "the seed alone derives the old salt");
        let mut block = h.encode();
        assert_eq!(get_u32(&block, FLAGS_OFFSET), FLAG_RECYCLED);
        assert_eq!(SegmentHeader::decode(&block, Path::new("s")).unwrap(), h);
        assert_eq!(continuation(&h, 1 << 20), Continuation::Append);
        put_u32(&mut block, FLAGS_OFFSET, 0);
        let crc = crc32fast::hash(&block[..HEADER_CRC_OFFSET]);
        put_u32(&mut block, HEADER_CRC_OFFSET, crc);
        assert!(matches!(
            SegmentHeader::decode(&block, Path::new("s")),
            Err(Error::Corruption {
                reason: CorruptionReason::SegmentHeaderField(_),
                ..
            })
        ));
    }

    /// One assertion per row of `continuation`'s table.
    #[test]
    fn appends_continue_only_in_a_current_segment_of_the_options_size() {
        let current = header();
        let older = SegmentHeader {
            version: FORMAT_VERSION - 1,
            ..current
        };
        for size in [current.segment_bytes, current.segment_bytes * 2] {
            assert_eq!(
                continuation(&older, size),
                Continuation::FreshSegment(FreshReason::OlderFormat {
                    found: FORMAT_VERSION - 1
                })
            );
        }
        for size in [current.segment_bytes / 2, current.segment_bytes * 2] {
            assert_eq!(
                continuation(&current, size),
                Continuation::FreshSegment(FreshReason::Geometry {
                    found: current.segment_bytes
                })
            );
        }
        assert_eq!(
            continuation(&current, current.segment_bytes),
            Continuation::Append
        );
    }

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(file_name(1), "00000000000000000001.wal");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name("1.wal"), None);
        assert_eq!(parse_file_name("0000000000000000000x.wal"), None);
    }

    #[test]
    fn a_short_block_is_an_error_not_a_panic() {
        // Found by the record-decoder fuzz target.
        let block = header().encode();
        for len in [0, 1, HEADER_LEN - 1] {
            let err = SegmentHeader::decode(&block[..len], Path::new("s")).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Corruption {
                        reason: CorruptionReason::SegmentTooShort { .. },
                        ..
                    }
                ),
                "{len}: {err}"
            );
        }
    }

    #[test]
    fn every_damage_is_a_clear_error() {
        let block = header().encode();
        let zero = vec![0u8; 4096];
        let err = SegmentHeader::decode(&zero, Path::new("s")).unwrap_err();
        assert!(matches!(
            err,
            Error::Corruption {
                reason: CorruptionReason::ZeroedSegmentHeader,
                ..
            }
        ));
        let mut flipped = block.clone();
        flipped[33] ^= 1;
        let err = SegmentHeader::decode(&flipped, Path::new("s")).unwrap_err();
        assert!(matches!(
            err,
            Error::Corruption {
                reason: CorruptionReason::SegmentHeaderChecksum { .. },
                ..
            }
        ));
        let mut future = block.clone();
        put_u32(&mut future, VERSION_OFFSET, 9);
        let crc = crc32fast::hash(&future[..HEADER_CRC_OFFSET]);
        put_u32(&mut future, HEADER_CRC_OFFSET, crc);
        let err = SegmentHeader::decode(&future, Path::new("s")).unwrap_err();
        assert!(matches!(
            err,
            Error::UnknownFormatVersion {
                found: 9,
                supported: NEWEST_READABLE_VERSION,
                ..
            }
        ));
    }
}
