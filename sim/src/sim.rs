//! [`Sim`], the handle a test holds: modes, faults, crashes, restarts, damage, the trace;
//! and the file and directory syncs of [`keel_wal::Storage`].

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use keel_wal::{Error, Result};

use crate::crash::CrashState;
use crate::damage::{Damage, apply_damage, damage_bytes};
use crate::rng::SimRng;
use crate::settings::{ArmedFaults, Broken, SimFaults};
use crate::state::State;
use crate::tree::{list, overlay, retry_vanished};

/// What a restarted process finds not yet durable (see [`Sim::restart`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unsynced {
    /// Writes (tracked or found as differences) a power loss may still drop.
    pub writes: usize,
    /// Inodes whose directory entries a power loss may still undo.
    pub dir_changes: usize,
}

impl Unsynced {
    /// Whether anything at all is not durable.
    pub fn any(&self) -> bool {
        self.writes > 0 || self.dir_changes > 0
    }
}

/// Simulated storage for one directory tree. See the crate documentation.
#[derive(Debug)]
pub struct Sim {
    state: Mutex<State>,
    pub(crate) changed: Condvar,
    /// Itself, for the backends it hands out.
    pub(crate) me: Weak<Sim>,
}

impl Sim {
    /// Simulated storage for `root` (created if missing), seeded with `seed`. What is under
    /// `root` now is taken as durable. Logs and databases under `root` use it when it is
    /// their options' storage.
    pub fn new(root: &Path, seed: u64) -> io::Result<Arc<Sim>> {
        std::fs::create_dir_all(root)?;
        let mut state = State {
            root: root.to_path_buf(),
            seed,
            rng: SimRng::new(seed),
            clock: 0,
            seq: 0,
            events: 0,
            max_latency: 8,
            manual: false,
            writer_blocked: false,
            dirs: HashMap::new(),
            files: HashMap::new(),
            in_flight: Vec::new(),
            ready: Vec::new(),
            faults: ArmedFaults::default(),
            writes: 0,
            syncs: 0,
            bytes: 0,
            crashed: false,
            broken: Broken::default(),
            crash_after_events: None,
            captured: None,
            trace: Vec::new(),
            skip_dir_sync: None,
        };
        retry_vanished(|| {
            state.dirs.clear();
            state.files.clear();
            state.adopt_tree(root)
        })?;
        Ok(Arc::new_cyclic(|me| Sim {
            state: Mutex::new(state),
            changed: Condvar::new(),
            me: me.clone(),
        }))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// In manual mode only [`Sim::advance`] completes operations.
    pub fn set_manual(&self, manual: bool) {
        let mut state = self.lock();
        state.manual = manual;
        drop(state);
        self.changed.notify_all();
    }

    /// Whether the sim is in manual mode.
    pub(crate) fn manual(&self) -> bool {
        self.lock().manual
    }

    /// Latencies are drawn from `1..=ticks` (default 8).
    pub fn set_max_latency(&self, ticks: u64) {
        self.lock().max_latency = ticks.max(1);
    }

    /// Arms faults, counted from now.
    pub fn arm(&self, faults: &SimFaults) {
        let mut state = self.lock();
        let (writes, syncs, bytes) = (state.writes, state.syncs, state.bytes);
        state.faults = ArmedFaults {
            fail_sync: faults.fail_sync.map(|n| syncs + n),
            enospc_at_bytes: faults.enospc_after_bytes.map(|n| bytes + n),
            lose_write: faults.lose_write.map(|n| writes + n),
            misdirect_write: faults.misdirect_write.map(|n| writes + n),
        };
        state.note(format!("arm {faults:?}"));
    }

    /// The seed: logs under the sim derive their segment salts and database id from it, so
    /// that a run writes the same bytes every time.
    pub fn seed(&self) -> u64 {
        self.lock().seed
    }

    /// Breaks the writer on purpose (see [`Broken`]); read when a log opens.
    pub fn set_broken(&self, broken: Broken) {
        self.lock().broken = broken;
    }

    pub(crate) fn broken(&self) -> Broken {
        self.lock().broken
    }

    /// Lifts the ENOSPC budget (space was freed).
    pub fn free_space(&self) {
        let mut state = self.lock();
        state.faults.enospc_at_bytes = None;
        state.note("space freed".into());
    }

    /// Completes the next due operation; returns false when nothing is in flight.
    pub fn advance(&self) -> bool {
        let mut state = self.lock();
        let advanced = state.advance_one();
        if !state.ready.is_empty() {
            // The writer has work now: not quiescent until it blocks again.
            state.writer_blocked = false;
        }
        drop(state);
        self.changed.notify_all();
        advanced
    }

    /// Operations (writes and syncs) in flight.
    pub fn operations_in_flight(&self) -> usize {
        let state = self.lock();
        state
            .in_flight
            .iter()
            .map(|c| usize::from(c.write_due.is_some()) + usize::from(c.sync))
            .sum()
    }

    /// Whether the log's writer is blocked waiting for a completion.
    pub fn writer_blocked(&self) -> bool {
        self.lock().writer_blocked
    }

    /// Hook events so far (syncs of files and directories, backend operations).
    pub fn events(&self) -> u64 {
        self.lock().events
    }

    /// Crashes now: captures the model and fails every later operation.
    pub fn crash(&self) -> CrashState {
        let mut state = self.lock();
        if !state.crashed {
            state.capture_and_crash("requested");
        }
        let captured = state.captured.clone().expect("captured at the crash");
        state.writer_blocked = false;
        drop(state);
        self.changed.notify_all();
        captured
    }

    /// Crashes at the `n`-th hook event from now (0: the next), before it takes effect.
    pub fn crash_after_events(&self, n: u64) {
        let mut state = self.lock();
        state.crash_after_events = Some(state.events + n);
    }

    /// The state captured by a crash, if one happened.
    pub fn crashed(&self) -> Option<CrashState> {
        self.lock().captured.clone()
    }

    /// Whether a crash happened (cheaper than [`Sim::crashed`]).
    pub fn is_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// A new process starts on this storage: after a process crash, or after the previous
    /// process let go of it. The storage goes on as it is: the cache (every completed write)
    /// and the live entries are what the process finds, and whatever was not durable stays
    /// pending, so that a later power loss may still drop it. Faults, an armed crash and
    /// the completions of the old process are gone; the new process's randomness (latencies,
    /// salts) derives from `seed`, and its trace starts empty.
    ///
    /// Writes a failed sync dropped (fsyncgate) become ordinary unsynced writes: a new
    /// process cannot learn of that failure, and the model does not follow the kernel's
    /// clean but never written pages past it; fsyncgate is checked within the life of the
    /// failed sync.
    ///
    /// Fails if the files changed since the crash (nothing may touch them after it), and
    /// returns what the new process finds not durable.
    pub fn restart(&self, seed: u64) -> io::Result<Unsynced> {
        let mut state = self.lock();
        assert!(
            state.in_flight.is_empty(),
            "a process restarts on storage with nothing in flight"
        );
        for model in state.files.values_mut() {
            model.dropped.clear();
        }
        let now = CrashState::capture(&mut state);
        if let Some(captured) = state.captured.take()
            && (captured.cache != now.cache || captured.live_dirs != now.live_dirs)
        {
            return Err(io::Error::other(
                "the simulated storage changed after its crash",
            ));
        }
        // Files with no name left, live or durable, are gone for good.
        let referenced: BTreeSet<u64> = now
            .cache
            .keys()
            .chain(state.dirs.values().flat_map(|d| d.values().map(|n| &n.ino)))
            .copied()
            .collect();
        state.files.retain(|ino, _| referenced.contains(ino));
        let unsynced = Unsynced {
            writes: now
                .pending
                .iter()
                .filter(|w| referenced.contains(&w.ino))
                .count(),
            dir_changes: now.dir_changes.len(),
        };
        state.seed = seed;
        state.rng = SimRng::new(seed);
        state.crashed = false;
        state.crash_after_events = None;
        state.faults = ArmedFaults::default();
        state.ready.clear();
        state.writer_blocked = false;
        state.manual = false;
        state.trace.clear();
        state.note(format!(
            "RESTART seed {seed}: {} writes and {} directory changes not durable",
            unsynced.writes, unsynced.dir_changes
        ));
        Ok(unsynced)
    }

    /// Media damage now, to the file's cache and to its durable image alike (every version
    /// of the damaged bytes a power loss could keep).
    pub fn damage(&self, damage: &Damage) -> io::Result<()> {
        let mut state = self.lock();
        let root = state.root.clone();
        let path = match damage {
            Damage::BitFlip { path, .. } | Damage::ZeroSector { path, .. } => root.join(path),
        };
        let Ok(metadata) = std::fs::metadata(&path) else {
            return Ok(());
        };
        apply_damage(&root, damage)?;
        let model = state.files.entry(metadata.ino()).or_default();
        damage_bytes(&mut model.durable, 0, damage);
        for write in &mut model.pending {
            damage_bytes(&mut write.data, write.offset, damage);
        }
        state.note(format!("damage {damage:?}"));
        Ok(())
    }

    /// What happened so far, one line an event.
    pub fn trace(&self) -> Vec<String> {
        self.lock().trace.clone()
    }

    /// A hook event on any thread. A crash here (the test's thread included) wakes the
    /// writer, so that it fails what was in flight before the test looks again.
    fn hook_event(&self, state: &mut State, path: &Path, what: &'static str) -> Result<()> {
        let result = state.event(path, what);
        if result.is_err() {
            self.changed.notify_all();
        }
        result
    }

    /// [`keel_wal::Storage::sync_file`].
    pub(crate) fn sync_file(&self, file: &File, path: &Path) -> Result<()> {
        let mut state = self.lock();
        self.hook_event(&mut state, path, "sync file")?;
        let ino = file
            .metadata()
            .map_err(|e| Error::io("reading metadata of", path, e))?
            .ino();
        // By path: the file may be open for writing only.
        let cache = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
        let model = state.files.entry(ino).or_default();
        let mut durable = cache;
        for &(offset, len) in &model.dropped {
            overlay(&mut durable, &model.durable, offset, len);
        }
        model.durable = durable;
        model.pending.clear();
        let line = format!("sync file {}", state.rel(path));
        state.note(line);
        Ok(())
    }

    /// [`keel_wal::Storage::rewrite`]: the same bytes written again make the pages a failed
    /// sync dropped dirty again, so the next sync writes them: those ranges are no longer
    /// dropped. Until that sync they are unsynced, as any write.
    pub(crate) fn rewrite(
        &self,
        file: &File,
        path: &Path,
        offset: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let mut state = self.lock();
        std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
            .map_err(|e| Error::io("rewriting", path, e))?;
        let ino = file
            .metadata()
            .map_err(|e| Error::io("reading metadata of", path, e))?
            .ino();
        let end = offset + bytes.len() as u64;
        let model = state.files.entry(ino).or_default();
        let dropped = std::mem::take(&mut model.dropped);
        for (at, len) in dropped {
            let stop = at + len as u64;
            if stop <= offset || at >= end {
                model.dropped.push((at, len));
                continue;
            }
            if at < offset {
                model
                    .dropped
                    .push((at, usize::try_from(offset - at).expect("fits")));
            }
            if stop > end {
                model
                    .dropped
                    .push((end, usize::try_from(stop - end).expect("fits")));
            }
        }
        let line = format!("rewrite {} @{offset}+{}", state.rel(path), bytes.len());
        state.note(line);
        Ok(())
    }

    /// [`keel_wal::Storage::sync_dir`].
    pub(crate) fn sync_dir(&self, dir: &Path) -> Result<()> {
        let mut state = self.lock();
        if state.skip_dir_sync.as_deref() == Some(dir) {
            state.skip_dir_sync = None;
            return Ok(());
        }
        self.hook_event(&mut state, dir, "sync directory")?;
        let ino = std::fs::metadata(dir)
            .map_err(|e| Error::io("reading metadata of", dir, e))?
            .ino();
        let live = list(dir).map_err(|e| Error::io("listing", dir, e))?;
        let line = format!(
            "sync dir {} -> {:?}",
            state.rel(dir),
            live.keys().collect::<Vec<_>>()
        );
        state.note(line);
        state.dirs.insert(ino, live);
        Ok(())
    }
}
