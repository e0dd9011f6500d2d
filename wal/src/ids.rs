//! Identifiers shared by every layer: log sequence numbers, runs, transactions, databases.

use std::fmt;

/// A log sequence number: dense, strictly increasing, never reused. The first record of a new
/// log has LSN 1; LSN 0 means "nothing".
pub type Lsn = u64;

/// One execution of an agent or job: 128 bits, stored as two little-endian `u64` halves so the
/// archived form needs no more than 8-byte alignment.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub struct RunId {
    high: u64,
    low: u64,
}

impl RunId {
    /// The run that owns database-wide entries such as `Checkpoint`.
    pub const SYSTEM: RunId = RunId { high: 0, low: 0 };

    /// Builds a run id from its 128-bit value.
    pub const fn from_u128(value: u128) -> Self {
        #[expect(clippy::cast_possible_truncation, reason = "splitting into halves")]
        RunId {
            high: (value >> 64) as u64,
            low: value as u64,
        }
    }

    /// The 128-bit value of this run id.
    pub const fn as_u128(self) -> u128 {
        ((self.high as u128) << 64) | self.low as u128
    }
}

impl ArchivedRunId {
    /// The 128-bit value of this archived run id.
    pub fn as_u128(&self) -> u128 {
        ((self.high.to_native() as u128) << 64) | self.low.to_native() as u128
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunId({:032x})", self.as_u128())
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.as_u128())
    }
}

/// A transaction, unique within its database (not only within its run).
pub type TxnId = u64;

/// The identity of one database: every segment header carries it, so a segment copied in from
/// another database is refused.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DatabaseId(pub [u8; 16]);

impl DatabaseId {
    /// A fresh random id from the operating system's generator.
    pub fn random() -> std::io::Result<Self> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
        Ok(DatabaseId(bytes))
    }
}

impl fmt::Debug for DatabaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseId({self})")
    }
}

impl fmt::Display for DatabaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_round_trips_through_its_halves() {
        for value in [
            0u128,
            1,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            assert_eq!(RunId::from_u128(value).as_u128(), value);
        }
    }
}
