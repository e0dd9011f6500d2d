//! Crash-and-recover cycles on simulated storage (`keel_sim`), checked against the
//! invariants of DESIGN section 6 after every crash:
//!
//! - I1 every acknowledged commit is recovered byte-exact (Strict ones after any crash;
//!   Batched ones after a process crash, or when a later Strict commit or sync covered them);
//!   and what one recovery returned, every later one returns too (across a power loss once
//!   the log was reopened after it: the opening syncs what recovery found in the page cache);
//! - I2 the recovered log is a contiguous LSN prefix (read back record by record);
//! - I3 transactions are all-or-nothing, aborted and unfinished ones never appear;
//! - I4 nothing recovered was never committed, and nothing a recovery dropped comes back;
//! - I5 a second recovery changes nothing, and one crashed part-way ends where an
//!   uninterrupted one does;
//! - I6 after a failed sync nothing more is acknowledged (and what the failed sync dropped
//!   was never acknowledged: I1 after the crash catches it);
//! - I7 damage (bit flips, zeroed sectors, lost and misdirected writes) is refused or cut
//!   off as a torn tail, never served and never a panic;
//! - I8 appends work after recovery.
//!
//! `KEEL_SIM_CYCLES` (default 300) and `KEEL_SIM_SECONDS` (default 120) bound the random
//! run; `KEEL_SIM_SEED` runs one seed (printed by every failure, with the operation trace).
//! `KEEL_SIM_EXHAUSTIVE=full` runs the whole small-case sweep (the default runs part of it).
//!
//! The parts: `model` (what the driver knows of each transaction), `run` (one seed: its
//! lives), `workload` (what a life does), `crash` (how a life ends), `recovery` (recovering
//! and checking after a crash), `checker` (the invariants), `harness` (shared plumbing); the
//! tests: `random`, `replay`, `exhaustive`, `catches` (broken builds caught), `regressions`.

mod catches;
mod checker;
mod crash;
mod exhaustive;
mod harness;
mod model;
mod random;
mod recovery;
mod regressions;
mod replay;
mod run;
mod workload;
