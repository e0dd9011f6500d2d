//! The change feed under simulated crashes (`keel_sim`: a process crash or a power loss at a
//! random storage event, with torn and lost writes): a subscriber never receives a commit
//! that the crash then takes back, under `Batched` and `Async` databases (whose commits are
//! acknowledged before they are durable) and `Strict` ones; and resuming after the last
//! delivered LSN on the recovered database delivers each recovered commit once, in order.
//!
//! Each life opens the database the previous crash left, checks that every commit the feed
//! ever delivered is in it, subscribes from the last delivered LSN plus one, and then takes
//! seeded steps (commit a transaction of one new key, or poll the feed once) until the crash.
//! Keys are never written twice, so "in it" is exact.
//!
//! `KEEL_SIM_FEED_SEEDS` (default 12) seeds per durability mode from
//! `KEEL_SIM_FEED_FIRST_SEED` (default 1); `KEEL_SIM_SEED` runs one. Every failure prints its
//! seed and mode.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::Stream;
use futures::executor::block_on;
use keel::{BackendChoice, Database, Durability, FeedEvent, Lsn, Options, RunId};
use keel_sim::{CrashPlan, Sim, SimRng};

fn options(durability: Durability, sim: &Arc<Sim>) -> Options {
    Options {
        durability,
        segment_bytes: 8 * 1024,
        max_record_bytes: 2 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 24 * 1024,
        checkpoint_log_percent: 0,
        storage: Arc::clone(sim) as _,
        ..Options::default()
    }
}

