//! Snapshots: the whole state at one LSN, written atomically.
//!
//! A file `snapshots/<lsn, 20 digits>.snap` holds a 32-byte header and an rkyv archive:
//!
//! | offset | size | field                                                     |
//! |-------:|-----:|-----------------------------------------------------------|
//! | 0      | 8    | magic `KEELSNAP`                                          |
//! | 8      | 4    | format version (1)                                        |
//! | 12     | 4    | CRC32 of bytes 16..32 and of the payload                  |
//! | 16     | 8    | LSN: every commit at or below it is in the snapshot, none above |
//! | 24     | 8    | payload length                                            |
//! | 32     | ...  | rkyv archive of [`SnapshotData`]                          |
//!
//! It is written to a temporary file, fsynced, renamed into place, and the directory fsynced;
//! a damaged or unreadable snapshot is never half-used: [`load_newest`] falls back to the one
//! before it.

use std::path::{Path, PathBuf};

use keel_wal::{Lsn, Storage, TxnId, fsutil};
use rkyv::util::AlignedVec;

use crate::state::{RunInfo, RunState, State, Versioned};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"KEELSNAP";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 32;
const SUFFIX: &str = ".snap";

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Default)]
struct SnapshotData {
    max_txn_id: u64,
    /// `(id, name, began, ended)`.
    runs: Vec<(u128, String, u64, Option<u64>)>,
    /// `(run, key, value, version)`.
    data: Vec<(u128, Vec<u8>, Vec<u8>, u64)>,
}

/// A snapshot read back.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub lsn: Lsn,
    pub max_txn_id: TxnId,
    pub state: State,
}

fn file_name(lsn: Lsn) -> String {
    format!("{lsn:020}{SUFFIX}")
}

/// The path of the snapshot at `lsn` in `dir` (whether or not it exists).
pub(crate) fn path_of(dir: &Path, lsn: Lsn) -> PathBuf {
    dir.join(file_name(lsn))
}

/// The LSN a snapshot file's name gives, or `None` when it is not a snapshot's name.
pub(crate) fn lsn_of(path: &Path) -> Option<Lsn> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(SUFFIX)?.parse().ok()
}

/// Snapshot files in `dir`, newest first.
pub(crate) fn list(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(keel_wal::Error::io("listing snapshots in", dir, e).into()),
    };
    for entry in entries {
        let entry = entry.map_err(|e| keel_wal::Error::io("listing snapshots in", dir, e))?;
        let path = entry.path();
        if let Some(lsn) = lsn_of(&path) {
            found.push((lsn, path));
        }
    }
    found.sort_by_key(|(lsn, _)| std::cmp::Reverse(*lsn));
    Ok(found)
}

/// Partial snapshot files (`<name>.tmp`, regular files) a process died while writing. Only
/// called by a holder of the snapshot turn, so none of them is being written.
fn partials(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let partial = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".tmp"))
            .is_some_and(|n| lsn_of(Path::new(n)).is_some());
        if partial && entry.file_type()?.is_file() {
            found.push(path);
        }
    }
    Ok(found)
}

/// Removes the partial snapshot files a crash left, best effort: they only take space, so one
/// that cannot be listed or removed is logged and left, and fails no checkpoint or install
/// (an error here made every later checkpoint fail, each leaving its snapshot behind:
/// `tests/adversarial_today_partials.rs`). Returns how many it removed; the caller syncs
/// the directory.
pub(crate) fn remove_partials(storage: &dyn Storage, dir: &Path) -> usize {
    let found = match partials(dir) {
        Ok(found) => found,
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "could not list partial snapshots");
            return 0;
        }
    };
    let mut removed = 0;
    for path in found {
        match storage.remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "could not remove a partial snapshot");
            }
        }
    }
    removed
}

/// Writes `state` as the snapshot at `lsn` into `dir`, atomically.
pub(crate) fn write(
    storage: &dyn Storage,
    dir: &Path,
    lsn: Lsn,
    max_txn_id: TxnId,
    state: &State,
) -> Result<PathBuf> {
    fsutil::create_dir_all_durably(storage, dir)?;
    let data = SnapshotData {
        max_txn_id,
        runs: state
            .runs
            .values()
            .map(|r| {
                let ended = match r.state {
                    RunState::Active => None,
                    RunState::Ended(at) => Some(at),
                };
                (r.id.as_u128(), r.name.clone(), r.began, ended)
            })
            .collect(),
        data: state
            .data
            .iter()
            .map(|((run, key), v)| (*run, key.clone(), v.value.clone(), v.version))
            .collect(),
    };
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&data)
        .map_err(|e| Error::Metadata(format!("encoding snapshot: {e}")))?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&lsn.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&payload);
    let crc = crc32fast::hash(&bytes[16..]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    let name = file_name(lsn);
    fsutil::write_atomically(storage, dir, &name, &bytes)?;
    Ok(dir.join(name))
}

