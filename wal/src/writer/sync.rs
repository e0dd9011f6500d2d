//! Synchronization primitives, swapped for loom's under `--cfg loom` so the group-commit
//! hand-off can be model-checked. `Arc` stays the standard one: it carries values between the
//! layers (poison causes, files) that loom need not model.

#[cfg(loom)]
pub(crate) use loom::sync::{
    Condvar, Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU64, fence},
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    Condvar, Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU64, fence},
};

/// Locks, treating a poisoned mutex (a panic while it was held) as the broken invariant it is.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .expect("a thread panicked while holding a keel-wal lock")
}
