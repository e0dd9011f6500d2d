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

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use keel_wal::reader::{SegmentEvent, SegmentReader};
use keel_wal::record::RECORD_ALIGN;
use keel_wal::segment::{self, SegmentFile, SegmentHeader};
use keel_wal::tail::{self, Beyond};
use keel_wal::witness::{self, DurableProof, Witness};
use keel_wal::{CorruptionReason, DatabaseId, Lsn};

use crate::policy::{Decision, Finding, RecoveryPolicy, decide};
use crate::report::{Anomaly, RecoveryReport};
use crate::txns::{Replay, TxnTable};
use crate::{Error, RecoveryOptions, Result};

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
}

/// A finding waiting for its gap's resume point to be judged.
#[derive(Debug)]
struct Damage {
    path: PathBuf,
    offset: u64,
    finding: Finding,
    /// Where the log ends if it is truncated.
    cut: Cut,
}

/// LSNs that could not be read, from `from` up to where reading resumes.
#[derive(Debug)]
struct Gap {
    from: Lsn,
    /// The highest first LSN named by a segment skipped in the gap: the LSNs below it were
    /// written, so they are lost even when nothing readable follows.
    named: Option<Lsn>,
    /// Where the LSNs the last segment's witness proves written end, when nothing readable
    /// follows the damage it proves: those are lost; nothing proves any beyond were written.
    witnessed_end: Option<Lsn>,
    findings: Vec<Damage>,
}

/// What follows damage in a segment.
enum Salvage {
    Cut(Cut),
    /// Reading goes on at `offset`, with the record of LSN `lsn`.
    Resume {
        offset: u64,
        lsn: Lsn,
    },
    /// Nothing more of this segment can be read.
    End,
}

