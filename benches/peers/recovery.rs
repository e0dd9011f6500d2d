//! Recovery: a log filled by a child that then exits without closing, reopened by another
//! child that reports its time and peak memory.

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::Peer;
use crate::systems;

/// Child: fills `dir` with `mib` MiB of 4 KiB records from 16 threads, then exits at once
/// (no close, no checkpoint): the next open must recover all of it.
pub fn child_fill(system: &str, dir: &Path, mib: u64) -> io::Result<()> {
    let peer: Arc<dyn Peer> = Arc::from(systems::open(system, dir, 16)?);
    let per_thread = (mib << 20) / 4096 / 16;
    let threads: Vec<_> = (0..16)
        .map(|thread| {
            let peer = Arc::clone(&peer);
            std::thread::spawn(move || -> io::Result<()> {
                let payload = vec![0x42u8; 4096];
                for seq in 0..per_thread {
                    peer.commit(thread, seq, &payload)?;
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| io::Error::other("a filler panicked"))??;
    }
    // Everything acknowledged is at least written; give Batched/Async modes their sync.
    std::thread::sleep(Duration::from_millis(100));
    std::process::exit(0);
}

/// Child: opens (recovers) `dir`, reads everything recovery hands over, prints
/// `reopened <seconds> <records> <peak RSS kB>`.
pub fn child_reopen(system: &str, dir: &Path) -> io::Result<()> {
    let started = Instant::now();
    let records = systems::reopen(system, dir)?;
    let seconds = started.elapsed().as_secs_f64();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    println!("reopened {seconds:.3} {records} {hwm}");
    Ok(())
}

#[derive(Clone, Debug)]
pub struct RecoveryRow {
    pub system: String,
    pub log_bytes: u64,
    pub seconds: f64,
    pub records: u64,
    pub peak_rss_kb: u64,
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Fills a fresh log of `mib` MiB with `filler` in one child, reopens it as `system` in
/// another.
pub fn measure_recovery(
    system: &str,
    filler: &str,
    parent: &Path,
    mib: u64,
) -> io::Result<RecoveryRow> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("recovery-{system}-"))
        .tempdir_in(parent)?;
    let exe = std::env::current_exe()?;
    let status = std::process::Command::new(&exe)
        .args(["--child-fill", filler])
        .arg(dir.path())
        .arg(mib.to_string())
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "filling with {filler} failed: {status}"
        )));
    }
    let output = std::process::Command::new(&exe)
        .args(["--child-reopen", system])
        .arg(dir.path())
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("reopened "))
        .ok_or_else(|| {
            io::Error::other(format!(
                "reopening {system} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        })?;
    let mut parts = line.split_whitespace();
    let mut next = || parts.next().unwrap_or("0").to_owned();
    Ok(RecoveryRow {
        system: system.to_owned(),
        log_bytes: dir_bytes(dir.path()),
        seconds: next().parse().unwrap_or(0.0),
        records: next().parse().unwrap_or(0),
        peak_rss_kb: next().parse().unwrap_or(0),
    })
}

pub fn recovery_markdown(rows: &[RecoveryRow], mib: u64) -> String {
    let mut out = format!(
        "\n### Recovery: reopening a log of {mib} MiB of 4 KiB records after an unclean exit\n\n\
         | system | on disk MiB | reopen s | MB/s | records read | peak RSS MiB |\n|---|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.3} | {:.0} | {} | {:.1} |",
            r.system,
            r.log_bytes as f64 / 1048576.0,
            r.seconds,
            (mib as f64 * 1.048576) / r.seconds.max(1e-9),
            if r.records > 0 {
                r.records.to_string()
            } else {
                "–".into()
            },
            r.peak_rss_kb as f64 / 1024.0
        );
    }
    out
}

/// The recovery rows as JSON objects, for `peers.json`.
pub fn recovery_json(rows: &[RecoveryRow]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            format!(
                "{{\"system\":\"{}\",\"log_bytes\":{},\"reopen_s\":{:.3},\"records\":{},\"peak_rss_kb\":{}}}",
                r.system, r.log_bytes, r.seconds, r.records, r.peak_rss_kb
            )
        })
        .collect()
}
