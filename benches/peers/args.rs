//! The harness's command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::systems;

pub struct Args {
    pub duration: Duration,
    pub committers: Vec<usize>,
    pub sizes: Vec<usize>,
    pub systems: Vec<String>,
    /// Committer counts of the relaxed-durability table (empty: no such table).
    pub relaxed_committers: Vec<usize>,
    /// Log size of the recovery table, in MiB (0: no such table).
    pub recovery_mib: u64,
    pub dir: PathBuf,
    pub out: Option<PathBuf>,
    /// Each cell (committers × size) this many times, the systems' order rotated each
    /// round; a system's row is its median round (by commits/s).
    pub rounds: usize,
}

fn list<T: std::str::FromStr>(value: &str) -> Vec<T> {
    value
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// `cargo bench` runs the harness in `benches/`; a relative path given on the command line is
/// taken from the workspace root, where the command was typed.
fn from_workspace(path: String) -> PathBuf {
    let path = PathBuf::from(path);
    if path.is_absolute() {
        return path;
    }
    match Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        Some(root) => root.join(path),
        None => path,
    }
}

pub fn parse_args() -> Args {
    let mut args = Args {
        duration: Duration::from_secs(3),
        committers: vec![1, 8, 64, 256],
        sizes: vec![128, 4096, 65536],
        systems: systems::compiled_systems()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        relaxed_committers: vec![1, 64],
        recovery_mib: 0,
        dir: std::env::temp_dir(),
        out: None,
        rounds: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_default();
        match flag.as_str() {
            "--duration" => args.duration = Duration::from_secs_f64(value().parse().unwrap_or(3.0)),
            "--committers" => args.committers = list(&value()),
            "--sizes" => args.sizes = list(&value()),
            "--systems" => args.systems = value().split(',').map(str::to_owned).collect(),
            "--dir" => args.dir = from_workspace(value()),
            "--relaxed-committers" => args.relaxed_committers = list(&value()),
            "--recovery-mib" => args.recovery_mib = value().parse().unwrap_or(0),
            "--out" => args.out = Some(from_workspace(value())),
            "--rounds" => args.rounds = value().parse().unwrap_or(1).max(1),
            // `cargo bench` passes --bench; criterion-style filters are not used here.
            _ => {}
        }
    }
    args
}
