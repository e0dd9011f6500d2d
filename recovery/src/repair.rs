//! Applying the walk's outcome to the directory, and completing the report.
//!
//! The walk has judged every finding (a refusal or a sink error ends recovery before this
//! runs, so nothing on disk changed). The repair is planned first, with everything it needs
//! checked, and only then applied: setting aside, newest first, the segments after a cut and
//! the segments skipped; zeroing the rest of the cut segment, or of the segment kept last when
//! the segments after it are set aside (read as sealed, its bytes beyond were not judged);
//! lowering the durable witness of
//! the segment the log now ends in when it claims more than remains (after what lies beyond is
//! zeroed and synced: until then the old claim proves the cut records durable, so a crash in
//! between leaves damage judged the same way again, never a torn tail); starting a fresh last
//! segment where appends could not continue in place. Only an
//! I/O failure can stop it part-way, and that order leaves a directory that recovers to the
//! same result.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use keel_wal::segment::{self, SegmentFile, SegmentHeader};
use keel_wal::witness::Witness;
use keel_wal::{DatabaseId, LogEnd, Lsn, Storage, fsutil};

use crate::report::RecoveryReport;
use crate::txns::Replay;
use crate::walk::{Cut, SegmentEnd, Walk};
use crate::{DISCARDED_SUFFIX, Error, Finding, RecoveryPolicy, Result};

/// What the repair will do.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    /// Segments to set aside, in LSN order.
    aside: Vec<usize>,
    /// Segment and offset from which to zero.
    zero_from: Option<(usize, u64)>,
    /// The segment the log now ends in, when its witness claims more than remains.
    lower_witness: Option<(usize, SegmentEnd)>,
    /// The LSN the records of the segment the log now ends in stop before (the next LSN,
    /// unless the log continues above the snapshot in a fresh segment).
    walked: Lsn,
    /// A fresh segment to start: database, first LSN, size.
    fresh: Option<(DatabaseId, Lsn, u64)>,
    next_lsn: Lsn,
}

/// The log as the repair left it: its segments in LSN order, where the last one's records
/// end (what the log resumes from), and the files set aside.
#[derive(Debug)]
pub(crate) struct Repaired {
    pub segments: Vec<SegmentFile>,
    pub end: Option<LogEnd>,
    pub set_aside: Vec<PathBuf>,
}

/// Plans and applies the repair; completes the report. Returns the log as repaired, or
/// `None` for a dry run (nothing changed).
pub(crate) fn finish<R: Replay>(
    storage: &dyn Storage,
    mut walk: Walk<'_, R>,
    segments: &[SegmentFile],
    cut: Option<Cut>,
) -> Result<(RecoveryReport, Option<Repaired>)> {
    let plan = plan(&walk, segments, cut)?;
    let first_lsn = (0..segments.len())
        .find(|i| !plan.aside.contains(i))
        .map(|i| segments[i].first_lsn)
        .or(plan.fresh.map(|(_, first_lsn, _)| first_lsn));
    walk.begin(first_lsn)?;
    let dir = walk.dir;
    let mut report = walk.report;
    let repaired = if report.dry_run {
        describe(segments, &plan, &mut report)?;
        None
    } else {
        let applied = apply(storage, dir, segments, &plan, &walk.ends, &mut report)?;
        Some(repaired(segments, &plan, &walk.ends, applied)?)
    };
    let txns = &walk.txns;
    report.txns_incomplete = txns.open_count();
    report.txns_aborted = txns.counts.aborted;
    report.txns_applied = txns.counts.applied;
    report.txns_partial = txns.counts.partial;
    report.txns_covered = txns.counts.covered;
    report.checkpoints = txns.counts.checkpoints;
    report.payloads = txns.counts.payloads;
    report.peak_txn_bytes = txns.peak_held;
    report.max_txn_id = txns.max_txn_id;
    report.next_lsn = plan.next_lsn;
    Ok((report, repaired))
}

