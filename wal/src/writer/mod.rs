//! The writer thread: group commit over a [`Backend`].
//!
//! Each turn it takes everything queued, seals the records into one batch buffer (LSN,
//! durable mark, salted checksums), and submits the batch as one chain: a write, linked to an
//! fdatasync when a commit in it asked for durability, a sync timer fired, or the unsynced
//! bytes passed their bound. Commits that arrive while a chain is in flight go into the next
//! one: that is the group commit. Completions move two watermarks (`written`, `durable`) over
//! the contiguous prefix of completed chains, and waiters are released in LSN order.
//!
//! Failure is sticky: the first failed write or sync poisons the log. Every pending and later
//! commit fails with the cause; nothing is retried, and nothing past the failure is reported
//! written or durable.
//!
//! Rotation barrier: before the first record goes to a new segment, every chain of the old
//! one has completed and the old file is synced. So only the last segment can end torn.
//!
//! Durable witness (`witness.rs`): once the writer has been idle for `witness_idle` (nothing
//! queued, staged or in flight, everything sealed durable) and the durable records of the
//! active segment go beyond what its newest witness claims, it writes a witness slot into the
//! header block, as a chain of its own (a write and an fdatasync), and again at close. Never
//! on the commit path: commits that arrive meanwhile go into their own chains.
//!
//! Leader/follower (`baton.rs`): the writer's state sits behind a baton the thread lets go
//! of while it waits for work, so that a blocking committer that finds it idle writes its
//! own commit ([`crate::Wal::append_wait`]).
//!
//! The writer's state is here, with its turn; its methods are split by concern:
//! [`staging`] (requests sealed into the batch, the sync policy), [`chains`] (submitting
//! chains), [`completions`] (reaping them, poisoning), [`rotation`] (the rotation barrier and
//! installing segments) and [`witness_timer`] (when the durable witness is written).

pub(crate) mod ack_hook;
pub(crate) mod baton;
pub(crate) mod buffers;
mod chains;
pub(crate) mod completion;
mod completions;
pub(crate) mod durable_watch;
pub(crate) mod holds;
pub(crate) mod queue;
mod rotation;
mod staging;
pub(crate) mod stats;
pub(crate) mod sync;
pub(crate) mod watermark;
mod witness_timer;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::backend::{Backend, IoFile};
use crate::dir::prealloc::Preallocator;
use crate::dir::storage::{Defects, Storage};
use crate::error::PoisonCause;
use crate::format::checksum::Salter;
use crate::format::segment::{self, SegmentHeader};
use crate::format::witness::Witness;
use crate::ids::{DatabaseId, Lsn};
use crate::writer::queue::{Request, Taken};
use crate::writer::watermark::{Waiters, Watermark};
use std::sync::Arc;

/// A batch is submitted early once it holds this many bytes, bounding the buffer.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// The segment being appended to.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    pub file: Arc<IoFile>,
    pub header: SegmentHeader,
    /// Where the next record goes.
    pub offset: u64,
    /// Its newest valid witness, written or found at open.
    pub witness: Option<Witness>,
}

#[derive(Debug)]
struct ChainInfo {
    file: Arc<IoFile>,
    write: Option<(Lsn, Lsn)>,
    sync: bool,
    /// For a sync: the writes it covers besides its own, those complete when it was submitted
    /// (an fdatasync covers only writes completed before it started).
    covers: Vec<(Lsn, Lsn)>,
    /// A witness chain: the witness it writes.
    witness: Option<Witness>,
}

/// When the writer writes the durable witness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WitnessTiming {
    /// Witnesses are written at all: at close, and after `idle` when set.
    pub enabled: bool,
    /// How long the writer is idle before it writes one; `None`: only at close.
    pub idle: Option<Duration>,
}

/// The writer's durable-witness schedule.
#[derive(Debug)]
struct WitnessTimer {
    timing: WitnessTiming,
    /// Since when the writer has been idle with a witness to write.
    idle_since: Option<Instant>,
    /// A witness chain is in flight.
    in_flight: bool,
}

/// Records sealed but not yet submitted.
#[derive(Debug, Default)]
struct Batch {
    bytes: Vec<u8>,
    offset: u64,
    lsns: Option<(Lsn, Lsn)>,
    commits: u32,
}

/// When the unsynced data must be synced.
#[derive(Debug)]
struct SyncDue {
    now: bool,
    deadline: Option<Instant>,
    bytes_limit: u64,
    unsynced_bytes: u64,
}

