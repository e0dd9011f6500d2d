//! Helpers shared by the engine's integration tests (each test file uses what it needs).
#![allow(dead_code)]

pub mod blocking;
pub mod gated;
