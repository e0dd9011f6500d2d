//! `keel tail`: a database's transactions from the shell, read-only and lock-free, also
//! while this test process (holding the database's lock) commits; what is known durable.
//!
//! The follower is waited for under a watchdog (a minute; it returns as soon as it printed
//! what it was asked for) and measures no speed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::executor::block_on;
use keel::{BackendChoice, Database, Options, RunId};

fn options() -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        spill_txn_bytes: 1500,
        ..Options::default()
    }
}

fn commit(db: &Database, run: RunId, from: u32, count: u32) {
    for i in from..from + count {
        let mut txn = db.transaction(run).unwrap();
        // Every tenth spills (its records before its commit, interleaved with nothing here).
        let parts = if i % 10 == 0 { 4 } else { 1 };
        for p in 0..parts {
            txn.put(format!("key-{i:04}-{p}").as_bytes(), [b'v'; 600])
                .unwrap();
        }
        block_on(txn.commit()).unwrap();
    }
}

/// The JSON lines of `out`.
fn lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// The user transactions among `lines`: the first key of each, and whether it was durable.
fn user_commits(lines: &[serde_json::Value]) -> Vec<(String, bool)> {
    lines
        .iter()
        .filter(|l| l.get("commit_lsn").is_some())
        .filter_map(|l| {
            let key = l["changes"][0]["key"].as_str()?;
            key.starts_with("key-")
                .then(|| (key.to_owned(), l["durable"].as_bool().unwrap()))
        })
        .collect()
}

#[test]
fn tail_prints_the_transactions_of_a_closed_database_and_says_they_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("tail")).unwrap();
    commit(&db, run, 0, 150);
    db.close().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["tail", dir.path().to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let lines = lines(&String::from_utf8(output.stdout).unwrap());
    let commits = user_commits(&lines);
    let keys: Vec<String> = commits.iter().map(|(k, _)| k.clone()).collect();
    let expected: Vec<String> = (0..150).map(|i| format!("key-{i:04}-0")).collect();
    assert_eq!(keys, expected);
    // Each is proved durable by a later record's mark, the last ones by the witness the
    // close wrote.
    assert!(commits.iter().all(|(_, durable)| *durable), "{commits:?}");
}

#[test]
fn tail_follows_a_database_another_process_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("tail")).unwrap();
    commit(&db, run, 0, 20);
    // The follower starts at the head (from the next LSN), with the lock held here.
    let from = db.stats().wal.durable_lsn + 1;
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "tail",
            dir.path().to_str().unwrap(),
            "--json",
            "--follow",
            "--poll-ms",
            "5",
            "--limit",
            "60",
            "--from",
            &from.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    commit(&db, run, 20, 60);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("keel tail --follow did not print the 60 transactions");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let keys: Vec<String> = user_commits(&lines(&out))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let expected: Vec<String> = (20..80).map(|i| format!("key-{i:04}-0")).collect();
    assert_eq!(keys, expected);
    db.close().unwrap();
}
