//! Submitting chains: a batch's write (with its linked sync when one is due), or a sync
//! alone, each waiting first for what the sync must cover and for room in the backend.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::{ChainInfo, SyncDue, Writer};
use crate::backend::{Chain, WriteOp};
use crate::ids::Lsn;

impl Writer {
    /// A sync covers only writes complete before it starts, so before one is submitted every
    /// write-only chain in flight must complete: then every sealed record is covered either by
    /// this sync or by the sync linked to its own write.
    fn wait_for_unsynced_writes(&mut self) {
        while self.in_flight.values().any(|chain| !chain.sync) && self.poisoned.is_none() {
            self.reap(true);
        }
    }

    pub(super) fn wait_for_capacity(&mut self) {
        while self.backend.in_flight() >= self.backend.depth() {
            self.reap(true);
        }
    }

    pub(super) fn submit_batch(&mut self, sync: bool) {
        self.wait_for_capacity();
        let batch = std::mem::take(&mut self.batch);
        let (first, last) = batch.lsns.expect("a non-empty batch has LSNs");
        let write = WriteOp {
            offset: batch.offset,
            buf: batch.bytes,
        };
        self.submit(Some(write), Some((first, last)), sync, batch.commits);
        self.batch.offset = self.active.offset;
    }

    /// A sync alone covers only writes already completed, so it waits for those in flight.
    pub(super) fn submit_sync(&mut self) {
        while self.backend.in_flight() > 0 {
            self.reap(true);
        }
        if self.poisoned.is_some() {
            return;
        }
        self.submit(None, None, true, 0);
    }

    fn submit(
        &mut self,
        write: Option<WriteOp>,
        lsns: Option<(Lsn, Lsn)>,
        sync: bool,
        commits: u32,
    ) {
        if sync {
            self.wait_for_unsynced_writes();
        }
        if self.poisoned.is_some() {
            // Nothing is written after a failure; the batch's waiters fail with the cause.
            return;
        }
        let bytes = write.as_ref().map_or(0, |w| w.buf.len());
        self.shared.counters.record_io(bytes, commits, sync);
        let covers = if sync {
            self.written
                .complete_ranges_from(self.active.header.first_lsn)
        } else {
            Vec::new()
        };
        let id = self.next_chain_id;
        self.next_chain_id += 1;
        let info = ChainInfo {
            file: Arc::clone(&self.active.file),
            write: lsns,
            sync,
            covers,
            witness: None,
        };
        if sync {
            self.sync_submitted_through = self.sealed_through.max(self.sync_submitted_through);
            self.sync_due = SyncDue::default();
        }
        // A chain runs alone when nothing is in flight and no other commit waits to join a
        // chain behind it: then a backend may run it directly (see the uring backend).
        let alone = self.in_flight.is_empty() && self.shared.queue.is_empty();
        if write.is_some() {
            self.chain_commits_x8 =
                self.chain_commits_x8 - self.chain_commits_x8 / 8 + u64::from(commits);
        }
        self.in_flight.insert(id, info);
        self.backend.submit(Chain {
            id,
            file: Arc::clone(&self.active.file),
            write,
            sync,
            alone,
            witness: false,
        });
        let refused = self.backend.direct_refused();
        if refused > 0 {
            self.shared.counters.direct_refused.store(refused, Relaxed);
        }
    }
}
