//! Submission: a chain's rounds pushed onto the ring, `io_uring_enter`, and what happens when
//! the ring itself fails.

use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types};

use super::direct::BLOCK;
use super::{ChainError, Completion, InFlight, OP_SYNC, OP_WRITE, UringBackend, UringFaults};

impl UringBackend {
    /// Pushes the operations of `slot`'s next round and submits them.
    pub(super) fn push_round(&mut self, slot: usize) {
        let chain = self.slots[slot].as_mut().expect("an occupied slot");
        let fd = types::Fd(chain.file.file.as_raw_fd());
        let mut entries = Vec::with_capacity(2);
        let total = chain.total();
        chain.round_write = chain.written < total;
        chain.round_sync = None;
        chain.write_again = false;
        // The test faults aimed at record chains pass a witness chain by.
        let faults = self.faults.as_deref().filter(|_| !chain.witness);
        if chain.round_write {
            let write_fd = match &chain.aligned {
                Some(aligned) => types::Fd(aligned.fd.as_raw_fd()),
                None => fd,
            };
            entries.push(write_entry(chain, slot, write_fd, faults));
        }
        if chain.sync {
            entries.push(sync_entry(slot, fd, faults));
        }
        chain.pending = u8::try_from(entries.len()).expect("at most two");
        // SAFETY: the write's buffer (`buf`, or the direct write's `aligned.buf`) is owned by
        // `self.slots[slot]`, which is neither dropped nor moved out until this round's
        // completions have been reaped (`complete_round`, and `Drop` waits for every pending
        // operation); an `AlignedVec`'s heap memory does not move with it. The file
        // descriptors are kept open by the `Arc<IoFile>` (and the direct write's `Arc<File>`)
        // in the same slot. The ring has room for every chain's two entries
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
    pub(super) fn enter(&mut self, want: usize) {
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
        self.held.clear();
        for slot in 0..self.slots.len() {
            if let Some(chain) = self.slots[slot].take() {
                std::mem::forget(chain.buf);
                std::mem::forget(chain.aligned);
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
    pub(super) fn abandoned_error(&self) -> Option<ChainError> {
        let (kind, message) = self.abandoned.as_ref()?;
        Some(ChainError {
            operation: "io_uring_enter",
            error: io::Error::new(*kind, message.clone()),
        })
    }
}

/// The write of a round: the rest of the chain's buffer at its offset, linked to the sync
/// that follows when the chain has one. `faults` shorten it or give it a bad descriptor.
fn write_entry(
    chain: &InFlight,
    slot: usize,
    fd: types::Fd,
    faults: Option<&UringFaults>,
) -> squeue::Entry {
    let rest = match &chain.aligned {
        Some(aligned) => &aligned.buf[chain.written..],
        None => &chain.buf.as_ref().expect("a write has a buffer")[chain.written..],
    };
    let offset = match &chain.aligned {
        Some(aligned) => aligned.offset,
        None => chain.offset,
    };
    let mut len = u32::try_from(rest.len()).expect("batches are at most 4 MiB");
    let mut fd = fd;
    if let Some(faults) = faults {
        if faults.short_writes_on() && len > 1 {
            len = match chain.aligned {
                // A direct write comes back short by whole blocks (its reissue must be a
                // valid direct write too); one block cannot be shortened.
                Some(_) => {
                    let block = u32::try_from(BLOCK).expect("a block is 4096 bytes");
                    (len / 2 / block * block).max(block)
                }
                None => len / 2,
            };
        }
        if faults.bad_fd_trips() {
            fd = types::Fd(-1);
        }
    }
    let write = opcode::Write::new(fd, rest.as_ptr(), len)
        .offset(offset + chain.written as u64)
        .build()
        .user_data(tag(slot, OP_WRITE));
    match chain.sync {
        true => write.flags(squeue::Flags::IO_LINK),
        false => write,
    }
}

/// The fdatasync of a round. `faults` give it a bad descriptor.
fn sync_entry(slot: usize, fd: types::Fd, faults: Option<&UringFaults>) -> squeue::Entry {
    let fd = match faults.is_some_and(|f| f.bad_sync_fd_trips()) {
        true => types::Fd(-1),
        false => fd,
    };
    opcode::Fsync::new(fd)
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .user_data(tag(slot, OP_SYNC))
}

/// A completion's user data: the slot, and the operation in the low bit.
fn tag(slot: usize, op: u64) -> u64 {
    (slot as u64) << 1 | op
}
