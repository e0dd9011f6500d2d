//! The engine on simulated storage (`keel_wal::sim`): runs, transactions (spilled ones
//! too), checkpoints that write snapshots and remove segments, installs of snapshot images
//! taken from other databases (which replace the whole state), clean reopens, and crashes
//! at a random storage event (process crash or power loss, with torn and lost writes and
//! directory entries). After each crash the database reopens and its whole state must equal
//! the model: every acknowledged commit present (I1), the one commit in flight at the crash
//! all there or not at all (I3), nothing else (I4), and it keeps working (I8). An install
//! counts as one commit: acknowledged, it is never undone; in flight, it is whole or absent.
//!
//! `KEEL_SIM_ENGINE_SEEDS` (default 40) seeds from `KEEL_SIM_ENGINE_FIRST_SEED` (default 1);
//! `KEEL_SIM_SEED` runs one. Every failure prints its seed and the trace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::executor::block_on;
use keel::{BackendChoice, Database, Options, RunId};
use keel_wal::sim::{CrashPlan, Sim, SimRng};

type Model = BTreeMap<(u128, Vec<u8>), Vec<u8>>;

fn options() -> Options {
    Options {
        segment_bytes: 16 * 1024,
        max_record_bytes: 4 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 24 * 1024,
        spill_txn_bytes: 1500,
        ..Options::default()
    }
}

fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("keel-sim-engine-")
            .tempdir_in(shm)
    {
        return dir;
    }
    tempfile::Builder::new()
        .prefix("keel-sim-engine-")
        .tempdir()
        .unwrap()
}

/// The whole state, as the model keys it.
fn state_of(db: &Database) -> Result<(Model, Vec<u128>), String> {
    let mut model = Model::new();
    let mut runs = Vec::new();
    for info in db.list_runs() {
        let run = info.id;
        runs.push(run.as_u128());
        for (key, versioned) in db.scan(run, b"").map_err(|e| e.to_string())? {
            model.insert((run.as_u128(), key), versioned.value);
        }
    }
    runs.sort_unstable();
    Ok((model, runs))
}

/// A snapshot image of another database, and the state it holds.
struct Image {
    bytes: Vec<u8>,
    model: Model,
    runs: Vec<u128>,
}

/// Builds `count` images from databases outside the sim (real files under `base`).
fn source_images(base: &Path, rng: &mut SimRng, count: usize) -> Vec<Image> {
    (0..count)
        .map(|n| {
            let dir = base.join(format!("source{n}"));
            let db = Database::open(&dir, options()).unwrap();
            let mut model = Model::new();
            let mut runs = Vec::new();
            for r in 0..1 + rng.below(3) {
                let run = block_on(db.begin_run(&format!("source-{n}-{r}"))).unwrap();
                runs.push(run.as_u128());
                let mut txn = db.transaction(run).unwrap();
                for k in 0..rng.below(15) {
                    let key = format!("key{k}").into_bytes();
                    let value = vec![u8::try_from(n).unwrap(); 1 + rng.index(200)];
                    txn.put(&key, &value).unwrap();
                    model.insert((run.as_u128(), key), value);
                }
                block_on(txn.commit()).unwrap();
            }
            runs.sort_unstable();
            let lsn = block_on(db.checkpoint()).unwrap();
            let bytes = db.read_snapshot(lsn).unwrap();
            db.close().unwrap();
            Image { bytes, model, runs }
        })
        .collect()
}

struct Driver {
    seed: u64,
    images: Vec<Image>,
    installs: u64,
    rng: SimRng,
    base: tempfile::TempDir,
    generation: u32,
    model: Model,
    runs: Vec<u128>,
    log: Vec<String>,
    traces: Vec<Vec<String>>,
    crashes: u64,
    commits: u64,
}

impl Driver {
    fn dir(&self) -> PathBuf {
        self.base.path().join(format!("g{}", self.generation))
    }

