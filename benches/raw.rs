//! The raw limit: `pwrite` of each record and `fdatasync`, one at a time, on a preallocated
//! zero-filled file. One durable write per commit and no batching: what a log that syncs
//! every record costs on this device.
//!
//! `keel bench` runs it beside Keel (the `raw pwrite+fdatasync` row and the `vs raw` ratios);
//! `benches/peers/` runs it as its `raw` system, and its `raw-uring` and `raw-uring-batched`
//! systems drive the same preallocated file through io_uring ([`RawLog::into_file`]).
//!
//! Commits are serialized. `fdatasync` syncs a file as a whole, so committers writing into one
//! file at once would cover each other's writes: a group commit of the kernel's making, of a
//! size nobody chose. Group commit done on purpose is a baseline of its own
//! ([`RawGroupLog`](crate::RawGroupLog), `raw-group`), and so is overlapping durable writes
//! (`raw-uring` and `raw-uring-batched` in `benches/peers/`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// The file [`RawLog::open`] creates in its directory.
pub const FILE_NAME: &str = "raw.log";

/// A preallocated file that commits records one at a time, each with its `fdatasync`.
#[derive(Debug)]
pub struct RawLog {
    file: File,
    path: PathBuf,
    size_bytes: u64,
    /// Held across the write and its sync: one commit at a time.
    cursor: Mutex<Cursor>,
}

#[derive(Debug, Default)]
struct Cursor {
    /// Where the next record goes.
    offset: u64,
    /// `fdatasync`s done.
    syncs: u64,
}

/// Creates `path` (replacing a file there), zero-filled to `size_bytes` and synced whole, as
/// Keel's segments are before their first commit: the baselines then overwrite allocated
/// blocks, as Keel does.
pub(crate) fn preallocate(path: &Path, size_bytes: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < size_bytes {
        let chunk = (size_bytes - offset).min(zeros.len() as u64);
        let chunk_len = usize::try_from(chunk).expect("at most the 1 MiB of zeros");
        file.write_all_at(&zeros[..chunk_len], offset)?;
        offset += chunk;
    }
    file.sync_all()?;
    Ok(file)
}

/// Refuses a record of `len` bytes that a file of `size_bytes` cannot hold even from its start.
pub(crate) fn check_fits(len: u64, size_bytes: u64) -> io::Result<()> {
    if len > size_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a {len}-byte record does not fit the {size_bytes}-byte raw log"),
        ));
    }
    Ok(())
}

impl RawLog {
    /// Creates `dir/raw.log` (replacing one there), zero-filled to `size_bytes` and synced
    /// whole, as Keel's segments are before their first commit.
    pub fn open(dir: &Path, size_bytes: u64) -> io::Result<RawLog> {
        let path = dir.join(FILE_NAME);
        let file = preallocate(&path, size_bytes)?;
        Ok(RawLog {
            file,
            path,
            size_bytes,
            cursor: Mutex::new(Cursor::default()),
        })
    }

    /// Writes `record` after the previous one (at the start again when it would run past the
    /// end) and `fdatasync`s: returns once it is durable. A record longer than the file is
    /// refused.
    pub fn commit(&self, record: &[u8]) -> io::Result<()> {
        let len = record.len() as u64;
        check_fits(len, self.size_bytes)?;
        let mut cursor = self.cursor.lock().unwrap_or_else(PoisonError::into_inner);
        if cursor.offset + len > self.size_bytes {
            cursor.offset = 0;
        }
        self.file.write_all_at(record, cursor.offset)?;
        self.file.sync_data()?;
        cursor.offset += len;
        cursor.syncs += 1;
        Ok(())
    }

    /// The `fdatasync`s of the commits so far (one each).
    pub fn syncs(&self) -> u64 {
        self.cursor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .syncs
    }

    /// The preallocated size.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The preallocated file and its path, for a driver of its own (`raw-uring`).
    pub fn into_file(self) -> (File, PathBuf) {
        (self.file, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(log: &RawLog) -> Vec<u8> {
        std::fs::read(&log.path).unwrap()
    }

    #[test]
    fn open_preallocates_zeros_of_the_exact_size() {
        let dir = tempfile::tempdir().unwrap();
        let size = (1 << 20) + 5;
        let log = RawLog::open(dir.path(), size).unwrap();
        assert_eq!(contents(&log).len() as u64, size);
        assert!(contents(&log).iter().all(|&b| b == 0));
        assert_eq!(log.size_bytes(), size);
        assert_eq!(log.syncs(), 0);
    }

    #[test]
    fn commits_go_one_after_another_and_wrap_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = RawLog::open(dir.path(), 10).unwrap();
        log.commit(b"aaaa").unwrap();
        log.commit(b"bbbb").unwrap();
        assert_eq!(contents(&log), b"aaaabbbb\0\0");
        // Four more bytes would pass the end: the record goes to the start.
        log.commit(b"cccc").unwrap();
        assert_eq!(contents(&log), b"ccccbbbb\0\0");
        assert_eq!(log.syncs(), 3);
    }

    #[test]
    fn a_record_longer_than_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = RawLog::open(dir.path(), 4).unwrap();
        let error = log.commit(b"12345").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(contents(&log), b"\0\0\0\0");
        assert_eq!(log.syncs(), 0);
    }

    #[test]
    fn into_file_hands_over_the_preallocated_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = RawLog::open(dir.path(), 8).unwrap();
        log.commit(b"xy").unwrap();
        let (file, path) = log.into_file();
        assert_eq!(path, dir.path().join(FILE_NAME));
        assert_eq!(file.metadata().unwrap().len(), 8);
    }
}
