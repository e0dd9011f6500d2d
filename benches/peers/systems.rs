//! The systems by name: which ones this build runs, in table order, and how each is opened
//! and reopened. Each system's code is in its own module.

use std::io;
use std::path::Path;
use std::time::Duration;

use keel_bench::{RawGroupLog, RawLog};
use keel_wal::{BackendChoice, Durability};

use crate::harness::Peer;
use crate::keel;
use crate::keel::Log;
use crate::keel_db;

/// The raw baselines' preallocated file.
const RAW_BYTES: u64 = 256 << 20;

/// The systems this build can run, in table order.
pub fn compiled_systems() -> Vec<&'static str> {
    let mut systems = vec!["raw", "raw-group"];
    if BackendChoice::available().contains(&BackendChoice::Uring) {
        systems.push("raw-uring");
        systems.push("raw-uring-batched");
        systems.push("keel-uring");
        systems.push("keel-uring-direct");
        systems.push("keel-uring-handoff");
        systems.push("keel-uring-fill");
    }
    systems.push("keel-std");
    systems.push("keel-std-handoff");
    systems.push("keel-db");
    #[cfg(feature = "peer-okaywal")]
    systems.push("okaywal");
    #[cfg(feature = "peer-sqlite")]
    systems.push("sqlite");
    #[cfg(feature = "peer-raft-engine")]
    systems.push("raft-engine");
    #[cfg(feature = "peer-rocksdb")]
    systems.push("rocksdb");
    systems
}

/// Systems that acknowledge before fdatasync (written, or queued), for the throughput table.
pub fn relaxed_systems() -> Vec<&'static str> {
    let peers = [
        ("sqlite-normal", cfg!(feature = "peer-sqlite")),
        ("raft-engine-nosync", cfg!(feature = "peer-raft-engine")),
        ("rocksdb-nosync", cfg!(feature = "peer-rocksdb")),
    ];
    ["keel-batched", "keel-async"]
        .into_iter()
        .chain(peers.into_iter().filter(|p| p.1).map(|p| p.0))
        .collect()
}

/// Systems whose reopen is measured, and the system each fills the log with.
pub fn recovery_systems() -> Vec<(&'static str, &'static str)> {
    let peers = [
        ("okaywal", "okaywal-fill", cfg!(feature = "peer-okaywal")),
        ("sqlite", "sqlite-normal", cfg!(feature = "peer-sqlite")),
        (
            "raft-engine",
            "raft-engine-nosync",
            cfg!(feature = "peer-raft-engine"),
        ),
        ("rocksdb", "rocksdb-nosync", cfg!(feature = "peer-rocksdb")),
    ];
    std::iter::once(("keel", "keel-batched-fill"))
        .chain(peers.into_iter().filter(|p| p.2).map(|p| (p.0, p.1)))
        .collect()
}

