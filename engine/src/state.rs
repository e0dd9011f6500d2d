//! The in-memory state: every run's keys with their latest committed value and version, and
//! the runs themselves. Built by replaying the log, then kept current by applying commits in
//! LSN order.
//!
//! Run metadata is stored in the log like data, as writes to the reserved *system run*
//! (`RunId` 0) under the key `run/<16-byte id>`; the value is [`RunRecord::encode`].
//!
//! The maps are persistent (`imbl::OrdMap`, a B-tree whose nodes are shared between copies):
//! cloning a [`State`] costs O(1), and the clone is an immutable view while the original goes
//! on taking commits, each copying only the nodes on its path. Keys and values are `Bytes`,
//! so a copied node shares them rather than copying them. A checkpoint writes its snapshot
//! from such a view, off the commit path.

use bytes::Bytes;
use imbl::OrdMap;
use keel_recovery::{CommittedTxn, Replay, ReplayError};
use keel_wal::{ArchivedWalEntry, Lsn, RunId};

/// The run that holds run metadata; never handed to users.
pub(crate) const SYSTEM_RUN: u128 = 0;
const RUN_KEY_PREFIX: &[u8] = b"run/";

/// A committed value and the commit version (LSN) that wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Vec<u8>,
    /// The LSN of the commit that wrote it (0 for a transaction's own uncommitted write).
    pub version: Lsn,
}

/// Whether a run still accepts writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// It accepts writes.
    Active,
    /// Ended by the commit at this LSN.
    Ended(Lsn),
}

/// What the database knows of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunInfo {
    /// Its id.
    pub id: RunId,
    /// Its name (unique among active runs).
    pub name: String,
    /// The commit that began it.
    pub began: Lsn,
    /// Whether it still accepts writes.
    pub state: RunState,
}

/// The stored form of a run's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunRecord {
    pub name: String,
    pub ended: bool,
    /// The run and all its keys are removed (`Database::delete_run`); implies `ended`.
    pub deleted: bool,
}

impl RunRecord {
    /// `[flag: u8][name: utf-8]`, the flag 0 (active), 1 (ended) or 2 (deleted).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.name.len());
        let flag = match (self.deleted, self.ended) {
            (true, _) => 2,
            (false, ended) => u8::from(ended),
        };
        out.push(flag);
        out.extend_from_slice(self.name.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (&flag, name) = bytes.split_first().ok_or("empty run record")?;
        let (ended, deleted) = match flag {
            0 => (false, false),
            1 => (true, false),
            2 => (true, true),
            other => return Err(format!("run record flag {other}")),
        };
        let name = std::str::from_utf8(name)
            .map_err(|e| format!("run name is not UTF-8: {e}"))?
            .to_owned();
        Ok(RunRecord {
            name,
            ended,
            deleted,
        })
    }
}

pub(crate) fn run_key(run: RunId) -> Vec<u8> {
    let mut key = RUN_KEY_PREFIX.to_vec();
    key.extend_from_slice(&run.as_u128().to_be_bytes());
    key
}

pub(crate) fn run_of_key(key: &[u8]) -> Option<RunId> {
    let id = key.strip_prefix(RUN_KEY_PREFIX)?;
    Some(RunId::from_u128(u128::from_be_bytes(id.try_into().ok()?)))
}

/// A key of the state: its run, then its bytes (the order of a scan).
pub(crate) type Key = (u128, Bytes);

/// A value as the state holds it, shared by every view that has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    pub value: Bytes,
    pub version: Lsn,
}

impl Stored {
    /// The value as the API hands it out.
    pub fn to_versioned(&self) -> Versioned {
        Versioned {
            value: self.value.to_vec(),
            version: self.version,
        }
    }
}

/// One committed change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Cheap to clone (see the module doc).
#[derive(Clone, Debug, Default)]
pub(crate) struct State {
    /// Changed only through [`State::put`] and [`State::remove`] (outside tests), which keep
    /// `data_bytes`.
    pub data: OrdMap<Key, Stored>,
    /// The keys' and values' bytes in `data`: what the state adds to a snapshot, less its
    /// framing (automatic checkpoints compare its growth with the log's).
    pub data_bytes: u64,
    pub runs: OrdMap<u128, RunInfo>,
    /// Commits applied, through this LSN.
    pub applied_through: Lsn,
}

