//! `keel tail`: the transactions of a database's log, as they commit, from the shell.
//!
//! Read-only and lock-free: it reads the segment files while another process (the database
//! that holds the directory's lock) writes them, and changes nothing. It cannot see that
//! process's durable position, so it says what the log itself proves: a record is *known
//! durable* once a later record's durable mark (written with each record) or the segment's
//! durable witness (written when the writer idles) covers it. A transaction is printed when
//! its commit record is readable, marked `durable` or `written` (not yet known durable: a
//! crash may still take it back), and `durable through LSN n` follows once the marks catch
//! up. With `--follow` it waits for more, polling, until interrupted or `--limit`
//! transactions were printed. Transactions are grouped by recovery's own rules
//! (`keel_recovery::TxnAssembler`): aborted and unfinished ones are never printed.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use keel_recovery::{CommittedTxn, Finding, Replay, ReplayError, TxnAssembler};
use keel_wal::dir::list_directory;
use keel_wal::segment::SegmentFile;
use keel_wal::{ArchivedWalEntry, Lsn, SegmentEvent, SegmentReader, witness};

use crate::tool::{log_dir, show, show_json};

#[derive(Debug, Args)]
pub struct TailArgs {
    /// A database directory (or its `wal/` directory).
    dir: PathBuf,
    /// Print the transactions committed at or above this LSN.
    #[arg(long, default_value_t = 1)]
    from: Lsn,
    /// Keep following the log while another process writes it.
    #[arg(long)]
    follow: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// How often to look for new records while following, in milliseconds.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// Stop after printing this many transactions.
    #[arg(long)]
    limit: Option<u64>,
}

pub fn tail(args: &TailArgs) -> Result<(), String> {
    let from = args.from.max(1);
    let mut follower = Follower {
        dir: log_dir(&args.dir)?,
        next: from,
        reader: None,
        resume_at: None,
        known_durable: 0,
    };
    let mut assembler = TxnAssembler::new(from, from - 1);
    let mut printer = Printer {
        json: args.json,
        printed_through: from - 1,
        held: Vec::new(),
        undurable: None,
        printed: 0,
    };
    loop {
        let read = follower.step(&mut assembler, &mut printer)?;
        printer.flush(follower.known_durable, !read);
        if args.limit.is_some_and(|limit| printer.printed >= limit) {
            return Ok(());
        }
        if !read {
            if !args.follow {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(args.poll_ms));
        }
    }
}

/// Reads the log's segments as another process writes them.
struct Follower {
    dir: PathBuf,
    /// The LSN read next.
    next: Lsn,
    /// The segment being read, positioned at `next`.
    reader: Option<SegmentReader>,
    /// Where reading stopped for want of a record: that segment, at that offset.
    resume_at: Option<(SegmentFile, u64)>,
    /// The highest LSN the log proves durable (records' marks, witnesses).
    known_durable: Lsn,
}

