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

use keel_wal::{Lsn, TxnId, fsutil};
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
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(lsn) = name.strip_suffix(SUFFIX).and_then(|n| n.parse().ok()) {
            found.push((lsn, entry.path()));
        }
    }
    found.sort_by_key(|(lsn, _)| std::cmp::Reverse(*lsn));
    Ok(found)
}

/// Writes `state` as the snapshot at `lsn` into `dir`, atomically.
pub(crate) fn write(dir: &Path, lsn: Lsn, max_txn_id: TxnId, state: &State) -> Result<PathBuf> {
    keel_wal::fsutil::create_dir_all_durably(dir)?;
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
    fsutil::write_atomically(dir, &name, &bytes)?;
    Ok(dir.join(name))
}

/// Reads one snapshot; an error says what is wrong with it.
pub(crate) fn read(path: &Path) -> Result<Loaded> {
    let damaged = |why: String| Error::Metadata(format!("snapshot {}: {why}", path.display()));
    let bytes =
        std::fs::read(path).map_err(|e| keel_wal::Error::io("reading snapshot", path, e))?;
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(damaged("not a snapshot (bad magic or too short)".into()));
    }
    let field = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(damaged(format!(
            "format version {version}; this build reads {VERSION}"
        )));
    }
    let stored = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    let actual = crc32fast::hash(&bytes[16..]);
    if stored != actual {
        return Err(damaged(format!(
            "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        )));
    }
    let lsn = field(16);
    let len = usize::try_from(field(24)).map_err(|_| damaged("length overflows".into()))?;
    if HEADER_LEN + len != bytes.len() {
        return Err(damaged(format!(
            "payload length {len} does not match the file ({} bytes)",
            bytes.len()
        )));
    }
    let mut aligned = AlignedVec::<16>::with_capacity(len);
    aligned.extend_from_slice(&bytes[HEADER_LEN..]);
    let data = rkyv::from_bytes::<SnapshotData, rkyv::rancor::Error>(&aligned)
        .map_err(|e| damaged(format!("invalid archive: {e}")))?;
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
    Ok(Loaded {
        lsn,
        max_txn_id: data.max_txn_id,
        state,
    })
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
