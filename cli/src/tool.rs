//! `keel dump`, `keel verify` and `keel recover`: looking at a log directory from the shell.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use keel_recovery::{CommittedTxn, RecoveryPolicy, Replay, ReplayError};
use keel_wal::{ArchivedWalEntry, LogReader, Lsn};

/// The log directory of a database directory (its `wal/`), or `dir` itself when it is one.
pub(crate) fn log_dir(dir: &Path) -> Result<PathBuf, String> {
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
pub(crate) fn show_json(bytes: &[u8]) -> String {
    let shown = show(bytes);
    match shown.strip_prefix('"') {
        Some(rest) => rest.replacen('"', "", 1),
        None => shown,
    }
}

/// Shows bytes as text when they are printable, else as hex; long values are cut.
pub(crate) fn show(bytes: &[u8]) -> String {
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
                    "verify: not clean: {}\n(the database opens from an older snapshot when \
                     the log reaches back to it)",
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
    /// What damage to accept (with --dry-run and no --policy: every policy, side by side).
    #[arg(long, value_enum)]
    policy: Option<Policy>,
    /// Change nothing: print what recovery would decide, lose and repair.
    #[arg(long)]
    dry_run: bool,
}

impl Policy {
    const ALL: [Policy; 4] = [
        Policy::TolerateTornTail,
        Policy::PointInTime,
        Policy::SkipCorrupted,
        Policy::Absolute,
    ];

    fn recovery_policy(self) -> RecoveryPolicy {
        match self {
            Policy::TolerateTornTail => RecoveryPolicy::TolerateTornTail,
            Policy::PointInTime => RecoveryPolicy::PointInTime,
            Policy::SkipCorrupted => RecoveryPolicy::SkipCorrupted,
            Policy::Absolute => RecoveryPolicy::Absolute,
        }
    }
}

/// The LSN the newest readable snapshot of a database directory covers (as `Database::open`
/// would load it); `None` for a bare log directory or a database without one.
fn covered_through(dir: &Path) -> Result<Option<Lsn>, String> {
    let snapshots = keel::check_snapshots(dir).map_err(|e| e.to_string())?;
    Ok(snapshots.into_iter().find_map(|(_, outcome)| outcome.ok()))
}

/// Runs recovery (repairing what the policy allows) and prints the report; with `--dry-run`,
/// changes nothing and prints what each policy would do.
pub fn recover(args: &RecoverArgs) -> Result<(), String> {
    let dir = log_dir(&args.dir)?;
    let covered = covered_through(&args.dir)?;
    if args.dry_run {
        return dry_run(&dir, covered, args.policy);
    }
    let options = keel_recovery::RecoveryOptions {
        policy: args
            .policy
            .unwrap_or(Policy::TolerateTornTail)
            .recovery_policy(),
        covered_through: covered,
        dry_run: false,
        ..Default::default()
    };
    let report = keel_recovery::recover_with(&dir, options, &mut Count).map_err(|e| match e {
        keel_recovery::Error::Refused { .. } => format!(
            "{e}\n(nothing was changed; `--dry-run` shows what each policy would do, and a \
             laxer --policy, such as point-in-time, accepts it and reports what is lost)"
        ),
        other => other.to_string(),
    })?;
    println!("{report}");
    Ok(())
}

/// One table row per policy: its decision, the LSNs it would lose, the transactions it would
/// drop, and what it would change on disk. Nothing is changed.
fn dry_run(dir: &Path, covered: Option<Lsn>, only: Option<Policy>) -> Result<(), String> {
    let policies: Vec<Policy> = match only {
        Some(policy) => vec![policy],
        None => Policy::ALL.to_vec(),
    };
    println!(
        "dry run of {}{}: nothing is changed",
        dir.display(),
        covered.map_or(String::new(), |lsn| format!(
            " (the newest readable snapshot covers up to LSN {lsn})"
        ))
    );
    let mut rows = vec![[
        "policy".to_string(),
        "decision".to_string(),
        "LSNs lost".to_string(),
        "transactions dropped".to_string(),
        "on disk".to_string(),
    ]];
    let mut findings = Vec::new();
    for policy in policies {
        let options = keel_recovery::RecoveryOptions {
            policy: policy.recovery_policy(),
            covered_through: covered,
            dry_run: true,
            ..Default::default()
        };
        let name = policy.recovery_policy().to_string();
        rows.push(
            match keel_recovery::recover_with(dir, options, &mut Count) {
                Ok(report) => {
                    for anomaly in &report.anomalies {
                        findings.push(format!("{name}: {anomaly}"));
                    }
                    dry_run_row(&name, &report)
                }
                Err(keel_recovery::Error::Refused {
                    path,
                    offset,
                    finding,
                    ..
                }) => {
                    findings.push(format!(
                        "{name}: refuses {} at offset {offset}: {finding}",
                        path.display()
                    ));
                    [
                        name,
                        "refuses to open".into(),
                        "-".into(),
                        "-".into(),
                        "nothing".into(),
                    ]
                }
                Err(other) => return Err(other.to_string()),
            },
        );
    }
    print_table(&rows);
    for finding in findings {
        println!("  {finding}");
    }
    Ok(())
}

fn dry_run_row(name: &str, report: &keel_recovery::RecoveryReport) -> [String; 5] {
    let mut lost: Vec<String> = report
        .lsns_lost
        .iter()
        .map(|(from, to)| match from == to {
            true => format!("{from}"),
            false => format!("{from}-{to}"),
        })
        .collect();
    if let Some(cut) = report.cut_at
        && (report.bytes_truncated > 0 || !report.segments_discarded.is_empty())
    {
        lost.push(format!("{cut} and after (cut)"));
    }
    let dropped = report.txns_partial + report.txns_incomplete;
    let mut disk = Vec::new();
    if report.bytes_truncated > 0 {
        disk.push(format!("zero {} bytes", report.bytes_truncated));
    }
    if !report.segments_discarded.is_empty() {
        disk.push(format!(
            "set aside {} segments",
            report.segments_discarded.len()
        ));
    }
    let decision = match (report.is_clean(), report.cut_at) {
        (true, _) => "opens: clean",
        (false, Some(_)) => "opens: cuts the log",
        (false, None) => "opens: skips damage",
    };
    [
        name.to_string(),
        decision.to_string(),
        if lost.is_empty() {
            "none".into()
        } else {
            lost.join(", ")
        },
        format!(
            "{dropped} ({} partial, {} incomplete)",
            report.txns_partial, report.txns_incomplete
        ),
        if disk.is_empty() {
            "nothing".into()
        } else {
            disk.join(", ")
        },
    ]
}

fn print_table(rows: &[[String; 5]]) {
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("| {} |", cells.join(" | "));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("|-{}-|", rule.join("-|-"));
        }
    }
}
