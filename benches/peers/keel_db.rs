//! `keel-db`: the engine, `keel::Database`, Strict on the default backend: one transaction of
//! one put per commit, automatic checkpoints at their default. The row to compare with
//! RocksDB's `put` with sync and with SQLite's insert: what a service using Keel as its
//! key-value store sees.

use std::io;
use std::path::Path;

use keel::{Database, Options, RunId};

use crate::harness::Peer;

pub struct KeelDb {
    db: Database,
    run: RunId,
}

/// Opens (or creates) a database in `dir` and begins the run every commit goes to.
pub fn open(dir: &Path) -> io::Result<Box<dyn Peer>> {
    let options = Options {
        max_record_bytes: 1 << 20,
        ..Options::default()
    };
    let db = Database::open(dir, options).map_err(io::Error::other)?;
    let run = futures::executor::block_on(db.begin_run("peers")).map_err(io::Error::other)?;
    Ok(Box::new(KeelDb { db, run }))
}

impl Peer for KeelDb {
    fn commit(&self, thread: usize, seq: u64, payload: &[u8]) -> io::Result<()> {
        let mut txn = self.db.transaction(self.run).map_err(io::Error::other)?;
        txn.put(format!("t{thread}-{seq:012}").as_bytes(), payload)
            .map_err(io::Error::other)?;
        txn.commit_blocking().map(drop).map_err(io::Error::other)
    }

    fn counters(&self) -> Option<String> {
        let stats = self.db.stats();
        Some(format!(
            "{} checkpoints, {} commits",
            stats.checkpoints, stats.commits
        ))
    }
}