impl Follower {
    /// Reads the next record into `assembler`; `false` when none is readable yet.
    fn step(
        &mut self,
        assembler: &mut TxnAssembler,
        printer: &mut Printer,
    ) -> Result<bool, String> {
        if self.reader.is_none() {
            self.reader = match self.resume_at.take() {
                Some((segment, offset)) => {
                    let mut reader = SegmentReader::open(&segment).map_err(|e| e.to_string())?;
                    reader.reposition(offset);
                    Some(reader)
                }
                None => self.open_segment_at(self.next)?,
            };
            if self.reader.is_none() {
                return Ok(false);
            }
        }
        let reader = self.reader.as_mut().expect("opened above");
        let at = reader.offset();
        let segment = SegmentFile {
            path: reader.path().to_path_buf(),
            first_lsn: reader.header().first_lsn,
        };
        match reader.next_event().map_err(|e| e.to_string())? {
            SegmentEvent::Record(record) if record.lsn == self.next => {
                self.known_durable = self.known_durable.max(record.durable_lsn);
                let finding = assembler
                    .record(record.position(), record.entry, record.payload, printer)
                    .map_err(|e| e.to_string())?;
                self.next += 1;
                if let Some(Finding::PartialTransaction {
                    first_lsn: Some(first),
                    ..
                }) = finding
                {
                    // Begun before the first record read: again from its start, printing
                    // nothing twice.
                    *assembler = TxnAssembler::new(first, printer.printed_through);
                    self.next = first;
                    self.reader = None;
                }
                Ok(true)
            }
            SegmentEvent::Record(record) => Err(format!(
                "{} at offset {}: LSN {} where {} was expected",
                segment.path.display(),
                record.offset,
                record.lsn,
                self.next
            )),
            SegmentEvent::End { .. } | SegmentEvent::Damaged { .. } => {
                let damaged = !reader.at_clean_end().map_err(|e| e.to_string())?;
                if let Some(witness) = witness::read(reader.file(), reader.path(), reader.header())
                    .map_err(|e| e.to_string())?
                {
                    self.known_durable = self.known_durable.max(witness.durable_lsn);
                }
                self.reader = None;
                if self.segment_starts(self.next)? {
                    if damaged {
                        return Err(format!(
                            "{} at offset {at}: a damaged record before the next segment (`keel recover` can judge and repair the log)",
                            segment.path.display()
                        ));
                    }
                    // The writer moved on to the next segment.
                    return Ok(true);
                }
                // The end for now, or a record still being written: read again from the
                // file next time.
                self.resume_at = Some((segment, at));
                Ok(false)
            }
        }
    }

    /// The segment holding `lsn`, positioned at it; `None` when the log holds nothing yet.
    fn open_segment_at(&self, lsn: Lsn) -> Result<Option<SegmentReader>, String> {
        let segments = list_directory(&self.dir)
            .map_err(|e| e.to_string())?
            .segments;
        let Some(oldest) = segments.first() else {
            return Ok(None);
        };
        let Some(segment) = segments.iter().rev().find(|s| s.first_lsn <= lsn) else {
            return Err(format!(
                "LSN {lsn} is no longer in the log: its oldest record is LSN {} (start there, or from a snapshot)",
                oldest.first_lsn
            ));
        };
        let mut reader = SegmentReader::open(segment).map_err(|e| e.to_string())?;
        reader.skip_below(lsn).map_err(|e| e.to_string())?;
        Ok(Some(reader))
    }

    /// Whether a segment starts at `lsn` (the writer rotated to it).
    fn segment_starts(&self, lsn: Lsn) -> Result<bool, String> {
        let segments = list_directory(&self.dir)
            .map_err(|e| e.to_string())?
            .segments;
        Ok(segments.iter().any(|s| s.first_lsn == lsn))
    }
}

/// A change of a printed transaction: its LSN, and a put's key and value or a delete's key.
type Change = (Lsn, Vec<u8>, Option<Vec<u8>>);

/// What the assembler handed over, held until it is known durable or the log is idle.
enum Item {
    Commit {
        commit_lsn: Lsn,
        first_lsn: Lsn,
        run: String,
        txn: u64,
        changes: Vec<Change>,
    },
    Checkpoint {
        lsn: Lsn,
        snapshot_lsn: Lsn,
        /// The record of an install that never took effect (`keel::ABANDONED_INSTALL_RUN`),
        /// naming its marker.
        abandoned: bool,
    },
}

/// Prints committed transactions as the assembler hands them over: each as soon as the log
/// proves it durable, or, when the log has nothing more for now, as `written`.
struct Printer {
    json: bool,
    /// Nothing at or below this is handed over again (a re-read).
    printed_through: Lsn,
    held: Vec<Item>,
    /// The highest commit printed before it was known durable.
    undurable: Option<Lsn>,
    printed: u64,
}

impl Printer {
    /// Prints what `known` proves durable, and with `idle` the rest as not yet known; then
    /// says when commits printed as `written` became known durable.
    fn flush(&mut self, known: Lsn, idle: bool) {
        let ready = if idle {
            self.held.len()
        } else {
            self.held
                .iter()
                .take_while(|item| match item {
                    Item::Commit { commit_lsn, .. } => *commit_lsn <= known,
                    Item::Checkpoint { lsn, .. } => *lsn <= known,
                })
                .count()
        };
        for item in self.held.drain(..ready).collect::<Vec<_>>() {
            self.print(item, known);
        }
        if self.undurable.is_some_and(|lsn| lsn <= known) {
            self.undurable = None;
            if self.json {
                println!("{}", serde_json::json!({ "durable_through": known }));
            } else {
                println!("durable through LSN {known}");
            }
        }
    }

