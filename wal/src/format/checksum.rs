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
