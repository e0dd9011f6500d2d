//! Iterators over a range of one run's keys in an immutable view of the state, with a
//! transaction's own writes laid over it.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::Versioned;
use crate::range::{self, KeyRange};
use crate::state::State;

/// A transaction's own writes by key (`None`: a delete).
pub(crate) type OwnWrites = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The `(key, value)` pairs of a range of one run's keys, in key order from the front
/// (`next`) or the back (`next_back`), from an immutable view of the state: commits made
/// after the iterator was created do not show in it. Each step costs a lookup in the view
/// (O(log n)); the view itself was O(1) to take.
///
/// From [`Database::range`](crate::Database::range), [`Snapshot::range`](crate::Snapshot::range),
/// [`Transaction::range`](crate::Transaction::range) and their `prefix` forms. A
/// transaction's iterator shows its own writes (their `version` is 0) over its view.
#[derive(Debug)]
pub struct Iter {
    view: State,
    run: u128,
    /// A transaction's own writes in the range (`None`: a delete), taken at creation.
    own: OwnWrites,
    /// What is left to yield: narrowed from both ends as entries are.
    left: KeyRange,
}

impl Iter {
    pub(crate) fn new(view: State, run: u128, range: KeyRange, own: OwnWrites) -> Iter {
        Iter {
            view,
            run,
            own,
            left: range,
        }
    }

    /// The next entry from the front (`forward`) or the back: the view's, or the
    /// transaction's own write of the same key, which wins; own deletes are passed over.
    fn step(&mut self, forward: bool) -> Option<(Vec<u8>, Versioned)> {
        loop {
            if range::is_empty(&self.left) {
                return None;
            }
            let mut in_view = range::entries(&self.view, self.run, &self.left);
            let viewed = if forward {
                in_view.next()
            } else {
                in_view.next_back()
            };
            let viewed = viewed.map(|(key, stored)| (key.to_vec(), Some(stored.to_versioned())));
            let mut in_own = self.own.range(self.left.clone());
            let own = if forward {
                in_own.next()
            } else {
                in_own.next_back()
            };
            let own = own.map(|(key, value)| {
                let value = value.clone().map(|value| Versioned { value, version: 0 });
                (key.clone(), value)
            });
            let (key, value) = match (viewed, own) {
                (None, None) => return None,
                (Some(entry), None) | (None, Some(entry)) => entry,
                (Some(viewed), Some(own)) => {
                    if viewed.0 == own.0 || (own.0 < viewed.0) == forward {
                        own
                    } else {
                        viewed
                    }
                }
            };
            if forward {
                self.left.0 = Bound::Excluded(key.clone());
            } else {
                self.left.1 = Bound::Excluded(key.clone());
            }
            if let Some(value) = value {
                return Some((key, value));
            }
        }
    }
}

impl Iterator for Iter {
    type Item = (Vec<u8>, Versioned);

    fn next(&mut self) -> Option<Self::Item> {
        self.step(true)
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(false)
    }
}

impl std::iter::FusedIterator for Iter {}
