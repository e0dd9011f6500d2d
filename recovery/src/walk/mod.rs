//! The walk: every segment in LSN order, every record of each, and what each anomaly means.
//!
//! Damage opens a *gap*: LSNs that cannot be read. A gap is judged once the LSN where reading
//! resumes is known: the next verifiable record of the segment, or, when the rest of a sealed
//! segment cannot be read, the first LSN of the next readable segment (the walk reads that
//! header first; so the damage is never mistaken for a missing segment). Then:
//! - if every lost LSN is at or below the caller's snapshot, each finding of the gap is
//!   reported as [`Finding::DamageCoveredBySnapshot`] and reading resumes;
//! - otherwise each finding is judged by the policy, in the order found; the first *truncate*
//!   ends the walk there.
//!
//! A skipped gap counts its lost LSNs once (`lsns_skipped`) and tells the transaction table,
//! which never applies a transaction that may have lost entries in it.
//!
//! Each segment's durable witness (format version 2, `keel_wal::witness`) extends the durable
//! marks: damage, or the end of the written data, at or below what it claims is damage to
//! acknowledged data, not a torn tail (in a sealed segment: not its end).
//!
//! Nothing on disk changes during the walk: it returns where the log must be cut (and where
//! reading of each segment stopped, with its witness), and `repair.rs` applies it once every
//! finding before the cut was judged.
//!
//! Here: the walk over segments, and each segment's header. `records.rs` reads a segment's
//! records and classifies damage among them; `gap.rs` opens and judges gaps.

mod gap;
mod records;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::Path;

use keel_wal::reader::SegmentReader;
use keel_wal::segment::{self, SegmentFile, SegmentHeader};
use keel_wal::witness::{self, Witness};
use keel_wal::{CorruptionReason, DatabaseId, Lsn};

use crate::policy::{Decision, Finding, RecoveryPolicy, decide};
use crate::report::{Anomaly, RecoveryReport};
use crate::txns::{Replay, TxnTable};
use crate::{Error, RecoveryOptions, Result};
use gap::{Gap, damage};

/// Where the log ends after a truncation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Inside segment `segment`, at `offset`.
    At { segment: usize, offset: u64 },
    /// Just before segment `segment` (it and every later one are discarded).
    Before { segment: usize },
}

/// Where reading of a readable segment stopped, and its witness: what the repair needs so that
/// the segment the log ends in never claims more than remains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentEnd {
    pub header: SegmentHeader,
    pub witness: Option<Witness>,
    /// The clean end, where the unreadable rest began, or the cut.
    pub offset: u64,
    /// The LSN its own records stop before (at `offset`): where appends in it would go on.
    /// Below the log's next LSN when a segment overlapping what was read ends early.
    pub next_lsn: Lsn,
    /// Damage inside it was passed over (a skip, or damage the snapshot covers): appends must
    /// not continue in it.
    pub skipped: bool,
}

pub(crate) struct Walk<'a, R> {
    pub dir: &'a Path,
    pub policy: RecoveryPolicy,
    pub covered_through: Option<Lsn>,
    replay: &'a mut R,
    /// The sink was told where the log starts ([`Replay::begin`], once).
    pub begun: bool,
    pub report: RecoveryReport,
    pub txns: TxnTable,
    /// The LSN expected next (`None` before the first readable segment).
    pub expected: Option<Lsn>,
    pub identity: Option<DatabaseId>,
    gap: Option<Gap>,
    /// Records below this LSN were already read (from an earlier, overlapping segment).
    floor: Lsn,
    /// Segments set aside by segment-level skips.
    pub set_aside: Vec<usize>,
    pub segment_bytes: Option<u64>,
    /// Per readable segment (by index), where reading it stopped.
    pub ends: BTreeMap<usize, SegmentEnd>,
}

impl<'a, R: Replay> Walk<'a, R> {
    pub fn new(
        dir: &'a Path,
        options: RecoveryOptions,
        identity: Option<DatabaseId>,
        replay: &'a mut R,
        report: RecoveryReport,
    ) -> Self {
        Walk {
            dir,
            policy: options.policy,
            covered_through: options.covered_through,
            replay,
            begun: false,
            report,
            txns: TxnTable::new(options.covered_through),
            expected: None,
            identity,
            gap: None,
            floor: 0,
            set_aside: Vec::new(),
            segment_bytes: None,
            ends: BTreeMap::new(),
        }
    }

    /// Tells the sink where the log will start once the repair is applied (`None`: no
    /// segment), before anything changes; the sink may refuse ([`crate::Error::Declined`]).
    pub fn begin(&mut self, first_lsn: Option<Lsn>) -> Result<()> {
        if std::mem::replace(&mut self.begun, true) {
            return Ok(());
        }
        self.replay.begin(first_lsn).map_err(Error::Declined)
    }

    /// Records a finding and returns the policy's decision; a refusal is the error.
    pub fn judge(&mut self, path: &Path, offset: u64, finding: Finding) -> Result<Decision> {
        let decision = decide(&finding, self.policy);
        tracing::warn!(path = %path.display(), offset, %finding, %decision, "recovery finding");
        if decision == Decision::Refuse {
            return Err(Error::Refused {
                policy: self.policy,
                path: path.to_path_buf(),
                offset,
                finding,
            });
        }
        self.report.anomalies.push(Anomaly {
            path: path.to_path_buf(),
            offset,
            finding,
            decision,
        });
        Ok(decision)
    }

