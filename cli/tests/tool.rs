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

/// The raw baselines' rows of a strict `keel bench` run (`out`): the per-record loop, the
/// group commit, and the batched ring unless a note says io_uring does not run here (only
/// where this build has no io_uring or the kernel refuses a ring: never an error).
fn raw_targets(out: &Output) -> Vec<&'static str> {
    let note = String::from_utf8_lossy(&out.stderr).contains("note: no raw batched ring rows");
    if cfg!(all(target_os = "linux", feature = "uring"))
        && BackendChoice::available().contains(&BackendChoice::Uring)
        && std::env::var_os("KEEL_BACKEND").is_none()
    {
        assert!(!note, "io_uring runs here: {}", text(out));
    }
    let mut raw = vec!["raw pwrite+fdatasync", "raw group-commit"];
    if !note {
        raw.push("raw batched ring");
    }
    raw
}

fn database(dir: &Path) {
    database_of(dir, 200);
}

fn database_of(dir: &Path, commits: u32) {
    let options = Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        ..Options::default()
    };
    let db = Database::open(dir, options).unwrap();
    let run = block_on(db.begin_run("tool-test")).unwrap();
    for i in 0..commits {
        let mut txn = db.transaction(run).unwrap();
        txn.put(format!("key-{i:04}").as_bytes(), [7; 100]).unwrap();
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
    let segment = keel_wal::dir::list_directory(&dir.path().join("wal"))
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

/// Every file under `dir` with a digest of its bytes: a dry run must leave all as they were.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    use std::hash::{Hash, Hasher};
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(files(&path));
        } else if path.file_name().is_some_and(|n| n != "LOCK") {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(&path).unwrap().hash(&mut hasher);
            all.push((path.clone(), hasher.finish()));
        }
    }
    all.sort();
    all
}

/// Flips one byte in the middle of each record at `lsns`.
fn damage_records(dir: &Path, lsns: &[u64]) {
    use std::os::unix::fs::FileExt;
    let wal = dir.join("wal");
    let mut reader = keel_wal::LogReader::open(&wal).unwrap();
    let mut spots = Vec::new();
    while let Some(record) = reader.next_record().unwrap() {
        if lsns.contains(&record.lsn) {
            spots.push((record.segment, record.offset + record.len / 2));
        }
    }
    assert_eq!(spots.len(), lsns.len(), "the records are in the log");
    for (segment, offset) in spots {
        let path = wal.join(keel_wal::segment::file_name(segment));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, offset).unwrap();
        file.write_all_at(&[byte[0] ^ 0xff], offset).unwrap();
    }
}

/// `keel recover --dry-run` on a log damaged in two sealed segments: one row per policy
/// (the default refuses; point-in-time cuts at the first damage; skip-corrupted loses the two
/// records' LSNs and the transactions they belonged to), and not one byte changes.
#[test]
fn recover_dry_run_tabulates_every_policy_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    database_of(dir.path(), 800);
    let segments = keel_wal::dir::list_directory(&dir.path().join("wal"))
        .unwrap()
        .segments;
    assert!(segments.len() >= 3, "three segments at least");
    let (first, second) = (segments[0].first_lsn + 20, segments[1].first_lsn + 20);
    damage_records(dir.path(), &[first, second]);
    let before = files(dir.path());
    let path = dir.path().to_str().unwrap();
    let dry = keel(&["recover", path, "--dry-run"]);
    let out = text(&dry);
    println!("$ keel recover <dir> --dry-run\n{out}");
    assert!(dry.status.success(), "{out}");
    assert_eq!(files(dir.path()), before, "a dry run changed the directory");
    let row = |policy: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("| {policy} ")))
            .unwrap_or_else(|| panic!("no row for {policy}:\n{out}"))
            .to_string()
    };
    assert!(row("tolerate-torn-tail").contains("refuses"), "{out}");
    assert!(row("absolute").contains("refuses"), "{out}");
    let pit = row("point-in-time");
    assert!(pit.contains(&format!("{first} and after (cut)")), "{pit}");
    assert!(pit.contains("set aside"), "{pit}");
    let skip = row("skip-corrupted");
    assert!(
        skip.contains(&format!("{first}")) && skip.contains(&format!("{second}")),
        "{skip}"
    );
    assert!(skip.contains("opens: skips damage"), "{skip}");
    // The real recovery under a policy then does what its row said.
    let real = keel(&["recover", path, "--policy", "point-in-time"]);
    assert!(real.status.success(), "{}", text(&real));
    assert!(
        text(&real).contains("3 segments discarded"),
        "{}",
        text(&real)
    );
    assert_ne!(files(dir.path()), before);
}

