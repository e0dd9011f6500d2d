//! What a finding means: a pure function of (finding, policy).
//!
//! | finding                    | `TolerateTornTail` | `PointInTime` | `SkipCorrupted` | `Absolute` |
//! |----------------------------|--------------------|---------------|-----------------|------------|
//! | `TornTail`                 | truncate           | truncate      | truncate        | refuse     |
//! | `DamageBelowDurableMark`   | refuse             | truncate      | skip            | refuse     |
//! | `DamageInSealedSegment`    | refuse             | truncate      | skip            | refuse     |
//! | `MissingSegment`           | refuse             | truncate      | skip            | refuse     |
//! | `DamagedSegmentHeader`     | refuse             | truncate      | skip            | refuse     |
//! | `ZeroedSegment`            | refuse             | truncate      | skip            | refuse     |
//! | `ForeignSegment`           | refuse             | refuse        | skip            | refuse     |
//! | `UnknownFormatVersion`     | refuse             | refuse        | refuse          | refuse     |
//! | `UnknownFile`              | continue           | continue      | continue        | refuse     |
//! | `PartialTransaction`       | refuse             | refuse        | skip            | refuse     |
//! | `DamageCoveredBySnapshot`  | skip               | skip          | skip            | refuse     |
//!
//! - *truncate*: the log ends just before the finding. Everything after it is discarded:
//!   the rest of the segment is zeroed and synced, later segments are renamed to
//!   `*.discarded` (kept for inspection, never read again), and the directory is synced.
//! - *skip*: the damaged record or segment is passed over and reading continues with the next
//!   verifiable record; the LSNs in between are reported lost. Nothing on disk is changed
//!   except that a skipped segment is set aside and a damaged last segment is sealed by
//!   starting a fresh one. A skipped `PartialTransaction` is dropped and counted.
//! - *refuse*: recovery fails with the segment, offset and finding; nothing on disk changes.
//! - *continue*: the anomaly is reported and has no effect on the log.
//!
//! A segment of another database is never truncated away (that would destroy another
//! database's data), and a segment of an unknown format version is never interpreted.
//!
//! Two rows are about what the log means rather than where it is damaged:
//! - `PartialTransaction`: a commit whose transaction was not read whole (its head lies before
//!   the log or in a gap). It is never applied: refused (nothing on disk changed), or under
//!   `SkipCorrupted` dropped and counted.
//! - `DamageCoveredBySnapshot`: damage whose lost LSNs all lie at or below the LSN a caller's
//!   snapshot covers (`RecoveryOptions::covered_through`). Nothing the caller needs is lost, so
//!   it is passed over under every policy but `Absolute`, which refuses any anomaly.

use std::fmt;

use keel_wal::{CorruptionReason, DatabaseId, DurableProof, Lsn, TxnId};

/// How much damage recovery accepts, and what it does about it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RecoveryPolicy {
    /// The default. Truncates a genuine torn tail: bytes at the end of the last segment that
    /// no later record proves durable, so no commit that was acknowledged as durable is
    /// affected. Refuses to open, naming segment, offset and reason, when acknowledged data
    /// is damaged or missing. Guarantee: every acknowledged durable commit is replayed, or
    /// recovery fails.
    #[default]
    TolerateTornTail,
    /// Opens with the longest valid prefix of the log and reports what was cut. Guarantee:
    /// what is replayed is exactly a prefix of the committed history, with no gap; commits
    /// after the first damage are lost and counted.
    PointInTime,
    /// Salvages every verifiable record, passing over damaged records and segments.
    /// Guarantee: every record replayed is one that was written, checksums intact, and every
    /// transaction replayed is whole; the history may have gaps (reported), and a
    /// transaction that may have lost entries in a gap is dropped and counted, never applied
    /// in part.
    SkipCorrupted,
    /// Any anomaly, a torn tail included, is an error. Guarantee: success means the log is
    /// exactly as written, end to end.
    Absolute,
}

impl fmt::Display for RecoveryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecoveryPolicy::TolerateTornTail => "tolerate-torn-tail",
            RecoveryPolicy::PointInTime => "point-in-time",
            RecoveryPolicy::SkipCorrupted => "skip-corrupted",
            RecoveryPolicy::Absolute => "absolute",
        })
    }
}

