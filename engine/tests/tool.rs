//! The `keel` tool as a user meets it: dump, verify and recover on a fresh database and on a
//! damaged one; errors are plain words and a non-zero exit status, never a panic.

use std::path::Path;
use std::process::{Command, Output};

use futures::executor::block_on;
use keel::{BackendChoice, Database, Options};

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .expect("run keel")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn database(dir: &Path) {
    let options = Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        ..Options::default()
    };
    let db = Database::open(dir, options).unwrap();
    let run = block_on(db.begin_run("tool-test")).unwrap();
    for i in 0..200u32 {
        let mut txn = db.transaction(run).unwrap();
        txn.put(format!("key-{i:04}").as_bytes(), &[7; 100])
            .unwrap();
        block_on(txn.commit()).unwrap();
    }
    db.close().unwrap();
}

#[test]
fn on_a_fresh_database() {
    let dir = tempfile::tempdir().unwrap();
    database(dir.path());
    let path = dir.path().to_str().unwrap();
    let dump = keel(&["dump", path, "--limit", "3"]);
    assert!(dump.status.success(), "{}", text(&dump));
    assert_eq!(String::from_utf8_lossy(&dump.stdout).lines().count(), 3);
    let json = keel(&["dump", path, "--json", "--from", "10", "--limit", "1"]);
    let line: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(line["lsn"], 10);
    let verify = keel(&["verify", path]);
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(text(&verify).contains("verify: clean"));
    let recover = keel(&["recover", path]);
    assert!(recover.status.success(), "{}", text(&recover));
    assert!(text(&recover).contains("201 applied"), "{}", text(&recover));
}

#[test]
fn on_a_damaged_database() {
    let dir = tempfile::tempdir().unwrap();
    database(dir.path());
    let path = dir.path().to_str().unwrap();
    let segment = keel_wal::segment::list_directory(&dir.path().join("wal"))
        .unwrap()
        .segments[0]
        .path
        .clone();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[5000] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();

    let verify = keel(&["verify", path]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(text(&verify).contains("not clean"), "{}", text(&verify));
    assert!(!text(&verify).contains("panicked"));
    let dump = keel(&["dump", path]);
    assert_eq!(dump.status.code(), Some(1));
    assert!(text(&dump).contains("corruption in"), "{}", text(&dump));
    let refused = keel(&["recover", path]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused).contains("acknowledged record"),
        "{}",
        text(&refused)
    );
    let salvaged = keel(&["recover", path, "--policy", "point-in-time"]);
    assert!(salvaged.status.success(), "{}", text(&salvaged));
    assert!(
        text(&salvaged).contains("(truncated)"),
        "{}",
        text(&salvaged)
    );
    let clean = keel(&["verify", path]);
    assert!(clean.status.success(), "{}", text(&clean));
    // And the database opens again, with the prefix.
    let db = Database::open(dir.path(), Options::default()).unwrap();
    assert!(db.recovery_report().is_clean());
    db.close().unwrap();
}

#[test]
fn a_missing_directory_is_a_plain_error() {
    let output = keel(&["verify", "/nonexistent/keel-db"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains("is not a directory"),
        "{}",
        text(&output)
    );
}

#[test]
fn verify_reads_snapshots_back() {
    let dir = tempfile::tempdir().unwrap();
    database(dir.path());
    let db = Database::open(dir.path(), Options::default()).unwrap();
    block_on(db.checkpoint()).unwrap();
    db.close().unwrap();
    let path = dir.path().to_str().unwrap();
    let clean = keel(&["verify", path]);
    assert!(clean.status.success(), "{}", text(&clean));
    assert!(
        text(&clean).contains("reads back whole"),
        "{}",
        text(&clean)
    );
    let snapshot = std::fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&snapshot, bytes).unwrap();
    let damaged = keel(&["verify", path]);
    assert_eq!(damaged.status.code(), Some(1), "{}", text(&damaged));
    assert!(
        text(&damaged).contains("checksum mismatch"),
        "{}",
        text(&damaged)
    );
}
