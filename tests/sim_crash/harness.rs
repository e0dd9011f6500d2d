//! Plumbing the drivers share: polling a commit, waiting for the writer, the log's options
//! on simulated storage, scratch directories, the environment.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use keel_sim::Sim;
use keel_wal::{CommitFuture, Lsn, Wal, WalOptions};

pub(crate) fn poll_now(future: &mut CommitFuture) -> Option<Result<Lsn, String>> {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    match std::pin::Pin::new(future).poll(&mut cx) {
        Poll::Ready(result) => Some(result.map_err(|e| match e {
            keel_wal::Error::Poisoned { .. } => format!("poisoned: {e}"),
            other => other.to_string(),
        })),
        Poll::Pending => None,
    }
}

/// Waits until the writer is blocked: in the simulated backend or on an empty queue.
pub(crate) fn settle(wal: &Wal, sim: &Sim) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut spins = 0u32;
    while !(sim.writer_blocked() || wal.writer_idle()) {
        assert!(Instant::now() < deadline, "the writer did not settle");
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// The log's options in a simulated run; `recycle`: how many freed segments are written
/// over by later ones ([`WalOptions::recycle_segments`]).
pub(crate) fn wal_options(
    segment_bytes: u64,
    depth: usize,
    recycle: usize,
    sim: &Arc<Sim>,
) -> WalOptions {
    WalOptions {
        segment_bytes,
        max_record_bytes: 3072,
        io_depth: depth,
        recycle_segments: recycle,
        storage: Arc::clone(sim) as _,
        ..WalOptions::default()
    }
}

/// Where simulated directories go: tmpfs when there is one.
pub(crate) fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new().prefix("keel-sim-").tempdir_in(shm)
    {
        return dir;
    }
    tempfile::Builder::new()
        .prefix("keel-sim-")
        .tempdir()
        .unwrap()
}

pub(crate) fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
