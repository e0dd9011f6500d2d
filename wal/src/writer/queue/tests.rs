//! Unit tests of the queue.

use super::*;
use crate::{RunId, WalEntry};

fn megabyte() -> EncodedBatch {
    let entry = WalEntry::Write {
        run_id: RunId::from_u128(1),
        txn_id: 0,
        key: Vec::new(),
        value: vec![7; 1 << 20],
    };
    EncodedBatch::encode(&[entry], 2 << 20).unwrap()
}

fn waiting(requests: &[Request]) -> Vec<bool> {
    requests
        .iter()
        .map(|r| matches!(r, Request::Append(a) if a.resolver.is_some()))
        .collect()
}

#[test]
fn async_commits_wait_for_their_write_while_the_queue_is_over_its_bound() {
    let queue = Queue::new(1, None);
    let lazy = Durability::Async {
        max_delay: Duration::from_millis(1),
    };
    for _ in 0..70 {
        drop(queue.append(megabyte(), lazy, None).1);
    }
    let mut taken = Vec::new();
    queue.take(&mut taken);
    let waiting = waiting(&taken);
    let first = waiting
        .iter()
        .position(|&w| w)
        .expect("backpressure engaged");
    let per_commit = megabyte().byte_len();
    assert_eq!(
        first,
        MAX_QUEUED_BYTES / per_commit,
        "resolved at enqueue up to the bound"
    );
    assert!(waiting[first..].iter().all(|&w| w));
    // Once the writer has taken the queue, commits resolve at enqueue again.
    drop(taken);
    drop(queue.append(megabyte(), lazy, None).1);
    let mut again = Vec::new();
    queue.take(&mut again);
    assert_eq!(self::waiting(&again), [false]);
}
