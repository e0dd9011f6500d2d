//! keel-bench holds benchmarks only: `benches/peers.rs` runs Keel side by side with the raw
//! `fdatasync` limits and with other logs. See `docs/BENCHMARKS.md`.
