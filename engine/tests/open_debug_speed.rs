//! How long a reopen of an empty database takes (default options: the segment is
//! preallocated, so recovery reads its whole zero tail). Ignored: it prints a figure rather
//! than asserting one. Run it in a debug build, where a byte-at-a-time zero scan of each
//! 64 MiB segment costs seconds:
//! `cargo test -p keel --test open_debug_speed -- --ignored --nocapture`.

use std::time::Instant;

use keel::{Database, Options};

#[test]
#[ignore = "prints a timing; run by hand"]
fn reopening_an_empty_database_is_fast() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    Database::open(&path, Options::default())
        .unwrap()
        .close()
        .unwrap();
    for round in 0..3 {
        let started = Instant::now();
        let database = Database::open(&path, Options::default()).unwrap();
        let opened = started.elapsed();
        database.close().unwrap();
        println!("reopen {round}: {:.3} s", opened.as_secs_f64());
    }
}