impl Default for SyncDue {
    fn default() -> Self {
        SyncDue {
            now: false,
            deadline: None,
            bytes_limit: u64::MAX,
            unsynced_bytes: 0,
        }
    }
}

impl SyncDue {
    fn is_due(&self, now: Instant, closing: bool) -> bool {
        let unsynced = self.unsynced_bytes > 0;
        self.now
            || self.deadline.is_some_and(|deadline| deadline <= now)
            || (unsynced && self.unsynced_bytes >= self.bytes_limit)
            || (unsynced && closing)
    }
}

/// State shared by the handle and the writer thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub queue: crate::writer::queue::Queue,
    pub counters: crate::writer::stats::Counters,
    /// Wakes tails when the durable position moves or the writer stops.
    pub watch: crate::writer::durable_watch::DurableWatch,
    /// Where the live tails read: the log their removal must keep.
    pub holds: crate::writer::holds::Holds,
    /// Encode buffers the writer is done with, for the next appends.
    pub buffers: crate::writer::buffers::BufferPool,
    /// Called as the written or durable position moves, before its commits resolve.
    pub acknowledged: crate::writer::ack_hook::AckHook,
}

#[derive(Debug)]
pub(crate) struct Writer {
    shared: Arc<Shared>,
    backend: Box<dyn Backend>,
    dir: PathBuf,
    database_id: DatabaseId,
    /// The size of the segments this writer starts (the options'); the active segment's own
    /// size is in its header.
    segment_bytes: u64,
    active: ActiveSegment,
    preallocator: Preallocator,
    next_chain_id: u64,
    in_flight: HashMap<u64, ChainInfo>,
    written: Watermark,
    durable: Watermark,
    /// Highest LSN a submitted sync will cover.
    sync_submitted_through: Lsn,
    /// Highest LSN sealed into a batch.
    sealed_through: Lsn,
    batch: Batch,
    spare_buffers: Vec<Vec<u8>>,
    written_waiters: Waiters,
    durable_waiters: Waiters,
    sync_due: SyncDue,
    poisoned: Option<Arc<PoisonCause>>,
    /// Where the segments live (syncs, renames).
    storage: Arc<dyn Storage>,
    /// Segment salts derive from this seed (storage that replays runs); random without.
    salt_seed: Option<u64>,
    /// Defects the storage asked for (tests of checkers only).
    defects: Defects,
    /// Commits a chain carries, a moving average (weight 1/8) scaled by 8.
    chain_commits_x8: u64,
    witness_timer: WitnessTimer,
    /// Encode buffers of the appends staged this turn, handed back to `shared.buffers`.
    returned_buffers: Vec<Vec<u8>>,
    /// Salts the records' body checksums, a delta per record length (see [`Salter`]).
    salter: Salter,
    /// It stopped as asked: closing, with everything queued written and synced (or failed).
    /// Dropped without it (a panic on its thread, or in a committer driving it), it poisons
    /// the log, so that `close` cannot report success over records acknowledged at enqueue
    /// (`Async`) that were never written (`tests/adversarial_writer_panic_close.rs`).
    finished: bool,
    /// The requests a driving committer takes ([`baton`]), kept for the next drive.
    driven_requests: Vec<Request>,
}

/// How a turn of the writer thread ended.
#[derive(Debug)]
pub(crate) enum Turn {
    /// More to do.
    Continue,
    /// Nothing to do: the thread lets go of the baton and waits for work this long
    /// (`None`: until woken).
    Idle(Option<Duration>),
    /// Closed, everything settled.
    Stop,
}