/// `--engine` adds a `keel-db` row per backend: commits through `Database`, each compared
/// with the log on the same backend, and with the best raw baseline of the round.
#[test]
fn bench_engine_rows_compare_the_database_with_its_log() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().to_str().unwrap();
    let out = keel(&[
        "bench",
        "--engine",
        "--duration",
        "0.2",
        "--writers",
        "2",
        "--backend",
        "std",
        "--segment-mib",
        "1",
        "--dir",
        dir,
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = report["runs"].as_array().unwrap();
    let targets: Vec<&str> = runs.iter().map(|r| r["target"].as_str().unwrap()).collect();
    let raw = raw_targets(&out);
    let n = raw.len();
    assert_eq!(
        targets,
        [&raw[..], &["keel", "keel-db"]].concat(),
        "{report:#}"
    );
    let db = &runs[n + 1];
    assert!(db["commits"].as_u64().unwrap() > 0, "{db}");
    assert!(
        db["fsyncs"].as_u64().unwrap() > 0,
        "strict commits sync: {db}"
    );
    let per_sec = |run: &serde_json::Value| run["commits_per_sec"].as_f64().unwrap();
    let expected = per_sec(db) / per_sec(&runs[n]);
    let ratio = db["ratio_to_log"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9, "{db}");
    // One round: the ratios are those of the rows shown, the best raw of all of them.
    let best_raw = runs[..n].iter().map(per_sec).fold(0.0, f64::max);
    for run in &runs[n..] {
        let ratio = run["ratio_to_best_raw"].as_f64().unwrap();
        assert!((ratio - per_sec(run) / best_raw).abs() < 1e-9, "{run}");
        let ratio = run["ratio_to_raw"].as_f64().unwrap();
        assert!(
            (ratio - per_sec(run) / per_sec(&runs[0])).abs() < 1e-9,
            "{run}"
        );
    }
    for raw in &runs[..n] {
        assert!(raw["ratio_to_best_raw"].is_null(), "{raw}");
    }
}

/// `keel bench`, shortened: every cell of the lists runs, each target commits, the ratios
/// are against the raw baselines run beside it, and the directory it made is removed.
#[test]
fn bench_runs_every_cell_and_reports_ratios() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().to_str().unwrap();
    let strict = keel(&[
        "bench",
        "--duration",
        "0.2",
        "--writers",
        "1,2",
        "--backend",
        "std,auto",
        "--rounds",
        "2",
        "--segment-mib",
        "1",
        "--dir",
        dir,
        "--json",
    ]);
    assert!(strict.status.success(), "{}", text(&strict));
    let report: serde_json::Value = serde_json::from_slice(&strict.stdout).unwrap();
    let runs = report["runs"].as_array().unwrap();
    // Per writer count: the raw baselines and the two backends.
    let raw = raw_targets(&strict);
    assert_eq!(runs.len(), 2 * (raw.len() + 2), "{report:#}");
    for run in runs {
        assert!(run["commits"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(run["rounds"], 2, "{run}");
        assert_eq!(run["mode"], "strict");
        assert!(
            run["fsyncs"].as_u64().unwrap() > 0,
            "strict commits sync: {run}"
        );
        if run["target"] == "keel" {
            assert!(run["ratio_to_raw"].as_f64().unwrap() > 0.0, "{run}");
            assert!(run["ratio_to_best_raw"].as_f64().unwrap() > 0.0, "{run}");
            assert!(run["ratio_to_std"].as_f64().unwrap() > 0.0, "{run}");
        } else {
            assert!(raw.contains(&run["target"].as_str().unwrap()), "{run}");
        }
    }
    assert_eq!(
        std::fs::read_dir(parent.path()).unwrap().count(),
        0,
        "the bench removes what it wrote"
    );

    let batched = keel(&[
        "bench",
        "--duration",
        "0.2",
        "--writers",
        "4",
        "--mode",
        "batched",
        "--committers",
        "tasks",
        "--backend",
        "std",
        "--segment-mib",
        "1",
        "--dir",
        dir,
    ]);
    let out = text(&batched);
    assert!(batched.status.success(), "{out}");
    assert!(
        out.contains("commits/s") && out.contains("batched"),
        "{out}"
    );
    assert!(out.contains("segment rotations"), "{out}");
    // Baselines run in strict mode only: no ring row, and no note about it.
    assert!(!out.contains("raw batched ring"), "{out}");

    for bad in [
        &["--writers", "0"][..],
        &["--duration", "0"],
        &["--rounds", "0"],
    ] {
        let refused = keel(&[&["bench", "--dir", dir][..], bad].concat());
        assert!(!refused.status.success());
        assert!(
            text(&refused).contains("must be above 0"),
            "{}",
            text(&refused)
        );
    }
}

/// `keel dump` over every kind of record the engine writes: binary keys shown as hex (in text
/// and JSON), deletes, checkpoints with their snapshot LSN, `--from` skipping what lies below;
/// and `keel recover --dry-run --policy` tabulating only that policy.
#[test]
fn dump_shows_binary_keys_deletes_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        backend: BackendChoice::Std,
        ..Options::default()
    };
    let db = Database::open(dir.path(), options).unwrap();
    let run = block_on(db.begin_run("dump")).unwrap();
    let mut txn = db.transaction(run).unwrap();
    txn.put([0, 1, 0xfe], b"binary key").unwrap();
    block_on(txn.commit()).unwrap();
    let mut txn = db.transaction(run).unwrap();
    txn.delete([0, 1, 0xfe]).unwrap();
    let deleted_at = block_on(txn.commit()).unwrap();
    let snapshot = block_on(db.checkpoint()).unwrap();
    db.close().unwrap();
    let path = dir.path().to_str().unwrap();

    let dump = keel(&["dump", path]);
    let out = text(&dump);
    assert!(dump.status.success(), "{out}");
    assert!(
        out.contains("0x0001fe"),
        "a binary key shown as hex:\n{out}"
    );
    assert!(out.contains("Delete"), "{out}");
    assert!(
        out.contains(&format!("snapshot at {snapshot}")),
        "the checkpoint names its snapshot:\n{out}"
    );
    let json = keel(&["dump", path, "--json"]);
    assert!(json.status.success(), "{}", text(&json));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["key"] == "0x0001fe"), "{lines:?}");
    let from = keel(&["dump", path, "--json", "--from", &deleted_at.to_string()]);
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&from.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["lsn"], deleted_at, "--from skips what lies below");

    let one = keel(&["recover", path, "--dry-run", "--policy", "point-in-time"]);
    let out = text(&one);
    assert!(one.status.success(), "{out}");
    assert!(out.contains("| point-in-time "), "{out}");
    assert!(out.contains("opens: clean"), "{out}");
    assert!(
        !out.contains("| absolute "),
        "only the policy asked for:\n{out}"
    );
}
