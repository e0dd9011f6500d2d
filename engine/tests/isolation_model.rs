//! A model of isolation. Seeded interleavings of several open transactions on eight accounts
//! (reads, scans, transfers, withdrawals, commits, aborts), with every outcome predicted
//! exactly by the model and compared with the engine's:
//!
//! - every read equals the account's value at the transaction's view (the model's state at
//!   its first read), or its own write; a scan's sum is the view's;
//! - a commit is refused with `Conflict` exactly when a commit after the transaction's view
//!   wrote an account it read or scanned (serializable) or writes (snapshot isolation);
//! - under serializable, no pair of accounts (2i, 2i + 1) ever sums below zero: withdrawals
//!   check the pair's sum, and only write skew could break it (under snapshot isolation it
//!   does, and the model predicts that too).
//!
//! Run under both isolations on every backend, then on simulated storage crashed at a random
//! storage event and reopened from a random crash image: the recovered accounts are the
//! model's acknowledged commits, plus the commit in flight whole or not at all.
//!
//! And threads transferring at once through `Database::transact` conserve the total, live
//! and after a reopen, on every backend.
//!
//! `KEEL_ISOLATION_SEEDS` (default 60) seeds from 1; `KEEL_ISOLATION_SEED` runs one. Every
//! failure names its seed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::executor::block_on;
use keel::{BackendChoice, Database, Error, Isolation, Options, RunId, Transaction};
use keel_sim::{CrashPlan, Sim, SimRng};

const ACCOUNTS: usize = 8;
/// Keys past the accounts that only blind writes touch (`note/<i>`).
const NOTES: usize = 2;
const START: i64 = 100;
const OPEN_AT_MOST: usize = 4;

fn account(i: usize) -> Vec<u8> {
    match i {
        0..ACCOUNTS => format!("acct/{i}").into_bytes(),
        _ => format!("note/{i}").into_bytes(),
    }
}

fn parse(value: &[u8]) -> i64 {
    std::str::from_utf8(value).unwrap().parse().unwrap()
}

fn options(backend: BackendChoice) -> Options {
    Options {
        segment_bytes: 16 * 1024,
        max_record_bytes: 4 * 1024,
        backend,
        checkpoint_log_bytes: 32 * 1024,
        checkpoint_log_percent: 0,
        ..Options::default()
    }
}

/// An open transaction and what the model knows of it.
struct Open {
    txn: Transaction,
    /// The model's commit count and accounts at its first read.
    view: Option<(usize, Vec<i64>)>,
    /// Serializable: the account of its first read, a point read with no view, until a
    /// second read pins the view there (if that account is unchanged since; else the read is
    /// refused with a conflict).
    lone: Option<usize>,
    read: BTreeSet<usize>,
    scanned: bool,
    writes: BTreeMap<usize, i64>,
}

#[derive(Default)]
struct Figures {
    commits: u64,
    conflicts: u64,
    aborts: u64,
    reads: u64,
    negative_pairs: u64,
}

struct Model {
    seed: u64,
    isolation: Isolation,
    accounts: Vec<i64>,
    /// The accounts each commit wrote, in commit order.
    history: Vec<BTreeSet<usize>>,
    figures: Figures,
}

impl Model {
    fn fail(&self, what: &str) -> ! {
        panic!("seed {} ({:?}): {what}", self.seed, self.isolation)
    }

    /// Pins `open`'s view for a read from it: at the first read, or (serializable) moved to
    /// now at the second if the lone first read's account is unchanged since. `Err`: the
    /// engine must refuse the read with a conflict on that account.
    fn pin(&self, open: &mut Open) -> Result<(), usize> {
        let now = || (self.history.len(), self.accounts.clone());
        match (&open.view, open.lone) {
            (None, _) => open.view = Some(now()),
            (Some((seq, _)), Some(lone)) => {
                if self.history[*seq..].iter().any(|w| w.contains(&lone)) {
                    return Err(lone);
                }
                open.view = Some(now());
                open.lone = None;
            }
            (Some(_), None) => {}
        }
        Ok(())
    }

    /// Checks that the engine refused a read with a conflict on account `lone`.
    fn refused(&mut self, outcome: Result<(), Error>, lone: usize) {
        match outcome {
            Err(Error::Conflict { key, .. }) if key == account(lone) => {
                self.figures.conflicts += 1;
            }
            other => self.fail(&format!(
                "a read after the lone read of account {lone}, changed since, gave {other:?}"
            )),
        }
    }

