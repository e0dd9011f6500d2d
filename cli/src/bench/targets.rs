//! What `keel bench` measures, one run each: Keel's log, the engine on it (`--engine`), and
//! the raw `pwrite + fdatasync` baseline (`keel_bench::RawLog`, the one `benches/peers/` runs
//! too).

use std::path::Path;
use std::sync::Arc;

use keel_bench::RawLog;
use keel_wal::{RunId, WalEntry};

use super::Cell;
use super::args::{BenchArgs, Committers};
use super::drive::{self, Measured};
use super::report::Outcome;

/// The target name of the raw baseline's rows.
pub(super) const RAW: &str = "raw pwrite+fdatasync";
/// The target name of Keel's rows.
pub(super) const KEEL: &str = "keel";
/// The target name of the engine's rows.
pub(super) const DB: &str = "keel-db";

fn entry(writer: u32, sequence: u64, value: &[u8]) -> WalEntry {
    WalEntry::Write {
        run_id: RunId::from_u128(u128::from(writer) + 1),
        txn_id: sequence,
        key: format!("w{writer}-{sequence:012}").into_bytes(),
        value: value.to_vec(),
    }
}

/// `cell.writers` committers, each appending one `Write` entry of `cell.value_size` bytes and
/// waiting for it (as `--mode` and `--committers` say), on a log opened in `dir`.
pub(super) fn keel(args: &BenchArgs, cell: Cell, dir: &Path) -> Result<Outcome, String> {
    let wal = Arc::new(
        keel_recovery::open_wal(dir, args.wal_options(cell.backend)).map_err(|e| e.to_string())?,
    );
    let backend = wal.backend().name();
    let value = vec![0x6b; cell.value_size];
    let record_bytes = keel_wal::EncodedBatch::encode(&[entry(0, 0, &value)], u32::MAX >> 6)
        .map_err(|e| e.to_string())?
        .byte_len();
    let committer = Arc::clone(&wal);
    let label = format!(
        "keel {backend} {:?} w{} {}B",
        args.mode, cell.writers, cell.value_size
    )
    .to_lowercase();
    let run = match args.committers {
        Committers::Threads => {
            drive::threads(args, cell.writers, &label, move |writer, sequence| {
                committer
                    .append(&[entry(writer, sequence, &value)])
                    .wait()
                    .map(drop)
                    .map_err(|e| e.to_string())
            })?
        }
        Committers::Tasks => drive::tasks(args, cell.writers, &label, move |writer, sequence| {
            committer.append(&[entry(writer, sequence, &value)])
        })?,
    };
    let stats = wal.stats();
    Arc::into_inner(wal)
        .ok_or("the log is still shared")?
        .close()
        .map_err(|e| e.to_string())?;
    let mut result = Outcome::new(args, cell, KEEL, backend, run, stats.fsyncs, record_bytes);
    result.rotations = Some((stats.rotations, stats.rotation_waits));
    Ok(result)
}

/// `cell.writers` committer threads, each committing transactions of one put of
/// `cell.value_size` bytes through a `Database` in `dir` (automatic checkpoints at their
/// default) and waiting for each, as `--mode` says.
pub(super) fn db(args: &BenchArgs, cell: Cell, dir: &Path) -> Result<Outcome, String> {
    let wal = args.wal_options(cell.backend);
    let defaults = keel::Options::default();
    let options = keel::Options {
        durability: wal.durability,
        backend: wal.backend,
        segment_bytes: wal.segment_bytes,
        max_record_bytes: wal.max_record_bytes,
        checkpoint_log_bytes: args
            .checkpoint_log_mib
            .map_or(defaults.checkpoint_log_bytes, |mib| mib << 20),
        ..defaults
    };
    let db = Arc::new(keel::Database::open(dir, options).map_err(|e| e.to_string())?);
    let run = futures::executor::block_on(db.begin_run("bench")).map_err(|e| e.to_string())?;
    let backend = db.stats().wal.backend.name();
    let value = vec![0x64; cell.value_size];
    let record_bytes = keel_wal::EncodedBatch::encode(&[entry(0, 0, &value)], u32::MAX >> 6)
        .map_err(|e| e.to_string())?
        .byte_len();
    let label = format!(
        "keel-db {backend} {:?} w{} {}B",
        args.mode, cell.writers, cell.value_size
    )
    .to_lowercase();
    let committer = Arc::clone(&db);
    let measured = drive::threads(args, cell.writers, &label, move |writer, sequence| {
        let mut txn = committer.transaction(run).map_err(|e| e.to_string())?;
        txn.put(format!("w{writer}-{sequence:012}").as_bytes(), &value)
            .map_err(|e| e.to_string())?;
        futures::executor::block_on(txn.commit())
            .map(drop)
            .map_err(|e| e.to_string())
    })?;
    let fsyncs = db.stats().wal.fsyncs;
    Arc::into_inner(db)
        .ok_or("the database is still shared")?
        .close()
        .map_err(|e| e.to_string())?;
    Ok(Outcome::new(
        args,
        cell,
        DB,
        backend,
        measured,
        fsyncs,
        record_bytes,
    ))
}

/// The bytes of a Keel record holding one value of `value_size` bytes, about: what the raw
/// baseline writes per commit.
fn raw_record_bytes(value_size: usize) -> usize {
    (value_size + 64).div_ceil(8) * 8
}

/// `cell.writers` threads committing one record's worth of bytes each through [`RawLog`]:
/// one at a time, each with its `fdatasync`, into a preallocated file in `dir` with room for
/// 4096 records (at least 1 MiB) before it wraps.
pub(super) fn raw(args: &BenchArgs, cell: Cell, dir: &Path) -> Result<Outcome, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let record_bytes = raw_record_bytes(cell.value_size);
    let size = (record_bytes as u64 * 4096).max(1 << 20);
    let log =
        RawLog::open(dir, size).map_err(|e| format!("preallocating {}: {e}", dir.display()))?;
    let log = Arc::new(log);
    let committer = Arc::clone(&log);
    let record = vec![0x72u8; record_bytes];
    let label = format!("raw w{} {}B", cell.writers, cell.value_size);
    let run: Measured = drive::threads(args, cell.writers, &label, move |_, _| {
        committer.commit(&record).map_err(|e| e.to_string())
    })?;
    Ok(Outcome::new(
        args,
        cell,
        RAW,
        "std",
        run,
        log.syncs(),
        record_bytes,
    ))
}
