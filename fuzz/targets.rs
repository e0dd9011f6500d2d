//! The fuzz targets, shared by the libFuzzer binaries (`fuzz/fuzz_targets/`) and by the
//! corpus replay in `cargo test` (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes and
//! panics only when an invariant breaks.
//!
//! - [`record_decoder`]: record framing, checksums, length bounds and archive validation.
//!   The first byte picks raw mode (the bytes are a record region as found on disk) or
//!   sealed mode (the bytes are payloads framed here with correct checksums, so that the
//!   archive validation itself sees arbitrary input). Whatever decodes must re-encode to an
//!   entry that decodes to the same value.
//! - [`recovery`]: a log directory made from the bytes (a valid identity and segment header,
//!   then the bytes as records, raw or sealed, in one or two segments), recovered under the
//!   policy the first byte picks. No panic; nothing allocated beyond the input's scale; and
//!   when recovery succeeds, a second one repairs nothing and replays the same transactions.

#![allow(dead_code, reason = "each user calls one target")]

use std::path::Path;

use keel_recovery::{CommittedTxn, RecoveryPolicy, Replay, ReplayError, recover};
use keel_wal::record::{
    self, BODY_CRC_OFFSET, DURABLE_LSN_OFFSET, KIND_ENTRY, KIND_OFFSET, LSN_OFFSET,
    PAYLOAD_LEN_OFFSET, RECORD_HEADER_LEN,
};
use keel_wal::segment::{self, HEADER_BLOCK_LEN, SegmentHeader};
use keel_wal::{Crc, DatabaseId, EncodedBatch, Lsn, WalEntry, fsutil};

/// The largest region a target builds: bounds memory and time per input.
const MAX_REGION: usize = 64 * 1024;
const SALT: u32 = 0x5eed_cafe;

/// Frames `payload` as one record at `lsn` with durable mark `durable`, checksums correct.
fn frame(payload: &[u8], lsn: Lsn, durable: Lsn, salt: u32) -> Vec<u8> {
    let mut record = vec![0u8; record::record_len(payload.len())];
    record[RECORD_HEADER_LEN..RECORD_HEADER_LEN + payload.len()].copy_from_slice(payload);
    let len = u32::try_from(payload.len()).expect("bounded by MAX_REGION");
    record[PAYLOAD_LEN_OFFSET..PAYLOAD_LEN_OFFSET + 4].copy_from_slice(&len.to_le_bytes());
    record[LSN_OFFSET..LSN_OFFSET + 8].copy_from_slice(&lsn.to_le_bytes());
    record[DURABLE_LSN_OFFSET..DURABLE_LSN_OFFSET + 8].copy_from_slice(&durable.to_le_bytes());
    record[KIND_OFFSET..KIND_OFFSET + 2].copy_from_slice(&KIND_ENTRY.to_le_bytes());
    let body = Crc::salted(salt, &record[RECORD_HEADER_LEN..]);
    record[BODY_CRC_OFFSET..BODY_CRC_OFFSET + 4].copy_from_slice(&body.0.to_le_bytes());
    let header = Crc::salted(salt, &record[PAYLOAD_LEN_OFFSET..RECORD_HEADER_LEN]);
    record[..4].copy_from_slice(&header.0.to_le_bytes());
    record
}

/// Sealed mode: `data` as a sequence of `[len: u8][lsn step: u8][payload: len bytes]`,
/// each framed as a record with correct checksums. LSNs mostly follow on; a step byte
/// above 250 jumps, so gaps and repeats are reached too.
fn sealed_records(data: &[u8], first_lsn: Lsn, salt: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut lsn = first_lsn;
    while at + 2 <= data.len() && out.len() < MAX_REGION {
        let len = usize::from(data[at]) * 2;
        let step = data[at + 1];
        at += 2;
        let payload = &data[at..(at + len).min(data.len())];
        at += payload.len();
        let durable = lsn.saturating_sub(1 + u64::from(step % 4));
        out.extend_from_slice(&frame(payload, lsn, durable, salt));
        lsn = match step {
            251 => lsn,
            252 => lsn + 2,
            253 => lsn.saturating_sub(1).max(1),
            _ => lsn + 1,
        };
    }
    out
}

/// Checks one decoded entry: re-encoding it must decode to the same value.
fn roundtrip(entry: &WalEntry) {
    let batch = EncodedBatch::encode(std::slice::from_ref(entry), u32::MAX >> 8)
        .expect("a decoded entry encodes");
    let mut bytes = batch.as_bytes().to_vec();
    record::seal(&mut bytes, 2, 1, SALT);
    let header = record::parse_header(&bytes[..RECORD_HEADER_LEN], SALT, u64::MAX)
        .expect("a sealed header parses");
    let mut body = rkyv::util::AlignedVec::<16>::new();
    body.extend_from_slice(&bytes[RECORD_HEADER_LEN..]);
    let again = record::check_body(&header, &body, SALT).expect("a sealed body checks");
    assert_eq!(&again.to_owned_entry(), entry, "re-encoded entry differs");
}

