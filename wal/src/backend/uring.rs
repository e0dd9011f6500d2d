//! The io_uring backend (Linux, the default there): the `io-uring` crate driven from the
//! writer's own thread.
//!
//! Each chain becomes one `Write` linked (`IO_LINK`) to an `Fsync` with `DATASYNC`, so the
//! sync starts only after its write completed, and up to [`UringBackend::depth`] chains are in
//! flight at once. Completions are returned in whatever order the kernel posts them; the writer
//! advances its watermarks over the contiguous prefix only.
//!
//! A chain is settled in *rounds*. A round is the set of operations submitted together; when
//! all of a round's operations have completed, the round is judged ([`judge_round`]):
//!
//! | write outcome                 | sync outcome                   | next                          |
//! |-------------------------------|--------------------------------|-------------------------------|
//! | failed (not retryable)        | any (usually ECANCELED)        | the chain fails: `write`      |
//! | short, or EINTR / EAGAIN      | failed (not retryable)         | the chain fails: `fdatasync`  |
//! | short, or EINTR / EAGAIN      | none, done, ECANCELED, EINTR, EAGAIN | new round: rest + a new sync |
//! | complete                      | failed (not retryable)         | the chain fails: `fdatasync`  |
//! | complete                      | ECANCELED, EINTR, EAGAIN       | new round: the sync alone     |
//! | complete                      | done, or no sync               | the chain succeeds            |
//!
//! A sync counts only if the whole write completed before it was submitted: a sync that
//! succeeded after a short write is ignored and reissued after the rest. Failed syncs are never
//! retried, whatever the write did (after a failed fdatasync the kernel may have dropped the
//! dirty pages, so a later "successful" sync proves nothing). A kernel cancels the sync linked
//! to a write it saw come back short, but a sync can still run after a short write (one the
//! kernel saw complete, as the short-write fault submits it), and its error counts. See
//! [`classify`] for the errno table.
//!
//! Buffers are owned by the chain until the kernel has posted every completion that refers to
//! them, also when the log is poisoned or the backend dropped mid-flight: `Drop` waits.
//!
//! The fsync trap: the kernel cannot run an fsync inline and hands every ring fsync to an
//! `iou-wrk` thread, which costs tens of microseconds a commit. A chain that would be alone in
//! flight (the writer says so with [`Chain::alone`]) therefore runs directly on this thread,
//! as the std backend would; the ring pays off when chains overlap.
//!
//! While the writer waits for completions, new requests must still start promptly: a
//! `PollAdd` on an eventfd stays armed in the ring, and the queue writes to the eventfd
//! ([`Backend::waker`]) when the writer is parked in the ring.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use io_uring::{IoUring, Probe, opcode, squeue, types};

use super::uring_faults::UringFaults;
use super::{Backend, BackendKind, Chain, ChainError, Completion, Waker, std_io};

/// Marks the eventfd poll's completion.
const WAKE: u64 = u64::MAX;
/// Operation tags in the low bits of a completion's user data.
const OP_WRITE: u64 = 0;
const OP_SYNC: u64 = 1;
/// Rounds a chain may take without the write making progress before it fails.
const MAX_IDLE_ROUNDS: u32 = 64;

/// What to do with a failed operation's errno.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    /// Reissue the operation: nothing was lost.
    Retry,
    /// The operation was cancelled because an earlier one in its link failed or was short;
    /// the round's other outcome decides.
    Cancelled,
    /// The chain fails with this error and the log is poisoned.
    Fail,
}

/// The errno table of the ring operations, on purpose for each errno the kernel documents
/// for `pwrite`, `fdatasync` and `fallocate`:
///
/// | errno                           | write  | fdatasync | why                                      |
/// |---------------------------------|--------|-----------|------------------------------------------|
/// | EINTR, EAGAIN                   | retry  | retry     | interrupted before doing anything         |
/// | ECANCELED                       | cancel | cancel    | an earlier linked operation failed/short  |
/// | EIO                             | fail   | fail      | device error; a failed sync is never retried (fsyncgate) |
/// | ENOSPC, EDQUOT                  | fail   | fail      | out of space or quota: surfaced as such   |
/// | EFBIG, EOVERFLOW, EINVAL        | fail   | fail      | offset or length the file cannot take     |
/// | EBADF, EFAULT, EPERM, EROFS     | fail   | fail      | the file or buffer is not usable          |
/// | anything else                   | fail   | fail      | unknown: never guessed to be harmless     |
pub fn classify(errno: i32) -> Action {
    match errno {
        libc::EINTR | libc::EAGAIN => Action::Retry,
        libc::ECANCELED => Action::Cancelled,
        _ => Action::Fail,
    }
}

