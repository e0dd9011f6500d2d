//! The records of one readable segment, and what follows damage among them.

use keel_wal::reader::{RecordRef, SegmentEvent, SegmentReader};
use keel_wal::record::RECORD_ALIGN;
use keel_wal::scan::{self, Beyond};
use keel_wal::segment::{SegmentFile, SegmentHeader};
use keel_wal::witness::{DurableProof, Witness};
use keel_wal::{CorruptionReason, Lsn};

use super::gap::{Damage, damage, witnessed_end};
use super::{Cut, Walk};
use crate::Result;
use crate::policy::{Decision, Finding, decide};
use crate::txns::Replay;

/// What one event of a segment's reader comes to.
enum Event {
    /// The record of the LSN expected was taken (or passed over: it was read before, from an
    /// overlapping segment).
    Taken,
    /// The segment ends cleanly at this offset.
    End(u64),
    /// The record of the LSN expected is missing at this offset, for this reason.
    Missing(u64, CorruptionReason),
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

impl<R: Replay> Walk<'_, R> {
    /// Reads one segment's records; returns where to cut, if the policy says so.
    pub(super) fn records(
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
            let event = self.next_event(&mut reader, segment, header, witness, expected, last)?;
            let (offset, reason) = match event {
                Event::Taken => {
                    expected += 1;
                    continue;
                }
                Event::End(offset) => break offset,
                Event::Missing(offset, reason) => (offset, reason),
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
            end.next_lsn = expected;
        }
        // A segment overlapping what was read and ending inside it moves nothing back.
        self.expected = Some(expected.max(self.floor));
        Ok(None)
    }

    /// Reads the next event of a segment where the record of LSN `expected` is due, and takes
    /// that record if it is there.
    fn next_event(
        &mut self,
        reader: &mut SegmentReader,
        segment: &SegmentFile,
        header: &SegmentHeader,
        witness: Option<Witness>,
        expected: Lsn,
        last: bool,
    ) -> Result<Event> {
        Ok(match reader.next_event()? {
            SegmentEvent::Record(record) if record.lsn == expected && expected < self.floor => {
                Event::Taken
            }
            SegmentEvent::Record(record) if record.lsn == expected => {
                self.take_record(segment, record)?;
                Event::Taken
            }
            SegmentEvent::Record(record) => Event::Missing(
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
                let hidden = scan::next_valid_header(
                    reader.file(),
                    segment,
                    header,
                    offset,
                    reader.end(),
                    expected,
                )?;
                if hidden.is_none() && !witness.is_some_and(|w| w.covers(expected, offset)) {
                    Event::End(offset)
                } else {
                    Event::Missing(offset, CorruptionReason::ZeroedRecord)
                }
            }
            // The end of the log, unless something after it says otherwise.
            SegmentEvent::End { offset } => {
                Event::Missing(offset, CorruptionReason::DebrisAfterEnd)
            }
            SegmentEvent::Damaged { offset, reason } => Event::Missing(offset, reason),
        })
    }

    /// Counts the record of the LSN expected and hands it to the transaction table.
    fn take_record(&mut self, segment: &SegmentFile, record: RecordRef<'_>) -> Result<()> {
        self.report.records += 1;
        self.report.bytes += record.len;
        self.report.first_lsn.get_or_insert(record.lsn);
        self.report.last_lsn = Some(record.lsn);
        let offset = record.offset;
        self.replay.read(record.lsn, record.len);
        let partial =
            self.txns
                .record(record.position(), record.entry, record.payload, self.replay)?;
        if let Some(finding) = partial {
            // Skip (dropped and counted) or refuse: nothing to cut.
            self.judge(&segment.path, offset, finding)?;
        }
        Ok(())
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
            true => scan::next_valid_header(
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
        let in_segment = match found.cut {
            Cut::At { segment, .. } => Some(segment),
            Cut::Before { .. } => None,
        };
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
            None if searched && !last => {
                self.passed_over(in_segment);
                return Ok(Salvage::End);
            }
            None => (self.resolve(None)?, Salvage::End),
        };
        if let Some(cut) = cut {
            return Ok(Salvage::Cut(cut));
        }
        self.passed_over(in_segment);
        Ok(then)
    }

    /// Damage in segment `index` was passed over: appends must not continue in it.
    fn passed_over(&mut self, index: Option<usize>) {
        if let Some(end) = index.and_then(|i| self.ends.get_mut(&i)) {
            end.skipped = true;
        }
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
///
/// In a recycled segment a window whose header does not verify under its salt ends its
/// records as zeros do (the reader's clean end), and only a record header of its own beyond
/// counts as debris ([`scan::scan_beyond`]): the file's earlier contents are not.
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
    let beyond = scan::scan_beyond(
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
