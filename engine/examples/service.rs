//! An async service on a multi-threaded tokio runtime: many tasks commit concurrently and
//! await their commits; the group commit turns them into few fdatasyncs.
//!
//! `cargo run --release -p keel --example service [dir]` (default: a temporary directory).

use std::time::Instant;

use keel::{Database, Options};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| temp.path().to_path_buf(), Into::into);
    let db = Database::open(&dir, Options::default())?;
    println!("opened {}: {}", dir.display(), db.recovery_report());
    let run = db.begin_run("orders").await?;

    const TASKS: u64 = 64;
    const PER_TASK: u64 = 200;
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let mut txn = db.transaction(run)?;
                    txn.put(
                        format!("order/{task:03}/{i:05}").as_bytes(),
                        format!("{{\"task\":{task},\"seq\":{i}}}").as_bytes(),
                    )?;
                    txn.put(format!("last/{task:03}").as_bytes(), i.to_le_bytes())?;
                    txn.commit().await?;
                }
                Ok::<_, keel::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let stats = db.stats();
    println!(
        "{} durable commits from {TASKS} tasks in {elapsed:.2?}: {:.0} commits/s, {} fdatasyncs \
         ({:.3} per commit), commit latency p50 {:.0} µs / p99 {:.0} µs, backend {}",
        TASKS * PER_TASK,
        (TASKS * PER_TASK) as f64 / elapsed.as_secs_f64(),
        stats.wal.fsyncs,
        stats.wal.fsyncs as f64 / (TASKS * PER_TASK) as f64,
        stats.commit_p50_us,
        stats.commit_p99_us,
        stats.wal.backend.name()
    );
    let orders = db.scan(run, b"order/007/")?;
    println!(
        "task 7 wrote {} orders; the last: {:?}",
        orders.len(),
        orders
            .last()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
    );
    db.end_run(run).await?;
    db.close()?;
    Ok(())
}
