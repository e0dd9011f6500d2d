//! A writer thread that dies (here: the storage it calls panics during a rotation) takes with
//! it whatever was queued and not yet written. An `Async` append is acknowledged when it is
//! queued, so `close` is the point at which its caller learns whether it is durable; a
//! `close` that returned `Ok` after the writer died told that caller its acknowledged records
//! were on disk when they were not (found by review helper-56's writer-panic test: an `Async`
//! commit acknowledged, `close` `Ok`, the commit gone after a reopen). The same holds when a
//! committer panics while it drives the writer (`Wal::append_wait`): the writer stops without
//! finishing the queue.

mod common;

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keel_wal::{BackendChoice, Durability, Error, WalOptions};

use common::{LIMIT, within};

/// Panics once, when armed, as a new segment is renamed into place: on the writer thread, or
/// (`on_committer`) on a committer's driving it.
#[derive(Debug, Default)]
struct PanicsOnRotation {
    armed: AtomicBool,
    fired: AtomicBool,
    on_committer: bool,
}

impl keel_wal::Storage for PanicsOnRotation {
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        let segment = to.extension().is_some_and(|e| e == "wal");
        let on_writer = std::thread::current().name() == Some("keel-wal-writer");
        if segment && on_writer != self.on_committer && self.armed.swap(false, Ordering::SeqCst) {
            self.fired.store(true, Ordering::SeqCst);
            panic!("injected storage panic renaming {}", to.display());
        }
        std::fs::rename(from, to)
    }
}

fn options(backend: BackendChoice, storage: Arc<PanicsOnRotation>) -> WalOptions {
    WalOptions {
        durability: Durability::Async {
            max_delay: Duration::from_secs(60),
        },
        storage,
        ..common::small_options(backend)
    }
}

/// `Async` appends acknowledged while the writer dies in a rotation: `close` reports the
/// failure instead of `Ok`, and a reopen shows why it had to (acknowledged records missing).
#[test]
fn close_after_the_writer_thread_died_is_an_error() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(PanicsOnRotation::default());
        let wal =
            keel_recovery::open_wal(dir.path(), options(backend, Arc::clone(&storage))).unwrap();
        storage.armed.store(true, Ordering::SeqCst);
        let fired = Arc::clone(&storage);
        let (acknowledged, closed) = within(LIMIT, "appends and close", move || {
            let mut acknowledged = BTreeSet::new();
            // 1 KiB records into 64 KiB segments: the writer rotates (and panics) within the
            // first hundred; the loop stops at the first refusal once it has.
            for i in 0..2_000u64 {
                let lsn = match wal.append(&[common::write(1, i, "k", 1024)]).wait() {
                    Ok(lsn) => lsn,
                    Err(_) => break,
                };
                acknowledged.insert(lsn);
                if fired.fired.load(Ordering::SeqCst) && i % 64 == 63 {
                    // Give the dying writer time to stop: what is queued from now on is
                    // refused, not acknowledged.
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            (acknowledged, wal.close())
        });
        assert!(
            storage.fired.load(Ordering::SeqCst),
            "{backend:?}: the writer never rotated"
        );
        match &closed {
            Err(Error::Poisoned { cause }) => {
                assert!(
                    cause.to_string().contains("panicked"),
                    "{backend:?}: the cause does not say the writer panicked: {cause}"
                );
            }
            other => panic!(
                "{backend:?}: close after the writer thread died returned {other:?}, with {} \
                 Async appends acknowledged",
                acknowledged.len()
            ),
        }
        // What the reopen finds: the acknowledged appends the dead writer never wrote are
        // missing, which is what `close` must not hide.
        let options = WalOptions {
            durability: Durability::Strict,
            ..common::small_options(backend)
        };
        let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
        let recovered = wal.next_lsn() - 1;
        let lost = acknowledged.iter().filter(|&&lsn| lsn > recovered).count();
        println!(
            "{backend:?}: {} acknowledged, recovered through {recovered}, {lost} lost, close: {closed:?}",
            acknowledged.len()
        );
        wal.close().unwrap();
    }
}

/// A committer that drives the writer (`append_wait` with the writer idle) panics in its
/// rotation: the writer stops without finishing, and `close` says so instead of `Ok`.
#[test]
fn close_after_a_driving_committer_panicked_is_an_error() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(PanicsOnRotation {
            on_committer: true,
            ..PanicsOnRotation::default()
        });
        let options = WalOptions {
            durability: Durability::Strict,
            storage: Arc::clone(&storage) as Arc<dyn keel_wal::Storage>,
            ..common::small_options(backend)
        };
        let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
        storage.armed.store(true, Ordering::SeqCst);
        let fired = Arc::clone(&storage);
        let (committed, closed) = within(LIMIT, "drives and close", move || {
            let mut committed = 0u64;
            // One committer: the writer is idle at every commit, so the committer writes
            // (and rotates) itself.
            for i in 0..2_000u64 {
                let entry = [common::write(1, i, "k", 1024)];
                match catch_unwind(AssertUnwindSafe(|| wal.append_wait(&entry))) {
                    Ok(Ok(_)) => committed += 1,
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            assert!(fired.fired.load(Ordering::SeqCst), "no driven rotation");
            (committed, wal.close())
        });
        println!("{backend:?}: {committed} committed, close: {closed:?}");
        assert!(
            matches!(&closed, Err(Error::Poisoned { .. })),
            "{backend:?}: close after a driving committer panicked returned {closed:?}"
        );
    }
}

/// The append the writer was writing when it died (staged, waiting for its sync, its batch
/// the one that rotated) fails with the log's cause, `Poisoned`, as the ones queued behind it
/// and later ones do; its dropped resolver said `Closed` before, which the engine reports as
/// a database closed by its user.
#[test]
fn the_append_the_writer_was_writing_when_it_died_fails_poisoned() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(PanicsOnRotation::default());
        let options = WalOptions {
            durability: Durability::Strict,
            storage: Arc::clone(&storage) as Arc<dyn keel_wal::Storage>,
            ..common::small_options(backend)
        };
        let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
        storage.armed.store(true, Ordering::SeqCst);
        let failed = within(LIMIT, "appends", move || {
            // One at a time through the writer thread (`append`, not `append_wait`): the
            // append whose batch rotates is the one in the writer's hands when it panics.
            for i in 0..2_000u64 {
                if let Err(error) = wal.append(&[common::write(1, i, "k", 1024)]).wait() {
                    return Some(error);
                }
            }
            None
        });
        assert!(
            storage.fired.load(Ordering::SeqCst),
            "{backend:?}: no rotation"
        );
        assert!(
            matches!(&failed, Some(Error::Poisoned { .. })),
            "{backend:?}: the append in the dying writer's hands failed {failed:?}"
        );
    }
}