impl State {
    /// Applies one committed transaction of `run` at `version`, taking its buffers (a
    /// value is moved into the state, not copied).
    pub fn apply(&mut self, run: u128, version: Lsn, changes: Vec<Change>) -> Result<(), String> {
        for change in changes {
            match change {
                Change::Put(key, value) => {
                    if run == SYSTEM_RUN && self.apply_run_record(&key, &value, version)? {
                        // A deleted run leaves no record.
                        self.remove(&(run, Bytes::from(key)));
                        continue;
                    }
                    let value = Bytes::from(value);
                    self.put((run, Bytes::from(key)), Stored { value, version });
                }
                Change::Delete(key) => {
                    self.remove(&(run, Bytes::from(key)));
                }
            }
        }
        self.applied_through = self.applied_through.max(version);
        Ok(())
    }

    /// Sets `key` to `stored`, keeping [`State::data_bytes`].
    pub fn put(&mut self, key: Key, stored: Stored) {
        let key_len = key.1.len();
        let added = (key_len + stored.value.len()) as u64;
        let replaced = self.data.insert(key, stored);
        self.data_bytes = self.data_bytes.saturating_add(added);
        if let Some(old) = replaced {
            let gone = (key_len + old.value.len()) as u64;
            self.data_bytes = self.data_bytes.saturating_sub(gone);
        }
    }

    /// Removes `key`, keeping [`State::data_bytes`].
    pub fn remove(&mut self, key: &Key) {
        if let Some(old) = self.data.remove(key) {
            let gone = (key.1.len() + old.value.len()) as u64;
            self.data_bytes = self.data_bytes.saturating_sub(gone);
        }
    }

    /// The committed value of `key` in `run`.
    pub fn get(&self, run: u128, key: &[u8]) -> Option<Versioned> {
        let key = (run, Bytes::copy_from_slice(key));
        self.data.get(&key).map(Stored::to_versioned)
    }

    /// Every `(key, value)` of `run` whose key starts with `prefix`, in key order.
    pub fn scan(&self, run: u128, prefix: &[u8]) -> Vec<(Vec<u8>, Versioned)> {
        self.data
            .range((run, Bytes::copy_from_slice(prefix))..)
            .take_while(|((r, key), _)| *r == run && key.starts_with(prefix))
            .map(|((_, key), stored)| (key.to_vec(), stored.to_versioned()))
            .collect()
    }

    /// Moves every LSN the state holds (key versions, runs' beginnings and ends, the applied
    /// point) to `lsn`: for a state taken from another database, whose LSNs mean nothing in
    /// this database's log.
    pub fn rebase(&mut self, lsn: Lsn) {
        self.data = std::mem::take(&mut self.data)
            .into_iter()
            .map(|(key, stored)| {
                let version = lsn;
                (key, Stored { version, ..stored })
            })
            .collect();
        self.runs = std::mem::take(&mut self.runs)
            .into_iter()
            .map(|(id, mut info)| {
                info.began = lsn;
                if let RunState::Ended(at) = &mut info.state {
                    *at = lsn;
                }
                (id, info)
            })
            .collect();
        self.applied_through = lsn;
    }

    /// Applies a run record; `true` when it deletes the run (its keys are then removed).
    fn apply_run_record(&mut self, key: &[u8], value: &[u8], version: Lsn) -> Result<bool, String> {
        let id = run_of_key(key).ok_or_else(|| format!("system key {key:?} is not a run key"))?;
        let record = RunRecord::decode(value)?;
        if record.deleted {
            self.runs.remove(&id.as_u128());
            let run = id.as_u128();
            let all = (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded);
            let keys: Vec<Key> = crate::range::entries(self, run, &all)
                .map(|(key, _)| (run, key.clone()))
                .collect();
            for key in keys {
                self.remove(&key);
            }
            return Ok(true);
        }
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
        Ok(false)
    }
}

/// Whether a `Checkpoint` entry at `entry_lsn` naming `snapshot_lsn` marks a snapshot
/// install. An install logs its `Checkpoint` *before* writing the snapshot, at the snapshot's
/// own LSN; a checkpoint logs it after, always above the snapshot's LSN.
pub(crate) fn is_install_marker(entry_lsn: Lsn, snapshot_lsn: Lsn) -> bool {
    entry_lsn == snapshot_lsn
}

/// The run id of the `Checkpoint` entry that records an install that never took effect
/// (its snapshot write failed): `Checkpoint { run_id: ABANDONED_INSTALL_RUN, snapshot_lsn }`
/// names the install's marker, and lands after it and before every later commit or
/// checkpoint. To recovery it is a checkpoint's entry (above the LSN it names), which changes
/// nothing; the change feed reads it as the install's outcome. No run has this id.
pub const ABANDONED_INSTALL_RUN: u128 = u128::MAX;

