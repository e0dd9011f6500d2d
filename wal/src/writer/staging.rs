//! Staging: requests taken from the queue sealed into the batch, and the sync policy that
//! decides when the batch and a sync are submitted.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::{MAX_BATCH_BYTES, Writer};
use crate::error::Error;
use crate::format::reader::RecordPosition;
use crate::format::record::{self, get_u32};
use crate::ids::Lsn;
use crate::options::AckLevel;
use crate::writer::completion::Resolver;
use crate::writer::queue::{AppendRequest, Request, refuse};
use crate::writer::watermark::Waiters;

/// Adds a waiter for `through` where it keeps `waiters` in LSN order (`publish` releases them
/// from the front): after every append queued before it, but before those above `through`
/// (a barrier may wait for less than everything queued before it: `Wal::barrier`).
fn wait_in_order(waiters: &mut Waiters, through: Lsn, resolver: Resolver) {
    let at = waiters.partition_point(|(lsn, _)| *lsn <= through);
    waiters.insert(at, (through, resolver));
}

impl Writer {
    pub(super) fn stage(&mut self, request: Request) {
        // A wait for records that already reached its point resolves, poisoned or not: the
        // failure came after them (a barrier through durable records is never refused).
        let request = match request {
            Request::Sync {
                through,
                ack,
                resolver,
            } if through <= self.reached(ack) => return resolver.resolve(Ok(through)),
            other => other,
        };
        if let Some(cause) = &self.poisoned {
            let cause = Arc::clone(cause);
            return refuse(request, || Error::Poisoned {
                cause: Arc::clone(&cause),
            });
        }
        match request {
            Request::Append(append) => self.stage_append(append),
            Request::Sync {
                through,
                ack: AckLevel::Durable,
                resolver,
            } => {
                if through <= self.durable.through() {
                    resolver.resolve(Ok(through));
                } else {
                    wait_in_order(&mut self.durable_waiters, through, resolver);
                    self.sync_due.now = true;
                }
            }
            // Staged in queue order, after every append it waits for. What is sealed is
            // submitted at the end of the turn.
            Request::Sync {
                through, resolver, ..
            } => {
                if through <= self.written.through() {
                    resolver.resolve(Ok(through));
                } else {
                    wait_in_order(&mut self.written_waiters, through, resolver);
                }
            }
        }
    }

    /// The last LSN that reached `ack`: written, or durable.
    fn reached(&self, ack: AckLevel) -> Lsn {
        match ack {
            AckLevel::Durable => self.durable.through(),
            AckLevel::Written | AckLevel::Enqueued => self.written.through(),
        }
    }

    fn stage_append(&mut self, append: AppendRequest) {
        let AppendRequest {
            first_lsn,
            batch,
            ack,
            max_delay,
            max_bytes,
            resolver,
            placed,
            waited: _,
        } = append;
        assert_eq!(
            first_lsn,
            self.sealed_through + 1,
            "LSNs are assigned densely in queue order"
        );
        let mut bytes = batch.bytes;
        let mut positions = Vec::with_capacity(if placed.is_some() {
            batch.count as usize
        } else {
            0
        });
        let lsn = self.seal_records(&mut bytes, first_lsn, placed.is_some(), &mut positions);
        // Copied into the batch: back to the callers' pool, not freed on this thread.
        self.returned_buffers.push(bytes);
        self.batch.commits += 1;
        self.shared.counters.commits.fetch_add(1, Relaxed);
        self.shared
            .counters
            .entries
            .fetch_add(u64::from(batch.count), Relaxed);
        let last_lsn = lsn - 1;
        if let Some(placed) = placed
            && self.poisoned.is_none()
        {
            (placed.0)(&positions);
        }
        match (ack, resolver) {
            (_, None) => {}
            (AckLevel::Durable, Some(resolver)) => {
                self.durable_waiters.push_back((last_lsn, resolver));
                self.sync_due.now = true;
            }
            (_, Some(resolver)) => self.written_waiters.push_back((last_lsn, resolver)),
        }
        if ack != AckLevel::Durable {
            let deadline = Instant::now() + max_delay;
            self.sync_due.deadline =
                Some(self.sync_due.deadline.map_or(deadline, |d| d.min(deadline)));
            self.sync_due.bytes_limit = self.sync_due.bytes_limit.min(max_bytes);
        }
        if let Some(cause) = &self.poisoned {
            let cause = Arc::clone(cause);
            self.fail_waiters(&cause);
        }
    }

