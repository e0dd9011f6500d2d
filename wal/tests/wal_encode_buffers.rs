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

/// Payload entries (the Raft store's) are framed into a buffer sized for them up front: one
/// of 40 KiB grown by doubling from a small guess would pass the 64 KiB the pool keeps, and
/// every such append would allocate again.
#[test]
fn payload_entries_of_40_kib_reuse_their_buffers() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let options = keel_wal::WalOptions {
            segment_bytes: 4 << 20,
            max_record_bytes: 128 << 10,
            backend,
            ..keel_wal::WalOptions::default()
        };
        let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
        let written: Vec<WalEntry> = (0..50u8)
            .map(|i| WalEntry::Payload {
                run_id: keel_wal::RunId::from_u128(1),
                tag: 7,
                payload: vec![i; 40 << 10],
            })
            .collect();
        for entry in &written {
            let batch = wal.encode(std::slice::from_ref(entry)).unwrap();
            wal.append_encoded(batch, Durability::Strict)
                .wait()
                .unwrap();
        }
        let reused = wal.stats().buffers_reused;
        wal.close().unwrap();
        assert_eq!(
            reused, 49,
            "{backend:?}: the first append allocates, no other"
        );
        let read: Vec<WalEntry> = common::read_all(dir.path())
            .into_iter()
            .map(|(_, entry)| entry)
            .collect();
        assert_eq!(read, written, "{backend:?}");
    }
}