/// The install marker an abandoned-install record names, when `entry` is one.
pub(crate) fn abandoned_install(entry: &ArchivedWalEntry) -> Option<Lsn> {
    match entry {
        ArchivedWalEntry::Checkpoint {
            run_id,
            snapshot_lsn,
        } if run_id.as_u128() == ABANDONED_INSTALL_RUN => Some(snapshot_lsn.to_native()),
        _ => None,
    }
}

/// Whether replay may go on past the install marker at `marker_lsn`, given the snapshot the
/// state was loaded from (`after`, 0 for none) and the snapshot files found unreadable:
///
/// | marker            | its snapshot file | replay                                        |
/// |-------------------|-------------------|-----------------------------------------------|
/// | at/below `after`  | any               | goes on: the loaded state holds the install   |
/// | above `after`     | unreadable        | stops: the log rebuilds the replaced state    |
/// | above `after`     | absent            | goes on: the install never put it in place    |
pub(crate) fn replays_past_install(marker_lsn: Lsn, after: Lsn, unreadable: &[Lsn]) -> bool {
    marker_lsn <= after || !unreadable.contains(&marker_lsn)
}

/// Replays the log into a [`State`], skipping the commits a snapshot already holds.
#[derive(Debug)]
pub(crate) struct StateReplay<'a> {
    pub state: &'a mut State,
    /// Commits at or below this LSN are in the snapshot the state was loaded from.
    pub after: Lsn,
    /// LSNs of the snapshot files present but unreadable at open.
    pub unreadable: &'a [Lsn],
    /// `(txn_id, head, commit)` of every spilled transaction replayed (committed above
    /// `after`): the log must keep their heads while a snapshot below them may be loaded.
    pub spills: Vec<(keel_wal::TxnId, Lsn, Lsn)>,
    /// LSN of the newest install marker replayed (0: none).
    pub last_install_marker: Lsn,
    /// Install markers above `after` replayed past: their snapshot is absent, the install
    /// never happened.
    pub failed_installs: Vec<Lsn>,
    /// The markers named by abandoned-install records above `after`
    /// ([`ABANDONED_INSTALL_RUN`]).
    pub abandoned: Vec<Lsn>,
}

