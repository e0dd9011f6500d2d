//! Faults the io_uring backend can be built with, for tests of its error paths: the probe
//! fails, writes complete short, a write or an fdatasync fails, `io_uring_enter` fails. They
//! are armed through the fault injector of the dev-only `keel-sim` crate, which builds the
//! backend with them ([`crate::backend::build`]); a log on the default storage has none.
//!
//! Counters count down per operation; a counter at 0 fails that operation (once) and
//! disarms; a negative counter is disarmed.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// The io_uring backend's injected faults.
#[derive(Debug)]
pub struct UringFaults {
    probe_fails: AtomicBool,
    short_writes: AtomicBool,
    ring_only: AtomicBool,
    refuse_direct: AtomicBool,
    bad_fd_countdown: AtomicI64,
    bad_sync_fd_countdown: AtomicI64,
    enter_countdown: AtomicI64,
}

impl Default for UringFaults {
    fn default() -> Self {
        UringFaults {
            probe_fails: AtomicBool::new(false),
            short_writes: AtomicBool::new(false),
            ring_only: AtomicBool::new(false),
            refuse_direct: AtomicBool::new(false),
            bad_fd_countdown: AtomicI64::new(-1),
            bad_sync_fd_countdown: AtomicI64::new(-1),
            enter_countdown: AtomicI64::new(-1),
        }
    }
}

/// Counts `counter` down; true when this call took it from 0 (the operation fails).
pub fn trips(counter: &AtomicI64) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n >= 0).then_some(n - 1)
        })
        .is_ok_and(|previous| previous == 0)
}

impl UringFaults {
    /// The io_uring probe at open fails, as where io_uring is disabled or filtered.
    pub fn fail_probe(&self) {
        self.probe_fails.store(true, Ordering::SeqCst);
    }

    #[cfg_attr(
        not(all(target_os = "linux", feature = "uring")),
        expect(dead_code, reason = "read by the uring backend only")
    )]
    pub(crate) fn probe_fails(&self) -> bool {
        self.probe_fails.load(Ordering::SeqCst)
    }

    /// Each write is submitted with half its length first, so that every write comes back
    /// short and must be reissued before its sync counts. A direct write
    /// (`BackendChoice::UringDirect`) is shortened by whole 4096-byte blocks, as the kernel
    /// shortens one, so that its reissue is a valid direct write too: one of a single block
    /// is not shortened.
    pub fn short_writes(&self, on: bool) {
        self.short_writes.store(on, Ordering::SeqCst);
    }

    #[cfg_attr(
        not(all(target_os = "linux", feature = "uring")),
        expect(dead_code, reason = "read by the uring backend only")
    )]
    pub(crate) fn short_writes_on(&self) -> bool {
        self.short_writes.load(Ordering::SeqCst)
    }

    /// Every chain goes through the ring, never the direct path taken for a chain alone in
    /// flight, so tests exercise the ring with one committer.
    pub fn ring_only(&self, on: bool) {
        self.ring_only.store(on, Ordering::SeqCst);
    }

    #[cfg_attr(
        not(all(target_os = "linux", feature = "uring")),
        expect(dead_code, reason = "read by the uring backend only")
    )]
    pub(crate) fn ring_only_on(&self) -> bool {
        self.ring_only.load(Ordering::SeqCst)
    }

    /// `uring-direct` finds direct I/O refused for every segment it starts writing from now
    /// (as on a file system without it), and writes them through the page cache.
    pub fn refuse_direct(&self, on: bool) {
        self.refuse_direct.store(on, Ordering::SeqCst);
    }

    #[cfg_attr(
        not(all(target_os = "linux", feature = "uring")),
        expect(dead_code, reason = "read by the uring backend only")
    )]
    pub(crate) fn refuse_direct_on(&self) -> bool {
        self.refuse_direct.load(Ordering::SeqCst)
    }

    /// The write `after` writes from now (0: the next) is submitted on an invalid file
    /// descriptor, so the kernel fails it (EBADF) and cancels its linked sync: a real error
    /// travelling through the ring.
    pub fn fail_write_after(&self, after: u32) {
        self.bad_fd_countdown.store(after.into(), Ordering::SeqCst);
    }

    #[cfg_attr(
        not(all(target_os = "linux", feature = "uring")),
        expect(dead_code, reason = "read by the uring backend only")
    )]
    pub(crate) fn bad_fd_trips(&self) -> bool {
        trips(&self.bad_fd_countdown)
    }

    /// The fdatasync `after` syncs from now (0: the next) is submitted on an invalid file
    /// descriptor. With [`UringFaults::short_writes`] the sync runs after a write the kernel
    /// saw as complete (it was asked for half), so both outcomes reach the same round.
    pub fn fail_sync_after(&self, after: u32) {
        self.bad_sync_fd_countdown
            .store(after.into(), Ordering::SeqCst);
    }

    #[cfg_attr(
        not(all(target_os = "linux", feature = "uring")),
        expect(dead_code, reason = "read by the uring backend only")
    )]
    pub(crate) fn bad_sync_fd_trips(&self) -> bool {
        trips(&self.bad_sync_fd_countdown)
    }

    /// The `io_uring_enter` call `after` calls from now (0: the next) is performed, waits
    /// until every operation the kernel holds has completed, and then reports a hard failure:
    /// the ring is abandoned while the completions of its chains are still to be reaped.
    pub fn fail_enter_after(&self, after: u32) {
        self.enter_countdown.store(after.into(), Ordering::SeqCst);
    }

    #[cfg_attr(
        not(all(target_os = "linux", feature = "uring")),
        expect(dead_code, reason = "read by the uring backend only")
    )]
    pub(crate) fn enter_trips(&self) -> bool {
        trips(&self.enter_countdown)
    }
}
