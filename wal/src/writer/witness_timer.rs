//! When the idle writer writes the durable witness, and the witness chain itself.

use std::sync::Arc;
use std::time::Instant;

use super::{ChainInfo, Writer};
use crate::backend::{Chain, WriteOp};
use crate::format::segment::HEADER_BLOCK_LEN;
use crate::format::witness::{self, Witness};

impl Writer {
    /// The witness the idle writer owes: everything sealed is durable, nothing is staged or
    /// in flight, and the durable records of the active segment go beyond what its newest
    /// witness claims. It claims them all, ending where the next record goes.
    fn witness_wanted(&self) -> Option<Witness> {
        if !self.witness_timer.timing.enabled {
            return None;
        }
        let durable = self.durable.through();
        if self.defects.witness_before_sync && self.in_flight.is_empty() && self.poisoned.is_none()
        {
            return self.witness_of_everything_written();
        }
        let header = &self.active.header;
        let claimed = self
            .active
            .witness
            .map_or(header.first_lsn - 1, |w| w.durable_lsn);
        let idle = self.poisoned.is_none()
            && self.in_flight.is_empty()
            && self.batch.bytes.is_empty()
            && durable == self.sealed_through;
        (idle && durable > claimed && durable >= header.first_lsn)
            .then(|| Witness::after(self.active.witness, durable, self.active.offset))
    }

    /// The broken witness of [`crate::Defects::witness_before_sync`].
    fn witness_of_everything_written(&self) -> Option<Witness> {
        let claimed = self.active.witness.map_or(0, |w| w.durable_lsn);
        let written = self.sealed_through;
        (written > claimed && written >= self.active.header.first_lsn)
            .then(|| Witness::after(self.active.witness, written, self.active.offset))
    }

    /// When the owed witness is due (the idle period starts now if it had not yet).
    pub(super) fn witness_deadline(&mut self) -> Option<Instant> {
        let idle = self.witness_timer.timing.idle?;
        self.witness_wanted()?;
        let since = *self
            .witness_timer
            .idle_since
            .get_or_insert_with(Instant::now);
        Some(since + idle)
    }

    /// Writes the owed witness once the writer has been idle long enough.
    pub(super) fn write_witness_when_due(&mut self) {
        let due = self.witness_deadline().is_some_and(|d| d <= Instant::now());
        if due && let Some(witness) = self.witness_wanted() {
            self.submit_witness(witness);
        }
    }

    /// At close, with everything settled: the owed witness, written and synced now.
    pub(super) fn write_witness_at_close(&mut self) {
        if let Some(witness) = self.witness_wanted() {
            self.submit_witness(witness);
            self.drain_in_flight();
        }
    }

    /// Submits a witness chain: its slot written into the active segment's header block, then
    /// an fdatasync. It claims only records already durable, so it may complete in any order
    /// with later chains.
    fn submit_witness(&mut self, witness: Witness) {
        assert!(self.defects.witness_before_sync || witness.durable_lsn <= self.durable.through());
        assert!(witness.end_offset >= HEADER_BLOCK_LEN && witness.end_offset <= self.active.offset);
        self.wait_for_capacity();
        if self.poisoned.is_some() {
            return;
        }
        let id = self.next_chain_id;
        self.next_chain_id += 1;
        let write = WriteOp {
            offset: witness::SLOT_OFFSETS[witness.slot()],
            buf: witness.encode(self.active.header.salt).to_vec(),
        };
        let info = ChainInfo {
            file: Arc::clone(&self.active.file),
            write: None,
            sync: true,
            covers: Vec::new(),
            witness: Some(witness),
        };
        self.in_flight.insert(id, info);
        self.witness_timer.idle_since = None;
        self.witness_timer.in_flight = true;
        self.backend.submit(Chain {
            id,
            file: Arc::clone(&self.active.file),
            write: Some(write),
            sync: true,
            alone: false,
            witness: true,
        });
    }
}
