//! Reads users expect: range and prefix iterators, forward and reverse, with bounds, over an
//! immutable view (a `Database::snapshot`, or a transaction's view with its own writes over
//! it); keys and values as anything `AsRef<[u8]>`; `Transaction::get` on `&self`. Checked
//! against a `BTreeMap` model over seeded random ranges and interleaved ends.

use std::collections::BTreeMap;
use std::ops::Bound;

use futures::executor::block_on;
use keel::{Database, Options, RunId, Versioned};
use keel_sim::SimRng;

fn options() -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        checkpoint_log_bytes: 0,
        spill_txn_bytes: 2048,
        ..Options::default()
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("k{i:03}").into_bytes()
}

fn values(items: impl Iterator<Item = (Vec<u8>, Versioned)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    items.map(|(k, v)| (k, v.value)).collect()
}

fn bound(rng: &mut SimRng) -> Bound<Vec<u8>> {
    match rng.below(3) {
        0 => Bound::Unbounded,
        1 => Bound::Included(key(rng.below(60))),
        _ => Bound::Excluded(key(rng.below(60))),
    }
}

fn in_range(range: &(Bound<Vec<u8>>, Bound<Vec<u8>>), k: &[u8]) -> bool {
    let above = match &range.0 {
        Bound::Included(s) => k >= s.as_slice(),
        Bound::Excluded(s) => k > s.as_slice(),
        Bound::Unbounded => true,
    };
    let below = match &range.1 {
        Bound::Included(e) => k <= e.as_slice(),
        Bound::Excluded(e) => k < e.as_slice(),
        Bound::Unbounded => true,
    };
    above && below
}

/// Takes from `iter` from both ends as `rng` picks, and puts the items back in key order.
fn both_ends(
    mut iter: impl DoubleEndedIterator<Item = (Vec<u8>, Versioned)>,
    rng: &mut SimRng,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (mut front, mut back) = (Vec::new(), Vec::new());
    loop {
        let item = if rng.chance(1, 2) {
            iter.next().map(|i| (true, i))
        } else {
            iter.next_back().map(|i| (false, i))
        };
        match item {
            Some((true, (k, v))) => front.push((k, v.value)),
            Some((false, (k, v))) => back.push((k, v.value)),
            None => break,
        }
    }
    assert!(iter.next().is_none() && iter.next_back().is_none(), "fused");
    back.reverse();
    front.extend(back);
    front
}

#[test]
fn iterators_match_a_model_from_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let other = block_on(db.begin_run("other")).unwrap();
    let mut committed: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut rng = SimRng::new(7);
    for round in 0..40u64 {
        // Commit some changes (and some to another run, which must never show).
        let mut txn = db.transaction(run).unwrap();
        for _ in 0..5 {
            let k = key(rng.below(60));
            if rng.chance(1, 4) {
                txn.delete(&k).unwrap();
                committed.remove(&k);
            } else {
                let v = format!("v{round}").into_bytes();
                txn.put(&k, &v).unwrap();
                committed.insert(k, v);
            }
        }
        block_on(txn.commit()).unwrap();
        let mut noise = db.transaction(other).unwrap();
        noise.put(key(rng.below(60)), "noise").unwrap();
        block_on(noise.commit()).unwrap();

        // A snapshot, then more commits it must not show.
        let snapshot = db.snapshot();
        let at_snapshot = committed.clone();
        let mut later = db.transaction(run).unwrap();
        let (written, deleted) = (key(rng.below(60)), key(rng.below(60)));
        later.put(&written, "later").unwrap();
        later.delete(&deleted).unwrap();
        committed.insert(written, b"later".to_vec());
        committed.remove(&deleted);

        // A transaction with its own writes (some spilled) over its view.
        let mut txn = db.transaction(run).unwrap();
        let mut own = at_snapshot.clone();
        for _ in 0..rng.below(30) {
            let k = key(rng.below(60));
            if rng.chance(1, 3) {
                txn.delete(&k).unwrap();
                own.remove(&k);
            } else {
                let v = vec![b'o'; 1 + rng.index(300)];
                txn.put(&k, &v).unwrap();
                own.insert(k, v);
            }
        }
        // Its view is taken by its first range read (a first point read of a serializable
        // transaction takes none), before `later` commits.
        assert_eq!(txn.prefix("zzz").unwrap().next(), None);
        block_on(later.commit()).unwrap();

        for _ in 0..10 {
            let range = (bound(&mut rng), bound(&mut rng));
            let model = |map: &BTreeMap<Vec<u8>, Vec<u8>>| -> Vec<(Vec<u8>, Vec<u8>)> {
                let items = map.iter().filter(|(k, _)| in_range(&range, k));
                items.map(|(k, v)| (k.clone(), v.clone())).collect()
            };
            let seen = both_ends(snapshot.range(run, range.clone()).unwrap(), &mut rng);
            assert_eq!(
                seen,
                model(&at_snapshot),
                "round {round}, snapshot, {range:?}"
            );
            let reversed: Vec<_> = values(snapshot.range(run, range.clone()).unwrap().rev());
            let mut expected = model(&at_snapshot);
            expected.reverse();
            assert_eq!(reversed, expected, "round {round}, reversed, {range:?}");
            let seen = both_ends(txn.range(range.clone()).unwrap(), &mut rng);
            assert_eq!(seen, model(&own), "round {round}, transaction, {range:?}");
        }
        let prefix = format!("k0{}", rng.below(6));
        let expected: Vec<_> = own
            .iter()
            .filter(|(k, _)| k.starts_with(prefix.as_bytes()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(values(txn.prefix(&prefix).unwrap()), expected);
        drop(txn);
        // Committed reads through the database: as of the call (`later` included).
        let scanned: BTreeMap<Vec<u8>, Vec<u8>> = values(db.scan(run, "").unwrap().into_iter())
            .into_iter()
            .collect();
        assert_eq!(scanned, committed, "round {round}: the database's scan");
        assert_eq!(
            values(db.iter(run).unwrap()),
            values(db.prefix(run, b"").unwrap())
        );
    }
    db.close().unwrap();
}

#[test]
fn keys_and_values_as_anything_bytes_and_reads_on_a_shared_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let mut txn = db.transaction(run).unwrap();
    txn.put("string key", String::from("string value")).unwrap();
    txn.put(vec![1u8, 2], [3u8, 4]).unwrap();
    txn.put(b"bytes", bytes_of("static")).unwrap();
    block_on(txn.commit()).unwrap();

    let txn = db.transaction(run).unwrap();
    // `get` on `&self`, from several threads at once (a transaction is `Sync`).
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                assert_eq!(
                    txn.get("string key").unwrap().unwrap().value,
                    b"string value"
                );
                assert_eq!(txn.get([1u8, 2]).unwrap().unwrap().value, [3, 4]);
            });
        }
    });
    assert_eq!(db.get(run, "bytes").unwrap().unwrap().value, b"static");
    let snapshot = db.snapshot();
    assert_eq!(
        snapshot
            .get(run, String::from("string key"))
            .unwrap()
            .unwrap()
            .value,
        b"string value"
    );
    assert!(snapshot.lsn() > 0);
    assert!(matches!(
        snapshot.get(RunId::from_u128(12345), "x"),
        Err(keel::Error::UnknownRun(_))
    ));
    drop(txn);
    db.close().unwrap();
}

fn bytes_of(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}