/// What recovery found at one place in the log directory.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finding {
    /// The last segment ends in bytes that are not the next record, and no later record's
    /// durable mark reaches the missing LSN: only unacknowledged data is affected.
    TornTail {
        /// The LSN the next record would have had.
        lsn: Lsn,
        /// What is wrong with the bytes found there.
        reason: CorruptionReason,
    },
    /// A damaged, unexpected or missing record at `lsn` that was durable, as `proof` shows: a
    /// later record's durable mark, or the segment's durable witness (which also catches the
    /// newest records, with nothing written after them).
    DamageBelowDurableMark {
        /// The LSN expected at the damage.
        lsn: Lsn,
        /// What is wrong with the bytes found there.
        reason: CorruptionReason,
        /// What shows the record was durable, so acknowledged.
        proof: DurableProof,
    },
    /// Damage in a segment that is not the last: the rotation barrier made all of it durable
    /// before the next segment was started.
    DamageInSealedSegment {
        /// The LSN expected at the damage.
        lsn: Lsn,
        /// What is wrong with the bytes found there.
        reason: CorruptionReason,
    },
    /// A segment starts above the LSN expected next: the segments in between are missing.
    MissingSegment {
        /// The LSN expected next.
        expected: Lsn,
        /// The first LSN of the segment found instead.
        found: Lsn,
    },
    /// A segment header that fails its checks.
    DamagedSegmentHeader {
        /// Which check it fails.
        reason: CorruptionReason,
    },
    /// A segment file that is all zeros, header included.
    ZeroedSegment,
    /// A segment that belongs to another database.
    ForeignSegment {
        /// The database of the log (its `IDENTITY`).
        expected: DatabaseId,
        /// The database the segment's header names.
        found: DatabaseId,
    },
    /// A segment written by a format version this build does not read.
    UnknownFormatVersion {
        /// The version in the segment's header.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// A file in the log directory that is not part of the log.
    UnknownFile,
    /// A committed transaction not all of whose entries were read: its head lies before the
    /// first record of the log or in a gap, or a gap fell while it was open. `first_lsn` is
    /// the LSN a `CommitSpan` names (`None` for a `CommitTxn`, which names none: it is judged
    /// by the conservative rule of `txns.rs`). Applying it would apply part of it.
    PartialTransaction {
        /// The transaction.
        txn_id: TxnId,
        /// The LSN its `CommitSpan` names as its first entry's.
        first_lsn: Option<Lsn>,
        /// The LSN of its commit record.
        commit_lsn: Lsn,
    },
    /// `damage` lost only LSNs `lost_from..resume_lsn`, all at or below `covered_through`, the
    /// LSN the caller's snapshot covers: nothing the caller needs is lost, and reading resumes
    /// at `resume_lsn`. (When nothing readable follows damage at the end of the last segment
    /// that its witness proves, `resume_lsn` is where the witness's claim ends: nothing proves
    /// a record beyond it was written, and the log continues above the snapshot.)
    DamageCoveredBySnapshot {
        /// The damage as it would be judged without the snapshot.
        damage: Box<Finding>,
        /// The first LSN lost.
        lost_from: Lsn,
        /// The LSN reading resumes at (the first not lost).
        resume_lsn: Lsn,
        /// The LSN the caller's snapshot covers ([`crate::RecoveryOptions::covered_through`]).
        covered_through: Lsn,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::TornTail { lsn, reason } => {
                write!(
                    f,
                    "torn tail at LSN {lsn} (never acknowledged as durable): {reason}"
                )
            }
            Finding::DamageBelowDurableMark { lsn, reason, proof } => write!(
                f,
                "acknowledged record at LSN {lsn} is damaged or missing ({reason}); {proof}"
            ),
            Finding::DamageInSealedSegment { lsn, reason } => {
                write!(f, "damage in a sealed segment at LSN {lsn}: {reason}")
            }
            Finding::MissingSegment { expected, found } => write!(
                f,
                "segments missing: expected first LSN {expected}, found {found}"
            ),
            Finding::DamagedSegmentHeader { reason } => {
                write!(f, "damaged segment header: {reason}")
            }
            Finding::ZeroedSegment => f.write_str("segment is all zeros"),
            Finding::ForeignSegment { expected, found } => write!(
                f,
                "segment belongs to database {found}, not to this database ({expected})"
            ),
            Finding::UnknownFormatVersion { found, supported } => write!(
                f,
                "segment has format version {found}; this build reads version {supported}"
            ),
            Finding::UnknownFile => f.write_str("file is not part of the log"),
            Finding::PartialTransaction {
                txn_id,
                first_lsn: Some(first),
                commit_lsn,
            } => write!(
                f,
                "transaction {txn_id} committed at LSN {commit_lsn} was not read whole from \
                 its first entry at LSN {first}"
            ),
            Finding::PartialTransaction {
                txn_id,
                first_lsn: None,
                commit_lsn,
            } => write!(
                f,
                "transaction {txn_id} committed at LSN {commit_lsn} (a CommitTxn) may have \
                 lost entries in a gap"
            ),
            Finding::DamageCoveredBySnapshot {
                damage,
                lost_from,
                resume_lsn,
                covered_through,
            } => write!(
                f,
                "{damage}; LSNs {lost_from} to {} are covered by the snapshot through LSN \
                 {covered_through}, reading resumes at LSN {resume_lsn}",
                resume_lsn.saturating_sub(1)
            ),
        }
    }
}

