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
//! `KEEL_KILLS` (default 6) and `KEEL_KILL_SECONDS` (default 60) bound the loop per backend;
//! `KEEL_SEED` replays the delays. Every 40 kills start a fresh log, so each recovery stays
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

use keel_recovery::{CommittedTxn, RecoveryPolicy, Replay, ReplayError, recover};
use keel_wal::{ArchivedWalEntry, BackendChoice, Lsn, RunId, WalEntry, WalOptions};

const CHILD_ENV: &str = "KEEL_KILL9_CHILD";
const WRITERS: u64 = 4;

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
    if mode == "recover" {
        // A recovery that may be killed part-way.
        let _ = recover(&dir, RecoveryPolicy::default(), &mut Check::default());
        return;
    }
    let wal = Arc::new(keel_recovery::open_wal(&dir, options(backend)).unwrap());
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
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
                    let lsn = wal.append(&entries).wait().unwrap();
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

fn spawn_child(dir: &Path, backend: &str, life: u64, mode: &str) -> std::process::Child {
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
            format!("{},{backend},{life},{mode}", dir.display()),
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
    for backend in BackendChoice::available() {
        let name = match backend {
            BackendChoice::Uring => "uring",
            _ => "std",
        };
        let mut dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(seed);
        let mut acked: BTreeMap<Lsn, (u64, u64, u64)> = BTreeMap::new();
        let started = Instant::now();
        let (mut done, mut recoveries_killed, mut checked) = (0u64, 0u64, 0u64);
        while done < kills && started.elapsed() < Duration::from_secs(seconds) {
            let life = done + 1;
            if done > 0 && done % 40 == 0 {
                checked += acked.len() as u64;
                acked.clear();
                dir = tempfile::tempdir().unwrap();
            }
            let mut child = spawn_child(dir.path(), name, life, "commit");
            let stdout = child.stdout.take().unwrap();
            let reader = std::thread::spawn(move || {
                let mut lines = Vec::new();
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let fields: Vec<u64> = line.split(' ').filter_map(|f| f.parse().ok()).collect();
                    if let [lsn, writer, seq] = fields[..] {
                        lines.push((lsn, writer, seq));
                    }
                }
                lines
            });
            std::thread::sleep(Duration::from_millis(20 + rng.below(120)));
            child.kill().unwrap();
            child.wait().unwrap();
            for (lsn, writer, seq) in reader.join().unwrap() {
                acked.insert(lsn, (life, writer, seq));
            }
            if rng.below(4) == 0 {
                // Kill a recovery part-way too.
                let mut recovery = spawn_child(dir.path(), name, life, "recover");
                std::thread::sleep(Duration::from_millis(rng.below(15)));
                recovery.kill().unwrap();
                recovery.wait().unwrap();
                recoveries_killed += 1;
            }
            let mut check = Check::default();
            let report = recover(dir.path(), RecoveryPolicy::default(), &mut check)
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
            let second = recover(dir.path(), RecoveryPolicy::default(), &mut again).unwrap();
            assert!(
                second.is_clean() && second.bytes_truncated == 0,
                "{name} kill {life}: {second}"
            );
            assert_eq!(again.committed, check.committed, "{name} kill {life}");
            let _ = report;
            done += 1;
        }
        println!(
            "kill -9 ({name}): {done} kills, {recoveries_killed} recoveries killed, {} acknowledged commits checked, {:.1?}",
            checked + acked.len() as u64,
            started.elapsed()
        );
        assert!(done > 0);
    }
}
