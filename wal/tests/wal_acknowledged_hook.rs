//! `Wal::on_acknowledged`: a function called as the written and durable positions move,
//! after they are published and before the commits they cover resolve, on the writer's
//! thread or on a committer's that drives it. Whoever learns of a commit from its future
//! finds what the hook did for it done; a panic in the hook fails no commit.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_wal::{BackendChoice, Durability, WalOptions};

fn options(backend: BackendChoice, durability: Durability) -> WalOptions {
    WalOptions {
        durability,
        ..common::small_options(backend)
    }
}

/// The hook runs before the commits resolve: it sleeps before recording what it saw, so a
/// hook called after (or beside) the resolution would be seen late by the committer.
#[test]
fn a_commit_resolves_after_the_hook_saw_its_position() {
    for backend in common::backends() {
        for durability in [
            Durability::Strict,
            Durability::Batched {
                max_delay: Duration::from_millis(1),
                max_bytes: 1 << 20,
            },
        ] {
            let dir = tempfile::tempdir().unwrap();
            let wal = keel_recovery::open_wal(dir.path(), options(backend, durability)).unwrap();
            let seen = Arc::new(AtomicU64::new(0));
            let hook_seen = Arc::clone(&seen);
            let strict = matches!(durability, Durability::Strict);
            assert!(wal.on_acknowledged(move |written, durable| {
                assert!(
                    durable <= written,
                    "durable {durable} past written {written}"
                );
                std::thread::sleep(Duration::from_millis(2));
                let through = if strict { durable } else { written };
                hook_seen.fetch_max(through, Ordering::SeqCst);
            }));
            assert!(
                !wal.on_acknowledged(|_, _| panic!("never registered")),
                "a second hook is refused"
            );
            // Committers on their own threads (some drive the writer) and through the writer.
            for i in 0..20 {
                let lsn = wal.append_wait(&[common::write(1, i, "k", 64)]).unwrap();
                let saw = seen.load(Ordering::SeqCst);
                assert!(
                    saw >= lsn,
                    "{backend:?} {durability:?}: {lsn} resolved, hook saw {saw}"
                );
                let future = wal.append(&[common::write(1, i, "f", 64)]);
                let lsn = futures::executor::block_on(future).unwrap();
                let saw = seen.load(Ordering::SeqCst);
                assert!(
                    saw >= lsn,
                    "{backend:?} {durability:?}: {lsn} resolved, hook saw {saw}"
                );
            }
            wal.close().unwrap();
        }
    }
}

/// A hook that panics is logged and the commits resolve as if it had returned.
#[test]
fn a_panicking_hook_fails_no_commit() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal =
            keel_recovery::open_wal(dir.path(), options(backend, Durability::Strict)).unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let hook_calls = Arc::clone(&calls);
        assert!(wal.on_acknowledged(move |_, _| {
            hook_calls.fetch_add(1, Ordering::SeqCst);
            panic!("a hook that panics");
        }));
        let mut lsns = Vec::new();
        for i in 0..10 {
            lsns.push(wal.append_wait(&[common::write(1, i, "k", 64)]).unwrap());
            let lsn = futures::executor::block_on(wal.append(&[common::write(1, i, "f", 64)]));
            lsns.push(lsn.unwrap());
        }
        assert!(
            calls.load(Ordering::SeqCst) > 0,
            "{backend:?}: the hook never ran"
        );
        assert!(wal.durable_lsn() >= *lsns.last().unwrap(), "{backend:?}");
        wal.close().unwrap();
        let recovered: Vec<_> = common::read_all(dir.path()).iter().map(|r| r.0).collect();
        assert_eq!(recovered, lsns, "{backend:?}");
    }
}