/// How a round's write ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WriteOutcome {
    /// Failed with an error that is not retryable.
    Failed,
    /// Short, or interrupted (EINTR, EAGAIN, ECANCELED): bytes remain to be written.
    Incomplete,
    /// Every byte of the chain's buffer is written (also when the round had no write).
    Complete,
}

/// What follows a finished round.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RoundVerdict {
    /// The chain succeeds.
    Succeed,
    /// The chain fails with its write's error.
    FailWrite,
    /// The chain fails with this fdatasync errno.
    FailSync(i32),
    /// Another round: the rest of the write (if any) and a new sync.
    Again,
}

/// Judges a finished round from its write's outcome and its sync's result (`None`: no sync
/// in the round; a negative errno on failure). The module documentation has the table.
pub fn judge_round(write: WriteOutcome, sync: Option<i32>) -> RoundVerdict {
    let sync_action = sync.filter(|&r| r < 0).map(|r| (-r, classify(-r)));
    match (write, sync_action) {
        (WriteOutcome::Failed, _) => RoundVerdict::FailWrite,
        (_, Some((errno, Action::Fail))) => RoundVerdict::FailSync(errno),
        (WriteOutcome::Incomplete, _) => RoundVerdict::Again,
        (WriteOutcome::Complete, Some((_, Action::Retry | Action::Cancelled))) => {
            RoundVerdict::Again
        }
        (WriteOutcome::Complete, None) => RoundVerdict::Succeed,
    }
}

/// Why io_uring cannot be used here, for the fallback warning or the "uring required" error.
pub fn probe(faults: Option<&Arc<UringFaults>>) -> Result<(), String> {
    UringBackend::new(1, faults).map(drop)
}

/// A chain the kernel may still be working on.
#[derive(Debug)]
struct InFlight {
    id: u64,
    file: Arc<super::IoFile>,
    buf: Option<Vec<u8>>,
    offset: u64,
    /// Bytes of `buf` known to be on their way to the file.
    written: usize,
    sync: bool,
    /// Operations of the current round not yet completed.
    pending: u8,
    /// Whether the current round holds a write, and its sync's result.
    round_write: bool,
    round_sync: Option<i32>,
    /// The write of this round stopped short or must be retried.
    write_again: bool,
    idle_rounds: u32,
    error: Option<ChainError>,
    /// A durable-witness chain: the test faults aimed at record chains pass it by.
    witness: bool,
}

/// io_uring with linked write→fdatasync chains.
pub struct UringBackend {
    ring: IoUring,
    depth: usize,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    ready: VecDeque<Completion>,
    wake: Arc<OwnedFd>,
    wake_armed: bool,
    woken: bool,
    /// Set once io_uring_enter failed hard: the ring is given up, every later chain fails
    /// with this error, and completions still posted for the abandoned chains are ignored.
    abandoned: Option<(io::ErrorKind, String)>,
    faults: Option<Arc<UringFaults>>,
}

