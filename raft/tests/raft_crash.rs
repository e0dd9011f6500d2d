//! Crash test of the Raft log store on simulated storage (keel-wal's `sim`).
//!
//! Each seed runs several lives. A life opens the store on the image the previous crash left
//! and checks what it reads back, then runs random operations: groups of concurrent appends,
//! truncations, purges (which delete segments: segments are 8 KiB here), votes and committed
//! marks. A crash is armed at a random storage event, so it falls inside an operation or
//! between two; a crash plan then picks what survives (a process crash, a power loss keeping
//! a prefix or a subset of the unsynced writes, or one torn write).
//!
//! The check, after every reopen: the store's state (vote, committed, last purged, last log
//! id, and every entry with its contents) equals the model's state after some step at or past
//! the last acknowledged one. A step is one entry of an append, or one whole other
//! operation, so a partly durable append is allowed and anything acknowledged is not lost; a
//! truncated entry coming back, a purge undone after it returned, or a vote lost fails.
//!
//! `KEEL_RAFT_CRASH_SEEDS` (default 60) seeds from `KEEL_RAFT_CRASH_FIRST` (default 1), time
//! boxed by `KEEL_RAFT_CRASH_SECONDS` (default 60); `KEEL_RAFT_CRASH_SEED=n` replays one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_raft::{KeelLogStore, KvRequest, TypeConfig};
use keel_sim::{CrashPlan, Sim, SimRng};
use keel_wal::WalOptions;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};

type Id = LogId<u64>;

/// What openraft reads back from a log.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct State {
    vote: Option<Vote<u64>>,
    committed: Option<Id>,
    purged: Option<Id>,
    /// index → (log id, the value the entry carries).
    entries: BTreeMap<u64, (Id, String)>,
}

impl State {
    fn last_log_id(&self) -> Option<Id> {
        self.entries
            .values()
            .next_back()
            .map(|(id, _)| *id)
            .or(self.purged)
    }

    fn next_index(&self) -> u64 {
        self.last_log_id().map_or(0, |id| id.index + 1)
    }

    fn describe(&self) -> String {
        let first = self.entries.keys().next();
        format!(
            "vote {:?}, committed {:?}, purged {:?}, last {:?}, {} entries from {:?}",
            self.vote.map(|v| (v.leader_id.term, v.committed)),
            self.committed.map(|c| c.index),
            self.purged.map(|p| p.index),
            self.last_log_id().map(|l| (l.leader_id.term, l.index)),
            self.entries.len(),
            first
        )
    }
}

/// The states a crash may leave, in order, and the last one acknowledged.
#[derive(Debug)]
struct Model {
    steps: Vec<State>,
    acked: usize,
}

impl Model {
    fn starting_at(state: State) -> Model {
        Model {
            steps: vec![state],
            acked: 0,
        }
    }

    fn current(&self) -> &State {
        self.steps.last().expect("a model has a state")
    }

    fn step(&mut self, change: impl FnOnce(&mut State)) {
        let mut next = self.current().clone();
        change(&mut next);
        self.steps.push(next);
    }

    fn ack(&mut self) {
        self.acked = self.steps.len() - 1;
    }

    /// The step `found` equals, at or past the acknowledged one.
    fn matches(&self, found: &State) -> Result<usize, String> {
        if let Some(at) = (self.acked..self.steps.len()).find(|&i| self.steps[i] == *found) {
            return Ok(at);
        }
        let mut message = format!(
            "the reopened log matches no state from step {} to {}\n  found:  {}",
            self.acked,
            self.steps.len() - 1,
            found.describe()
        );
        for i in self.acked..self.steps.len() {
            message.push_str(&format!("\n  step {i}: {}", self.steps[i].describe()));
        }
        if let Some(earlier) = (0..self.acked).rev().find(|&i| self.steps[i] == *found) {
            message.push_str(&format!(
                "\n  it equals step {earlier}, before the acknowledged step"
            ));
        }
        Err(message)
    }
}

