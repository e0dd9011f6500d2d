//! Isolation: what a transaction read, from which view, and the check at its commit.
//!
//! A transaction reads from one view of the state, taken at its first read (an O(1) clone of
//! the persistent maps), plus its own writes. Under `Serializable`, a first read that is a
//! point read takes no view (see `Reads::lone`): the view is taken at the second read, with
//! the first read's key checked unchanged in it (else that read is refused with a
//! conflict), so every read is still of one view. Its commit is checked under the `pending` lock,
//! where commits are appended, against the state and the commits queued and not yet applied:
//!
//! - [`Isolation::Serializable`]: every key it read (present or absent) and every range it
//!   scanned must be as the view had them: the same version, or still absent. Then its
//!   reads are those of the state just before its commit, so the commits run as if one at a
//!   time in LSN order.
//! - [`Isolation::Snapshot`]: only the keys it writes are checked (the first committer wins):
//!   no lost updates, but two transactions that each read what the other writes may both
//!   commit (write skew).
//!
//! A transaction that never read has no view and nothing to check: it is ordered at its
//! commit. A conflict names the first key found changed.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::super::commit::PendingQueue;
use crate::range::{KeyRange, contains, entries};
use crate::state::{Change, State};
use keel_wal::Lsn;

/// How a transaction's commit is checked against the commits made after its first read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Isolation {
    /// Commits behave as if run one at a time in commit order: a commit fails with
    /// [`Error::Conflict`](crate::Error::Conflict) when a key it read, or a key in a range it
    /// scanned, was changed (written, deleted or created) by a commit after its first read.
    #[default]
    Serializable,
    /// Snapshot isolation: a commit fails with [`Error::Conflict`](crate::Error::Conflict)
    /// only when a key it writes was changed after its first read. Cheaper to check (nothing
    /// read is recorded), but two transactions may each read what the other writes and both
    /// commit (write skew).
    Snapshot,
}

/// The view a transaction reads from, and what it read there.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    /// Taken at the first read; under `Serializable`, at the second (see [`Reads::lone`]).
    view: Option<State>,
    /// Under `Serializable`, a first read that is a point read is made on the state as it is,
    /// with no view: its key and the version it saw (`None`: absent). A transaction whose
    /// only read it is (a read-modify-write of one key) then holds no view, and commits
    /// applied meanwhile copy no node for it. A second read takes the view and checks this
    /// key unchanged in it, so every read is of that one view; the commit checks it as any
    /// read key.
    lone: Option<(Vec<u8>, Option<Lsn>)>,
    /// Keys read from the view (recorded under `Serializable` only).
    keys: BTreeSet<Vec<u8>>,
    /// Ranges scanned in the view (recorded under `Serializable` only).
    ranges: Vec<KeyRange>,
}

impl Reads {
    /// The view, taken by `take` if not yet: `Err` names the key of a lone read (see
    /// [`Reads::lone`]) that changed since it was read, so no view holds both it and the
    /// reads to come.
    pub fn view(&mut self, run: u128, take: impl FnOnce() -> State) -> Result<&State, Vec<u8>> {
        if self.view.is_none() {
            let view = take();
            if let Some((key, seen)) = &self.lone
                && version(&view, run, key) != *seen
            {
                return Err(key.clone());
            }
            self.view = Some(view);
        }
        Ok(self.view.as_ref().expect("taken above"))
    }

    /// Whether the next read may be a lone read: the first of a serializable transaction.
    pub fn may_read_alone(&self, isolation: Isolation) -> bool {
        isolation == Isolation::Serializable && self.view.is_none() && self.lone.is_none()
    }

    /// Records a lone read of `key`, which saw `version`.
    pub fn note_lone(&mut self, key: &[u8], version: Option<Lsn>) {
        self.lone = Some((key.to_vec(), version));
        self.keys.insert(key.to_vec());
    }

    /// Whether the transaction read anything from the state (else there is nothing to check).
    pub fn has_view(&self) -> bool {
        self.view.is_some() || self.lone.is_some()
    }

    pub fn note_key(&mut self, isolation: Isolation, key: &[u8]) {
        if isolation == Isolation::Serializable && !self.keys.contains(key) {
            self.keys.insert(key.to_vec());
        }
    }

    pub fn note_range(&mut self, isolation: Isolation, range: KeyRange) {
        if isolation == Isolation::Serializable {
            self.ranges.push(range);
        }
    }

    /// The first key that breaks `isolation` for a commit of `writes` to `run`, given the
    /// `current` state and the commits queued after it (`pending`); `None`: it may commit.
    pub fn conflict(
        &self,
        isolation: Isolation,
        run: u128,
        writes: &[Change],
        current: &State,
        pending: &PendingQueue,
    ) -> Option<Vec<u8>> {
        if self.view.is_none() {
            return self.lone_conflict(run, current, pending);
        }
        let view = self.view.as_ref()?;
        let written: BTreeSet<&[u8]> = match isolation {
            Isolation::Serializable => BTreeSet::new(),
            Isolation::Snapshot => writes.iter().map(change_key).collect(),
        };
        let watched = |key: &[u8]| match isolation {
            Isolation::Serializable => {
                self.keys.contains(key) || self.ranges.iter().any(|r| contains(r, key))
            }
            Isolation::Snapshot => written.contains(key),
        };
        // Queued commits are newer than any view (a view applies every acknowledged one).
        let queued = pending.iter().flat_map(|commit| commit.writes_of(run));
        if let Some(key) = queued.into_iter().find(|key| watched(key)) {
            return Some(key.to_vec());
        }
        if view.data.ptr_eq(&current.data) {
            return None;
        }
        let points: Box<dyn Iterator<Item = &[u8]>> = match isolation {
            Isolation::Serializable => Box::new(self.keys.iter().map(Vec::as_slice)),
            Isolation::Snapshot => Box::new(written.iter().copied()),
        };
        for key in points {
            if version(view, run, key) != version(current, run, key) {
                return Some(key.to_vec());
            }
        }
        self.ranges
            .iter()
            .find_map(|range| first_difference(view, current, run, range))
    }
}