/// What [`apply`] did that the log's new state depends on.
#[derive(Debug, Default)]
struct Applied {
    /// The witness of the segment the log now ends in, lowered.
    lowered: Option<Witness>,
    /// The fresh last segment started, with its header.
    fresh: Option<(PathBuf, SegmentHeader)>,
    /// Where segments were set aside.
    set_aside: Vec<PathBuf>,
}

/// The log after `plan` was applied: the segments not set aside (and the fresh one), and
/// where the last one's records end.
fn repaired(
    segments: &[SegmentFile],
    plan: &Plan,
    ends: &BTreeMap<usize, SegmentEnd>,
    applied: Applied,
) -> Result<Repaired> {
    let remaining: Vec<usize> = (0..segments.len())
        .filter(|i| !plan.aside.contains(i))
        .collect();
    let mut kept: Vec<SegmentFile> = remaining.iter().map(|&i| segments[i].clone()).collect();
    let end = match (applied.fresh, remaining.last()) {
        (Some((path, header)), _) => {
            kept.push(SegmentFile {
                path,
                first_lsn: header.first_lsn,
            });
            kept.sort_by_key(|s| s.first_lsn);
            Some(LogEnd {
                header,
                offset: segment::HEADER_BLOCK_LEN,
                witness: None,
            })
        }
        (None, Some(&last)) => {
            let end = ends.get(&last).ok_or_else(|| {
                Error::Internal(format!(
                    "the log ends in {}, whose records were never read",
                    segments[last].path.display()
                ))
            })?;
            Some(LogEnd {
                header: end.header,
                offset: end.offset,
                witness: applied.lowered.or(end.witness),
            })
        }
        (None, None) => None,
    };
    Ok(Repaired {
        segments: kept,
        end,
        set_aside: applied.set_aside,
    })
}

/// The size of a fresh segment: the log's own, from a header that read back, else from the
/// files (segments are preallocated to their size), else the default.
fn fresh_segment_bytes<R: Replay>(walk: &Walk<'_, R>, segments: &[SegmentFile]) -> u64 {
    walk.segment_bytes
        .or_else(|| {
            segments
                .iter()
                .filter_map(|s| std::fs::metadata(&s.path).ok().map(|m| m.len()))
                .filter(|&len| {
                    len >= keel_wal::segment::MIN_SEGMENT_BYTES && len.is_multiple_of(4096)
                })
                .max()
        })
        .unwrap_or_else(|| keel_wal::WalOptions::default().segment_bytes)
}

