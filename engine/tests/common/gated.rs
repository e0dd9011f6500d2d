//! A backend for tests that force an interleaving with the log's writer: the std backend,
//! whose completions a [`Gate`] holds back on demand (so a chain stays in flight and the
//! writer parks in the backend), and which has a waker (called on the committing thread by
//! the next append; it can be made to panic once).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use keel::BackendChoice;
use keel_wal::Storage;
use keel_wal::backend::std_io::StdBackend;
use keel_wal::backend::{Backend, BackendKind, Chain, Completion, Waker};

/// How long a test waits for the writer to get where it must: generous (each wait returns as
/// soon as it does), so it measures no speed.
pub const WATCHDOG: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct GateState {
    /// Completions are held back while set.
    pub hold: bool,
    /// The waker was called since the last wait returned.
    pub woken: bool,
    /// The writer blocks in `wait` for a completion held back.
    pub parked: bool,
    /// Calls of the waker so far.
    pub wakes: u64,
}

#[derive(Debug, Default)]
pub struct Gate {
    pub state: Mutex<GateState>,
    pub changed: Condvar,
    /// The waker panics (once) when set.
    pub panic_in_waker: AtomicBool,
}

impl Gate {
    pub fn set_hold(&self, hold: bool) {
        self.state.lock().unwrap().hold = hold;
        self.changed.notify_all();
    }

    /// Waits (bounded by the watchdog) until `ready` holds of the gate's state.
    pub fn wait_until(&self, what: &str, ready: impl Fn(&GateState) -> bool) {
        let state = self.state.lock().unwrap();
        let (state, timeout) = self
            .changed
            .wait_timeout_while(state, WATCHDOG, |s| !ready(s))
            .unwrap();
        assert!(!timeout.timed_out() && ready(&state), "{what}: {state:?}");
    }
}

/// The std backend, whose completions `gate` can hold back, and which has a waker.
#[derive(Debug)]
pub struct GatedBackend {
    inner: StdBackend,
    ready: Vec<Completion>,
    pub gate: Arc<Gate>,
}

impl Backend for GatedBackend {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    fn depth(&self) -> usize {
        8
    }

    fn in_flight(&self) -> usize {
        self.ready.len()
    }

    fn submit(&mut self, chain: Chain) {
        self.inner.submit(chain);
        self.inner.wait(0, &mut self.ready);
    }

    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) {
        let mut state = self.gate.state.lock().unwrap();
        loop {
            if !state.hold {
                out.append(&mut self.ready);
            }
            if out.len() >= min || std::mem::take(&mut state.woken) {
                state.parked = false;
                return;
            }
            state.parked = true;
            self.gate.changed.notify_all();
            state = self.gate.changed.wait(state).unwrap();
        }
    }

    fn waker(&self) -> Option<Waker> {
        let gate = Arc::clone(&self.gate);
        Some(Arc::new(move || {
            {
                let mut state = gate.state.lock().unwrap();
                state.woken = true;
                state.wakes += 1;
            }
            gate.changed.notify_all();
            if gate.panic_in_waker.swap(false, Ordering::SeqCst) {
                panic!("the storage's backend panicked waking the writer");
            }
        }))
    }
}

#[derive(Debug)]
pub struct GatedStorage {
    pub gate: Arc<Gate>,
}

impl Storage for GatedStorage {
    fn backend(&self, _: BackendChoice, _: usize) -> keel_wal::Result<Box<dyn Backend>> {
        Ok(Box::new(GatedBackend {
            inner: StdBackend::default(),
            ready: Vec::new(),
            gate: Arc::clone(&self.gate),
        }))
    }
}

/// Releases the gate's hold when dropped, however a test ends: a failure would otherwise hang
/// in the writer's shutdown, waiting for completions held back.
pub struct Release(pub Arc<Gate>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.set_hold(false);
    }
}
