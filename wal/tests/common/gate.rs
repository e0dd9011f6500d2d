//! A gate that stops one named thread at a chosen point until the test opens it: the point
//! (a test `Storage` or backend) calls [`Gate::pass`].

use std::path::Path;
use std::sync::{Condvar, Mutex};

use super::LIMIT;

#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// The thread the gate stops next, once, and the suffix of the path it stops at (any
    /// path, or a point without one, when `None`).
    armed_for: Option<(String, Option<&'static str>)>,
    parked: bool,
    open: bool,
}

impl Gate {
    /// Stops `thread` at its next `pass` (at a path ending with `suffix`, when given).
    pub fn arm(&self, thread: &str, suffix: Option<&'static str>) {
        *self.state.lock().unwrap() = GateState {
            armed_for: Some((thread.to_owned(), suffix)),
            ..GateState::default()
        };
    }

    /// Called at the point: stops the armed thread there until the gate opens.
    pub fn pass(&self, at: Option<&Path>) {
        let mut state = self.state.lock().unwrap();
        let matches = state.armed_for.as_ref().is_some_and(|(thread, suffix)| {
            std::thread::current().name() == Some(thread.as_str())
                && suffix.is_none_or(|suffix| {
                    at.is_some_and(|at| at.to_string_lossy().ends_with(suffix))
                })
        });
        if !matches {
            return;
        }
        state.armed_for = None;
        state.parked = true;
        self.changed.notify_all();
        while !state.open {
            state = self.changed.wait(state).unwrap();
        }
    }

    /// Waits until the armed thread is stopped; fails the test after [`LIMIT`].
    pub fn wait_parked(&self) {
        let state = self.state.lock().unwrap();
        let (_state, timeout) = self
            .changed
            .wait_timeout_while(state, LIMIT, |s| !s.parked)
            .unwrap();
        assert!(!timeout.timed_out(), "the gate never stopped its thread");
    }

    pub fn open(&self) {
        self.state.lock().unwrap().open = true;
        self.changed.notify_all();
    }
}
