//! `raft-engine` (feature `peer-raft-engine`): a `LogBatch` with one put, `write(sync=true)`
//! (leader-based group commit); `raft-engine-nosync` writes with `sync=false`.

use std::io;
use std::path::Path;

use crate::harness::Peer;

/// The engine, and whether its writes sync.
pub struct RaftEngine(pub raft_engine::Engine, pub bool);

impl RaftEngine {
    pub fn open(dir: &Path, sync: bool) -> io::Result<RaftEngine> {
        let config = raft_engine::Config {
            dir: dir.display().to_string(),
            batch_compression_threshold: raft_engine::ReadableSize(0),
            recovery_threads: 2,
            ..raft_engine::Config::default()
        };
        raft_engine::Engine::open(config)
            .map(|engine| RaftEngine(engine, sync))
            .map_err(io::Error::other)
    }
}

/// Reopens (recovers) the engine; it does not say how many records it read (0).
pub fn reopen(dir: &Path) -> io::Result<u64> {
    let engine = RaftEngine::open(dir, true)?;
    drop(engine);
    Ok(0)
}

impl Peer for RaftEngine {
    fn commit(&self, thread: usize, seq: u64, payload: &[u8]) -> io::Result<()> {
        let mut batch = raft_engine::LogBatch::default();
        batch
            .put(
                thread as u64 + 1,
                seq.to_be_bytes().to_vec(),
                payload.to_vec(),
            )
            .map_err(io::Error::other)?;
        self.0
            .write(&mut batch, self.1)
            .map(drop)
            .map_err(io::Error::other)
    }
}
