//! What a user who gets things wrong sees: each misuse of issue 20 with the error it now gives.
//! Run: `cargo run -p keel --example misuse`. Every case checks the error's variant (the
//! program fails if one changes) and prints its message.

use futures::executor::block_on;
use keel::{CloseError, Database, Error, Options};

fn main() {
    let root = tempfile::tempdir().expect("a temporary directory");
    let at = |name: &str| root.path().join(name);

    // Two transactions read n = 0 and each write n + 1.
    let db = Database::open(at("db"), Options::default()).unwrap();
    let run = block_on(db.begin_run("counters")).unwrap();
    let mut txn = db.transaction(run).unwrap();
    txn.put("n", "0").unwrap();
    block_on(txn.commit()).unwrap();
    let (mut a, mut b) = (db.transaction(run).unwrap(), db.transaction(run).unwrap());
    for txn in [&mut a, &mut b] {
        let n: u64 = String::from_utf8(txn.get("n").unwrap().unwrap().value)
            .unwrap()
            .parse()
            .unwrap();
        txn.put("n", (n + 1).to_string()).unwrap();
    }
    block_on(a.commit()).unwrap();
    let lost_update = block_on(b.commit()).unwrap_err();
    assert!(matches!(lost_update, Error::Conflict { .. }));
    show("a lost update", &lost_update);

    // A second open of a database in use.
    let locked = Database::open(at("db"), Options::default()).unwrap_err();
    assert!(matches!(locked, Error::Locked { .. }));
    show("a second open", &locked);

    // A value larger than one write may hold.
    let mut txn = db.transaction(run).unwrap();
    let too_large = txn.put("big", vec![0u8; 9 << 20]).unwrap_err();
    assert!(matches!(too_large, Error::TooLarge { .. }));
    show("a 9 MiB value", &too_large);

    // Closing while a transaction (a handle) is alive, then again once it is dropped.
    let db = match db.close() {
        Err(CloseError::InUse { db, handles }) => {
            let error: Error = CloseError::InUse { db, handles }.into();
            show("close() with a transaction open", &error);
            match error {
                Error::InUse { .. } => {}
                other => panic!("expected InUse, got {other:?}"),
            }
            Database::open(at("db2"), Options::default()).unwrap()
        }
        other => panic!("expected InUse, got {other:?}"),
    };
    drop(txn);
    db.close().unwrap();

    // A run name taken by an active run.
    let db = Database::open(at("db3"), Options::default()).unwrap();
    block_on(db.begin_run("ingest")).unwrap();
    let taken = block_on(db.begin_run("ingest")).unwrap_err();
    assert!(matches!(taken, Error::RunNameTaken { .. }));
    show("begin_run of a name in use", &taken);
    db.close().unwrap();

    // Opening what is not a database.
    let log = at("log");
    let wal = keel_recovery::open_wal(&log, keel_wal::WalOptions::default()).unwrap();
    wal.close().unwrap();
    let refused = Database::open(&log, Options::default()).unwrap_err();
    show("Database::open on a keel-wal log", &refused);
    let checkout = at("checkout");
    std::fs::create_dir_all(checkout.join(".git")).unwrap();
    std::fs::write(checkout.join("Cargo.toml"), "[package]").unwrap();
    let refused = Database::open(&checkout, Options::default()).unwrap_err();
    show("Database::open on a git checkout", &refused);
    let options = Options {
        create_if_missing: false,
        ..Options::default()
    };
    let empty = at("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let refused = Database::open(&empty, options).unwrap_err();
    assert!(
        std::fs::read_dir(&empty).unwrap().next().is_none(),
        "nothing left behind"
    );
    show("create_if_missing: false on an empty directory", &refused);
    let file = at("file");
    std::fs::write(&file, "x").unwrap();
    let refused = Database::open(&file, Options::default()).unwrap_err();
    show("Database::open on a file", &refused);

    // Options set alone.
    let options = Options {
        segment_bytes: 4 << 20,
        ..Options::default()
    };
    Database::open(at("small"), options)
        .unwrap()
        .close()
        .unwrap();
    println!("segment_bytes: 4 MiB alone: opens (the record limit follows the segment)");
    let options = Options {
        segment_bytes: 1 << 20,
        max_record_bytes: 4 << 20,
        ..Options::default()
    };
    show(
        "max_record_bytes over the segment",
        &Database::open(at("bad"), options).unwrap_err(),
    );
}

fn show(case: &str, error: &Error) {
    println!("{case}:\n    {error}");
}
