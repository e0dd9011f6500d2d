//! Review of 10418b3 (a writer dropped without finishing poisons the log, so `close` cannot
//! return `Ok` over `Async` appends it never wrote): the other routes by which `close` may
//! return `Ok` with acknowledged appends unwritten, and the healthy routes that must stay `Ok`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keel_wal::{Durability, Error, WalOptions};

use common::gate::Gate;
use common::{LIMIT, read_all, within};

fn async_options(backend: keel_wal::BackendChoice) -> WalOptions {
    WalOptions {
        durability: Durability::Async {
            max_delay: Duration::from_secs(60),
        },
        ..common::small_options(backend)
    }
}

/// `hold_writer` promises "holding delays work, never drops it". `close` on a held log: the
/// writer's take takes nothing while held, finds itself closing and settled (nothing staged),
/// returns `Turn::Stop` (so `finished`, no poison), and `writer_stopped` refuses what is still
/// queued. The `Async` appends, acknowledged at enqueue, are then gone while `close` is `Ok`.
#[test]
fn close_while_held_does_not_drop_acknowledged_async_appends() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), async_options(backend)).unwrap();
        wal.append(&[common::write(1, 0, "k", 64)]).wait().unwrap();
        common::wait_until_idle(&wal);
        wal.hold_writer(true);
        let (acknowledged, closed) = within(LIMIT, "held appends and close", move || {
            let mut acknowledged = Vec::new();
            for i in 1..=10u64 {
                let lsn = wal
                    .append(&[common::write(1, i, "k", 64)])
                    .wait()
                    .expect("an Async append is acknowledged at enqueue");
                acknowledged.push(lsn);
            }
            (acknowledged, wal.close())
        });
        let recovered: Vec<_> = read_all(dir.path()).into_iter().map(|(l, _)| l).collect();
        let lost: Vec<_> = acknowledged
            .iter()
            .filter(|lsn| !recovered.contains(lsn))
            .collect();
        assert!(
            lost.is_empty() || closed.is_err(),
            "{backend:?}: close on a held log returned {closed:?} with acknowledged Async \
             appends {lost:?} never written (recovered {recovered:?})"
        );
    }
}

/// Stops the writer thread at its next segment rename once armed, then panics there.
#[derive(Debug, Default)]
struct GatedPanicOnRotation {
    armed: AtomicBool,
    gate: Gate,
}

impl keel_wal::Storage for GatedPanicOnRotation {
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        let segment = to.extension().is_some_and(|e| e == "wal");
        let on_writer = std::thread::current().name() == Some("keel-wal-writer");
        if segment && on_writer && self.armed.swap(false, Ordering::SeqCst) {
            self.gate.pass(Some(to));
            panic!("injected storage panic renaming {}", to.display());
        }
        std::fs::rename(from, to)
    }
}

/// A `Strict` append queued while the writer is inside the turn in which it panics: the
/// writer's drop now poisons the log (later appends and `close` get `Poisoned`), but the
/// append already queued is refused by `writer_stopped` (and a taken one by its dropped
/// resolver) with `Error::Closed`, which the engine lifts to its own `Error::Closed`, as if
/// the user had closed the database: the one caller that waited through the failure is told
/// a different, wrong story from everyone after it.
#[test]
fn a_commit_queued_when_the_writer_dies_is_refused_poisoned_not_closed() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(GatedPanicOnRotation::default());
        storage.gate.arm("keel-wal-writer", Some(".wal"));
        let options = WalOptions {
            storage: Arc::clone(&storage) as Arc<dyn keel_wal::Storage>,
            ..async_options(backend)
        };
        let wal = Arc::new(keel_recovery::open_wal(dir.path(), options).unwrap());
        storage.armed.store(true, Ordering::SeqCst);
        // 1 KiB records into 64 KiB segments: the writer rotates, and parks, within 100.
        let filler = Arc::clone(&wal);
        let fill = std::thread::spawn(move || {
            for i in 0..100u64 {
                if filler
                    .append(&[common::write(1, i, "k", 1024)])
                    .wait()
                    .is_err()
                {
                    break;
                }
            }
        });
        storage.gate.wait_parked();
        // The writer is inside its turn, in the rename: this append stays queued.
        let strict = wal.append_with(&[common::write(2, 0, "s", 64)], Durability::Strict);
        storage.gate.open();
        let outcome = within(LIMIT, "the strict append", move || strict.wait());
        fill.join().unwrap();
        let later = wal.append_with(&[common::write(3, 0, "l", 64)], Durability::Strict);
        let later = within(LIMIT, "a later append", move || later.wait());
        assert!(
            matches!(later, Err(Error::Poisoned { .. })),
            "{backend:?}: later append: {later:?}"
        );
        assert!(
            matches!(outcome, Err(Error::Poisoned { .. })),
            "{backend:?}: a Strict append queued when the writer died was refused {outcome:?}, \
             while the log reports Poisoned to appends after it ({later:?})"
        );
    }
}

/// The healthy routes stay `Ok` and unpoisoned: a log dropped without `close` (its writer
/// stops by `Turn::Stop` in the drop's shutdown), then a log driven by committers
/// (`append_wait`, the writer idle at each), held and released, and closed: `close` is `Ok`
/// and every acknowledged append is on disk.
#[test]
fn healthy_drop_and_close_after_drives_and_holds_stay_ok() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), async_options(backend)).unwrap();
        let mut acknowledged = Vec::new();
        for i in 0..100u64 {
            acknowledged.push(
                wal.append(&[common::write(1, i, "a", 1024)])
                    .wait()
                    .unwrap(),
            );
        }
        within(LIMIT, "drop without close", move || drop(wal));
        let options = WalOptions {
            durability: Durability::Strict,
            ..common::small_options(backend)
        };
        let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
        let (more, closed) = within(LIMIT, "drives, holds and close", move || {
            let mut more = Vec::new();
            for i in 0..100u64 {
                more.push(wal.append_wait(&[common::write(2, i, "d", 1024)]).unwrap());
            }
            common::wait_until_idle(&wal);
            wal.hold_writer(true);
            let held = wal.append(&[common::write(3, 0, "h", 64)]);
            wal.hold_writer(false);
            more.push(held.wait().unwrap());
            (more, wal.close())
        });
        assert!(
            closed.is_ok(),
            "{backend:?}: healthy close returned {closed:?}"
        );
        let recovered: Vec<_> = read_all(dir.path()).into_iter().map(|(l, _)| l).collect();
        for lsn in acknowledged.iter().chain(&more) {
            assert!(
                recovered.contains(lsn),
                "{backend:?}: acknowledged {lsn} lost"
            );
        }
    }
}
