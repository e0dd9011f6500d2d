//! The in-memory state: every run's keys with their latest committed value and version, and
//! the runs themselves. Built by replaying the log, then kept current by applying commits in
//! LSN order.
//!
//! Run metadata is stored in the log like data, as writes to the reserved *system run*
//! (`RunId` 0) under the key `run/<16-byte id>`; the value is [`RunRecord::encode`].

use std::collections::BTreeMap;

use keel_recovery::{CommittedTxn, Replay, ReplayError};
use keel_wal::{ArchivedWalEntry, Lsn, RunId};

/// The run that holds run metadata; never handed to users.
pub(crate) const SYSTEM_RUN: u128 = 0;
const RUN_KEY_PREFIX: &[u8] = b"run/";

/// A committed value and the commit version (LSN) that wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: Lsn,
}

/// Whether a run still accepts writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Active,
    /// Ended by the commit at this LSN.
    Ended(Lsn),
}

/// What the database knows of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunInfo {
    pub id: RunId,
    pub name: String,
    /// The commit that began it.
    pub began: Lsn,
    pub state: RunState,
}

/// The stored form of a run's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunRecord {
    pub name: String,
    pub ended: bool,
}

impl RunRecord {
    /// `[ended: u8][name: utf-8]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.name.len());
        out.push(u8::from(self.ended));
        out.extend_from_slice(self.name.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (&flag, name) = bytes.split_first().ok_or("empty run record")?;
        let ended = match flag {
            0 => false,
            1 => true,
            other => return Err(format!("run record flag {other}")),
        };
        let name = std::str::from_utf8(name)
            .map_err(|e| format!("run name is not UTF-8: {e}"))?
            .to_owned();
        Ok(RunRecord { name, ended })
    }
}

pub(crate) fn run_key(run: RunId) -> Vec<u8> {
    let mut key = RUN_KEY_PREFIX.to_vec();
    key.extend_from_slice(&run.as_u128().to_be_bytes());
    key
}

fn run_of_key(key: &[u8]) -> Option<RunId> {
    let id = key.strip_prefix(RUN_KEY_PREFIX)?;
    Some(RunId::from_u128(u128::from_be_bytes(id.try_into().ok()?)))
}

/// One committed change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub data: BTreeMap<(u128, Vec<u8>), Versioned>,
    pub runs: BTreeMap<u128, RunInfo>,
    /// Commits applied, through this LSN.
    pub applied_through: Lsn,
}

impl State {
    /// Applies one committed transaction of `run` at `version`.
    pub fn apply(&mut self, run: u128, version: Lsn, changes: &[Change]) -> Result<(), String> {
        for change in changes {
            match change {
                Change::Put(key, value) => {
                    if run == SYSTEM_RUN {
                        self.apply_run_record(key, value, version)?;
                    }
                    self.data.insert(
                        (run, key.clone()),
                        Versioned {
                            value: value.clone(),
                            version,
                        },
                    );
                }
                Change::Delete(key) => {
                    self.data.remove(&(run, key.clone()));
                }
            }
        }
        self.applied_through = self.applied_through.max(version);
        Ok(())
    }

    fn apply_run_record(&mut self, key: &[u8], value: &[u8], version: Lsn) -> Result<(), String> {
        let id = run_of_key(key).ok_or_else(|| format!("system key {key:?} is not a run key"))?;
        let record = RunRecord::decode(value)?;
        let info = self.runs.entry(id.as_u128()).or_insert(RunInfo {
            id,
            name: record.name.clone(),
            began: version,
            state: RunState::Active,
        });
        info.name = record.name;
        if record.ended {
            info.state = RunState::Ended(version);
        }
        Ok(())
    }
}

/// Replays the log into a [`State`], skipping the commits a snapshot already holds.
#[derive(Debug)]
pub(crate) struct StateReplay<'a> {
    pub state: &'a mut State,
    /// Commits at or below this LSN are in the snapshot the state was loaded from.
    pub after: Lsn,
}

impl Replay for StateReplay<'_> {
    fn apply(&mut self, txn: &CommittedTxn<'_>) -> Result<(), ReplayError> {
        if txn.commit_lsn <= self.after {
            return Ok(());
        }
        let mut changes = Vec::with_capacity(txn.entries().len());
        for (lsn, entry) in txn.entries() {
            changes.push(match entry {
                ArchivedWalEntry::Write { key, value, .. } => {
                    Change::Put(key.as_slice().to_vec(), value.as_slice().to_vec())
                }
                ArchivedWalEntry::Delete { key, .. } => Change::Delete(key.as_slice().to_vec()),
                other => {
                    return Err(
                        format!("LSN {lsn}: {:?} inside a transaction", other.kind()).into(),
                    );
                }
            });
        }
        self.state
            .apply(txn.run_id.as_u128(), txn.commit_lsn, &changes)
            .map_err(Into::into)
    }
}
