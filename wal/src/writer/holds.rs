//! Where the live tails ([`crate::Tail`]) read: the log a removal must keep for them, each
//! within its lag (see the tail module's retention notes).

use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed};

use crate::format::segment::SegmentFile;
use crate::ids::Lsn;
use crate::writer::sync::{AtomicBool, AtomicU64, Mutex, lock};

/// A live tail's position, as retention sees it.
#[derive(Debug, Default)]
pub(crate) struct Hold {
    /// The LSN the tail reads next.
    pub position: AtomicU64,
    /// An LSN below the position the tail's owner may go back to ([`crate::Tail::keep_from`]):
    /// the log is kept from the lower of the two. `Lsn::MAX`: none.
    pub kept_from: AtomicU64,
    /// Set when a removal let the tail go; `lag` says how far behind it was.
    pub fell_behind: AtomicBool,
    pub lag: AtomicU64,
}

/// The holds of the live tails.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    live: Mutex<Vec<Arc<Hold>>>,
}

impl Holds {
    /// A hold at `position`, keeping the log from `kept_from` too (`Lsn::MAX`: nothing
    /// below the position), both set before any removal can see it.
    pub(crate) fn add(&self, position: Lsn, kept_from: Lsn) -> Arc<Hold> {
        let hold = Arc::new(Hold::default());
        hold.position.store(position, Relaxed);
        hold.kept_from.store(kept_from, Relaxed);
        lock(&self.live).push(Arc::clone(&hold));
        hold
    }

    pub(crate) fn remove(&self, hold: &Arc<Hold>) {
        lock(&self.live).retain(|h| !Arc::ptr_eq(h, hold));
    }

    /// The LSN a removal below `lsn` may go up to with the live tails: the lowest position
    /// of those it would pass within `max_lag` bytes of log. The others are let go (marked,
    /// and forgotten; the caller wakes them). `segments` are the log's, oldest first, each
    /// `segment_bytes` long. Returns the LSN and whether a tail was let go.
    pub(crate) fn clamp(
        &self,
        lsn: Lsn,
        segments: &[SegmentFile],
        segment_bytes: u64,
        max_lag: u64,
    ) -> (Lsn, bool) {
        let mut live = lock(&self.live);
        let mut clamped = lsn;
        let mut let_go = false;
        // The segments a tail at `position` keeps: from the one holding `position` to the
        // one holding `lsn`, that one excluded (it stays anyway).
        let lag_of = |position: Lsn| {
            let kept = segments
                .windows(2)
                .filter(|pair| pair[1].first_lsn > position && pair[1].first_lsn <= lsn)
                .count() as u64;
            kept * segment_bytes
        };
        live.retain(|hold| {
            // The keep first: a reader that moves back and then lets its keep go stores its
            // position before the keep (`Release`), so a removal that sees the keep gone
            // (`Acquire`) sees the position it moved back to.
            let kept_from = hold.kept_from.load(Acquire);
            let own = hold.position.load(Acquire);
            let mut position = own.min(kept_from);
            if position >= lsn {
                return true;
            }
            let mut lag = lag_of(position);
            if lag > max_lag && position < own {
                // What the tail keeps below its position is what puts it past its lag: that
                // keep goes (a seek back to it finds the log removed), not the tail.
                hold.kept_from.store(Lsn::MAX, Relaxed);
                position = own;
                if position >= lsn {
                    return true;
                }
                lag = lag_of(position);
            }
            if lag > max_lag {
                hold.lag.store(lag, Relaxed);
                hold.fell_behind.store(true, Relaxed);
                let_go = true;
                return false;
            }
            clamped = clamped.min(position);
            true
        });
        (clamped, let_go)
    }
}
