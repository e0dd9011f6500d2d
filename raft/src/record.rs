//! The log store's records: `Payload` entries of keel-wal, told apart by their tag.
//!
//! | tag | record      | payload (JSON unless noted)                                         |
//! |----:|-------------|----------------------------------------------------------------------|
//! | 1   | `Entry`     | u32 LE length `n`, `n` bytes of the entry's `LogId`, then the entry  |
//! | 2   | `Vote`      | the vote                                                             |
//! | 3   | `Committed` | `Option<LogId>`                                                      |
//! | 4   | `Truncate`  | `u64`: entries at this index and above, appended earlier, are void   |
//! | 5   | `Purge`     | `LogId`: entries at its index and below are gone                     |
//! | 6   | `State`     | `{vote, committed, purged}`: written before segments are deleted     |
//!
//! The entry's log id is framed apart so that opening reads only the ids, not the entries.
//! Every record carries [`RAFT_RUN`]. The layout is in `docs/FORMAT.md`.

use keel_wal::{ArchivedWalEntry, RunId, WalEntry};
use openraft::{LogId, RaftTypeConfig, Vote};
use serde::{Deserialize, Serialize};

/// The run every record of a Raft log carries.
pub const RAFT_RUN: RunId = RunId::from_u128(u128::from_be_bytes(*b"keel-raft-log\0\0\x01"));

pub const TAG_ENTRY: u32 = 1;
pub const TAG_VOTE: u32 = 2;
pub const TAG_COMMITTED: u32 = 3;
pub const TAG_TRUNCATE: u32 = 4;
pub const TAG_PURGE: u32 = 5;
pub const TAG_STATE: u32 = 6;

/// The durable marks, written whole before segments holding older ones are deleted.
#[derive(Serialize, Deserialize, Debug)]
#[serde(bound = "")]
pub struct Marks<C: RaftTypeConfig> {
    pub vote: Option<Vote<C::NodeId>>,
    pub committed: Option<LogId<C::NodeId>>,
    pub purged: Option<LogId<C::NodeId>>,
}

/// A record read back.
#[derive(Debug)]
pub enum Decoded<C: RaftTypeConfig> {
    Entry(LogId<C::NodeId>),
    Vote(Vote<C::NodeId>),
    Committed(Option<LogId<C::NodeId>>),
    Truncate(u64),
    Purge(LogId<C::NodeId>),
    State(Marks<C>),
}

/// What can be wrong with a record's payload.
pub type DecodeError = String;

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("openraft's types serialize to JSON")
}

fn payload(tag: u32, payload: Vec<u8>) -> WalEntry {
    WalEntry::Payload {
        run_id: RAFT_RUN,
        tag,
        payload,
    }
}

/// An `Entry` record.
pub fn entry<C: RaftTypeConfig>(log_id: &LogId<C::NodeId>, entry: &C::Entry) -> WalEntry {
    let id = json(log_id);
    let mut bytes = Vec::with_capacity(4 + id.len() + 64);
    bytes.extend_from_slice(
        &u32::try_from(id.len())
            .expect("a log id is small")
            .to_le_bytes(),
    );
    bytes.extend_from_slice(&id);
    serde_json::to_writer(&mut bytes, entry).expect("openraft's entries serialize to JSON");
    payload(TAG_ENTRY, bytes)
}

pub fn vote<C: RaftTypeConfig>(vote: &Vote<C::NodeId>) -> WalEntry {
    payload(TAG_VOTE, json(vote))
}

pub fn committed<C: RaftTypeConfig>(committed: &Option<LogId<C::NodeId>>) -> WalEntry {
    payload(TAG_COMMITTED, json(committed))
}

pub fn truncate(since: u64) -> WalEntry {
    payload(TAG_TRUNCATE, json(&since))
}

pub fn purge<C: RaftTypeConfig>(upto: &LogId<C::NodeId>) -> WalEntry {
    payload(TAG_PURGE, json(upto))
}

pub fn state<C: RaftTypeConfig>(marks: &Marks<C>) -> WalEntry {
    payload(TAG_STATE, json(marks))
}

/// The tag and payload of a Raft record; anything else is not part of a Raft log.
fn parts(entry: &ArchivedWalEntry) -> Result<(u32, &[u8]), DecodeError> {
    match entry {
        ArchivedWalEntry::Payload {
            run_id,
            tag,
            payload,
        } if run_id.as_u128() == RAFT_RUN.as_u128() => Ok((tag.to_native(), payload.as_slice())),
        other => Err(format!(
            "a {} entry of run {:#x} is not a Raft log record",
            other.kind().name(),
            other.run_id()
        )),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| format!("undecodable {what} record: {e}"))
}

/// Splits an `Entry` payload into its log id bytes and entry bytes.
fn split_entry(bytes: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    let short = || "an entry record shorter than its framing".to_string();
    let len = bytes.get(..4).ok_or_else(short)?;
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    let rest = &bytes[4..];
    if rest.len() < len {
        return Err(short());
    }
    Ok(rest.split_at(len))
}

/// Decodes a record, reading only the log id of an entry.
pub fn decode<C: RaftTypeConfig>(entry: &ArchivedWalEntry) -> Result<Decoded<C>, DecodeError> {
    let (tag, bytes) = parts(entry)?;
    Ok(match tag {
        TAG_ENTRY => Decoded::Entry(parse(split_entry(bytes)?.0, "entry id")?),
        TAG_VOTE => Decoded::Vote(parse(bytes, "vote")?),
        TAG_COMMITTED => Decoded::Committed(parse(bytes, "committed")?),
        TAG_TRUNCATE => Decoded::Truncate(parse(bytes, "truncate")?),
        TAG_PURGE => Decoded::Purge(parse(bytes, "purge")?),
        TAG_STATE => Decoded::State(parse(bytes, "state")?),
        other => return Err(format!("unknown Raft record tag {other}")),
    })
}

/// The whole entry of an `Entry` record.
pub fn decode_entry<C: RaftTypeConfig>(entry: &ArchivedWalEntry) -> Result<C::Entry, DecodeError> {
    match parts(entry)? {
        (TAG_ENTRY, bytes) => parse(split_entry(bytes)?.1, "entry"),
        (tag, _) => Err(format!("expected an entry record, found tag {tag}")),
    }
}
