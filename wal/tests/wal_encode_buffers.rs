//! `Wal::encode` frames appends into buffers the writer hands back once it copied their
//! records into a batch (`writer/buffers.rs`): after the first appends, appending allocates
//! nothing, and a reused buffer never carries bytes of its earlier record into a new one.

mod common;

use keel_wal::{Durability, WalEntry};

#[test]
fn appends_reuse_the_buffers_the_writer_hands_back() {
    for backend in common::backends() {
        for durability in [
            Durability::Strict,
            Durability::Async {
                max_delay: std::time::Duration::from_millis(1),
            },
        ] {
            let dir = tempfile::tempdir().unwrap();
            let options = keel_wal::WalOptions {
                durability,
                ..common::small_options(backend)
            };
            let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
            // Values of every size from 0 to 3000 bytes, large then small in turn: a buffer
            // that held a long record next frames a short one.
            let written: Vec<WalEntry> = (0..400u64)
                .map(|i| {
                    let len = if i % 2 == 0 {
                        (i * 7 % 3000) as usize
                    } else {
                        3
                    };
                    common::write(1, i, &format!("key-{i}"), len)
                })
                .collect();
            // In rounds of ten appends, each round then synced: by then the writer has
            // staged the round and handed its ten buffers back, so every later round frames
            // into them (an Async append resolves at enqueue, so without the sync a producer
            // runs ahead of the writer by a varying number of buffers).
            for round in written.chunks(10) {
                for entry in round {
                    let batch = wal.encode(std::slice::from_ref(entry)).unwrap();
                    wal.append_encoded(batch, durability).wait().unwrap();
                }
                wal.sync().wait().unwrap();
            }
            let reused = wal.stats().buffers_reused;
            wal.close().unwrap();
            assert!(
                reused >= 390,
                "{backend:?} {durability:?}: only {reused} of 400 appends reused a buffer"
            );
            let read: Vec<WalEntry> = common::read_all(dir.path())
                .into_iter()
                .map(|(_, entry)| entry)
                .collect();
            assert_eq!(read, written, "{backend:?} {durability:?}");
        }
    }
}