impl Reads {
    /// [`Reads::conflict`] for a transaction whose only read is a lone read: its key changed
    /// since, in the state or in a queued commit.
    fn lone_conflict(&self, run: u128, current: &State, pending: &PendingQueue) -> Option<Vec<u8>> {
        let (key, seen) = self.lone.as_ref()?;
        let queued = pending.iter().flat_map(|commit| commit.writes_of(run));
        let changed =
            queued.into_iter().any(|k| k == key.as_slice()) || version(current, run, key) != *seen;
        changed.then(|| key.clone())
    }
}

fn change_key(change: &Change) -> &[u8] {
    match change {
        Change::Put(key, _) | Change::Delete(key) => key,
    }
}

fn version(state: &State, run: u128, key: &[u8]) -> Option<Lsn> {
    let key = (run, Bytes::copy_from_slice(key));
    state.data.get(&key).map(|stored| stored.version)
}

/// The first key of `run` in `range` whose version differs between `view` and `current`
/// (written, created or deleted since).
fn first_difference(view: &State, current: &State, run: u128, range: &KeyRange) -> Option<Vec<u8>> {
    let mut old = entries(view, run, range).peekable();
    let mut new = entries(current, run, range).peekable();
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => return None,
            (Some((key, _)), None) | (None, Some((key, _))) => return Some(key.to_vec()),
            (Some((a, va)), Some((b, vb))) => {
                if a != b {
                    return Some(a.min(b).to_vec());
                }
                if va.version != vb.version {
                    return Some(a.to_vec());
                }
                old.next();
                new.next();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Bound;

    use super::*;
    use crate::state::Stored;

    fn state(keys: &[(u128, &[u8])]) -> State {
        let mut state = State::default();
        for &(run, key) in keys {
            let stored = Stored {
                value: Bytes::from_static(b"v"),
                version: 1,
            };
            state
                .data
                .insert((run, Bytes::copy_from_slice(key)), stored);
        }
        state
    }

    fn keys(state: &State, run: u128, range: &KeyRange) -> Vec<Vec<u8>> {
        entries(state, run, range)
            .map(|(k, _)| k.to_vec())
            .collect()
    }

    /// Unbounded ends stay inside the run, the last run (`u128::MAX`) and the first (0)
    /// included; empty and inverted ranges of every bound kind read nothing.
    #[test]
    fn ranges_stay_within_their_run_at_the_ends_of_the_id_space() {
        let s = state(&[
            (0, b"a"),
            (1, b""),
            (1, b"b"),
            (u128::MAX - 1, b"z"),
            (u128::MAX, b""),
            (u128::MAX, b"m"),
        ]);
        let all: KeyRange = (Bound::Unbounded, Bound::Unbounded);
        assert_eq!(keys(&s, 0, &all), [b"a".to_vec()]);
        assert_eq!(keys(&s, 1, &all), [b"".to_vec(), b"b".to_vec()]);
        assert_eq!(keys(&s, u128::MAX - 1, &all), [b"z".to_vec()]);
        assert_eq!(keys(&s, u128::MAX, &all), [b"".to_vec(), b"m".to_vec()]);
        let from_m: KeyRange = (Bound::Excluded(b"".to_vec()), Bound::Unbounded);
        assert_eq!(keys(&s, u128::MAX, &from_m), [b"m".to_vec()]);
        let below_empty: KeyRange = (Bound::Unbounded, Bound::Excluded(b"".to_vec()));
        assert!(keys(&s, u128::MAX, &below_empty).is_empty());
        assert!(keys(&s, 1, &below_empty).is_empty());
        let up_to_empty: KeyRange = (Bound::Unbounded, Bound::Included(b"".to_vec()));
        assert_eq!(keys(&s, 1, &up_to_empty), [b"".to_vec()]);
        let inverted = [
            (
                Bound::Included(b"m".to_vec()),
                Bound::Included(b"a".to_vec()),
            ),
            (
                Bound::Excluded(b"m".to_vec()),
                Bound::Excluded(b"m".to_vec()),
            ),
            (
                Bound::Excluded(b"m".to_vec()),
                Bound::Included(b"m".to_vec()),
            ),
            (
                Bound::Included(b"m".to_vec()),
                Bound::Excluded(b"m".to_vec()),
            ),
            (
                Bound::Excluded(b"".to_vec()),
                Bound::Excluded(b"\0".to_vec()),
            ),
        ];
        for range in inverted {
            assert!(keys(&s, u128::MAX, &range).is_empty(), "{range:?}");
            assert!(keys(&s, 1, &range).is_empty(), "{range:?}");
        }
        // A changed key of the next run is no difference in this one.
        let mut t = s.clone();
        t.data.insert(
            (u128::MAX, Bytes::from_static(b"m")),
            Stored {
                value: Bytes::from_static(b"w"),
                version: 2,
            },
        );
        assert_eq!(first_difference(&s, &t, u128::MAX - 1, &all), None);
        assert_eq!(
            first_difference(&s, &t, u128::MAX, &all),
            Some(b"m".to_vec())
        );
    }
}
