//! `okaywal` (feature `peer-okaywal`): entry, chunk, commit (fdatasync, shared by waiters).

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::harness::Peer;

/// Counts the entries recovery hands over (reading each whole) when it has a counter;
/// checkpoints are no-ops: nothing to persist in a benchmark.
#[derive(Debug, Default)]
pub struct Manager(pub Option<Arc<AtomicU64>>);

impl okaywal::LogManager for Manager {
    fn recover(&mut self, entry: &mut okaywal::Entry<'_>) -> io::Result<()> {
        if let Some(count) = &self.0
            && entry.read_all_chunks()?.is_some()
        {
            count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn checkpoint_to(
        &mut self,
        _last: okaywal::EntryId,
        _entries: &mut okaywal::SegmentReader,
        _wal: &okaywal::WriteAheadLog,
    ) -> io::Result<()> {
        Ok(())
    }
}

pub struct OkayWal(pub okaywal::WriteAheadLog);

impl OkayWal {
    /// `checkpoint_after`: bytes before a segment is handed to checkpointing (which
    /// recovery then skips).
    pub fn open(dir: &Path, checkpoint_after: u64) -> io::Result<OkayWal> {
        let wal = okaywal::Configuration::default_for(dir)
            .preallocate_bytes(64 << 20)
            .checkpoint_after_bytes(checkpoint_after)
            .open(Manager(None))?;
        Ok(OkayWal(wal))
    }
}

/// Reopens (recovers) the log, reading every entry; returns how many.
pub fn reopen(dir: &Path) -> io::Result<u64> {
    let count = Arc::new(AtomicU64::new(0));
    let wal = okaywal::Configuration::default_for(dir)
        .checkpoint_after_bytes(u64::MAX)
        .open(Manager(Some(Arc::clone(&count))))?;
    let n = count.load(Ordering::Relaxed);
    drop(wal);
    Ok(n)
}

impl Peer for OkayWal {
    fn commit(&self, _thread: usize, _seq: u64, payload: &[u8]) -> io::Result<()> {
        let mut entry = self.0.begin_entry()?;
        entry.write_chunk(payload)?;
        entry.commit().map(drop)
    }
}
