//! A function the log's user registers to run each time the written or durable position
//! moves, after it is published and before the commits it covers resolve
//! ([`crate::Wal::on_acknowledged`]).
//!
//! An engine applies its acknowledged commits there, so their committers, once woken, find
//! them applied and need no lock: without it, every committer of a group woke while the
//! first was still applying the group, and queued behind it on the lock.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use crate::ids::Lsn;

/// The registered function, called with the written and the durable positions.
type Hook = Box<dyn Fn(Lsn, Lsn) + Send + Sync>;

/// At most one hook, set once.
#[derive(Default)]
pub(crate) struct AckHook(OnceLock<Hook>);

impl std::fmt::Debug for AckHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AckHook")
            .field(&self.0.get().is_some())
            .finish()
    }
}

impl AckHook {
    /// Registers `hook`; false when one is registered already (it stays).
    pub(crate) fn set(&self, hook: Hook) -> bool {
        self.0.set(hook).is_ok()
    }

    /// Calls the hook, if any. A panic in it is logged and goes no further: the writer (or
    /// the committer driving it) goes on to resolve the commits, which the hook cannot fail.
    pub(crate) fn call(&self, written: Lsn, durable: Lsn) {
        let Some(hook) = self.0.get() else {
            return;
        };
        if catch_unwind(AssertUnwindSafe(|| hook(written, durable))).is_err() {
            tracing::error!("the log's acknowledgement hook panicked; commits resolve regardless");
        }
    }
}
