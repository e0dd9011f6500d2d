//! Adversarial review (2) of the one open path, the directories' side: since 5d5435a
//! `Database::open` no longer syncs the database directory itself and relies on
//! `Wal::resume` syncing the log directory and its parent (the database directory). Nothing
//! syncs the database directory's *own* name in its parent, except `create_dir_all_durably`
//! when this open creates it. The tests run on simulated storage whose root is the parent
//! of the database directory, and end in a power loss that keeps every data write but only
//! the directory entries some fsync made durable. See each test's comment for whether it
//! fails.

use std::path::Path;
use std::sync::Arc;

use futures::executor::block_on;
use keel::{BackendChoice, Database, Options};
use keel_sim::{CrashPlan, Sim};

fn options(sim: &Arc<Sim>) -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        storage: Arc::clone(sim) as _,
        ..Options::default()
    }
}

/// Opens the database at `db` (a path as the caller passes it), commits three keys
/// (Strict: each acknowledged durable), closes it.
fn commit_three(db: &Path, sim: &Arc<Sim>) {
    let database = Database::open(db, options(sim)).unwrap();
    let run = block_on(database.begin_run("r")).unwrap();
    for k in 0..3u8 {
        let mut txn = database.transaction(run).unwrap();
        txn.put([k], b"acknowledged").unwrap();
        block_on(txn.commit()).unwrap();
    }
    database.close().unwrap();
}

/// A power loss now: every data write kept, directory entries only as last synced.
/// Returns the keys of run "r" a reopen of the database `name` in that image finds.
fn after_power_loss(sim: &Arc<Sim>, image: &Path, name: &str) -> Result<usize, String> {
    let state = sim.crash();
    state
        .materialize(&CrashPlan::keeping(&state, false, |_| true), image)
        .unwrap();
    let db = image.join(name);
    if !db.is_dir() {
        return Err(format!("{} is gone after the power loss", db.display()));
    }
    let database = Database::open(
        &db,
        Options {
            create_if_missing: false,
            storage: keel_wal::storage::file_system(),
            ..options(sim)
        },
    )
    .map_err(|e| e.to_string())?;
    let keys = database
        .list_runs()
        .into_iter()
        .filter(|info| info.name == "r")
        .map(|info| database.scan(info.id, b"").unwrap().len())
        .sum();
    database.close().unwrap();
    Ok(keys)
}

/// Passes (control): a database directory created by this open, by an absolute path, is
/// synced into its parent (`create_dir_all_durably`).
#[test]
fn a_new_database_by_absolute_path_keeps_its_commits() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    let sim = Sim::new(&root, 1).unwrap();
    commit_three(&root.join("db"), &sim);
    let found = after_power_loss(&sim, &base.path().join("image"), "db");
    assert_eq!(found, Ok(3));
}

/// Failed before the fix. A process created the database directory (`mkdir`) and died before the fsync of
/// its parent (a crash at the first storage event of its open). The next process opens it
/// on the same storage, commits Strict and closes: the directory exists, so
/// `create_dir_all_durably` does nothing, `Wal::resume` syncs `db/wal` and `db`, and no one
/// syncs `db`'s own name in its parent. A power loss then takes the whole database with its
/// acknowledged commits.
///
/// Root cause: `Database::open` (engine/src/db/open.rs) makes durable the entries *in* the
/// database directory (via the log directory's parent) but not the directory's name, which
/// an earlier process may have left unsynced, the same hazard `Wal::resume` closes for the
/// log directory with `sync_dir_and_parent`. Fix: sync the database directory's parent once
/// at open (e.g. `fsutil::sync_dir_and_parent` on the database directory instead of the
/// log directory's parent, or the parent alone), before anything is acknowledged.
#[test]
fn a_database_directory_left_unsynced_by_a_dead_process_is_lost_with_its_commits() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    let sim = Sim::new(&root, 2).unwrap();
    let db = root.join("db");
    // The first process: dies at its first storage event, the fsync of `root` after its
    // mkdir of `db`.
    sim.crash_after_events(0);
    assert!(Database::open(&db, options(&sim)).is_err());
    assert!(db.is_dir() && sim.is_crashed());
    let unsynced = sim.restart(3).unwrap();
    assert!(unsynced.dir_changes > 0, "the mkdir of db is not durable");
    // The second process.
    commit_three(&db, &sim);
    let found = after_power_loss(&sim, &base.path().join("image"), "db");
    assert_eq!(
        found,
        Ok(3),
        "three Strict commits were acknowledged by the second process"
    );
}

