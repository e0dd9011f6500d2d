//! Ranges of keys within a run: their bounds, and the entries of a state in one.

use std::ops::{Bound, RangeBounds};

use bytes::Bytes;

use crate::state::{Key, State, Stored};

/// A range of keys (of one run).
pub(crate) type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// `range` with its bounds owned.
pub(crate) fn owned<K: AsRef<[u8]>>(range: &impl RangeBounds<K>) -> KeyRange {
    let owned = |bound: Bound<&K>| bound.map(|key| key.as_ref().to_vec());
    (owned(range.start_bound()), owned(range.end_bound()))
}

/// Whether `range` holds no key (its start above its end, or at it with either excluded).
pub(crate) fn is_empty(range: &KeyRange) -> bool {
    match (&range.0, &range.1) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e))
        | (Bound::Excluded(s), Bound::Included(e)) => s >= e,
        _ => false,
    }
}

/// The range of keys that start with `prefix`.
pub(crate) fn prefix_range(prefix: &[u8]) -> KeyRange {
    let mut end = prefix.to_vec();
    while end.last() == Some(&u8::MAX) {
        end.pop();
    }
    let end = match end.last_mut() {
        Some(last) => {
            *last += 1;
            Bound::Excluded(end)
        }
        None => Bound::Unbounded,
    };
    (Bound::Included(prefix.to_vec()), end)
}

/// Whether `key` lies in `range`.
pub(crate) fn contains(range: &KeyRange, key: &[u8]) -> bool {
    let above = match &range.0 {
        Bound::Included(start) => key >= start.as_slice(),
        Bound::Excluded(start) => key > start.as_slice(),
        Bound::Unbounded => true,
    };
    let below = match &range.1 {
        Bound::Included(end) => key <= end.as_slice(),
        Bound::Excluded(end) => key < end.as_slice(),
        Bound::Unbounded => true,
    };
    above && below
}

/// The entries of `run` in `range`, in key order (none for an empty or inverted range).
pub(crate) fn entries<'a>(
    state: &'a State,
    run: u128,
    range: &KeyRange,
) -> impl DoubleEndedIterator<Item = (&'a Bytes, &'a Stored)> + 'a {
    let empty = is_empty(range);
    let start: Bound<Key> = match &range.0 {
        Bound::Included(s) => Bound::Included((run, Bytes::copy_from_slice(s))),
        Bound::Excluded(s) => Bound::Excluded((run, Bytes::copy_from_slice(s))),
        Bound::Unbounded => Bound::Included((run, Bytes::new())),
    };
    let end: Bound<Key> = match &range.1 {
        Bound::Included(e) => Bound::Included((run, Bytes::copy_from_slice(e))),
        Bound::Excluded(e) => Bound::Excluded((run, Bytes::copy_from_slice(e))),
        Bound::Unbounded => match run.checked_add(1) {
            Some(next) => Bound::Excluded((next, Bytes::new())),
            None => Bound::Unbounded,
        },
    };
    let bounds = if empty {
        // An empty range that imbl accepts.
        let at = (run, Bytes::new());
        (Bound::Excluded(at.clone()), Bound::Included(at))
    } else {
        (start, end)
    };
    state
        .data
        .range(bounds)
        .map(|((_, key), stored)| (key, stored))
}
