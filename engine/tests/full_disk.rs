//! A real full disk: a small tmpfs is mounted for the test (this needs root, as in CI; set
//! `KEEL_REQUIRE_TMPFS=1` to make a failed mount an error instead of a skip). The database
//! fills it until a commit fails; the failure must name the full disk, nothing acknowledged
//! may be lost, and once space is freed the database reopens and goes on.

use std::path::{Path, PathBuf};
use std::process::Command;

use futures::executor::block_on;
use keel::{BackendChoice, Database, Options, RunId};

/// A mounted tmpfs, unmounted on drop. One at a time: `mount` and `umount` are child
/// processes, and a child holds a copy of every descriptor the test process has open from
/// its fork to its exec, so a test running beside another could find its own database's
/// lock still held (a `Locked` reopen), or space of a file it removed not yet freed, while
/// the other test's child starts.
struct Tmpfs {
    dir: tempfile::TempDir,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static MOUNTED: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let one_at_a_time = MOUNTED.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "keel-full-disk",
            ])
            .arg(dir.path())
            .status();
        match status {
            Ok(status) if status.success() => Some(Tmpfs {
                dir,
                _one_at_a_time: one_at_a_time,
            }),
            other => {
                let why = format!("cannot mount a tmpfs ({other:?}): needs root");
                assert!(
                    std::env::var("KEEL_REQUIRE_TMPFS").is_err(),
                    "KEEL_REQUIRE_TMPFS is set and {why}"
                );
                eprintln!("full-disk test skipped: {why}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn options(backend: BackendChoice) -> Options {
    Options {
        segment_bytes: 256 * 1024,
        max_record_bytes: 16 * 1024,
        backend,
        checkpoint_log_bytes: 0,
        ..Options::default()
    }
}

/// Fills the file system with a ballast file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("ballast");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xbb_u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

fn value(i: u32) -> Vec<u8> {
    format!("{i:06}-").repeat(150).into_bytes()
}

fn backends() -> Vec<BackendChoice> {
    keel_wal::BackendChoice::available()
        .iter()
        .map(|b| match b {
            keel_wal::BackendChoice::Uring => BackendChoice::Uring,
            keel_wal::BackendChoice::UringDirect => BackendChoice::UringDirect,
            _ => BackendChoice::Std,
        })
        .collect()
}

#[test]
fn a_full_disk_fails_commits_clearly_and_loses_nothing_acknowledged() {
    for backend in backends() {
        let Some(fs) = Tmpfs::mount("2m") else {
            return;
        };
        let path = fs.path().join("db");
        let db = Database::open(&path, options(backend)).unwrap();
        let run = block_on(db.begin_run("fill")).unwrap();
        let ballast = fill(fs.path());
        // Commit until the disk is full: the preallocated segments hold what fits, the next
        // spare cannot be made.
        let mut acked = 0u32;
        let error = loop {
            let mut txn = db.transaction(run).unwrap();
            txn.put(format!("k{acked:06}").as_bytes(), value(acked))
                .unwrap();
            match block_on(txn.commit()) {
                Ok(_) => acked += 1,
                Err(error) => break error,
            }
            assert!(acked < 100_000, "{backend:?}: the disk never filled");
        };
        let message = error.to_string();
        println!("{backend:?}: {acked} commits acknowledged, then: {message}");
        assert!(acked > 100, "{backend:?}: only {acked} commits fitted");
        assert!(
            message.contains("No space left on device") || message.contains("os error 28"),
            "{backend:?}: the error does not name the full disk: {message}"
        );
        // Later commits fail too, with the same cause; none is acknowledged.
        let mut txn = db.transaction(run).unwrap();
        txn.put(b"after", b"failure").unwrap();
        assert!(block_on(txn.commit()).is_err(), "{backend:?}");
        drop(db);

        // Space freed: everything acknowledged is there, and the database goes on.
        std::fs::remove_file(ballast).unwrap();
        let db = Database::open(&path, options(backend)).unwrap();
        let run = RunId::from_u128(run.as_u128());
        for i in 0..acked {
            let got = db.get(run, format!("k{i:06}").as_bytes()).unwrap();
            assert_eq!(
                got.map(|v| v.value),
                Some(value(i)),
                "{backend:?}: acknowledged commit {i} lost"
            );
        }
        assert_eq!(db.get(run, b"after").unwrap(), None);
        for i in acked..acked + 50 {
            let mut txn = db.transaction(run).unwrap();
            txn.put(format!("k{i:06}").as_bytes(), value(i)).unwrap();
            block_on(txn.commit()).unwrap();
        }
        db.close().unwrap();
        let db = Database::open(&path, options(backend)).unwrap();
        assert_eq!(
            db.scan(run, b"k").unwrap().len(),
            usize::try_from(acked + 50).unwrap(),
            "{backend:?}"
        );
        db.close().unwrap();
    }
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.to_string_lossy().ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// A checkpoint that cannot write its snapshot fails clearly, leaves no partial file behind
/// (repeated failures would otherwise fill what little space is left), and changes nothing:
/// commits go on, and once space is freed the next checkpoint succeeds.
#[test]
fn a_checkpoint_on_a_full_disk_fails_clearly_and_leaves_nothing_behind() {
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    let path = fs.path().join("db");
    let db = Database::open(&path, options(BackendChoice::Std)).unwrap();
    let run = block_on(db.begin_run("fill")).unwrap();
    for i in 0..300 {
        let mut txn = db.transaction(run).unwrap();
        txn.put(format!("k{i:06}").as_bytes(), value(i)).unwrap();
        block_on(txn.commit()).unwrap();
    }
    let ballast = fill(fs.path());
    for attempt in 0..3 {
        let error = block_on(db.checkpoint()).expect_err("the snapshot cannot fit");
        let message = error.to_string();
        assert!(
            message.contains("No space left on device") || message.contains("os error 28"),
            "attempt {attempt}: the error does not name the full disk: {message}"
        );
        assert_eq!(
            leftovers(&path.join("snapshots")),
            Vec::<PathBuf>::new(),
            "attempt {attempt}: a failed snapshot write left its file"
        );
    }
    assert_eq!(db.get(run, b"k000299").unwrap().unwrap().value, value(299));
    std::fs::remove_file(ballast).unwrap();
    let lsn = block_on(db.checkpoint()).unwrap();
    db.close().unwrap();
    let db = Database::open(&path, options(BackendChoice::Std)).unwrap();
    assert_eq!(db.snapshot_lsn(), Some(lsn));
    assert_eq!(db.scan(run, b"k").unwrap().len(), 300);
    db.close().unwrap();
}
