//! How a log is opened: durability, sizes, backend.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::BackendChoice;
use crate::dir::storage::{self, Storage};
use crate::error::{Error, Result};
use crate::format::record::MAX_PAYLOAD_LEN;
use crate::format::segment::{HEADER_BLOCK_LEN, MIN_SEGMENT_BYTES};
use crate::ids::DatabaseId;

/// The io_uring backend's default depth (see `docs/DESIGN.md`, "Choosing the depth").
pub const DEFAULT_IO_DEPTH: usize = 8;
/// The largest depth accepted.
pub const MAX_IO_DEPTH: usize = 256;

/// When a commit resolves, and what a crash can take away.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Durability {
    /// A commit resolves only after an fdatasync that covers it has completed. Nothing
    /// acknowledged is lost to a process crash or a power loss. Commits queued while a flush
    /// is in flight share the next write and fdatasync (group commit).
    Strict,
    /// A commit resolves once its write has reached the kernel. A timer issues fdatasync at
    /// most `max_delay` after the oldest unsynced write, and sooner once `max_bytes` are
    /// unsynced. A process crash loses nothing acknowledged; a power loss can lose the
    /// commits of that window.
    Batched {
        /// The longest a written commit waits for its fdatasync.
        max_delay: Duration,
        /// Unsynced bytes that start an fdatasync without waiting for `max_delay`.
        max_bytes: u64,
    },
    /// A commit resolves as soon as it is queued; the writer writes and syncs it in the
    /// background within about `max_delay`. A process crash or power loss can lose the
    /// commits queued in that window, and a failed write fails commits already resolved.
    /// Backpressure: while more than [`crate::MAX_QUEUED_BYTES`] wait in the queue, a commit
    /// resolves once written instead, so a producer faster than the disk cannot grow memory
    /// without bound.
    Async {
        /// About the longest a queued commit waits to be written and synced.
        max_delay: Duration,
    },
}

impl Durability {
    /// The point at which a commit under this mode resolves.
    pub(crate) fn ack_level(self) -> AckLevel {
        match self {
            Durability::Strict => AckLevel::Durable,
            Durability::Batched { .. } => AckLevel::Written,
            Durability::Async { .. } => AckLevel::Enqueued,
        }
    }

    /// How long written data may stay unsynced.
    pub(crate) fn max_delay(self) -> Duration {
        match self {
            Durability::Strict => Duration::ZERO,
            Durability::Batched { max_delay, .. } | Durability::Async { max_delay } => max_delay,
        }
    }

    /// How many bytes may stay unsynced.
    pub(crate) fn max_bytes(self) -> u64 {
        match self {
            Durability::Strict => 0,
            Durability::Batched { max_bytes, .. } => max_bytes,
            Durability::Async { .. } => u64::MAX,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum AckLevel {
    Enqueued,
    Written,
    Durable,
}

/// Options of a log ([`crate::Wal::resume`], and keel-recovery's `open_wal` and `open_log`).
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// The default durability of commits; each commit may override it.
    pub durability: Durability,
    /// Size every segment file is created with.
    pub segment_bytes: u64,
    /// Largest payload of one record; must fit in a segment. 0 (the default): it follows
    /// `segment_bytes`, an eighth of a segment (8 MiB for the default 64 MiB segments; see
    /// [`WalOptions::record_limit`]), so a segment size set alone never contradicts it.
    pub max_record_bytes: u32,
    /// IO backend.
    pub backend: BackendChoice,
    /// Chains (a write and its sync) the io_uring backend keeps in flight at most. The std
    /// backend runs one at a time.
    pub io_depth: usize,
    /// When set, the directory must belong to this database; when creating, it is used.
    pub database_id: Option<DatabaseId>,
    /// Create the directory and a new log when there is none.
    pub create_if_missing: bool,
    /// Keep a zero-filled spare segment ready on a background thread.
    pub preallocate: bool,
    /// How many segments freed by [`crate::Wal::remove_segments_before`] are kept as spares
    /// and written over by later segments (recycled: no zero fill, under a new salt, see
    /// `docs/FORMAT.md`, "Recycled segments") instead of deleted. Default 4: at the
    /// engine's default checkpoint threshold (256 MiB of log, four 64 MiB segments) a
    /// checkpoint's freed segments take the next four rotations, none zero-filled, and at
    /// most 4 segments' worth of disk is kept beyond the log. 0 deletes them (every new
    /// segment is zero-filled first). Segments started in recycled files are format
    /// version 3, which builds before it refuse.
    pub recycle_segments: usize,
    /// How long the writer waits with nothing to do before it writes the durable witness
    /// (a checksummed slot in the segment's header block claiming the durable records, see
    /// `docs/FORMAT.md`); it is also written at close. Never on the commit path: a writer
    /// that keeps receiving commits writes none. `None`: never (for measurements; damage to
    /// the newest records then reads as a torn tail). A storage without
    /// [`Storage::background_work`] decides when instead, so that runs replay.
    pub witness_idle: Option<Duration>,
    /// How much log a [`crate::Tail`] may hold back from removal
    /// ([`crate::Wal::remove_segments_before`]) behind its position: a tail further behind
    /// when segments are removed ends with [`Error::TailFellBehind`], and the log is
    /// removed as if it were not there. A slow reader never stalls the writer.
    pub tail_max_lag_bytes: u64,
    /// The storage the log lives on: the real file system by default; tests hand in
    /// simulated storage or a fault injector (the `keel-sim` crate).
    pub storage: Arc<dyn Storage>,
}

/// The default of [`WalOptions::tail_max_lag_bytes`]: 1 GiB.
pub const DEFAULT_TAIL_MAX_LAG_BYTES: u64 = 1 << 30;

/// The default of [`WalOptions::witness_idle`].
pub const DEFAULT_WITNESS_IDLE: Duration = Duration::from_millis(5);

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            durability: Durability::Strict,
            segment_bytes: 64 * 1024 * 1024,
            max_record_bytes: 0,
            backend: BackendChoice::Auto,
            io_depth: DEFAULT_IO_DEPTH,
            database_id: None,
            create_if_missing: true,
            preallocate: true,
            recycle_segments: 4,
            witness_idle: Some(DEFAULT_WITNESS_IDLE),
            tail_max_lag_bytes: DEFAULT_TAIL_MAX_LAG_BYTES,
            storage: storage::file_system(),
        }
    }
}

