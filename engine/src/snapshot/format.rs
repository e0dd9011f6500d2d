//! The bytes of a snapshot file. Version 2 is written; version 1 (one archive of the whole
//! state) is still read.
//!
//! **Version 2** is written as a stream, from a view of the state, a bounded frame at a time:
//!
//! | offset | size | field                                                      |
//! |-------:|-----:|------------------------------------------------------------|
//! | 0      | 8    | magic `KEELSNAP`                                           |
//! | 8      | 4    | format version (2)                                         |
//! | 12     | 4    | CRC32 of bytes 16..48                                      |
//! | 16     | 8    | LSN: every commit at or below it is in the snapshot, none above |
//! | 24     | 8    | the highest transaction id handed out                      |
//! | 32     | 8    | number of frames                                           |
//! | 40     | 8    | length of the frames, in bytes                             |
//! | 48     | ...  | frames                                                     |
//!
//! A frame is `[archive length: u32][CRC32 of the archive: u32][rkyv archive of a Chunk]`.
//! The runs come first, then the keys in order; a frame holds about [`FRAME_BYTES`] of them
//! (at least one). The header is written last, in place, so a file cut short never passes
//! for a whole one: its length or a frame's checksum disagrees with the header.
//!
//! **Version 1**: a 32-byte header (magic, version 1, CRC32 of bytes 16.. to the end, LSN,
//! payload length) and one archive holding the highest transaction id, the runs and the keys.
//!
//! Both are read as a stream too ([`decode`]): one frame in memory at a time, handed to a
//! visitor as archived rows (the same row types in both versions).

use std::io::{Read, Seek, SeekFrom, Write};

use bytes::Bytes;
use keel_wal::{Lsn, TxnId};
use rkyv::util::AlignedVec;

use crate::state::{RunState, State};

const MAGIC: &[u8; 8] = b"KEELSNAP";
const V1: u32 = 1;
const V2: u32 = 2;
const V1_HEADER_LEN: usize = 32;
const V2_HEADER_LEN: usize = 48;
/// About how many bytes of keys and values one frame holds.
pub(super) const FRAME_BYTES: usize = 1 << 20;
/// The bytes a row costs beyond its key and value, for sizing frames.
const ROW_OVERHEAD: usize = 48;

/// A run: `(id, name, began, ended)`.
type RunRow = (u128, String, u64, Option<u64>);
/// A key: `(run, key, value, version)`.
type DataRow = (u128, Bytes, Bytes, u64);
/// A run as read back.
pub(super) type ArchivedRunRow = rkyv::Archived<RunRow>;
/// A key as read back.
pub(super) type ArchivedDataRow = rkyv::Archived<DataRow>;

/// One frame's rows (version 2).
#[derive(rkyv::Archive, rkyv::Serialize, Debug, Default)]
struct Chunk {
    runs: Vec<RunRow>,
    data: Vec<DataRow>,
}

/// The whole state in one archive (version 1). Only read (as its archive); tests write one.
#[derive(rkyv::Archive, rkyv::Serialize, Debug, Default)]
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "read as an archive; built only by tests")
)]
struct SnapshotV1 {
    max_txn_id: u64,
    runs: Vec<RunRow>,
    data: Vec<DataRow>,
}

/// What a snapshot's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    pub lsn: Lsn,
    pub max_txn_id: TxnId,
}

/// Takes the rows of one frame, in file order; an error stops the decoding.
pub(super) type Visit<'a> =
    dyn FnMut(&[ArchivedRunRow], &[ArchivedDataRow]) -> Result<(), String> + 'a;

/// Writes `state` as a version-2 snapshot at `lsn` to `out`, from its start. The state is
/// a view no one changes meanwhile (a clone); memory beyond it is one frame.
pub(super) fn encode<W: Write + Seek>(
    out: &mut W,
    lsn: Lsn,
    max_txn_id: TxnId,
    state: &State,
    cancelled: &dyn Fn() -> bool,
) -> std::io::Result<()> {
    encode_framed(out, lsn, max_txn_id, state, cancelled, FRAME_BYTES)
}

