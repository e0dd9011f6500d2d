//! Setting a ring up: its size, the operations it needs from the kernel, and the eventfd
//! that wakes the writer parked in it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use io_uring::{IoUring, Probe, opcode};

use super::{UringBackend, UringFaults};

impl UringBackend {
    /// A ring for `depth` chains; with `direct`, records are written with `O_DIRECT` where
    /// the file system allows (`direct.rs`). Fails with the reason when io_uring is unusable
    /// here.
    pub fn new(
        depth: usize,
        direct: bool,
        faults: Option<&Arc<UringFaults>>,
    ) -> Result<Self, String> {
        if faults.is_some_and(|f| f.probe_fails()) {
            return Err("injected probe failure".into());
        }
        let depth = depth.max(1);
        let ring = ring_for(depth)?;
        require_operations(&ring)?;
        let wake = eventfd()?;
        Ok(UringBackend {
            direct: direct.then(super::direct::DirectWrites::default),
            held: VecDeque::new(),
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
}

/// A ring with room for `depth` chains: two operations a chain, plus the wake poll.
fn ring_for(depth: usize) -> Result<IoUring, String> {
    let entries = u32::try_from(2 * depth + 1)
        .map_err(|_| format!("depth {depth} is too large"))?
        .next_power_of_two();
    IoUring::new(entries).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no io_uring (ENOSYS)".to_string(),
        Some(libc::EPERM) => {
            "io_uring is not permitted (kernel.io_uring_disabled or a seccomp filter: EPERM)"
                .to_string()
        }
        _ => format!("io_uring_setup failed: {e}"),
    })
}

/// Fails, naming the first one missing, unless the kernel's ring has every operation the
/// backend submits.
fn require_operations(ring: &IoUring) -> Result<(), String> {
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
    Ok(())
}

/// The nonblocking eventfd the wake poll watches.
fn eventfd() -> Result<Arc<OwnedFd>, String> {
    // SAFETY: eventfd has no memory-safety preconditions; the result is checked below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(format!("eventfd failed: {}", io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by eventfd, is valid, and nothing else owns it.
    Ok(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }))
}
