//! keel-bench: `benches/peers/` runs Keel side by side with the raw `fdatasync` limits and
//! with other logs (see `docs/BENCHMARKS.md`). The library holds what `keel bench` (keel-cli)
//! shares with it: the raw baselines, hand-written loops on a preallocated file, and the
//! [`Trimmer`] that removes a Keel log's covered segments as it is written.
//! [`RawLog`] (`pwrite + fdatasync` of each record, one at a time) and [`RawGroupLog`]
//! (leader/follower group commit, one `pwrite + fdatasync` per group) use `std` alone;
//! `RawUringBatched` (group commit on the ring: up to `depth` write→fdatasync chains in
//! flight, each carrying everything queued) drives keel-wal's io_uring backend, on Linux
//! with the `uring` feature only.

mod raw;
mod raw_group;
#[cfg(all(target_os = "linux", feature = "uring"))]
mod raw_uring_batched;
mod trim;

pub use raw::{FILE_NAME as RAW_FILE_NAME, RawLog};
pub use raw_group::{FILE_NAME as RAW_GROUP_FILE_NAME, RawGroupLog};
#[cfg(all(target_os = "linux", feature = "uring"))]
pub use raw_uring_batched::{
    FILE_NAME as RAW_URING_BATCHED_FILE_NAME, MAX_DEPTH as RAW_URING_BATCHED_MAX_DEPTH,
    RawUringBatched,
};
pub use trim::Trimmer;
