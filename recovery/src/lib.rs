//! keel-recovery: turns whatever a crash or damage left in a log directory into exactly the
//! committed transactions, or into a clear error when acknowledged data is damaged.
//!
//! [`recover`] walks the segments in LSN order (header, database, format version, LSN
//! continuity), then every record (header checksum, length bound, body checksum, archive
//! validation, expected LSN), streaming: memory is bounded by the transactions still open,
//! never by the log. What each anomaly means is [`policy::decide`]'s table, a pure function of
//! the [`Finding`] and the [`RecoveryPolicy`] (also in `docs/RECOVERY.md`). Durable marks tell
//! a torn tail (nothing acknowledged affected: truncate) from damage to acknowledged data.
//!
//! Committed transactions reach the caller's [`Replay`] sink in commit-LSN order, as
//! zero-copy archived entries; aborted and incomplete ones are dropped and counted.
//!
//! Truncation never lets a byte beyond the cut be read back: the rest of the cut segment is
//! zeroed and synced, later segments are renamed `*.discarded`, and the directory is synced.
//! Later segments go first, so a crash in the middle of a truncation leaves a directory that
//! recovers to the same result, and a second recovery truncates nothing.

mod policy;
mod report;
mod txns;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

use keel_wal::reader::{SegmentEvent, SegmentReader};
use keel_wal::segment::{self, SegmentFile, SegmentHeader};
use keel_wal::tail::{self, Beyond};
use keel_wal::{CorruptionReason, DatabaseId, Lsn, fsutil};

pub use policy::{Decision, Finding, RecoveryPolicy, decide};
pub use report::{Anomaly, RecoveryReport};
pub use txns::{CommittedTxn, Replay, ReplayError};

/// Suffix of segments set aside by truncation (or skipped whole): never read as log again.
pub const DISCARDED_SUFFIX: &str = ".discarded";

/// What can stop a recovery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The policy refuses what was found; nothing on disk was changed.
    #[error("recovery refused ({policy}): {} at offset {offset}: {finding}", path.display())]
    Refused {
        policy: RecoveryPolicy,
        path: PathBuf,
        offset: u64,
        finding: Finding,
    },
    /// Reading or repairing the directory failed.
    #[error(transparent)]
    Wal(#[from] keel_wal::Error),
    /// The sink failed on the transaction committed at `lsn`.
    #[error("replaying the transaction committed at LSN {lsn} failed: {source}")]
    Replay { lsn: Lsn, source: ReplayError },
    /// A broken internal expectation (a bug), reported instead of a panic.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the log ends after a truncation.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Inside segment `segment`, at `offset`.
    At { segment: usize, offset: u64 },
    /// Just before segment `segment` (it and every later one are discarded).
    Before { segment: usize },
}

struct Walk<'a, R> {
    dir: &'a Path,
    policy: RecoveryPolicy,
    replay: &'a mut R,
    report: RecoveryReport,
    txns: txns::TxnTable,
    expected: Option<Lsn>,
    identity: Option<DatabaseId>,
    /// Segments set aside by segment-level skips.
    set_aside: Vec<usize>,
    /// A skip inside the last segment: it must be sealed by a fresh one.
    seal_last: bool,
    segment_bytes: Option<u64>,
}

/// Recovers the log in `dir` under `policy`, handing every committed transaction to
/// `replay`. Takes the directory's lock while it runs.
pub fn recover(
    dir: impl AsRef<Path>,
    policy: RecoveryPolicy,
    replay: &mut impl Replay,
) -> Result<RecoveryReport> {
    let started = Instant::now();
    let dir = dir.as_ref();
    let _span = tracing::info_span!("recovery", dir = %dir.display(), %policy).entered();
    let _lock = fsutil::lock_dir(dir)?;
    let listing = segment::list_directory(dir)?;
    let mut walk = Walk {
        dir,
        policy,
        replay,
        report: empty_report(policy),
        txns: txns::TxnTable::default(),
        expected: None,
        identity: fsutil::read_identity(dir)?,
        set_aside: Vec::new(),
        seal_last: false,
        segment_bytes: None,
    };
    for path in &listing.unknown {
        // Left by an earlier recovery: set aside, or an empty segment it did not finish.
        let name = path.to_string_lossy();
        if name.ends_with(DISCARDED_SUFFIX) || name.ends_with(".wal.creating") {
            continue;
        }
        walk.judge(path, 0, Finding::UnknownFile)?;
    }
    let cut = walk.segments(&listing.segments)?;
    walk.finish(&listing.segments, cut)?;
    let mut report = walk.report;
    report.duration = started.elapsed();
    tracing::info!(
        records = report.records,
        applied = report.txns_applied,
        anomalies = report.anomalies.len(),
        next_lsn = report.next_lsn,
        "recovered"
    );
    Ok(report)
}

