//! The narrow interface under the group-commit writer.
//!
//! The writer hands a backend *chains*: an optional positional write followed, when asked, by
//! an fdatasync of the same file that must not start before the write completed. A backend may
//! keep up to [`Backend::depth`] chains in flight and complete them in any order; the writer
//! turns completions into watermarks (see `watermark.rs`), so a backend never decides what is
//! durable. Buffers are owned by the chain until its completion hands them back.

pub mod faults;
pub mod std_io;

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Result;
use crate::options::{BackendChoice, WalOptions};

/// Which backend a log runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum BackendKind {
    /// `pwrite` + `fdatasync` on the writer thread.
    Std,
}

impl BackendKind {
    /// Its name in stats and tool output.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Std => "std",
        }
    }
}

/// An open segment file as the backend sees it.
#[derive(Debug)]
pub struct IoFile {
    pub file: File,
    pub path: PathBuf,
}

/// A positional write.
#[derive(Debug)]
pub struct WriteOp {
    pub offset: u64,
    pub buf: Vec<u8>,
}

/// One unit of work: `write`, then (if `sync`) an fdatasync ordered after it.
#[derive(Debug)]
pub struct Chain {
    /// Unique and increasing in submission order.
    pub id: u64,
    pub file: Arc<IoFile>,
    pub write: Option<WriteOp>,
    pub sync: bool,
}

/// What failed in a chain.
#[derive(Debug)]
pub struct ChainError {
    pub operation: &'static str,
    pub error: io::Error,
}

/// The outcome of one chain. `buf` is the write buffer handed back for reuse.
#[derive(Debug)]
pub struct Completion {
    pub id: u64,
    pub result: std::result::Result<(), ChainError>,
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
    /// (`min` must not exceed [`Backend::in_flight`]).
    fn wait(&mut self, min: usize, out: &mut Vec<Completion>);
}

/// Builds the backend `options` ask for.
pub(crate) fn build(options: &WalOptions) -> Result<Box<dyn Backend>> {
    let backend: Box<dyn Backend> = match options.backend {
        BackendChoice::Auto | BackendChoice::Std => Box::new(std_io::StdBackend::default()),
    };
    Ok(match &options.faults {
        Some(faults) => Box::new(faults::FaultyBackend::new(backend, Arc::clone(faults))),
        None => backend,
    })
}
