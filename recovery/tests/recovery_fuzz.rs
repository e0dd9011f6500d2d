//! Recovery over arbitrarily damaged segment bytes (random overwrites, truncations, appended
//! garbage, swapped blocks): never a panic, under every policy; whenever a recovery succeeds,
//! every transaction it replays is one of the undamaged log's, whole (never a part of one),
//! no transaction is counted twice, and a second recovery under the same policy finds
//! nothing to repair and replays the same transactions. `KEEL_SEED` replays a run;
//! `KEEL_FUZZ_CASES` sets how many cases.

mod common;

use keel_recovery::{RecoveryPolicy, recover};
use proptest::prelude::*;

use common::Collect;

#[derive(Clone, Debug)]
enum Damage {
    Overwrite { at: usize, bytes: Vec<u8> },
    Truncate { at: usize },
    Append { bytes: Vec<u8> },
    CopyBlock { from: usize, to: usize },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(at, bytes)| Damage::Overwrite { at, bytes }),
        1 => any::<usize>().prop_map(|at| Damage::Truncate { at }),
        1 => proptest::collection::vec(any::<u8>(), 1..200).prop_map(|bytes| Damage::Append { bytes }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(from, to)| Damage::CopyBlock { from, to }),
    ]
}

fn apply(image: &mut Vec<u8>, damage: &Damage) {
    match damage {
        Damage::Overwrite { at, bytes } => {
            let at = at % image.len();
            for (i, b) in bytes.iter().enumerate() {
                if let Some(slot) = image.get_mut(at + i) {
                    *slot = *b;
                }
            }
        }
        Damage::Truncate { at } => {
            let len = image.len();
            image.truncate(at % len);
        }
        Damage::Append { bytes } => image.extend_from_slice(bytes),
        Damage::CopyBlock { from, to } => {
            let blocks = image.len() / 512;
            if blocks > 1 {
                let (from, to) = ((from % blocks) * 512, (to % blocks) * 512);
                let block = image[from..from + 512].to_vec();
                image[to..to + 512].copy_from_slice(&block);
            }
        }
    }
}

#[test]
fn recovery_never_panics_and_is_idempotent_on_damaged_bytes() {
    let seed = common::seed(0x00f0_22ed);
    let cases = std::env::var("KEEL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("log");
    common::committed_log(&original, 60, 2, 300);
    let segments = common::segments(&original);
    let images: Vec<Vec<u8>> = segments.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let identity = std::fs::read(original.join("IDENTITY")).unwrap();
    let mut whole = Collect::default();
    recover(&original, RecoveryPolicy::Absolute, &mut whole).unwrap();
    assert_eq!(whole.applied.len(), 60);
    let scratch = base.path().join("scratch");
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    });
    let strategy = (
        0..images.len(),
        proptest::collection::vec(damage(), 1..4),
        0usize..4,
    );
    runner
        .run(&strategy, |(segment, damages, policy)| {
            let policy = [
                RecoveryPolicy::TolerateTornTail,
                RecoveryPolicy::PointInTime,
                RecoveryPolicy::SkipCorrupted,
                RecoveryPolicy::Absolute,
            ][policy];
            let _ = std::fs::remove_dir_all(&scratch);
            std::fs::create_dir_all(&scratch).unwrap();
            std::fs::write(scratch.join("IDENTITY"), &identity).unwrap();
            for (i, (path, image)) in segments.iter().zip(&images).enumerate() {
                let mut image = image.clone();
                if i == segment {
                    for damage in &damages {
                        apply(&mut image, damage);
                    }
                }
                std::fs::write(scratch.join(path.file_name().unwrap()), image).unwrap();
            }
            let mut first = Collect::default();
            if let Ok(report) = recover(&scratch, policy, &mut first) {
                for applied in &first.applied {
                    prop_assert!(
                        whole.applied.contains(applied),
                        "applied txn {} as it was never committed (LSNs {:?})\n{}",
                        applied.txn,
                        applied.entries.iter().map(|e| e.0).collect::<Vec<_>>(),
                        report
                    );
                }
                let counted = report.txns_applied
                    + report.txns_aborted
                    + report.txns_incomplete
                    + report.txns_partial
                    + report.txns_covered;
                prop_assert!(counted <= 60, "a transaction counted twice\n{}", report);
                let mut second = Collect::default();
                let again = recover(&scratch, policy, &mut second)
                    .map_err(|e| TestCaseError::fail(format!("second recovery failed: {e}")))?;
                prop_assert_eq!(again.bytes_truncated, 0, "{}\n{}", report, again);
                prop_assert!(again.segments_discarded.is_empty(), "{}", again);
                prop_assert_eq!(&second.applied, &first.applied);
            }
            Ok(())
        })
        .unwrap();
}
