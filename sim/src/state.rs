//! The model behind a [`Sim`](crate::Sim): per file its durable image and pending writes,
//! per directory its durable entries, the chains in flight and their completions, hook
//! events and crashes.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_wal::backend::{ChainError, Completion, IoFile};
use keel_wal::{Error, Result};

use crate::SECTOR;
use crate::crash::CrashState;
use crate::rng::SimRng;
use crate::settings::{ArmedFaults, Broken};
use crate::tree::{apply, list};

/// A directory entry in the model.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
pub(crate) struct Node {
    pub(crate) ino: u64,
    pub(crate) dir: bool,
}

/// A write that reached the cache and not yet the durable image.
#[derive(Clone, Debug)]
pub struct PendingWrite {
    /// Order of completion across all files.
    pub seq: u64,
    /// Inode of its file.
    pub ino: u64,
    /// Offset in its file, in bytes.
    pub offset: u64,
    /// The bytes written.
    pub data: Vec<u8>,
    /// Made outside the backend (found as a difference at capture).
    pub untracked: bool,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct FileModel {
    pub(crate) durable: Vec<u8>,
    pub(crate) pending: Vec<PendingWrite>,
    /// Ranges a failed sync dropped: the cache has them, the durable path never will.
    pub(crate) dropped: Vec<(u64, usize)>,
}

#[derive(Debug)]
pub(crate) struct SimChain {
    pub(crate) id: u64,
    pub(crate) ino: u64,
    pub(crate) file: Arc<IoFile>,
    pub(crate) write: Option<keel_wal::backend::WriteOp>,
    pub(crate) write_due: Option<u64>,
    pub(crate) sync: bool,
    /// When the sync was submitted: the sequence number it covers through.
    pub(crate) sync_covers: Option<u64>,
    pub(crate) sync_due: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) root: PathBuf,
    pub(crate) seed: u64,
    pub(crate) rng: SimRng,
    pub(crate) clock: u64,
    pub(crate) seq: u64,
    pub(crate) events: u64,
    pub(crate) max_latency: u64,
    pub(crate) manual: bool,
    pub(crate) writer_blocked: bool,
    /// Durable entries per directory inode.
    pub(crate) dirs: HashMap<u64, BTreeMap<String, Node>>,
    pub(crate) files: HashMap<u64, FileModel>,
    pub(crate) in_flight: Vec<SimChain>,
    pub(crate) ready: Vec<Completion>,
    pub(crate) faults: ArmedFaults,
    pub(crate) writes: u64,
    pub(crate) syncs: u64,
    pub(crate) bytes: u64,
    pub(crate) crashed: bool,
    pub(crate) broken: Broken,
    pub(crate) crash_after_events: Option<u64>,
    pub(crate) captured: Option<CrashState>,
    pub(crate) trace: Vec<String>,
    /// A segment was installed by a rename into this directory and its sync is to be
    /// skipped ([`Broken::skip_rotation_dir_sync`]).
    pub(crate) skip_dir_sync: Option<PathBuf>,
}

impl State {
    pub(crate) fn note(&mut self, line: String) {
        self.trace
            .push(format!("[{} t{}] {line}", self.events, self.clock));
    }

    pub(crate) fn rel(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// Counts a hook event; crashes here when asked to; fails when crashed.
    pub(crate) fn event(&mut self, path: &Path, what: &'static str) -> Result<()> {
        if !self.crashed && self.crash_after_events.is_some_and(|at| self.events >= at) {
            self.capture_and_crash(what);
        }
        self.events += 1;
        if self.crashed {
            return Err(crashed_error(path, what));
        }
        Ok(())
    }

    /// Takes everything under `root` as durable.
    pub(crate) fn adopt_tree(&mut self, dir: &Path) -> io::Result<()> {
        let ino = std::fs::metadata(dir)?.ino();
        let entries = list(dir)?;
        for (name, node) in &entries {
            let path = dir.join(name);
            if node.dir {
                self.adopt_tree(&path)?;
            } else {
                let content = std::fs::read(&path)?;
                self.files.insert(
                    node.ino,
                    FileModel {
                        durable: content,
                        ..FileModel::default()
                    },
                );
            }
        }
        self.dirs.insert(ino, entries);
        Ok(())
    }

    pub(crate) fn latency(&mut self) -> u64 {
        1 + self.rng.below(self.max_latency)
    }

    /// Completes the operation due first. Returns false when none is in flight.
    pub(crate) fn advance_one(&mut self) -> bool {
        let next = self
            .in_flight
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.write_due.or(c.sync_due).map(|due| (due, c.id, i)))
            .min();
        let Some((due, _, index)) = next else {
            return false;
        };
        self.clock = self.clock.max(due);
        self.events += 1;
        if self.in_flight[index].write_due.is_some() {
            self.complete_write(index);
        } else {
            self.complete_sync(index);
        }
        true
    }