impl Replay for StateReplay<'_> {
    /// Refuses to replay across a snapshot install whose snapshot is unreadable (see
    /// [`replays_past_install`]).
    fn checkpoint(&mut self, lsn: Lsn, entry: &ArchivedWalEntry) -> Result<(), ReplayError> {
        let ArchivedWalEntry::Checkpoint { snapshot_lsn, .. } = entry else {
            return Ok(());
        };
        if let Some(marker) = abandoned_install(entry) {
            self.abandoned.push(marker);
            return Ok(());
        }
        if !is_install_marker(lsn, snapshot_lsn.to_native()) {
            return Ok(());
        }
        self.last_install_marker = self.last_install_marker.max(lsn);
        if replays_past_install(lsn, self.after, self.unreadable) {
            if lsn > self.after {
                self.failed_installs.push(lsn);
            }
            return Ok(());
        }
        Err(format!(
            "a snapshot was installed at LSN {lsn}, but its snapshot is unreadable; the log \
             before it rebuilds the state the install replaced, so recovery stops (restore \
             that snapshot file, or install a fresh image into a new database)"
        )
        .into())
    }

    fn apply(&mut self, txn: &CommittedTxn<'_>) -> Result<(), ReplayError> {
        if txn.commit_lsn <= self.after {
            return Ok(());
        }
        // A transaction written in one unit is its entries and its commit, back to back;
        // anything longer began with a spill.
        if txn.first_lsn + (txn.entries().len() as Lsn) < txn.commit_lsn {
            self.spills
                .push((txn.txn_id, txn.first_lsn, txn.commit_lsn));
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
            .apply(txn.run_id.as_u128(), txn.commit_lsn, changes)
            .map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_entry_at_its_own_snapshot_lsn_marks_an_install() {
        assert!(is_install_marker(7, 7));
        assert!(!is_install_marker(8, 7));
    }

    #[test]
    fn replay_goes_on_past_an_install_the_loaded_snapshot_holds() {
        assert!(replays_past_install(7, 7, &[7]));
        assert!(replays_past_install(7, 9, &[]));
    }

    #[test]
    fn replay_stops_at_an_install_whose_snapshot_is_unreadable() {
        assert!(!replays_past_install(7, 3, &[9, 7]));
        assert!(!replays_past_install(7, 0, &[7]));
    }

    #[test]
    fn replay_goes_on_past_an_install_that_never_wrote_its_snapshot() {
        assert!(replays_past_install(7, 3, &[9]));
        assert!(replays_past_install(7, 0, &[]));
    }

    #[test]
    fn rebase_moves_every_lsn() {
        let mut state = State::default();
        let run = RunId::from_u128(5);
        let record = RunRecord {
            name: "r".into(),
            ended: false,
            deleted: false,
        };
        let begin = [Change::Put(run_key(run), record.encode())];
        state.apply(SYSTEM_RUN, 3, begin.to_vec()).unwrap();
        state
            .apply(5, 4, vec![Change::Put(b"k".to_vec(), b"v".to_vec())])
            .unwrap();
        let ended = RunRecord {
            ended: true,
            ..record
        };
        state
            .apply(
                SYSTEM_RUN,
                6,
                vec![Change::Put(run_key(run), ended.encode())],
            )
            .unwrap();
        state.rebase(100);
        assert_eq!(state.applied_through, 100);
        assert!(state.data.values().all(|v| v.version == 100));
        let info = &state.runs[&5];
        assert_eq!((info.began, info.state), (100, RunState::Ended(100)));
        assert_eq!(state.scan(5, b"")[0].1.value, b"v");
    }

    #[test]
    fn run_records_round_trip_and_a_delete_removes_the_run_and_its_keys() {
        for (ended, deleted) in [(false, false), (true, false), (true, true)] {
            let record = RunRecord {
                name: "name".into(),
                ended,
                deleted,
            };
            assert_eq!(RunRecord::decode(&record.encode()), Ok(record));
        }
        assert!(RunRecord::decode(&[3]).is_err());
        let mut state = State::default();
        for id in [5u128, 6] {
            let run = RunId::from_u128(id);
            let record = RunRecord {
                name: format!("r{id}"),
                ended: false,
                deleted: false,
            };
            let begin = vec![Change::Put(run_key(run), record.encode())];
            state.apply(SYSTEM_RUN, 1, begin).unwrap();
            let keys = (0..3)
                .map(|k| Change::Put(vec![k], b"v".to_vec()))
                .collect();
            state.apply(id, 2, keys).unwrap();
        }
        let delete = RunRecord {
            name: "r5".into(),
            ended: true,
            deleted: true,
        };
        let delete = vec![Change::Put(run_key(RunId::from_u128(5)), delete.encode())];
        state.apply(SYSTEM_RUN, 3, delete).unwrap();
        assert!(!state.runs.contains_key(&5));
        assert!(state.scan(5, b"").is_empty());
        assert_eq!(state.scan(6, b"").len(), 3);
        assert_eq!(
            state.scan(SYSTEM_RUN, b"").len(),
            1,
            "only run 6's record is left"
        );
    }

    /// The sum `data_bytes` keeps, recomputed.
    fn counted(state: &State) -> u64 {
        let bytes = state
            .data
            .iter()
            .map(|((_, key), s)| key.len() + s.value.len());
        bytes.sum::<usize>() as u64
    }

    #[test]
    fn data_bytes_follows_puts_overwrites_deletes_and_run_deletes() {
        let mut state = State::default();
        for id in [5u128, 6] {
            let record = RunRecord {
                name: format!("r{id}"),
                ended: false,
                deleted: false,
            };
            let begin = vec![Change::Put(run_key(RunId::from_u128(id)), record.encode())];
            state.apply(SYSTEM_RUN, 1, begin).unwrap();
        }
        let mut lsn = 2;
        // Deterministic: keys 0..40 in two runs, values of changing lengths.
        for step in 0u32..400 {
            let run = u128::from(5 + step % 2);
            let key = vec![(step * 7 % 40) as u8];
            let change = if step % 5 == 0 {
                Change::Delete(key)
            } else {
                Change::Put(key, vec![0; (step * 13 % 97) as usize])
            };
            state.apply(run, lsn, vec![change]).unwrap();
            lsn += 1;
            assert_eq!(state.data_bytes, counted(&state), "after step {step}");
        }
        assert!(state.data_bytes > 0);
        let delete = RunRecord {
            name: "r5".into(),
            ended: true,
            deleted: true,
        };
        let delete = vec![Change::Put(run_key(RunId::from_u128(5)), delete.encode())];
        state.apply(SYSTEM_RUN, lsn, delete).unwrap();
        assert_eq!(state.data_bytes, counted(&state), "after run 5's delete");
        state.rebase(lsn + 1);
        assert_eq!(state.data_bytes, counted(&state), "after a rebase");
    }
}
