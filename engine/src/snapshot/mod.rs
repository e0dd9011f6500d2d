//! Snapshots: the whole state at one LSN, written atomically.
//!
//! A file `snapshots/<lsn, 20 digits>.snap` holds the state in the format of `format.rs`
//! (version 2 written as a stream of checked frames; version 1 still read). It is written to
//! a temporary file, fsynced, renamed into place, and the directory fsynced; a damaged or
//! unreadable snapshot is never half-used: [`load_newest`] falls back to the one before it.
//! Reading one back (to load it, or only to check it) streams it a frame at a time.

mod format;

use std::path::{Path, PathBuf};

use std::io::Read;

use bytes::Bytes;
use keel_wal::{Lsn, RunId, Storage, TxnId, fsutil};

use crate::state::{RunInfo, RunState, State, Stored};
use crate::{Error, Result};
use format::{ArchivedDataRow, ArchivedRunRow};

const SUFFIX: &str = ".snap";

/// A snapshot read back.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub lsn: Lsn,
    /// The snapshot file's size.
    pub bytes: u64,
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

/// Writes `state` as the snapshot at `lsn` into `dir`, atomically, streaming it to the
/// file a frame at a time (`state` is a view no one changes meanwhile). Once `cancelled`
/// says so (checked between frames), it stops and removes the partial file. Returns the
/// snapshot's size in bytes.
pub(crate) fn write(
    storage: &dyn Storage,
    dir: &Path,
    lsn: Lsn,
    max_txn_id: TxnId,
    state: &State,
    cancelled: &dyn Fn() -> bool,
) -> Result<u64> {
    fsutil::create_dir_all_durably(storage, dir)?;
    let name = file_name(lsn);
    let mut bytes = 0;
    fsutil::write_atomically_with(storage, dir, &name, |file, path| {
        let synced = SyncedEvery {
            storage,
            file,
            path,
            unsynced: 0,
        };
        let mut out = std::io::BufWriter::with_capacity(1 << 16, synced);
        format::encode(&mut out, lsn, max_txn_id, state, cancelled)?;
        // Flushed (with its error, which a drop would swallow) before the size is read.
        out.into_inner().map_err(|e| e.into_error())?;
        bytes = file.metadata()?.len();
        Ok(())
    })?;
    Ok(bytes)
}

/// Bytes of a snapshot written between two syncs of its file.
const SYNC_BYTES: u64 = 8 << 20;

/// A snapshot file being written, synced every [`SYNC_BYTES`]: so the final sync never has a
/// whole state to flush at once, which would stall the log's own `fdatasync` on the same
/// device for as long (measured: a 256 MiB snapshot's single fsync held a commit's
/// `fdatasync` 185 ms).
struct SyncedEvery<'a> {
    storage: &'a dyn Storage,
    file: &'a mut std::fs::File,
    path: &'a Path,
    unsynced: u64,
}

impl std::io::Write for SyncedEvery<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.file.write(buf)?;
        self.unsynced += written as u64;
        if self.unsynced >= SYNC_BYTES {
            self.storage.sync_file(self.file, self.path, false)?;
            self.unsynced = 0;
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl std::io::Seek for SyncedEvery<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        self.file.seek(to)
    }
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

/// Reads one snapshot into a state; an error says what is wrong with it.
pub(crate) fn read(path: &Path) -> Result<Loaded> {
    let file = open(path)?;
    // Its size only weighs the next automatic checkpoint: unknown counts as none.
    let bytes = file.metadata().map_or(0, |m| m.len());
    let mut loaded = load(std::io::BufReader::with_capacity(1 << 16, file))
        .map_err(|why| damaged(path, &why))?;
    loaded.bytes = bytes;
    Ok(loaded)
}

