//! Model-based test: random runs, transactions (committed and aborted, some with values at
//! the record limit), run ends, checkpoints, closes and drops without close, and reopens with
//! changed options (segment size, record limit, durability, backend) on an existing log,
//! against a `BTreeMap` model; after every step and every reopen the database equals the
//! model for every acknowledged commit. `KEEL_SEED` replays a run.

use std::collections::BTreeMap;

use std::sync::Arc;

use futures::executor::block_on;
use keel::{BackendChoice, Database, Durability, Error, Options, RunId, RunState};
use keel_sim::Faults;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

#[derive(Clone, Debug)]
enum Op {
    BeginRun,
    EndRun(usize),
    Txn {
        run: usize,
        writes: Vec<(u8, Option<u8>)>,
        commit: bool,
        /// One more write whose value is as large as the record limit allows.
        big: bool,
    },
    /// A clean close, then an open with other options on the same directory.
    Reopen(Choice),
    Checkpoint,
    Close,
    DropWithoutClose,
    /// The commit's fdatasync fails (the log is poisoned), then the process "crashes" (the
    /// database is dropped) and reopens: the commit was not acknowledged, so it may or may
    /// not be there, but whole or not at all.
    FailedSyncThenCrash {
        run: usize,
        writes: Vec<(u8, Option<u8>)>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::BeginRun),
        1 => (0usize..8).prop_map(Op::EndRun),
        8 => (
            0usize..8,
            proptest::collection::vec((0u8..12, proptest::option::weighted(0.8, any::<u8>())), 1..6),
            proptest::bool::weighted(0.85),
            proptest::bool::weighted(0.3),
        )
            .prop_map(|(run, writes, commit, big)| Op::Txn { run, writes, commit, big }),
        3 => (0usize..3, 0usize..3, 0usize..3, 0usize..2).prop_map(|(segment, record, durability, backend)| {
            Op::Reopen(Choice { segment, record, durability, backend })
        }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Close),
        1 => Just(Op::DropWithoutClose),
        1 => (
            0usize..8,
            proptest::collection::vec((0u8..12, proptest::option::weighted(0.8, any::<u8>())), 1..6),
        )
            .prop_map(|(run, writes)| Op::FailedSyncThenCrash { run, writes }),
    ]
}

/// Options a reopen may choose (indices into the lists below).
#[derive(Clone, Copy, Debug, Default)]
struct Choice {
    segment: usize,
    record: usize,
    durability: usize,
    backend: usize,
}

// The first of each is where every case starts: small segments, so that a reopen with
// larger ones meets a last segment too small for the new record limit.
const SEGMENT_BYTES: [u64; 3] = [16 * 1024, 256 * 1024, 64 * 1024];
const RECORD_BYTES: [u32; 3] = [48 * 1024, 2 * 1024, 16 * 1024];

fn options(backend: BackendChoice, faults: &Arc<Faults>) -> Options {
    options_with(backend, faults, Choice::default())
}

/// The options of `choice`; a record limit the segment cannot hold becomes the largest it
/// can (`max_record_bytes` must fit a segment).
fn options_with(backend: BackendChoice, faults: &Arc<Faults>, choice: Choice) -> Options {
    let segment_bytes = SEGMENT_BYTES[choice.segment];
    let capacity = u32::try_from(segment_bytes - 4096 - 32).unwrap();
    let durability = match choice.durability {
        0 => Durability::Strict,
        1 => Durability::Batched {
            max_delay: std::time::Duration::from_millis(5),
            max_bytes: 1 << 20,
        },
        _ => Durability::Async {
            max_delay: std::time::Duration::from_millis(5),
        },
    };
    let available = BackendChoice::available();
    Options {
        storage: Arc::clone(faults) as _,
        segment_bytes,
        max_record_bytes: RECORD_BYTES[choice.record].min(capacity),
        // Small, so that many transactions spill to the log before their commit.
        spill_txn_bytes: 64,
        durability,
        backend: if choice == Choice::default() {
            backend
        } else {
            available[choice.backend % available.len()]
        },
        ..Options::default()
    }
}

impl PartialEq for Choice {
    fn eq(&self, other: &Choice) -> bool {
        (self.segment, self.record, self.durability, self.backend)
            == (other.segment, other.record, other.durability, other.backend)
    }
}

#[derive(Debug, Default)]
struct Model {
    runs: Vec<(RunId, bool)>,
    data: BTreeMap<(u128, Vec<u8>), Vec<u8>>,
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k:02}").into_bytes()
}

fn value(v: u8, n: usize) -> Vec<u8> {
    vec![v; 1 + n % 40]
}

fn check(db: &Database, model: &Model) -> Result<(), TestCaseError> {
    let runs = db.list_runs();
    prop_assert_eq!(runs.len(), model.runs.len());
    let stats = db.stats();
    prop_assert_eq!(stats.runs, model.runs.len());
    // The system run's metadata keys plus the users' keys.
    prop_assert_eq!(stats.keys, model.runs.len() + model.data.len());
    for (run, ended) in &model.runs {
        let info = db.run_info(*run).expect("a known run");
        prop_assert_eq!(matches!(info.state, RunState::Ended(_)), *ended);
        let scanned: Vec<(Vec<u8>, Vec<u8>)> = db
            .scan(*run, b"")
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = model
            .data
            .range((run.as_u128(), Vec::new())..)
            .take_while(|((r, _), _)| *r == run.as_u128())
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        prop_assert_eq!(scanned, expected);
    }
    Ok(())
}