/// Opens `system` in `dir` for `committers` threads.
pub fn open(system: &str, dir: &Path, committers: usize) -> io::Result<Box<dyn Peer>> {
    let _ = committers;
    // `raw-uring-batched-<depth>`: a depth of one's choosing (not in the default list).
    #[cfg(all(target_os = "linux", feature = "uring"))]
    if let Some(depth) = batched_depth(system) {
        return Ok(Box::new(keel_bench::RawUringBatched::open(
            dir, RAW_BYTES, depth,
        )?));
    }
    match system {
        "raw" => Ok(Box::new(RawLog::open(dir, RAW_BYTES)?)),
        "raw-group" => Ok(Box::new(RawGroupLog::open(dir, RAW_BYTES)?)),
        // As many chains in flight as Keel's ring keeps by default, or one per committer.
        #[cfg(all(target_os = "linux", feature = "uring"))]
        "raw-uring-batched" => Ok(Box::new(keel_bench::RawUringBatched::open(
            dir,
            RAW_BYTES,
            committers.min(keel_wal::DEFAULT_IO_DEPTH),
        )?)),
        "keel-uring" => keel::open(dir, BackendChoice::Uring, Durability::Strict, Log::Trimmed),
        "keel-uring-direct" => keel::open(
            dir,
            BackendChoice::UringDirect,
            Durability::Strict,
            Log::Trimmed,
        ),
        "keel-uring-handoff" => keel::open(
            dir,
            BackendChoice::Uring,
            Durability::Strict,
            Log::TrimmedHandoff,
        ),
        "keel-uring-fill" => keel::open(dir, BackendChoice::Uring, Durability::Strict, Log::Kept),
        "keel-std" => keel::open(dir, BackendChoice::Std, Durability::Strict, Log::Trimmed),
        "keel-std-handoff" => keel::open(
            dir,
            BackendChoice::Std,
            Durability::Strict,
            Log::TrimmedHandoff,
        ),
        "keel-db" => keel_db::open(dir),
        "keel-batched" => keel::open(dir, BackendChoice::Auto, batched(), Log::Trimmed),
        // The recovery table's filler: every record kept.
        "keel-batched-fill" => keel::open(dir, BackendChoice::Auto, batched(), Log::Kept),
        "keel-async" => keel::open(
            dir,
            BackendChoice::Auto,
            Durability::Async {
                max_delay: Duration::from_millis(10),
            },
            Log::Trimmed,
        ),
        #[cfg(feature = "peer-okaywal")]
        "okaywal" => Ok(Box::new(crate::okaywal::OkayWal::open(dir, 48 << 20)?)),
        #[cfg(feature = "peer-okaywal")]
        "okaywal-fill" => Ok(Box::new(crate::okaywal::OkayWal::open(dir, u64::MAX)?)),
        #[cfg(feature = "peer-sqlite")]
        "sqlite" => Ok(Box::new(crate::sqlite::Sqlite::open(
            dir, committers, "FULL",
        )?)),
        #[cfg(feature = "peer-sqlite")]
        "sqlite-normal" => Ok(Box::new(crate::sqlite::Sqlite::open(
            dir, committers, "NORMAL",
        )?)),
        #[cfg(feature = "peer-raft-engine")]
        "raft-engine" => Ok(Box::new(crate::raft_engine::RaftEngine::open(dir, true)?)),
        #[cfg(feature = "peer-raft-engine")]
        "raft-engine-nosync" => Ok(Box::new(crate::raft_engine::RaftEngine::open(dir, false)?)),
        #[cfg(feature = "peer-rocksdb")]
        "rocksdb" => Ok(Box::new(crate::rocksdb::RocksDb::open(dir, true)?)),
        #[cfg(feature = "peer-rocksdb")]
        "rocksdb-nosync" => Ok(Box::new(crate::rocksdb::RocksDb::open(dir, false)?)),
        other => Err(io::Error::other(format!("unknown system {other}"))),
    }
}

/// The depth a `raw-uring-batched-<depth>` system asks for (1 to the library's most).
#[cfg(all(target_os = "linux", feature = "uring"))]
fn batched_depth(system: &str) -> Option<usize> {
    let depth = system.strip_prefix("raw-uring-batched-")?.parse().ok()?;
    (1..=keel_bench::RAW_URING_BATCHED_MAX_DEPTH)
        .contains(&depth)
        .then_some(depth)
}

/// Reopens (recovers) `system`'s log in `dir`, reading what recovery hands over; returns how
/// many records it read (0 when the system does not say).
pub fn reopen(system: &str, dir: &Path) -> io::Result<u64> {
    match system {
        "keel" => keel::reopen(dir),
        #[cfg(feature = "peer-okaywal")]
        "okaywal" => crate::okaywal::reopen(dir),
        #[cfg(feature = "peer-sqlite")]
        "sqlite" => crate::sqlite::reopen(dir),
        #[cfg(feature = "peer-raft-engine")]
        "raft-engine" => crate::raft_engine::reopen(dir),
        #[cfg(feature = "peer-rocksdb")]
        "rocksdb" => crate::rocksdb::reopen(dir),
        other => Err(io::Error::other(format!("no reopen for {other}"))),
    }
}

/// Batched: synced within 10 ms or 4 MiB of records.
fn batched() -> Durability {
    Durability::Batched {
        max_delay: Duration::from_millis(10),
        max_bytes: 4 << 20,
    }
}
