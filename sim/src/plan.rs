//! [`CrashPlan`]: what survives a crash, and the usual plans.

use crate::SECTOR;
use crate::crash::CrashState;
use crate::damage::Damage;
use crate::rng::SimRng;

/// What a plan does with one pending write at a power loss.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteFate {
    /// The write survives whole.
    Kept,
    /// The write is gone, as if never made.
    Lost,
    /// Per sector of the write.
    Torn(Vec<SectorFate>),
}

/// What one sector of a torn write holds after the crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectorFate {
    /// The write's bytes.
    New,
    /// The bytes the image held there before the write.
    Old,
    /// Zeros.
    Zeroed,
    /// Garbage bytes, generated from this seed and the sector's offset.
    Garbage(u8),
}

/// What survives a crash.
#[derive(Clone, Debug, Default)]
pub struct CrashPlan {
    /// A process crash: the cache survives whole, `writes` and `dir_live` are ignored.
    pub process: bool,
    /// Per pending write of [`CrashState::pending`]; missing ones are lost.
    pub writes: Vec<WriteFate>,
    /// Per directory change of [`CrashState::dir_changes`]: true keeps the live names.
    pub dir_live: Vec<bool>,
    /// Media damage applied to the surviving image, in order.
    pub damage: Vec<Damage>,
}

impl CrashPlan {
    /// A process crash.
    pub fn process() -> Self {
        CrashPlan {
            process: true,
            ..CrashPlan::default()
        }
    }

    /// A power loss keeping the pending writes `keep` chooses (by index), and directory
    /// changes as `live`.
    pub fn keeping(state: &CrashState, live: bool, keep: impl Fn(usize) -> bool) -> Self {
        CrashPlan {
            writes: (0..state.pending.len())
                .map(|i| {
                    if keep(i) {
                        WriteFate::Kept
                    } else {
                        WriteFate::Lost
                    }
                })
                .collect(),
            dir_live: vec![live; state.dir_changes.len()],
            ..CrashPlan::default()
        }
    }

    /// A power loss keeping the first `keep` pending writes, and directory changes as `live`.
    pub fn prefix(state: &CrashState, keep: usize, live: bool) -> Self {
        Self::keeping(state, live, |i| i < keep)
    }

    /// A power loss keeping the pending writes whose bit is set in `mask`.
    pub fn subset(state: &CrashState, mask: u64, live: bool) -> Self {
        Self::keeping(state, live, |i| i < 64 && mask & (1 << i) != 0)
    }

    /// A random crash: a process crash, a kept prefix, a random subset, or one torn write.
    pub fn random(state: &CrashState, rng: &mut SimRng) -> Self {
        let dir_live = Self::random_dirs(state, rng);
        match rng.below(4) {
            0 => CrashPlan::process(),
            kind => Self::random_loss(state, rng, dir_live, kind == 1),
        }
    }

    /// A random power loss: a kept prefix (one in three) or a random subset, and maybe one
    /// torn write.
    pub fn random_power_loss(state: &CrashState, rng: &mut SimRng) -> Self {
        let dir_live = Self::random_dirs(state, rng);
        let prefix = rng.chance(1, 3);
        Self::random_loss(state, rng, dir_live, prefix)
    }

    /// Per directory change, live or durable names at random.
    fn random_dirs(state: &CrashState, rng: &mut SimRng) -> Vec<bool> {
        (0..state.dir_changes.len())
            .map(|_| rng.chance(1, 2))
            .collect()
    }

    fn random_loss(
        state: &CrashState,
        rng: &mut SimRng,
        dir_live: Vec<bool>,
        prefix: bool,
    ) -> Self {
        let n = state.pending.len();
        let mut plan = if prefix {
            CrashPlan {
                writes: {
                    let keep = rng.index(n + 1);
                    (0..n)
                        .map(|i| {
                            if i < keep {
                                WriteFate::Kept
                            } else {
                                WriteFate::Lost
                            }
                        })
                        .collect()
                },
                ..CrashPlan::default()
            }
        } else {
            CrashPlan {
                writes: (0..n)
                    .map(|_| {
                        if rng.chance(1, 2) {
                            WriteFate::Kept
                        } else {
                            WriteFate::Lost
                        }
                    })
                    .collect(),
                ..CrashPlan::default()
            }
        };
        plan.dir_live = dir_live;
        if n > 0 && rng.chance(1, 2) {
            let which = rng.index(n);
            let sectors = state.pending[which].data.len().div_ceil(SECTOR);
            let fates = (0..sectors)
                .map(|_| match rng.below(4) {
                    0 => SectorFate::New,
                    1 => SectorFate::Old,
                    2 => SectorFate::Zeroed,
                    _ => SectorFate::Garbage(u8::try_from(rng.below(256)).expect("below 256")),
                })
                .collect();
            plan.writes[which] = WriteFate::Torn(fates);
        }
        plan
    }
}
