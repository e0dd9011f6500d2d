//! [`Snapshot`]: a read-only view of the whole database at one point.

use std::ops::RangeBounds;

use keel_wal::{Lsn, RunId};

use crate::iter::Iter;
use crate::range::{self, KeyRange};
use crate::state::{RunInfo, State};
use crate::{Error, Result, Versioned};

/// A read-only view of the whole database: every commit acknowledged when it was taken
/// ([`Database::snapshot`](crate::Database::snapshot)), none made after. O(1) to take and
/// to clone (the state is a persistent map); while it lives it keeps the values later
/// commits replace in memory, so hold one for a read, not for good.
#[derive(Clone, Debug)]
pub struct Snapshot {
    state: State,
}

impl Snapshot {
    pub(crate) fn new(state: State) -> Snapshot {
        Snapshot { state }
    }

    /// The last commit version it shows: every commit at or below it that was acknowledged.
    pub fn lsn(&self) -> Lsn {
        self.state.applied_through
    }

    /// `key`'s value in `run`.
    pub fn get(&self, run: RunId, key: impl AsRef<[u8]>) -> Result<Option<Versioned>> {
        self.check_run(run)?;
        Ok(self.state.get(run.as_u128(), key.as_ref()))
    }

    /// The `(key, value)` pairs of `run` in `range`, in key order from either end.
    pub fn range<K: AsRef<[u8]>>(&self, run: RunId, range: impl RangeBounds<K>) -> Result<Iter> {
        self.iter_in(run, range::owned(&range))
    }

    /// Every `(key, value)` pair of `run`, in key order from either end (`range(run, ..)`
    /// needs its key type named; this does not).
    pub fn iter(&self, run: RunId) -> Result<Iter> {
        self.iter_in(
            run,
            (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
        )
    }

    /// The `(key, value)` pairs of `run` whose keys start with `prefix`, in key order from
    /// either end.
    pub fn prefix(&self, run: RunId, prefix: impl AsRef<[u8]>) -> Result<Iter> {
        self.iter_in(run, range::prefix_range(prefix.as_ref()))
    }

    /// A run's metadata, as of this view.
    pub fn run_info(&self, run: RunId) -> Option<RunInfo> {
        self.state.runs.get(&run.as_u128()).cloned()
    }

    fn iter_in(&self, run: RunId, range: KeyRange) -> Result<Iter> {
        self.check_run(run)?;
        let own = Default::default();
        Ok(Iter::new(self.state.clone(), run.as_u128(), range, own))
    }

    fn check_run(&self, run: RunId) -> Result<()> {
        match self.state.runs.contains_key(&run.as_u128()) {
            true => Ok(()),
            false => Err(Error::UnknownRun(run)),
        }
    }
}
