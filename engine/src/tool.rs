//! `keel dump`, `keel verify` and `keel recover`: looking at a log directory from the shell.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use keel_recovery::{CommittedTxn, RecoveryPolicy, Replay, ReplayError};
use keel_wal::{ArchivedWalEntry, LogReader, Lsn};

/// The log directory of a database directory (its `wal/`), or `dir` itself when it is one.
fn log_dir(dir: &Path) -> Result<PathBuf, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let wal = dir.join("wal");
    Ok(if wal.is_dir() { wal } else { dir.to_path_buf() })
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// A database directory (or its `wal/` directory).
    dir: PathBuf,
    /// Start at this LSN.
    #[arg(long, default_value_t = 1)]
    from: Lsn,
    /// Stop after this many records.
    #[arg(long)]
    limit: Option<u64>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

/// Bytes for JSON: the text when printable, else `0x` and hex; long values are cut.
fn show_json(bytes: &[u8]) -> String {
    let shown = show(bytes);
    match shown.strip_prefix('"') {
        Some(rest) => rest.replacen('"', "", 1),
        None => shown,
    }
}

/// Shows bytes as text when they are printable, else as hex; long values are cut.
fn show(bytes: &[u8]) -> String {
    const MAX: usize = 48;
    let cut = &bytes[..bytes.len().min(MAX)];
    let more = if bytes.len() > MAX { "…" } else { "" };
    if cut.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("\"{}\"{more}", String::from_utf8_lossy(cut))
    } else {
        let hex: String = cut.iter().map(|b| format!("{b:02x}")).collect();
        format!("0x{hex}{more}")
    }
}

pub fn dump(args: &DumpArgs) -> Result<(), String> {
    let dir = log_dir(&args.dir)?;
    let mut reader = LogReader::open_from(&dir, args.from).map_err(|e| e.to_string())?;
    let mut shown = 0u64;
    while args.limit.is_none_or(|limit| shown < limit) {
        let Some(record) = reader.next_record().map_err(|e| {
            format!("{e}\n(the log is damaged here; `keel recover` can judge and repair it)")
        })?
        else {
            break;
        };
        if record.lsn < args.from {
            continue;
        }
        let entry = record.entry;
        let kind = entry.kind().name();
        let run = keel_wal::RunId::from_u128(entry.run_id());
        let (key, value) = match entry {
            ArchivedWalEntry::Write { key, value, .. } => {
                (Some(key.as_slice()), Some(value.as_slice()))
            }
            ArchivedWalEntry::Delete { key, .. } => (Some(key.as_slice()), None),
            _ => (None, None),
        };
        if args.json {
            let line = serde_json::json!({
                "lsn": record.lsn,
                "durable_lsn": record.durable_lsn,
                "kind": kind,
                "run": run.to_string(),
                "txn": entry.txn_id(),
                "key": key.map(show_json),
                "value": value.map(show_json),
                "value_bytes": value.map(<[u8]>::len),
            });
            println!("{line}");
        } else {
            let mut line = format!("{:>10}  {kind:<10} run {run}", record.lsn);
            if let Some(txn) = entry.txn_id() {
                line.push_str(&format!("  txn {txn}"));
            }
            if let ArchivedWalEntry::Checkpoint { snapshot_lsn, .. } = entry {
                line.push_str(&format!("  snapshot at {snapshot_lsn}"));
            }
            if let ArchivedWalEntry::Payload { tag, payload, .. } = entry {
                line.push_str(&format!("  tag {tag}  {} bytes", payload.len()));
            }
            if let Some(key) = key {
                line.push_str(&format!("  key {}", show(key)));
            }
            if let Some(value) = value {
                line.push_str(&format!("  value ({} bytes) {}", value.len(), show(value)));
            }
            println!("{line}");
        }
        shown += 1;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A database directory (or its `wal/` directory).
    dir: PathBuf,
}

/// Counts what recovery would replay, without keeping it.
struct Count;

impl Replay for Count {
    fn apply(&mut self, _: &CommittedTxn<'_>) -> Result<(), ReplayError> {
        Ok(())
    }
}

/// Read-only: every anomaly is refused, so nothing on disk changes; snapshots are read back
/// whole. Exit status 0 when clean.
pub fn verify(args: &VerifyArgs) -> Result<(), String> {
    let dir = log_dir(&args.dir)?;
    let snapshots = keel::check_snapshots(&args.dir).map_err(|e| e.to_string())?;
    let damaged: Vec<String> = snapshots
        .iter()
        .filter_map(|(path, outcome)| {
            outcome
                .as_ref()
                .err()
                .map(|why| format!("{why} ({})", path.display()))
        })
        .collect();
    match keel_recovery::recover(&dir, RecoveryPolicy::Absolute, &mut Count) {
        Ok(report) => {
            println!("{report}");
            for (path, outcome) in &snapshots {
                if let Ok(lsn) = outcome {
                    println!("snapshot {} at LSN {lsn}: reads back whole", path.display());
                }
            }
            if !damaged.is_empty() {
                return Err(format!(
                    "verify: not clean: {}
(the database opens from an older snapshot when                      the log reaches back to it)",
                    damaged.join("; ")
                ));
            }
            println!("verify: clean");
            Ok(())
        }
        Err(keel_recovery::Error::Refused {
            path,
            offset,
            finding,
            ..
        }) => Err(format!(
            "verify: not clean: {} at offset {offset}: {finding}\n\
             (nothing was changed; `keel recover {}` shows what recovery would do)",
            path.display(),
            args.dir.display()
        )),
        Err(other) => Err(format!("verify: {other}")),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Policy {
    /// Truncate a torn tail; refuse damaged acknowledged data (the default).
    TolerateTornTail,
    /// Keep the longest valid prefix, cut the rest.
    PointInTime,
    /// Salvage every valid record, skipping damage.
    SkipCorrupted,
    /// Refuse any anomaly.
    Absolute,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// A database directory (or its `wal/` directory).
    dir: PathBuf,
    /// What damage to accept.
    #[arg(long, value_enum, default_value_t = Policy::TolerateTornTail)]
    policy: Policy,
}

/// Runs recovery (repairing what the policy allows) and prints the report.
pub fn recover(args: &RecoverArgs) -> Result<(), String> {
    let dir = log_dir(&args.dir)?;
    let policy = match args.policy {
        Policy::TolerateTornTail => RecoveryPolicy::TolerateTornTail,
        Policy::PointInTime => RecoveryPolicy::PointInTime,
        Policy::SkipCorrupted => RecoveryPolicy::SkipCorrupted,
        Policy::Absolute => RecoveryPolicy::Absolute,
    };
    let report = keel_recovery::recover(&dir, policy, &mut Count).map_err(|e| match e {
        keel_recovery::Error::Refused { .. } => format!(
            "{e}\n(nothing was changed; a laxer --policy, such as point-in-time, accepts it \
             and reports what is lost)"
        ),
        other => other.to_string(),
    })?;
    println!("{report}");
    Ok(())
}
