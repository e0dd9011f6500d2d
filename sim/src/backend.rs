//! [`SimBackend`], the IO backend of a log under a [`Sim`]: its chains go into the model
//! and complete when the model says.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use keel_wal::backend::{Backend, BackendKind, Chain, ChainError, Completion};

use crate::sim::Sim;
use crate::state::SimChain;

/// The IO backend of a log under a [`Sim`].
#[derive(Debug)]
pub struct SimBackend {
    sim: Arc<Sim>,
    depth: usize,
    in_flight: usize,
}

impl SimBackend {
    pub(crate) fn new(sim: Arc<Sim>, depth: usize) -> Self {
        SimBackend {
            sim,
            depth,
            in_flight: 0,
        }
    }
}

impl Backend for SimBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Other("sim")
    }

    fn depth(&self) -> usize {
        self.depth
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn submit(&mut self, mut chain: Chain) {
        self.in_flight += 1;
        let mut state = self.sim.lock();
        if state.broken.ack_before_sync && !chain.witness {
            chain.sync = false;
        }
        let path = chain.file.path.clone();
        if let Err(error) = state.event(&path, "submit") {
            state.ready.push(Completion {
                id: chain.id,
                result: Err(ChainError {
                    operation: "write",
                    error: io::Error::other(error.to_string()),
                }),
                buf: chain.write.map(|w| w.buf),
            });
            return;
        }
        let ino = match chain.file.file.metadata() {
            Ok(metadata) => metadata.ino(),
            Err(error) => {
                state.ready.push(Completion {
                    id: chain.id,
                    result: Err(ChainError {
                        operation: "write",
                        error,
                    }),
                    buf: chain.write.map(|w| w.buf),
                });
                return;
            }
        };
        let write_due = chain.write.is_some().then(|| state.clock + state.latency());
        let (sync_covers, sync_due) = if chain.sync && chain.write.is_none() {
            (Some(state.seq), Some(state.clock + state.latency()))
        } else {
            (None, None)
        };
        let line = format!(
            "submit chain {} {} write {:?} sync {}",
            chain.id,
            state.rel(&path),
            chain.write.as_ref().map(|w| (w.offset, w.buf.len())),
            chain.sync
        );
        state.note(line);
        state.in_flight.push(SimChain {
            id: chain.id,
            ino,
            file: chain.file,
            write: chain.write,
            write_due,
            sync: chain.sync,
            sync_covers,
            sync_due,
        });
    }

    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) {
        let sim = Arc::clone(&self.sim);
        let mut state = sim.lock();
        loop {
            let before = out.len();
            out.append(&mut state.ready);
            self.in_flight -= out.len() - before;
            if out.len() >= min || self.in_flight == 0 {
                break;
            }
            if state.manual && !state.crashed {
                state.writer_blocked = true;
                sim.changed.notify_all();
                state = sim.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                state.writer_blocked = false;
            } else if !state.advance_one() {
                break;
            }
        }
    }
}
