//! Keel integration suite (tests/ and benches/).
