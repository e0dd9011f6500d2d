//! The ring under injected faults (`Faults`): failures that need a kernel to fail a
//! submission, driven through a real ring.

use std::sync::Arc;

use super::{Backend, Chain, Completion, UringBackend, UringFaults};
use crate::backend::{IoFile, WriteOp};

/// A 64 KiB file to write to, and a ring on which `faults` are armed, every chain going
/// through the ring; with `direct`, records are written `O_DIRECT`. `None` where io_uring
/// cannot run.
fn ring_on(
    faults: &Arc<UringFaults>,
    direct: bool,
) -> Option<(tempfile::TempDir, Arc<IoFile>, UringBackend)> {
    faults.ring_only(true);
    let backend = match UringBackend::new(4, direct, Some(faults)) {
        Ok(backend) => backend,
        Err(why) => {
            println!("skipped: {why}");
            return None;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(64 * 1024).unwrap();
    Some((dir, Arc::new(IoFile { file, path }), backend))
}

fn ring(faults: &Arc<UringFaults>) -> Option<(tempfile::TempDir, Arc<IoFile>, UringBackend)> {
    ring_on(faults, false)
}

fn chain(id: u64, file: &Arc<IoFile>) -> Chain {
    Chain {
        id,
        file: Arc::clone(file),
        write: Some(WriteOp {
            offset: id * 4096,
            buf: vec![0xa5; 4096],
        }),
        sync: true,
        alone: false,
        witness: false,
    }
}

fn settle(backend: &mut UringBackend) -> Vec<Completion> {
    let mut out = Vec::new();
    while backend.in_flight() > 0 {
        let want = backend.in_flight();
        backend.wait(want, &mut out);
    }
    out
}

fn failed_operation(completion: &Completion) -> (&'static str, Option<i32>) {
    let error = completion.result.as_ref().expect_err("the chain fails");
    (error.operation, error.error.raw_os_error())
}

/// A hard io_uring_enter failure abandons the chains in flight while the kernel still
/// posts their completions; those late completions name freed slots and are ignored, and
/// the abandoned ring takes no further chain.
#[test]
fn late_completions_after_a_failed_enter_are_ignored() {
    let faults = Arc::new(UringFaults::default());
    faults.fail_enter_after(1);
    let Some((_dir, file, mut backend)) = ring(&faults) else {
        return;
    };
    backend.submit(chain(0, &file));
    backend.submit(chain(1, &file));
    let done = settle(&mut backend);
    assert_eq!(done.len(), 2);
    for completion in &done {
        assert_eq!(failed_operation(completion).0, "io_uring_enter");
    }
    backend.submit(chain(2, &file));
    let done = settle(&mut backend);
    assert_eq!(done.len(), 1);
    assert_eq!(failed_operation(&done[0]).0, "io_uring_enter");
}

/// A round whose write came back short and whose linked fdatasync failed (the kernel runs
/// the sync: it saw the shortened write complete) fails with the sync's error; it is not
/// retried into a later "successful" sync (fsyncgate).
#[test]
fn a_failed_sync_after_a_short_write_fails_the_chain() {
    let faults = Arc::new(UringFaults::default());
    faults.short_writes(true);
    faults.fail_sync_after(0);
    let Some((_dir, file, mut backend)) = ring(&faults) else {
        return;
    };
    backend.submit(chain(0, &file));
    let done = settle(&mut backend);
    assert_eq!(done.len(), 1);
    assert_eq!(failed_operation(&done[0]), ("fdatasync", Some(libc::EBADF)));
}

/// A ring that writes records directly (`O_DIRECT`), every chain through the ring.
fn direct_ring() -> Option<(tempfile::TempDir, Arc<IoFile>, UringBackend)> {
    ring_on(&Arc::new(UringFaults::default()), true)
}

fn record_chain(id: u64, file: &Arc<IoFile>, offset: u64, len: usize) -> Chain {
    Chain {
        id,
        file: Arc::clone(file),
        write: Some(WriteOp {
            offset,
            buf: vec![u8::try_from(id).unwrap() + 1; len],
        }),
        sync: true,
        alone: false,
        witness: false,
    }
}

/// Direct writes are widened to whole blocks; two in flight must never write one block, or
/// the older, landing last, would take the newer records back. A chain starting in the
/// block another one in flight ends in is held until that one completed, and so is every
/// later chain (in order); the file then holds every chain's bytes where the writer put
/// them, the block's earlier bytes rewritten as they were, and zeros after the last.
#[test]
fn a_direct_write_into_a_block_in_flight_waits_for_it() {
    let Some((_dir, file, mut backend)) = direct_ring() else {
        return;
    };
    backend.submit(record_chain(0, &file, 4096, 100));
    backend.submit(record_chain(1, &file, 4196, 300));
    assert_eq!(
        backend.held.len(),
        1,
        "the second write shares the first's block"
    );
    backend.submit(record_chain(2, &file, 8192, 5000));
    assert_eq!(backend.held.len(), 2, "held chains go out in order");
    let done = settle(&mut backend);
    assert_eq!(done.len(), 3);
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    assert!(backend.held.is_empty());
    // A later write in the second one's block, with nothing in flight, goes out at once.
    backend.submit(record_chain(3, &file, 4496, 8));
    assert!(backend.held.is_empty());
    assert_eq!(settle(&mut backend).len(), 1);
    let bytes = std::fs::read(&file.path).unwrap();
    assert!(bytes[4096..4196].iter().all(|&b| b == 1));
    assert!(bytes[4196..4496].iter().all(|&b| b == 2));
    assert!(bytes[4496..4504].iter().all(|&b| b == 4));
    assert!(bytes[4504..8192].iter().all(|&b| b == 0));
    assert!(bytes[8192..13192].iter().all(|&b| b == 3));
    assert!(bytes[13192..].iter().all(|&b| b == 0));
}

/// After an open, the first direct write into a partly written block reads that block's
/// earlier bytes back from the file, and rewrites them as they were.
#[test]
fn a_first_direct_write_mid_block_keeps_the_bytes_before_it() {
    let Some((_dir, file, mut backend)) = direct_ring() else {
        return;
    };
    std::os::unix::fs::FileExt::write_all_at(&file.file, &[7; 1000], 4096).unwrap();
    file.file.sync_all().unwrap();
    backend.submit(record_chain(5, &file, 5096, 50));
    let done = settle(&mut backend);
    assert!(done[0].result.is_ok(), "{done:?}");
    let bytes = std::fs::read(&file.path).unwrap();
    assert!(bytes[4096..5096].iter().all(|&b| b == 7));
    assert!(bytes[5096..5146].iter().all(|&b| b == 6));
    assert!(bytes[5146..8192].iter().all(|&b| b == 0));
}
