//! Model checks of the group-commit hand-off (`RUSTFLAGS="--cfg loom" cargo test -p keel-wal
//! --lib loom`): under every interleaving of committers and the writer, no wake-up is lost
//! (the writer never sleeps on queued work), every commit reaches the writer exactly once
//! with its own dense LSN, and a close wakes an idle writer.

use super::*;
use crate::format::entry::WalEntry;
use crate::ids::RunId;

fn one_entry() -> EncodedBatch {
    let run_id = RunId::from_u128(1);
    EncodedBatch::encode(&[WalEntry::CommitTxn { run_id, txn_id: 1 }], 1 << 20).unwrap()
}

#[test]
fn loom_every_commit_reaches_the_writer_once_and_resolves_once() {
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, None));
        let committers: Vec<_> = (0..2)
            .map(|_| {
                let queue = Arc::clone(&queue);
                loom::thread::spawn(move || {
                    queue
                        .append(one_entry(), Durability::Strict, None)
                        .1
                        .wait()
                        .unwrap()
                })
            })
            .collect();
        // The writer: blocks while idle, takes what is queued, resolves it.
        let mut seen = Vec::new();
        let mut taken = Vec::new();
        while seen.len() < 2 {
            if let Taken::Idle(limit) = queue.take_unless_idle(&mut taken, Some(None)) {
                queue.wait_idle(limit);
                continue;
            }
            for request in taken.drain(..) {
                let Request::Append(append) = request else {
                    panic!("only appends were queued")
                };
                seen.push(append.first_lsn);
                append
                    .resolver
                    .expect("a Strict commit waits")
                    .resolve(Ok(append.first_lsn));
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, [1, 2], "LSNs are dense and each commit is taken once");
        let mut lsns: Vec<Lsn> = committers.into_iter().map(|c| c.join().unwrap()).collect();
        lsns.sort_unstable();
        assert_eq!(lsns, [1, 2]);
    });
}

/// The writer thread of [`loom_a_drive_strands_no_commit`], with a stand-in for the
/// writer's state behind the baton: the commits "in flight" (taken, resolved by the next
/// turn). As the real writer, it lets go of the baton only with nothing in flight.
fn baton_writer(queue: &Queue, baton: &loom::sync::Mutex<Vec<Resolver>>) {
    let mut taken = Vec::new();
    loop {
        let mut in_flight = baton.lock().unwrap();
        for resolver in in_flight.drain(..) {
            resolver.resolve(Ok(0));
        }
        match queue.take_unless_idle(&mut taken, Some(None)) {
            Taken::Idle(limit) => {
                drop(in_flight);
                queue.wait_idle(limit);
            }
            Taken::Work { closing } => {
                if closing && taken.is_empty() {
                    return;
                }
                in_flight.extend(taken.drain(..).filter_map(|request| match request {
                    Request::Append(append) => append.resolver,
                    Request::Sync { resolver, .. } => Some(resolver),
                }));
            }
        }
    }
}

/// Leader/follower (`baton.rs`): a committer that found the writer idle drives it,
/// resolving only its own commit and leaving what it took of others' in flight; another
/// committer appends twice in turn, first as usual (an append that may carry callbacks:
/// only the writer takes it), then as a committer that found the baton taken (its drive
/// dropped: a driver may write it). Under every interleaving (of up to 4
/// preemptions) every commit resolves (the writer never sleeps on work a drive left it,
/// `recheck` included), the driver takes no append but waited ones, and the writer
/// stops at close.
#[test]
fn loom_a_drive_strands_no_commit() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(4);
    model.check(|| {
        let queue = Arc::new(Queue::new(1, None));
        let baton = Arc::new(loom::sync::Mutex::new(Vec::<Resolver>::new()));
        let writer = {
            let (queue, baton) = (Arc::clone(&queue), Arc::clone(&baton));
            loom::thread::spawn(move || baton_writer(&queue, &baton))
        };
        let driver = {
            let (queue, baton) = (Arc::clone(&queue), Arc::clone(&baton));
            loom::thread::spawn(move || {
                let (lsns, future, wake) = queue.append_closed_deferring(
                    one_entry(),
                    Durability::Strict,
                    None,
                    |_, _| Ok(()),
                    true,
                );
                let own = *lsns.expect("queued").start();
                if let Some(drive) = wake.expect("queued").drive.take()
                    && let Ok(mut in_flight) = baton.try_lock()
                {
                    let mut taken = Vec::new();
                    queue.take_driven(&mut taken);
                    for request in taken {
                        let Request::Append(append) = request else {
                            panic!("only appends were queued")
                        };
                        assert!(append.waited, "a driver takes only waited appends");
                        let resolver = append.resolver.expect("a Strict commit waits");
                        if append.first_lsn == own {
                            resolver.resolve(Ok(own));
                        } else {
                            in_flight.push(resolver);
                        }
                    }
                    let left = !in_flight.is_empty();
                    drop(in_flight);
                    drive.end(left, None);
                }
                future.wait().unwrap();
            })
        };
        // The waited append may land while the writer is between its take and its
        // wait, and the driver take it: only the drive's end can tell the writer.
        queue
            .append(one_entry(), Durability::Strict, None)
            .1
            .wait()
            .unwrap();
        let (_, waited, lost) = queue.append_closed_deferring(
            one_entry(),
            Durability::Strict,
            None,
            |_, _| Ok(()),
            true,
        );
        drop(lost);
        waited.wait().unwrap();
        driver.join().unwrap();
        queue.close();
        writer.join().unwrap();
    });
}

#[test]
fn loom_close_wakes_an_idle_writer() {
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, None));
        let closer = {
            let queue = Arc::clone(&queue);
            loom::thread::spawn(move || queue.close())
        };
        let mut taken = Vec::new();
        loop {
            match queue.take_unless_idle(&mut taken, Some(None)) {
                Taken::Idle(limit) => queue.wait_idle(limit),
                Taken::Work { closing: true } => break,
                Taken::Work { closing: false } => {}
            }
        }
        assert!(taken.is_empty());
        closer.join().unwrap();
    });
}
