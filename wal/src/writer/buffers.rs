//! Encode buffers handed back by the writer for the next appends.
//!
//! An append's records are framed into a buffer on the caller's thread and freed on the writer
//! thread once copied into the batch. With glibc's allocator a buffer freed by another thread
//! goes back to its arena under that arena's lock, which the caller's next allocation takes
//! too: at an `Async` producer's rate the two threads met on that lock on most appends
//! (measured with `perf`: a quarter of the samples were its futex waits and wakes). The
//! writer gives the buffers back here instead, once per turn, and [`crate::Wal::encode`]
//! frames into one: no allocation or free per append once the pool is warm.
//!
//! Bounded: a buffer larger than [`MAX_POOLED_BUFFER`] is freed, and the pool keeps at most
//! [`MAX_POOLED_BYTES`] of capacity.

use crate::writer::sync::{Mutex, lock};

/// The largest buffer kept for reuse; larger ones (big values) are freed as before.
pub(crate) const MAX_POOLED_BUFFER: usize = 64 << 10;
/// The capacity the pool keeps at most, over all its buffers.
pub(crate) const MAX_POOLED_BYTES: usize = 4 << 20;

#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    state: Mutex<Pooled>,
}

#[derive(Debug, Default)]
struct Pooled {
    buffers: Vec<Vec<u8>>,
    /// The capacity of `buffers`.
    bytes: usize,
}

impl BufferPool {
    /// An empty buffer, with the capacity of one handed back when there is one.
    pub(crate) fn take(&self) -> Vec<u8> {
        let mut pooled = lock(&self.state);
        match pooled.buffers.pop() {
            Some(buffer) => {
                pooled.bytes -= buffer.capacity();
                buffer
            }
            None => Vec::new(),
        }
    }

    /// Keeps what fits of `returned` (emptied here) for [`BufferPool::take`]; the rest is freed,
    /// after the lock is released.
    pub(crate) fn give_back(&self, returned: &mut Vec<Vec<u8>>) {
        if returned.is_empty() {
            return;
        }
        let mut pooled = lock(&self.state);
        let mut kept = 0;
        for buffer in returned.iter_mut() {
            let capacity = buffer.capacity();
            if capacity == 0
                || capacity > MAX_POOLED_BUFFER
                || pooled.bytes + capacity > MAX_POOLED_BYTES
            {
                continue;
            }
            let mut buffer = std::mem::take(buffer);
            buffer.clear();
            pooled.bytes += capacity;
            pooled.buffers.push(buffer);
            kept += 1;
        }
        drop(pooled);
        tracing::trace!(
            kept,
            freed = returned.len() - kept,
            "encode buffers handed back"
        );
        returned.clear();
    }

    /// The capacity pooled (tests).
    #[cfg(test)]
    fn pooled_bytes(&self) -> usize {
        lock(&self.state).bytes
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_with_their_capacity() {
        let pool = BufferPool::default();
        assert_eq!(pool.take().capacity(), 0);
        let mut buffer = Vec::with_capacity(1000);
        buffer.extend_from_slice(b"old record");
        pool.give_back(&mut vec![buffer]);
        assert_eq!(pool.pooled_bytes(), 1000);
        let again = pool.take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), 1000);
        assert_eq!(pool.pooled_bytes(), 0);
    }

    #[test]
    fn the_pool_stays_bounded() {
        let pool = BufferPool::default();
        // Too large to keep, and empty ones (nothing to reuse).
        let mut returned = vec![Vec::with_capacity(MAX_POOLED_BUFFER + 1), Vec::new()];
        pool.give_back(&mut returned);
        assert!(returned.is_empty());
        assert_eq!(pool.pooled_bytes(), 0);
        // Past the total, buffers are freed.
        let count = MAX_POOLED_BYTES / MAX_POOLED_BUFFER + 10;
        let mut returned: Vec<Vec<u8>> = (0..count)
            .map(|_| Vec::with_capacity(MAX_POOLED_BUFFER))
            .collect();
        pool.give_back(&mut returned);
        assert!(pool.pooled_bytes() <= MAX_POOLED_BYTES);
        assert!(pool.pooled_bytes() >= MAX_POOLED_BYTES - MAX_POOLED_BUFFER);
    }
}
