//! Review of 4c8afc4 (a panicking `on_resolved` callback is caught where it runs; a driver
//! leaves an append whose future has a callback to the writer thread, checked with
//! `Resolver::has_callback`, which locks the commit's slot under the queue's lock).
//!
//! That check adds a lock order, queue then slot, that nothing had before, while
//! `CommitFuture::poll` still drops a replaced waker (foreign code) with the slot locked.

mod common;

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use keel_sim::Faults;
use keel_wal::{Durability, EncodedBatch, Error, Lsn, RunId, Wal, WalEntry, WalOptions};

use common::{LIMIT, within};

fn strict_options(backend: keel_wal::BackendChoice) -> WalOptions {
    WalOptions {
        durability: Durability::Strict,
        ..common::small_options(backend)
    }
}

/// The closing entry of unit `id`.
fn span(id: u64, first_lsn: Lsn) -> WalEntry {
    WalEntry::CommitSpan {
        run_id: RunId::from_u128(1),
        txn_id: id,
        first_lsn,
    }
}

/// A task's waker whose last reference, dropped, reads the log's next LSN (a task that
/// owned a log-aware handle, say): it takes the queue's lock. `CommitFuture::poll` drops a
/// replaced waker with the commit's slot locked.
struct Reading {
    wal: Arc<Wal>,
    entered: Mutex<Option<mpsc::Sender<()>>>,
}

impl Wake for Reading {
    fn wake(self: Arc<Self>) {}
}

impl Drop for Reading {
    fn drop(&mut self) {
        if let Some(entered) = self.entered.lock().unwrap().take() {
            let _ = entered.send(());
        }
        // Let committer B reach its drive's take first (deterministically, in practice).
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.wal.next_lsn();
    }
}

struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// Committer A queues with `append_closed_by_driving` (the writer idle, so its guard holds
/// a drive) and polls its future from one task, then another: the first task's waker, dropped with
/// the slot locked, takes the queue's lock:
/// A holds the slot's lock and waits for the queue's. Committer B's `append_wait` drives
/// meanwhile: `take_driven` holds the queue's lock and asks A's request `drivable()`, which
/// locks A's slot. Before 4c8afc4 the queue's lock never took a slot's: no cycle.
#[test]
fn polling_a_driven_commit_while_another_committer_drives_does_not_deadlock() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(keel_recovery::open_wal(dir.path(), strict_options(backend)).unwrap());
        wal.append_wait(&[common::write(1, 0, "k", 64)]).unwrap();
        common::wait_until_idle(&wal);
        let batch =
            EncodedBatch::encode(&[common::write(1, 1, "a", 64)], wal.max_record_bytes()).unwrap();
        let (appended, wake) =
            wal.append_closed_by_driving(batch, Durability::Strict, |f| span(1, f));
        // Never dropped on a hang: its drop takes the queue's lock.
        let wake = ManuallyDrop::new(wake);
        let (entered, entered_rx) = mpsc::channel();
        let reading = Arc::new(Reading {
            wal: Arc::clone(&wal),
            entered: Mutex::new(Some(entered)),
        });
        let mut future = appended.future;
        let (polled_tx, polled) = mpsc::channel();
        std::thread::spawn(move || {
            // Polled first from one task (the slot keeps its waker, the last reference)...
            let waker = Waker::from(reading);
            let first = Pin::new(&mut future)
                .poll(&mut Context::from_waker(&waker))
                .is_pending();
            drop(waker);
            // ...then from another: the first task's waker is dropped, the slot locked.
            let other = Waker::from(Arc::new(Noop));
            let second = Pin::new(&mut future)
                .poll(&mut Context::from_waker(&other))
                .is_pending();
            let _ = polled_tx.send(first && second);
            // Then wait for it as a blocking committer would.
            let _ = polled_tx.send(future.wait().is_ok());
        });
        entered_rx
            .recv_timeout(LIMIT)
            .expect("committer A's poll clones its waker");
        let driver = Arc::clone(&wal);
        let b = within(LIMIT, "committer B's append_wait (driving)", move || {
            driver.append_wait(&[common::write(1, 2, "b", 64)])
        });
        let a_polled = polled.recv_timeout(LIMIT);
        assert!(
            b.is_ok() && matches!(a_polled, Ok(true)),
            "{backend:?}: committer B's append_wait ended {b:?}, committer A's poll {a_polled:?}"
        );
        drop(ManuallyDrop::into_inner(wake));
        assert!(
            matches!(polled.recv_timeout(LIMIT), Ok(true)),
            "{backend:?}: committer A's commit resolves Ok"
        );
    }
}

/// A poisoned log fails a held group whose every commit has a callback that panics: each
/// callback runs exactly once, with `Poisoned`, on the writer thread; the writer survives to
/// refuse what comes later (a driven `append_wait` among it), and `close` says `Poisoned`.
/// Nothing hangs, and the catch hides no failure of the log.
#[test]
fn panicking_callbacks_of_a_poisoned_logs_group_each_run_once_and_nothing_hangs() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        let options = WalOptions {
            storage: Arc::clone(&faults) as _,
            ..strict_options(backend)
        };
        let wal = Arc::new(keel_recovery::open_wal(dir.path(), options).unwrap());
        wal.append_wait(&[common::write(1, 0, "k", 64)]).unwrap();
        common::wait_until_idle(&wal);
        let calls = Arc::new(AtomicU64::new(0));
        let poisoned = Arc::new(AtomicU64::new(0));
        let on = Arc::new(Mutex::new(Vec::<String>::new()));
        wal.hold_writer(true);
        faults.fail_sync_after(0);
        for i in 1..=4 {
            let future = wal.append(&[common::write(1, i, "p", 64)]);
            let (calls, poisoned, on) =
                (Arc::clone(&calls), Arc::clone(&poisoned), Arc::clone(&on));
            future.on_resolved(move |outcome| {
                calls.fetch_add(1, Ordering::SeqCst);
                if matches!(outcome, Err(Error::Poisoned { .. })) {
                    poisoned.fetch_add(1, Ordering::SeqCst);
                }
                let name = std::thread::current().name().map(str::to_owned);
                on.lock().unwrap().push(name.unwrap_or_default());
                panic!("injected: a callback panics as the log fails");
            });
        }
        wal.hold_writer(false);
        let log = Arc::clone(&wal);
        let (later, driven) = within(LIMIT, "commits after the poison", move || {
            let later = log.append(&[common::write(1, 10, "later", 64)]).wait();
            let driven = log.append_wait(&[common::write(1, 11, "driven", 64)]);
            (later, driven)
        });
        common::wait_for("every callback ran", || calls.load(Ordering::SeqCst) == 4);
        std::thread::sleep(Duration::from_millis(50));
        let on = on.lock().unwrap().clone();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "{backend:?}: each callback once"
        );
        assert_eq!(
            poisoned.load(Ordering::SeqCst),
            4,
            "{backend:?}: every callback told Poisoned"
        );
        assert!(
            on.iter().all(|name| name != "main" && !name.is_empty()),
            "{backend:?}: callbacks ran on {on:?}"
        );
        assert!(
            matches!(later, Err(Error::Poisoned { .. }))
                && matches!(driven, Err(Error::Poisoned { .. })),
            "{backend:?}: later commits {later:?}, {driven:?}"
        );
        let wal = Arc::try_unwrap(wal).expect("the last handle");
        let closed = within(LIMIT, "close", move || wal.close());
        assert!(
            matches!(closed, Err(Error::Poisoned { .. })),
            "{backend:?}: close {closed:?}"
        );
    }
}
