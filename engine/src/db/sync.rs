//! The engine's one policy for a poisoned lock: **stop**.
//!
//! A lock is poisoned when a thread panicked while holding it, and in Keel a panic is a broken
//! invariant (operating errors are `Result`s). What each engine lock guards cannot be trusted
//! after a panic in the middle of changing it:
//!
//! - `state` (runs, keys, values, versions): a commit may be half applied, and readers would
//!   see a torn transaction.
//! - `pending` (queued commits, and the order of the appends that change them): a commit may
//!   be in the log but not queued, and the live state would never show what a reopen
//!   recovers.
//! - `spills` (the spilled transactions whose heads the log keeps): a registration may be
//!   missing, and a checkpoint could delete log that a commit still needs.
//! - `verified_snapshots` (a cache), `latency` and `last_auto_checkpoint_error` (counters):
//!   harmless if recovered, but no correct code panics under them either.
//!
//! Recovering the guard (what the engine did before) would serve the first three as if nothing
//! happened, breaking the promise that the live state equals what a reopen recovers. So every
//! later use of a poisoned lock panics too, saying why, and the handle stops working; a
//! reopen rebuilds the state from the log, which a panic in memory never touched. One rule for
//! all locks keeps it simple: the harmless ones are never poisoned by correct code either.
//!
//! The one exception is a thread that is already unwinding: its clean-up (a dropped
//! [`super::Transaction`] logging its abort) gets the guard, since a second panic would abort
//! the whole process. The lock stays poisoned, so every other thread still stops.
//!
//! keel-wal treats a poisoned lock the same way (its `sync::lock`).
//!
//! **Lock order.** `pending` comes first: a commit is queued, and applied to `state`, under
//! it, and a spill is registered in `spills` under it. So `pending` may be held while taking
//! `state` or `spills`, and no thread takes `pending` while it holds either of those (nor
//! any lock while it holds `state`): `Database::stats` once read the state and then took
//! `pending`, and deadlocked against a commit being applied
//! (`tests/adversarial_split_stats_deadlock.rs`). `failed_installs` is taken under
//! `pending` by an install (from before its marker to its outcome) and alone by a change
//! feed that read a marker, never the reverse.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub(super) const POISONED: &str = "a thread panicked while holding one of this database's locks, so its in-memory state may be broken; the handle stops here (reopen the database: the log is intact)";

/// Locks `mutex`, under the policy above.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(stop)
}

/// Reads through `lock`, under the policy above.
pub(super) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(stop)
}

/// Writes through `lock`, under the policy above.
pub(super) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(stop)
}

/// The policy: panic, unless this thread is already unwinding.
fn stop<G>(poisoned: PoisonError<G>) -> G {
    if std::thread::panicking() {
        return poisoned.into_inner();
    }
    panic!("{POISONED}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poisoned() -> Mutex<u32> {
        let mutex = Mutex::new(1);
        let _ = std::panic::catch_unwind(|| {
            let _held = mutex.lock().unwrap();
            panic!("a broken invariant");
        });
        assert!(mutex.is_poisoned());
        mutex
    }

    #[test]
    fn a_poisoned_lock_stops_its_next_user() {
        let mutex = poisoned();
        let outcome = std::panic::catch_unwind(|| *lock(&mutex));
        let message = outcome.unwrap_err();
        let message = message.downcast_ref::<String>().unwrap();
        assert!(message.contains("reopen the database"), "{message}");
    }

    #[test]
    fn an_unwinding_thread_still_gets_the_guard_and_the_lock_stays_poisoned() {
        struct CleanUp<'a>(&'a Mutex<u32>, &'a std::sync::atomic::AtomicU32);
        impl Drop for CleanUp<'_> {
            fn drop(&mut self) {
                let value = *lock(self.0);
                self.1.store(value, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let mutex = poisoned();
        let seen = std::sync::atomic::AtomicU32::new(0);
        let outcome = std::panic::catch_unwind(|| {
            let _clean_up = CleanUp(&mutex, &seen);
            panic!("another broken invariant");
        });
        assert!(outcome.is_err());
        assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(mutex.is_poisoned());
    }
}