    /// Reads account `i` in `open` through the engine and checks it against the model; `None`
    /// when the engine refused it as the model says (the transaction is then dropped).
    fn read(&mut self, open: &mut Open, i: usize) -> Option<i64> {
        let seen = open.txn.get(account(i));
        self.figures.reads += 1;
        let expected = match open.writes.get(&i) {
            Some(own) => *own,
            None if open.view.is_none() && self.isolation == Isolation::Serializable => {
                open.view = Some((self.history.len(), self.accounts.clone()));
                open.lone = Some(i);
                open.read.insert(i);
                self.accounts[i]
            }
            None => {
                if let Err(lone) = self.pin(open) {
                    self.refused(seen.map(|_| ()), lone);
                    return None;
                }
                open.read.insert(i);
                open.view.as_ref().expect("pinned").1[i]
            }
        };
        let seen = seen.unwrap().map(|v| parse(&v.value));
        if seen != Some(expected) {
            self.fail(&format!(
                "account {i} read {seen:?}, the model has {expected}"
            ));
        }
        Some(expected)
    }

    fn scan(&mut self, open: &mut Open) -> Option<()> {
        let seen = open.txn.scan(b"acct/");
        if let Err(lone) = self.pin(open) {
            self.refused(seen.map(|_| ()), lone);
            return None;
        }
        let seen = seen.unwrap();
        let (_, view) = open.view.as_ref().expect("pinned");
        open.scanned = true;
        let mut expected: Vec<i64> = view.clone();
        for (i, own) in &open.writes {
            expected[*i] = *own;
        }
        let mut expected: Vec<(Vec<u8>, i64)> =
            (0..ACCOUNTS).map(|i| (account(i), expected[i])).collect();
        expected.sort();
        let seen: Vec<(Vec<u8>, i64)> = seen
            .into_iter()
            .map(|(k, v)| (k, parse(&v.value)))
            .collect();
        if seen != expected {
            self.fail(&format!("scan saw {seen:?}, the model has {expected:?}"));
        }
        Some(())
    }

    fn write(open: &mut Open, i: usize, value: i64) {
        open.txn
            .put(account(i), value.to_string().as_bytes())
            .unwrap();
        open.writes.insert(i, value);
    }

    /// Whether `open`'s commit must be refused.
    fn conflicts(&self, open: &Open) -> bool {
        let Some((seq, _)) = &open.view else {
            return false;
        };
        let later = self.history[*seq..].iter();
        match self.isolation {
            Isolation::Serializable if open.scanned => {
                let scanned = |w: &BTreeSet<usize>| w.iter().any(|i| *i < ACCOUNTS);
                later
                    .into_iter()
                    .any(|w| scanned(w) || !w.is_disjoint(&open.read))
            }
            Isolation::Serializable => later.into_iter().any(|w| !w.is_disjoint(&open.read)),
            _ => later
                .into_iter()
                .any(|w| w.iter().any(|i| open.writes.contains_key(i))),
        }
    }

    fn committed(&mut self, writes: &BTreeMap<usize, i64>) {
        for (i, value) in writes {
            self.accounts[*i] = *value;
        }
        self.history.push(writes.keys().copied().collect());
        self.figures.commits += 1;
        let negative =
            (0..ACCOUNTS / 2).any(|p| self.accounts[2 * p] + self.accounts[2 * p + 1] < 0);
        if negative {
            if self.isolation == Isolation::Serializable {
                self.fail(&format!("a pair went below zero: {:?}", self.accounts));
            }
            self.figures.negative_pairs += 1;
        }
    }
}

/// A transfer from `a` to `b`, keeping `a` and its pair at or above zero.
fn transfer(model: &mut Model, txn: &mut Open, (a, b): (usize, usize), amount: i64) -> Option<()> {
    let (va, vb) = (model.read(txn, a)?, model.read(txn, b)?);
    let pair = model.read(txn, a ^ 1)?;
    if va >= amount && (a ^ 1 == b || va + pair >= amount) {
        Model::write(txn, a, va - amount);
        Model::write(txn, b, vb + amount);
    }
    Some(())
}

/// A withdrawal from `a` of over half its pair's sum, checked against that sum: two at once
/// on both sides of a pair break it (write skew).
fn withdraw(model: &mut Model, txn: &mut Open, a: usize) -> Option<()> {
    let mine = model.read(txn, a)?;
    let theirs = model.read(txn, a ^ 1)?;
    let amount = (mine + theirs) / 2 + 1;
    if mine + theirs >= amount {
        Model::write(txn, a, mine - amount);
    }
    Some(())
}

/// The outcome of one life: `Err` carries the writes of the commit cut by a crash.
type Life = Result<(), BTreeMap<usize, i64>>;

