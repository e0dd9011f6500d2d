//! CRC32 (IEEE, via crc32fast) seeded with a per-segment salt.
//!
//! Seeding with the salt means an all-zero region, a record left by an earlier use of the file,
//! or a segment copied from another database does not verify, even though its own checksum was
//! once correct.

/// A checksum as stored on disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Crc(pub u32);

/// A checksum that did not match.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChecksumMismatch {
    /// The checksum stored on disk.
    pub expected: u32,
    /// The checksum computed over the bytes as read.
    pub actual: u32,
}

impl Crc {
    /// The salted checksum of `bytes`.
    pub fn salted(salt: u32, bytes: &[u8]) -> Crc {
        let mut hasher = crc32fast::Hasher::new_with_initial(salt);
        hasher.update(bytes);
        Crc(hasher.finalize())
    }

    /// Re-seeds an unsalted checksum of `len` bytes with `salt`, in O(log len) and without the
    /// bytes: callers checksum their payloads on their own threads before the writer knows which
    /// segment (and so which salt) the record lands in.
    pub fn salt_unsalted(salt: u32, unsalted: u32, len: u64) -> Crc {
        let mut hasher = crc32fast::Hasher::new_with_initial(salt);
        hasher.combine(&crc32fast::Hasher::new_with_initial_len(unsalted, len));
        Crc(hasher.finalize())
    }

    /// Checks this stored checksum against the one computed from the bytes.
    pub fn check(self, actual: Crc) -> Result<(), ChecksumMismatch> {
        if self == actual {
            Ok(())
        } else {
            Err(ChecksumMismatch {
                expected: self.0,
                actual: actual.0,
            })
        }
    }
}

/// Salts unsalted checksums ([`Crc::salt_unsalted`]) with the cost paid once per length.
///
/// Salting is linear: combining adds the salt, shifted over `len` bytes, to the unsalted value,
/// so `salted = unsalted ^ delta(salt, len)` where `delta` does not depend on the bytes. The
/// writer salts every record it seals, and records of one length recur (a service's commits
/// are alike): each delta is computed once (the O(log len) combine, a few percent of an
/// `Async` append's cost when done per record) and kept in a small table indexed by length.
#[derive(Debug, Clone)]
pub(crate) struct Salter {
    salt: u32,
    /// `(len, delta)` per slot, `len` of `u64::MAX` when empty.
    slots: [(u64, u32); SALTER_SLOTS],
}

/// Lengths a [`Salter`] remembers at once (direct-mapped by length in 8-byte steps).
const SALTER_SLOTS: usize = 64;

impl Salter {
    /// A salter for `salt`, remembering nothing yet.
    pub(crate) fn new(salt: u32) -> Salter {
        Salter {
            salt,
            slots: [(u64::MAX, 0); SALTER_SLOTS],
        }
    }

    /// What [`Crc::salt_unsalted`] returns for `salt`, `unsalted` and `len`. Another salt
    /// than the last one (a new segment) forgets the deltas of the old one.
    pub(crate) fn salt(&mut self, salt: u32, unsalted: u32, len: u64) -> Crc {
        if salt != self.salt {
            *self = Salter::new(salt);
        }
        let slot = &mut self.slots[(len / 8) as usize % SALTER_SLOTS];
        if slot.0 != len {
            *slot = (len, Crc::salt_unsalted(salt, 0, len).0);
        }
        Crc(unsalted ^ slot.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salting_an_unsalted_checksum_equals_checksumming_with_the_salt() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        for salt in [0, 1, 0xdead_beef, u32::MAX] {
            for len in [0, 1, 7, 8, 999, 1000] {
                let unsalted = crc32fast::hash(&data[..len]);
                let salted = Crc::salt_unsalted(salt, unsalted, len as u64);
                assert_eq!(
                    salted,
                    Crc::salted(salt, &data[..len]),
                    "salt {salt} len {len}"
                );
            }
        }
    }

    #[test]
    fn the_salter_gives_what_salting_each_checksum_gives() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 13 % 251) as u8).collect();
        let mut salter = Salter::new(7);
        // Lengths that share slots (0 and 512 bytes apart by 64 slots of 8), repeated, and
        // salts that change between calls: every answer is the one computed from scratch.
        for round in 0..3 {
            for salt in [7, 0, 0xdead_beef, u32::MAX] {
                for len in [0, 1, 8, 200, 512, 520, 1000, 4096, 4608, 5000] {
                    let bytes = &data[round..round + len.min(data.len() - round)];
                    let unsalted = crc32fast::hash(bytes);
                    let len = bytes.len() as u64;
                    assert_eq!(
                        salter.salt(salt, unsalted, len),
                        Crc::salted(salt, bytes),
                        "salt {salt} len {len} round {round}"
                    );
                }
            }
        }
    }

    #[test]
    fn check_reports_both_values() {
        let err = Crc(1).check(Crc(2)).unwrap_err();
        assert_eq!(
            err,
            ChecksumMismatch {
                expected: 1,
                actual: 2
            }
        );
    }
}