impl UringBackend {
    /// A ring for `depth` chains. Fails with the reason when io_uring is unusable here.
    pub fn new(depth: usize, faults: Option<&Arc<UringFaults>>) -> Result<Self, String> {
        if faults.is_some_and(|f| f.probe_fails()) {
            return Err("injected probe failure".into());
        }
        let depth = depth.max(1);
        // Two operations a chain, plus the wake poll.
        let entries = u32::try_from(2 * depth + 1)
            .map_err(|_| format!("depth {depth} is too large"))?
            .next_power_of_two();
        let ring = IoUring::new(entries).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOSYS) => "the kernel has no io_uring (ENOSYS)".to_string(),
            Some(libc::EPERM) => {
                "io_uring is not permitted (kernel.io_uring_disabled or a seccomp filter: EPERM)"
                    .to_string()
            }
            _ => format!("io_uring_setup failed: {e}"),
        })?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| format!("probing io_uring opcodes failed: {e}"))?;
        for (code, name) in [
            (opcode::Write::CODE, "write"),
            (opcode::Fsync::CODE, "fsync"),
            (opcode::PollAdd::CODE, "poll"),
        ] {
            if !probe.is_supported(code) {
                return Err(format!("the kernel's io_uring lacks the {name} operation"));
            }
        }
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(format!("eventfd failed: {}", io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by eventfd, is valid, and nothing else owns it.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(UringBackend {
            ring,
            depth,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
            ready: VecDeque::new(),
            wake,
            wake_armed: false,
            woken: false,
            abandoned: None,
            faults: faults.cloned(),
        })
    }

    /// Pushes the operations of `slot`'s next round and submits them.
    fn push_round(&mut self, slot: usize) {
        let chain = self.slots[slot].as_mut().expect("an occupied slot");
        let fd = types::Fd(chain.file.file.as_raw_fd());
        let mut entries = Vec::with_capacity(2);
        let total = chain.buf.as_ref().map_or(0, Vec::len);
        chain.round_write = chain.written < total;
        chain.round_sync = None;
        chain.write_again = false;
        if chain.round_write {
            let buf = chain.buf.as_ref().expect("a write has a buffer");
            let rest = &buf[chain.written..];
            let mut len = u32::try_from(rest.len()).expect("batches are at most 4 MiB");
            let mut fd = fd;
            if let Some(faults) = self.faults.as_ref().filter(|_| !chain.witness) {
                if faults.short_writes_on() && len > 1 {
                    len /= 2;
                }
                if faults.bad_fd_trips() {
                    fd = types::Fd(-1);
                }
            }
            let mut write = opcode::Write::new(fd, rest.as_ptr(), len)
                .offset(chain.offset + chain.written as u64)
                .build()
                .user_data(tag(slot, OP_WRITE));
            if chain.sync {
                write = write.flags(squeue::Flags::IO_LINK);
            }
            entries.push(write);
        }
        if chain.sync {
            let mut fd = fd;
            if !chain.witness && self.faults.as_ref().is_some_and(|f| f.bad_sync_fd_trips()) {
                fd = types::Fd(-1);
            }
            entries.push(
                opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data(tag(slot, OP_SYNC)),
            );
        }
        chain.pending = u8::try_from(entries.len()).expect("at most two");
        // SAFETY: the write's buffer is owned by `self.slots[slot]`, which is neither dropped
        // nor moved out until this round's completions have been reaped (`complete_round`,
        // and `Drop` waits for every pending operation). The file descriptor is kept open by
        // the `Arc<IoFile>` in the same slot. The ring has room for every chain's two entries
        // plus the poll, and each round's entries are submitted before the next are pushed.
        unsafe {
            self.ring
                .submission()
                .push_multiple(&entries)
                .expect("the ring has room for every chain in flight");
        }
        self.enter(0);
    }

    /// Submits what is queued and waits for `want` completions, retrying interruptions.
    fn enter(&mut self, want: usize) {
        if self.faults.as_ref().is_some_and(|f| f.enter_trips()) {
            return self.fail_enter_after_completions();
        }
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) =>
                {
                    if want == 0 {
                        // Completions must be reaped before more can be submitted.
                        return;
                    }
                }
                Err(e) => return self.abandon(&e),
            }
        }
    }

    /// Fault injection ([`UringFaults::fail_enter_after`]): submits what is queued, waits
    /// until every operation of the chains in flight has posted its completion, then fails as
    /// a hard io_uring_enter error would, leaving those completions to be reaped later.
    fn fail_enter_after_completions(&mut self) {
        let in_kernel: usize = self
            .slots
            .iter()
            .flatten()
            .map(|c| usize::from(c.pending))
            .sum();
        while self.ring.completion().len() < in_kernel {
            if self.ring.submit_and_wait(in_kernel).is_err() {
                break;
            }
        }
        self.abandon(&io::Error::other("injected io_uring_enter failure"));
    }

    /// The ring itself failed (io_uring_enter returned an error that is not an
    /// interruption): every chain fails with that error. The kernel may still hold their
    /// buffers and files, so those are leaked rather than freed: memory-safe, and the log is
    /// poisoned by the failures anyway.
    ///
    /// The kernel may still post completions of those chains (it had taken their operations
    /// before the failure): their slots are empty by then, and they are ignored. A slot is
    /// never given to another chain afterwards (every later chain fails at once), so a late
    /// completion is never taken for another chain's.
    fn abandon(&mut self, error: &io::Error) {
        tracing::error!(%error, "io_uring_enter failed; failing every chain in flight");
        self.abandoned = Some((error.kind(), error.to_string()));
        for slot in 0..self.slots.len() {
            if let Some(chain) = self.slots[slot].take() {
                std::mem::forget(chain.buf);
                std::mem::forget(chain.file);
                self.free.push(slot);
                let result = Err(self.abandoned_error().expect("just abandoned"));
                self.ready.push_back(Completion {
                    id: chain.id,
                    result,
                    buf: None,
                });
            }
        }
    }

    /// The error every chain fails with once the ring was abandoned.
    fn abandoned_error(&self) -> Option<ChainError> {
        let (kind, message) = self.abandoned.as_ref()?;
        Some(ChainError {
            operation: "io_uring_enter",
            error: io::Error::new(*kind, message.clone()),
        })
    }

    fn arm_wake(&mut self) {
        if self.wake_armed {
            return;
        }
        let poll = opcode::PollAdd::new(
            types::Fd(self.wake.as_raw_fd()),
            u32::try_from(libc::POLLIN).expect("POLLIN fits"),
        )
        .build()
        .user_data(WAKE);
        // SAFETY: a poll refers to no user memory; the eventfd is owned by `self.wake`, which
        // lives as long as the ring (fields drop after `Drop::drop` has run).
        unsafe {
            self.ring
                .submission()
                .push(&poll)
                .expect("the ring keeps room for the wake poll");
        }
        self.wake_armed = true;
    }

    /// Takes every posted completion and settles the rounds they finish.
    fn drain_completions(&mut self) {
        let posted: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (user_data, result) in posted {
            if user_data == WAKE {
                self.wake_armed = false;
                self.woken = true;
                let mut counter = [0u8; 8];
                // SAFETY: reads 8 bytes into a local array from the nonblocking eventfd; an
                // error (EAGAIN when already reset) is harmless and ignored.
                let _ = unsafe {
                    libc::read(
                        self.wake.as_raw_fd(),
                        counter.as_mut_ptr().cast(),
                        counter.len(),
                    )
                };
                continue;
            }
            let slot = usize::try_from(user_data >> 1).expect("slot index");
            let Some(chain) = self.slots[slot].as_mut() else {
                assert!(
                    self.abandoned.is_some(),
                    "completion of a chain: slot {slot} is empty"
                );
                continue;
            };
            chain.pending -= 1;
            if user_data & 1 == OP_WRITE {
                record_write(chain, result);
            } else {
                chain.round_sync = Some(result);
            }
            if chain.pending == 0 {
                self.complete_round(slot);
            }
        }
    }

    /// Judges a finished round (see the module table): done, failed, or another round.
    fn complete_round(&mut self, slot: usize) {
        let chain = self.slots[slot].as_mut().expect("an occupied slot");
        let total = chain.buf.as_ref().map_or(0, Vec::len);
        let write = if chain.error.is_some() {
            WriteOutcome::Failed
        } else if chain.write_again || chain.written < total {
            WriteOutcome::Incomplete
        } else {
            WriteOutcome::Complete
        };
        let again = match judge_round(write, chain.round_sync) {
            RoundVerdict::Succeed | RoundVerdict::FailWrite => false,
            RoundVerdict::FailSync(errno) => {
                chain.error = Some(ChainError {
                    operation: "fdatasync",
                    error: io::Error::from_raw_os_error(errno),
                });
                false
            }
            RoundVerdict::Again => true,
        };
        if again {
            chain.idle_rounds += 1;
            if chain.idle_rounds > MAX_IDLE_ROUNDS {
                chain.error = Some(ChainError {
                    operation: if chain.written < total {
                        "write"
                    } else {
                        "fdatasync"
                    },
                    error: io::Error::other(format!(
                        "no progress after {MAX_IDLE_ROUNDS} reissues"
                    )),
                });
            } else {
                self.push_round(slot);
                return;
            }
        }
        let chain = self.slots[slot].take().expect("an occupied slot");
        self.free.push(slot);
        self.ready.push_back(Completion {
            id: chain.id,
            result: chain.error.map_or(Ok(()), Err),
            buf: chain.buf,
        });
    }

    fn occupied(&self) -> usize {
        self.depth - self.free.len()
    }
}

