//! Rotation: the barrier before a new segment, and installing a spare as a segment.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::{ActiveSegment, Writer};
use crate::backend::IoFile;
use crate::error::{Error, PoisonCause};
use crate::format::segment::{self, HEADER_BLOCK_LEN};
use crate::ids::Lsn;

impl Writer {
    /// Starts the segment whose first record is `first_lsn`, after the barrier: the staged
    /// batch written and synced, every chain of the old segment complete.
    pub(super) fn rotate(&mut self, first_lsn: Lsn) {
        let _span = tracing::info_span!("rotation", first_lsn).entered();
        if !self.batch.bytes.is_empty() {
            self.submit_batch(true);
        } else if self.sealed_through > self.sync_submitted_through {
            self.submit_sync();
        }
        self.drain_in_flight();
        if self.poisoned.is_some() {
            return;
        }
        if let Err(error) = self.start_segment(first_lsn) {
            let error = match error {
                Error::Io { source, .. } => source,
                other => std::io::Error::other(other.to_string()),
            };
            let path = self.dir.join(segment::file_name(first_lsn));
            self.poison(PoisonCause {
                operation: "creating segment",
                path,
                error,
            });
        }
    }

    fn start_segment(&mut self, first_lsn: Lsn) -> crate::error::Result<()> {
        let (spare, waited) = self.preallocator.take()?;
        let header = spare.header_for(
            self.database_id,
            first_lsn,
            self.segment_bytes,
            self.salt_seed,
        )?;
        if spare.recycled.is_some() {
            self.shared.counters.segments_recycled.fetch_add(1, Relaxed);
        }
        let path = self.dir.join(segment::file_name(first_lsn));
        crate::dir::install_segment(
            self.storage.as_ref(),
            &spare.file,
            &spare.path,
            &path,
            &header,
        )?;
        self.preallocator.replenish();
        self.shared.counters.rotations.fetch_add(1, Relaxed);
        self.shared
            .counters
            .rotation_waits
            .fetch_add(u64::from(waited), Relaxed);
        tracing::info!(segment = %path.display(), first_lsn, waited_for_preallocation = waited, "rotated segment");
        self.active = ActiveSegment {
            file: Arc::new(IoFile {
                file: spare.file,
                path,
            }),
            header,
            offset: HEADER_BLOCK_LEN,
            witness: None,
        };
        self.batch.offset = HEADER_BLOCK_LEN;
        Ok(())
    }
}
