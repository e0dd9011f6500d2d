//! The policy of a chain's rounds, as pure functions: what an errno means ([`classify`]) and
//! what follows a finished round ([`judge_round`]; the module documentation of `uring` has
//! the table).

/// What to do with a failed operation's errno.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    /// Reissue the operation: nothing was lost.
    Retry,
    /// The operation was cancelled because an earlier one in its link failed or was short;
    /// the round's other outcome decides.
    Cancelled,
    /// The chain fails with this error and the log is poisoned.
    Fail,
}

/// The errno table of the ring operations, on purpose for each errno the kernel documents
/// for `pwrite`, `fdatasync` and `fallocate`:
///
/// | errno                           | write  | fdatasync | why                                      |
/// |---------------------------------|--------|-----------|------------------------------------------|
/// | EINTR, EAGAIN                   | retry  | retry     | interrupted before doing anything         |
/// | ECANCELED                       | cancel | cancel    | an earlier linked operation failed/short  |
/// | EIO                             | fail   | fail      | device error; a failed sync is never retried (fsyncgate) |
/// | ENOSPC, EDQUOT                  | fail   | fail      | out of space or quota: surfaced as such   |
/// | EFBIG, EOVERFLOW, EINVAL        | fail   | fail      | offset or length the file cannot take     |
/// | EBADF, EFAULT, EPERM, EROFS     | fail   | fail      | the file or buffer is not usable          |
/// | anything else                   | fail   | fail      | unknown: never guessed to be harmless     |
pub fn classify(errno: i32) -> Action {
    match errno {
        libc::EINTR | libc::EAGAIN => Action::Retry,
        libc::ECANCELED => Action::Cancelled,
        _ => Action::Fail,
    }
}

/// How a round's write ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WriteOutcome {
    /// Failed with an error that is not retryable.
    Failed,
    /// Short, or interrupted (EINTR, EAGAIN, ECANCELED): bytes remain to be written.
    Incomplete,
    /// Every byte of the chain's buffer is written (also when the round had no write).
    Complete,
}

/// What follows a finished round.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RoundVerdict {
    /// The chain succeeds.
    Succeed,
    /// The chain fails with its write's error.
    FailWrite,
    /// The chain fails with this fdatasync errno.
    FailSync(i32),
    /// Another round: the rest of the write (if any) and a new sync.
    Again,
}

/// Judges a finished round from its write's outcome and its sync's result (`None`: no sync
/// in the round; a negative errno on failure). The `uring` module documentation has the
/// table.
pub fn judge_round(write: WriteOutcome, sync: Option<i32>) -> RoundVerdict {
    let sync_action = sync.filter(|&r| r < 0).map(|r| (-r, classify(-r)));
    match (write, sync_action) {
        (WriteOutcome::Failed, _) => RoundVerdict::FailWrite,
        (_, Some((errno, Action::Fail))) => RoundVerdict::FailSync(errno),
        (WriteOutcome::Incomplete, _) => RoundVerdict::Again,
        (WriteOutcome::Complete, Some((_, Action::Retry | Action::Cancelled))) => {
            RoundVerdict::Again
        }
        (WriteOutcome::Complete, None) => RoundVerdict::Succeed,
    }
}

#[cfg(test)]
mod tests {
    use super::{Action, RoundVerdict, WriteOutcome, classify, judge_round};

    /// One assertion per row of the round table in the `uring` module documentation.
    #[test]
    fn every_round_outcome_has_a_verdict() {
        use RoundVerdict::{Again, FailSync, FailWrite, Succeed};
        use WriteOutcome::{Complete, Failed, Incomplete};
        let (eio, canceled, intr) = (-libc::EIO, -libc::ECANCELED, -libc::EINTR);
        for sync in [None, Some(0), Some(eio), Some(canceled)] {
            assert_eq!(judge_round(Failed, sync), FailWrite, "{sync:?}");
        }
        assert_eq!(judge_round(Incomplete, Some(eio)), FailSync(libc::EIO));
        for sync in [
            None,
            Some(0),
            Some(canceled),
            Some(intr),
            Some(-libc::EAGAIN),
        ] {
            assert_eq!(judge_round(Incomplete, sync), Again, "{sync:?}");
        }
        assert_eq!(judge_round(Complete, Some(eio)), FailSync(libc::EIO));
        for sync in [Some(canceled), Some(intr), Some(-libc::EAGAIN)] {
            assert_eq!(judge_round(Complete, sync), Again, "{sync:?}");
        }
        for sync in [None, Some(0)] {
            assert_eq!(judge_round(Complete, sync), Succeed, "{sync:?}");
        }
    }

    /// One assertion per row of the errno table in `classify`'s documentation.
    #[test]
    fn every_errno_has_a_deliberate_action() {
        for errno in [libc::EINTR, libc::EAGAIN] {
            assert_eq!(classify(errno), Action::Retry, "errno {errno}");
        }
        assert_eq!(classify(libc::ECANCELED), Action::Cancelled);
        for errno in [
            libc::EIO,
            libc::ENOSPC,
            libc::EDQUOT,
            libc::EFBIG,
            libc::EOVERFLOW,
            libc::EINVAL,
            libc::EBADF,
            libc::EFAULT,
            libc::EPERM,
            libc::EROFS,
            libc::ENODEV,
            9999,
        ] {
            assert_eq!(classify(errno), Action::Fail, "errno {errno}");
        }
    }
}
