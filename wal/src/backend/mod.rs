//! The narrow interface under the group-commit writer.
//!
//! The writer hands a backend *chains*: an optional positional write followed, when asked, by
//! an fdatasync of the same file that must not start before the write completed. A backend may
//! keep up to [`Backend::depth`] chains in flight and complete them in any order; the writer
//! turns completions into watermarks (see `watermark.rs`), so a backend never decides what is
//! durable. Buffers are owned by the chain until its completion hands them back.

pub mod std_io;
#[cfg(all(target_os = "linux", feature = "uring"))]
#[expect(
    unsafe_code,
    reason = "io_uring submission and the eventfd wake are unsafe FFI; every block has a SAFETY comment"
)]
pub mod uring;
#[doc(hidden)]
pub mod uring_faults;

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Result;
use uring_faults::UringFaults;

/// Which backend a log runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum BackendKind {
    /// `pwrite` + `fdatasync` on the writer thread.
    Std,
    /// io_uring: linked write→fdatasync chains, several in flight.
    Uring,
    /// io_uring with records written `O_DIRECT` (and `O_DSYNC` where every chain syncs)
    /// where the file system allows, through the page cache where it refuses.
    UringDirect,
    /// A backend of another storage ([`crate::Storage`]), e.g. simulated storage in tests.
    Other(&'static str),
}

impl BackendKind {
    /// Its name in stats and tool output.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Std => "std",
            BackendKind::Uring => "uring",
            BackendKind::UringDirect => "uring-direct",
            BackendKind::Other(name) => name,
        }
    }
}

/// Which IO backend runs under the writer.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum BackendChoice {
    /// The best available on this platform.
    #[default]
    Auto,
    /// Portable `pwrite` + `fdatasync` (a full flush on macOS).
    Std,
    /// io_uring (Linux, `uring` feature); opening fails when it cannot run here.
    Uring,
    /// io_uring, with records written `O_DIRECT` from block-aligned buffers, and a chain
    /// that syncs written `O_DSYNC` instead of followed by an fdatasync, while every chain
    /// of its segment synced (`Strict`); the same records on disk as [`BackendChoice::Uring`],
    /// the rest of the block the last one ends in zeroed (in a recycled segment, where a
    /// buffered write leaves the file's earlier contents; see `docs/DESIGN.md`, "Direct
    /// writes"). A segment whose file system refuses direct I/O is written through the
    /// page cache (a warning says so, and `WalStats::direct_refused` counts such segments).
    /// Opening fails where io_uring cannot run.
    UringDirect,
}

impl BackendChoice {
    /// Every explicit backend this build can run here (io_uring is probed once); test
    /// suites iterate it. `KEEL_BACKEND=std` or `KEEL_BACKEND=uring` narrows it to one.
    pub fn available() -> &'static [BackendChoice] {
        static AVAILABLE: std::sync::OnceLock<Vec<BackendChoice>> = std::sync::OnceLock::new();
        AVAILABLE.get_or_init(|| {
            let mut all = Vec::new();
            if probe_uring(None).is_ok() {
                all.push(BackendChoice::Uring);
                all.push(BackendChoice::UringDirect);
            }
            all.push(BackendChoice::Std);
            match std::env::var("KEEL_BACKEND").ok().as_deref() {
                Some("std") => all.retain(|b| *b == BackendChoice::Std),
                Some("uring") => all.retain(|b| *b == BackendChoice::Uring),
                Some("uring-direct") => all.retain(|b| *b == BackendChoice::UringDirect),
                _ => {}
            }
            all
        })
    }

    /// Its name in options and tool output.
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Std => "std",
            BackendChoice::Uring => "uring",
            BackendChoice::UringDirect => "uring-direct",
        }
    }
}

/// An open segment file as the backend sees it.
#[derive(Debug)]
pub struct IoFile {
    /// The file, open for writing.
    pub file: File,
    /// Its path, for error messages and for storage that tracks files by name.
    pub path: PathBuf,
}

/// A positional write.
#[derive(Debug)]
pub struct WriteOp {
    /// Where in the file the write starts.
    pub offset: u64,
    /// The bytes to write, all of them; handed back in the chain's [`Completion`].
    pub buf: Vec<u8>,
}

/// One unit of work: `write`, then (if `sync`) an fdatasync ordered after it.
#[derive(Debug)]
pub struct Chain {
    /// Unique and increasing in submission order.
    pub id: u64,
    /// The file the chain writes and syncs.
    pub file: Arc<IoFile>,
    /// The write, if the chain has one.
    pub write: Option<WriteOp>,
    /// Whether an fdatasync of `file` follows, started only once the write completed.
    pub sync: bool,
    /// The writer expects no other chain to overlap this one (nothing else in flight or
    /// queued): a backend may then run it directly instead of pipelining it.
    pub alone: bool,
    /// A durable-witness write (`witness.rs`) into the header block, not records. Backends run
    /// it like any chain; fault plans aimed at record writes and syncs do not count it.
    pub witness: bool,
}

