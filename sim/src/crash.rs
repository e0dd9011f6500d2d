//! [`CrashState`]: the model captured at a crash, and the images a plan keeps of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use crate::SECTOR;
use crate::damage::apply_damage;
use crate::plan::{CrashPlan, SectorFate, WriteFate};
use crate::rng::SimRng;
use crate::state::{Node, PendingWrite, State};
use crate::tree::{
    apply, capture_tree, collect_files, differences, overlay, retry_vanished, write_tree,
};

/// An inode whose names changed since its directory was last synced.
#[derive(Clone, Debug)]
pub struct DirChange {
    /// The inode whose names changed.
    pub ino: u64,
    /// (directory inode, name) pairs durable now.
    durable: Vec<(u64, String, Node)>,
    /// (directory inode, name) pairs in the live listing.
    live: Vec<(u64, String, Node)>,
}

/// The model captured at a crash.
#[derive(Clone, Debug)]
pub struct CrashState {
    pub(crate) root_ino: u64,
    pub(crate) durable_dirs: HashMap<u64, BTreeMap<String, Node>>,
    pub(crate) live_dirs: HashMap<u64, BTreeMap<String, Node>>,
    pub(crate) durable: HashMap<u64, Vec<u8>>,
    pub(crate) cache: HashMap<u64, Vec<u8>>,
    /// Every write a power loss may keep or lose, in completion order.
    pub pending: Vec<PendingWrite>,
    /// Every directory change a power loss may keep or lose.
    pub dir_changes: Vec<DirChange>,
}

impl CrashState {
    pub(crate) fn capture(state: &mut State) -> CrashState {
        let root = state.root.clone();
        let mut live_dirs = HashMap::new();
        let mut cache = HashMap::new();
        let root_ino = retry_vanished(|| {
            live_dirs.clear();
            cache.clear();
            capture_tree(&root, &mut live_dirs, &mut cache)
        })
        .unwrap_or(0);
        let mut pending: Vec<PendingWrite> = Vec::new();
        let mut durable = HashMap::new();
        let mut inos: BTreeSet<u64> = cache.keys().copied().collect();
        inos.extend(state.files.keys().copied());
        for ino in inos {
            let model = state.files.get(&ino).cloned().unwrap_or_default();
            let mut expected = model.durable.clone();
            for write in &model.pending {
                apply(&mut expected, write.offset, &write.data);
                pending.push(write.clone());
            }
            if let Some(real) = cache.get(&ino) {
                let mut real = real.clone();
                for &(offset, len) in &model.dropped {
                    overlay(&mut real, &expected, offset, len);
                }
                for (offset, data) in differences(&expected, &real) {
                    pending.push(PendingWrite {
                        seq: u64::MAX,
                        ino,
                        offset,
                        data,
                        untracked: true,
                    });
                }
            }
            durable.insert(ino, model.durable);
        }
        pending.sort_by_key(|p| (p.seq, p.ino, p.offset));
        let dir_changes = dir_changes(&state.dirs, &live_dirs);
        CrashState {
            root_ino,
            durable_dirs: state.dirs.clone(),
            live_dirs,
            durable,
            cache,
            pending,
            dir_changes,
        }
    }

    /// Writes the image `plan` keeps into `target` (created, must be empty).
    pub fn materialize(&self, plan: &CrashPlan, target: &Path) -> io::Result<()> {
        std::fs::create_dir_all(target)?;
        let (dirs, contents) = if plan.process {
            (self.live_dirs.clone(), self.cache.clone())
        } else {
            (self.power_loss_dirs(plan), self.power_loss_contents(plan))
        };
        write_tree(self.root_ino, target, &dirs, &contents)?;
        for damage in &plan.damage {
            apply_damage(target, damage)?;
        }
        Ok(())
    }

    fn power_loss_dirs(&self, plan: &CrashPlan) -> HashMap<u64, BTreeMap<String, Node>> {
        let mut dirs = self.durable_dirs.clone();
        for (change, live) in self.dir_changes.iter().zip(&plan.dir_live) {
            if !live {
                continue;
            }
            for (dir, name, _) in &change.durable {
                dirs.entry(*dir).or_default().remove(name);
            }
            for (dir, name, node) in &change.live {
                dirs.entry(*dir).or_default().insert(name.clone(), *node);
            }
        }
        // A name both listings hold names a file throughout: a rename over it replaces the
        // file atomically, so it names the old file or the new one, never none (the old
        // file's unlink kept without the new file's link would drop it).
        for (ino, durable) in &self.durable_dirs {
            let (Some(live), Some(dir)) = (self.live_dirs.get(ino), dirs.get_mut(ino)) else {
                continue;
            };
            for (name, node) in durable {
                if live.contains_key(name) && !dir.contains_key(name) {
                    dir.insert(name.clone(), *node);
                }
            }
        }
        dirs
    }

    fn power_loss_contents(&self, plan: &CrashPlan) -> HashMap<u64, Vec<u8>> {
        let mut contents = self.durable.clone();
        for (i, write) in self.pending.iter().enumerate() {
            let image = contents.entry(write.ino).or_default();
            match plan.writes.get(i).unwrap_or(&WriteFate::Lost) {
                WriteFate::Lost => {}
                WriteFate::Kept => apply(image, write.offset, &write.data),
                WriteFate::Torn(fates) => {
                    for (s, fate) in fates.iter().enumerate() {
                        let from = s * SECTOR;
                        if from >= write.data.len() {
                            break;
                        }
                        let to = (from + SECTOR).min(write.data.len());
                        let offset = write.offset + from as u64;
                        match fate {
                            SectorFate::Old => {}
                            SectorFate::New => apply(image, offset, &write.data[from..to]),
                            SectorFate::Zeroed => apply(image, offset, &vec![0; to - from]),
                            SectorFate::Garbage(seed) => {
                                let mut rng = SimRng::new(u64::from(*seed) ^ offset);
                                let bytes: Vec<u8> = (from..to)
                                    .map(|_| rng.next_u64().to_le_bytes()[0])
                                    .collect();
                                apply(image, offset, &bytes);
                            }
                        }
                    }
                }
            }
        }
        contents
    }

    /// Paths (relative to the root) of the files the image of a process crash holds, with
    /// their lengths: for choosing where to put damage.
    pub fn files(&self) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        collect_files(
            self.root_ino,
            Path::new(""),
            &self.live_dirs,
            &self.cache,
            &mut out,
        );
        out
    }
}

fn dir_changes(
    durable: &HashMap<u64, BTreeMap<String, Node>>,
    live: &HashMap<u64, BTreeMap<String, Node>>,
) -> Vec<DirChange> {
    let mut by_ino: BTreeMap<u64, DirChange> = BTreeMap::new();
    let mut names = |dirs: &HashMap<u64, BTreeMap<String, Node>>, is_live: bool| {
        for (&dir, entries) in dirs {
            for (name, &node) in entries {
                let change = by_ino.entry(node.ino).or_insert_with(|| DirChange {
                    ino: node.ino,
                    durable: Vec::new(),
                    live: Vec::new(),
                });
                let list = if is_live {
                    &mut change.live
                } else {
                    &mut change.durable
                };
                list.push((dir, name.clone(), node));
            }
        }
    };
    names(durable, false);
    names(live, true);
    by_ino
        .into_values()
        .filter_map(|mut change| {
            change.durable.sort();
            change.live.sort();
            (change.durable != change.live).then_some(change)
        })
        .collect()
}
