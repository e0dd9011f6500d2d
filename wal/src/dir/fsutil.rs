//! Every filesystem operation outside record IO: directory fsync, the lock, the identity file,
//! atomic creation. Portable (Linux and macOS): `std::fs` and `std::os::unix` only.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use crate::dir::storage::Storage;
use crate::error::{CorruptionReason, Error, Result};
use crate::format::record::{get_u32, put_u32};
use crate::ids::DatabaseId;

/// The lock file of a WAL directory.
pub const LOCK_FILE: &str = "LOCK";
/// The identity file of a WAL directory.
pub const IDENTITY_FILE: &str = "IDENTITY";
/// The identity file's own format version, independent of the segment format's
/// ([`crate::format::segment::FORMAT_VERSION`]).
pub(crate) const IDENTITY_FORMAT_VERSION: u32 = 1;
const IDENTITY_MAGIC: [u8; 8] = *b"KEELWID\0";
const IDENTITY_LEN: usize = 36;

/// Names Keel keeps in a WAL directory besides segments and spares.
pub(crate) fn is_reserved_name(name: &str) -> bool {
    name == LOCK_FILE || name == IDENTITY_FILE || name == "IDENTITY.tmp"
}

/// Makes the directory's entries (creations, renames, unlinks) durable.
pub fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<()> {
    storage
        .sync_dir(dir)
        .map_err(|e| Error::io("syncing directory", dir, e))
}

/// Makes `dir`'s entries durable, and `dir`'s own name in its parent: two directory fsyncs.
/// An open calls it once, since it cannot know whether the process that made those entries
/// (segments, spares, the identity, the directory itself) synced them before it stopped.
pub fn sync_dir_and_parent(storage: &dyn Storage, dir: &Path) -> Result<()> {
    sync_dir(storage, dir)?;
    sync_parent(storage, dir)
}

/// Makes `dir`'s own name durable: syncs the directory holding it (none for the root).
pub fn sync_parent(storage: &dyn Storage, dir: &Path) -> Result<()> {
    match parent_of(dir)? {
        Some(parent) => sync_dir(storage, &parent),
        None => Ok(()),
    }
}

/// The directory holding `dir`'s name (`.` for a bare relative name; `None` for the root).
fn parent_of(dir: &Path) -> Result<Option<PathBuf>> {
    let named = matches!(dir.components().next_back(), Some(Component::Normal(_)));
    let dir = if named {
        dir.to_path_buf()
    } else {
        std::fs::canonicalize(dir).map_err(|e| Error::io("resolving", dir, e))?
    };
    Ok(match dir.parent() {
        None => None,
        Some(parent) if parent.as_os_str().is_empty() => Some(PathBuf::from(".")),
        Some(parent) => Some(parent.to_path_buf()),
    })
}

/// Creates `dir` and any missing parents, and makes each new entry durable by syncing the
/// directory it was created in (a new directory's name is not durable before that).
pub fn create_dir_all_durably(storage: &dyn Storage, dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at {
        if path.as_os_str().is_empty() || path.is_dir() {
            break;
        }
        missing.push(path);
        at = path.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))?;
    for created in missing.iter().rev() {
        // A bare relative name lives in the current directory.
        match created.parent() {
            Some(parent) if parent.as_os_str().is_empty() => sync_dir(storage, Path::new("."))?,
            Some(parent) => sync_dir(storage, parent)?,
            None => {}
        }
    }
    Ok(())
}

/// Writes the records of the segment `file` between `from` (at least past its header block)
/// and `to` again, the same bytes ([`Storage::rewrite`]), then syncs its data: what a reopen
/// read back from pages the kernel counts clean without having written them (after a failed
/// sync: fsyncgate) is then durable, which a sync alone does not make it. `from` is where
/// nothing proves the records durable (the newest durable witness's end, or the header).
pub fn rewrite_and_sync(
    storage: &dyn Storage,
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
) -> Result<()> {
    // In pieces, so that an open after a crash holds at most this much, whatever the
    // segment size.
    const PIECE: u64 = 1 << 20;
    let mut at = from.max(crate::format::segment::HEADER_BLOCK_LEN);
    let mut bytes = Vec::new();
    while at < to {
        let len = usize::try_from((to - at).min(PIECE)).expect("a piece fits in memory");
        bytes.resize(len, 0);
        std::os::unix::fs::FileExt::read_exact_at(file, &mut bytes, at)
            .and_then(|()| storage.rewrite(file, path, at, &bytes))
            .map_err(|e| Error::io("writing again the records to make durable in", path, e))?;
        at += len as u64;
    }
    sync_file(storage, file, path, false)
}

/// Makes `file`'s data durable (`fdatasync`; with `all`, its metadata too: `fsync`). Every
/// sync outside the IO backends goes through here.
pub fn sync_file(storage: &dyn Storage, file: &File, path: &Path, all: bool) -> Result<()> {
    storage
        .sync_file(file, path, all)
        .map_err(|e| Error::io("syncing", path, e))
}

