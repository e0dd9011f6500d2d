//! Adversarial: a removal whose recycling fails after the segment was renamed to a spare
//! (`WalOptions::recycle_segments`, now the default).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use keel_wal::{BackendChoice, Lsn, Storage, Wal, WalOptions};

/// The real file system, except that the directory sync following a rename to a recycled
/// spare fails, `failures` times.
#[derive(Debug, Default)]
struct FailingRecycleSync {
    failures: AtomicU32,
    /// A rename to a recycled spare is waiting for its directory sync.
    renamed: AtomicU32,
}

impl Storage for FailingRecycleSync {
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)?;
        if to.to_string_lossy().ends_with(".recycled") {
            self.renamed.store(1, SeqCst);
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        if self.renamed.swap(0, SeqCst) == 1
            && self
                .failures
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(std::io::Error::other("injected directory sync failure"));
        }
        std::fs::File::open(dir)?.sync_all()
    }
}

fn spares(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("spare-"))
        .collect();
    names.sort();
    names
}

fn append(wal: &Wal) -> Lsn {
    let i = wal.next_lsn();
    wal.append(&[common::write(1, i, "k", 600)]).wait().unwrap()
}

/// A removal renames a freed segment to `spare-<n>.recycled`, then syncs the directory, and
/// only then keeps the spare. When that sync fails, the removal fails (as a deletion's failed
/// sync does), but the renamed file was neither kept nor deleted: no later rotation takes it,
/// no later removal deletes it, and only the next open finds it. A deletion frees the space
/// whatever its sync does; here every failed removal left a whole segment on disk for as long
/// as the log stays open (three failures: three segments, beyond the spares the log keeps).
#[test]
fn a_recycling_whose_directory_sync_fails_leaves_no_segment_behind() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FailingRecycleSync::default());
    let options = WalOptions {
        storage: Arc::clone(&storage) as Arc<dyn Storage>,
        ..common::small_options(BackendChoice::Std)
    };
    let keep = options.recycle_segments;
    assert!(keep > 0, "recycling is the default");
    let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
    while common::segment_lsns(dir.path()).len() < 8 {
        append(&wal);
    }
    let failures = 3;
    storage.failures.store(failures, SeqCst);
    for attempt in 0..failures {
        let below = common::segment_lsns(dir.path())[1];
        let removed = wal.remove_segments_before(below);
        assert!(removed.is_err(), "attempt {attempt}: {removed:?}");
    }
    // The log goes on: later removals succeed, and rotations take the spares kept.
    for _ in 0..6 {
        while common::segment_lsns(dir.path()).len() < 2 * keep {
            append(&wal);
        }
        let live = common::segment_lsns(dir.path());
        wal.remove_segments_before(live[live.len() - 1]).unwrap();
    }
    let found = spares(dir.path());
    // At most the recycled spares kept and the one zero-filled spare.
    assert!(
        found.len() <= keep + 1,
        "{} spare files with {keep} recycled ones kept: {found:?}",
        found.len()
    );
    wal.close().unwrap();
}
