//! The checks of a commit against the runs, as of its place in the log: the runs in the
//! state, then the run records of the commits queued before it. Each runs under the
//! `pending` lock of the append it checks.

use keel_wal::RunId;

use super::PendingQueue;
use crate::db::Database;
use crate::db::sync::read;
use crate::state::{Change, RunRecord, RunState, SYSTEM_RUN, run_of_key};
use crate::{Error, Result};

impl Database {
    /// Refuses a commit to `run` unless the run is active as of this commit's place in the log
    /// ([`Database::run_state_locked`]: a run's end the log took and has not acknowledged is
    /// not in the state yet; `tests/adversarial_run_end_race.rs`).
    pub(super) fn check_writable_locked(&self, run: RunId, pending: &PendingQueue) -> Result<()> {
        match self.run_state_locked(run.as_u128(), pending) {
            None => Err(Error::UnknownRun(run)),
            Some(true) => Err(Error::RunEnded(run)),
            Some(false) => Ok(()),
        }
    }

    /// Whether run `id` has ended (`None`: unknown, or deleted) as of the place in the log of
    /// the commit being appended: in the state, then after each run record queued before it.
    /// Under the `pending` lock of the append.
    fn run_state_locked(&self, id: u128, pending: &PendingQueue) -> Option<bool> {
        let state = read(&self.inner.state);
        let mut ended = state
            .runs
            .get(&id)
            .map(|info| info.state != RunState::Active);
        drop(state);
        let queued = pending.iter().filter(|commit| commit.run == SYSTEM_RUN);
        for (other, queued) in queued.flat_map(|commit| run_records(&commit.changes)) {
            if other == id {
                ended = (!queued.deleted).then_some(queued.ended);
            }
        }
        ended
    }

    /// Refuses a run record that begins a run under the name of another active run, in the
    /// state or in the commits queued before it (so two `begin_run`s of one name racing each
    /// other cannot both commit). Under the `pending` lock of the append.
    pub(super) fn check_run_names_locked(
        &self,
        changes: &[Change],
        pending: &PendingQueue,
    ) -> Result<()> {
        for (id, record) in run_records(changes) {
            if record.ended {
                continue;
            }
            let state = read(&self.inner.state);
            let mut active: std::collections::BTreeMap<u128, bool> = state
                .runs
                .values()
                .filter(|info| info.name == record.name)
                .map(|info| (info.id.as_u128(), info.state == RunState::Active))
                .collect();
            drop(state);
            let queued = pending.iter().filter(|commit| commit.run == SYSTEM_RUN);
            for (other, queued) in queued.flat_map(|commit| run_records(&commit.changes)) {
                if queued.name == record.name || active.contains_key(&other) {
                    active.insert(other, !queued.ended);
                }
            }
            if let Some((&other, _)) = active.iter().find(|(other, live)| **other != id && **live) {
                return Err(Error::RunNameTaken {
                    name: record.name,
                    run: RunId::from_u128(other),
                });
            }
        }
        Ok(())
    }

    /// Refuses a record that ends or deletes a run unless the run is there as of this
    /// record's place in the log: in the state, after the run records queued before it. A
    /// run deleted there is unknown; one ended there cannot end again (it may be deleted).
    /// Without this, an `end_run` that read the state while a `delete_run` was queued and not
    /// yet acknowledged was appended after it and put the deleted run back
    /// (`tests/adversarial_run_record_race.rs`). Under the `pending` lock of the append.
    pub(super) fn check_run_ends_locked(
        &self,
        changes: &[Change],
        pending: &PendingQueue,
    ) -> Result<()> {
        for (id, record) in run_records(changes) {
            if !record.ended {
                continue;
            }
            let run = RunId::from_u128(id);
            match self.run_state_locked(id, pending) {
                None => return Err(Error::UnknownRun(run)),
                Some(true) if !record.deleted => return Err(Error::RunEnded(run)),
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// The run records among `changes` (puts to `run/<id>` keys of the system run), by run id.
fn run_records(changes: &[Change]) -> Vec<(u128, RunRecord)> {
    let records = changes.iter().filter_map(|change| match change {
        Change::Put(key, value) => Some((run_of_key(key)?, RunRecord::decode(value).ok()?)),
        Change::Delete(_) => None,
    });
    records.map(|(id, record)| (id.as_u128(), record)).collect()
}