/// The report of a recovery that found no log at all (a new database).
pub fn recover_empty(policy: RecoveryPolicy) -> RecoveryReport {
    empty_report(policy)
}

fn empty_report(policy: RecoveryPolicy) -> RecoveryReport {
    RecoveryReport {
        policy,
        segments: 0,
        records: 0,
        bytes: 0,
        txns_applied: 0,
        txns_aborted: 0,
        txns_incomplete: 0,
        checkpoints: 0,
        payloads: 0,
        bytes_truncated: 0,
        segments_discarded: Vec::new(),
        lsns_skipped: 0,
        anomalies: Vec::new(),
        first_lsn: None,
        last_lsn: None,
        next_lsn: 1,
        peak_txn_bytes: 0,
        max_txn_id: None,
        duration: std::time::Duration::ZERO,
    }
}

impl<R: Replay> Walk<'_, R> {
    /// Records a finding and returns the policy's decision; a refusal is the error.
    fn judge(&mut self, path: &Path, offset: u64, finding: Finding) -> Result<Decision> {
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
    fn segments(&mut self, segments: &[SegmentFile]) -> Result<Option<Cut>> {
        for (index, segment) in segments.iter().enumerate() {
            let last = index + 1 == segments.len();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&segment.path)
                .map_err(|e| keel_wal::Error::io("opening segment", &segment.path, e))?;
            let header = match self.check_segment(&file, segment)? {
                Ok(header) => header,
                Err(Decision::Truncate) => return Ok(Some(Cut::Before { segment: index })),
                Err(_) => {
                    self.set_aside.push(index);
                    continue;
                }
            };
            if let Some(expected) = self.expected
                && header.first_lsn != expected
            {
                let finding = Finding::MissingSegment {
                    expected,
                    found: header.first_lsn,
                };
                if self.judge(&segment.path, 0, finding)? == Decision::Truncate {
                    return Ok(Some(Cut::Before { segment: index }));
                }
                self.report.lsns_skipped += header.first_lsn.saturating_sub(expected);
                self.report.txns_incomplete += self.txns.drop_open();
            }
            self.expected = Some(header.first_lsn);
            self.segment_bytes.get_or_insert(header.segment_bytes);
            self.report.segments += 1;
            let reader = SegmentReader::from_file(file, segment)?;
            if let Some(offset) = self.records(reader, segment, &header, last)? {
                return Ok(Some(Cut::At {
                    segment: index,
                    offset,
                }));
            }
        }
        Ok(None)
    }

    /// Header, format version and database of one segment. `Err(decision)` when the segment
    /// cannot be read as part of this log (truncate before it, or skip it).
    fn check_segment(
        &mut self,
        file: &File,
        segment: &SegmentFile,
    ) -> Result<std::result::Result<SegmentHeader, Decision>> {
        let finding = match segment::read_header(file, segment) {
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
        };
        Ok(Err(self.judge(&segment.path, 0, finding)?))
    }

    /// Reads one segment's records; returns the offset to cut at, if the policy says so.
    fn records(
        &mut self,
        mut reader: SegmentReader,
        segment: &SegmentFile,
        header: &SegmentHeader,
        last: bool,
    ) -> Result<Option<u64>> {
        let mut expected = header.first_lsn;
        loop {
            let (offset, reason) = match reader.next_event()? {
                SegmentEvent::Record(record) if record.lsn == expected => {
                    self.report.records += 1;
                    self.report.bytes += record.len;
                    self.report.first_lsn.get_or_insert(record.lsn);
                    self.report.last_lsn = Some(record.lsn);
                    self.txns
                        .record(record.lsn, record.entry, record.payload, self.replay)?;
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
                // records of this log follow: then a zeroed record hides them.
                SegmentEvent::End { offset } if !last => {
                    let hidden = tail::next_valid_header(
                        reader.file(),
                        segment,
                        header,
                        offset,
                        reader.end(),
                        expected,
                    )?;
                    if hidden.is_none() {
                        break;
                    }
                    (offset, CorruptionReason::ZeroedRecord)
                }
                // The end of the log, unless something after it says otherwise.
                SegmentEvent::End { offset } => (offset, CorruptionReason::DebrisAfterEnd),
                SegmentEvent::Damaged { offset, reason } => (offset, reason),
            };
            let finding = if last {
                match tail::scan_beyond(
                    reader.file(),
                    segment,
                    header,
                    offset,
                    reader.end(),
                    expected,
                )? {
                    Beyond::Witness(witness) => Finding::DamageBelowDurableMark {
                        lsn: expected,
                        reason: match reason {
                            CorruptionReason::DebrisAfterEnd => CorruptionReason::ZeroedRecord,
                            other => other,
                        },
                        witness_lsn: witness.lsn,
                        witness_durable: witness.durable_lsn,
                    },
                    Beyond::Zeros if reason == CorruptionReason::DebrisAfterEnd => break,
                    Beyond::Zeros | Beyond::Debris => Finding::TornTail {
                        lsn: expected,
                        reason,
                    },
                }
            } else {
                Finding::DamageInSealedSegment {
                    lsn: expected,
                    reason,
                }
            };
            match self.judge(&segment.path, offset, finding)? {
                Decision::Truncate => {
                    self.expected = Some(expected);
                    return Ok(Some(offset));
                }
                _ => {
                    self.seal_last |= last;
                    let resume = tail::next_valid_header(
                        reader.file(),
                        segment,
                        header,
                        offset + keel_wal::record::RECORD_ALIGN as u64,
                        reader.end(),
                        expected,
                    )?;
                    let Some((at, found)) = resume else { break };
                    self.report.lsns_skipped += found.lsn - expected;
                    if found.lsn > expected {
                        self.report.txns_incomplete += self.txns.drop_open();
                    }
                    expected = found.lsn;
                    reader.reposition(at);
                }
            }
        }
        self.expected = Some(expected);
        Ok(None)
    }

    /// Applies the cut, sets skipped segments aside, seals a damaged last segment, and
    /// completes the report.
    fn finish(&mut self, segments: &[SegmentFile], cut: Option<Cut>) -> Result<()> {
        let first_discarded = match cut {
            Some(Cut::At { segment, .. }) => segment + 1,
            Some(Cut::Before { segment }) => segment,
            None => segments.len(),
        };
        let mut aside: Vec<usize> = (first_discarded..segments.len()).collect();
        aside.extend(
            self.set_aside
                .iter()
                .copied()
                .filter(|&i| i < first_discarded),
        );
        aside.sort_unstable();
        // Newest first: a crash part-way leaves a shorter log that recovers the same way.
        for &index in aside.iter().rev() {
            let path = &segments[index].path;
            let mut name = path.as_os_str().to_owned();
            name.push(DISCARDED_SUFFIX);
            std::fs::rename(path, &name)
                .map_err(|e| keel_wal::Error::io("setting aside segment", path, e))?;
            // Each rename durable before the next: unsynced renames may persist in any
            // order, and only newest-first keeps what is left a contiguous log.
            fsutil::sync_dir(self.dir)?;
            self.report.segments_discarded.push(path.clone());
        }
        if let Some(Cut::At { segment, offset }) = cut {
            let path = &segments[segment].path;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| keel_wal::Error::io("opening segment", path, e))?;
            let end = file
                .metadata()
                .map_err(|e| keel_wal::Error::io("reading metadata of", path, e))?
                .len();
            let zeroed = fsutil::zero_range(&file, path, offset, end)?;
            if zeroed > 0 {
                fsutil::sync_file(&file, path, false)?;
            }
            self.report.bytes_truncated += zeroed;
        }
        self.report.txns_incomplete += self.txns.open_count();
        self.report.txns_aborted = self.txns.counts.aborted;
        self.report.txns_applied = self.txns.counts.applied;
        self.report.checkpoints = self.txns.counts.checkpoints;
        self.report.payloads = self.txns.counts.payloads;
        self.report.peak_txn_bytes = self.txns.peak_held;
        self.report.max_txn_id = self.txns.max_txn_id;
        let remaining = segments.len() - aside.len();
        let next_lsn = match self.expected {
            Some(expected) => expected,
            None => segments.first().map_or(1, |s| s.first_lsn),
        };
        self.report.next_lsn = next_lsn;
        // A fresh last segment where appends could not continue in place: every segment set
        // aside (LSNs must not restart at 1), or a skip inside the last one (also when its
        // tail was then cut: sealed, the skipped damage is judged the same way next time).
        let seal = (remaining == 0 && !segments.is_empty())
            || (self.seal_last && !aside.contains(&(segments.len() - 1)));
        if seal {
            let database_id = match self.identity {
                Some(id) => id,
                None => {
                    return Err(Error::Internal(
                        "no IDENTITY file to start a fresh segment with".into(),
                    ));
                }
            };
            let bytes = self.segment_bytes.unwrap_or(64 << 20);
            let path = segment::create_empty(self.dir, database_id, next_lsn, bytes)?;
            tracing::warn!(segment = %path.display(), next_lsn, "started a fresh segment after recovery");
        }
        Ok(())
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
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        offset += n as u64;
    }
    Ok(true)
}