impl std::fmt::Debug for UringBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringBackend")
            .field("depth", &self.depth)
            .field("in_flight", &self.in_flight())
            .field("wake_armed", &self.wake_armed)
            .finish_non_exhaustive()
    }
}

fn tag(slot: usize, op: u64) -> u64 {
    (slot as u64) << 1 | op
}

/// Accounts a write completion: progress, a retryable interruption, or the chain's error.
fn record_write(chain: &mut InFlight, result: i32) {
    match usize::try_from(result) {
        Ok(0) => chain.write_again = true,
        Ok(n) => {
            chain.written += n;
            chain.idle_rounds = 0;
            let total = chain.buf.as_ref().map_or(0, Vec::len);
            chain.write_again = chain.written < total;
        }
        Err(_) => match classify(-result) {
            Action::Retry | Action::Cancelled => chain.write_again = true,
            Action::Fail => {
                chain.error = Some(ChainError {
                    operation: "write",
                    error: io::Error::from_raw_os_error(-result),
                });
            }
        },
    }
}

impl Backend for UringBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Uring
    }

    fn depth(&self) -> usize {
        self.depth
    }

    fn in_flight(&self) -> usize {
        self.occupied() + self.ready.len()
    }

    fn submit(&mut self, chain: Chain) {
        assert!(self.in_flight() < self.depth, "more chains than the depth");
        if let Some(error) = self.abandoned_error() {
            let buf = chain.write.map(|w| w.buf);
            self.ready.push_back(Completion {
                id: chain.id,
                result: Err(error),
                buf,
            });
            return;
        }
        let direct_allowed = !self.faults.as_ref().is_some_and(|f| f.ring_only_on());
        if chain.alone && self.in_flight() == 0 && direct_allowed {
            let result = std_io::run_chain(&chain);
            self.ready.push_back(Completion {
                id: chain.id,
                result,
                buf: chain.write.map(|w| w.buf),
            });
            return;
        }
        let slot = self.free.pop().expect("a free slot below the depth");
        let (offset, buf) = chain
            .write
            .map_or((0, None), |write| (write.offset, Some(write.buf)));
        self.slots[slot] = Some(InFlight {
            id: chain.id,
            file: chain.file,
            buf,
            offset,
            written: 0,
            sync: chain.sync,
            pending: 0,
            round_write: false,
            round_sync: None,
            write_again: false,
            idle_rounds: 0,
            error: None,
            witness: chain.witness,
        });
        self.push_round(slot);
    }

    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) {
        self.woken = false;
        let mut got = 0;
        loop {
            self.drain_completions();
            got += self.ready.len();
            out.extend(self.ready.drain(..));
            if got >= min || self.woken || self.occupied() == 0 {
                return;
            }
            self.arm_wake();
            self.enter(1);
        }
    }

    fn waker(&self) -> Option<Waker> {
        let wake = Arc::clone(&self.wake);
        Some(Arc::new(move || {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a local array to the eventfd, which `wake` keeps
            // open. A full counter (EAGAIN) already means "woken"; nothing else can fail.
            let _ = unsafe { libc::write(wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }))
    }
}

impl Drop for UringBackend {
    /// Buffers may not be freed while the kernel can still touch them: wait for every
    /// operation in flight. Their outcomes no longer matter to anyone.
    fn drop(&mut self) {
        while self.occupied() > 0 {
            self.enter(1);
            self.drain_completions();
            self.ready.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{
        Action, Backend, Chain, Completion, RoundVerdict, UringBackend, UringFaults, WriteOutcome,
        classify, judge_round,
    };
    use crate::backend::{IoFile, WriteOp};

    /// A file to write to, and a ring on which `faults` are armed, every chain going through
    /// the ring. `None` where io_uring cannot run.
    fn ring(faults: &Arc<UringFaults>) -> Option<(tempfile::TempDir, Arc<IoFile>, UringBackend)> {
        faults.ring_only(true);
        let backend = match UringBackend::new(4, Some(faults)) {
            Ok(backend) => backend,
            Err(why) => {
                println!("skipped: {why}");
                return None;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        let file = std::fs::File::create(&path).unwrap();
        Some((dir, Arc::new(IoFile { file, path }), backend))
    }

    fn chain(id: u64, file: &Arc<IoFile>) -> Chain {
        Chain {
            id,
            file: Arc::clone(file),
            write: Some(WriteOp {
                offset: id * 4096,
                buf: vec![0xa5; 4096],
            }),
            sync: true,
            alone: false,
            witness: false,
        }
    }

    fn settle(backend: &mut UringBackend) -> Vec<Completion> {
        let mut out = Vec::new();
        while backend.in_flight() > 0 {
            let want = backend.in_flight();
            backend.wait(want, &mut out);
        }
        out
    }

    fn failed_operation(completion: &Completion) -> (&'static str, Option<i32>) {
        let error = completion.result.as_ref().expect_err("the chain fails");
        (error.operation, error.error.raw_os_error())
    }

    /// A hard io_uring_enter failure abandons the chains in flight while the kernel still
    /// posts their completions; those late completions name freed slots and are ignored, and
    /// the abandoned ring takes no further chain.
    #[test]
    fn late_completions_after_a_failed_enter_are_ignored() {
        let faults = Arc::new(UringFaults::default());
        faults.fail_enter_after(1);
        let Some((_dir, file, mut backend)) = ring(&faults) else {
            return;
        };
        backend.submit(chain(0, &file));
        backend.submit(chain(1, &file));
        let done = settle(&mut backend);
        assert_eq!(done.len(), 2);
        for completion in &done {
            assert_eq!(failed_operation(completion).0, "io_uring_enter");
        }
        backend.submit(chain(2, &file));
        let done = settle(&mut backend);
        assert_eq!(done.len(), 1);
        assert_eq!(failed_operation(&done[0]).0, "io_uring_enter");
    }

    /// A round whose write came back short and whose linked fdatasync failed (the kernel runs
    /// the sync: it saw the shortened write complete) fails with the sync's error; it is not
    /// retried into a later "successful" sync (fsyncgate).
    #[test]
    fn a_failed_sync_after_a_short_write_fails_the_chain() {
        let faults = Arc::new(UringFaults::default());
        faults.short_writes(true);
        faults.fail_sync_after(0);
        let Some((_dir, file, mut backend)) = ring(&faults) else {
            return;
        };
        backend.submit(chain(0, &file));
        let done = settle(&mut backend);
        assert_eq!(done.len(), 1);
        assert_eq!(failed_operation(&done[0]), ("fdatasync", Some(libc::EBADF)));
    }

    /// One assertion per row of the round table in the module documentation.
    #[test]
    fn every_round_outcome_has_a_verdict() {
        use RoundVerdict::{Again, FailSync, FailWrite, Succeed};
        use WriteOutcome::{Complete, Failed, Incomplete};
        let (eio, canceled, intr) = (-libc::EIO, -libc::ECANCELED, -libc::EINTR);
        for sync in [None, Some(0), Some(eio), Some(canceled)] {
            assert_eq!(judge_round(Failed, sync), FailWrite, "{sync:?}");
        }
        assert_eq!(judge_round(Incomplete, Some(eio)), FailSync(libc::EIO));
        for sync in [
            None,
            Some(0),
            Some(canceled),
            Some(intr),
            Some(-libc::EAGAIN),
        ] {
            assert_eq!(judge_round(Incomplete, sync), Again, "{sync:?}");
        }
        assert_eq!(judge_round(Complete, Some(eio)), FailSync(libc::EIO));
        for sync in [Some(canceled), Some(intr), Some(-libc::EAGAIN)] {
            assert_eq!(judge_round(Complete, sync), Again, "{sync:?}");
        }
        for sync in [None, Some(0)] {
            assert_eq!(judge_round(Complete, sync), Succeed, "{sync:?}");
        }
    }

    /// One assertion per row of the errno table in `classify`'s documentation.
    #[test]
    fn every_errno_has_a_deliberate_action() {
        for errno in [libc::EINTR, libc::EAGAIN] {
            assert_eq!(classify(errno), Action::Retry, "errno {errno}");
        }
        assert_eq!(classify(libc::ECANCELED), Action::Cancelled);
        for errno in [
            libc::EIO,
            libc::ENOSPC,
            libc::EDQUOT,
            libc::EFBIG,
            libc::EOVERFLOW,
            libc::EINVAL,
            libc::EBADF,
            libc::EFAULT,
            libc::EPERM,
            libc::EROFS,
            libc::ENODEV,
            9999,
        ] {
            assert_eq!(classify(errno), Action::Fail, "errno {errno}");
        }
    }
}