impl WalOptions {
    /// The largest payload of one record these options allow: [`WalOptions::max_record_bytes`],
    /// or when that is 0, an eighth of `segment_bytes` (never over [`MAX_PAYLOAD_LEN`]).
    pub fn record_limit(&self) -> u32 {
        match self.max_record_bytes {
            0 => u32::try_from(self.segment_bytes / SEGMENT_SHARE_OF_ONE_RECORD)
                .unwrap_or(u32::MAX)
                .min(MAX_PAYLOAD_LEN),
            set => set,
        }
    }

    /// Refuses options that contradict themselves or are out of range, with a message naming
    /// the option to change and the range it must be in.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(Error::InvalidOptions(msg));
        if self.segment_bytes < MIN_SEGMENT_BYTES || !self.segment_bytes.is_multiple_of(4096) {
            return invalid(format!(
                "segment_bytes {} must be a multiple of 4096 and at least {MIN_SEGMENT_BYTES}",
                self.segment_bytes
            ));
        }
        let limit = self.record_limit();
        let room = record_room(self.segment_bytes);
        if limit > MAX_PAYLOAD_LEN || u64::from(limit) > room {
            let most = room.min(u64::from(MAX_PAYLOAD_LEN));
            let mut msg = format!(
                "max_record_bytes {limit} does not fit: with segment_bytes {} it must be between 1 and {most}, or 0 to follow segment_bytes",
                self.segment_bytes
            );
            if limit <= MAX_PAYLOAD_LEN {
                let segment = segment_bytes_for(limit);
                msg.push_str(&format!("; or raise segment_bytes to at least {segment}"));
            }
            return invalid(msg);
        }
        if !(1..=MAX_IO_DEPTH).contains(&self.io_depth) {
            return invalid(format!(
                "io_depth {} must be between 1 and {MAX_IO_DEPTH}",
                self.io_depth
            ));
        }
        if let Durability::Batched { max_bytes: 0, .. } = self.durability {
            return invalid("Batched max_bytes must be above 0".into());
        }
        Ok(())
    }
}

/// A record limit left at 0 is this fraction of a segment: large records still leave most of
/// a segment to others, and the room a rotation leaves unused stays under an eighth.
const SEGMENT_SHARE_OF_ONE_RECORD: u64 = 8;

/// The largest payload one segment of `segment_bytes` holds.
fn record_room(segment_bytes: u64) -> u64 {
    segment_bytes - HEADER_BLOCK_LEN - crate::format::record::RECORD_HEADER_LEN as u64
}

/// The smallest valid segment size holding a payload of `limit` bytes.
fn segment_bytes_for(limit: u32) -> u64 {
    let needed =
        u64::from(limit) + HEADER_BLOCK_LEN + crate::format::record::RECORD_HEADER_LEN as u64;
    needed.next_multiple_of(4096).max(MIN_SEGMENT_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(segment_bytes: u64, max_record_bytes: u32) -> WalOptions {
        WalOptions {
            segment_bytes,
            max_record_bytes,
            ..WalOptions::default()
        }
    }

    #[test]
    fn the_record_limit_follows_the_segment_size_unless_set() {
        assert_eq!(WalOptions::default().record_limit(), 8 << 20);
        assert_eq!(options(4 << 20, 0).record_limit(), 512 << 10);
        assert_eq!(options(MIN_SEGMENT_BYTES, 0).record_limit(), 1024);
        assert_eq!(options(1 << 40, 0).record_limit(), MAX_PAYLOAD_LEN);
        assert_eq!(options(4 << 20, 1234).record_limit(), 1234);
        for segment_bytes in [MIN_SEGMENT_BYTES, 4 << 20, 64 << 20, 1 << 40] {
            options(segment_bytes, 0).validate().unwrap();
        }
    }

    #[test]
    fn a_record_limit_over_the_segment_names_both_options_and_the_ranges() {
        let message = options(4 << 20, 8 << 20)
            .validate()
            .unwrap_err()
            .to_string();
        let room = record_room(4 << 20);
        for needle in [
            "max_record_bytes 8388608".to_string(),
            format!("between 1 and {room}"),
            "0 to follow segment_bytes".into(),
            format!("segment_bytes to at least {}", segment_bytes_for(8 << 20)),
        ] {
            assert!(message.contains(&needle), "{needle:?} not in {message}");
        }
        let exact = options(segment_bytes_for(8 << 20), 8 << 20);
        exact.validate().unwrap();
        let smaller = options(segment_bytes_for(8 << 20) - 4096, 8 << 20);
        assert!(smaller.validate().is_err());
    }
}