/// [`encode`] with frames of about `frame_bytes` (tests use tiny ones).
pub(super) fn encode_framed<W: Write + Seek>(
    out: &mut W,
    lsn: Lsn,
    max_txn_id: TxnId,
    state: &State,
    cancelled: &dyn Fn() -> bool,
    frame_bytes: usize,
) -> std::io::Result<()> {
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&[0; V2_HEADER_LEN])?;
    let mut frames = FrameWriter {
        out,
        chunk: Chunk::default(),
        chunk_bytes: 0,
        buffer: AlignedVec::new(),
        frames: 0,
        body: 0,
        cancelled,
        frame_bytes,
    };
    for info in state.runs.values() {
        let ended = match info.state {
            RunState::Active => None,
            RunState::Ended(at) => Some(at),
        };
        let row = (info.id.as_u128(), info.name.clone(), info.began, ended);
        frames.chunk_bytes += info.name.len() + ROW_OVERHEAD;
        frames.chunk.runs.push(row);
        frames.flush_if_full()?;
    }
    for ((run, key), stored) in state.data.iter() {
        frames.chunk_bytes += key.len() + stored.value.len() + ROW_OVERHEAD;
        let row = (*run, key.clone(), stored.value.clone(), stored.version);
        frames.chunk.data.push(row);
        frames.flush_if_full()?;
    }
    frames.flush()?;
    let (count, body) = (frames.frames, frames.body);
    let mut header = [0u8; V2_HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&V2.to_le_bytes());
    header[16..24].copy_from_slice(&lsn.to_le_bytes());
    header[24..32].copy_from_slice(&max_txn_id.to_le_bytes());
    header[32..40].copy_from_slice(&count.to_le_bytes());
    header[40..48].copy_from_slice(&body.to_le_bytes());
    let crc = crc32fast::hash(&header[16..]);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&header)?;
    out.flush()
}

/// Writes the rows gathered so far as frames.
struct FrameWriter<'a, W> {
    out: &'a mut W,
    chunk: Chunk,
    chunk_bytes: usize,
    /// The archive of the frame being written, reused.
    buffer: AlignedVec,
    frames: u64,
    body: u64,
    cancelled: &'a dyn Fn() -> bool,
    frame_bytes: usize,
}

impl<W: Write> FrameWriter<'_, W> {
    fn flush_if_full(&mut self) -> std::io::Result<()> {
        if self.chunk_bytes >= self.frame_bytes {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.chunk.runs.is_empty() && self.chunk.data.is_empty() {
            return Ok(());
        }
        if (self.cancelled)() {
            return Err(std::io::Error::other(
                "snapshot write stopped: the database is closing",
            ));
        }
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        let buffer = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&self.chunk, buffer)
            .map_err(|e| std::io::Error::other(format!("encoding a snapshot frame: {e}")))?;
        let len = u32::try_from(buffer.len()).map_err(|_| {
            std::io::Error::other(format!(
                "a snapshot frame of {} bytes is over 4 GiB",
                buffer.len()
            ))
        })?;
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&len.to_le_bytes());
        head[4..].copy_from_slice(&crc32fast::hash(&buffer).to_le_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(&buffer)?;
        self.frames += 1;
        self.body += 8 + u64::from(len);
        self.chunk.runs.clear();
        self.chunk.data.clear();
        self.chunk_bytes = 0;
        self.buffer = buffer;
        Ok(())
    }
}

/// Reads a snapshot of either version from `input` to its end, checking as it goes (magic,
/// version, checksums, lengths, archives, and that nothing follows), and hands each frame's
/// rows to `visit`. The error says what is wrong; no input panics, and memory is bounded by
/// the largest frame the input really holds (a length field is never trusted for an
/// allocation).
pub(super) fn decode<R: Read>(mut input: R, visit: &mut Visit<'_>) -> Result<Header, String> {
    let mut head = [0u8; 16];
    read_full(&mut input, &mut head)
        .map_err(|_| "not a snapshot (bad magic or too short)".to_owned())?;
    if &head[..8] != MAGIC {
        return Err("not a snapshot (bad magic or too short)".into());
    }
    match u32_at(&head, 8) {
        V1 => decode_v1(&head, input, visit),
        V2 => decode_v2(&head, input, visit),
        version => Err(format!(
            "format version {version}; this build reads {V1} and {V2}"
        )),
    }
}

fn decode_v1<R: Read>(
    head: &[u8; 16],
    mut input: R,
    visit: &mut Visit<'_>,
) -> Result<Header, String> {
    let mut rest = [0u8; V1_HEADER_LEN - 16];
    read_full(&mut input, &mut rest)
        .map_err(|_| "truncated: the header is cut short".to_owned())?;
    let lsn = u64_at(&rest, 0);
    let len = u64_at(&rest, 8);
    let payload = read_up_to(&mut input, len)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&rest);
    hasher.update(&payload);
    let actual = hasher.finalize();
    let stored = u32_at(head, 12);
    if stored != actual {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        ));
    }
    if u64::try_from(payload.len()).ok() != Some(len) {
        return Err(format!(
            "payload length {len} does not match the file ({} bytes after the header)",
            payload.len()
        ));
    }
    expect_end(&mut input)?;
    let data = rkyv::access::<ArchivedSnapshotV1, rkyv::rancor::Error>(&payload)
        .map_err(|e| format!("invalid archive: {e}"))?;
    visit(&data.runs, &data.data)?;
    Ok(Header {
        lsn,
        max_txn_id: data.max_txn_id.to_native(),
    })
}

