//! Review of 10418b3 and 25306f4 (a dead writer fails its waiters `Poisoned`; a resolver
//! dropped while a panic unwinds says `Poisoned`): a user's `on_resolved` callback that
//! panics kills the writer (or a committer driving it) part-way through releasing a group,
//! and the rest of the group, durable and already published durable (`Wal::durable_lsn`,
//! the `on_acknowledged` hook), is answered `Poisoned`: "what was queued and not yet written
//! is lost", about records that are on disk and acknowledged elsewhere.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keel_wal::{Durability, EncodedBatch, Error, Lsn, RunId, WalEntry, WalOptions};

use common::{LIMIT, read_all, within};

fn strict_options(backend: keel_wal::BackendChoice) -> WalOptions {
    WalOptions {
        durability: Durability::Strict,
        ..common::small_options(backend)
    }
}

/// Two `Strict` commits in one chain (queued under `hold_writer`). The first one's
/// `on_resolved` callback panics on the writer thread, inside the release loop, after the
/// durable position covering both was published and told to the `on_acknowledged` hook. The
/// writer's drop then fails the second, still in `durable_waiters`, with `Poisoned`, though
/// its record is durable, `durable_lsn` covers it, the hook acknowledged it, and a reopen
/// finds it.
#[test]
fn a_panicking_on_resolved_callback_does_not_fail_a_durable_commit_of_its_group() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), strict_options(backend)).unwrap();
        let hooked = Arc::new(AtomicU64::new(0));
        let sink = Arc::clone(&hooked);
        assert!(wal.on_acknowledged(move |_, durable| {
            sink.fetch_max(durable, Ordering::SeqCst);
        }));
        common::wait_until_idle(&wal);
        wal.hold_writer(true);
        let first = wal.append(&[common::write(1, 1, "a", 64)]);
        let second = wal.append(&[common::write(1, 2, "b", 64)]);
        first.on_resolved(|_| panic!("injected: a user's on_resolved callback panics"));
        wal.hold_writer(false);
        let (outcome, durable, closed) = within(LIMIT, "the group resolves", move || {
            let outcome = second.wait();
            let durable = wal.durable_lsn();
            (outcome, durable, wal.close())
        });
        let acknowledged = hooked.load(Ordering::SeqCst);
        let recovered: Vec<Lsn> = read_all(dir.path()).into_iter().map(|(l, _)| l).collect();
        assert!(
            recovered.contains(&2) && durable >= 2 && acknowledged >= 2,
            "{backend:?}: setup: commit 2 durable (recovered {recovered:?}, durable_lsn \
             {durable}, hook {acknowledged})"
        );
        assert!(
            matches!(outcome, Ok(2)),
            "{backend:?}: commit 2 is durable (durable_lsn {durable}, on_acknowledged told \
             {acknowledged}, recovered {recovered:?}) yet answered {outcome:?} (close: \
             {closed:?})"
        );
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

/// `append_closed_by_driving` (the engine's blocking commit) marks its append `waited`, so a
/// driving committer may write it, yet hands its caller a `CommitFuture` that takes an
/// `on_resolved`. Committer A queues so (the writer idle) and gives its future a callback
/// that panics; committer B's `append_wait` finds the writer idle, drives, writes both, and
/// runs A's callback on B's thread: the panic unwinds through B's `append_wait`, whose own
/// commit is durable (`Wal::append_wait`: "other commits' callbacks never run on the
/// calling thread").
#[test]
fn a_driven_commits_callback_never_runs_in_another_committers_append_wait() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(keel_recovery::open_wal(dir.path(), strict_options(backend)).unwrap());
        wal.append_wait(&[common::write(1, 0, "k", 64)]).unwrap();
        common::wait_until_idle(&wal);
        let ran_on = Arc::new(std::sync::Mutex::new(None::<String>));
        let batch =
            EncodedBatch::encode(&[common::write(1, 1, "a", 64)], wal.max_record_bytes()).unwrap();
        let (appended, wake) =
            wal.append_closed_by_driving(batch, Durability::Strict, |f| span(1, f));
        let sink = Arc::clone(&ran_on);
        appended.future.on_resolved(move |_| {
            let name = std::thread::current().name().map(str::to_owned);
            *sink.lock().unwrap() = Some(name.unwrap_or_else(|| "<unnamed>".into()));
            panic!("injected: committer A's on_resolved callback panics");
        });
        let driver = Arc::clone(&wal);
        let b = within(LIMIT, "committer B's append_wait", move || {
            std::thread::Builder::new()
                .name("committer-b".into())
                .spawn(move || driver.append_wait(&[common::write(1, 2, "b", 64)]))
                .unwrap()
                .join()
        });
        drop(wake);
        let ran_on = ran_on.lock().unwrap().clone();
        let b: Result<Result<Lsn, Error>, String> = b.map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default()
        });
        assert!(
            ran_on.as_deref() != Some("committer-b") && matches!(b, Ok(Ok(_))),
            "{backend:?}: committer A's on_resolved callback ran on {ran_on:?}, inside \
             committer B's append_wait, which ended {b:?}"
        );
        let wal = Arc::try_unwrap(wal).expect("the last handle");
        let _ = within(LIMIT, "close", move || wal.close().is_ok());
    }
}