/// Interrupts a backend blocked in [`Backend::wait`] so that new requests start promptly.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// What failed in a chain.
#[derive(Debug)]
pub struct ChainError {
    /// The operation that failed (`"write"`, `"fdatasync"`, ...), for the error message.
    pub operation: &'static str,
    /// Why it failed.
    pub error: io::Error,
}

/// The outcome of one chain. `buf` is the write buffer handed back for reuse.
#[derive(Debug)]
pub struct Completion {
    /// The [`Chain::id`] of the chain that finished.
    pub id: u64,
    /// Whether every operation of the chain succeeded; the first failure otherwise.
    pub result: std::result::Result<(), ChainError>,
    /// The chain's write buffer, if it had a write.
    pub buf: Option<Vec<u8>>,
}

/// An IO backend.
pub trait Backend: Send + std::fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// How many chains may be in flight at once.
    fn depth(&self) -> usize;
    /// Chains submitted and not yet returned by [`Backend::wait`].
    fn in_flight(&self) -> usize;
    /// Starts a chain. At most [`Backend::depth`] may be in flight.
    fn submit(&mut self, chain: Chain);
    /// Moves finished chains to `out`, blocking until at least `min` have finished
    /// (`min` must not exceed [`Backend::in_flight`]) or the [`Backend::waker`] was called.
    /// Callers that need `min` completions call it in a loop.
    fn wait(&mut self, min: usize, out: &mut Vec<Completion>);
    /// Segment files a direct backend wrote through the page cache because direct I/O was
    /// refused for them ([`crate::WalStats::direct_refused`]); 0 for the others.
    fn direct_refused(&self) -> u64 {
        0
    }
    /// How to interrupt [`Backend::wait`], for a backend whose waits can block while new
    /// work arrives. `None`: waits never block for long (the chain ran at submission).
    fn waker(&self) -> Option<Waker> {
        None
    }
}

/// Whether io_uring can be used here; the reason when not.
pub(crate) fn probe_uring(faults: Option<&Arc<UringFaults>>) -> std::result::Result<(), String> {
    #[cfg(all(target_os = "linux", feature = "uring"))]
    return uring::probe(faults);
    #[cfg(not(all(target_os = "linux", feature = "uring")))]
    {
        let _ = faults;
        Err(UNCOMPILED.into())
    }
}

#[cfg(not(all(target_os = "linux", feature = "uring")))]
const UNCOMPILED: &str =
    "io_uring support is not compiled in (it needs Linux and the `uring` feature of keel-wal)";

/// The io_uring backend `options` ask for, or why there is none.
fn build_uring(
    io_depth: usize,
    direct: bool,
    faults: Option<&Arc<UringFaults>>,
) -> std::result::Result<Box<dyn Backend>, String> {
    #[cfg(all(target_os = "linux", feature = "uring"))]
    return uring::UringBackend::new(io_depth, direct, faults)
        .map(|b| Box::new(b) as Box<dyn Backend>);
    #[cfg(not(all(target_os = "linux", feature = "uring")))]
    {
        let _ = (io_depth, direct, faults);
        Err(UNCOMPILED.into())
    }
}

/// Builds the real-file backend `choice` asks for (what [`crate::FileSystem`] uses), with at
/// most `io_depth` chains in flight, the io_uring one with `faults` armed if given. `Auto`
/// prefers io_uring and falls back to std with one warning a process; an explicit `Uring`
/// that cannot run is an error.
pub fn build(
    choice: BackendChoice,
    io_depth: usize,
    faults: Option<&Arc<UringFaults>>,
) -> Result<Box<dyn Backend>> {
    Ok(match choice {
        BackendChoice::Std => Box::new(std_io::StdBackend::default()),
        BackendChoice::Uring | BackendChoice::UringDirect => {
            let direct = choice == BackendChoice::UringDirect;
            build_uring(io_depth, direct, faults).map_err(|reason| {
                crate::error::Error::BackendUnavailable {
                    backend: choice.name(),
                    reason,
                }
            })?
        }
        BackendChoice::Auto => match build_uring(io_depth, false, faults) {
            Ok(backend) => backend,
            Err(reason) => {
                warn_fallback(&reason);
                Box::new(std_io::StdBackend::default())
            }
        },
    })
}

/// The fallback warning, once a process; later fallbacks are logged at debug level.
fn warn_fallback(reason: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!(reason, "io_uring unavailable; using the std backend");
    } else {
        tracing::warn!(
            reason,
            "io_uring unavailable; falling back to the std backend"
        );
    }
}
