//! The ring under injected faults (`Faults`): failures that need a kernel to fail a
//! submission, driven through a real ring.

use std::sync::Arc;

use super::{Backend, Chain, Completion, UringBackend, UringFaults};
use crate::backend::{IoFile, WriteOp};

/// A file to write to, and a ring on which `faults` are armed, every chain going through
/// the ring. `None` where io_uring cannot run.
fn ring(faults: &Arc<UringFaults>) -> Option<(tempfile::TempDir, Arc<IoFile>, UringBackend)> {
    faults.ring_only(true);
    let backend = match UringBackend::new(4, Some(faults)) {
        Ok(backend) => backend,
        Err(why) => {
            println!("skipped: {why}");
            return None;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    let file = std::fs::File::create(&path).unwrap();
    Some((dir, Arc::new(IoFile { file, path }), backend))
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
