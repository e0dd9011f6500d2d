//! keel-bench: `benches/peers/` runs Keel side by side with the raw `fdatasync` limits and
//! with other logs (see `docs/BENCHMARKS.md`). The library holds what `keel bench` (keel-cli)
//! shares with it: the raw `pwrite + fdatasync` baseline, [`RawLog`].

mod raw;

pub use raw::{FILE_NAME as RAW_FILE_NAME, RawLog};