fn decode_v2<R: Read>(
    head: &[u8; 16],
    mut input: R,
    visit: &mut Visit<'_>,
) -> Result<Header, String> {
    let mut rest = [0u8; V2_HEADER_LEN - 16];
    read_full(&mut input, &mut rest)
        .map_err(|_| "truncated: the header is cut short".to_owned())?;
    let stored = u32_at(head, 12);
    let actual = crc32fast::hash(&rest);
    if stored != actual {
        return Err(format!(
            "header checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        ));
    }
    let header = Header {
        lsn: u64_at(&rest, 0),
        max_txn_id: u64_at(&rest, 8),
    };
    let frames = u64_at(&rest, 16);
    let body = u64_at(&rest, 24);
    let mut read = 0u64;
    for frame in 0..frames {
        let mut framing = [0u8; 8];
        read_full(&mut input, &mut framing)
            .map_err(|_| format!("truncated: frame {frame} of {frames} is missing"))?;
        let len = u64::from(u32_at(&framing, 0));
        if read + 8 + len > body {
            return Err(format!(
                "frame {frame} of {frames} ({len} bytes) runs past the {body} bytes the header gives"
            ));
        }
        let archive = read_up_to(&mut input, len)?;
        if (archive.len() as u64) < len {
            return Err(format!(
                "truncated: frame {frame} of {frames} holds {} of its {len} bytes",
                archive.len()
            ));
        }
        let stored = u32_at(&framing, 4);
        let actual = crc32fast::hash(&archive);
        if stored != actual {
            return Err(format!(
                "checksum mismatch in frame {frame} of {frames} (stored {stored:#010x}, computed {actual:#010x})"
            ));
        }
        let chunk = rkyv::access::<ArchivedChunk, rkyv::rancor::Error>(&archive)
            .map_err(|e| format!("invalid archive in frame {frame} of {frames}: {e}"))?;
        visit(&chunk.runs, &chunk.data)?;
        read += 8 + len;
    }
    if read != body {
        return Err(format!(
            "the frames hold {read} bytes, the header gives {body}"
        ));
    }
    expect_end(&mut input)?;
    Ok(header)
}

/// Reads `len` bytes, or as many as there are before the end, into an aligned buffer that
/// grows only as bytes arrive.
fn read_up_to<R: Read>(input: &mut R, len: u64) -> Result<AlignedVec, String> {
    let mut buffer = AlignedVec::new();
    buffer
        .extend_from_reader(&mut input.take(len))
        .map_err(|e| format!("reading: {e}"))?;
    Ok(buffer)
}

/// Fills `buf`, or fails when the input ends first.
fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> std::io::Result<()> {
    input.read_exact(buf)
}

/// Fails unless the input has ended.
fn expect_end<R: Read>(input: &mut R) -> Result<(), String> {
    let mut byte = [0u8; 1];
    match input.read(&mut byte) {
        Ok(0) => Ok(()),
        Ok(_) => Err("bytes follow the end of the snapshot".into()),
        Err(e) => Err(format!("reading: {e}")),
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// A version-1 snapshot of `state`, as the builds before version 2 wrote it: for tests that
/// old files still load.
#[cfg(test)]
pub(super) fn encode_v1(lsn: Lsn, max_txn_id: TxnId, state: &State) -> Vec<u8> {
    let data = SnapshotV1 {
        max_txn_id,
        runs: state
            .runs
            .values()
            .map(|r| {
                let ended = match r.state {
                    RunState::Active => None,
                    RunState::Ended(at) => Some(at),
                };
                (r.id.as_u128(), r.name.clone(), r.began, ended)
            })
            .collect(),
        data: state
            .data
            .iter()
            .map(|((run, key), v)| (*run, key.clone(), v.value.clone(), v.version))
            .collect(),
    };
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&data).expect("encodes");
    let mut bytes = Vec::with_capacity(V1_HEADER_LEN + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&V1.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&lsn.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&payload);
    let crc = crc32fast::hash(&bytes[16..]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    bytes
}
