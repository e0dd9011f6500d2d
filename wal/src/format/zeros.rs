//! Finding non-zero bytes in the zero-filled parts of a segment (a preallocated tail is
//! megabytes of zeros), fast in debug builds too: blocks are compared whole with a static
//! block of zeros (slice equality on bytes is one `memcmp`, optimised or not), and only a
//! block that differs is searched, a word (8 bytes) at a time, then a byte at a time.

/// Bytes compared with zeros at once.
const BLOCK_BYTES: usize = 4096;
static ZERO_BLOCK: [u8; BLOCK_BYTES] = [0; BLOCK_BYTES];

const _: () = assert!(BLOCK_BYTES.is_multiple_of(8));

/// The index of the first non-zero byte of `bytes`, or `None` if all are zero.
pub(crate) fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    let mut start = 0;
    for block in bytes.chunks(BLOCK_BYTES) {
        if block != &ZERO_BLOCK[..block.len()] {
            let found = start + first_nonzero_in_block(block);
            debug_assert!(bytes[found] != 0 && bytes[..found].iter().all(|&b| b == 0));
            return Some(found);
        }
        start += block.len();
    }
    None
}

/// True when every byte of `bytes` is zero.
pub fn is_zero(bytes: &[u8]) -> bool {
    first_nonzero(bytes).is_none()
}

/// How many bytes of `bytes` are not zero (all-zero blocks cost one comparison).
pub fn count_nonzero(bytes: &[u8]) -> usize {
    bytes
        .chunks(BLOCK_BYTES)
        .filter(|block| *block != &ZERO_BLOCK[..block.len()])
        .map(|block| block.iter().filter(|&&b| b != 0).count())
        .sum()
}

/// The index of the first non-zero byte of a block known to hold one.
fn first_nonzero_in_block(block: &[u8]) -> usize {
    let words = block.chunks_exact(8);
    let tail_start = block.len() - words.remainder().len();
    let word_start = words
        .enumerate()
        .find(|(_, word)| u64::from_ne_bytes((*word).try_into().expect("8 bytes")) != 0)
        .map_or(tail_start, |(index, _)| index * 8);
    let within = block[word_start..]
        .iter()
        .position(|&b| b != 0)
        .expect("the block differs from zeros");
    word_start + within
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: a byte at a time.
    fn reference(bytes: &[u8]) -> Option<usize> {
        bytes.iter().position(|&b| b != 0)
    }

    #[test]
    fn all_zeros_and_empty_have_none() {
        for len in [
            0,
            1,
            7,
            8,
            9,
            BLOCK_BYTES - 1,
            BLOCK_BYTES,
            3 * BLOCK_BYTES + 5,
        ] {
            let bytes = vec![0u8; len];
            assert_eq!(first_nonzero(&bytes), None, "len {len}");
            assert!(is_zero(&bytes));
            assert_eq!(count_nonzero(&bytes), 0);
        }
    }

    #[test]
    fn one_nonzero_byte_is_found_at_start_middle_and_last_byte() {
        let lengths = [
            1,
            5,
            8,
            13,
            64,
            100,
            BLOCK_BYTES - 3,
            BLOCK_BYTES,
            BLOCK_BYTES + 1,
        ];
        let lengths = lengths
            .into_iter()
            .chain([2 * BLOCK_BYTES + 7, 3 * BLOCK_BYTES]);
        for len in lengths {
            for at in [
                0,
                len / 2,
                len.saturating_sub(9),
                len.saturating_sub(8),
                len - 1,
            ] {
                for value in [1u8, 0x80, 0xff] {
                    let mut bytes = vec![0u8; len];
                    bytes[at] = value;
                    assert_eq!(first_nonzero(&bytes), Some(at), "len {len}, at {at}");
                    assert!(!is_zero(&bytes));
                    assert_eq!(count_nonzero(&bytes), 1);
                }
            }
        }
    }

    #[test]
    fn the_first_of_several_nonzero_bytes_is_reported() {
        // Within a word, across words, across blocks, and in the bytes after the last
        // whole word; slices starting off a word boundary too.
        let cases = [
            (20, vec![3, 5]),
            (20, vec![17, 18]),
            (BLOCK_BYTES + 20, vec![4100, 9]),
        ];
        for (len, at) in cases {
            let mut bytes = vec![0u8; len];
            for &i in &at {
                bytes[i] = 0x5a;
            }
            for skip in 0..3 {
                let slice = &bytes[skip..];
                assert_eq!(
                    first_nonzero(slice),
                    reference(slice),
                    "len {len}, skip {skip}"
                );
                assert_eq!(
                    count_nonzero(slice),
                    slice.iter().filter(|&&b| b != 0).count()
                );
            }
        }
    }

    #[test]
    fn matches_a_byte_at_a_time_on_patterned_bytes() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..200 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = usize::try_from(seed % (2 * BLOCK_BYTES as u64 + 17)).expect("small");
            let mut bytes = vec![0u8; len];
            if len > 0 && round % 5 != 0 {
                let at = usize::try_from((seed >> 20) % len as u64).expect("small");
                bytes[at..].iter_mut().step_by(37).for_each(|b| *b = 1);
            }
            assert_eq!(first_nonzero(&bytes), reference(&bytes), "seed {seed:#x}");
            assert_eq!(
                count_nonzero(&bytes),
                bytes.iter().filter(|&&b| b != 0).count()
            );
        }
    }
}
