//! What recovery found and did.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use keel_wal::Lsn;

use crate::policy::{Decision, Finding, RecoveryPolicy};

/// One anomaly: where, what, and what was done about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    /// The segment (or other file) it was found in.
    pub path: PathBuf,
    /// Byte offset in that file (0 for whole-file findings).
    pub offset: u64,
    /// What was found.
    pub finding: Finding,
    /// What the policy decided about it ([`crate::decide`]).
    pub decision: Decision,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {}: {} ({})",
            self.path.display(),
            self.offset,
            self.finding,
            self.decision
        )
    }
}

/// The outcome of a recovery: fields for programs, `Display` for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The policy the findings were judged under.
    pub policy: RecoveryPolicy,
    /// The LSN the caller's snapshot covers, if it gave one: nothing at or below it was
    /// handed to the sink.
    pub covered_through: Option<Lsn>,
    /// A dry run: nothing on disk was changed; the truncation and discard fields say what
    /// a recovery would have done.
    pub dry_run: bool,
    /// The LSN at which the log was cut (truncated): it and everything after it are gone.
    pub cut_at: Option<Lsn>,
    /// Ranges of LSNs `from..=to` lost to skipped damage (`SkipCorrupted`, or covered by the
    /// snapshot), in log order; a cut is in `cut_at`.
    pub lsns_lost: Vec<(Lsn, Lsn)>,
    /// Segments read.
    pub segments: usize,
    /// Valid records read (replayed or not).
    pub records: u64,
    /// Bytes those records take on disk.
    pub bytes: u64,
    /// Committed transactions handed to the sink.
    pub txns_applied: u64,
    /// Transactions ended by `AbortTxn`, dropped.
    pub txns_aborted: u64,
    /// Transactions with no commit or `AbortTxn` in the recovered log, dropped.
    pub txns_incomplete: u64,
    /// Transactions committed above the covered LSN but not read whole (a
    /// `PartialTransaction` finding each), dropped. Every transaction met is counted once:
    /// applied, aborted, incomplete, partial or covered.
    pub txns_partial: u64,
    /// Transactions committed at or below the covered LSN: the caller's snapshot holds them;
    /// not handed to the sink, whole or not.
    pub txns_covered: u64,
    /// `Checkpoint` entries seen.
    pub checkpoints: u64,
    /// `Payload` entries seen (records of components built on the log).
    pub payloads: u64,
    /// Non-zero bytes zeroed by truncation.
    pub bytes_truncated: u64,
    /// Segments renamed to `*.discarded` by truncation.
    pub segments_discarded: Vec<PathBuf>,
    /// LSNs lost to skipped damage (under `SkipCorrupted`, or covered by the snapshot), each
    /// counted once. Not counted: LSNs beyond the last verifiable record of a log whose end
    /// was skipped (nothing verifiable says how many there were).
    pub lsns_skipped: u64,
    /// Every anomaly, in the order found.
    pub anomalies: Vec<Anomaly>,
    /// The first LSN of the recovered log (`None` when it holds no record).
    pub first_lsn: Option<Lsn>,
    /// The last LSN of the recovered log (`None` when it holds no record).
    pub last_lsn: Option<Lsn>,
    /// The LSN the next append gets.
    pub next_lsn: Lsn,
    /// The most bytes open transactions held at once.
    pub peak_txn_bytes: usize,
    /// The highest transaction id in any record read, committed or not: a writer must not
    /// reuse it (an incomplete transaction's entries stay in the log).
    pub max_txn_id: Option<keel_wal::TxnId>,
    /// How long the recovery took, repair included.
    pub duration: Duration,
}

impl RecoveryReport {
    /// True when nothing unusual was found.
    pub fn is_clean(&self) -> bool {
        self.anomalies.is_empty()
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments == 0 && self.anomalies.is_empty() {
            return write!(f, "recovery ({}): no log yet (a new database)", self.policy);
        }
        let what = if self.dry_run { "dry run" } else { "recovery" };
        write!(f, "{what} ({}) in {:.1?}", self.policy, self.duration)?;
        match self.covered_through {
            Some(lsn) => writeln!(f, "; a snapshot covers up to LSN {lsn}")?,
            None => writeln!(f)?,
        }
        let range = match (self.first_lsn, self.last_lsn) {
            (Some(first), Some(last)) => format!("LSN {first} to {last}"),
            _ => "no records".to_string(),
        };
        writeln!(
            f,
            "  {} segments, {} records, {} bytes ({range}); next LSN {}",
            self.segments, self.records, self.bytes, self.next_lsn
        )?;
        write!(
            f,
            "  transactions: {} applied, {} aborted, {} incomplete",
            self.txns_applied, self.txns_aborted, self.txns_incomplete,
        )?;
        if self.txns_partial > 0 {
            write!(f, ", {} partial (dropped)", self.txns_partial)?;
        }
        if self.covered_through.is_some() {
            write!(f, ", {} covered by the snapshot", self.txns_covered)?;
        }
        writeln!(
            f,
            "; {} checkpoints; {} payloads",
            self.checkpoints, self.payloads
        )?;
        if self.bytes_truncated > 0 || !self.segments_discarded.is_empty() {
            let (zeroed, discarded) = match self.dry_run {
                true => ("would be zeroed", "would be set aside"),
                false => ("zeroed", "discarded"),
            };
            writeln!(
                f,
                "  truncated{}: {} bytes {zeroed}, {} segments {discarded}",
                self.cut_at
                    .map_or(String::new(), |lsn| format!(" at LSN {lsn}")),
                self.bytes_truncated,
                self.segments_discarded.len()
            )?;
        }
        if self.lsns_skipped > 0 {
            writeln!(f, "  skipped: {} LSNs lost to damage", self.lsns_skipped)?;
        }
        if self.anomalies.is_empty() {
            write!(f, "  clean: no anomalies")
        } else {
            write!(f, "  {} anomalies:", self.anomalies.len())?;
            for anomaly in &self.anomalies {
                write!(f, "\n  - {anomaly}")?;
            }
            Ok(())
        }
    }
}
