//! Real crashes: this test binary re-runs itself as a child process that commits from several
//! writer threads in Strict mode and reports every acknowledged commit over a pipe; the
//! parent kills it with SIGKILL after a random delay, sometimes kills the next recovery too,
//! then recovers and checks:
//!
//! - I1: every acknowledged commit is recovered, byte-exact;
//! - I2: the recovered log is a contiguous LSN prefix (recovery refuses otherwise);
//! - I3: transactions are all-or-nothing (each commit is a write and its `CommitTxn`);
//! - I4: nothing recovered was never written (every transaction is one a child made);
//! - I5: recovery is idempotent (a second one truncates nothing), also after a killed one.
//!
//! In odd lives the child also removes the log below its durable LSN (less `TRIM_LAG`)
//! every few milliseconds, as a checkpoint would: the freed segments are recycled (the default keeps
//! 4) and later segments are written over them, so kills land in recycled files, between a
//! recycle's rename and its directory sync, and mid-removal. The child reports each removal
//! (`trim L`) before it starts; the parent then treats everything at or below the highest `L`
//! as covered (a snapshot would hold it): recovery is told so (`covered_through`), and I1
//! checks the acknowledged commits above it.
//!
//! `KEEL_KILLS` (default 6) and `KEEL_KILL_SECONDS` (default 60) bound the loop per backend;
//! `KEEL_SEED` replays the delays; `KEEL_KILL_BACKENDS` (say `uring-direct`) runs only those. Every 40 kills start a fresh log, so each recovery stays
//! short. CI runs it long (see `.ci/run`).
//!
//! `kill9_child_entry` is not a test of its own: it is the child's entry point, and does
//! nothing unless the parent started it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_recovery::{
    CommittedTxn, RecoveryOptions, RecoveryPolicy, Replay, ReplayError, recover_with,
};
use keel_wal::{ArchivedWalEntry, BackendChoice, Lsn, RunId, WalEntry, WalOptions};

const CHILD_ENV: &str = "KEEL_KILL9_CHILD";
const WRITERS: u64 = 4;
/// How far (in LSNs) behind the durable LSN a child's removals stay: about 2 segments.
const TRIM_LAG: Lsn = 1500;

fn options(backend: BackendChoice) -> WalOptions {
    WalOptions {
        segment_bytes: 256 * 1024,
        max_record_bytes: 16 * 1024,
        backend,
        ..WalOptions::default()
    }
}

fn backend_named(name: &str) -> BackendChoice {
    match name {
        "uring" => BackendChoice::Uring,
        "uring-direct" => BackendChoice::UringDirect,
        _ => BackendChoice::Std,
    }
}

/// The value committed by `writer` as its `seq`-th commit of `life`: its length and bytes
/// are a function of the three, so a recovered value can be checked byte for byte.
fn value(life: u64, writer: u64, seq: u64) -> Vec<u8> {
    let len = 1 + usize::try_from((life * 31 + writer * 7 + seq * 13) % 700).unwrap();
    (0..len)
        .map(|i| (i as u64 ^ seq ^ (writer << 3) ^ (life << 5)).to_le_bytes()[0])
        .collect()
}

fn txn_id(life: u64, seq: u64) -> u64 {
    (life << 32) | seq
}

