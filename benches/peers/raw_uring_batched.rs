//! `raw-uring-batched`: the ring with batching by hand. Committer threads append their record
//! to a shared queue and wait; one ring thread keeps up to `depth` chains in flight through
//! keel-wal's io_uring backend (forced onto the ring, as `raw-uring` is), each chain carrying
//! everything queued when it was submitted: one write of the records back to back, linked to
//! an `fdatasync` that starts only once that write completed. What overlapping durable writes
//! and group commit give together, with nothing of a log's format or bookkeeping.
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
//! never returns before one that queued before it. A failed chain fails the run: its
//! committers, and every commit after, get the error.
//!
//! The ring thread waits in one of two places: on a condvar when nothing is in flight, in the
//! ring (woken through the backend's eventfd waker) when chains are in flight and there is
//! room for more. A committer wakes it only where it waits, and not at all while it is busy
//! or the ring is full: it then takes the queue on its next turn.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use keel_bench::RawLog;
use keel_wal::backend::uring::UringBackend;
use keel_wal::backend::{Backend, Chain, Completion, IoFile, Waker, WriteOp};

use crate::harness::Peer;

/// The preallocated file's size, as `raw` and `raw-uring` have it.
const RAW_BYTES: u64 = 256 << 20;

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
    /// The sequence of the last record queued (records count from 1).
    appended_through: u64,
    /// The sequence of the last record of the contiguous completed chains: the watermark.
    synced_through: u64,
    /// The first failed chain's error: every commit not synced before it fails.
    failure: Option<String>,
    /// The peer is dropped: the ring thread finishes what is in flight and ends.
    stop: bool,
    ring: RingWait,
    /// Chains completed, and the bytes they wrote.
    chains: u64,
    bytes: u64,
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

/// The `raw-uring-batched` system: committers on the harness's threads, and the ring thread.
pub struct RawUringBatched {
    shared: Arc<Shared>,
    waker: Waker,
    ring_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RawUringBatched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawUringBatched")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl RawUringBatched {
    /// Preallocates the file in `dir` (as `raw` does) and starts the ring thread with up to
    /// `depth` chains in flight.
    pub fn open(dir: &Path, depth: usize) -> io::Result<RawUringBatched> {
        let raw = RawLog::open(dir, RAW_BYTES)?;
        let raw_bytes = raw.size_bytes();
        let (file, path) = raw.into_file();
        let depth = depth.clamp(1, 64);
        let ring = UringBackend::new(depth, None).map_err(io::Error::other)?;
        let waker = ring
            .waker()
            .ok_or_else(|| io::Error::other("the ring backend has no waker"))?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
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
            file: Arc::new(IoFile { file, path }),
            raw_bytes,
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
        })
    }

    /// Wakes the ring thread where it said it waits.
    fn wake(&self, wait: RingWait) {
        match wait {
            RingWait::InRing => (self.waker)(),
            RingWait::OnCondvar => self.shared.arrived.notify_one(),
            RingWait::Busy => {}
        }
    }
}

fn failed(queue: &Queue) -> Option<io::Error> {
    queue
        .failure
        .as_ref()
        .map(|error| io::Error::other(format!("raw-uring-batched: a chain failed: {error}")))
}

impl Peer for RawUringBatched {
    fn commit(&self, _thread: usize, _seq: u64, payload: &[u8]) -> io::Result<()> {
        let (seq, wait) = {
            let mut queue = self.shared.lock();
            if let Some(error) = failed(&queue) {
                return Err(error);
            }
            queue.pending.extend_from_slice(payload);
            queue.appended_through += 1;
            let wait = std::mem::replace(&mut queue.ring, RingWait::Busy);
            (queue.appended_through, wait)
        };
        self.wake(wait);
        let mut queue = self.shared.lock();
        while queue.synced_through < seq {
            if let Some(error) = failed(&queue) {
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

    fn counters(&self) -> Option<String> {
        let queue = self.shared.lock();
        Some(format!(
            "{} chains (write + fdatasync), {:.1} records and {:.0} bytes a chain",
            queue.chains,
            queue.synced_through as f64 / queue.chains.max(1) as f64,
            queue.bytes as f64 / queue.chains.max(1) as f64
        ))
    }
}

impl Drop for RawUringBatched {
    /// Stops the ring thread once what it has in flight completed.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.arrived.notify_one();
        (self.waker)();
        if let Some(thread) = self.ring_thread.take() {
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
    raw_bytes: u64,
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
        queued > 0 && (self.ring.in_flight() == 0 || queued >= self.newest_chain_records)
    }

    /// Everything queued, as one chain at the next offset (the start again when it would run
    /// past the end).
    fn take(&mut self, queue: &mut Queue) -> Chain {
        let buf = std::mem::replace(&mut queue.pending, self.spare.pop().unwrap_or_default());
        let len = buf.len() as u64;
        assert!(
            len <= self.raw_bytes,
            "one record per committer queued: {len} bytes"
        );
        if self.offset + len > self.raw_bytes {
            self.offset = 0;
        }
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
        self.newest_chain_records = queue.appended_through - self.taken_through;
        self.taken_through = queue.appended_through;
        self.in_flight.push_back(InFlight {
            id: self.next_id,
            through: queue.appended_through,
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
                    queue
                        .failure
                        .get_or_insert_with(|| format!("{}: {}", e.operation, e.error));
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
