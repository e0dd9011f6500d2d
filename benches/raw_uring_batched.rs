//! The raw group commit on the ring: batching by hand through io_uring. Committer threads
//! append their record to a shared queue and wait; one ring thread, started by
//! [`RawUringBatched::open`] and joined when it is dropped, keeps up to `depth` chains in
//! flight through keel-wal's io_uring backend (forced onto the ring), each chain carrying
//! everything queued when it was submitted (unless it would not fit the file together: then
//! the longest run from the first that does): one write of the records back to back, linked
//! to an `fdatasync` that starts only once that write completed. What overlapping durable
//! writes and group commit give together, with nothing of a log's format or bookkeeping.
//! `keel bench` runs it (the `raw batched ring` row) and so does `benches/peers/`
//! (`raw-uring-batched`), on the preallocated file of [`RawLog`](crate::RawLog).
//!
//! Beside chains in flight, a new chain is submitted only once it carries as many records as
//! the newest of them (Keel's writer holds its batches by the same rule): smaller ones would
//! split the group into more fdatasyncs. A chain submitted with nothing else in flight runs
//! directly on the ring thread (`Chain::alone`, as Keel's writer does: the ring hands every
//! fsync to a kernel worker, which costs tens of microseconds a commit); records queued
//! meanwhile go into the next chains, on the ring. With a depth of 1 every chain runs so: a
//! dedicated flusher thread with one `pwrite` + `fdatasync` of everything queued.
//!
//! A chain's sync covers its own write, so its committers could return when it completes;
//! they return when the *watermark* passes them (the last record of the contiguous run of
//! completed chains, in submission order), as Keel's committers do, so that a committer
//! never returns before one that queued before it. A failed chain fails the log: its
//! committers, and every commit after, get the error (so does a panic of the ring thread).
//!
//! The ring thread waits in one of two places: on a condvar when nothing is in flight, in the
//! ring (woken through the backend's eventfd waker) when chains are in flight and there is
//! room for more. A committer wakes it only where it waits, and not at all while it is busy
//! or the ring is full: it then takes the queue on its next turn.
//!
//! Linux with the `uring` feature only (keel-wal's io_uring backend).

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use keel_wal::backend::uring::UringBackend;
use keel_wal::backend::uring_faults::UringFaults;
use keel_wal::backend::{Backend, Chain, Completion, IoFile, Waker, WriteOp};

use crate::raw::{check_fits, preallocate};
use crate::raw_group::records_that_fit;

/// The file [`RawUringBatched::open`] creates in its directory.
pub const FILE_NAME: &str = "raw-uring-batched.log";

/// The most chains in flight [`RawUringBatched::open`] keeps (a larger depth is clamped).
pub const MAX_DEPTH: usize = 64;

/// Where the ring thread waits, so that a committer knows how to wake it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RingWait {
    /// It is not waiting (or cannot take more): it sees the queue on its next turn.
    Busy,
    /// In the ring for completions, with room for another chain: the eventfd waker.
    InRing,
    /// On [`Shared::arrived`], nothing in flight.
    OnCondvar,
}

/// What the committers share with the ring thread, under [`Shared::queue`].
#[derive(Debug)]
struct Queue {
    /// The records queued and not yet in a chain, back to back.
    pending: Vec<u8>,
    /// Where each pending record ends in `pending`.
    record_ends: Vec<usize>,
    /// The sequence of the last record queued (records count from 1).
    appended_through: u64,
    /// The sequence of the last record of the contiguous completed chains: the watermark.
    synced_through: u64,
    /// The first failure, kind and message: every commit not synced before it fails.
    failure: Option<(io::ErrorKind, String)>,
    /// The log is dropped: the ring thread finishes what is in flight and ends.
    stop: bool,
    ring: RingWait,
    /// Chains completed, and the bytes they wrote.
    chains: u64,
    bytes: u64,
}

