//! Completion: posted completions reaped, each round judged when its last operation is in,
//! and a finished chain handed back.

use std::io;

use super::round::{Action, RoundVerdict, WriteOutcome, classify, judge_round};
use super::{ChainError, Completion, InFlight, MAX_IDLE_ROUNDS, OP_WRITE, UringBackend, WAKE};

impl UringBackend {
    /// Takes every posted completion and settles the rounds they finish.
    pub(super) fn drain_completions(&mut self) {
        let posted: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (user_data, result) in posted {
            if user_data == WAKE {
                self.woke();
                continue;
            }
            let slot = usize::try_from(user_data >> 1).expect("slot index");
            let Some(chain) = self.slots[slot].as_mut() else {
                assert!(
                    self.abandoned.is_some(),
                    "completion of a chain: slot {slot} is empty"
                );
                continue;
            };
            chain.pending -= 1;
            if user_data & 1 == OP_WRITE {
                record_write(chain, result);
            } else {
                chain.round_sync = Some(result);
            }
            if chain.pending == 0 {
                self.complete_round(slot);
            }
        }
    }

    /// Judges a finished round (see the module table): done, failed, or another round.
    fn complete_round(&mut self, slot: usize) {
        let chain = self.slots[slot].as_mut().expect("an occupied slot");
        if next_round(chain) {
            self.push_round(slot);
            return;
        }
        let chain = self.slots[slot].take().expect("an occupied slot");
        self.free.push(slot);
        self.ready.push_back(Completion {
            id: chain.id,
            result: chain.error.map_or(Ok(()), Err),
            buf: chain.buf,
        });
        self.release_held();
    }
}

/// Whether a chain whose round finished takes another one; when not, it is done, and its
/// `error` (if any) is its failure.
fn next_round(chain: &mut InFlight) -> bool {
    let total = chain.total();
    let write = if chain.error.is_some() {
        WriteOutcome::Failed
    } else if chain.write_again || chain.written < total {
        WriteOutcome::Incomplete
    } else {
        WriteOutcome::Complete
    };
    match judge_round(write, chain.round_sync) {
        RoundVerdict::Succeed | RoundVerdict::FailWrite => false,
        RoundVerdict::FailSync(errno) => {
            chain.error = Some(ChainError {
                operation: "fdatasync",
                error: io::Error::from_raw_os_error(errno),
            });
            false
        }
        RoundVerdict::Again => !gave_up(chain, total),
    }
}

/// Counts a round without progress; past [`MAX_IDLE_ROUNDS`] the chain fails (returns true).
fn gave_up(chain: &mut InFlight, total: usize) -> bool {
    chain.idle_rounds += 1;
    if chain.idle_rounds <= MAX_IDLE_ROUNDS {
        return false;
    }
    chain.error = Some(ChainError {
        operation: if chain.written < total {
            "write"
        } else {
            "fdatasync"
        },
        error: io::Error::other(format!("no progress after {MAX_IDLE_ROUNDS} reissues")),
    });
    true
}

/// Accounts a write completion: progress, a retryable interruption, or the chain's error.
fn record_write(chain: &mut InFlight, result: i32) {
    match usize::try_from(result) {
        Ok(0) => chain.write_again = true,
        Ok(n) => {
            chain.written += n;
            chain.idle_rounds = 0;
            let total = chain.total();
            chain.write_again = chain.written < total;
        }
        Err(_) => match classify(-result) {
            Action::Retry | Action::Cancelled => chain.write_again = true,
            Action::Fail => {
                chain.error = Some(ChainError {
                    operation: "write",
                    error: io::Error::from_raw_os_error(-result),
                });
            }
        },
    }
}