/// Takes the exclusive lock of a WAL directory; it is held while the returned file is open.
pub fn lock_dir(storage: &dyn Storage, dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    match storage.lock(&path) {
        Ok(Some(file)) => Ok(file),
        Ok(None) => Err(Error::Locked {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(Error::io("locking", &path, e)),
    }
}

/// Renames `from` to `to` (durable once their directory is synced).
pub fn rename(storage: &dyn Storage, from: &Path, to: &Path) -> Result<()> {
    storage
        .rename(from, to)
        .map_err(|e| Error::io("renaming", from, e))
}

/// Writes `bytes` to `dir/name` atomically: a temporary file, fsync, rename, directory fsync.
pub fn write_atomically(storage: &dyn Storage, dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    write_atomically_with(storage, dir, name, |file, _| file.write_all(bytes))
}

/// [`write_atomically`], with the contents written by `write` into the temporary file (a
/// stream of any length, written a piece at a time), which it gets with its path.
pub fn write_atomically_with(
    storage: &dyn Storage,
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut File, &Path) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let written = (|| {
        let mut file = storage
            .create(&tmp)
            .map_err(|e| Error::io("creating", &tmp, e))?;
        write(&mut file, &tmp).map_err(|e| Error::io("writing", &tmp, e))?;
        sync_file(storage, &file, &tmp, true)?;
        drop(file);
        rename(storage, &tmp, &target)
    })();
    if let Err(error) = written {
        // A partial file left behind would hold space a full disk needs back, once per
        // failed attempt; the target is untouched either way.
        if let Err(e) = storage.remove_file(&tmp)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %tmp.display(), error = %e, "could not remove a partial file");
        }
        return Err(error);
    }
    sync_dir(storage, dir)
}

/// Reads the directory's identity, or `None` when there is none yet.
pub fn read_identity(dir: &Path) -> Result<Option<DatabaseId>> {
    let path = dir.join(IDENTITY_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("opening", &path, e)),
    };
    let mut bytes = [0u8; IDENTITY_LEN];
    let corrupt = |what| Error::corruption(&path, 0, CorruptionReason::Identity(what));
    file.read_exact_at(&mut bytes, 0)
        .map_err(|_| corrupt("shorter than 36 bytes"))?;
    if bytes[..8] != IDENTITY_MAGIC {
        return Err(corrupt("bad magic"));
    }
    if get_u32(&bytes, 32) != crc32fast::hash(&bytes[..32]) {
        return Err(corrupt("checksum mismatch"));
    }
    let version = get_u32(&bytes, 8);
    if version != IDENTITY_FORMAT_VERSION {
        return Err(Error::UnknownFormatVersion {
            path,
            found: version,
            supported: IDENTITY_FORMAT_VERSION,
        });
    }
    Ok(Some(DatabaseId(
        bytes[16..32].try_into().expect("16 bytes"),
    )))
}

/// Writes the directory's identity atomically.
pub fn write_identity(storage: &dyn Storage, dir: &Path, id: DatabaseId) -> Result<()> {
    let mut bytes = [0u8; IDENTITY_LEN];
    bytes[..8].copy_from_slice(&IDENTITY_MAGIC);
    put_u32(&mut bytes, 8, IDENTITY_FORMAT_VERSION);
    bytes[16..32].copy_from_slice(&id.0);
    let crc = crc32fast::hash(&bytes[..32]);
    put_u32(&mut bytes, 32, crc);
    write_atomically(storage, dir, IDENTITY_FILE, &bytes)
}

/// Writes zeros over `[from, to)` of `file`, skipping chunks that already read back as zeros.
/// Returns how many bytes were not zero before.
pub fn zero_range(file: &File, path: &Path, from: u64, to: u64) -> Result<u64> {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    let zeros = vec![0u8; CHUNK];
    let mut dirty = 0u64;
    let mut offset = from;
    while offset < to {
        let len = usize::try_from((to - offset).min(CHUNK as u64)).expect("bounded by CHUNK");
        file.read_exact_at(&mut buf[..len], offset)
            .map_err(|e| Error::io("reading", path, e))?;
        let nonzero = crate::format::zeros::count_nonzero(&buf[..len]);
        if nonzero > 0 {
            dirty += nonzero as u64;
            file.write_all_at(&zeros[..len], offset)
                .map_err(|e| Error::io("zeroing", path, e))?;
        }
        offset += len as u64;
    }
    Ok(dirty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dir::storage::FileSystem;

    #[test]
    fn identity_round_trips_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_identity(dir.path()).unwrap(), None);
        let id = DatabaseId([3; 16]);
        write_identity(&FileSystem, dir.path(), id).unwrap();
        assert_eq!(read_identity(dir.path()).unwrap(), Some(id));
        let path = dir.path().join(IDENTITY_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            read_identity(dir.path()),
            Err(Error::Corruption { .. })
        ));
    }

    /// The identity keeps its own version 1 whatever the segment format is; any other is
    /// refused.
    #[test]
    fn identity_is_version_1_and_no_other_is_read() {
        let dir = tempfile::tempdir().unwrap();
        write_identity(&FileSystem, dir.path(), DatabaseId([5; 16])).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(get_u32(&bytes, 8), 1);
        put_u32(&mut bytes, 8, crate::format::segment::FORMAT_VERSION);
        let crc = crc32fast::hash(&bytes[..32]);
        put_u32(&mut bytes, 32, crc);
        std::fs::write(&path, bytes).unwrap();
        let err = read_identity(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnknownFormatVersion {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn the_parent_of_a_log_directory_is_where_its_name_lives() {
        let parent = |dir: &str| parent_of(Path::new(dir)).unwrap();
        assert_eq!(parent("/a/b"), Some(PathBuf::from("/a")));
        assert_eq!(parent("b"), Some(PathBuf::from(".")));
        assert_eq!(parent("/"), None);
        let here = std::env::current_dir().unwrap();
        assert_eq!(parent("."), here.parent().map(Path::to_path_buf));
    }

    #[test]
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock_dir(&FileSystem, dir.path()).unwrap();
        assert!(matches!(
            lock_dir(&FileSystem, dir.path()),
            Err(Error::Locked { .. })
        ));
    }
}
