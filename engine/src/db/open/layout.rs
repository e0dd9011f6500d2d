//! What is at the path `Database::open` was given, judged before anything is created there:
//! a database (or one a process died creating), a place for a new one, or something else,
//! refused with a sentence saying what it looks like.
//!
//! A database's top level holds only `LOCK`, `wal/` (its log, a keel-wal directory) and
//! `snapshots/`. A bare keel-wal log keeps its segments, spares, `IDENTITY` and `LOCK` at its
//! own top level. The check runs before the lock is taken (taking it creates `LOCK`): a
//! process creating the database meanwhile leaves only the engine's names, which pass.

use std::io::ErrorKind;
use std::path::Path;

use keel_wal::fsutil::{IDENTITY_FILE, LOCK_FILE};

use crate::{Error, Result};

/// The database's log directory.
pub(super) const LOG_DIR: &str = "wal";
/// The database's snapshot directory.
const SNAPSHOTS_DIR: &str = "snapshots";
/// Other files a refusal names, at most.
const NAMES_SHOWN: usize = 4;

/// What the directory holds, as far as the judgement goes.
#[derive(Debug, Default)]
struct Found {
    /// Names that are not the engine's (`LOCK`, `wal/`, `snapshots/`), sorted.
    others: Vec<String>,
    /// Some of `others` are keel-wal's own names (segments, spares, `IDENTITY`).
    log_files: bool,
    /// `wal/` is a directory.
    log_dir: bool,
    /// `wal/` holds a log's `IDENTITY`: a database, whatever else lies beside it.
    log_identity: bool,
    /// `snapshots/` is a directory.
    snapshots_dir: bool,
}

/// The judgement.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Open,
    /// Open, though these files beside the database are not its own.
    OpenBeside(Vec<String>),
    Refuse(String),
}

/// Refuses `path` unless it holds a Keel database, or is an empty or missing directory and
/// `create_if_missing` is set. Reads only: nothing is created or changed.
pub(super) fn check(path: &Path, create_if_missing: bool) -> Result<()> {
    let refuse = |what: String| Error::NotADatabase {
        path: path.to_path_buf(),
        what,
    };
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == ErrorKind::NotFound && create_if_missing => return Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(refuse(
                "it does not exist, and Options::create_if_missing is off".into(),
            ));
        }
        Err(e) => return Err(keel_wal::Error::io("reading metadata of", path, e).into()),
    };
    if !metadata.is_dir() {
        return Err(refuse("it is a file, not a directory".into()));
    }
    match judge(&list(path)?, create_if_missing) {
        Verdict::Open => Ok(()),
        Verdict::OpenBeside(others) => {
            tracing::warn!(path = %path.display(), ?others, "files in the database directory that are not the database's");
            Ok(())
        }
        Verdict::Refuse(what) => Err(refuse(what)),
    }
}

/// Reads the top level of the directory `path`.
fn list(path: &Path) -> Result<Found> {
    let io = |e| keel_wal::Error::io("listing", path, e);
    let mut found = Found::default();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let name = entry
            .map_err(io)?
            .file_name()
            .to_string_lossy()
            .into_owned();
        match name.as_str() {
            LOCK_FILE => {}
            LOG_DIR if path.join(LOG_DIR).is_dir() => found.log_dir = true,
            SNAPSHOTS_DIR if path.join(SNAPSHOTS_DIR).is_dir() => found.snapshots_dir = true,
            _ => {
                found.log_files |= keel_wal::dir::is_log_file_name(&name);
                found.others.push(name);
            }
        }
    }
    found.others.sort();
    found.log_identity = found.log_dir && path.join(LOG_DIR).join(IDENTITY_FILE).is_file();
    Ok(found)
}

/// The decision, first matching row:
///
/// | found                                             | create | verdict                   |
/// |---------------------------------------------------|--------|---------------------------|
/// | keel-wal's files at the top level, no `wal/`      | any    | refuse: a keel-wal log    |
/// | other files, `wal/` holding a log's `IDENTITY`    | any    | open (a warning names them) |
/// | other files                                       | any    | refuse: other files       |
/// | `wal/` or `snapshots/`                            | any    | open (recovery judges it) |
/// | nothing, or only `LOCK`                           | yes    | open: a new database      |
/// | nothing, or only `LOCK`                           | no     | refuse: no database       |
fn judge(found: &Found, create_if_missing: bool) -> Verdict {
    if found.log_files && !found.log_dir {
        return Verdict::Refuse(
            "this is a keel-wal log (its segments and IDENTITY are at the top level, where a database keeps its log in wal/); open it with `keel_recovery::open_wal`".into(),
        );
    }
    if !found.others.is_empty() && found.log_identity {
        return Verdict::OpenBeside(found.others.clone());
    }
    if !found.others.is_empty() {
        return Verdict::Refuse(format!(
            "this directory holds other files ({}); a new database is made only in an empty directory or at a new path",
            first_names(&found.others)
        ));
    }
    if found.log_dir || found.snapshots_dir || create_if_missing {
        return Verdict::Open;
    }
    Verdict::Refuse(format!(
        "the directory holds no database (no {LOG_DIR}/ or {SNAPSHOTS_DIR}/), and Options::create_if_missing is off"
    ))
}

/// "a, b, c, d and 3 more".
fn first_names(names: &[String]) -> String {
    let shown = names[..names.len().min(NAMES_SHOWN)].join(", ");
    match names.len().saturating_sub(NAMES_SHOWN) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn others(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn is_refusal(verdict: &Verdict, needle: &str) -> bool {
        matches!(verdict, Verdict::Refuse(what) if what.contains(needle))
    }

    #[test]
    fn keel_wal_files_without_a_log_directory_are_a_keel_wal_log() {
        let found = Found {
            others: others(&["00000000000000000001.wal", "IDENTITY"]),
            log_files: true,
            ..Found::default()
        };
        for create in [true, false] {
            assert!(is_refusal(&judge(&found, create), "keel-wal log"));
        }
    }

    #[test]
    fn other_files_beside_a_database_open_with_a_warning() {
        let found = Found {
            others: others(&["notes.txt"]),
            log_dir: true,
            log_identity: true,
            ..Found::default()
        };
        let beside = Verdict::OpenBeside(others(&["notes.txt"]));
        assert_eq!(judge(&found, false), beside);
    }

    #[test]
    fn other_files_without_a_database_are_refused_naming_the_first_few() {
        let mut found = Found {
            others: others(&["a", "b", "c", "d", "e", "f"]),
            log_dir: true,
            ..Found::default()
        };
        for create in [true, false] {
            assert!(is_refusal(
                &judge(&found, create),
                "(a, b, c, d and 2 more)"
            ));
        }
        found.others.truncate(1);
        assert!(is_refusal(&judge(&found, true), "other files (a);"));
    }

    #[test]
    fn the_engine_directories_open_for_recovery_to_judge() {
        let log = Found {
            log_dir: true,
            ..Found::default()
        };
        let snapshots = Found {
            snapshots_dir: true,
            ..Found::default()
        };
        assert_eq!(judge(&log, false), Verdict::Open);
        assert_eq!(judge(&snapshots, false), Verdict::Open);
    }

    #[test]
    fn nothing_or_only_a_lock_is_a_new_database_only_if_asked() {
        assert_eq!(judge(&Found::default(), true), Verdict::Open);
        assert!(is_refusal(
            &judge(&Found::default(), false),
            "holds no database"
        ));
    }
}