    fn print(&mut self, item: Item, known: Lsn) {
        match item {
            Item::Commit {
                commit_lsn,
                first_lsn,
                run,
                txn,
                changes,
            } => {
                let durable = commit_lsn <= known;
                if !durable {
                    self.undurable = Some(commit_lsn);
                }
                self.printed += 1;
                if self.json {
                    let changes: Vec<_> = changes
                        .iter()
                        .map(|(lsn, key, value)| match value {
                            Some(value) => serde_json::json!({
                                "lsn": lsn, "op": "put", "key": show_json(key),
                                "value": show_json(value), "value_bytes": value.len(),
                            }),
                            None => serde_json::json!({
                                "lsn": lsn, "op": "delete", "key": show_json(key),
                            }),
                        })
                        .collect();
                    let line = serde_json::json!({
                        "commit_lsn": commit_lsn,
                        "first_lsn": first_lsn,
                        "run": run,
                        "txn": txn,
                        "durable": durable,
                        "changes": changes,
                    });
                    println!("{line}");
                } else {
                    let state = if durable { "durable" } else { "written" };
                    println!(
                        "{commit_lsn:>10}  {state:<7}  run {run}  txn {txn}  {} changes",
                        changes.len()
                    );
                    for (_, key, value) in &changes {
                        match value {
                            Some(value) => println!(
                                "            put {}  ({} bytes) {}",
                                show(key),
                                value.len(),
                                show(value)
                            ),
                            None => println!("            delete {}", show(key)),
                        }
                    }
                }
            }
            Item::Checkpoint {
                lsn,
                snapshot_lsn,
                abandoned,
            } => {
                let installed = snapshot_lsn == lsn;
                if abandoned {
                    if self.json {
                        let line =
                            serde_json::json!({ "lsn": lsn, "abandoned_install": snapshot_lsn });
                        println!("{line}");
                    } else {
                        println!(
                            "{lsn:>10}  the install marked at LSN {snapshot_lsn} never took effect (its snapshot write failed)"
                        );
                    }
                } else if self.json {
                    let line = if installed {
                        serde_json::json!({ "installed_snapshot": lsn })
                    } else {
                        serde_json::json!({ "checkpoint_lsn": lsn, "snapshot_lsn": snapshot_lsn })
                    };
                    println!("{line}");
                } else if installed {
                    println!(
                        "{lsn:>10}  snapshot installed (the state is the snapshot's from here)"
                    );
                } else {
                    println!("{lsn:>10}  checkpoint: snapshot at LSN {snapshot_lsn}");
                }
            }
        }
    }
}

impl Replay for Printer {
    fn apply(&mut self, txn: &CommittedTxn<'_>) -> Result<(), ReplayError> {
        let changes = txn
            .entries()
            .filter_map(|(lsn, entry)| match entry {
                ArchivedWalEntry::Write { key, value, .. } => {
                    Some((lsn, key.to_vec(), Some(value.to_vec())))
                }
                ArchivedWalEntry::Delete { key, .. } => Some((lsn, key.to_vec(), None)),
                _ => None,
            })
            .collect();
        self.printed_through = txn.commit_lsn;
        self.held.push(Item::Commit {
            commit_lsn: txn.commit_lsn,
            first_lsn: txn.first_lsn,
            run: txn.run_id.to_string(),
            txn: txn.txn_id,
            changes,
        });
        Ok(())
    }

    fn checkpoint(&mut self, lsn: Lsn, entry: &ArchivedWalEntry) -> Result<(), ReplayError> {
        if let ArchivedWalEntry::Checkpoint {
            snapshot_lsn,
            run_id,
        } = entry
        {
            self.printed_through = self.printed_through.max(lsn);
            self.held.push(Item::Checkpoint {
                lsn,
                snapshot_lsn: snapshot_lsn.to_native(),
                abandoned: run_id.as_u128() == keel::ABANDONED_INSTALL_RUN,
            });
        }
        Ok(())
    }
}