    fn fail(&self, why: &str) -> ! {
        let mut out = format!(
            "seed {} (replay: KEEL_SIM_SEED={}): {why}\n-- driver log --\n",
            self.seed, self.seed
        );
        for line in &self.log {
            out.push_str(line);
            out.push('\n');
        }
        for (i, trace) in self.traces.iter().enumerate() {
            out.push_str(&format!("-- sim trace {i} --\n"));
            for line in trace {
                out.push_str(line);
                out.push('\n');
            }
        }
        panic!("{out}");
    }

    fn value(&mut self) -> Vec<u8> {
        let len = if self.rng.chance(1, 6) {
            300 + self.rng.index(900)
        } else {
            self.rng.index(40)
        };
        let fill = self.rng.next_u64().to_le_bytes()[0];
        vec![fill; len]
    }

    /// One life: open (checking the state), work until the crash, crash.
    fn life(&mut self, life: u32) {
        let dir = self.dir();
        let sim = Sim::new(&dir, self.seed ^ u64::from(life)).unwrap();
        let db = match Database::open(&dir, options()) {
            Ok(db) => db,
            Err(e) => self.fail(&format!("I8: the database does not reopen: {e}")),
        };
        match state_of(&db) {
            Ok((state, runs)) => {
                if state != self.model || runs != self.runs {
                    let missing: Vec<_> = self
                        .model
                        .iter()
                        .filter(|(k, v)| state.get(*k) != Some(*v))
                        .map(|(k, _)| k.clone())
                        .take(5)
                        .collect();
                    let extra: Vec<_> = state
                        .iter()
                        .filter(|(k, v)| self.model.get(*k) != Some(*v))
                        .map(|(k, _)| k.clone())
                        .take(5)
                        .collect();
                    self.fail(&format!(
                        "I1/I3/I4: after the crash the state differs from the acknowledged one: \
                         missing or different {missing:?}, unexpected {extra:?}; runs {runs:?} \
                         against {:?}",
                        self.runs
                    ));
                }
            }
            Err(e) => self.fail(&format!("reading the state: {e}")),
        }
        self.log.push(format!(
            "life {life}: opened with {} keys in {} runs",
            self.model.len(),
            self.runs.len()
        ));
        let crash_at = 5 + self.rng.below(120);
        sim.crash_after_events(crash_at);
        let mut in_flight: Option<(Model, Vec<u128>)> = None;
        for _ in 0..200 {
            if sim.crashed().is_some() {
                break;
            }
            match self.rng.below(12) {
                0 => {
                    let name = format!("run-{}", self.rng.below(1000));
                    match block_on(db.begin_run(&name)) {
                        Ok(run) => {
                            self.runs.push(run.as_u128());
                            self.runs.sort_unstable();
                            self.log
                                .push(format!("begin_run {name} -> {}", run.as_u128()));
                        }
                        Err(e) => self.log.push(format!("begin_run failed: {e}")),
                    }
                }
                1 => match block_on(db.checkpoint()) {
                    Ok(lsn) => self.log.push(format!("checkpoint at {lsn}")),
                    Err(e) => self.log.push(format!("checkpoint failed: {e}")),
                },
                2 if self.rng.chance(1, 3) => {
                    let image = &self.images[self.rng.index(self.images.len())];
                    let (model, runs) = (image.model.clone(), image.runs.clone());
                    match block_on(db.install_snapshot(&image.bytes)) {
                        Ok(lsn) => {
                            self.installs += 1;
                            self.log.push(format!(
                                "installed an image of {} keys at {lsn}",
                                model.len()
                            ));
                            self.model = model;
                            self.runs = runs;
                        }
                        Err(e) => {
                            self.log.push(format!("install failed: {e}"));
                            in_flight = Some((model, runs));
                        }
                    }
                }
                _ => {
                    if self.runs.is_empty() {
                        continue;
                    }
                    let run = self.runs[self.rng.index(self.runs.len())];
                    let mut next = self.model.clone();
                    let mut txn = db.transaction(RunId::from_u128(run)).unwrap();
                    let big = self.rng.chance(1, 5);
                    let writes = 1 + self.rng.below(if big { 12 } else { 3 });
                    for _ in 0..writes {
                        let key = format!("key{}", self.rng.below(20)).into_bytes();
                        if self.rng.chance(1, 5) {
                            txn.delete(&key).unwrap();
                            next.remove(&(run, key));
                        } else {
                            let value = self.value();
                            if txn.put(&key, &value).is_err() {
                                // A spill that failed: the storage is gone.
                                break;
                            }
                            next.insert((run, key), value);
                        }
                    }
                    if self.rng.chance(1, 10) {
                        txn.abort();
                        continue;
                    }
                    match block_on(txn.commit()) {
                        Ok(lsn) => {
                            self.commits += 1;
                            self.model = next;
                            self.log.push(format!("commit {writes} writes at {lsn}"));
                        }
                        Err(e) => {
                            self.log.push(format!("commit failed: {e}"));
                            in_flight = Some((next, self.runs.clone()));
                        }
                    }
                }
            }
        }
        let state = match sim.crashed() {
            Some(state) => state,
            None => sim.crash(),
        };
        drop(db);
        self.traces.push(sim.trace());
        drop(sim);
        self.crashes += 1;
        let plan = CrashPlan::random(&state, &mut self.rng);
        self.log.push(format!(
            "crash: {} pending writes, {} directory changes, process {}",
            state.pending.len(),
            state.dir_changes.len(),
            plan.process
        ));
        self.generation += 1;
        let image = self.dir();
        state.materialize(&plan, &image).unwrap();
        // The commit in flight may have made it: look before the checking open.
        if let Some((next, next_runs)) = in_flight {
            let sim = Sim::new(&image, self.seed).unwrap();
            let db = Database::open(&image, options())
                .unwrap_or_else(|e| self.fail(&format!("I8: reopening: {e}")));
            let (state, runs) = state_of(&db).unwrap_or_else(|e| self.fail(&e));
            if state == next && runs == next_runs {
                self.log
                    .push("the commit or install in flight at the crash survived".into());
                self.model = next;
                self.runs = next_runs;
            }
            drop(db);
            drop(sim);
        }
    }
}

