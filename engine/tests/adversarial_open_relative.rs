//! Adversarial review (2) of the one open path: a database opened by a relative path. The
//! test that changes the working directory is the only one in this binary that depends on
//! it (the control uses absolute paths only).
//!
//! The storage here is the real file system, with every directory fsync recorded (the
//! simulated storage covers absolute paths under its root only): a new directory's name is
//! durable only once its parent is synced.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::executor::block_on;
use keel::{BackendChoice, Database, Options};
use keel_wal::Storage;

/// The real file system, recording the directories it syncs (resolved).
#[derive(Debug, Default)]
struct Recording {
    synced: Mutex<Vec<PathBuf>>,
}

impl Storage for Recording {
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.synced
            .lock()
            .unwrap()
            .push(std::fs::canonicalize(dir)?);
        std::fs::File::open(dir)?.sync_all()
    }
}

/// Creates the database `db` (as given), commits three keys (Strict), closes it; returns
/// the directories synced meanwhile.
fn create_and_commit(db: &Path) -> Vec<PathBuf> {
    let recording = Arc::new(Recording::default());
    let options = Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        storage: Arc::clone(&recording) as _,
        ..Options::default()
    };
    let database = Database::open(db, options).unwrap();
    let run = block_on(database.begin_run("r")).unwrap();
    for k in 0..3u8 {
        let mut txn = database.transaction(run).unwrap();
        txn.put([k], b"acknowledged").unwrap();
        block_on(txn.commit()).unwrap();
    }
    database.close().unwrap();
    recording.synced.lock().unwrap().clone()
}

/// Passes (control): created by an absolute path, the database directory's name is synced
/// into its parent (`create_dir_all_durably`).
#[test]
fn a_new_database_by_absolute_path_syncs_its_name() {
    let base = tempfile::tempdir().unwrap();
    let parent = std::fs::canonicalize(base.path()).unwrap();
    let synced = create_and_commit(&parent.join("db"));
    assert!(synced.contains(&parent), "{synced:?}");
}

/// Failed before the fix. `Database::open("db")` from its parent directory, creating it:
/// `create_dir_all_durably("db")` syncs the parent of each directory it made, but the parent
/// of `db` is the empty path, which it skips (`.filter(|p| !p.as_os_str().is_empty())`)
/// instead of syncing `.`. `Wal::resume` syncs `db/wal` and `db` (the log directory's
/// parent), and nothing syncs `.`: the name `db` is never made durable, and a power loss
/// after three Strict commits were acknowledged can take the whole database.
/// (`fsutil::sync_dir_and_parent` maps an empty parent to `.`; `create_dir_all_durably`
/// does not.)
///
/// Fix: in `fsutil::create_dir_all_durably` (wal/src/dir/fsutil.rs), sync `.` for a created
/// directory whose parent is the empty path.
#[test]
fn a_new_database_by_relative_path_never_syncs_its_name() {
    let base = tempfile::tempdir().unwrap();
    let parent = std::fs::canonicalize(base.path()).unwrap();
    let before = std::env::current_dir().unwrap();
    std::env::set_current_dir(&parent).unwrap();
    let synced = create_and_commit(Path::new("db"));
    std::env::set_current_dir(before).unwrap();
    assert!(
        synced.contains(&parent),
        "the database {} was created and acknowledged three Strict commits, but its name \
         in {} was never synced (directories synced: {synced:?})",
        parent.join("db").display(),
        parent.display()
    );
}
