//! The log directory: the storage it lives on ([`storage::Storage`]), the lock and the
//! identity (`fsutil`), listing it, the spare segments, installing, creating and repairing
//! segment files durably, and reading a whole directory back. Depends on the format, the
//! backends (a storage builds them) and the error and id types.

pub mod fsutil;
mod listing;
mod log_reader;
pub(crate) mod prealloc;
mod segments;
pub mod storage;

pub use listing::{DirectoryListing, is_log_file_name, list_directory};
pub use log_reader::LogReader;
pub(crate) use segments::install_segment;
pub use segments::{create_empty, lower_witness};