fn run_seed(seed: u64) -> (u64, u64, u64) {
    let base = scratch();
    let mut rng = SimRng::new(seed);
    let images = source_images(base.path(), &mut rng, 3);
    let mut driver = Driver {
        seed,
        images,
        installs: 0,
        rng,
        base,
        generation: 0,
        model: Model::new(),
        runs: Vec::new(),
        log: Vec::new(),
        traces: Vec::new(),
        crashes: 0,
        commits: 0,
    };
    std::fs::create_dir_all(driver.dir()).unwrap();
    let lives = 2 + u32::try_from(driver.rng.below(4)).unwrap();
    for life in 0..lives {
        driver.life(life);
    }
    // The last image, opened and checked once more.
    let dir = driver.dir();
    let sim = Sim::new(&dir, seed).unwrap();
    let db = Database::open(&dir, options())
        .unwrap_or_else(|e| driver.fail(&format!("I8: reopening: {e}")));
    let (state, runs) = state_of(&db).unwrap_or_else(|e| driver.fail(&e));
    if state != driver.model || runs != driver.runs {
        driver.fail("I1/I3/I4: the final state differs from the acknowledged one");
    }
    drop(db);
    drop(sim);
    let _ = Arc::new(());
    (driver.crashes, driver.commits, driver.installs)
}

#[test]
fn engine_survives_simulated_crashes() {
    if let Ok(seed) = std::env::var("KEEL_SIM_SEED") {
        let seed = seed.parse().expect("KEEL_SIM_SEED is a number");
        let (crashes, commits, installs) = run_seed(seed);
        println!("seed {seed}: {crashes} crashes, {commits} commits, {installs} installs: passed");
        return;
    }
    let seeds: u64 = std::env::var("KEEL_SIM_ENGINE_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let first: u64 = std::env::var("KEEL_SIM_ENGINE_FIRST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let (mut crashes, mut commits, mut installs) = (0, 0, 0);
    for seed in first..first + seeds {
        let (c, n, i) = run_seed(seed);
        crashes += c;
        commits += n;
        installs += i;
    }
    println!(
        "engine sim: {seeds} seeds from {first}: {crashes} crashes, {commits} acknowledged \
         commits, {installs} acknowledged snapshot installs, state checked after every crash"
    );
}
