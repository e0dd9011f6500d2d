//! [`Trimmer`]: removes a log's covered segments as it is written, as an application's
//! checkpoints would, so that the benchmark's new segments are recycled files (the `keel`
//! rows of the peers harness and `keel bench`'s `keel+trim` and `keel+recycle`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use keel_wal::Wal;

/// How often covered log is removed.
const EVERY: Duration = Duration::from_millis(20);

/// Removes `wal`'s segments below its durable LSN every 20 ms, on its own thread, until it is
/// finished or dropped; the first failure stops it.
#[derive(Debug)]
pub struct Trimmer {
    stop: Arc<AtomicBool>,
    failed: Arc<OnceLock<String>>,
    thread: Option<JoinHandle<()>>,
}

impl Trimmer {
    pub fn start(wal: Arc<Wal>) -> Trimmer {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(OnceLock::new());
        let thread = {
            let (stop, failed) = (Arc::clone(&stop), Arc::clone(&failed));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EVERY);
                    if let Err(e) = wal.remove_segments_before(wal.durable_lsn()) {
                        let _ = failed.set(e.to_string());
                        return;
                    }
                }
            })
        };
        Trimmer {
            stop,
            failed,
            thread: Some(thread),
        }
    }

    /// Why removing log failed, if it did. Without a lock: a committer may ask on every
    /// commit.
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Stops the thread; `Err` when removing log failed or the thread panicked.
    pub fn finish(mut self) -> Result<(), String> {
        self.stop_and_join()?;
        self.failure().map_or(Ok(()), |why| Err(why.to_owned()))
    }

    fn stop_and_join(&mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| "the trimmer panicked".to_owned()),
            None => Ok(()),
        }
    }
}

impl Drop for Trimmer {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}
