//! The portable backend: each chain runs to completion on the writer thread with
//! `pwrite` (`FileExt::write_all_at`) and `File::sync_data`. On macOS the standard library's
//! `sync_data` issues `F_FULLFSYNC`, so durability there is real, not a drive-cache flush.

use std::collections::VecDeque;

use super::{Backend, BackendKind, Chain, ChainError, Completion};
use std::os::unix::fs::FileExt;

/// `pwrite` + `fdatasync`, one chain at a time.
#[derive(Debug, Default)]
pub struct StdBackend {
    done: VecDeque<Completion>,
}

impl Backend for StdBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Std
    }

    fn depth(&self) -> usize {
        1
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn submit(&mut self, chain: Chain) {
        let result = run_chain(&chain);
        let buf = chain.write.map(|w| w.buf);
        self.done.push_back(Completion {
            id: chain.id,
            result,
            buf,
        });
    }

    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) {
        assert!(
            min <= self.done.len(),
            "waiting for {min} of {} chains",
            self.done.len()
        );
        out.extend(self.done.drain(..));
    }
}

/// Runs a chain to completion on this thread.
pub(crate) fn run_chain(chain: &Chain) -> Result<(), ChainError> {
    if let Some(write) = &chain.write {
        chain
            .file
            .file
            .write_all_at(&write.buf, write.offset)
            .map_err(|error| ChainError {
                operation: "write",
                error,
            })?;
    }
    if chain.sync {
        chain.file.file.sync_data().map_err(|error| ChainError {
            operation: "fdatasync",
            error,
        })?;
    }
    Ok(())
}