fn run_ops(ops: Vec<Op>, backend: BackendChoice) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let mut current = options(backend, &faults);
    let mut db = Some(Database::open(dir.path(), current.clone()).unwrap());
    let mut model = Model::default();
    for (step, op) in ops.into_iter().enumerate() {
        let handle = db.as_ref().unwrap();
        match op {
            Op::BeginRun => {
                let run = block_on(handle.begin_run(&format!("run-{step}"))).unwrap();
                model.runs.push((run, false));
            }
            Op::EndRun(i) => {
                if let Some((run, ended)) = model.runs.get_mut(i % 8) {
                    match block_on(handle.end_run(*run)) {
                        Ok(_) => {
                            prop_assert!(!*ended);
                            *ended = true;
                        }
                        Err(Error::RunEnded(_)) => prop_assert!(*ended),
                        Err(other) => panic!("step {step}: {other}"),
                    }
                }
            }
            Op::Reopen(choice) => {
                db.take().unwrap().close().unwrap();
                current = options_with(backend, &faults, choice);
                db = Some(
                    Database::open(dir.path(), current.clone())
                        .unwrap_or_else(|e| panic!("step {step}: reopening with {current:?}: {e}")),
                );
            }
            Op::Txn {
                run,
                writes,
                commit,
                big,
            } => {
                let Some(&(run, ended)) = model.runs.get(run % 8) else {
                    continue;
                };
                let mut txn = match handle.transaction(run) {
                    Ok(txn) => txn,
                    Err(Error::RunEnded(_)) => {
                        prop_assert!(ended);
                        continue;
                    }
                    Err(other) => panic!("step {step}: {other}"),
                };
                prop_assert!(!ended);
                let mut staged = BTreeMap::new();
                for (n, (k, v)) in writes.iter().enumerate() {
                    match v {
                        Some(v) => {
                            txn.put(key(*k), value(*v, n)).unwrap();
                            staged.insert(key(*k), Some(value(*v, n)));
                        }
                        None => {
                            txn.delete(key(*k)).unwrap();
                            staged.insert(key(*k), None);
                        }
                    }
                    // Read-your-writes.
                    let own = txn.get(key(*k)).unwrap().map(|v| v.value);
                    prop_assert_eq!(own, staged[&key(*k)].clone());
                }
                if big {
                    // As large as the record limit of this open allows, and one byte more.
                    let k = b"big-key".to_vec();
                    let fits = current.max_record_bytes as usize - 64 - k.len();
                    let refused = txn.put(&k, vec![9u8; fits + 1]);
                    let too_large = matches!(refused, Err(Error::TooLarge { .. }));
                    prop_assert!(too_large, "step {}: {:?}", step, refused.err());
                    txn.put(&k, vec![step.to_le_bytes()[0]; fits]).unwrap();
                    staged.insert(k, Some(vec![step.to_le_bytes()[0]; fits]));
                }
                if commit {
                    let version = block_on(txn.commit()).unwrap();
                    for (k, v) in staged {
                        match v {
                            Some(v) => {
                                let seen = handle.get(run, &k).unwrap().unwrap();
                                prop_assert_eq!(seen.version, version);
                                model.data.insert((run.as_u128(), k), v);
                            }
                            None => {
                                model.data.remove(&(run.as_u128(), k));
                            }
                        }
                    }
                } else {
                    txn.abort();
                }
            }
            Op::Checkpoint => {
                block_on(handle.checkpoint()).unwrap();
            }
            Op::Close => {
                db.take().unwrap().close().unwrap();
                db = Some(Database::open(dir.path(), current.clone()).unwrap());
            }
            Op::FailedSyncThenCrash { run, writes } => {
                let Some(&(run, false)) = model.runs.get(run % 8) else {
                    continue;
                };
                if current.durability != Durability::Strict {
                    // Acknowledged before the sync: a failed sync cannot fail the commit.
                    continue;
                }
                let mut txn = handle.transaction(run).unwrap();
                let mut staged = BTreeMap::new();
                for (n, (k, v)) in writes.iter().enumerate() {
                    match v {
                        Some(v) => txn.put(key(*k), value(*v, n)).unwrap(),
                        None => txn.delete(key(*k)).unwrap(),
                    }
                    staged.insert(key(*k), v.map(|v| value(v, n)));
                }
                faults.fail_sync_after(0);
                let outcome = block_on(txn.commit());
                prop_assert!(outcome.is_err(), "step {step}: a commit whose sync failed");
                drop(db.take());
                faults.fail_sync_after(u32::MAX);
                db = Some(Database::open(dir.path(), current.clone()).unwrap());
                let mut with = Model {
                    runs: model.runs.clone(),
                    data: model.data.clone(),
                };
                for (k, v) in staged {
                    match v {
                        Some(v) => with.data.insert((run.as_u128(), k), v),
                        None => with.data.remove(&(run.as_u128(), k)),
                    };
                }
                // Whole or not at all: adopt whichever the database shows.
                if check(db.as_ref().unwrap(), &with).is_ok() {
                    model = with;
                }
            }
            Op::DropWithoutClose => {
                drop(db.take());
                db = Some(Database::open(dir.path(), current.clone()).unwrap());
                let report = db.as_ref().unwrap().recovery_report();
                prop_assert_eq!(report.txns_incomplete, 0);
            }
        }
        check(db.as_ref().unwrap(), &model)?;
    }
    Ok(())
}

#[test]
fn the_database_equals_the_model_after_every_step_and_reopen() {
    let seed: u64 = std::env::var("KEEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b65_656c);
    println!("seed: {seed} (replay with KEEL_SEED={seed})");
    for backend in keel_wal::BackendChoice::available() {
        let mut runner = TestRunner::new(Config {
            cases: 48,
            rng_seed: RngSeed::Fixed(seed),
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&proptest::collection::vec(op(), 1..40), |ops| {
                run_ops(ops, *backend)
            })
            .unwrap();
    }
}
