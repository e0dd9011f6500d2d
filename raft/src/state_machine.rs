//! [`KeelStateMachine`]: openraft's state machine on a keel [`Database`].
//!
//! The replicated state is a key-value map in one run of the database (named [`SM_RUN`]):
//! application keys under `d/`, and the applied log id and membership under `m/`. Each
//! `apply` call is one transaction, durable (the database is `Strict`) before it returns, so
//! the state machine is persistent and the applied marks always match the data.
//!
//! Snapshots are the database's own: building one is a checkpoint ([`Database::checkpoint`])
//! whose snapshot file is the snapshot's data; installing one hands those bytes to
//! [`Database::install_snapshot`], which replaces the state durably. The snapshot's metadata
//! is read back from the image's `m/` keys, so it always describes the data it travels with;
//! its id (last log id and 64 random bits) is written into the state just before the
//! checkpoint, so no two images share one.
//!
//! [`KeelStateMachine::applied_index`] publishes the last durably applied index, for the log
//! store's purge guard ([`crate::KeelLogStore::with_purge_guard`]).

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use keel::{Database, RunId, SnapshotImage};
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use tokio::sync::{Mutex, watch};

use crate::{KvRequest, KvResponse, TypeConfig};

/// The run that holds the replicated state.
pub const SM_RUN: &str = "raft-state-machine";
const KEY_APPLIED: &[u8] = b"m/applied";
const KEY_MEMBERSHIP: &[u8] = b"m/membership";
/// The id of the snapshot this state is the image of, written just before the checkpoint.
const KEY_SNAPSHOT_ID: &[u8] = b"m/snapshot-id";
const DATA_PREFIX: &[u8] = b"d/";

type NodeId = u64;
type Membership = StoredMembership<NodeId, openraft::BasicNode>;
type Error = StorageError<NodeId>;

fn sm_error(verb: ErrorVerb, error: impl std::error::Error + 'static) -> Error {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&error)).into()
}

fn snapshot_error(verb: ErrorVerb, error: impl std::error::Error + 'static) -> Error {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::new(&error)).into()
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

fn data_key(key: &str) -> Vec<u8> {
    [DATA_PREFIX, key.as_bytes()].concat()
}

/// The database and the run the state lives in; the lock orders applies, snapshots and
/// installs.
#[derive(Debug)]
struct Store {
    db: Database,
    run: RunId,
}

impl Store {
    fn marks(&self) -> Result<(Option<LogId<NodeId>>, Membership), Error> {
        let read = |key| -> Result<Option<Vec<u8>>, Error> {
            Ok(self
                .db
                .get(self.run, key)
                .map_err(|e| sm_error(ErrorVerb::Read, e))?
                .map(|v| v.value))
        };
        decode_marks(read(KEY_APPLIED)?, read(KEY_MEMBERSHIP)?)
            .map_err(|e| sm_error(ErrorVerb::Read, e))
    }
}

fn decode_marks(
    applied: Option<Vec<u8>>,
    membership: Option<Vec<u8>>,
) -> Result<(Option<LogId<NodeId>>, Membership), std::io::Error> {
    let applied = match applied {
        Some(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("applied mark: {e}")))?
        }
        None => None,
    };
    let membership = match membership {
        Some(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("membership: {e}")))?
        }
        None => Membership::default(),
    };
    Ok((applied, membership))
}

/// The metadata of a snapshot image, from its `m/` keys.
fn image_meta(
    image: &SnapshotImage,
) -> Result<SnapshotMeta<NodeId, openraft::BasicNode>, std::io::Error> {
    let run = image
        .find_run(SM_RUN)
        .ok_or_else(|| invalid(format!("the snapshot has no run {SM_RUN:?}")))?;
    let value = |key| image.get(run, key).map(|v| v.value);
    let (last_log_id, last_membership) = decode_marks(value(KEY_APPLIED), value(KEY_MEMBERSHIP))?;
    let snapshot_id = value(KEY_SNAPSHOT_ID)
        .map(|id| String::from_utf8_lossy(&id).into_owned())
        .ok_or_else(|| invalid("the snapshot image carries no snapshot id".into()))?;
    Ok(SnapshotMeta {
        snapshot_id,
        last_log_id,
        last_membership,
    })
}