    /// Seals the records of one append (`bytes`, the first getting `first_lsn`) into the
    /// batch, rotating first where a record does not fit the active segment, and notes their
    /// positions when they are `placed`. Stops early when the log is poisoned. Returns the
    /// LSN after the last record sealed.
    fn seal_records(
        &mut self,
        bytes: &mut [u8],
        first_lsn: Lsn,
        placed: bool,
        positions: &mut Vec<RecordPosition>,
    ) -> Lsn {
        let mut at = 0;
        let mut lsn = first_lsn;
        while at < bytes.len() && self.poisoned.is_none() {
            let len = record::record_len(get_u32(bytes, at + record::PAYLOAD_LEN_OFFSET) as usize);
            if self.active.offset + len as u64 > self.active.header.segment_bytes {
                self.rotate(lsn);
                if self.poisoned.is_some() {
                    break;
                }
            }
            // Records were checked against `max_record_bytes`, which fits an empty segment.
            assert!(
                self.active.offset + len as u64 <= self.active.header.segment_bytes,
                "a record of {len} bytes does not fit its segment"
            );
            let sealed = record::seal_with(
                &mut bytes[at..at + len],
                lsn,
                self.durable.through(),
                self.active.header.salt,
                &mut self.salter,
            );
            debug_assert_eq!(sealed, len);
            if placed {
                positions.push(RecordPosition {
                    segment: self.active.header.first_lsn,
                    offset: self.active.offset,
                    lsn,
                });
            }
            self.append_to_batch(&bytes[at..at + len], lsn);
            at += len;
            lsn += 1;
            if self.batch.bytes.len() >= MAX_BATCH_BYTES {
                self.submit_batch(false);
            }
        }
        lsn
    }

    fn append_to_batch(&mut self, record: &[u8], lsn: Lsn) {
        if self.batch.bytes.is_empty() {
            self.batch.offset = self.active.offset;
            self.batch.lsns = Some((lsn, lsn));
            if self.batch.bytes.capacity() == 0 {
                self.batch.bytes = self.spare_buffers.pop().unwrap_or_default();
            }
        }
        self.batch.bytes.extend_from_slice(record);
        if let Some((_, last)) = &mut self.batch.lsns {
            *last = lsn;
        }
        self.active.offset += record.len() as u64;
        self.sealed_through = lsn;
        self.sync_due.unsynced_bytes += record.len() as u64;
    }

    /// Whether a sync is due and has something to cover.
    pub(super) fn sync_wanted(&self, closing: bool) -> bool {
        self.sync_due.is_due(Instant::now(), closing)
            && self.sealed_through > self.sync_submitted_through
    }

    /// Submits what is staged: the batch (with a linked sync when one is due), or a sync
    /// alone when only a sync is due.
    pub(super) fn flush(&mut self, closing: bool) {
        let sync = self.sync_wanted(closing);
        if self.hold_batch(closing) {
            return;
        }
        if !self.batch.bytes.is_empty() {
            self.submit_batch(sync);
        } else if sync {
            self.submit_sync();
        }
        if self.sync_due.now && self.sealed_through <= self.sync_submitted_through {
            self.sync_due.now = false;
        }
    }

    /// Whether the staged batch should wait for more commits instead of overlapping the
    /// chains in flight. An overlapping chain pays for itself only when it carries as many
    /// commits as the newest one in flight: smaller ones split the group commit into more
    /// fsyncs, each slower under concurrency, and lose throughput (measured: see
    /// `docs/DESIGN.md`, "Pipelining"). With nothing in flight nothing is held.
    fn hold_batch(&self, closing: bool) -> bool {
        let record_chains = self.in_flight.len() - usize::from(self.witness_timer.in_flight);
        !closing
            && record_chains > 0
            && self.batch.bytes.len() < MAX_BATCH_BYTES
            && u64::from(self.batch.commits) * 8 < self.chain_commits_x8
    }
}
