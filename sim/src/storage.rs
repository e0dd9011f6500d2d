//! [`Sim`] as the storage of a log: its syncs are the model's, its backend is
//! [`SimBackend`], and a crashed process changes no file.

use std::fs::File;
use std::io;
use std::path::Path;

use keel_wal::backend::Backend;
use keel_wal::{BackendChoice, Defects, Error, FileSystem, Storage};

use crate::{Sim, SimBackend};

/// A model error as the storage interface reports it.
fn io_error(error: Error) -> io::Error {
    match error {
        Error::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

impl Sim {
    /// Whether `path` lies in the simulated tree. Outside it (the parent of a log at the
    /// root, say), the storage is the real file system, as it always was for those paths.
    fn covers(&self, path: &Path) -> bool {
        path.starts_with(&self.lock().root)
    }

    /// Fails once the storage crashed: a dead process changes no file in the tree.
    fn alive(&self, path: &Path) -> io::Result<()> {
        match self.covers(path) && self.is_crashed() {
            true => Err(io::Error::other("simulated crash: the storage is gone")),
            false => Ok(()),
        }
    }
}

impl Storage for Sim {
    fn backend(&self, _: BackendChoice, io_depth: usize) -> keel_wal::Result<Box<dyn Backend>> {
        let sim = self.me.upgrade().expect("a sim in use is alive");
        Ok(Box::new(SimBackend::new(sim, io_depth)))
    }

    fn rewrite(&self, file: &File, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        match self.covers(path) {
            true => Sim::rewrite(self, file, path, offset, bytes).map_err(io_error),
            false => FileSystem.rewrite(file, path, offset, bytes),
        }
    }

    fn sync_file(&self, file: &File, path: &Path, all: bool) -> io::Result<()> {
        match self.covers(path) {
            true => Sim::sync_file(self, file, path).map_err(io_error),
            false => FileSystem.sync_file(file, path, all),
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        match self.covers(dir) {
            true => Sim::sync_dir(self, dir).map_err(io_error),
            false => FileSystem.sync_dir(dir),
        }
    }

    fn create(&self, path: &Path) -> io::Result<File> {
        self.alive(path)?;
        File::create(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.alive(from)?;
        std::fs::rename(from, to)?;
        let installs_segment = to
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(keel_wal::segment::parse_file_name)
            .is_some();
        let mut state = self.lock();
        if installs_segment && state.broken.skip_rotation_dir_sync {
            state.skip_dir_sync = to.parent().map(Path::to_path_buf);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.alive(path)?;
        std::fs::remove_file(path)
    }

    fn seed(&self) -> Option<u64> {
        Some(Sim::seed(self))
    }

    fn background_work(&self) -> bool {
        false
    }

    fn witness_when_idle(&self) -> bool {
        self.manual()
    }

    fn defects(&self) -> Defects {
        Defects {
            witness_before_sync: self.broken().witness_before_sync,
        }
    }
}
