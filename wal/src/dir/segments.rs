//! Changing segment files durably: installing a zero-filled file as a segment (its header
//! written and synced, renamed into place, the directory synced), creating an empty one for
//! recovery, and lowering a segment's durable witness after a cut.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::dir::fsutil;
use crate::dir::storage::Storage;
use crate::error::{Error, Result};
use crate::format::record::RECORD_HEADER_LEN;
use crate::format::segment::{HEADER_BLOCK_LEN, SegmentHeader, file_name};
use crate::format::witness::{FIRST_VERSION, SLOT_OFFSETS, Witness};
use crate::ids::{DatabaseId, Lsn};

/// Turns a zero-filled spare into the segment `path`: header written and synced, the file
/// renamed, the directory synced. Nothing in it is acknowledged before this returns.
pub(crate) fn install_segment(
    storage: &dyn Storage,
    file: &std::fs::File,
    spare_path: &std::path::Path,
    path: &std::path::Path,
    header: &SegmentHeader,
) -> crate::error::Result<()> {
    debug_assert!(RECORD_HEADER_LEN as u64 <= HEADER_BLOCK_LEN);
    let len = file
        .metadata()
        .map_err(|e| Error::io("reading metadata of", spare_path, e))?
        .len();
    assert_eq!(
        len,
        header.segment_bytes,
        "{} is installed with the size its header declares",
        spare_path.display()
    );
    file.write_all_at(&header.encode(), 0)
        .map_err(|e| Error::io("writing header of", spare_path, e))?;
    fsutil::sync_file(storage, file, spare_path, false)?;
    storage
        .rename(spare_path, path)
        .map_err(|e| Error::io("renaming spare to", path, e))?;
    let dir = path.parent().expect("segments live in a directory");
    fsutil::sync_dir(storage, dir)
}

/// Creates an empty segment in `dir` whose first record will be `first_lsn`: a zero-filled
/// file, its header written and synced, renamed into place, the directory synced. Recovery
/// uses it to seal a damaged last segment or to keep LSNs going when it discards every
/// segment. Returns its path.
pub fn create_empty(
    storage: &dyn crate::Storage,
    dir: &Path,
    database_id: DatabaseId,
    first_lsn: Lsn,
    segment_bytes: u64,
) -> Result<(PathBuf, SegmentHeader)> {
    let tmp = dir.join(format!("{}.creating", file_name(first_lsn)));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| Error::io("creating segment", &tmp, e))?;
    let zeros = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < segment_bytes {
        let len = usize::try_from((segment_bytes - offset).min(zeros.len() as u64))
            .expect("bounded by the chunk");
        file.write_all_at(&zeros[..len], offset)
            .map_err(|e| Error::io("zero-filling segment", &tmp, e))?;
        offset += len as u64;
    }
    let header = SegmentHeader::new(database_id, first_lsn, segment_bytes, storage.seed())
        .map_err(|e| Error::io("generating salt for", &tmp, e))?;
    let path = dir.join(file_name(first_lsn));
    crate::dir::segments::install_segment(storage, &file, &tmp, &path, &header)?;
    Ok((path, header))
}

/// Lowers the witness of a segment whose log now ends at `end_offset` with `next_lsn` (after
/// a truncation), so that it claims nothing beyond: both slots are rewritten with the lowered
/// claim, newer than `current`, and synced. Until the sync, either slot may still hold
/// `current`; callers do this after zeroing (and syncing) what lies beyond, so that a crash in
/// between leaves the cut records gone while `current` still claims them: damage below the
/// witness, judged the same way again. (Lowered first, a crash would leave them on disk with
/// nothing proving them durable: a torn tail to the next recovery.)
pub fn lower_witness(
    storage: &dyn crate::Storage,
    file: &File,
    path: &Path,
    header: &SegmentHeader,
    current: Witness,
    next_lsn: Lsn,
    end_offset: u64,
) -> Result<Witness> {
    assert!(header.version >= FIRST_VERSION && next_lsn >= header.first_lsn);
    let durable_lsn = current.durable_lsn.min(next_lsn - 1);
    let end = current.end_offset.min(end_offset);
    let first = Witness::after(Some(current), durable_lsn, end);
    let second = Witness::after(Some(first), durable_lsn, end);
    for witness in [first, second] {
        file.write_all_at(&witness.encode(header.salt), SLOT_OFFSETS[witness.slot()])
            .map_err(|e| Error::io("writing the witness of", path, e))?;
    }
    crate::dir::fsutil::sync_file(storage, file, path, false)?;
    assert!(second.within(next_lsn, end_offset));
    Ok(second)
}
