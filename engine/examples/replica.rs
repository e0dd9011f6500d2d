//! A read replica on the change feed: a primary and a follower database in two directories.
//!
//! The follower bootstraps from the primary's snapshot (`checkpoint`, `read_snapshot`,
//! `install_snapshot`), then applies the primary's feed (`subscribe`, `apply_feed_commit`)
//! while the primary keeps committing, begins a run, ends one and deletes another. Midway it
//! is stopped (closed) and restarted: it resumes from the primary LSN it stored in its own
//! database. At the end both states (runs, keys, values) are compared by digest.
//!
//! The follower stores the last applied primary LSN every few commits, not with each one, and
//! after every run change: a restart may then apply again the commits after the stored LSN
//! (at most one run change among them), which changes nothing once it has caught up
//! (`Database::apply_feed_commit` says why).
//!
//! `cargo run --release -p keel --example replica`

use futures::StreamExt;
use futures::executor::block_on;
use keel::{Database, FeedEvent, Lsn, Options, RunId, RunState};

/// Where the follower keeps its own bookkeeping (not a primary run).
const REPLICATION: &str = "replication";
/// Store the applied LSN every this many commits.
const STORE_EVERY: u64 = 25;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = tempfile::tempdir()?;
    let (primary_dir, replica_dir) = (base.path().join("primary"), base.path().join("replica"));
    let primary = Database::open(&primary_dir, Options::default())?;
    let orders = block_on(primary.begin_run("orders"))?;
    let users = block_on(primary.begin_run("users"))?;
    write(&primary, &[orders, users], 0..400)?;

    // Bootstrap: the primary's newest snapshot, installed; then the feed from its LSN on.
    let snapshot = block_on(primary.checkpoint())?;
    let image = primary.read_snapshot(snapshot)?;
    let replica = Database::open(&replica_dir, Options::default())?;
    block_on(replica.install_snapshot(&image))?;
    let bookkeeping = block_on(replica.begin_run(REPLICATION))?;
    store_applied(&replica, bookkeeping, snapshot)?;
    println!("bootstrapped the replica from the primary's snapshot at LSN {snapshot}");

    // The follower applies the feed while the primary commits 400 more, in a run begun
    // after the bootstrap too, then stops.
    let events = block_on(primary.begin_run("events"))?;
    write(&primary, &[orders, users, events], 400..800)?;
    let first = follow(&primary, &replica, bookkeeping, Some(300))?;
    println!(
        "follower stopped after {} commits (applied through primary LSN {})",
        first.applied, first.through
    );
    replica.close()?;

    // Restarted: resumes from the LSN it stored, while the primary ends one run, begins and
    // deletes another, and commits 400 more.
    block_on(primary.end_run(users))?;
    let scratch = block_on(primary.begin_run("scratch"))?;
    write(&primary, &[orders, events, scratch], 800..1000)?;
    block_on(primary.delete_run(scratch))?;
    write(&primary, &[orders, events], 1000..1200)?;
    let replica = Database::open(&replica_dir, Options::default())?;
    let bookkeeping = run_named(&replica, REPLICATION).ok_or("the replica's bookkeeping run")?;
    let stored = applied(&replica, bookkeeping)?;
    println!("follower restarted: resumes after primary LSN {stored}");
    let second = follow(&primary, &replica, bookkeeping, None)?;
    println!(
        "follower caught up: {} more commits applied (through primary LSN {}), {} of them run changes",
        second.applied, second.through, second.system
    );
    let runs = |db: &Database| {
        let mut runs: Vec<String> = db
            .list_runs()
            .into_iter()
            .map(|r| {
                let state = if r.state == RunState::Active {
                    "active"
                } else {
                    "ended"
                };
                format!("{} ({state})", r.name)
            })
            .collect();
        runs.sort();
        runs
    };
    println!("runs on the replica: {:?}", runs(&replica));

    let (primary_digest, replica_digest) = (digest(&primary), digest(&replica));
    println!("primary digest {primary_digest:016x}, replica digest {replica_digest:016x}");
    replica.close()?;
    primary.close()?;
    if primary_digest != replica_digest {
        return Err("the replica differs from the primary".into());
    }
    println!("the replica holds exactly the primary's state");
    Ok(())
}