/// The repair, decided without touching the disk; an impossible one is an error here.
fn plan<R: Replay>(walk: &Walk<'_, R>, segments: &[SegmentFile], cut: Option<Cut>) -> Result<Plan> {
    let first_discarded = match cut {
        Some(Cut::At { segment, .. }) => segment + 1,
        Some(Cut::Before { segment }) => segment,
        None => segments.len(),
    };
    let mut aside: Vec<usize> = (first_discarded..segments.len()).collect();
    aside.extend(
        walk.set_aside
            .iter()
            .copied()
            .filter(|&i| i < first_discarded),
    );
    aside.sort_unstable();
    aside.dedup();
    let walked = match walk.expected {
        Some(expected) => expected,
        None => segments.first().map_or(1, |s| s.first_lsn),
    };
    // The caller's snapshot holds everything through `covered_through`: a log cut (or set
    // aside) below it must not hand those LSNs out again, or a later commit would be taken
    // for one the snapshot covers. It continues above the snapshot instead (the missing
    // LSNs between are covered, and judged so by the next recovery).
    let next_lsn = match walk.covered_through {
        Some(covered) if walked <= covered && !segments.is_empty() => covered + 1,
        _ => walked,
    };
    // Under `Absolute` the log must be exactly as written: a log that ends below the snapshot
    // is refused here, before anything changes, rather than continued above it (the jump
    // would be refused by every later open under the same policy).
    if next_lsn != walked && walk.policy == RecoveryPolicy::Absolute {
        return Err(Error::Refused {
            policy: walk.policy,
            path: walk.dir.to_path_buf(),
            offset: 0,
            finding: Finding::MissingSegment {
                expected: walked,
                found: next_lsn,
            },
        });
    }
    // A fresh last segment where appends could not continue in place: every segment set
    // aside (LSNs must not restart at 1); a last segment kept (the last one, or the one made
    // last by what was set aside) with damage passed over inside it (also when its tail was
    // then cut: sealed, the skipped damage is judged the same way next time), or whose own
    // records stop below the next LSN (it overlaps what an earlier segment held), or that
    // was never read; or a log that must continue above the snapshot.
    let remaining = segments.len() - aside.len();
    let last_kept = last_kept(segments, &aside);
    let appendable = last_kept
        .and_then(|i| walk.ends.get(&i))
        .is_some_and(|end| !end.skipped && end.next_lsn == walked);
    let seal = (remaining == 0 && !segments.is_empty())
        || (last_kept.is_some() && !appendable)
        || next_lsn != walked;
    let fresh = match (seal, walk.identity) {
        (false, _) => None,
        (true, Some(id)) => Some((id, next_lsn, fresh_segment_bytes(walk, segments))),
        (true, None) => {
            return Err(Error::Internal(
                "no IDENTITY file to start a fresh segment with; nothing was changed".into(),
            ));
        }
    };
    // A fresh segment named like the last one kept (none of whose records read, so the log
    // goes on at its first LSN) would replace it: it is set aside instead, kept under its
    // discarded name by a hard link before the fresh one takes the name (`apply`).
    if let (Some((_, first_lsn, _)), Some(last)) = (fresh, last_kept)
        && segments[last].first_lsn == first_lsn
    {
        aside.push(last);
        aside.sort_unstable();
    }
    let zero_from = match (cut, last_kept) {
        (Some(Cut::At { segment, offset }), _) if !aside.contains(&segment) => {
            Some((segment, offset))
        }
        // The segment kept last was read as a sealed one: segments after it are set aside
        // (cut before, or skipped). Appends continue at its end, and bytes beyond a sealed
        // segment's end are not judged (no verifiable record of this log is there, or it
        // would be damage); as the last segment the next recovery judges them, as debris
        // after the end. They are zeroed now, as a torn tail is, so that the next recovery
        // finds what this one left.
        (_, Some(index)) if fresh.is_none() && index + 1 < segments.len() => {
            walk.ends.get(&index).map(|end| (index, end.offset))
        }
        _ => None,
    };
    let lower_witness = cut
        .and_then(|_| (0..first_discarded).rev().find(|i| !aside.contains(i)))
        .and_then(|index| walk.ends.get(&index).map(|end| (index, *end)))
        .filter(|(_, end)| {
            end.witness
                .is_some_and(|w| !w.within(end.next_lsn, end.offset))
        });
    Ok(Plan {
        aside,
        zero_from,
        lower_witness,
        walked,
        fresh,
        next_lsn,
    })
}