/// Every key of run "r" with its value.
fn keys(database: &Database) -> Vec<(Vec<u8>, Vec<u8>)> {
    database
        .list_runs()
        .into_iter()
        .filter(|info| info.name == "r")
        .flat_map(|info| database.scan(info.id, b"").unwrap())
        .map(|(key, version)| (key, version.value))
        .collect()
}

/// Passes. A first process commits, then dies at each storage event of its first
/// checkpoint (the `snapshots/` directory's creation and sync, the snapshot's write, rename
/// and directory sync, the `Checkpoint` entry); the next process opens on the same storage,
/// commits and closes; a power loss keeping only what is durable must give back what the
/// second process saw and acknowledged.
#[test]
fn a_checkpoint_killed_at_any_event_then_a_restart_keeps_what_it_acknowledged() {
    let base = tempfile::tempdir().unwrap();
    let (mut finished, mut crashed, mut unsynced_names) = (false, 0, 0);
    for crash_at in 0u64..200 {
        let root = base.path().join(format!("root{crash_at}"));
        let sim = Sim::new(&root, crash_at).unwrap();
        let db = root.join("db");
        let database = Database::open(&db, options(&sim)).unwrap();
        let run = block_on(database.begin_run("r")).unwrap();
        for k in 0..4u8 {
            let mut txn = database.transaction(run).unwrap();
            txn.put([k], b"first").unwrap();
            block_on(txn.commit()).unwrap();
        }
        sim.crash_after_events(crash_at);
        let checkpoint = block_on(database.checkpoint());
        if !sim.is_crashed() {
            checkpoint.unwrap();
            sim.crash_after_events(1 << 40);
            database.close().unwrap();
            finished = true;
            break;
        }
        drop(database);
        crashed += 1;
        if sim.restart(crash_at ^ 0x5eed).unwrap().dir_changes > 0 {
            unsynced_names += 1;
        }
        let database = Database::open(&db, options(&sim))
            .unwrap_or_else(|e| panic!("crash point {crash_at}: reopen: {e}"));
        let run = database
            .list_runs()
            .into_iter()
            .find(|r| r.name == "r")
            .unwrap()
            .id;
        for k in 4..6u8 {
            let mut txn = database.transaction(run).unwrap();
            txn.put([k], b"second").unwrap();
            block_on(txn.commit()).unwrap();
        }
        let expected = keys(&database);
        assert_eq!(expected.len(), 6);
        database.close().unwrap();
        let state = sim.crash();
        let image = base.path().join(format!("image{crash_at}"));
        state
            .materialize(&CrashPlan::prefix(&state, 0, false), &image)
            .unwrap();
        let reopened = Database::open(
            image.join("db"),
            Options {
                storage: keel_wal::storage::file_system(),
                ..options(&sim)
            },
        )
        .unwrap_or_else(|e| panic!("crash point {crash_at}: after a power loss: {e}"));
        assert_eq!(keys(&reopened), expected, "crash point {crash_at}");
        reopened.close().unwrap();
    }
    assert!(
        finished,
        "the checkpoint never finished within 200 storage events"
    );
    println!("{crashed} crash points, {unsynced_names} with directory entries not durable");
    assert!(unsynced_names > 0, "no crash point left a name unsynced");
}
