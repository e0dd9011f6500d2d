//! A tail that follows a live log reads from the file about what was written since it last
//! looked, not a whole read chunk each time: following a log commit by commit must not copy
//! a megabyte from the page cache per commit (the change feed under 64 committers spent a
//! tenth of the machine's CPU doing that: docs/BENCHMARKS.md).
//!
//! Measured by the bytes this process read (`rchar` in `/proc/self/io`, which counts every
//! `read`/`pread`, page cache hits included): a count of bytes, not a time. This file is
//! its own test binary, and its one test the only one reading files in it.

#![cfg(target_os = "linux")]

mod common;

use keel_wal::{Durability, RunId, WalEntry};

/// Bytes this process has read so far.
fn bytes_read() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    let line = io.lines().find(|line| line.starts_with("rchar:")).unwrap();
    line["rchar:".len()..].trim().parse().unwrap()
}

#[test]
fn a_tail_at_the_live_end_reads_about_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let options = keel_wal::WalOptions {
        durability: Durability::Strict,
        segment_bytes: 16 << 20,
        ..common::small_options(keel_wal::BackendChoice::Std)
    };
    let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
    let mut tail = wal.tail(1);
    const COMMITS: u64 = 200;
    let before = bytes_read();
    for i in 0..COMMITS {
        let unit = [
            common::write(7, i, &format!("key-{i}"), 100),
            WalEntry::CommitTxn {
                run_id: RunId::from_u128(7),
                txn_id: i,
            },
        ];
        wal.append(&unit).wait().unwrap();
        // The commit is durable: the tail reads its two records, and finds nothing after.
        for _ in 0..2 {
            tail.try_next().unwrap().expect("a durable record");
        }
        assert!(tail.try_next().unwrap().is_none());
    }
    let read = bytes_read() - before;
    // About 300 bytes a commit were written. A tail that read a whole chunk (1 MiB, or the
    // rest of the 16 MiB segment) after each would read over 200 MiB here; one that reads
    // about what was written reads its smallest read (16 KiB) a commit, and the segment
    // opened once: under 8 MiB.
    assert!(
        read < 8 << 20,
        "the tail read {read} bytes to follow {COMMITS} commits of about 300 bytes"
    );
    wal.close().unwrap();
}
