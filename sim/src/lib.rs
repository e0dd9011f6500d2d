//! keel-sim: test storage for Keel, in two parts, each a [`keel_wal::Storage`] a test hands to
//! a log (or a database) through its options:
//! - [`Sim`], simulated storage: a seeded model of what a crash keeps (below);
//! - [`Faults`], a fault injector over the real file system: a chosen write or fdatasync
//!   fails, completions come back out of order, the io_uring backend's own faults.
//!
//! Nothing here is part of the product: the crate is a dev-dependency of the others.
//!
//! # The model
//!
//! A [`Sim`] covers a directory tree (its *root*). Every log opened with it as its storage
//! runs on [`SimBackend`], and its file and directory syncs, renames, removals and file
//! creations report to it ([`keel_wal::Storage`]) instead of going to the kernel directly.
//!
//! - **Cache image.** The real files under the root are the page cache: what a process
//!   reads. A write reaches them when it *completes*, not when it is submitted. Put the root on
//!   tmpfs for speed: nothing under it is ever really synced.
//! - **Durable image.** Per file (by inode): the bytes a power loss keeps for sure, and the
//!   ordered *pending* writes completed since. An fdatasync makes durable exactly the writes
//!   of its file that completed before it was submitted (for a chain, when its write
//!   completed); it takes effect when it completes. Writes made outside the backend (segment
//!   headers, zero fills, tail repairs) are found as differences between the cache and the
//!   model when a crash is captured, and are pending too.
//! - **Directories.** Per directory: the durable entries (name → inode) and the live ones
//!   (the real listing). A directory fsync makes the live entries durable. At a power loss
//!   each inode whose names changed since keeps either all its durable names or all its live
//!   ones (a rename is atomic, but not durable before the directory sync); a name that was
//!   durable and is live names one of its files, the old or the new (a rename over it).
//! - **Completions.** Each write and each sync gets a seeded latency in ticks; a chain's sync
//!   starts when its write completes. Completions happen in due order, so chains complete out
//!   of submission order. In *manual* mode only [`Sim::advance`] completes anything, one
//!   operation a call, so a test decides where every crash point falls; otherwise waits
//!   advance the clock themselves.
//! - **Crashes** ([`Sim::crash`], or [`Sim::crash_after_events`] for one inside a later
//!   call): the model is captured as a [`CrashState`], and from then on every operation fails
//!   without touching a file. A [`CrashPlan`] then picks what survives and
//!   [`CrashState::materialize`] writes that image to a fresh directory:
//!   - process crash: the cache and the live entries (completed writes all survive);
//!   - power loss: the durable image plus, per pending write, kept / lost / torn sector by
//!     sector (each sector new, old, zeroed or garbage), and per directory change durable
//!     or live; [`CrashPlan::prefix`], [`CrashPlan::subset`] and [`CrashPlan::random`] build
//!     the usual plans;
//!   - media damage on top: bit flips and zeroed sectors in the surviving files.
//! - **Restarts** ([`Sim::restart`]): after a process crash the next process can also go on
//!   with the same storage instead of an image: the cache and the live entries are what it
//!   finds, and what was not durable (writes of any earlier process, directory entries not
//!   synced since) stays pending, so that a power loss in a later life can still drop it.
//!   A crash at a hook event is what leaves such state: e.g. between a rotation's rename and
//!   its directory fsync. [`Sim::damage`] damages the media of a storage that goes on.
//! - **Faults** ([`SimFaults`]): the n-th sync fails with EIO and the writes it covered are
//!   dropped from the durable path although the cache keeps them, so a later sync
//!   "succeeds" without them (fsyncgate); ENOSPC once a byte budget is spent; a write lost
//!   (reported done, never applied); a write misdirected (applied one sector away).
//!
//! Every decision comes from one seeded generator and is appended to a trace
//! ([`Sim::trace`]); the same seed and the same calls replay the same run. So that a timer
//! never decides what is written, a log opened under a sim writes its durable witness when the
//! writer goes idle only in manual mode (with no delay: the test decides when the writer is
//! idle, waiting for it to block before its next step), and otherwise only at close: in
//! automatic mode, whether the writer is idle before the next request is a race between
//! threads.
//!
//! # The code
//!
//! `sim` ([`Sim`], the handle a test holds) over `state` (the model: durable images, pending
//! writes, chains in flight, hook events), `backend` ([`SimBackend`]), `crash`
//! ([`CrashState`], captured and materialized), `plan` ([`CrashPlan`]), `damage`, `tree`
//! (the real tree and byte images), `rng`, `settings` ([`SimFaults`], [`Broken`]);
//! `storage` ([`Sim`] as a [`keel_wal::Storage`]) and `faults` ([`Faults`]).

#![warn(missing_docs)]

mod backend;
mod crash;
mod damage;
mod faults;
mod plan;
mod rng;
mod settings;
mod sim;
mod state;
mod storage;
mod tree;

pub use backend::SimBackend;
pub use crash::{CrashState, DirChange};
pub use damage::Damage;
pub use faults::Faults;
pub use plan::{CrashPlan, SectorFate, WriteFate};
pub use rng::SimRng;
pub use settings::{Broken, SimFaults};
pub use sim::{Sim, Unsynced};
pub use state::PendingWrite;

/// The unit of tearing and of media damage.
pub const SECTOR: usize = 512;
