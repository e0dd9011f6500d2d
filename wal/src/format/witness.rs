//! The durable witness (segment format version 2): a checksummed claim, in the segment's
//! header block, that every record of the segment through an LSN was durable.
//!
//! Recovery tells a torn tail from damage to acknowledged data by a later record whose
//! durable mark reaches the damaged LSN. The newest records have no later record: without
//! more, damage to them reads as a torn tail and is cut. The writer therefore writes a witness
//! after the records it names are durable, when it has been idle for
//! [`crate::WalOptions::witness_idle`] and at close, never on the commit path. Damage, or the
//! end of the written data, at or below what the segment's witness claims is damage to
//! acknowledged data (see `docs/FORMAT.md`, "The durable witness").
//!
//! Two slots alternate, in sectors of their own, so that a torn slot write never destroys the
//! previous witness; the valid slot with the higher sequence is the witness.
//!
//! ```text
//! slot 0 at byte 1024, slot 1 at byte 2048 of the header block; slot = sequence % 2
//! offset size field
//!   0     8  magic        b"KEELWIT\0"
//!   8     8  sequence     u64 LE, at least 1
//!  16     8  durable_lsn  every record of the segment through this LSN was durable
//!  24     8  end_offset   where the records through `durable_lsn` end
//!  32     4  slot         u32 LE, 0 or 1: the slot this claim was written to
//!  36     4  crc          CRC32 seeded with the segment salt, over bytes 0..36
//! ```

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub use crate::error::DurableProof;
use crate::error::{Error, Result};
use crate::format::checksum::Crc;
use crate::format::record::{RECORD_ALIGN, get_u32, get_u64, put_u32, put_u64};
use crate::format::segment::{HEADER_BLOCK_LEN, HEADER_LEN, SegmentHeader};
use crate::ids::Lsn;

/// The first 8 bytes of a witness slot.
pub const MAGIC: [u8; 8] = *b"KEELWIT\0";
/// Offset of the magic in a slot.
pub const MAGIC_OFFSET: usize = 0;
/// Offset of the sequence number (u64 LE) in a slot.
pub const SEQUENCE_OFFSET: usize = MAGIC_OFFSET + 8;
/// Offset of the LSN the slot claims durable (u64 LE).
pub const DURABLE_LSN_OFFSET: usize = SEQUENCE_OFFSET + 8;
/// Offset of the segment offset where the claimed records end (u64 LE).
pub const END_OFFSET_OFFSET: usize = DURABLE_LSN_OFFSET + 8;
/// Offset of the slot's own index (u32 LE), so a slot written to the wrong place is refused.
pub const SLOT_OFFSET: usize = END_OFFSET_OFFSET + 8;
/// Offset of the slot's checksum (u32 LE, salted with the segment's salt).
pub const CRC_OFFSET: usize = SLOT_OFFSET + 4;
/// Bytes of one slot.
pub const SLOT_LEN: usize = CRC_OFFSET + 4;
/// Where the two slots sit in the header block.
pub const SLOT_OFFSETS: [u64; 2] = [1024, 2048];
/// The first segment format version with a witness.
pub const FIRST_VERSION: u32 = 2;
/// The sector size the placement is checked against (the smallest a device tears at).
const SECTOR: u64 = 512;

const _: () = assert!(SLOT_LEN == 40);
// Each slot in a sector of its own, neither in the header's sector, nor the other's.
const _: () = assert!(SLOT_OFFSETS[0] / SECTOR > (HEADER_LEN as u64 - 1) / SECTOR);
const _: () = assert!(SLOT_OFFSETS[0] / SECTOR != SLOT_OFFSETS[1] / SECTOR);
const _: () = assert!((SLOT_OFFSETS[0] + SLOT_LEN as u64 - 1) / SECTOR == SLOT_OFFSETS[0] / SECTOR);
const _: () = assert!((SLOT_OFFSETS[1] + SLOT_LEN as u64 - 1) / SECTOR == SLOT_OFFSETS[1] / SECTOR);
// A slot write misdirected by a sector still lands inside the header block, on no slot.
const _: () = assert!(SLOT_OFFSETS[0] + SECTOR + (SLOT_LEN as u64) <= SLOT_OFFSETS[1]);
const _: () = assert!(SLOT_OFFSETS[1] + SECTOR + (SLOT_LEN as u64) <= HEADER_BLOCK_LEN);

/// One valid witness slot: records through `durable_lsn`, ending at `end_offset`, were
/// durable when it was written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Witness {
    /// Higher is newer; its parity is the slot it lives in.
    pub sequence: u64,
    /// Every record of the segment through this LSN was durable.
    pub durable_lsn: Lsn,
    /// The offset where the record at `durable_lsn` ends: nothing is claimed beyond it.
    pub end_offset: u64,
}

