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

/// The tag of an `Entry` record: one Raft entry, its log id framed first.
pub const TAG_ENTRY: u32 = 1;
/// The tag of a `Vote` record: the vote saved.
pub const TAG_VOTE: u32 = 2;
/// The tag of a `Committed` record: the committed log id saved.
pub const TAG_COMMITTED: u32 = 3;
/// The tag of a `Truncate` record: entries from an index on are void.
pub const TAG_TRUNCATE: u32 = 4;
/// The tag of a `Purge` record: entries up to a log id are gone.
pub const TAG_PURGE: u32 = 5;
/// The tag of a `State` record: the durable [`Marks`], whole.
pub const TAG_STATE: u32 = 6;

/// The durable marks, written whole before segments holding older ones are deleted.
#[derive(Serialize, Deserialize, Debug)]
#[serde(bound = "")]
pub struct Marks<C: RaftTypeConfig> {
    /// The last vote saved, if any.
    pub vote: Option<Vote<C::NodeId>>,
    /// The last committed log id saved, if any.
    pub committed: Option<LogId<C::NodeId>>,
    /// The id of the last purged entry, if any.
    pub purged: Option<LogId<C::NodeId>>,
}

/// A record read back.
#[derive(Debug)]
pub enum Decoded<C: RaftTypeConfig> {
    /// An `Entry` record: the entry's log id (the entry itself is read on demand).
    Entry(LogId<C::NodeId>),
    /// A `Vote` record.
    Vote(Vote<C::NodeId>),
    /// A `Committed` record.
    Committed(Option<LogId<C::NodeId>>),
    /// A `Truncate` record: the first index made void.
    Truncate(u64),
    /// A `Purge` record: the last log id purged.
    Purge(LogId<C::NodeId>),
    /// A `State` record.
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

/// A `Vote` record.
pub fn vote<C: RaftTypeConfig>(vote: &Vote<C::NodeId>) -> WalEntry {
    payload(TAG_VOTE, json(vote))
}

/// A `Committed` record.
pub fn committed<C: RaftTypeConfig>(committed: &Option<LogId<C::NodeId>>) -> WalEntry {
    payload(TAG_COMMITTED, json(committed))
}

/// A `Truncate` record voiding the entries at index `since` and above.
pub fn truncate(since: u64) -> WalEntry {
    payload(TAG_TRUNCATE, json(&since))
}

/// A `Purge` record: the entries up to `upto` (included) are gone.
pub fn purge<C: RaftTypeConfig>(upto: &LogId<C::NodeId>) -> WalEntry {
    payload(TAG_PURGE, json(upto))
}

/// A `State` record holding `marks`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TypeConfig;
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    fn log_id(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    /// Hands each of `records`, written to a real log and read back, to `check` (with its
    /// position in `records`).
    fn read_back(records: &[WalEntry], mut check: impl FnMut(usize, &ArchivedWalEntry)) {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), keel_wal::WalOptions::default()).unwrap();
        wal.append(records).wait().unwrap();
        wal.close().unwrap();
        let mut reader = keel_wal::LogReader::open(dir.path()).unwrap();
        let mut seen = 0;
        while let Some(found) = reader.next_record().unwrap() {
            check(seen, found.entry);
            seen += 1;
        }
        assert_eq!(seen, records.len(), "every record is read back");
    }

    fn raw(tag: u32, bytes: &[u8]) -> WalEntry {
        payload(tag, bytes.to_vec())
    }

    fn decode_error(record: WalEntry) -> DecodeError {
        let mut error = None;
        read_back(&[record], |_, entry| {
            error = Some(decode::<TypeConfig>(entry).expect_err("must not decode"));
        });
        error.unwrap()
    }

    #[test]
    fn every_record_reads_back_as_written() {
        let entry = Entry::<TypeConfig> {
            log_id: log_id(3, 7),
            payload: EntryPayload::Normal(crate::KvRequest::Delete { key: "k".into() }),
        };
        let marks = Marks::<TypeConfig> {
            vote: Some(Vote::new(3, 1)),
            committed: Some(log_id(3, 6)),
            purged: Some(log_id(2, 4)),
        };
        let records = [
            self::entry::<TypeConfig>(&entry.log_id, &entry),
            vote::<TypeConfig>(&Vote::new(3, 1)),
            committed::<TypeConfig>(&None),
            truncate(9),
            purge::<TypeConfig>(&log_id(2, 4)),
            state::<TypeConfig>(&marks),
        ];
        read_back(&records, |at, archived| {
            let decoded = decode::<TypeConfig>(archived).unwrap();
            match (at, decoded) {
                (0, Decoded::Entry(id)) => {
                    assert_eq!(id, log_id(3, 7));
                    assert_eq!(decode_entry::<TypeConfig>(archived).unwrap(), entry);
                }
                (1, Decoded::Vote(v)) => assert_eq!(v, Vote::new(3, 1)),
                (2, Decoded::Committed(c)) => assert_eq!(c, None),
                (3, Decoded::Truncate(since)) => assert_eq!(since, 9),
                (4, Decoded::Purge(upto)) => assert_eq!(upto, log_id(2, 4)),
                (5, Decoded::State(m)) => {
                    assert_eq!(m.vote, marks.vote);
                    assert_eq!(m.committed, marks.committed);
                    assert_eq!(m.purged, marks.purged);
                }
                (at, other) => panic!("record {at} decoded as {other:?}"),
            }
        });
    }

    #[test]
    fn an_entry_record_shorter_than_its_framing_is_refused() {
        // Not even the 4 bytes of the id's length.
        let error = decode_error(raw(TAG_ENTRY, &[7, 0]));
        assert_eq!(error, "an entry record shorter than its framing");
        // A length beyond the bytes that follow.
        let mut bytes = 40u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{\"short\"");
        let error = decode_error(raw(TAG_ENTRY, &bytes));
        assert_eq!(error, "an entry record shorter than its framing");
    }

    #[test]
    fn an_unknown_tag_and_undecodable_marks_are_refused_by_name() {
        assert_eq!(decode_error(raw(99, b"{}")), "unknown Raft record tag 99");
        let error = decode_error(raw(TAG_VOTE, b"not json"));
        assert!(error.starts_with("undecodable vote record: "), "{error}");
        let error = decode_error(raw(TAG_STATE, b"[1,2]"));
        assert!(error.starts_with("undecodable state record: "), "{error}");
    }

    #[test]
    fn a_record_of_another_run_or_kind_is_not_a_raft_record() {
        let other_run = WalEntry::Payload {
            run_id: RunId::from_u128(0xabc),
            tag: TAG_ENTRY,
            payload: Vec::new(),
        };
        let error = decode_error(other_run);
        assert!(
            error.contains("of run 0xabc is not a Raft log record"),
            "{error}"
        );
        let commit = WalEntry::CommitTxn {
            run_id: RAFT_RUN,
            txn_id: 1,
        };
        let error = decode_error(commit);
        assert!(error.contains("is not a Raft log record"), "{error}");
    }

    #[test]
    fn only_an_entry_record_decodes_as_an_entry() {
        read_back(&[vote::<TypeConfig>(&Vote::new(1, 1))], |_, archived| {
            let error = decode_entry::<TypeConfig>(archived).unwrap_err();
            assert_eq!(
                error,
                format!("expected an entry record, found tag {TAG_VOTE}")
            );
        });
        // The id frame decodes, the entry after it does not.
        let id = serde_json::to_vec(&log_id(1, 1)).unwrap();
        let mut bytes = u32::try_from(id.len()).unwrap().to_le_bytes().to_vec();
        bytes.extend_from_slice(&id);
        bytes.extend_from_slice(b"{\"log_id\":");
        read_back(&[raw(TAG_ENTRY, &bytes)], |_, archived| {
            assert!(matches!(
                decode::<TypeConfig>(archived),
                Ok(Decoded::Entry(found)) if found == log_id(1, 1)
            ));
            let error = decode_entry::<TypeConfig>(archived).unwrap_err();
            assert!(error.starts_with("undecodable entry record: "), "{error}");
        });
    }
}