/// Decodes records from `region` as a reader does: header, length bound, body, archive.
fn decode_region(region: &[u8], salt: u32) -> usize {
    let mut at = 0;
    let mut decoded = 0;
    let mut body = rkyv::util::AlignedVec::<16>::new();
    while at + RECORD_HEADER_LEN <= region.len() {
        let limit = (region.len() - at - RECORD_HEADER_LEN) as u64;
        let Ok(header) = record::parse_header(&region[at..at + RECORD_HEADER_LEN], salt, limit)
        else {
            break;
        };
        let len = header.record_len();
        assert!(at + len <= region.len(), "a parsed length passed its bound");
        body.clear();
        body.extend_from_slice(&region[at + RECORD_HEADER_LEN..at + len]);
        match record::check_body(&header, &body, salt) {
            Ok(entry) => {
                roundtrip(&entry.to_owned_entry());
                decoded += 1;
            }
            Err(_) => break,
        }
        at += len;
    }
    decoded
}

/// Fuzz target: the record decoder.
pub fn record_decoder(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let rest = &rest[..rest.len().min(MAX_REGION)];
    if mode & 1 == 0 {
        decode_region(rest, SALT);
        let _ = SegmentHeader::decode(rest, Path::new("fuzz.wal"));
    } else {
        let region = sealed_records(rest, 1, SALT);
        decode_region(&region, SALT);
    }
}

/// A sink that keeps what it is given, owned.
#[derive(Default, PartialEq, Eq, Debug)]
struct Collect {
    txns: Vec<(u128, u64, Lsn, Vec<WalEntry>)>,
}

impl Replay for Collect {
    fn apply(&mut self, txn: &CommittedTxn<'_>) -> Result<(), ReplayError> {
        let entries = txn.entries().map(|(_, e)| e.to_owned_entry()).collect();
        self.txns
            .push((txn.run_id.as_u128(), txn.txn_id, txn.commit_lsn, entries));
        Ok(())
    }
}

const POLICIES: [RecoveryPolicy; 4] = [
    RecoveryPolicy::TolerateTornTail,
    RecoveryPolicy::PointInTime,
    RecoveryPolicy::SkipCorrupted,
    RecoveryPolicy::Absolute,
];

fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("keel-fuzz-")
            .tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("a temporary directory")
}

/// Writes one segment starting at `first_lsn` holding `region` after its header block.
fn write_segment(dir: &Path, id: DatabaseId, first_lsn: Lsn, region: &[u8], size: u64) {
    let header = SegmentHeader {
        version: keel_wal::segment::FORMAT_VERSION,
        database_id: id,
        first_lsn,
        segment_bytes: size,
        salt: SALT,
    };
    let mut bytes = vec![0u8; usize::try_from(size).expect("small")];
    let encoded = header.encode();
    bytes[..encoded.len()].copy_from_slice(&encoded);
    let start = usize::try_from(HEADER_BLOCK_LEN).expect("small");
    let room = bytes.len() - start;
    bytes[start..start + region.len().min(room)].copy_from_slice(&region[..region.len().min(room)]);
    std::fs::write(dir.join(segment::file_name(first_lsn)), bytes).expect("writing a segment");
}

/// Fuzz target: recovery over a log made from arbitrary bytes.
pub fn recovery(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let rest = &rest[..rest.len().min(MAX_REGION)];
    let policy = POLICIES[usize::from(mode & 3)];
    let sealed = mode & 4 != 0;
    let two_segments = mode & 8 != 0;
    let dir = scratch();
    let id = DatabaseId([7; 16]);
    fsutil::write_identity(&keel_wal::FileSystem, dir.path(), id).expect("writing the identity");
    let region = if sealed {
        sealed_records(rest, 1, SALT)
    } else {
        rest.to_vec()
    };
    let size = 4 * HEADER_BLOCK_LEN + (region.len() as u64).next_multiple_of(4096);
    if two_segments && region.len() > 64 {
        // Split at a record boundary where one is easy to find: the second segment starts
        // at the LSN the first one's records would reach.
        let half = (region.len() / 2).next_multiple_of(8).min(region.len());
        write_segment(dir.path(), id, 1, &region[..half], size);
        let next_first = 1 + (half / 64) as u64;
        write_segment(dir.path(), id, next_first, &region[half..], size);
    } else {
        write_segment(dir.path(), id, 1, &region, size);
    }
    let mut first = Collect::default();
    let Ok(report) = recover(dir.path(), policy, &mut first) else {
        return;
    };
    let mut second = Collect::default();
    let again = recover(dir.path(), policy, &mut second)
        .unwrap_or_else(|e| panic!("a second recovery ({policy}) failed after {report}: {e}"));
    assert_eq!(
        again.bytes_truncated, 0,
        "{policy}: the second recovery truncated: {again}"
    );
    assert!(
        again.segments_discarded.is_empty(),
        "{policy}: the second recovery set segments aside: {again}"
    );
    assert_eq!(
        first, second,
        "{policy}: the second recovery replayed other transactions"
    );
}
