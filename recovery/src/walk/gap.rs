//! Gaps: LSNs that cannot be read, the findings that opened them, and their judgement once
//! the LSN where reading resumes is known (see the `walk` module documentation).

use std::path::{Path, PathBuf};

use keel_wal::Lsn;
use keel_wal::witness::DurableProof;

use super::{Cut, Walk};
use crate::Result;
use crate::policy::{Decision, Finding};
use crate::txns::Replay;

/// A finding waiting for its gap's resume point to be judged.
#[derive(Debug)]
pub(super) struct Damage {
    pub(super) path: PathBuf,
    pub(super) offset: u64,
    pub(super) finding: Finding,
    /// Where the log ends if it is truncated.
    pub(super) cut: Cut,
}

/// LSNs that could not be read, from `from` up to where reading resumes.
#[derive(Debug)]
pub(super) struct Gap {
    pub(super) from: Lsn,
    /// The highest first LSN named by a segment skipped in the gap: the LSNs below it were
    /// written, so they are lost even when nothing readable follows.
    pub(super) named: Option<Lsn>,
    /// Where the LSNs the last segment's witness proves written end, when nothing readable
    /// follows the damage it proves: those are lost; nothing proves any beyond were written.
    pub(super) witnessed_end: Option<Lsn>,
    pub(super) findings: Vec<Damage>,
}

impl<R: Replay> Walk<'_, R> {
    /// Opens a gap at `from`, or extends the open one, with a finding to judge.
    pub(super) fn open_gap(&mut self, from: Lsn, found: Option<Damage>) {
        let gap = self.gap.get_or_insert_with(|| Gap {
            from,
            named: None,
            witnessed_end: None,
            findings: Vec::new(),
        });
        gap.findings.extend(found);
    }

    /// Judges the open gap now that reading resumes at `resume` (`None`: nothing readable
    /// follows). Returns the cut if a finding truncates; else counts the lost LSNs and tells
    /// the transaction table.
    pub(super) fn resolve(&mut self, resume: Option<Lsn>) -> Result<Option<Cut>> {
        let Some(gap) = self.gap.take() else {
            return Ok(None);
        };
        // With nothing readable after it, damage the last segment's witness proves lost LSNs
        // up to where the witness's claim ends: beyond, nothing proves a record was written.
        let known_end = resume.or(gap.witnessed_end);
        let covered = match (known_end, self.covered_through) {
            (Some(resume), Some(s)) if gap.from <= s && resume <= s.saturating_add(1) => {
                Some((resume, s))
            }
            _ => None,
        };
        for found in gap.findings {
            let finding = match covered {
                Some((resume_lsn, covered_through)) => Finding::DamageCoveredBySnapshot {
                    damage: Box::new(found.finding),
                    lost_from: gap.from,
                    resume_lsn,
                    covered_through,
                },
                None => found.finding,
            };
            if self.judge(&found.path, found.offset, finding)? == Decision::Truncate {
                // A cut inside a segment that overlaps what was read (below the floor) loses
                // nothing an earlier segment holds: the log goes on from the floor.
                self.expected = Some(gap.from.max(self.floor));
                self.report.cut_at = Some(gap.from);
                if let Cut::At { segment, offset } = found.cut
                    && let Some(end) = self.ends.get_mut(&segment)
                {
                    end.offset = offset;
                    end.next_lsn = gap.from;
                }
                return Ok(Some(found.cut));
            }
        }
        let end = resume
            .or(gap.named.max(gap.witnessed_end))
            .unwrap_or(gap.from);
        self.report.lsns_skipped += end.saturating_sub(gap.from);
        if end > gap.from {
            self.report.lsns_lost.push((gap.from, end - 1));
        }
        // Transactions are broken only when something was lost (not when reading resumes
        // at the LSN expected, or below it in an overlapping segment).
        if resume.is_none_or(|resume| resume > gap.from) {
            self.txns.gap(resume);
        }
        Ok(None)
    }
}

/// Where the LSNs a finding's witness proof claims end (one past its durable LSN).
pub(super) fn witnessed_end(finding: &Finding) -> Option<Lsn> {
    match finding {
        Finding::DamageBelowDurableMark {
            proof: DurableProof::Witness { durable_lsn, .. },
            ..
        } => Some(durable_lsn + 1),
        _ => None,
    }
}

pub(super) fn damage(path: &Path, offset: u64, finding: Finding, cut: Cut) -> Damage {
    Damage {
        path: path.to_path_buf(),
        offset,
        finding,
        cut,
    }
}
