//! keel-bench: `benches/peers/` runs Keel side by side with the raw `fdatasync` limits and
//! with other logs (see `docs/BENCHMARKS.md`). The library holds what `keel bench` (keel-cli)
//! shares with it: the raw baselines, hand-written loops on a preallocated file with `std`
//! alone: [`RawLog`] (`pwrite + fdatasync` of each record, one at a time) and [`RawGroupLog`]
//! (leader/follower group commit, one `pwrite + fdatasync` per group).

mod raw;
mod raw_group;

pub use raw::{FILE_NAME as RAW_FILE_NAME, RawLog};
pub use raw_group::{FILE_NAME as RAW_GROUP_FILE_NAME, RawGroupLog};