/// Applies `plan`: later segments first, so a crash part-way leaves a shorter log that
/// recovers the same way. The directory never goes without a segment that names where LSNs
/// continue: when the plan sets every segment aside, the oldest one stays until the fresh
/// segment is in place (and when the fresh one takes its name, it is kept under its
/// discarded name by a hard link, then replaced by an atomic rename). So a crash at any point
/// never lets the next recovery restart the LSNs.
fn apply(
    storage: &dyn Storage,
    dir: &Path,
    segments: &[SegmentFile],
    plan: &Plan,
    ends: &BTreeMap<usize, SegmentEnd>,
    report: &mut RecoveryReport,
) -> Result<Applied> {
    let mut applied = Applied::default();
    let held_back = match plan.fresh {
        Some((_, first_lsn, _)) => plan
            .aside
            .iter()
            .copied()
            .find(|&i| segments[i].first_lsn == first_lsn)
            .or_else(|| (plan.aside.len() == segments.len()).then(|| plan.aside[0])),
        None => None,
    };
    for &index in plan.aside.iter().rev() {
        if Some(index) != held_back {
            let aside = set_aside(storage, dir, &segments[index].path, report)?;
            applied.set_aside.push(aside);
        }
    }
    // Zeroed (and synced) before the witness is lowered: until the lowered claim is durable,
    // the old one still proves the records beyond the cut durable, so a crash in between is
    // judged as the same damage again. Lowered first, a crash would leave those records on
    // disk with nothing proving them, and the next recovery would cut them as a torn tail.
    if let Some((index, offset)) = plan.zero_from {
        report.bytes_truncated += zero_tail(storage, &segments[index].path, offset)?;
    }
    if let Some((index, end)) = plan.lower_witness {
        applied.lowered = Some(lower_witness(
            storage,
            &segments[index].path,
            &end,
            end.next_lsn,
        )?);
    }
    if let Some((database_id, first_lsn, bytes)) = plan.fresh {
        let replaced = held_back.filter(|&i| segments[i].first_lsn == first_lsn);
        if let Some(index) = replaced {
            let aside = keep_aside(storage, dir, &segments[index].path, report)?;
            applied.set_aside.push(aside);
        }
        // The segment the log's read ended in takes no more appends: what a dead process
        // wrote to it may still be in the page cache only, and the commits replayed from it
        // must be durable before the fresh segment lets new ones be acknowledged. A sync
        // alone does not make durable what sits in pages a failed sync left clean without
        // writing them (fsyncgate): what nothing proves durable is written again first, as
        // the open does for the segment appends continue in (`fsutil::rewrite_and_sync`).
        if let Some(index) = last_kept(segments, &plan.aside) {
            let path = &segments[index].path;
            let file = open_segment(path)?;
            let (from, to) = ends.get(&index).map_or((0, 0), |end| {
                (
                    end.witness
                        .map_or(segment::HEADER_BLOCK_LEN, |w| w.end_offset),
                    end.offset,
                )
            });
            fsutil::rewrite_and_sync(storage, &file, path, from, to)?;
        }
        let (path, header) =
            keel_wal::dir::create_empty(storage, dir, database_id, first_lsn, bytes)?;
        tracing::warn!(segment = %path.display(), first_lsn, "started a fresh segment after recovery");
        applied.fresh = Some((path, header));
        if let Some(index) = held_back.filter(|i| Some(*i) != replaced) {
            let aside = set_aside(storage, dir, &segments[index].path, report)?;
            applied.set_aside.push(aside);
        }
    }
    Ok(applied)
}

/// The last of `segments` not set aside, if any.
fn last_kept(segments: &[SegmentFile], aside: &[usize]) -> Option<usize> {
    (0..segments.len()).rev().find(|i| !aside.contains(i))
}

/// Opens a segment for its repair (read and write).
fn open_segment(path: &Path) -> Result<std::fs::File> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| keel_wal::Error::io("opening segment", path, e))?)
}

