//! The options of [`Database::open`](super::Database::open), and the size bound of one write.

use std::sync::Arc;

use keel_recovery::RecoveryPolicy;
use keel_wal::{BackendChoice, Durability, Storage, WalOptions};

/// Options of [`Database::open`](super::Database::open).
#[derive(Clone, Debug)]
pub struct Options {
    /// When a commit resolves (see [`Durability`]); also when its effects become visible.
    pub durability: Durability,
    /// The log's I/O backend: io_uring where the kernel offers it (`Auto`), or std.
    pub backend: BackendChoice,
    /// What recovery accepts at open.
    pub recovery_policy: RecoveryPolicy,
    /// Size of each log segment (a multiple of 4096, at least 8 KiB; 64 MiB by default). The
    /// record limit follows it unless set.
    pub segment_bytes: u64,
    /// Largest log record, which bounds one write: a key and value may hold this less 64
    /// bytes of framing, and a larger write is refused with [`Error::TooLarge`]. 0 (the
    /// default): an eighth of `segment_bytes` (8 MiB for the default 64 MiB segments), so
    /// setting `segment_bytes` alone never contradicts it. Set, it must fit one segment; a
    /// value that does not is refused at open with a message naming both options and the
    /// range allowed.
    ///
    /// [`Error::TooLarge`]: crate::Error::TooLarge
    pub max_record_bytes: u32,
    /// Create the database when the directory holds none.
    pub create_if_missing: bool,
    /// An automatic checkpoint is asked for (by the commit that crosses it; it runs on a
    /// thread of its own) once it would drop this many bytes from what a recovery reads:
    /// the log written since the last one, less what the state grew by since (so values
    /// overwritten or deleted, aborted transactions and the log's framing count, and a new
    /// key's bytes do not: a checkpoint would write them again). This bounds recovery time
    /// and disk use to about the state plus the threshold; 0 turns automatic checkpoints
    /// off.
    pub checkpoint_log_bytes: u64,
    /// ... and at least this percentage of the newest snapshot's size: each checkpoint
    /// writes the whole state, so with a fixed threshold alone a large state would be
    /// rewritten for every `checkpoint_log_bytes` it could drop (a 10 GiB state every
    /// 256 MiB: 40 bytes of snapshot per byte dropped). At 100 a checkpoint writes at most
    /// about as much as it drops, however large the state grows, and recovery reads at most
    /// about twice the state. 0: only `checkpoint_log_bytes`.
    /// At most [`Options::MAX_CHECKPOINT_LOG_PERCENT`]: a larger value would let the log
    /// (and the replay at open) grow to many times the state before a checkpoint, which is
    /// what turning them off says (`checkpoint_log_bytes: 0`).
    pub checkpoint_log_percent: u64,
    /// A transaction whose buffered writes pass this many bytes writes them to the log ahead
    /// of its commit (after a `BeginTxn`), so its memory stays bounded; an abandoned one is
    /// closed with an `AbortTxn`. Writes count as they are logged: key, value and about 100
    /// bytes of framing each.
    pub spill_txn_bytes: usize,
    /// How much log a [`Subscription`](super::Subscription) may keep from removal behind
    /// its position: one further behind when a checkpoint removes log ends with
    /// `keel_wal::Error::TailFellBehind`, and the log goes. Writers never wait for one.
    /// Also the most a subscription holds in memory of the transactions it has read and
    /// that are still open in the log (spilled ones, delivered whole at their commit): past
    /// it, it ends with [`Error::FeedHeldTooMuch`](crate::Error::FeedHeldTooMuch).
    pub feed_max_lag_bytes: u64,
    /// How many log segments a checkpoint frees are kept and written over by later ones
    /// instead of deleted and zero-filled anew (see `keel_wal::WalOptions::recycle_segments`);
    /// default 4, 0 deletes them.
    pub recycle_segments: usize,
    /// How transactions are checked at commit unless they choose otherwise
    /// ([`Transaction::isolation`](super::Transaction::isolation)): serializable by default.
    pub isolation: super::Isolation,
    /// The storage the database lives on: the real file system by default; tests hand in
    /// simulated storage or a fault injector (see [`keel_wal::Storage`]).
    pub storage: Arc<dyn Storage>,
}

impl Options {
    /// The largest [`Options::checkpoint_log_percent`] an open accepts: a log up to 100
    /// times the newest snapshot.
    pub const MAX_CHECKPOINT_LOG_PERCENT: u64 = 10_000;

    /// Refuses the options no log-level check covers, before anything is created.
    pub(crate) fn validate(&self) -> crate::Result<()> {
        if self.checkpoint_log_percent > Self::MAX_CHECKPOINT_LOG_PERCENT {
            return Err(crate::Error::Wal(keel_wal::Error::InvalidOptions(format!(
                "checkpoint_log_percent is {}, over {} (a log 100 times the snapshot); \
                 set checkpoint_log_bytes to 0 to turn automatic checkpoints off",
                self.checkpoint_log_percent,
                Self::MAX_CHECKPOINT_LOG_PERCENT
            ))));
        }
        Ok(())
    }
}

impl Default for Options {
    fn default() -> Self {
        let wal = WalOptions::default();
        Options {
            durability: Durability::Strict,
            backend: BackendChoice::Auto,
            recovery_policy: RecoveryPolicy::default(),
            segment_bytes: wal.segment_bytes,
            max_record_bytes: wal.max_record_bytes,
            create_if_missing: true,
            checkpoint_log_bytes: 256 << 20,
            checkpoint_log_percent: 100,
            spill_txn_bytes: 8 << 20,
            feed_max_lag_bytes: keel_wal::DEFAULT_TAIL_MAX_LAG_BYTES,
            recycle_segments: wal.recycle_segments,
            isolation: super::Isolation::default(),
            storage: wal.storage,
        }
    }
}

/// The most a `Write` entry's archive adds to its key and value: the 48-byte archived entry
/// and alignment padding of the two byte strings (checked by a test against the encoder).
pub(crate) const WRITE_ENTRY_OVERHEAD: u64 = 64;

/// The most one write's log record adds to its key and value: the entry's overhead
/// ([`WRITE_ENTRY_OVERHEAD`], 64), the record header and the record's alignment. A transaction counts its buffered writes with
/// it ([`Options::spill_txn_bytes`]), so what it logs in one append at its commit is at most
/// the threshold, one write and the commit record, however small its writes (the change
/// feed relies on that bound: `Database::unit_start_bound`).
pub(crate) const LOGGED_WRITE_OVERHEAD: usize = 64 + keel_wal::record::RECORD_HEADER_LEN + 8;
const _: () = assert!(WRITE_ENTRY_OVERHEAD == 64);
