//! What a test sets on a sim besides its seed: faults to inject and deliberately broken
//! builds.

/// Faults to inject, counted in backend operations from the moment they are armed.
#[derive(Clone, Debug, Default)]
pub struct SimFaults {
    /// This sync (0: the next) fails with EIO; the writes it covered stay in the cache but
    /// never become durable (fsyncgate).
    pub fail_sync: Option<u64>,
    /// Writes fail with ENOSPC once this many more bytes have been written.
    pub enospc_after_bytes: Option<u64>,
    /// This write (0: the next) is reported done but never reaches the file.
    pub lose_write: Option<u64>,
    /// This write (0: the next) lands one sector after its offset.
    pub misdirect_write: Option<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct ArmedFaults {
    pub(crate) fail_sync: Option<u64>,
    pub(crate) enospc_at_bytes: Option<u64>,
    pub(crate) lose_write: Option<u64>,
    pub(crate) misdirect_write: Option<u64>,
}

/// Deliberately broken builds, to check that the simulation catches them. The first two the
/// storage plays by itself; the third it asks of the log ([`keel_wal::Defects`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Broken {
    /// Record chains run without their fdatasync and are acknowledged as if they had one.
    pub ack_before_sync: bool,
    /// A segment is installed without the directory sync after its rename.
    pub skip_rotation_dir_sync: bool,
    /// The durable witness is written as soon as nothing is in flight, claiming every record
    /// written, synced or not.
    pub witness_before_sync: bool,
}