/// What recovery does about a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Report it; it does not affect the log.
    Continue,
    /// End the log just before it; discard everything after.
    Truncate,
    /// Pass over it and salvage what follows.
    Skip,
    /// Fail with the place and the finding; change nothing.
    Refuse,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decision::Continue => "reported",
            Decision::Truncate => "truncated",
            Decision::Skip => "skipped",
            Decision::Refuse => "refused",
        })
    }
}

/// The decision table of the module documentation.
pub fn decide(finding: &Finding, policy: RecoveryPolicy) -> Decision {
    use Decision::{Continue, Refuse, Skip, Truncate};
    use RecoveryPolicy::{Absolute, PointInTime, SkipCorrupted, TolerateTornTail};
    match (finding, policy) {
        (_, Absolute) => Refuse,
        (Finding::UnknownFormatVersion { .. }, _) => Refuse,
        (Finding::UnknownFile, _) => Continue,
        (Finding::DamageCoveredBySnapshot { .. }, _) => Skip,
        (Finding::PartialTransaction { .. }, SkipCorrupted) => Skip,
        (Finding::PartialTransaction { .. }, _) => Refuse,
        (Finding::TornTail { .. }, _) => Truncate,
        (Finding::ForeignSegment { .. }, SkipCorrupted) => Skip,
        (Finding::ForeignSegment { .. }, _) => Refuse,
        (_, TolerateTornTail) => Refuse,
        (_, PointInTime) => Truncate,
        (_, SkipCorrupted) => Skip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::{Continue, Refuse, Skip, Truncate};

    fn reason() -> CorruptionReason {
        CorruptionReason::TruncatedRecord
    }

    /// `(finding, [TolerateTornTail, PointInTime, SkipCorrupted, Absolute])`.
    fn check(finding: Finding, expected: [Decision; 4]) {
        let policies = [
            RecoveryPolicy::TolerateTornTail,
            RecoveryPolicy::PointInTime,
            RecoveryPolicy::SkipCorrupted,
            RecoveryPolicy::Absolute,
        ];
        for (policy, want) in policies.into_iter().zip(expected) {
            assert_eq!(decide(&finding, policy), want, "{finding:?} under {policy}");
        }
    }

    #[test]
    fn torn_tail() {
        check(
            Finding::TornTail {
                lsn: 9,
                reason: reason(),
            },
            [Truncate, Truncate, Truncate, Refuse],
        );
    }

    #[test]
    fn damage_below_durable_mark() {
        check(
            Finding::DamageBelowDurableMark {
                lsn: 9,
                reason: reason(),
                proof: DurableProof::LaterRecord {
                    lsn: 12,
                    durable_lsn: 10,
                },
            },
            [Refuse, Truncate, Skip, Refuse],
        );
        check(
            Finding::DamageBelowDurableMark {
                lsn: 9,
                reason: reason(),
                proof: DurableProof::Witness {
                    durable_lsn: 10,
                    end_offset: 8192,
                },
            },
            [Refuse, Truncate, Skip, Refuse],
        );
    }

    #[test]
    fn damage_in_sealed_segment() {
        check(
            Finding::DamageInSealedSegment {
                lsn: 9,
                reason: reason(),
            },
            [Refuse, Truncate, Skip, Refuse],
        );
    }

    #[test]
    fn missing_segment() {
        check(
            Finding::MissingSegment {
                expected: 10,
                found: 20,
            },
            [Refuse, Truncate, Skip, Refuse],
        );
    }

    #[test]
    fn damaged_segment_header() {
        check(
            Finding::DamagedSegmentHeader {
                reason: CorruptionReason::BadMagic,
            },
            [Refuse, Truncate, Skip, Refuse],
        );
    }

    #[test]
    fn zeroed_segment() {
        check(Finding::ZeroedSegment, [Refuse, Truncate, Skip, Refuse]);
    }

    #[test]
    fn foreign_segment() {
        check(
            Finding::ForeignSegment {
                expected: DatabaseId([1; 16]),
                found: DatabaseId([2; 16]),
            },
            [Refuse, Refuse, Skip, Refuse],
        );
    }

    #[test]
    fn unknown_format_version() {
        check(
            Finding::UnknownFormatVersion {
                found: 9,
                supported: 1,
            },
            [Refuse, Refuse, Refuse, Refuse],
        );
    }

    #[test]
    fn unknown_file() {
        check(Finding::UnknownFile, [Continue, Continue, Continue, Refuse]);
    }

    #[test]
    fn partial_transaction() {
        for first_lsn in [Some(4), None] {
            check(
                Finding::PartialTransaction {
                    txn_id: 7,
                    first_lsn,
                    commit_lsn: 9,
                },
                [Refuse, Refuse, Skip, Refuse],
            );
        }
    }

    #[test]
    fn damage_covered_by_snapshot() {
        check(
            Finding::DamageCoveredBySnapshot {
                damage: Box::new(Finding::DamageInSealedSegment {
                    lsn: 9,
                    reason: reason(),
                }),
                lost_from: 9,
                resume_lsn: 10,
                covered_through: 12,
            },
            [Skip, Skip, Skip, Refuse],
        );
    }
}