/// Reads one snapshot through, checking every frame, without keeping its state: the LSN it
/// holds, or what is wrong with it.
pub(crate) fn verify(path: &Path) -> Result<std::result::Result<Lsn, String>> {
    let file = open(path)?;
    let mut order = KeyOrder::default();
    let mut visit = |runs: &[ArchivedRunRow], data: &[ArchivedDataRow]| order.check(runs, data);
    let reader = std::io::BufReader::with_capacity(1 << 16, file);
    Ok(format::decode(reader, &mut visit).map(|header| header.lsn))
}

/// Reads one snapshot's bytes, once they decode whole; and the LSN they hold.
pub(crate) fn read_whole(path: &Path) -> Result<(Lsn, Vec<u8>)> {
    let bytes = read_bytes(path)?;
    let mut order = KeyOrder::default();
    let mut visit = |runs: &[ArchivedRunRow], data: &[ArchivedDataRow]| order.check(runs, data);
    let header = format::decode(bytes.as_slice(), &mut visit).map_err(|why| damaged(path, &why))?;
    Ok((header.lsn, bytes))
}

fn open(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| keel_wal::Error::io("reading snapshot", path, e).into())
}

fn damaged(path: &Path, why: &str) -> Error {
    Error::Metadata(format!("snapshot {}: {why}", path.display()))
}

/// The bytes of one snapshot file, unchecked.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| keel_wal::Error::io("reading snapshot", path, e).into())
}

/// Checks and decodes the bytes of a snapshot file: magic, version, checksums, lengths,
/// archives, key order. The error says what is wrong; no input panics.
pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Loaded, String> {
    load(bytes)
}

/// Decodes a snapshot from `input` into a state, a frame at a time.
fn load<R: Read>(input: R) -> std::result::Result<Loaded, String> {
    let mut state = State::default();
    let mut order = KeyOrder::default();
    let mut visit = |runs: &[ArchivedRunRow], data: &[ArchivedDataRow]| {
        order.check(runs, data)?;
        for row in runs {
            let id = RunId::from_u128(row.0.to_native());
            let ended = row.3.as_ref().map(|at| at.to_native());
            let info = RunInfo {
                id,
                name: row.1.as_str().to_owned(),
                began: row.2.to_native(),
                state: ended.map_or(RunState::Active, RunState::Ended),
            };
            state.runs.insert(id.as_u128(), info);
        }
        for row in data {
            let key = (row.0.to_native(), Bytes::copy_from_slice(row.1.as_slice()));
            let value = Bytes::copy_from_slice(row.2.as_slice());
            let version = row.3.to_native();
            state.put(key, Stored { value, version });
        }
        Ok(())
    };
    let header = format::decode(input, &mut visit)?;
    state.applied_through = header.lsn;
    Ok(Loaded {
        lsn: header.lsn,
        bytes: 0,
        max_txn_id: header.max_txn_id,
        state,
    })
}

/// Checks that runs and keys come in strictly increasing order across frames (a snapshot is
/// written from ordered maps, so anything else is damage that would silently merge rows).
#[derive(Debug, Default)]
struct KeyOrder {
    last_run: Option<u128>,
    last_key: Option<(u128, Vec<u8>)>,
}

impl KeyOrder {
    fn check(
        &mut self,
        runs: &[ArchivedRunRow],
        data: &[ArchivedDataRow],
    ) -> std::result::Result<(), String> {
        if !runs.is_empty() && self.last_key.is_some() {
            return Err("a run follows the keys".into());
        }
        for row in runs {
            let id = row.0.to_native();
            if self.last_run.is_some_and(|last| last >= id) {
                return Err(format!("run {id} is out of order"));
            }
            self.last_run = Some(id);
        }
        let mut previous = self.last_key.as_ref().map(|(r, k)| (*r, k.as_slice()));
        for row in data {
            let key = (row.0.to_native(), row.1.as_slice());
            if previous.is_some_and(|last| last >= key) {
                return Err(format!("key {:?} of run {} is out of order", key.1, key.0));
            }
            previous = Some(key);
        }
        self.last_key = previous.map(|(r, k)| (r, k.to_vec()));
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Change, RunRecord, SYSTEM_RUN, run_key};