/// Takes seeded steps until `steps` are done, or a commit fails (the storage crashed).
fn steps(model: &mut Model, db: &Database, run: RunId, rng: &mut SimRng, steps: u32) -> Life {
    let mut open: Vec<Open> = Vec::new();
    for _ in 0..steps {
        let pick = rng.below(100);
        if open.is_empty() || (pick < 15 && open.len() < OPEN_AT_MOST) {
            open.push(Open {
                txn: db.transaction_with(run, model.isolation).unwrap(),
                view: None,
                lone: None,
                read: BTreeSet::new(),
                scanned: false,
                writes: BTreeMap::new(),
            });
            continue;
        }
        let at = rng.index(open.len());
        let (a, b) = (rng.index(ACCOUNTS), rng.index(ACCOUNTS));
        let amount = 1 + rng.below(60) as i64;
        match pick {
            15..72 => {
                let txn = &mut open[at];
                let done = match pick {
                    15..35 => model.read(txn, a).map(|_| ()),
                    35..40 => model.scan(txn),
                    40..60 if a != b => transfer(model, txn, (a, b), amount),
                    40..60 => Some(()),
                    _ => withdraw(model, txn, a),
                };
                if done.is_none() {
                    // Refused at a read (as the model said): dropped.
                    open.swap_remove(at);
                }
            }
            72..76 => {
                // A blind write (of a note, not an account: it would break a pair).
                Model::write(&mut open[at], ACCOUNTS + a % NOTES, amount);
            }
            76..95 => {
                let open = open.swap_remove(at);
                let expected = model.conflicts(&open);
                match block_on(open.txn.commit()) {
                    Ok(_) if !expected => model.committed(&open.writes),
                    Err(Error::Conflict { key, .. }) if expected => {
                        model.figures.conflicts += 1;
                        // It names a key a commit after the view wrote.
                        let seq = open.view.as_ref().map_or(0, |(seq, _)| *seq);
                        let named = (0..ACCOUNTS + NOTES).find(|i| account(*i) == key);
                        let later = |i| model.history[seq..].iter().any(|w| w.contains(&i));
                        if !named.is_some_and(later) {
                            let key = String::from_utf8_lossy(&key).into_owned();
                            model.fail(&format!("the conflict names {key}, unchanged since"));
                        }
                    }
                    Err(Error::Conflict { key, .. }) => model.fail(&format!(
                        "refused with a conflict on {:?} the model does not have",
                        String::from_utf8_lossy(&key)
                    )),
                    Ok(_) => model.fail("committed where the model has a conflict"),
                    Err(_) => return Err(open.writes),
                }
            }
            _ => {
                open.swap_remove(at);
                model.figures.aborts += 1;
            }
        }
    }
    Ok(())
}

fn accounts_of(db: &Database, run: RunId) -> Vec<i64> {
    (0..ACCOUNTS + NOTES)
        .map(|i| parse(&db.get(run, account(i)).unwrap().unwrap().value))
        .collect()
}

fn setup(db: &Database) -> RunId {
    let run = block_on(db.begin_run("accounts")).unwrap();
    let mut txn = db.transaction(run).unwrap();
    for i in 0..ACCOUNTS + NOTES {
        txn.put(account(i), START.to_string().as_bytes()).unwrap();
    }
    block_on(txn.commit()).unwrap();
    run
}

fn model(seed: u64, isolation: Isolation) -> Model {
    Model {
        seed,
        isolation,
        accounts: vec![START; ACCOUNTS + NOTES],
        history: vec![(0..ACCOUNTS + NOTES).collect()],
        figures: Figures::default(),
    }
}

fn seeds() -> Vec<u64> {
    if let Ok(one) = std::env::var("KEEL_ISOLATION_SEED") {
        return vec![one.parse().unwrap()];
    }
    let n = std::env::var("KEEL_ISOLATION_SEEDS").map_or(60, |n| n.parse().unwrap());
    (1..=n).collect()
}

fn report(what: &str, figures: &Figures) {
    println!(
        "{what}: {} commits, {} conflicts, {} aborts, {} reads, {} commits leaving a pair below zero",
        figures.commits, figures.conflicts, figures.aborts, figures.reads, figures.negative_pairs
    );
}

#[test]
fn interleaved_transactions_match_the_model() {
    for &backend in BackendChoice::available() {
        for isolation in [Isolation::Serializable, Isolation::Snapshot] {
            let mut total = Figures::default();
            for seed in seeds() {
                let dir = tempfile::tempdir().unwrap();
                let db = Database::open(dir.path(), options(backend)).unwrap();
                let run = setup(&db);
                let mut model = model(seed, isolation);
                let mut rng = SimRng::new(seed);
                if steps(&mut model, &db, run, &mut rng, 300).is_err() {
                    model.fail("a commit failed on a healthy disk");
                }
                if accounts_of(&db, run) != model.accounts {
                    model.fail("the live state differs from the model");
                }
                db.close().unwrap();
                let db = Database::open(dir.path(), options(backend)).unwrap();
                if accounts_of(&db, run) != model.accounts {
                    model.fail("the reopened state differs from the model");
                }
                db.close().unwrap();
                let f = &model.figures;
                total.commits += f.commits;
                total.conflicts += f.conflicts;
                total.aborts += f.aborts;
                total.reads += f.reads;
                total.negative_pairs += f.negative_pairs;
            }
            report(&format!("{backend:?}, {isolation:?}"), &total);
            assert!(total.conflicts > 0, "the interleavings made no conflict");
            if isolation == Isolation::Snapshot {
                assert!(
                    total.negative_pairs > 0,
                    "no write skew under snapshot isolation"
                );
            }
        }
    }
}

