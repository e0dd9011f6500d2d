//! `rocksdb` (feature `peer-rocksdb`, Debian's librocksdb 7.8.3 through the `rocksdb` crate):
//! one `put` per commit with `WriteOptions::set_sync(true)` (`rocksdb-nosync`: false), default
//! options otherwise (WAL on; leader-based group commit; memtables flushed to SST files in the
//! background).

use std::io;
use std::path::Path;

use crate::harness::Peer;

pub struct RocksDb {
    db: rocksdb::DB,
    write: rocksdb::WriteOptions,
}

impl RocksDb {
    pub fn open(dir: &Path, sync: bool) -> io::Result<RocksDb> {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        // As for the other systems: nothing compressed.
        options.set_compression_type(rocksdb::DBCompressionType::None);
        let db = rocksdb::DB::open(&options, dir).map_err(io::Error::other)?;
        let mut write = rocksdb::WriteOptions::default();
        write.set_sync(sync);
        Ok(RocksDb { db, write })
    }
}

/// Reopens (replaying the WAL) and reads every record back; returns how many.
pub fn reopen(dir: &Path) -> io::Result<u64> {
    let peer = RocksDb::open(dir, true)?;
    let mut records = 0;
    for item in peer.db.iterator(rocksdb::IteratorMode::Start) {
        item.map_err(io::Error::other)?;
        records += 1;
    }
    Ok(records)
}

impl Peer for RocksDb {
    fn commit(&self, thread: usize, seq: u64, payload: &[u8]) -> io::Result<()> {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&(thread as u64).to_be_bytes());
        key[8..].copy_from_slice(&seq.to_be_bytes());
        self.db
            .put_opt(key, payload, &self.write)
            .map_err(io::Error::other)
    }
}