/// Commits `range` transactions on the primary, in `runs` in turn: a put each, some deletes.
fn write(db: &Database, runs: &[RunId], range: std::ops::Range<u32>) -> keel::Result<()> {
    for i in range {
        let run = runs[i as usize % runs.len()];
        let mut txn = db.transaction(run)?;
        txn.put(
            format!("key-{:04}", i % 500).as_bytes(),
            format!("value {i}").as_bytes(),
        )?;
        if i % 7 == 0 {
            txn.delete(format!("key-{:04}", (i * 13) % 500).as_bytes())?;
        }
        block_on(txn.commit())?;
    }
    Ok(())
}

struct Followed {
    applied: u64,
    system: u64,
    through: Lsn,
}

/// Applies the primary's feed from after the replica's stored LSN: `limit` commits, or
/// until it has caught up with the primary's last commit.
fn follow(
    primary: &Database,
    replica: &Database,
    bookkeeping: RunId,
    limit: Option<u64>,
) -> Result<Followed, Box<dyn std::error::Error>> {
    let target = primary.stats().wal.durable_lsn;
    let mut through = applied(replica, bookkeeping)?;
    let mut feed = primary.subscribe(through + 1);
    let mut done = Followed {
        applied: 0,
        system: 0,
        through,
    };
    while through < target && limit.is_none_or(|limit| done.applied < limit) {
        let event = block_on(feed.next()).ok_or("the primary closed")??;
        through = event.lsn();
        let system = matches!(&event, FeedEvent::Commit(commit) if commit.is_system());
        match event {
            FeedEvent::Commit(commit) => {
                block_on(replica.apply_feed_commit(&commit))?;
                done.applied += 1;
                done.system += u64::from(system);
            }
            FeedEvent::Installed { lsn } => {
                return Err(
                    format!("the primary installed a snapshot at {lsn}: bootstrap again").into(),
                );
            }
        }
        // After every run change too: a restart then applies at most that one again
        // (`Database::apply_feed_commit` says why).
        if system || done.applied.is_multiple_of(STORE_EVERY) {
            store_applied(replica, bookkeeping, through)?;
        }
    }
    store_applied(replica, bookkeeping, through)?;
    done.through = through;
    Ok(done)
}

fn store_applied(db: &Database, bookkeeping: RunId, lsn: Lsn) -> keel::Result<()> {
    let mut txn = db.transaction(bookkeeping)?;
    txn.put(b"applied", lsn.to_le_bytes())?;
    block_on(txn.commit()).map(drop)
}

fn applied(db: &Database, bookkeeping: RunId) -> Result<Lsn, Box<dyn std::error::Error>> {
    let stored = db.get(bookkeeping, b"applied")?.ok_or("no applied LSN")?;
    Ok(Lsn::from_le_bytes(stored.value.as_slice().try_into()?))
}

fn run_named(db: &Database, name: &str) -> Option<RunId> {
    db.list_runs()
        .into_iter()
        .find(|r| r.name == name)
        .map(|r| r.id)
}

/// A digest of every user run's id, name, state (active or ended), keys and values
/// (versions are each database's own).
fn digest(db: &Database) -> u64 {
    let mut runs: Vec<_> = db
        .list_runs()
        .into_iter()
        .filter(|r| r.name != REPLICATION)
        .collect();
    runs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut hasher = crc32fast::Hasher::new();
    let mut count = 0u64;
    for run in runs {
        hasher.update(&run.id.as_u128().to_le_bytes());
        hasher.update(run.name.as_bytes());
        hasher.update(&[u8::from(run.state == RunState::Active)]);
        for (key, value) in db.scan(run.id, b"").unwrap_or_default() {
            hasher.update(&key);
            hasher.update(&value.value);
            count += 1;
        }
    }
    (u64::from(hasher.finalize()) << 32) | count
}