/// A new snapshot's id: its last log id and 64 random bits. openraft resumes a chunked
/// transfer by id, so two images with different bytes (each checkpoint's are) never share
/// one.
fn new_snapshot_id(last: &Option<LogId<NodeId>>) -> Result<String, Error> {
    let random = keel_wal::DatabaseId::random().map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
    let random = u64::from_le_bytes(random.0[..8].try_into().expect("8 bytes"));
    Ok(match last {
        Some(id) => format!(
            "{}-{}-{}-{random:016x}",
            id.leader_id.term, id.leader_id.node_id, id.index
        ),
        None => format!("empty-{random:016x}"),
    })
}

async fn find_or_begin_run(db: &Database) -> Result<RunId, keel::Error> {
    match db.list_runs().into_iter().rev().find(|r| r.name == SM_RUN) {
        Some(run) => Ok(run.id),
        None => db.begin_run(SM_RUN).await,
    }
}

/// openraft's state machine on a keel database.
#[derive(Debug, Clone)]
pub struct KeelStateMachine {
    store: Arc<Mutex<Store>>,
    /// The index of the last entry applied durably (an install counts).
    applied: Arc<watch::Sender<Option<u64>>>,
}

/// The index of the last entry a [`KeelStateMachine`] applied durably, as it moves: give it to
/// [`crate::KeelLogStore::with_purge_guard`].
#[derive(Clone, Debug)]
pub struct AppliedIndex(pub(crate) watch::Receiver<Option<u64>>);

impl AppliedIndex {
    /// The index now.
    pub fn current(&self) -> Option<u64> {
        *self.0.borrow()
    }
}

impl KeelStateMachine {
    /// Opens (or creates) the database in `dir` (recovering it) and its state run.
    ///
    /// Two options are set here, whatever `options` says: commits are `Strict` (an applied
    /// entry is durable before `apply` returns, so the applied mark never runs ahead of the
    /// data), and the database checkpoints only when openraft builds a snapshot
    /// (`checkpoint_log_bytes = 0`), so that every snapshot file is one openraft knows by id.
    /// Do not checkpoint the database yourself.
    pub async fn open(dir: impl AsRef<Path>, options: keel::Options) -> Result<Self, Error> {
        let options = keel::Options {
            durability: keel::Durability::Strict,
            checkpoint_log_bytes: 0,
            ..options
        };
        let db = Database::open(dir, options).map_err(|e| sm_error(ErrorVerb::Read, e))?;
        let run = find_or_begin_run(&db)
            .await
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        let store = Store { db, run };
        let (applied, _) = store.marks()?;
        let (applied, _) = watch::channel(applied.map(|id| id.index));
        Ok(KeelStateMachine {
            store: Arc::new(Mutex::new(store)),
            applied: Arc::new(applied),
        })
    }

    /// The index of the last entry applied durably, for the log store's purge guard.
    pub fn applied_index(&self) -> AppliedIndex {
        AppliedIndex(self.applied.subscribe())
    }

    /// The replicated key-value pairs, in key order.
    pub async fn data(&self) -> Result<Vec<(String, String)>, Error> {
        let store = self.store.lock().await;
        let pairs = store
            .db
            .scan(store.run, DATA_PREFIX)
            .map_err(|e| sm_error(ErrorVerb::Read, e))?;
        Ok(pairs
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k[DATA_PREFIX.len()..]).into_owned(),
                    String::from_utf8_lossy(&v.value).into_owned(),
                )
            })
            .collect())
    }

    /// One key's value.
    pub async fn get(&self, key: &str) -> Result<Option<String>, Error> {
        let store = self.store.lock().await;
        let found = store
            .db
            .get(store.run, data_key(key))
            .map_err(|e| sm_error(ErrorVerb::Read, e))?;
        Ok(found.map(|v| String::from_utf8_lossy(&v.value).into_owned()))
    }

    /// The database underneath.
    pub async fn database(&self) -> Database {
        self.store.lock().await.db.clone()
    }
}