impl Writer {
    #[expect(clippy::too_many_arguments, reason = "assembled once, by Wal::resume")]
    pub(crate) fn new(
        shared: Arc<Shared>,
        backend: Box<dyn Backend>,
        dir: PathBuf,
        database_id: DatabaseId,
        segment_bytes: u64,
        active: ActiveSegment,
        preallocator: Preallocator,
        durable_through: Lsn,
        storage: Arc<dyn Storage>,
        witness: WitnessTiming,
    ) -> Self {
        // Wal::resume starts a fresh segment when the last one is older or of another size.
        assert!(
            active.header.version == segment::FORMAT_VERSION || active.header.is_recycled(),
            "appends go to a segment of the current format"
        );
        assert_eq!(active.header.segment_bytes, segment_bytes);
        let offset = active.offset;
        Writer {
            shared,
            backend,
            database_id,
            segment_bytes,
            active,
            preallocator,
            next_chain_id: 0,
            in_flight: HashMap::new(),
            written: Watermark::new(durable_through),
            durable: Watermark::new(durable_through),
            sync_submitted_through: durable_through,
            sealed_through: durable_through,
            batch: Batch {
                offset,
                ..Batch::default()
            },
            spare_buffers: Vec::new(),
            written_waiters: VecDeque::new(),
            durable_waiters: VecDeque::new(),
            sync_due: SyncDue::default(),
            poisoned: None,
            dir,
            salt_seed: storage.seed(),
            defects: storage.defects(),
            storage,
            chain_commits_x8: 0,
            witness_timer: WitnessTimer {
                timing: witness,
                idle_since: None,
                in_flight: false,
            },
            returned_buffers: Vec::new(),
            salter: Salter::new(0),
            driven_requests: Vec::new(),
            finished: false,
        }
    }

    /// One turn of the writer thread ([`baton::Baton::run`]): takes what is queued, seals
    /// and submits it, reaps. `Idle` instead when there is nothing to do for now.
    fn turn(&mut self, requests: &mut Vec<Request>) -> Turn {
        // With no room for another chain, wait for one to finish before taking more work:
        // what arrives meanwhile then joins the next chain whole.
        self.wait_for_capacity();
        let wait = self.idle_wait();
        let closing = match self.shared.queue.take_unless_idle(requests, wait) {
            Taken::Idle(limit) => return Turn::Idle(limit),
            Taken::Work { closing } => closing,
        };
        let staged = self.stage_all(requests);
        if self.poisoned.is_none() {
            self.flush(closing);
        }
        if !staged && !closing {
            self.write_witness_when_due();
        }
        if staged {
            self.reap(false);
        } else {
            let block = self.shared.queue.park();
            self.reap(block);
        }
        if self.poisoned.is_some() {
            self.fail_all(false);
        }
        if closing && self.settled() {
            self.write_witness_at_close();
            self.finished = true;
            return Turn::Stop;
        }
        Turn::Continue
    }

    /// Stages the requests taken; returns whether there were any.
    fn stage_all(&mut self, requests: &mut Vec<Request>) -> bool {
        let staged = !requests.is_empty();
        if staged {
            self.witness_timer.idle_since = None;
        }
        for request in requests.drain(..) {
            self.stage(request);
        }
        self.shared.buffers.give_back(&mut self.returned_buffers);
        staged
    }

    /// How long the queue may block: not at all with chains in flight, a batch staged, a
    /// sync due (a sync held back while chains were in flight must go out as soon as they
    /// complete, not wait for the next request or the Batched timer) or a witness due; until
    /// the sync deadline when unsynced data waits for the timer, or until the witness is due;
    /// else until work arrives.
    fn idle_wait(&mut self) -> Option<Option<Duration>> {
        let sync_wanted = self.sync_wanted(false);
        if self.backend.in_flight() > 0 || !self.batch.bytes.is_empty() || sync_wanted {
            return None;
        }
        let deadline = match (self.sync_due.deadline, self.witness_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match deadline {
            Some(deadline) => {
                let now = Instant::now();
                (deadline > now).then(|| Some(deadline - now))
            }
            None => Some(None),
        }
    }

    fn settled(&self) -> bool {
        self.backend.in_flight() == 0
            && self.batch.bytes.is_empty()
            && (self.poisoned.is_some() || self.durable.through() == self.sealed_through)
    }
}

impl Drop for Writer {
    /// However the writer stops (a panic included), later and queued requests are refused
    /// instead of waiting for a thread that is gone; stopped without finishing, it poisons the
    /// log first ([`Writer::finished`]).
    fn drop(&mut self) {
        if !self.finished {
            let cause = PoisonCause::writer_panicked(self.dir.clone());
            self.shared.queue.poison_unless_poisoned(Arc::new(cause));
        }
        // The commits it was writing fail with the log's cause, as the ones queued behind
        // them and later ones do (dropped, their resolvers would say `Closed`).
        if let Some(cause) = self.shared.queue.poisoned() {
            self.fail_waiters(&cause);
        }
        self.shared.queue.writer_stopped();
        self.shared.watch.notify();
    }
}