impl Queue {
    /// The log's failure, as an error for one more committer.
    fn failed(&self) -> Option<io::Error> {
        self.failure.as_ref().map(|(kind, message)| {
            io::Error::new(*kind, format!("the raw batched ring failed: {message}"))
        })
    }
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// The ring thread waits here when nothing is in flight.
    arrived: Condvar,
    /// Committers wait here for the watermark to pass their record.
    synced: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A preallocated file whose concurrent commits share write→fdatasync chains, up to `depth`
/// of them in flight on one ring thread.
pub struct RawUringBatched {
    shared: Arc<Shared>,
    waker: Waker,
    ring_thread: Option<JoinHandle<()>>,
    path: PathBuf,
    size_bytes: u64,
}

impl std::fmt::Debug for RawUringBatched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawUringBatched")
            .field("shared", &self.shared)
            .field("path", &self.path)
            .field("size_bytes", &self.size_bytes)
            .finish_non_exhaustive()
    }
}

impl RawUringBatched {
    /// Whether io_uring runs here (a ring can be set up), else why not: where it does not,
    /// [`RawUringBatched::open`] fails with [`io::ErrorKind::Unsupported`].
    pub fn available() -> Result<(), String> {
        UringBackend::new(1, false, None).map(drop)
    }

    /// Creates `dir/raw-uring-batched.log` (replacing one there), zero-filled to `size_bytes`
    /// and synced whole, as [`RawLog::open`](crate::RawLog::open) does, and starts the ring
    /// thread with up to `depth` chains in flight (1 to [`MAX_DEPTH`]). Fails with
    /// [`io::ErrorKind::Unsupported`], before touching `dir`, where io_uring does not run.
    pub fn open(dir: &Path, size_bytes: u64, depth: usize) -> io::Result<RawUringBatched> {
        RawUringBatched::open_with(dir, size_bytes, depth, None)
    }

    /// [`RawUringBatched::open`] on a ring built with `faults` (the tests').
    fn open_with(
        dir: &Path,
        size_bytes: u64,
        depth: usize,
        faults: Option<&Arc<UringFaults>>,
    ) -> io::Result<RawUringBatched> {
        let depth = depth.clamp(1, MAX_DEPTH);
        let ring = UringBackend::new(depth, false, faults)
            .map_err(|reason| io::Error::new(io::ErrorKind::Unsupported, reason))?;
        let waker = ring
            .waker()
            .ok_or_else(|| io::Error::other("the ring backend has no waker"))?;
        let path = dir.join(FILE_NAME);
        let file = preallocate(&path, size_bytes)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                record_ends: Vec::new(),
                appended_through: 0,
                synced_through: 0,
                failure: None,
                stop: false,
                ring: RingWait::Busy,
                chains: 0,
                bytes: 0,
            }),
            arrived: Condvar::new(),
            synced: Condvar::new(),
        });
        let ring_thread = RingThread {
            ring,
            file: Arc::new(IoFile {
                file,
                path: path.clone(),
            }),
            size_bytes,
            depth,
            shared: Arc::clone(&shared),
            in_flight: VecDeque::new(),
            next_id: 0,
            offset: 0,
            spare: Vec::new(),
            taken_through: 0,
            newest_chain_records: 0,
        };
        let ring_thread = std::thread::Builder::new()
            .name("raw-uring-batched".into())
            .spawn(move || ring_thread.run())?;
        Ok(RawUringBatched {
            shared,
            waker,
            ring_thread: Some(ring_thread),
            path,
            size_bytes,
        })
    }

    /// Queues `record` for the next chain and returns once an `fdatasync` that started after
    /// it was written has completed (and every record queued before it is synced too). A
    /// record longer than the file is refused; after a failed chain every commit fails.
    pub fn commit(&self, record: &[u8]) -> io::Result<()> {
        check_fits(record.len() as u64, self.size_bytes)?;
        let (seq, wait) = {
            let mut queue = self.shared.lock();
            if let Some(error) = queue.failed() {
                return Err(error);
            }
            queue.pending.extend_from_slice(record);
            let end = queue.pending.len();
            queue.record_ends.push(end);
            queue.appended_through += 1;
            let wait = std::mem::replace(&mut queue.ring, RingWait::Busy);
            (queue.appended_through, wait)
        };
        self.wake(wait);
        let mut queue = self.shared.lock();
        while queue.synced_through < seq {
            if let Some(error) = queue.failed() {
                return Err(error);
            }
            queue = self
                .shared
                .synced
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Ok(())
    }

    /// Wakes the ring thread where it said it waits.
    fn wake(&self, wait: RingWait) {
        match wait {
            RingWait::InRing => (self.waker)(),
            RingWait::OnCondvar => self.shared.arrived.notify_one(),
            RingWait::Busy => {}
        }
    }

    /// The chains completed so far (one write and one `fdatasync` each).
    pub fn syncs(&self) -> u64 {
        self.shared.lock().chains
    }

    /// The bytes of the completed chains.
    pub fn bytes(&self) -> u64 {
        self.shared.lock().bytes
    }

    /// The records the completed chains carried (the watermark).
    pub fn records(&self) -> u64 {
        self.shared.lock().synced_through
    }

    /// The preallocated size.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RawUringBatched {
    /// Stops the ring thread once what it has in flight completed, and joins it.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.arrived.notify_one();
        (self.waker)();
        if let Some(thread) = self.ring_thread.take() {
            // A panic of the ring thread already failed the log (`FailOnPanic`).
            let _ = thread.join();
        }
    }
}
/// A chain in flight: its id, the sequence of its last record, its bytes, and its outcome
/// once completed (`Some(true)`: synced).
#[derive(Debug)]
struct InFlight {
    id: u64,
    through: u64,
    bytes: u64,
    synced: Option<bool>,
}

