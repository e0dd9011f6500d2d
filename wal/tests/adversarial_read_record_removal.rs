//! `Wal::read_record` racing `Wal::remove_segments_before`: a read that opens a segment while
//! its removal is under way must neither keep the removed file open (holding its disk space,
//! or, recycled, reading a later segment's records under the old header) nor report the
//! later segment's records as damage. The removal is held at its rename (recycling) or
//! unlink (deletion) while the read runs, so the interleaving is the same on every run.

mod common;

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use keel_wal::{
    BackendChoice, Durability, EncodedBatch, Error, Lsn, RecordPosition, Storage, Wal, WalOptions,
};

/// Real file system; the first rename into a spare (or removal of a segment, with
/// `on_remove`) tells the test it started and waits for the test's go.
#[derive(Debug)]
struct HeldRemoval {
    on_remove: bool,
    gate: Mutex<Option<(SyncSender<()>, Receiver<()>)>>,
}

impl HeldRemoval {
    fn hold(&self) {
        if let Some((started, go)) = self.gate.lock().unwrap().take() {
            started.send(()).unwrap();
            go.recv().unwrap();
        }
    }
}

impl Storage for HeldRemoval {
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        if !self.on_remove && to.to_string_lossy().ends_with(".recycled") {
            self.hold();
        }
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        if self.on_remove {
            self.hold();
        }
        std::fs::remove_file(path)
    }
}

struct Setup {
    wal: Wal,
    /// Released once the removal is under way; the test then sends go.
    started: Receiver<()>,
    go: SyncSender<()>,
}

fn open(dir: &Path, on_remove: bool) -> Setup {
    let (started_tx, started) = sync_channel(1);
    let (go, go_rx) = sync_channel(1);
    let storage = HeldRemoval {
        on_remove,
        gate: Mutex::new(Some((started_tx, go_rx))),
    };
    let options = WalOptions {
        recycle_segments: usize::from(!on_remove),
        storage: Arc::new(storage),
        ..common::small_options(BackendChoice::Std)
    };
    Setup {
        wal: keel_recovery::open_wal(dir, options).unwrap(),
        started,
        go,
    }
}

/// Appends one write of `value_len` bytes; returns where it went.
fn append(wal: &Wal, value_len: usize) -> RecordPosition {
    let placed = Arc::new(Mutex::new(None));
    let sink = Arc::clone(&placed);
    let entry = common::write(1, wal.next_lsn(), "k", value_len);
    let batch = EncodedBatch::encode(&[entry], wal.max_record_bytes()).unwrap();
    wal.append_placed(batch, Durability::Strict, move |positions| {
        *sink.lock().unwrap() = Some(positions[0]);
    })
    .wait()
    .unwrap();
    placed.lock().unwrap().take().unwrap()
}

/// Fills the log into a third segment; returns the first record's position and the
/// second segment's first LSN.
fn fill(setup: &Setup, dir: &Path) -> (RecordPosition, Lsn) {
    let first = append(&setup.wal, 3000);
    while common::segment_lsns(dir).len() < 3 {
        append(&setup.wal, 3000);
    }
    (first, common::segment_lsns(dir)[1])
}

/// Removes the first segment on another thread, reading `first` while the removal is held.
fn remove_while_reading(setup: &Setup, first: RecordPosition, below: Lsn) {
    std::thread::scope(|scope| {
        let wal = &setup.wal;
        let removal = scope.spawn(move || wal.remove_segments_before(below));
        setup.started.recv().unwrap();
        // The file is still there: the read finds the record.
        let record = setup.wal.read_record(first).unwrap();
        assert_eq!(record.lsn(), first.lsn);
        setup.go.send(()).unwrap();
        assert_eq!(removal.join().unwrap().unwrap(), 1);
    });
}

fn assert_removed(read: keel_wal::Result<keel_wal::OwnedRecord>) {
    match read {
        Err(Error::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{source}");
        }
        other => panic!("a removed segment must read as NotFound, got {other:?}"),
    }
}

/// The read kept the recycled file open; the next segment, written into it, put its own
/// first record where the removed segment's was. Read again through the kept file, under
/// the removed segment's header, that record failed its checksum: `Corruption`, though
/// nothing was damaged.
#[test]
fn a_read_during_a_recycle_reports_the_segment_removed_not_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let setup = open(dir.path(), false);
    let (first, second) = fill(&setup, dir.path());
    remove_while_reading(&setup, first, second);
    // Into the recycled file (the next segment), past the removed segment's first record.
    let third = *common::segment_lsns(dir.path()).last().unwrap();
    loop {
        let last = *common::segment_lsns(dir.path()).last().unwrap();
        if last > third && setup.wal.next_lsn() > last + 2 {
            break;
        }
        append(&setup.wal, 100);
    }
    assert_eq!(setup.wal.stats().segments_recycled, 1);
    assert_removed(setup.wal.read_record(first));
    setup.wal.close().unwrap();
}

/// The read opened the segment being deleted and kept it open after the deletion: the
/// file's disk space stayed held until the log closed, and the removed records still read
/// back.
#[cfg(target_os = "linux")]
#[test]
fn a_read_during_a_deletion_keeps_no_removed_file_open() {
    let dir = tempfile::tempdir().unwrap();
    let setup = open(dir.path(), true);
    let (first, second) = fill(&setup, dir.path());
    let removed = dir.path().join(keel_wal::segment::file_name(first.segment));
    remove_while_reading(&setup, first, second);
    let held: Vec<_> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| {
            target
                .to_string_lossy()
                .starts_with(&*removed.to_string_lossy())
        })
        .collect();
    assert!(
        held.is_empty(),
        "the removed segment is still open: {held:?}"
    );
    assert_removed(setup.wal.read_record(first));
    setup.wal.close().unwrap();
}