/// Builds snapshots from checkpoints of the database.
#[derive(Debug)]
pub struct KeelSnapshotBuilder {
    store: Arc<Mutex<Store>>,
}

impl RaftSnapshotBuilder<TypeConfig> for KeelSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, Error> {
        let store = self.store.lock().await;
        // The image carries its own id, so that it reads back with the same one.
        let (applied, _) = store.marks()?;
        let id = new_snapshot_id(&applied)?;
        let mut txn = store
            .db
            .transaction(store.run)
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        txn.put(KEY_SNAPSHOT_ID, id.as_bytes())
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        txn.commit()
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        let lsn = store
            .db
            .checkpoint()
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        let bytes = store
            .db
            .read_snapshot(lsn)
            .map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        let image =
            SnapshotImage::decode(&bytes).map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        let meta = image_meta(&image).map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        tracing::info!(lsn, snapshot_id = %meta.snapshot_id, bytes = bytes.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for KeelStateMachine {
    type SnapshotBuilder = KeelSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), Error> {
        self.store.lock().await.marks()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<KvResponse>, Error>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let store = self.store.lock().await;
        let mut txn = store
            .db
            .transaction(store.run)
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        let mut replies = Vec::new();
        let mut last = None;
        for entry in entries {
            let reply = match &entry.payload {
                EntryPayload::Blank => KvResponse { value: None },
                EntryPayload::Normal(KvRequest::Set { key, value }) => {
                    txn.put(data_key(key), value.as_bytes())
                        .map_err(|e| sm_error(ErrorVerb::Write, e))?;
                    KvResponse {
                        value: Some(value.clone()),
                    }
                }
                EntryPayload::Normal(KvRequest::Delete { key }) => {
                    txn.delete(data_key(key))
                        .map_err(|e| sm_error(ErrorVerb::Write, e))?;
                    KvResponse { value: None }
                }
                EntryPayload::Membership(membership) => {
                    let stored = Membership::new(Some(entry.log_id), membership.clone());
                    let bytes = serde_json::to_vec(&stored).expect("membership serializes");
                    txn.put(KEY_MEMBERSHIP, &bytes)
                        .map_err(|e| sm_error(ErrorVerb::Write, e))?;
                    KvResponse { value: None }
                }
            };
            replies.push(reply);
            last = Some(entry.log_id);
        }
        let Some(last) = last else {
            return Ok(replies);
        };
        let applied = serde_json::to_vec(&Some(last)).expect("a log id serializes");
        txn.put(KEY_APPLIED, &applied)
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        txn.commit()
            .await
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        self.applied.send_replace(Some(last.index));
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        KeelSnapshotBuilder {
            store: Arc::clone(&self.store),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, Error> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), Error> {
        let bytes = snapshot.into_inner();
        let image =
            SnapshotImage::decode(&bytes).map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        let found = image_meta(&image).map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        if found.last_log_id != meta.last_log_id {
            let message = format!(
                "the snapshot's data is at {:?}, its metadata says {:?}",
                found.last_log_id, meta.last_log_id
            );
            return Err(snapshot_error(ErrorVerb::Read, invalid(message)));
        }
        let mut store = self.store.lock().await;
        let lsn = store
            .db
            .install_snapshot(&bytes)
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        store.run = find_or_begin_run(&store.db)
            .await
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        self.applied
            .send_replace(meta.last_log_id.as_ref().map(|id| id.index));
        tracing::info!(lsn, snapshot_id = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, Error> {
        let store = self.store.lock().await;
        let Some((_, bytes)) = store
            .db
            .newest_snapshot()
            .map_err(|e| snapshot_error(ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        let image =
            SnapshotImage::decode(&bytes).map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        let known = image
            .find_run(SM_RUN)
            .is_some_and(|run| image.get(run, KEY_SNAPSHOT_ID).is_some());
        if !known {
            // Not a snapshot openraft built or installed (one taken by hand, say).
            return Ok(None);
        }
        let meta = image_meta(&image).map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        if meta.last_log_id.is_none() {
            return Ok(None);
        }
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