/// The ring thread's own state.
struct RingThread {
    ring: UringBackend,
    file: Arc<IoFile>,
    /// The preallocated file's size: chains wrap around to its start.
    size_bytes: u64,
    depth: usize,
    shared: Arc<Shared>,
    /// The chains in flight, in submission order.
    in_flight: VecDeque<InFlight>,
    next_id: u64,
    offset: u64,
    /// Buffers handed back by completed chains, for the next queue to fill.
    spare: Vec<Vec<u8>>,
    /// The sequence of the last record in a chain.
    taken_through: u64,
    /// The records of the chain submitted last.
    newest_chain_records: u64,
}

impl RingThread {
    /// Submits what is queued whenever there is room, waits for completions, and publishes
    /// them; ends on `stop` once nothing is in flight.
    fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        // Declared before any guard of the lock, so dropped after it when unwinding.
        let _failing_on_panic = FailOnPanic(&shared);
        loop {
            let mut queue = shared.lock();
            // The ring's count, not `in_flight`'s: a failed chain stays there, completed.
            let room = self.ring.in_flight() < self.depth;
            if room && self.worth_a_chain(&queue) && queue.failure.is_none() {
                let chain = self.take(&mut queue);
                drop(queue);
                self.ring.submit(chain);
                continue;
            }
            if self.ring.in_flight() == 0 {
                if queue.stop {
                    return;
                }
                queue.ring = RingWait::OnCondvar;
                drop(shared.arrived.wait(queue));
                continue;
            }
            queue.ring = if room {
                RingWait::InRing
            } else {
                RingWait::Busy
            };
            drop(queue);
            let mut done = Vec::new();
            self.ring.wait(1, &mut done);
            self.settle(done);
        }
    }

    /// Whether what is queued goes into a chain now: with nothing in flight, anything; beside
    /// chains in flight, only as many records as the newest of them carries. Smaller
    /// overlapping chains split the group into more fdatasyncs, each slower under
    /// concurrency (Keel's writer holds its batch by the same rule, `writer/staging.rs`;
    /// `docs/DESIGN.md`, "why pipelining gains little here"); the queue fills meanwhile, and
    /// every arrival wakes this thread.
    fn worth_a_chain(&self, queue: &Queue) -> bool {
        let queued = queue.appended_through - self.taken_through;
        assert_eq!(queued, queue.record_ends.len() as u64, "one end per record");
        queued > 0 && (self.ring.in_flight() == 0 || queued >= self.newest_chain_records)
    }

    /// What is queued, as one chain at the next offset (the start again when it would run
    /// past the end): every record, unless they would not fit the file together; then the
    /// longest run from the first that does.
    fn take(&mut self, queue: &mut Queue) -> Chain {
        let count = records_that_fit(&queue.record_ends, self.size_bytes);
        let end = queue.record_ends[count - 1];
        let buf = if count == queue.record_ends.len() {
            let spare = self.spare.pop().unwrap_or_default();
            std::mem::replace(&mut queue.pending, spare)
        } else {
            let rest = queue.pending.split_off(end);
            std::mem::replace(&mut queue.pending, rest)
        };
        queue.record_ends.drain(..count);
        queue.record_ends.iter_mut().for_each(|e| *e -= end);
        let len = buf.len() as u64;
        if self.offset + len > self.size_bytes {
            self.offset = 0;
        }
        assert!(
            self.offset + len <= self.size_bytes,
            "a chain fits the file"
        );
        let chain = Chain {
            id: self.next_id,
            file: Arc::clone(&self.file),
            write: Some(WriteOp {
                offset: self.offset,
                buf,
            }),
            sync: true,
            // Alone in flight, the chain runs on this thread, as Keel's writer has it run: the
            // ring's fsync goes through a kernel worker, tens of microseconds a commit.
            alone: self.ring.in_flight() == 0,
            witness: false,
        };
        self.newest_chain_records = count as u64;
        self.taken_through += count as u64;
        self.in_flight.push_back(InFlight {
            id: self.next_id,
            through: self.taken_through,
            bytes: len,
            synced: None,
        });
        self.next_id += 1;
        self.offset += len;
        chain
    }

    /// Marks completed chains, moves the watermark over the contiguous completed ones, keeps
    /// their buffers, and wakes the committers when the watermark moved or a chain failed
    /// (not after a wake by the waker alone).
    fn settle(&mut self, done: Vec<Completion>) {
        let mut queue = self.shared.lock();
        queue.ring = RingWait::Busy;
        let published = (queue.synced_through, queue.failure.is_some());
        for completion in done {
            let synced = match completion.result {
                Ok(()) => true,
                Err(e) => {
                    queue.failure.get_or_insert_with(|| {
                        (e.error.kind(), format!("{}: {}", e.operation, e.error))
                    });
                    false
                }
            };
            let chain = self
                .in_flight
                .iter_mut()
                .find(|c| c.id == completion.id)
                .expect("a completion of a chain in flight");
            chain.synced = Some(synced);
            self.spare.extend(completion.buf.map(|mut buf| {
                buf.clear();
                buf
            }));
        }
        while let Some(chain) = self.in_flight.front() {
            match chain.synced {
                Some(true) => {
                    assert!(
                        chain.through > queue.synced_through,
                        "chains publish in order"
                    );
                    queue.synced_through = chain.through;
                    queue.chains += 1;
                    queue.bytes += chain.bytes;
                    self.in_flight.pop_front();
                }
                // A failed chain stays: the watermark never passes it.
                Some(false) | None => break,
            }
        }
        let moved = (queue.synced_through, queue.failure.is_some()) != published;
        drop(queue);
        if moved {
            self.shared.synced.notify_all();
        }
    }
}

/// Fails the log when the ring thread panics (a broken invariant): the committers get an
/// error instead of waiting forever for chains no one will publish.
struct FailOnPanic<'a>(&'a Shared);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .lock()
                .failure
                .get_or_insert_with(|| (io::ErrorKind::Other, "its ring thread panicked".into()));
            self.0.synced.notify_all();
        }
    }
}

#[cfg(test)]
mod tests;
