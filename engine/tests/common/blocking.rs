//! Helpers of the tests of blocking commits (`adversarial_commit_blocking*.rs`): a watchdog,
//! a seeded generator, and small options that spill, rotate and recycle often.

use std::sync::mpsc;
use std::time::Duration;

use keel::{BackendChoice, Durability, Options};

pub const WATCHDOG: Duration = Duration::from_secs(60);

/// Runs `f` on a thread of its own and returns what it returned, or panics naming `what`
/// once the watchdog expires (the thread is left behind: the test fails instead of hanging).
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match outcome.recv_timeout(WATCHDOG) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what}: not done within {WATCHDOG:?} (a hang)"),
    }
}

/// A small deterministic generator (xorshift64*), seeded per test.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

pub fn options(backend: BackendChoice, durability: Durability) -> Options {
    Options {
        backend,
        durability,
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        checkpoint_log_bytes: 96 * 1024,
        checkpoint_log_percent: 0,
        spill_txn_bytes: 6 * 1024,
        feed_max_lag_bytes: 1 << 30,
        recycle_segments: 2,
        ..Options::default()
    }
}