impl Witness {
    /// The slot (0 or 1) this witness is written to.
    pub fn slot(&self) -> usize {
        usize::from(self.sequence % 2 == 1)
    }

    /// The witness that follows `previous` (the newest valid one, if any) with this claim.
    /// It goes to the other slot, so the previous one survives a torn write of it.
    pub fn after(previous: Option<Witness>, durable_lsn: Lsn, end_offset: u64) -> Witness {
        Witness {
            sequence: previous.map_or(1, |w| w.sequence + 1),
            durable_lsn,
            end_offset,
        }
    }

    /// Whether damage (or the end of the written data) at `offset`, where the record of LSN
    /// `lsn` was expected, lies in what this witness says was durable. Either coordinate
    /// suffices: in a log as written they agree.
    pub fn covers(&self, lsn: Lsn, offset: u64) -> bool {
        lsn <= self.durable_lsn || offset < self.end_offset
    }

    /// Whether a log that now ends at `offset`, with `next_lsn` the next record, holds
    /// everything this witness claims.
    pub fn within(&self, next_lsn: Lsn, offset: u64) -> bool {
        !self.covers(next_lsn, offset)
    }

    /// The slot as written in a segment salted with `salt`.
    pub fn encode(&self, salt: u32) -> [u8; SLOT_LEN] {
        let mut slot = [0u8; SLOT_LEN];
        slot[MAGIC_OFFSET..MAGIC_OFFSET + 8].copy_from_slice(&MAGIC);
        put_u64(&mut slot, SEQUENCE_OFFSET, self.sequence);
        put_u64(&mut slot, DURABLE_LSN_OFFSET, self.durable_lsn);
        put_u64(&mut slot, END_OFFSET_OFFSET, self.end_offset);
        put_u32(&mut slot, SLOT_OFFSET, u32::from(self.slot() == 1));
        let crc = Crc::salted(salt, &slot[..CRC_OFFSET]);
        put_u32(&mut slot, CRC_OFFSET, crc.0);
        slot
    }

    /// The witness in `bytes`, read from slot `slot` of the segment `header`, if it is a valid
    /// one: magic, checksum, written for this slot, and a claim that fits the segment. Anything
    /// else (zeros, a torn or damaged slot) is no witness.
    pub fn decode(bytes: &[u8], slot: usize, header: &SegmentHeader) -> Option<Witness> {
        if bytes.len() < SLOT_LEN || bytes[MAGIC_OFFSET..MAGIC_OFFSET + 8] != MAGIC {
            return None;
        }
        let stored = Crc(get_u32(bytes, CRC_OFFSET));
        stored
            .check(Crc::salted(header.salt, &bytes[..CRC_OFFSET]))
            .ok()?;
        let witness = Witness {
            sequence: get_u64(bytes, SEQUENCE_OFFSET),
            durable_lsn: get_u64(bytes, DURABLE_LSN_OFFSET),
            end_offset: get_u64(bytes, END_OFFSET_OFFSET),
        };
        let fits = witness.sequence >= 1
            && witness.slot() == slot
            && get_u32(bytes, SLOT_OFFSET) as usize == slot
            && witness.durable_lsn >= header.first_lsn - 1
            && (HEADER_BLOCK_LEN..=header.segment_bytes).contains(&witness.end_offset)
            && witness.end_offset.is_multiple_of(RECORD_ALIGN as u64);
        fits.then_some(witness)
    }

    /// The newer of two slots' witnesses.
    pub fn newest(slots: [Option<Witness>; 2]) -> Option<Witness> {
        slots.into_iter().flatten().max_by_key(|w| w.sequence)
    }
}

/// The witness of the segment open as `file` (header `header`): the valid slot with the
/// higher sequence. Segments older than [`FIRST_VERSION`] have none.
pub fn read(file: &File, path: &Path, header: &SegmentHeader) -> Result<Option<Witness>> {
    if header.version < FIRST_VERSION {
        return Ok(None);
    }
    let mut slots = [None, None];
    for (slot, &offset) in SLOT_OFFSETS.iter().enumerate() {
        let mut bytes = [0u8; SLOT_LEN];
        file.read_exact_at(&mut bytes, offset)
            .map_err(|e| Error::io("reading the witness of", path, e))?;
        slots[slot] = Witness::decode(&bytes, slot, header);
    }
    Ok(Witness::newest(slots))
}