pub(crate) struct Walk<'a, R> {
    pub dir: &'a Path,
    pub policy: RecoveryPolicy,
    pub covered_through: Option<Lsn>,
    replay: &'a mut R,
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
    /// A skip inside the last segment: it must be sealed by a fresh one.
    pub seal_last: bool,
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
            report,
            txns: TxnTable::new(options.covered_through),
            expected: None,
            identity,
            gap: None,
            floor: 0,
            set_aside: Vec::new(),
            seal_last: false,
            segment_bytes: None,
            ends: BTreeMap::new(),
        }
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

    /// Reads one segment's records; returns where to cut, if the policy says so.
    fn records(
        &mut self,
        mut reader: SegmentReader,
        index: usize,
        segment: &SegmentFile,
        header: &SegmentHeader,
        last: bool,
    ) -> Result<Option<Cut>> {
        let mut expected = header.first_lsn;
        let witness = self.ends.get(&index).and_then(|end| end.witness);
        let stopped_at = loop {
            let (offset, reason) = match reader.next_event()? {
                SegmentEvent::Record(record) if record.lsn == expected && expected < self.floor => {
                    expected += 1;
                    continue;
                }
                SegmentEvent::Record(record) if record.lsn == expected => {
                    self.report.records += 1;
                    self.report.bytes += record.len;
                    self.report.first_lsn.get_or_insert(record.lsn);
                    self.report.last_lsn = Some(record.lsn);
                    let offset = record.offset;
                    let partial = self.txns.record(
                        record.position(),
                        record.entry,
                        record.payload,
                        self.replay,
                    )?;
                    if let Some(finding) = partial {
                        // Skip (dropped and counted) or refuse: nothing to cut.
                        self.judge(&segment.path, offset, finding)?;
                    }
                    expected += 1;
                    continue;
                }
                SegmentEvent::Record(record) => (
                    record.offset,
                    CorruptionReason::LsnMismatch {
                        expected,
                        found: record.lsn,
                    },
                ),
                // The end of a sealed segment is where its writer rotated, unless verifiable
                // records of this log follow (then a zeroed record hides them) or its witness
                // says records beyond were durable.
                SegmentEvent::End { offset } if !last => {
                    let hidden = tail::next_valid_header(
                        reader.file(),
                        segment,
                        header,
                        offset,
                        reader.end(),
                        expected,
                    )?;
                    if hidden.is_none() && !witness.is_some_and(|w| w.covers(expected, offset)) {
                        break offset;
                    }
                    (offset, CorruptionReason::ZeroedRecord)
                }
                // The end of the log, unless something after it says otherwise.
                SegmentEvent::End { offset } => (offset, CorruptionReason::DebrisAfterEnd),
                SegmentEvent::Damaged { offset, reason } => (offset, reason),
            };
            let place = (offset, reason);
            let Some(finding) = classify(&reader, segment, header, witness, place, expected, last)?
            else {
                break offset;
            };
            let found = damage(
                &segment.path,
                offset,
                finding,
                Cut::At {
                    segment: index,
                    offset,
                },
            );
            match self.salvage(&reader, segment, header, found, expected, last)? {
                Salvage::Cut(cut) => return Ok(Some(cut)),
                Salvage::Resume { offset, lsn } => {
                    expected = lsn;
                    reader.reposition(offset);
                }
                Salvage::End => break offset,
            }
        };
        if let Some(end) = self.ends.get_mut(&index) {
            end.offset = stopped_at;
        }
        // A segment overlapping what was read and ending inside it moves nothing back.
        self.expected = Some(expected.max(self.floor));
        Ok(None)
    }

    /// Damage at LSN `from` in a segment: opens a gap and judges it as soon as its resume
    /// point is known. The resume point is searched only when it can matter: the damage may
    /// be covered by the snapshot, or the policy skips it.
    fn salvage(
        &mut self,
        reader: &SegmentReader,
        segment: &SegmentFile,
        header: &SegmentHeader,
        found: Damage,
        from: Lsn,
        last: bool,
    ) -> Result<Salvage> {
        let searched = self.covered_through.is_some_and(|s| from <= s)
            || decide(&found.finding, self.policy) == Decision::Skip;
        let resume = match searched {
            true => tail::next_valid_header(
                reader.file(),
                segment,
                header,
                found.offset + RECORD_ALIGN as u64,
                reader.end(),
                from,
            )?,
            false => None,
        };
        let witnessed_end = witnessed_end(&found.finding);
        self.open_gap(from, Some(found));
        if resume.is_none()
            && last
            && let Some(gap) = &mut self.gap
        {
            gap.witnessed_end = gap.witnessed_end.max(witnessed_end);
        }
        let (cut, then) = match resume {
            Some((offset, record)) => (
                self.resolve(Some(record.lsn))?,
                Salvage::Resume {
                    offset,
                    lsn: record.lsn,
                },
            ),
            // The rest of a sealed segment: the next readable segment's start closes the gap.
            None if searched && !last => return Ok(Salvage::End),
            None => (self.resolve(None)?, Salvage::End),
        };
        if let Some(cut) = cut {
            return Ok(Salvage::Cut(cut));
        }
        self.seal_last |= last;
        Ok(then)
    }

    /// Opens a gap at `from`, or extends the open one, with a finding to judge.
    fn open_gap(&mut self, from: Lsn, found: Option<Damage>) {
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
    fn resolve(&mut self, resume: Option<Lsn>) -> Result<Option<Cut>> {
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
                self.expected = Some(gap.from);
                self.report.cut_at = Some(gap.from);
                if let Cut::At { segment, offset } = found.cut
                    && let Some(end) = self.ends.get_mut(&segment)
                {
                    end.offset = offset;
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
fn witnessed_end(finding: &Finding) -> Option<Lsn> {
    match finding {
        Finding::DamageBelowDurableMark {
            proof: DurableProof::Witness { durable_lsn, .. },
            ..
        } => Some(durable_lsn + 1),
        _ => None,
    }
}

fn damage(path: &Path, offset: u64, finding: Finding, cut: Cut) -> Damage {
    Damage {
        path: path.to_path_buf(),
        offset,
        finding,
        cut,
    }
}

/// What damage at `offset` (the record of LSN `expected` missing for `reason`) is; `None`
/// when it is the clean end of the last segment. In the last segment, durable marks beyond it
/// and the segment's witness tell damage to acknowledged data from a torn tail:
///
/// | what is found                 | a later mark reaches it | the witness covers it | else       |
/// |-------------------------------|-------------------------|-----------------------|------------|
/// | damage, or debris after zeros | below durable mark      | below durable mark    | torn tail  |
/// | zeros to the end              | (none can)              | below durable mark    | clean end  |
fn classify(
    reader: &SegmentReader,
    segment: &SegmentFile,
    header: &SegmentHeader,
    witness: Option<Witness>,
    (offset, reason): (u64, CorruptionReason),
    expected: Lsn,
    last: bool,
) -> Result<Option<Finding>> {
    if !last {
        return Ok(Some(Finding::DamageInSealedSegment {
            lsn: expected,
            reason,
        }));
    }
    let beyond = tail::scan_beyond(
        reader.file(),
        segment,
        header,
        offset,
        reader.end(),
        expected,
    )?;
    let proof = match beyond {
        Beyond::LaterMark(found) => Some(DurableProof::LaterRecord {
            lsn: found.lsn,
            durable_lsn: found.durable_lsn,
        }),
        Beyond::Zeros | Beyond::Debris => witness
            .filter(|w| w.covers(expected, offset))
            .map(DurableProof::from),
    };
    Ok(match (proof, beyond) {
        (Some(proof), _) => Some(Finding::DamageBelowDurableMark {
            lsn: expected,
            reason: match reason {
                CorruptionReason::DebrisAfterEnd => CorruptionReason::ZeroedRecord,
                other => other,
            },
            proof,
        }),
        (None, Beyond::Zeros) if reason == CorruptionReason::DebrisAfterEnd => None,
        (None, _) => Some(Finding::TornTail {
            lsn: expected,
            reason,
        }),
    })
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
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        offset += n as u64;
    }
    Ok(true)
}
