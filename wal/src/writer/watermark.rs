//! A watermark over LSN ranges that complete out of order: `through` is the end of the
//! contiguous prefix of completed ranges. Completions of pipelined chains arrive in any order;
//! only the prefix is ever reported durable or written.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;

use crate::ids::Lsn;
use crate::writer::completion::Resolver;
use crate::writer::stats::Counters;

/// Commits waiting for an LSN to be written or durable, in LSN order.
pub(crate) type Waiters = VecDeque<(Lsn, Resolver)>;

/// Publishes the watermarks, calls `acknowledged` with them, then releases the waiters they
/// cover, oldest first. The counters are stored before any resolution, so whoever learns of
/// a commit from its resolution reads counters at or past it (and what the hook did); they
/// only grow, since the watermarks do and only the writer thread stores them.
pub(crate) fn publish(
    counters: &Counters,
    (written, durable): (Lsn, Lsn),
    acknowledged: &dyn Fn(Lsn, Lsn),
    written_waiters: &mut Waiters,
    durable_waiters: &mut Waiters,
) {
    counters.written_lsn.store(written, Relaxed);
    counters.durable_lsn.store(durable, Relaxed);
    acknowledged(written, durable);
    for (waiters, through) in [(written_waiters, written), (durable_waiters, durable)] {
        while waiters.front().is_some_and(|(lsn, _)| *lsn <= through) {
            let (lsn, resolver) = waiters.pop_front().expect("checked");
            resolver.resolve(Ok(lsn));
        }
    }
}

#[derive(Debug)]
pub(crate) struct Watermark {
    through: Lsn,
    pending: BTreeMap<Lsn, Lsn>,
}

impl Watermark {
    /// A watermark with everything up to `through` complete.
    pub(crate) fn new(through: Lsn) -> Self {
        Watermark {
            through,
            pending: BTreeMap::new(),
        }
    }

    /// The end of the contiguous complete prefix.
    pub(crate) fn through(&self) -> Lsn {
        self.through
    }

    /// Every complete range at or above `from`: the prefix (clipped) and the ranges complete
    /// beyond it.
    pub(crate) fn complete_ranges_from(&self, from: Lsn) -> Vec<(Lsn, Lsn)> {
        let prefix = (self.through >= from).then_some((from, self.through));
        let beyond = self
            .pending
            .iter()
            .filter(|&(_, &end)| end >= from)
            .map(|(&start, &end)| (start.max(from), end));
        prefix.into_iter().chain(beyond).collect()
    }

    /// Marks `first..=last` complete and advances over whatever became contiguous.
    pub(crate) fn complete(&mut self, first: Lsn, last: Lsn) {
        assert!(first <= last, "empty range {first}..={last}");
        if last <= self.through {
            return;
        }
        let end = self.pending.entry(first).or_insert(last);
        *end = (*end).max(last);
        while let Some((&start, &end)) = self.pending.first_key_value() {
            if start > self.through + 1 {
                break;
            }
            self.pending.pop_first();
            self.through = self.through.max(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_only_over_the_contiguous_prefix() {
        let mut mark = Watermark::new(0);
        mark.complete(4, 6);
        assert_eq!(mark.through(), 0);
        mark.complete(2, 3);
        assert_eq!(mark.through(), 0);
        mark.complete(1, 1);
        assert_eq!(mark.through(), 6);
        mark.complete(3, 9);
        assert_eq!(mark.through(), 9);
        mark.complete(5, 5);
        assert_eq!(mark.through(), 9);
        mark.complete(12, 14);
        mark.complete(20, 20);
        assert_eq!(
            mark.complete_ranges_from(4),
            vec![(4, 9), (12, 14), (20, 20)]
        );
        assert_eq!(mark.complete_ranges_from(13), vec![(13, 14), (20, 20)]);
    }
}

/// Model checks of durable-position publication (`RUSTFLAGS="--cfg loom" cargo test -p
/// keel-wal --lib loom`): under every interleaving, a commit resolves exactly once with its
/// LSN, a reader told of it reads the durable position at or past it, and the position a
/// reader polls never goes back.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn loom_the_durable_position_is_published_before_commits_resolve_and_never_goes_back() {
        loom::model(|| {
            let counters = Arc::new(Counters::default());
            let (r1, f1) = Resolver::pair();
            let (r2, f2) = Resolver::pair();
            let writer = {
                let counters = Arc::clone(&counters);
                loom::thread::spawn(move || {
                    let mut written = Waiters::new();
                    let mut durable: Waiters = [(1, r1), (2, r2)].into_iter().collect();
                    publish(&counters, (1, 1), &|_, _| {}, &mut written, &mut durable);
                    publish(&counters, (2, 2), &|_, _| {}, &mut written, &mut durable);
                    assert!(durable.is_empty());
                })
            };
            let poller = {
                let counters = Arc::clone(&counters);
                loom::thread::spawn(move || {
                    let first = counters.durable_lsn.load(Relaxed);
                    let second = counters.durable_lsn.load(Relaxed);
                    assert!(second >= first, "the durable position went back");
                })
            };
            assert_eq!(f1.wait().unwrap(), 1);
            assert!(counters.durable_lsn.load(Relaxed) >= 1);
            assert_eq!(f2.wait().unwrap(), 2);
            assert_eq!(counters.durable_lsn.load(Relaxed), 2);
            writer.join().unwrap();
            poller.join().unwrap();
        });
    }
}