impl From<Witness> for DurableProof {
    fn from(witness: Witness) -> Self {
        DurableProof::Witness {
            durable_lsn: witness.durable_lsn,
            end_offset: witness.end_offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::DatabaseId;

    fn header() -> SegmentHeader {
        SegmentHeader::new(DatabaseId([3; 16]), 100, 1 << 20, Some(9)).unwrap()
    }

    fn witness(sequence: u64) -> Witness {
        Witness {
            sequence,
            durable_lsn: 120,
            end_offset: 8192,
        }
    }

    #[test]
    fn a_slot_round_trips_in_its_own_slot_only() {
        let header = header();
        for sequence in [1, 2, 7, u64::MAX] {
            let w = witness(sequence);
            let bytes = w.encode(header.salt);
            assert_eq!(Witness::decode(&bytes, w.slot(), &header), Some(w));
            assert_eq!(Witness::decode(&bytes, 1 - w.slot(), &header), None);
        }
    }

    #[test]
    fn zeros_damage_and_another_segment_are_no_witness() {
        let header = header();
        let bytes = witness(3).encode(header.salt);
        assert_eq!(Witness::decode(&[0; SLOT_LEN], 1, &header), None);
        assert_eq!(Witness::decode(&bytes[..SLOT_LEN - 1], 1, &header), None);
        for at in 0..SLOT_LEN {
            for bit in 0..8 {
                let mut flipped = bytes;
                flipped[at] ^= 1 << bit;
                assert_eq!(Witness::decode(&flipped, 1, &header), None, "byte {at}");
            }
        }
        let other = SegmentHeader {
            salt: header.salt ^ 1,
            ..header
        };
        assert_eq!(Witness::decode(&bytes, 1, &other), None);
    }

    #[test]
    fn a_claim_that_does_not_fit_the_segment_is_no_witness() {
        let header = header();
        let bad = [
            Witness {
                sequence: 0,
                ..witness(2)
            },
            Witness {
                durable_lsn: header.first_lsn - 2,
                ..witness(1)
            },
            Witness {
                end_offset: HEADER_BLOCK_LEN - 8,
                ..witness(1)
            },
            Witness {
                end_offset: header.segment_bytes + 8,
                ..witness(1)
            },
            Witness {
                end_offset: 8193,
                ..witness(1)
            },
        ];
        for w in bad {
            let slot = w.slot();
            assert_eq!(
                Witness::decode(&w.encode(header.salt), slot, &header),
                None,
                "{w:?}"
            );
        }
        let nothing = Witness {
            sequence: 1,
            durable_lsn: header.first_lsn - 1,
            end_offset: HEADER_BLOCK_LEN,
        };
        let bytes = nothing.encode(header.salt);
        assert_eq!(Witness::decode(&bytes, 1, &header), Some(nothing));
    }

    /// Successive witnesses alternate between the slots, so the newest valid one is never
    /// the one being overwritten; the newer of two valid slots wins.
    #[test]
    fn witnesses_alternate_and_the_newest_wins() {
        let mut previous = None;
        let mut slots = [None, None];
        for n in 1..=5u64 {
            let next = Witness::after(previous, 100 + n, 4096 + 8 * n);
            assert_eq!(next.sequence, n);
            if let Some(p) = previous {
                assert_ne!(next.slot(), p.slot(), "never over the newest");
            }
            slots[next.slot()] = Some(next);
            assert_eq!(Witness::newest(slots), Some(next));
            // A torn write of the next one leaves this one the newest.
            let mut torn = slots;
            torn[1 - next.slot()] = None;
            assert_eq!(Witness::newest(torn), Some(next));
            previous = Some(next);
        }
    }

    #[test]
    fn covers_by_lsn_or_offset() {
        let w = witness(1);
        assert!(w.covers(120, 8192));
        assert!(w.covers(121, 8184));
        assert!(!w.covers(121, 8192));
        assert!(w.within(121, 8192));
        assert!(!w.within(120, 8192));
    }

    #[test]
    fn lowering_rewrites_both_slots_newer_and_within_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let header = header();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(header.segment_bytes).unwrap();
        file.write_all_at(&header.encode(), 0).unwrap();
        let current = witness(4);
        file.write_all_at(&current.encode(header.salt), SLOT_OFFSETS[current.slot()])
            .unwrap();
        assert_eq!(read(&file, &path, &header).unwrap(), Some(current));
        let lowered = crate::dir::lower_witness(
            &crate::FileSystem,
            &file,
            &path,
            &header,
            current,
            110,
            6000,
        )
        .unwrap();
        assert_eq!(lowered.sequence, 6);
        assert_eq!((lowered.durable_lsn, lowered.end_offset), (109, 6000));
        assert_eq!(read(&file, &path, &header).unwrap(), Some(lowered));
        // Either slot alone says no more.
        let mut slot = [0u8; SLOT_LEN];
        for (index, &offset) in SLOT_OFFSETS.iter().enumerate() {
            file.read_exact_at(&mut slot, offset).unwrap();
            let w = Witness::decode(&slot, index, &header).unwrap();
            assert!(w.within(110, 6000), "{w:?}");
        }
        let v1 = SegmentHeader {
            version: 1,
            ..header
        };
        assert_eq!(read(&file, &path, &v1).unwrap(), None);
    }
}
