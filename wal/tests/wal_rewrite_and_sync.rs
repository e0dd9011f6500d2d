//! `fsutil::rewrite_and_sync`, what an open and recovery's seal run on the last segment's
//! records that nothing proves durable: every byte from past the header to the end is
//! written again, the same bytes, in bounded pieces, and then the file is synced.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Mutex;

use keel_wal::Storage;
use keel_wal::segment::HEADER_BLOCK_LEN;

/// The real file system, recording each rewrite and sync.
#[derive(Debug, Default)]
struct Recording {
    rewrites: Mutex<Vec<(u64, Vec<u8>)>>,
    syncs: Mutex<usize>,
}

impl Storage for Recording {
    fn rewrite(&self, file: &File, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.rewrites.lock().unwrap().push((offset, bytes.to_vec()));
        keel_wal::storage::FileSystem.rewrite(file, path, offset, bytes)
    }

    fn sync_file(&self, file: &File, path: &Path, all: bool) -> io::Result<()> {
        *self.syncs.lock().unwrap() += 1;
        keel_wal::storage::FileSystem.sync_file(file, path, all)
    }
}

#[test]
fn every_unproven_byte_is_written_again_in_bounded_pieces_then_synced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("segment");
    let len = 3 * (1 << 20) + 12_345;
    let content: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    for (from, to) in [
        (0, len as u64),
        (HEADER_BLOCK_LEN + 7, len as u64 - 3),
        (len as u64, len as u64),
    ] {
        let storage = Recording::default();
        keel_wal::fsutil::rewrite_and_sync(&storage, &file, &path, from, to).unwrap();
        let rewrites = storage.rewrites.lock().unwrap();
        let start = from.max(HEADER_BLOCK_LEN);
        let mut at = start;
        for (offset, bytes) in rewrites.iter() {
            assert_eq!(*offset, at, "{from}..{to}: pieces in order, without gaps");
            assert!(
                bytes.len() <= 1 << 20,
                "{from}..{to}: a piece of {}",
                bytes.len()
            );
            let start_at = usize::try_from(*offset).unwrap();
            let end = start_at + bytes.len();
            assert_eq!(&content[start_at..end], &bytes[..], "{from}..{to}");
            at = u64::try_from(end).unwrap();
        }
        assert_eq!(at, to.max(start), "{from}..{to}: everything up to the end");
        assert_eq!(
            *storage.syncs.lock().unwrap(),
            1,
            "{from}..{to}: synced once"
        );
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        content,
        "the bytes are unchanged"
    );
}