#[test]
fn crashed_interleavings_recover_the_models_acknowledged_commits() {
    let mut total = Figures::default();
    let (mut cut, mut cut_kept) = (0, 0);
    for seed in seeds() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("db");
        std::fs::create_dir_all(&dir).unwrap();
        let sim = Sim::new(&dir, seed).unwrap();
        let on_sim = Options {
            storage: Arc::clone(&sim) as _,
            ..options(BackendChoice::Std)
        };
        let db = Database::open(&dir, on_sim).unwrap();
        let run = setup(&db);
        let mut model = model(seed, Isolation::Serializable);
        let mut rng = SimRng::new(seed);
        sim.crash_after_events(10 + rng.below(1500));
        let life = steps(&mut model, &db, run, &mut rng, 400);
        let state = sim.crashed().unwrap_or_else(|| sim.crash());
        drop(db);
        drop(sim);
        let image = base.path().join("image");
        state
            .materialize(&CrashPlan::random(&state, &mut rng), &image)
            .unwrap();
        let db = Database::open(&image, options(BackendChoice::Std))
            .unwrap_or_else(|e| model.fail(&format!("the crash image does not open: {e}")));
        let recovered = accounts_of(&db, run);
        db.close().unwrap();
        let mut with_cut = model.accounts.clone();
        if let Err(writes) = &life {
            cut += 1;
            for (i, value) in writes {
                with_cut[*i] = *value;
            }
        }
        if recovered == with_cut && life.is_err() && with_cut != model.accounts {
            cut_kept += 1;
        } else if recovered != model.accounts {
            model.fail(&format!(
                "recovered {recovered:?}; acknowledged {:?}, with the cut commit {with_cut:?}",
                model.accounts
            ));
        }
        let f = &model.figures;
        total.commits += f.commits;
        total.conflicts += f.conflicts;
        total.reads += f.reads;
    }
    report("simulated crashes, Serializable", &total);
    // A crash often lands in the log's background work (segment preallocation, the
    // checkpoint thread), and the next commit then fails before anything of it is written.
    println!(
        "{cut} lives ended by a failed commit (its outcome unknown), {cut_kept} of them recovered with it"
    );
    assert!(cut > 0, "no crash ended a life at a commit");
}

#[test]
fn concurrent_transfers_conserve_the_total() {
    for &backend in BackendChoice::available() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), options(backend)).unwrap();
        let run = setup(&db);
        let attempts = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (db, attempts) = (&db, &attempts);
                s.spawn(move || {
                    let mut rng = SimRng::new(t);
                    for _ in 0..100 {
                        let (a, b) = (rng.index(ACCOUNTS), rng.index(ACCOUNTS));
                        let amount = 1 + rng.below(30) as i64;
                        block_on(db.transact(run, 1000, |txn| {
                            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            // A second read may be refused (the first read's key
                            // changed meanwhile): `?` hands the conflict to `transact`.
                            let read = |txn: &mut Transaction, i| -> keel::Result<i64> {
                                Ok(parse(&txn.get(account(i))?.unwrap().value))
                            };
                            let (va, vb) = (read(txn, a)?, read(txn, b)?);
                            if a != b && va >= amount {
                                txn.put(account(a), (va - amount).to_string().as_bytes())?;
                                txn.put(account(b), (vb + amount).to_string().as_bytes())?;
                            }
                            Ok(())
                        }))
                        .unwrap();
                    }
                });
            }
        });
        let live = accounts_of(&db, run);
        let total: i64 = live[..ACCOUNTS].iter().sum();
        assert_eq!(total, START * ACCOUNTS as i64, "{backend:?}: {live:?}");
        assert!(live.iter().all(|v| *v >= 0), "{backend:?}: {live:?}");
        db.close().unwrap();
        let db = Database::open(dir.path(), options(backend)).unwrap();
        assert_eq!(accounts_of(&db, run), live, "{backend:?}: reopened");
        db.close().unwrap();
        let attempts = attempts.into_inner();
        println!(
            "{backend:?}: 400 transfers in {attempts} attempts ({} retried on conflicts)",
            attempts - 400
        );
    }
}
