//! The wake: while the writer waits in the ring for completions, a `PollAdd` on an eventfd
//! stays armed there, and the queue writes to the eventfd ([`Backend::waker`]) so that new
//! requests start promptly.
//!
//! [`Backend::waker`]: super::Backend::waker

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use io_uring::{opcode, types};

use super::{UringBackend, WAKE, Waker};

impl UringBackend {
    /// Arms the wake poll, unless it is armed already.
    pub(super) fn arm_wake(&mut self) {
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

    /// The wake poll completed: the writer was woken, the poll is disarmed, and the eventfd's
    /// counter is reset.
    pub(super) fn woke(&mut self) {
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
    }
}

/// What [`Backend::waker`](super::Backend::waker) hands the queue: writes to the eventfd.
pub(super) fn waker(wake: &Arc<OwnedFd>) -> Waker {
    let wake = Arc::clone(wake);
    Arc::new(move || {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a local array to the eventfd, which `wake` keeps
        // open. A full counter (EAGAIN) already means "woken"; nothing else can fail.
        let _ = unsafe { libc::write(wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    })
}