    /// Runs 1 and 2, `keys` keys each with values of `value_len` bytes.
    fn sample(keys: usize, value_len: usize) -> State {
        let mut state = State::default();
        for (id, lsn) in [(1u128, 1), (2, 2)] {
            let record = RunRecord {
                name: format!("run {id}"),
                ended: id == 2,
                deleted: false,
            };
            let change = Change::Put(run_key(RunId::from_u128(id)), record.encode());
            state.apply(SYSTEM_RUN, lsn, vec![change]).unwrap();
            let changes = (0..keys)
                .map(|k| {
                    Change::Put(
                        format!("key {k:05}").into_bytes(),
                        vec![k.to_le_bytes()[0]; value_len],
                    )
                })
                .collect();
            state.apply(id, 10 + lsn, changes).unwrap();
        }
        state
    }

    fn encode_framed(state: &State, frame_bytes: usize) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        format::encode_framed(&mut out, 42, 7, state, &|| false, frame_bytes).unwrap();
        out.into_inner()
    }

    fn same(a: &State, b: &State) -> bool {
        a.data == b.data && a.runs == b.runs
    }

    #[test]
    fn a_state_of_many_frames_reads_back_whole() {
        let state = sample(3000, 1000);
        let bytes = encode_framed(&state, format::FRAME_BYTES);
        let loaded = decode(&bytes).unwrap();
        assert_eq!((loaded.lsn, loaded.max_txn_id), (42, 7));
        assert!(same(&loaded.state, &state));
        let frames = u64::from_le_bytes(bytes[32..40].try_into().unwrap());
        assert!(
            frames >= 5,
            "6 MB of values in frames of about 1 MiB: {frames}"
        );
    }

    #[test]
    fn a_version_1_snapshot_still_loads() {
        let state = sample(50, 10);
        let loaded = decode(&format::encode_v1(42, 7, &state)).unwrap();
        assert_eq!((loaded.lsn, loaded.max_txn_id), (42, 7));
        assert!(same(&loaded.state, &state));
    }

    #[test]
    fn every_truncation_and_flipped_bit_of_a_framed_snapshot_is_refused() {
        let state = sample(3, 4);
        let good = encode_framed(&state, 1);
        assert!(u64::from_le_bytes(good[32..40].try_into().unwrap()) >= 8);
        assert!(decode(&good).is_ok());
        for len in 0..good.len() {
            assert!(decode(&good[..len]).is_err(), "cut to {len}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        for at in 0..good.len() {
            for bit in 0..8 {
                let mut bytes = good.clone();
                bytes[at] ^= 1 << bit;
                assert!(decode(&bytes).is_err(), "byte {at} bit {bit}");
            }
        }
    }

    #[test]
    fn frames_out_of_order_are_refused() {
        let state = sample(3, 4);
        let good = encode_framed(&state, 1);
        let mut frames = Vec::new();
        let mut at = 48;
        while at < good.len() {
            let len = u32::from_le_bytes(good[at..at + 4].try_into().unwrap()) as usize;
            frames.push(good[at..at + 8 + len].to_vec());
            at += 8 + len;
        }
        // Two key frames of one run swapped: each frame is whole, the order is not.
        let last = frames.len() - 1;
        frames.swap(last - 1, last);
        let mut swapped = good[..48].to_vec();
        swapped.extend(frames.concat());
        let why = decode(&swapped).unwrap_err();
        assert!(why.contains("out of order"), "{why}");
    }

    #[test]
    fn a_cancelled_write_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let storage = keel_wal::FileSystem;
        let state = sample(3000, 1000);
        let error = write(&storage, dir.path(), 42, 7, &state, &|| true).unwrap_err();
        assert!(error.to_string().contains("closing"), "{error}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        let bytes = write(&storage, dir.path(), 42, 7, &state, &|| false).unwrap();
        let path = path_of(dir.path(), 42);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
        assert_eq!(verify(&path).unwrap(), Ok(42));
        assert!(same(&read(&path).unwrap().state, &state));
    }
}