/// The name a segment is set aside under: `<name>.discarded`, or `<name>.<n>.discarded`
/// when an earlier recovery already used that.
fn aside_name(path: &Path) -> std::path::PathBuf {
    let mut n = 0u32;
    loop {
        let mut name = path.as_os_str().to_owned();
        if n > 0 {
            name.push(format!(".{n}"));
        }
        name.push(DISCARDED_SUFFIX);
        let candidate = std::path::PathBuf::from(name);
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

/// Renames a segment aside, durably (each rename before the next: unsynced renames may
/// persist in any order, and only newest-first keeps what is left a contiguous log).
fn set_aside(
    storage: &dyn Storage,
    dir: &Path,
    path: &Path,
    report: &mut RecoveryReport,
) -> Result<PathBuf> {
    let aside = aside_name(path);
    storage
        .rename(path, &aside)
        .map_err(|e| keel_wal::Error::io("setting aside segment", path, e))?;
    fsutil::sync_dir(storage, dir)?;
    report.segments_discarded.push(path.to_path_buf());
    Ok(aside)
}

/// Keeps a segment's bytes under its discarded name (a hard link) while its own name is about
/// to be taken by a fresh segment's atomic rename.
fn keep_aside(
    storage: &dyn Storage,
    dir: &Path,
    path: &Path,
    report: &mut RecoveryReport,
) -> Result<PathBuf> {
    let aside = aside_name(path);
    std::fs::hard_link(path, &aside)
        .map_err(|e| keel_wal::Error::io("setting aside segment", path, e))?;
    fsutil::sync_dir(storage, dir)?;
    report.segments_discarded.push(path.to_path_buf());
    Ok(aside)
}

/// What [`apply`] would do, in the report, with nothing changed: the segments it would set
/// aside and the non-zero bytes it would zero.
fn describe(segments: &[SegmentFile], plan: &Plan, report: &mut RecoveryReport) -> Result<()> {
    for &index in plan.aside.iter().rev() {
        report.segments_discarded.push(segments[index].path.clone());
    }
    if let Some((index, offset)) = plan.zero_from {
        report.bytes_truncated += nonzero_tail(&segments[index].path, offset)?;
    }
    Ok(())
}

/// The non-zero bytes of `path` from `offset` to its end (what [`zero_tail`] would zero).
fn nonzero_tail(path: &Path, offset: u64) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let file =
        std::fs::File::open(path).map_err(|e| keel_wal::Error::io("opening segment", path, e))?;
    let end = file
        .metadata()
        .map_err(|e| keel_wal::Error::io("reading metadata of", path, e))?
        .len();
    let mut buf = vec![0u8; 1 << 16];
    let (mut at, mut nonzero) = (offset, 0u64);
    while at < end {
        let n = usize::try_from((end - at).min(buf.len() as u64)).expect("bounded by the buffer");
        file.read_exact_at(&mut buf[..n], at)
            .map_err(|e| keel_wal::Error::io("reading segment", path, e))?;
        nonzero += keel_wal::zeros::count_nonzero(&buf[..n]) as u64;
        at += n as u64;
    }
    Ok(nonzero)
}

/// Rewrites the witness of the segment at `path`, which now ends at `end.offset` with
/// `next_lsn` the next record, so that it claims nothing beyond (synced): otherwise it would
/// make a later torn tail of new records read as damage to acknowledged data.
fn lower_witness(
    storage: &dyn Storage,
    path: &Path,
    end: &SegmentEnd,
    next_lsn: Lsn,
) -> Result<Witness> {
    let current = end
        .witness
        .expect("planned only for a segment with a witness");
    let file = open_segment(path)?;
    let lowered = keel_wal::dir::lower_witness(
        storage,
        &file,
        path,
        &end.header,
        current,
        next_lsn,
        end.offset,
    )?;
    tracing::warn!(
        segment = %path.display(), from = current.durable_lsn, to = lowered.durable_lsn,
        "lowered the durable witness to where the log now ends"
    );
    Ok(lowered)
}

/// Zeroes `path` from `offset` to its end and syncs it; returns the non-zero bytes zeroed.
///
/// Synced even when nothing needed zeroing: the zeros found may be an interrupted earlier
/// repair's, in the page cache only (a process crash before its sync). The witness is lowered
/// next; were these zeros not durable first, a power loss could keep the lowered witness and
/// bring back the records it had proven durable, to be cut as a torn tail
/// (`tests/adversarial_witness_repair.rs`, its second test).
fn zero_tail(storage: &dyn Storage, path: &Path, offset: u64) -> Result<u64> {
    let file = open_segment(path)?;
    let end = file
        .metadata()
        .map_err(|e| keel_wal::Error::io("reading metadata of", path, e))?
        .len();
    let zeroed = fsutil::zero_range(&file, path, offset, end)?;
    fsutil::sync_file(storage, &file, path, false)?;
    Ok(zeroed)
}