fn modes() -> [(&'static str, Durability); 3] {
    let max_delay = Duration::from_millis(2);
    [
        ("strict", Durability::Strict),
        (
            "batched",
            Durability::Batched {
                max_delay,
                max_bytes: 16 * 1024,
            },
        ),
        ("async", Durability::Async { max_delay }),
    ]
}

#[derive(Default)]
struct Figures {
    lives: u64,
    commits: u64,
    delivered: u64,
    checked: u64,
}

/// One seed: lives until a crash each, the delivered commits checked after every one.
fn run_seed(seed: u64, mode: &str, durability: Durability) -> Figures {
    let fail = |what: String| -> ! { panic!("seed {seed} ({mode}): {what}") };
    let base = tempfile::tempdir().unwrap();
    let dir_of = |generation: u32| -> PathBuf { base.path().join(format!("gen{generation}")) };
    let mut rng = SimRng::new(seed);
    let mut figures = Figures::default();
    // Every commit the feed delivered: its key's value, by commit LSN.
    let mut delivered: BTreeMap<Lsn, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
    let mut next_key = 0u64;
    let lives = 2 + u32::try_from(rng.below(3)).unwrap();
    std::fs::create_dir_all(dir_of(0)).unwrap();
    for life in 0..lives {
        let dir = dir_of(life);
        let sim = Sim::new(&dir, seed ^ u64::from(life)).unwrap();
        let db = Database::open(&dir, options(durability, &sim))
            .unwrap_or_else(|e| fail(format!("life {life}: the database does not reopen: {e}")));
        let run = match db.list_runs().first() {
            Some(info) => info.id,
            None => {
                block_on(db.begin_run("feed")).unwrap_or_else(|e| fail(format!("begin_run: {e}")))
            }
        };
        check_delivered(&db, run, &delivered, life).unwrap_or_else(|e| fail(e));
        figures.checked += delivered.len() as u64;
        let resume = delivered.last_key_value().map_or(1, |(lsn, _)| lsn + 1);
        let mut feed = db.subscribe(resume);
        let mut last = resume - 1;
        sim.crash_after_events(5 + rng.below(300));
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..600 {
            if sim.crashed().is_some() {
                break;
            }
            if rng.chance(1, 2) {
                let key = format!("key-{next_key:06}").into_bytes();
                let value = format!("value-{next_key}-{}", rng.below(1000)).into_bytes();
                next_key += 1;
                let Ok(mut txn) = db.transaction(run) else {
                    break;
                };
                if txn.put(&key, &value).is_err() {
                    break;
                }
                if block_on(txn.commit()).is_ok() {
                    figures.commits += 1;
                }
            } else {
                match Pin::new(&mut feed).poll_next(&mut cx) {
                    Poll::Ready(Some(Ok(FeedEvent::Commit(commit)))) if !commit.is_system() => {
                        if commit.commit_lsn <= last {
                            fail(format!(
                                "delivered LSN {} after {last}: out of order or twice",
                                commit.commit_lsn
                            ));
                        }
                        last = commit.commit_lsn;
                        let [keel::FeedChange::Put { key, value }] = commit.changes.as_slice()
                        else {
                            fail(format!("a commit of one put: {:?}", commit.changes))
                        };
                        delivered.insert(commit.commit_lsn, (key.to_vec(), value.to_vec()));
                        figures.delivered += 1;
                    }
                    Poll::Ready(Some(Ok(event))) => last = last.max(event.lsn()),
                    // The storage failing at the crash ends the feed with its error.
                    Poll::Ready(Some(Err(_)) | None) | Poll::Pending => {}
                }
            }
        }
        if sim.crashed().is_none() {
            sim.crash();
        }
        let state = sim.crashed().expect("crashed");
        drop(feed);
        drop(db);
        drop(sim);
        let plan = CrashPlan::random(&state, &mut rng);
        state.materialize(&plan, &dir_of(life + 1)).unwrap();
        figures.lives += 1;
    }
    // The last image, once more.
    let dir = dir_of(lives);
    let sim = Sim::new(&dir, seed).unwrap();
    let db = Database::open(&dir, options(durability, &sim))
        .unwrap_or_else(|e| fail(format!("the last image does not reopen: {e}")));
    if let Some(info) = db.list_runs().first() {
        check_delivered(&db, info.id, &delivered, lives).unwrap_or_else(|e| fail(e));
        figures.checked += delivered.len() as u64;
    } else if !delivered.is_empty() {
        fail("the run the feed delivered commits of is gone".into());
    }
    figures
}

/// Every delivered commit's key holds its value in `db` (keys are written once).
fn check_delivered(
    db: &Database,
    run: RunId,
    delivered: &BTreeMap<Lsn, (Vec<u8>, Vec<u8>)>,
    life: u32,
) -> Result<(), String> {
    for (lsn, (key, value)) in delivered {
        let found = db
            .get(run, key)
            .map_err(|e| format!("reading {}: {e}", String::from_utf8_lossy(key)))?;
        match found {
            Some(v) if v.value == *value && v.version == *lsn => {}
            other => {
                return Err(format!(
                    "life {life}: the feed delivered {} at LSN {lsn}, and the crash took it back \
                     (found {:?})",
                    String::from_utf8_lossy(key),
                    other.map(|v| (String::from_utf8_lossy(&v.value).into_owned(), v.version))
                ));
            }
        }
    }
    Ok(())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} is a number")))
        .unwrap_or(default)
}

#[test]
fn the_feed_never_delivers_a_commit_a_crash_takes_back() {
    let seeds: Vec<u64> = match std::env::var("KEEL_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("KEEL_SIM_SEED is a number")],
        Err(_) => {
            let first = env_u64("KEEL_SIM_FEED_FIRST_SEED", 1);
            (first..first + env_u64("KEEL_SIM_FEED_SEEDS", 12)).collect()
        }
    };
    for (mode, durability) in modes() {
        let mut total = Figures::default();
        for &seed in &seeds {
            let f = run_seed(seed, mode, durability);
            total.lives += f.lives;
            total.commits += f.commits;
            total.delivered += f.delivered;
            total.checked += f.checked;
        }
        println!(
            "feed sim ({mode}): {} seeds from {}, {} crashes, {} commits acknowledged, {} \
             delivered, {} delivered-commit checks after crashes",
            seeds.len(),
            seeds[0],
            total.lives,
            total.commits,
            total.delivered,
            total.checked
        );
        assert!(
            total.delivered > 0,
            "the feed delivered nothing: the test checks nothing"
        );
    }
}
