//! `sqlite` (feature `peer-sqlite`, bundled SQLite): WAL mode, `synchronous=FULL` (or
//! `NORMAL` for `sqlite-normal`), one insert per transaction, one connection per committer.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::harness::Peer;

pub struct Sqlite {
    path: PathBuf,
    synchronous: &'static str,
    connections: Vec<Mutex<Option<rusqlite::Connection>>>,
}

impl Sqlite {
    pub fn open(dir: &Path, committers: usize, synchronous: &'static str) -> io::Result<Sqlite> {
        let path = dir.join("peer.sqlite");
        let sqlite = Sqlite {
            path,
            synchronous,
            connections: (0..committers).map(|_| Mutex::new(None)).collect(),
        };
        let conn = sqlite.connect().map_err(io::Error::other)?;
        conn.execute_batch("CREATE TABLE IF NOT EXISTS log (seq INTEGER, v BLOB)")
            .map_err(io::Error::other)?;
        Ok(sqlite)
    }

    fn connect(&self) -> rusqlite::Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open(&self.path)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        assert_eq!(mode.to_lowercase(), "wal");
        conn.execute_batch(&format!("PRAGMA synchronous={}", self.synchronous))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        Ok(conn)
    }
}

/// Reopens (recovers) the database and counts its rows.
pub fn reopen(dir: &Path) -> io::Result<u64> {
    let conn = rusqlite::Connection::open(dir.join("peer.sqlite")).map_err(io::Error::other)?;
    let n: i64 = conn
        .query_row("SELECT count(*) FROM log", [], |row| row.get(0))
        .map_err(io::Error::other)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

impl Peer for Sqlite {
    fn commit(&self, thread: usize, seq: u64, payload: &[u8]) -> io::Result<()> {
        let mut slot = self.connections[thread]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(self.connect().map_err(io::Error::other)?);
        }
        let conn = slot.as_ref().expect("connected");
        conn.prepare_cached("INSERT INTO log (seq, v) VALUES (?1, ?2)")
            .and_then(|mut insert| insert.execute(rusqlite::params![seq as i64, payload]))
            .map(drop)
            .map_err(io::Error::other)
    }
}