    fn complete_write(&mut self, index: usize) {
        let chain = &mut self.in_flight[index];
        chain.write_due = None;
        let write = chain.write.as_ref().expect("a write in flight");
        let (ino, id, offset, len) = (chain.ino, chain.id, write.offset, write.buf.len());
        let n = self.writes;
        self.writes += 1;
        let len64 = len as u64;
        if self
            .faults
            .enospc_at_bytes
            .is_some_and(|limit| self.bytes + len64 > limit)
        {
            self.note(format!("write chain {id} @{offset}+{len}: ENOSPC"));
            let error = io::Error::from_raw_os_error(28);
            return self.fail_chain(index, "write", error);
        }
        self.bytes += len64;
        let lost = self.faults.lose_write == Some(n);
        let target = if self.faults.misdirect_write == Some(n) {
            offset + SECTOR as u64
        } else {
            offset
        };
        let chain = &self.in_flight[index];
        let buf = &chain.write.as_ref().expect("checked").buf;
        if !lost && let Err(error) = chain.file.file.write_all_at(buf, target) {
            self.note(format!("write chain {id}: real write failed: {error}"));
            return self.fail_chain(index, "write", error);
        }
        let data = buf.clone();
        let path = self.rel(&chain.file.path);
        self.seq += 1;
        if !lost {
            let pending = PendingWrite {
                seq: self.seq,
                ino,
                offset: target,
                data,
                untracked: false,
            };
            self.files.entry(ino).or_default().pending.push(pending);
        }
        let how = if lost {
            " LOST"
        } else if target != offset {
            " MISDIRECTED"
        } else {
            ""
        };
        self.note(format!(
            "write done chain {id} {path} @{target}+{len} seq {}{how}",
            self.seq
        ));
        if self.in_flight[index].sync {
            let due = self.clock + self.latency();
            let chain = &mut self.in_flight[index];
            chain.sync_covers = Some(self.seq);
            chain.sync_due = Some(due);
        } else {
            self.finish(index, Ok(()));
        }
    }

    fn complete_sync(&mut self, index: usize) {
        let n = self.syncs;
        self.syncs += 1;
        let (ino, id) = (self.in_flight[index].ino, self.in_flight[index].id);
        let covers = self.in_flight[index]
            .sync_covers
            .expect("a sync in flight knows what it covers");
        let model = self.files.entry(ino).or_default();
        let (covered, later): (Vec<_>, Vec<_>) = std::mem::take(&mut model.pending)
            .into_iter()
            .partition(|p| p.seq <= covers);
        model.pending = later;
        if self.faults.fail_sync == Some(n) {
            for write in &covered {
                model.dropped.push((write.offset, write.data.len()));
            }
            self.note(format!(
                "sync chain {id}: EIO, {} writes dropped (fsyncgate)",
                covered.len()
            ));
            return self.fail_chain(index, "fdatasync", io::Error::from_raw_os_error(5));
        }
        for write in &covered {
            apply(&mut model.durable, write.offset, &write.data);
        }
        self.note(format!(
            "sync done chain {id}: {} writes durable (through seq {covers})",
            covered.len()
        ));
        self.finish(index, Ok(()));
    }

    fn fail_chain(&mut self, index: usize, operation: &'static str, error: io::Error) {
        self.finish(index, Err(ChainError { operation, error }));
    }

    fn finish(&mut self, index: usize, result: std::result::Result<(), ChainError>) {
        let chain = self.in_flight.swap_remove(index);
        self.ready.push(Completion {
            id: chain.id,
            result,
            buf: chain.write.map(|w| w.buf),
        });
    }

    /// Captures the model (the cache as it is now) and fails everything in flight.
    pub(crate) fn capture_and_crash(&mut self, at: &str) {
        self.note(format!("CRASH at {at}"));
        let captured = CrashState::capture(self);
        self.captured = Some(captured);
        self.crashed = true;
        self.writer_blocked = false;
        let root = self.root.clone();
        while !self.in_flight.is_empty() {
            let error = crashed_error(&root, "in flight").to_string();
            self.fail_chain(0, "write", io::Error::other(error));
        }
    }
}

fn crashed_error(path: &Path, what: &'static str) -> Error {
    Error::io(
        what,
        path,
        io::Error::other("simulated crash: the storage is gone"),
    )
}
