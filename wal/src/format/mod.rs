//! The bytes on disk, and nothing else: entries and their rkyv archives, record frames and
//! their checksums, segment headers and file names, the durable witness slots, and reading
//! records back. Depends on the error and id types only (`scripts/check-rooms.py`).

pub mod checksum;
pub mod entry;
pub mod reader;
pub mod record;
pub mod scan;
pub mod segment;
pub mod witness;
pub mod zeros;