/// Deletes every snapshot in `dir` but the one at `keep` (and partial ones a crash left),
/// then syncs the directory (once, when it deleted any). Returns how many it deleted.
pub(crate) fn remove_all_but(storage: &dyn Storage, dir: &Path, keep: Lsn) -> Result<usize> {
    let mut removed = 0;
    for (lsn, path) in list(dir)? {
        if lsn == keep {
            continue;
        }
        match storage.remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(keel_wal::Error::io("removing old snapshot", &path, e).into()),
        }
    }
    removed += remove_partials(storage, dir);
    if removed > 0 {
        fsutil::sync_dir(storage, dir)?;
    }
    Ok(removed)
}

/// Reads one snapshot; an error says what is wrong with it.
pub(crate) fn read(path: &Path) -> Result<Loaded> {
    let bytes = read_bytes(path)?;
    decode(&bytes).map_err(|why| damaged(path, &why))
}

/// Reads one snapshot's bytes, once they decode whole; and the LSN they hold.
pub(crate) fn read_whole(path: &Path) -> Result<(Lsn, Vec<u8>)> {
    let bytes = read_bytes(path)?;
    let loaded = decode(&bytes).map_err(|why| damaged(path, &why))?;
    Ok((loaded.lsn, bytes))
}

fn damaged(path: &Path, why: &str) -> Error {
    Error::Metadata(format!("snapshot {}: {why}", path.display()))
}

/// The bytes of one snapshot file, unchecked.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| keel_wal::Error::io("reading snapshot", path, e).into())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks and decodes the bytes of a snapshot file: magic, version, checksum, length, archive,
/// in that order. The error says what is wrong; no input panics.
pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Loaded, String> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err("not a snapshot (bad magic or too short)".into());
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(format!(
            "format version {version}; this build reads {VERSION}"
        ));
    }
    let stored = u32_at(bytes, 12);
    let actual = crc32fast::hash(&bytes[16..]);
    if stored != actual {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        ));
    }
    let lsn = u64_at(bytes, 16);
    let len = u64_at(bytes, 24);
    let payload = &bytes[HEADER_LEN..];
    if u64::try_from(payload.len()).ok() != Some(len) {
        return Err(format!(
            "payload length {len} does not match the file ({} bytes)",
            bytes.len()
        ));
    }
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    let data = rkyv::from_bytes::<SnapshotData, rkyv::rancor::Error>(&aligned)
        .map_err(|e| format!("invalid archive: {e}"))?;
    Ok(Loaded {
        lsn,
        max_txn_id: data.max_txn_id,
        state: state_of(data, lsn),
    })
}

/// The state a decoded archive describes, as of `lsn`.
fn state_of(data: SnapshotData, lsn: Lsn) -> State {
    let mut state = State::default();
    for (id, name, began, ended) in data.runs {
        let id = keel_wal::RunId::from_u128(id);
        let state_of = ended.map_or(RunState::Active, RunState::Ended);
        state.runs.insert(
            id.as_u128(),
            RunInfo {
                id,
                name,
                began,
                state: state_of,
            },
        );
    }
    for (run, key, value, version) in data.data {
        state.data.insert((run, key), Versioned { value, version });
    }
    state.applied_through = lsn;
    state
}

/// Snapshots that could not be read, with the reason.
pub(crate) type Skipped = Vec<(PathBuf, String)>;

/// The newest snapshot that reads back whole, and the damaged newer ones passed over.
pub(crate) fn load_newest(dir: &Path) -> Result<(Option<Loaded>, Skipped)> {
    let mut skipped = Vec::new();
    for (_, path) in list(dir)? {
        match read(&path) {
            Ok(loaded) => return Ok((Some(loaded), skipped)),
            Err(error) => {
                tracing::error!(snapshot = %path.display(), %error, "snapshot unreadable; trying the previous one");
                skipped.push((path, error.to_string()));
            }
        }
    }
    Ok((None, skipped))
}

/// The bytes of the newest snapshot that decodes whole, and its LSN; damaged ones are passed
/// over as in [`load_newest`].
pub(crate) fn newest_bytes(dir: &Path) -> Result<Option<(Lsn, Vec<u8>)>> {
    for (_, path) in list(dir)? {
        match read_whole(&path) {
            Ok(found) => return Ok(Some(found)),
            Err(error) => {
                tracing::warn!(snapshot = %path.display(), %error, "snapshot unreadable; trying the previous one");
            }
        }
    }
    Ok(None)
}