fn log_id(term: u64, index: u64) -> Id {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(id: Id, value: String) -> Entry<TypeConfig> {
    Entry {
        log_id: id,
        payload: EntryPayload::Normal(KvRequest::Set {
            key: format!("k{}", id.index),
            value,
        }),
    }
}

fn options(sim: &Arc<Sim>) -> WalOptions {
    WalOptions {
        storage: Arc::clone(sim) as _,
        segment_bytes: 8192,
        max_record_bytes: 2048,
        ..WalOptions::default()
    }
}

/// Reads the state back the way openraft does after a restart.
async fn read_state(store: &mut KeelLogStore<TypeConfig>) -> Result<State, String> {
    let log_state = store.get_log_state().await.map_err(|e| e.to_string())?;
    let vote = store.read_vote().await.map_err(|e| e.to_string())?;
    let committed = store.read_committed().await.map_err(|e| e.to_string())?;
    let mut entries = BTreeMap::new();
    for found in store
        .try_get_log_entries(0..)
        .await
        .map_err(|e| e.to_string())?
    {
        let EntryPayload::Normal(KvRequest::Set { value, .. }) = found.payload else {
            return Err(format!("entry {} has an unexpected payload", found.log_id));
        };
        entries.insert(found.log_id.index, (found.log_id, value));
    }
    let state = State {
        vote,
        committed,
        purged: log_state.last_purged_log_id,
        entries,
    };
    if log_state.last_log_id != state.last_log_id() {
        return Err(format!(
            "get_log_state says last log id {:?}, the entries say {:?}",
            log_state.last_log_id,
            state.last_log_id()
        ));
    }
    Ok(state)
}

/// Totals over all seeds.
#[derive(Debug, Default)]
struct Tally {
    seeds: u64,
    lives: u64,
    operations: u64,
    acked: u64,
    crashed_inside: u64,
    power_losses: u64,
    entries_checked: u64,
    segments_deleted: u64,
    entries_read_from_log: u64,
}

struct Run {
    seed: u64,
    rng: SimRng,
    base: tempfile::TempDir,
    term: u64,
    ops: u64,
    notes: Vec<String>,
}

impl Run {
    fn dir(&self, life: u32) -> PathBuf {
        self.base.path().join(format!("life{life}"))
    }

    fn fail(&self, message: String) -> String {
        format!(
            "seed {} (replay: KEEL_RAFT_CRASH_SEED={}): {message}\n-- driver log --\n{}",
            self.seed,
            self.seed,
            self.notes.join("\n")
        )
    }

    /// One random operation; false when it failed (the crash happened inside it).
    async fn operation(
        &mut self,
        store: &mut KeelLogStore<TypeConfig>,
        model: &mut Model,
        tally: &mut Tally,
    ) -> bool {
        self.ops += 1;
        tally.operations += 1;
        let current = model.current().clone();
        let next = current.next_index();
        let outcome = match self.rng.below(20) {
            0..=9 => return self.append_group(store, model, tally).await,
            10..=11 if current.entries.len() > 1 => {
                let first = *current.entries.keys().next().expect("not empty");
                let since = first + 1 + self.rng.below(next - first - 1);
                self.notes.push(format!("truncate since {since}"));
                model.step(|s| {
                    s.entries.split_off(&since);
                });
                store.truncate(log_id(self.term, since)).await
            }
            12..=13 if !current.entries.is_empty() => {
                let keys: Vec<u64> = current.entries.keys().copied().collect();
                let upto = keys[self.rng.index(keys.len())];
                let id = if self.rng.chance(1, 5) {
                    // Past the last entry, as after a follower installs a snapshot.
                    log_id(self.term, next + self.rng.below(4))
                } else {
                    current.entries[&upto].0
                };
                let upto = id.index;
                self.notes.push(format!("purge upto {upto}"));
                model.step(|s| {
                    s.entries = s.entries.split_off(&(upto + 1));
                    s.purged = Some(id);
                });
                store.purge(id).await
            }
            14..=16 => {
                self.term += 1;
                let vote = Vote::new(self.term, self.rng.below(3));
                self.notes.push(format!("vote term {}", self.term));
                model.step(|s| s.vote = Some(vote));
                store.save_vote(&vote).await
            }
            _ => {
                let committed = current.last_log_id();
                self.notes
                    .push(format!("committed {:?}", committed.map(|c| c.index)));
                model.step(|s| s.committed = committed);
                store.save_committed(committed).await
            }
        };
        self.acknowledge(outcome.is_ok(), model, tally)
    }

    fn acknowledge(&mut self, ok: bool, model: &mut Model, tally: &mut Tally) -> bool {
        if ok {
            model.ack();
            tally.acked += 1;
        } else {
            self.notes.push("  failed: the crash happened".into());
        }
        ok
    }

    /// Up to three appends queued together (the writer held), so they share a write.
    async fn append_group(
        &mut self,
        store: &mut KeelLogStore<TypeConfig>,
        model: &mut Model,
        tally: &mut Tally,
    ) -> bool {
        let appends = 1 + self.rng.below(3);
        let expected_first = model.current().next_index();
        let mut batches = Vec::new();
        for a in 0..appends {
            let first = model.current().next_index();
            let count = 1 + self.rng.below(4);
            let mut batch = Vec::new();
            for index in first..first + count {
                let id = log_id(self.term, index);
                let value = format!("s{}o{}a{a}", self.seed, self.ops);
                batch.push(entry(id, value.clone()));
                model.step(|s| {
                    s.entries.insert(index, (id, value));
                });
            }
            self.notes
                .push(format!("append {first}..{}", first + count));
            batches.push(batch);
        }
        store.wal().hold_writer(true);
        let mut pending = Vec::new();
        for batch in batches {
            let mut clone = store.clone();
            let mut append = Box::pin(async move { clone.blocking_append(batch).await });
            // Poll once: the entries are queued in order before the writer is let go.
            if let std::task::Poll::Ready(outcome) = futures::poll!(append.as_mut()) {
                pending.push(futures::future::Either::Left(std::future::ready(outcome)));
            } else {
                pending.push(futures::future::Either::Right(append));
            }
        }
        // Readable at once: queued, not yet written (the writer is held).
        let first = expected_first;
        let end = model.current().next_index();
        let read = store.try_get_log_entries(first..end).await;
        store.wal().hold_writer(false);
        let read: Vec<(u64, String)> = read
            .unwrap_or_else(|e| panic!("{}", self.fail(format!("reading queued entries: {e}"))))
            .into_iter()
            .map(|e| match e.payload {
                EntryPayload::Normal(KvRequest::Set { value, .. }) => (e.log_id.index, value),
                _ => (e.log_id.index, String::new()),
            })
            .collect();
        let want: Vec<(u64, String)> = model
            .current()
            .entries
            .range(first..end)
            .map(|(&i, (_, v))| (i, v.clone()))
            .collect();
        if read != want {
            panic!(
                "{}",
                self.fail(format!(
                    "entries {first}..{end} just appended read back as {read:?}"
                ))
            );
        }
        let outcomes = futures::future::join_all(pending).await;
        tally.operations += appends - 1;
        let ok = outcomes.iter().all(Result::is_ok);
        self.acknowledge(ok, model, tally)
    }
}

async fn life(
    run: &mut Run,
    life: u32,
    sim: &Arc<Sim>,
    model: &mut Model,
    tally: &mut Tally,
) -> Result<(), String> {
    let dir = run.dir(life);
    let mut store = KeelLogStore::<TypeConfig>::open(dir.join("log"), options(sim))
        .map_err(|e| run.fail(format!("life {life}: reopening failed: {e}")))?;
    let found = read_state(&mut store)
        .await
        .map_err(|e| run.fail(format!("life {life}: {e}")))?;
    let step = model
        .matches(&found)
        .map_err(|e| run.fail(format!("life {life}: {e}")))?;
    tally.entries_checked += found.entries.len() as u64;
    run.notes.push(format!(
        "life {life}: reopened at step {step} of {} (acknowledged {}): {}",
        model.steps.len() - 1,
        model.acked,
        found.describe()
    ));
    *model = Model::starting_at(found);
    run.term = run
        .term
        .max(model.current().vote.map_or(0, |v| v.leader_id.term));
    let operations = 5 + run.rng.below(30);
    // Events per operation are a handful; arm the crash somewhere in the life, or past it.
    sim.crash_after_events(sim.events() + run.rng.below(operations * 6));
    for _ in 0..operations {
        if !run.operation(&mut store, model, tally).await {
            tally.crashed_inside += 1;
            break;
        }
    }
    let stats = store.stats();
    tally.segments_deleted += stats.segments_deleted;
    tally.entries_read_from_log += stats.entries_read_from_log;
    drop(store);
    Ok(())
}

fn run_seed(seed: u64, lives: u32, tally: &mut Tally) -> Result<(), String> {
    let mut run = Run {
        seed,
        rng: SimRng::new(seed),
        base: scratch(),
        term: 1,
        ops: 0,
        notes: Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut model = Model::starting_at(State::default());
    std::fs::create_dir_all(run.dir(0)).expect("the first life's directory");
    for n in 0..lives {
        let sim = Sim::new(&run.dir(n), seed ^ (u64::from(n) << 48)).expect("a sim");
        runtime.block_on(life(&mut run, n, &sim, &mut model, tally))?;
        let state = sim.crashed().unwrap_or_else(|| sim.crash());
        let plan = CrashPlan::random(&state, &mut run.rng);
        if !plan.process {
            tally.power_losses += 1;
        }
        run.notes.push(format!(
            "crash: {} pending writes, process crash: {}",
            state.pending.len(),
            plan.process
        ));
        state
            .materialize(&plan, &run.dir(n + 1))
            .map_err(|e| run.fail(format!("materializing the crash image: {e}")))?;
        drop(sim);
        tally.lives += 1;
    }
    // The last image is checked by one more open.
    let sim = Sim::new(&run.dir(lives), seed ^ 0xffff).expect("a sim");
    let dir = run.dir(lives);
    runtime.block_on(async {
        let mut store = KeelLogStore::<TypeConfig>::open(dir.join("log"), options(&sim))
            .map_err(|e| run.fail(format!("final reopen failed: {e}")))?;
        let found = read_state(&mut store).await.map_err(|e| run.fail(e))?;
        model.matches(&found).map_err(|e| run.fail(e))?;
        tally.entries_checked += found.entries.len() as u64;
        Ok::<(), String>(())
    })?;
    drop(sim);
    tally.seeds += 1;
    Ok(())
}

/// tmpfs when there is one: nothing under a sim root is really synced.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("keel-raft-sim-")
            .tempdir_in(shm)
    {
        return dir;
    }
    tempfile::Builder::new()
        .prefix("keel-raft-sim-")
        .tempdir()
        .expect("a temporary directory")
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

#[test]
fn raft_log_state_after_every_crash_is_what_was_durable() {
    let (first, count) = match std::env::var("KEEL_RAFT_CRASH_SEED") {
        Ok(seed) => (seed.parse().expect("a seed"), 1),
        Err(_) => (
            env_u64("KEEL_RAFT_CRASH_FIRST", 1),
            env_u64("KEEL_RAFT_CRASH_SEEDS", 60),
        ),
    };
    let budget = Duration::from_secs(env_u64("KEEL_RAFT_CRASH_SECONDS", 60));
    let started = Instant::now();
    let mut tally = Tally::default();
    for seed in first..first + count {
        if started.elapsed() > budget {
            break;
        }
        eprintln!("seed {seed}");
        if let Err(report) = run_seed(seed, 6, &mut tally) {
            panic!("{report}");
        }
    }
    eprintln!(
        "raft crash test: {} seeds from {first}, {} lives, {} operations ({} acknowledged, {} cut \
         by the crash), {} power losses, {} entries checked ({} read back by position), {} \
         segments deleted by purges, {:.1} s",
        tally.seeds,
        tally.lives,
        tally.operations,
        tally.acked,
        tally.crashed_inside,
        tally.power_losses,
        tally.entries_checked,
        tally.entries_read_from_log,
        tally.segments_deleted,
        started.elapsed().as_secs_f64()
    );
    assert!(tally.seeds > 0, "no seed ran");
}
