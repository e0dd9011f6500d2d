//! Media damage: bit flips and zeroed sectors, in files and in byte images.

use std::io;
use std::path::{Path, PathBuf};

use crate::SECTOR;

/// Media damage applied to the surviving image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Flips bit `bit` of the byte at `offset` of the file at `path` (relative to the root).
    BitFlip {
        /// The file, relative to the root.
        path: PathBuf,
        /// Offset of the byte in the file, in bytes.
        offset: u64,
        /// The bit within the byte, 0 to 7 (taken modulo 8).
        bit: u8,
    },
    /// Zeroes sector `sector` of the file at `path`.
    ZeroSector {
        /// The file, relative to the root.
        path: PathBuf,
        /// Index of the sector in the file, in [`SECTOR`](crate::SECTOR)s.
        sector: u64,
    },
}

pub(crate) fn apply_damage(root: &Path, damage: &Damage) -> io::Result<()> {
    let path = match damage {
        Damage::BitFlip { path, .. } | Damage::ZeroSector { path, .. } => root.join(path),
    };
    let Ok(mut bytes) = std::fs::read(&path) else {
        return Ok(());
    };
    if damage_bytes(&mut bytes, 0, damage) {
        std::fs::write(&path, bytes)?;
    }
    Ok(())
}

/// Damages `bytes`, which hold the file's bytes from `start` on; returns whether any of
/// them was hit.
pub(crate) fn damage_bytes(bytes: &mut [u8], start: u64, damage: &Damage) -> bool {
    let (offset, len) = match damage {
        Damage::BitFlip { offset, .. } => (*offset, 1),
        Damage::ZeroSector { sector, .. } => (sector * SECTOR as u64, SECTOR as u64),
    };
    let end = offset + len;
    let end_here = start + bytes.len() as u64;
    if end <= start || offset >= end_here {
        return false;
    }
    let from = usize::try_from(offset.max(start) - start).expect("inside the buffer");
    let to = usize::try_from(end.min(end_here) - start).expect("inside the buffer");
    match damage {
        Damage::BitFlip { bit, .. } => bytes[from] ^= 1 << (bit % 8),
        Damage::ZeroSector { .. } => bytes[from..to].fill(0),
    }
    true
}