/// The child: commits until it is killed; one line `lsn writer seq` per acknowledged commit.
fn child(spec: &str) {
    let mut parts = spec.split(',');
    let dir = parts.next().unwrap().to_owned();
    let backend = backend_named(parts.next().unwrap());
    let life: u64 = parts.next().unwrap().parse().unwrap();
    let mode = parts.next().unwrap();
    let covered = covered_through(parts.next().unwrap().parse().unwrap());
    if mode == "recover" {
        // A recovery that may be killed part-way.
        let _ = recover_with(&dir, recovery_options(covered), &mut Check::default());
        return;
    }
    let (wal, _) = keel_recovery::open_log(
        &dir,
        options(backend),
        RecoveryPolicy::default(),
        covered,
        &mut Check::default(),
    )
    .unwrap();
    let wal = Arc::new(wal);
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    if life % 2 == 1 {
        let (wal, out) = (Arc::clone(&wal), Arc::clone(&out));
        std::thread::spawn(move || {
            let mut trimmed = 0;
            loop {
                std::thread::sleep(Duration::from_millis(3));
                // A few segments behind, so that most acknowledged commits stay checked.
                let below = wal.durable_lsn().saturating_sub(TRIM_LAG);
                if below <= trimmed {
                    continue;
                }
                {
                    // Said before the removal starts: a kill during it is covered too.
                    let mut out = out.lock().unwrap();
                    use std::io::Write;
                    writeln!(out, "trim {below}").unwrap();
                    out.flush().unwrap();
                }
                wal.remove_segments_before(below).unwrap();
                trimmed = below;
            }
        });
    }
    let threads: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (wal, out) = (Arc::clone(&wal), Arc::clone(&out));
            std::thread::spawn(move || {
                for seq in 0.. {
                    let run_id = RunId::from_u128(u128::from(writer) + 1);
                    let txn_id = txn_id(life, seq);
                    let entries = [
                        WalEntry::Write {
                            run_id,
                            txn_id,
                            key: b"k".to_vec(),
                            value: value(life, writer, seq),
                        },
                        WalEntry::CommitTxn { run_id, txn_id },
                    ];
                    // Half the writers write their own commit when they find the writer
                    // idle (`append_wait`), half hand every commit to the writer thread.
                    let lsn = if writer % 2 == 0 {
                        wal.append_wait(&entries).unwrap()
                    } else {
                        wal.append(&entries).wait().unwrap()
                    };
                    let mut out = out.lock().unwrap();
                    use std::io::Write;
                    writeln!(out, "{lsn} {writer} {seq}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

/// What the parent treats as covered, from the highest removal the children reported
/// (`trim L`: segments wholly below `L` may be gone, and a transaction that ended at `L` may
/// have lost its write; 0: none).
fn covered_through(trimmed_below: Lsn) -> Option<Lsn> {
    (trimmed_below > 0).then_some(trimmed_below)
}

fn recovery_options(covered_through: Option<Lsn>) -> RecoveryOptions {
    RecoveryOptions {
        covered_through,
        ..RecoveryOptions::default()
    }
}

/// Every committed transaction, checked against what a child can have written (I3, I4).
#[derive(Default)]
struct Check {
    committed: BTreeMap<Lsn, (u64, u64, u64)>,
    bad: Vec<String>,
}

impl Replay for Check {
    fn apply(&mut self, txn: &CommittedTxn<'_>) -> Result<(), ReplayError> {
        let writer = u64::try_from(txn.run_id.as_u128() - 1).unwrap_or(u64::MAX);
        let (life, seq) = (txn.txn_id >> 32, txn.txn_id & 0xffff_ffff);
        let entries: Vec<_> = txn.entries().collect();
        let whole = entries.len() == 1
            && matches!(entries[0].1, ArchivedWalEntry::Write { value: v, .. } if v.as_slice() == value(life, writer, seq).as_slice());
        if !whole {
            self.bad.push(format!(
                "commit {} (writer {writer}, life {life}, seq {seq}) is not what was written",
                txn.commit_lsn
            ));
        }
        self.committed.insert(txn.commit_lsn, (life, writer, seq));
        Ok(())
    }
}

#[test]
fn kill9_child_entry() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
    }
}

/// A line of the child's.
enum Said {
    /// `lsn writer seq`: a commit acknowledged.
    Acked(Lsn, u64, u64),
    /// `trim L`: a removal below `L` starts.
    Trim(Lsn),
}

/// How many of the log's segments were started in recycled files (format version 3).
fn recycled_segments(dir: &Path) -> u64 {
    let listing = keel_wal::dir::list_directory(dir).unwrap();
    listing
        .segments
        .iter()
        .filter(|segment| {
            std::fs::File::open(&segment.path)
                .ok()
                .and_then(|file| keel_wal::segment::read_header(&file, segment).ok())
                .is_some_and(|header| header.is_recycled())
        })
        .count() as u64
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % bound
    }
}

fn spawn_child(
    dir: &Path,
    backend: &str,
    life: u64,
    mode: &str,
    trimmed_below: Lsn,
) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill9_child_entry",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(
            CHILD_ENV,
            format!("{},{backend},{life},{mode},{trimmed_below}", dir.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn acknowledged_commits_survive_kill9() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let kills = env_or("KEEL_KILLS", 6);
    let seconds = env_or("KEEL_KILL_SECONDS", 60);
    let seed = env_or("KEEL_SEED", 0x6b69_6c6c);
    println!("seed: {seed} (replay with KEEL_SEED={seed})");
    // `KEEL_KILL_BACKENDS` (names, comma-separated) runs only those backends.
    let only = std::env::var("KEEL_KILL_BACKENDS").ok();
    for backend in BackendChoice::available() {
        let name = backend.name();
        if only
            .as_ref()
            .is_some_and(|only| !only.split(',').any(|n| n == name))
        {
            continue;
        }
        let mut dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(seed);
        let mut acked: BTreeMap<Lsn, (u64, u64, u64)> = BTreeMap::new();
        let started = Instant::now();
        let (mut done, mut recoveries_killed, mut checked) = (0u64, 0u64, 0u64);
        // The highest removal a child of this directory reported, and how many there were;
        // segments written over recycled files, and the acknowledged commits a removal
        // covered (not checked: a snapshot would hold them).
        let (mut trimmed_below, mut trims, mut recycled, mut covered) = (0, 0u64, 0u64, 0u64);
        while done < kills && started.elapsed() < Duration::from_secs(seconds) {
            let life = done + 1;
            if done > 0 && done % 40 == 0 {
                checked += acked.len() as u64;
                acked.clear();
                dir = tempfile::tempdir().unwrap();
                trimmed_below = 0;
            }
            let mut child = spawn_child(dir.path(), name, life, "commit", trimmed_below);
            let stdout = child.stdout.take().unwrap();
            let reader = std::thread::spawn(move || {
                let mut lines = Vec::new();
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // Only the child's own lines: the test harness's "running 1 test" once
                    // read as `trim 1` (any line with one number), which covered LSN 1 in
                    // every life; a kill before the first commit then left recovery resuming
                    // above an empty first segment, and the next recovery not clean.
                    let words: Vec<&str> = line.split(' ').collect();
                    let numbers: Option<Vec<u64>> = words.iter().map(|w| w.parse().ok()).collect();
                    match (&words[..], numbers.as_deref()) {
                        (_, Some(&[lsn, writer, seq])) => {
                            lines.push(Said::Acked(lsn, writer, seq));
                        }
                        (&["trim", below], _) => {
                            if let Ok(below) = below.parse() {
                                lines.push(Said::Trim(below));
                            }
                        }
                        _ => {}
                    }
                }
                lines
            });
            std::thread::sleep(Duration::from_millis(20 + rng.below(120)));
            child.kill().unwrap();
            child.wait().unwrap();
            for said in reader.join().unwrap() {
                match said {
                    Said::Acked(lsn, writer, seq) => {
                        acked.insert(lsn, (life, writer, seq));
                    }
                    Said::Trim(below) => {
                        trimmed_below = trimmed_below.max(below);
                        trims += 1;
                    }
                }
            }
            // Commits of earlier lives were checked by their lives' recoveries; this
            // life's, covered before any recovery saw them, are counted apart.
            acked.retain(|&lsn, &mut (acked_in, ..)| {
                let keep = lsn > trimmed_below;
                if !keep && acked_in < life {
                    checked += 1;
                } else if !keep {
                    covered += 1;
                }
                keep
            });
            recycled += recycled_segments(dir.path());
            if rng.below(4) == 0 {
                // Kill a recovery part-way too.
                let mut recovery = spawn_child(dir.path(), name, life, "recover", trimmed_below);
                std::thread::sleep(Duration::from_millis(rng.below(15)));
                recovery.kill().unwrap();
                recovery.wait().unwrap();
                recoveries_killed += 1;
            }
            let mut check = Check::default();
            let options = recovery_options(covered_through(trimmed_below));
            let report = recover_with(dir.path(), options.clone(), &mut check)
                .unwrap_or_else(|e| panic!("{name} after kill {life} (seed {seed}): {e}"));
            assert!(
                check.bad.is_empty(),
                "{name} kill {life} seed {seed}: {:?}",
                check.bad
            );
            for (lsn, what) in &acked {
                assert_eq!(
                    check.committed.get(lsn),
                    Some(what),
                    "{name} kill {life} seed {seed}: acknowledged commit at LSN {lsn} lost"
                );
            }
            let mut again = Check::default();
            let second = recover_with(dir.path(), options, &mut again).unwrap();
            assert!(
                second.is_clean() && second.bytes_truncated == 0,
                "{name} kill {life} (seed {seed}): the second recovery found\n{second}\nafter \
                 the first found\n{report}"
            );
            assert_eq!(again.committed, check.committed, "{name} kill {life}");
            done += 1;
        }
        println!(
            "kill -9 ({name}): {done} kills, {recoveries_killed} recoveries killed, {} acknowledged commits checked, {trims} removals ({covered} acknowledged commits covered by one before any check), {recycled} segments found in recycled files after a kill, {:.1?}",
            checked + acked.len() as u64,
            started.elapsed()
        );
        assert!(done > 0);
    }
}