    /// Walks every segment; returns where the log must be cut, if anywhere.
    pub fn segments(&mut self, segments: &[SegmentFile]) -> Result<Option<Cut>> {
        for (index, segment) in segments.iter().enumerate() {
            let last = index + 1 == segments.len();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&segment.path)
                .map_err(|e| keel_wal::Error::io("opening segment", &segment.path, e))?;
            let header = match self.check_segment(&file, segment)? {
                Ok(header) => header,
                Err(finding) => {
                    if let Some(cut) = self.unreadable_segment(index, segment, finding)? {
                        return Ok(Some(cut));
                    }
                    continue;
                }
            };
            if let Some(cut) = self.segment_start(index, segment, &header)? {
                return Ok(Some(cut));
            }
            // A segment that starts below the LSN expected overlaps what was read (and was
            // judged so): it is read from that LSN on, so no record is taken twice.
            self.floor = self
                .expected
                .map_or(header.first_lsn, |e| e.max(header.first_lsn));
            self.expected = Some(header.first_lsn);
            self.segment_bytes.get_or_insert(header.segment_bytes);
            self.report.segments += 1;
            let witness = witness::read(&file, &segment.path, &header)?;
            self.ends.insert(
                index,
                SegmentEnd {
                    header,
                    witness,
                    offset: segment::HEADER_BLOCK_LEN,
                    next_lsn: header.first_lsn,
                    skipped: false,
                },
            );
            let reader = SegmentReader::with_header(file, segment, header)?;
            if let Some(cut) = self.records(reader, index, segment, &header, last)? {
                return Ok(Some(cut));
            }
        }
        // A gap nothing readable follows: judged without a resume point.
        self.resolve(None)
    }

    /// Header, format version and database of one segment; the finding when it cannot be
    /// read as part of this log.
    fn check_segment(
        &self,
        file: &File,
        segment: &SegmentFile,
    ) -> Result<std::result::Result<SegmentHeader, Finding>> {
        Ok(Err(match segment::read_header(file, segment) {
            Ok(header) => match self.identity {
                Some(expected) if header.database_id != expected => Finding::ForeignSegment {
                    expected,
                    found: header.database_id,
                },
                _ => return Ok(Ok(header)),
            },
            Err(keel_wal::Error::UnknownFormatVersion {
                found, supported, ..
            }) => Finding::UnknownFormatVersion { found, supported },
            Err(keel_wal::Error::Corruption {
                reason: CorruptionReason::ZeroedSegmentHeader,
                ..
            }) if is_all_zero(file, &segment.path)? => Finding::ZeroedSegment,
            Err(keel_wal::Error::Corruption { reason, .. }) => {
                Finding::DamagedSegmentHeader { reason }
            }
            Err(other) => return Err(other.into()),
        }))
    }

    /// A segment that cannot be read as part of this log. Its LSNs join the gap (opened at
    /// the LSN expected, or at its name's for a leading segment). Damage waits for the gap's
    /// resume point to be judged; a segment of another database or format is not damage, is
    /// never covered by a snapshot, and is judged now.
    fn unreadable_segment(
        &mut self,
        index: usize,
        segment: &SegmentFile,
        finding: Finding,
    ) -> Result<Option<Cut>> {
        let from = self.expected.unwrap_or(segment.first_lsn);
        let cut = Cut::Before { segment: index };
        if matches!(
            finding,
            Finding::ForeignSegment { .. } | Finding::UnknownFormatVersion { .. }
        ) {
            if self.judge(&segment.path, 0, finding)? == Decision::Truncate {
                self.report.cut_at = Some(from);
                return Ok(Some(cut));
            }
            self.open_gap(from, None);
        } else {
            // Its name says where it starts: segments before it are missing too.
            if self.gap.is_none()
                && let Some(expected) = self.expected
                && segment.first_lsn != expected
            {
                let missing = Finding::MissingSegment {
                    expected,
                    found: segment.first_lsn,
                };
                self.open_gap(from, Some(damage(&segment.path, 0, missing, cut)));
            }
            self.open_gap(from, Some(damage(&segment.path, 0, finding, cut)));
            // A segment of this log was started there: the LSNs below its name were written.
            if let Some(gap) = &mut self.gap {
                gap.named = gap.named.max(Some(segment.first_lsn));
            }
        }
        self.set_aside.push(index);
        Ok(None)
    }

    /// A readable segment begins: it closes an open gap, or opens one when it does not start
    /// at the LSN expected (segments are missing).
    fn segment_start(
        &mut self,
        index: usize,
        segment: &SegmentFile,
        header: &SegmentHeader,
    ) -> Result<Option<Cut>> {
        if self.gap.is_none()
            && let Some(expected) = self.expected
            && header.first_lsn != expected
        {
            let finding = Finding::MissingSegment {
                expected,
                found: header.first_lsn,
            };
            let cut = Cut::Before { segment: index };
            self.open_gap(expected, Some(damage(&segment.path, 0, finding, cut)));
        }
        self.resolve(Some(header.first_lsn))
    }
}

fn is_all_zero(file: &File, path: &Path) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    let len = file
        .metadata()
        .map_err(|e| keel_wal::Error::io("reading metadata of", path, e))?
        .len();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < len {
        let n = usize::try_from((len - offset).min(buf.len() as u64)).expect("bounded");
        file.read_exact_at(&mut buf[..n], offset)
            .map_err(|e| keel_wal::Error::io("reading segment", path, e))?;
        if !keel_wal::zeros::is_zero(&buf[..n]) {
            return Ok(false);
        }
        offset += n as u64;
    }
    Ok(true)
}
