//! Listing a log directory: its segments in LSN order, the spares, and files that are not
//! the log's.

use std::path::{Path, PathBuf};

use crate::dir::fsutil;
use crate::dir::prealloc::SPARE_PREFIX;
use crate::error::{Error, Result};
use crate::format::segment::{SegmentFile, parse_file_name};

/// What a directory holds besides segments.
#[derive(Clone, Default, Debug)]
pub struct DirectoryListing {
    /// Segments in LSN order.
    pub segments: Vec<SegmentFile>,
    /// Preallocated spares left by an earlier writer.
    pub spares: Vec<PathBuf>,
    /// Files that are none of Keel's: reported, never touched.
    pub unknown: Vec<PathBuf>,
}

/// Lists a WAL directory.
pub fn list_directory(dir: &Path) -> Result<DirectoryListing> {
    let mut listing = DirectoryListing::default();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if let Some(first_lsn) = parse_file_name(&name) {
            listing.segments.push(SegmentFile { path, first_lsn });
        } else if name.starts_with(SPARE_PREFIX) {
            listing.spares.push(path);
        } else if !fsutil::is_reserved_name(&name) {
            listing.unknown.push(path);
        }
    }
    listing.segments.sort_by_key(|s| s.first_lsn);
    Ok(listing)
}

/// True for a name keel-wal gives a file in a log directory: a segment, a spare, `LOCK`,
/// `IDENTITY` (what [`list_directory`] does not count as unknown).
pub fn is_log_file_name(name: &str) -> bool {
    parse_file_name(name).is_some()
        || name.starts_with(SPARE_PREFIX)
        || fsutil::is_reserved_name(name)
}
