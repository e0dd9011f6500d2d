//! A watermark over LSN ranges that complete out of order: `through` is the end of the
//! contiguous prefix of completed ranges. Completions of pipelined chains arrive in any order;
//! only the prefix is ever reported durable or written.

use std::collections::BTreeMap;

use crate::ids::Lsn;

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
