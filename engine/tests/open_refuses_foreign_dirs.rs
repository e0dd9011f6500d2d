//! `Database::open` pointed at something that is not a Keel database refuses it with a
//! sentence saying what it looks like, before it creates anything there: a keel-wal log, a
//! directory holding other files (a checkout, say), a file; and, with `create_if_missing`
//! off, a directory holding no database or no directory at all. An empty directory, a new
//! path and an existing database open as before.

use std::path::{Path, PathBuf};

use futures::executor::block_on;
use keel::{BackendChoice, Database, Error, Options};

fn options() -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 8 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        ..Options::default()
    }
}

fn no_create() -> Options {
    Options {
        create_if_missing: false,
        ..options()
    }
}

/// Every path under `dir` (recursively), sorted: what the refusal must leave as it was.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(tree(&path));
        }
        found.push(path);
    }
    found.sort();
    found
}

/// The refusal's message, after checking it is `Error::NotADatabase` naming `path` and
/// saying `needle`.
fn refusal(outcome: keel::Result<Database>, path: &Path, needle: &str) -> String {
    let error = match outcome {
        Ok(_) => panic!("{} opened as a database", path.display()),
        Err(error) => error,
    };
    let message = error.to_string();
    assert!(
        matches!(&error, Error::NotADatabase { path: p, .. } if p == path),
        "not NotADatabase for {}: {error:?}",
        path.display()
    );
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
    assert!(message.contains(&path.display().to_string()), "{message:?}");
    message
}

/// A bare keel-wal log (segments, `IDENTITY` and `LOCK` at its top level) is not a database:
/// opening it used to make `wal/wal` inside it and report a new, empty database.
#[test]
fn a_keel_wal_log_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let wal_options = keel_wal::WalOptions {
        segment_bytes: 64 * 1024,
        max_record_bytes: 8 * 1024,
        backend: BackendChoice::Std,
        ..keel_wal::WalOptions::default()
    };
    drop(keel_recovery::open_wal(&log, wal_options).unwrap());
    let before = tree(&log);
    for options in [options(), no_create()] {
        let message = refusal(
            Database::open(&log, options),
            &log,
            "this is a keel-wal log",
        );
        assert!(message.contains("keel_recovery::open_wal"), "{message:?}");
        assert_eq!(tree(&log), before, "the log's directory changed");
    }
}

/// A directory holding files that are not the engine's (a git checkout, say) is refused,
/// naming the first few: opening it used to add `wal/` and `LOCK` beside them.
#[test]
fn a_directory_holding_other_files_is_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let checkout = dir.path().join("checkout");
    std::fs::create_dir_all(checkout.join("src")).unwrap();
    std::fs::create_dir(checkout.join(".git")).unwrap();
    for name in [
        "Cargo.toml",
        "README.md",
        "LICENSE",
        "build.rs",
        "src/main.rs",
    ] {
        std::fs::write(checkout.join(name), name).unwrap();
    }
    let before = tree(&checkout);
    for options in [options(), no_create()] {
        let message = refusal(
            Database::open(&checkout, options),
            &checkout,
            "this directory holds other files (.git, Cargo.toml, LICENSE, ",
        );
        assert!(message.contains("and 2 more"), "{message:?}");
        assert!(!message.contains("main.rs"), "{message:?}");
        assert_eq!(tree(&checkout), before, "the checkout changed");
    }
    // One stranger is named alone.
    let one = dir.path().join("one");
    std::fs::create_dir(&one).unwrap();
    std::fs::write(one.join("notes.txt"), b"mine").unwrap();
    let message = refusal(Database::open(&one, options()), &one, "(notes.txt)");
    assert!(!message.contains("more"), "{message:?}");
    assert_eq!(tree(&one), vec![one.join("notes.txt")]);
}

/// With `create_if_missing` off, a directory holding no database is refused before anything
/// is made in it: it used to be left with a stray `LOCK`. A path that does not exist is not
/// created.
#[test]
fn without_create_if_missing_nothing_is_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    refusal(
        Database::open(&empty, no_create()),
        &empty,
        "holds no database",
    );
    assert_eq!(tree(&empty), Vec::<PathBuf>::new(), "a stray LOCK or wal/");
    let missing = dir.path().join("missing");
    refusal(
        Database::open(&missing, no_create()),
        &missing,
        "does not exist",
    );
    assert!(!missing.exists());
}

/// A path that is a file says so, and the file is left as it was.
#[test]
fn a_file_is_refused_as_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.db");
    std::fs::write(&file, b"not a directory").unwrap();
    for options in [options(), no_create()] {
        refusal(
            Database::open(&file, options),
            &file,
            "is a file, not a directory",
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
    }
}

/// An empty directory and a new path make a database; it reopens (with and without
/// `create_if_missing`) with its commit, also with a file of the user's beside its own.
#[test]
fn empty_and_new_directories_open_and_an_existing_database_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let new = dir.path().join("new").join("db");
    for path in [&empty, &new] {
        let db = Database::open(path, options()).unwrap();
        let run = block_on(db.begin_run("r")).unwrap();
        let mut txn = db.transaction(run).unwrap();
        txn.put(b"k", b"v").unwrap();
        block_on(txn.commit()).unwrap();
        block_on(db.checkpoint()).unwrap();
        db.close().unwrap();
        for options in [options(), no_create()] {
            let db = Database::open(path, options).unwrap();
            let run = db.list_runs()[0].id;
            assert_eq!(db.get(run, b"k").unwrap().unwrap().value, b"v");
            db.close().unwrap();
        }
    }
    std::fs::write(empty.join("notes.txt"), b"mine").unwrap();
    let db = Database::open(&empty, no_create()).unwrap();
    assert_eq!(db.list_runs().len(), 1);
    db.close().unwrap();
}
