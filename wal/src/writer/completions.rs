//! Completion handling: reaping chains, moving the watermarks, releasing waiters, and the
//! sticky failure that poisons the log.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::{Batch, ChainInfo, SyncDue, Writer};
use crate::error::{Error, PoisonCause};

impl Writer {
    /// Collects completions (blocking for one when `block`), advances the watermarks and
    /// releases waiters.
    pub(super) fn reap(&mut self, block: bool) {
        let in_flight = self.backend.in_flight();
        if in_flight == 0 {
            return;
        }
        let mut completions = Vec::new();
        self.backend.wait(usize::from(block), &mut completions);
        // A failure poisons the log once every completion of the turn is handled. A sync
        // that succeeds in a turn where another chain failed proves nothing: it may have run
        // after the failed sync dropped the pages it covers (its own write's too, when that
        // write completed before the failed sync ran), and a file reports a writeback error
        // to one sync only (fsyncgate). So in such a turn no sync counts: its waiters fail
        // with the poison, and nothing it covered is published durable
        // (`tests/adversarial_post_poison.rs`). What was published before the turn stays.
        let trust_syncs = completions.iter().all(|c| c.result.is_ok());
        let mut failed = None;
        for completion in completions {
            let info = self
                .in_flight
                .remove(&completion.id)
                .expect("completion of a known chain");
            if let Some(mut buf) = completion.buf
                && info.witness.is_none()
            {
                buf.clear();
                self.spare_buffers.push(buf);
            }
            if info.witness.is_some() {
                self.witness_timer.in_flight = false;
            }
            match completion.result {
                Ok(()) => self.completed(&info, trust_syncs),
                Err(failure) => {
                    failed.get_or_insert(PoisonCause {
                        operation: failure.operation,
                        path: info.file.path.clone(),
                        error: failure.error,
                    });
                }
            }
        }
        self.release_waiters();
        if let Some(cause) = failed {
            self.poison(cause);
        }
    }

    fn completed(&mut self, info: &ChainInfo, trust_syncs: bool) {
        if let Some(witness) = info.witness {
            // The rotation barrier drains every chain before the segment changes.
            assert!(Arc::ptr_eq(&info.file, &self.active.file));
            self.active.witness = Some(witness);
            self.shared.counters.witnesses.fetch_add(1, Relaxed);
            self.shared
                .counters
                .witness_lsn
                .store(witness.durable_lsn, Relaxed);
        }
        // Nothing moves past a poison: a chain completing after it may hold a sync that ran
        // after the failed one and covers what that one dropped; and its position would be
        // told to nobody but a wait staged later (`stage`), against unpublished positions.
        if self.poisoned.is_some() {
            return;
        }
        if let Some((first, last)) = info.write {
            self.written.complete(first, last);
        }
        if info.sync && trust_syncs {
            for &(first, last) in info.covers.iter().chain(&info.write) {
                self.durable.complete(first, last);
            }
        }
    }

    fn release_waiters(&mut self) {
        if self.poisoned.is_some() {
            return;
        }
        crate::writer::watermark::publish(
            &self.shared.counters,
            (self.written.through(), self.durable.through()),
            &|written, durable| self.shared.acknowledged.call(written, durable),
            &mut self.written_waiters,
            &mut self.durable_waiters,
        );
        self.shared.watch.notify();
    }

    pub(super) fn poison(&mut self, cause: PoisonCause) {
        if self.poisoned.is_some() {
            return;
        }
        // What the watermarks already cover was written or made durable before the failure:
        // its waiters resolve `Ok`; only the rest fail.
        self.release_waiters();
        tracing::error!(%cause, "write-ahead log poisoned: every pending and later commit fails");
        let cause = Arc::new(cause);
        self.shared.queue.poison(Arc::clone(&cause));
        self.poisoned = Some(Arc::clone(&cause));
        self.fail_waiters(&cause);
        self.shared.watch.notify();
    }

    pub(super) fn fail_waiters(&mut self, cause: &Arc<PoisonCause>) {
        let waiters = self
            .written_waiters
            .drain(..)
            .chain(self.durable_waiters.drain(..));
        for (_, resolver) in waiters {
            resolver.resolve(Err(Error::Poisoned {
                cause: Arc::clone(cause),
            }));
        }
    }

    /// Fails everything pending after a poison, and what is queued: all of it on the writer
    /// thread; on a driving committer's (`driving`), only what it may take
    /// ([`crate::writer::queue::Queue::take_driven`]), the rest being the thread's.
    pub(super) fn fail_all(&mut self, driving: bool) {
        let cause = Arc::clone(self.poisoned.as_ref().expect("poisoned"));
        self.fail_waiters(&cause);
        self.batch = Batch::default();
        self.sync_due = SyncDue::default();
        let mut late = Vec::new();
        if driving {
            self.shared.queue.take_driven(&mut late);
        } else {
            self.shared.queue.take(&mut late);
        }
        for request in late {
            // Refused, but for a wait for records that reached its point before the poison.
            self.stage(request);
        }
    }

    pub(super) fn drain_in_flight(&mut self) {
        while self.backend.in_flight() > 0 {
            self.reap(true);
        }
    }
}
