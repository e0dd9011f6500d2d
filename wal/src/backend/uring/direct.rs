//! Direct record writes (`BackendChoice::UringDirect`): records reach the device with
//! `O_DIRECT` through a second descriptor of the segment file, and a chain that asks for a
//! sync writes through a descriptor opened `O_DIRECT | O_DSYNC` instead of being followed by
//! an fdatasync: one operation a chain, no page-cache copy, no separate flush request.
//!
//! `O_DIRECT` writes whole, aligned blocks ([`BLOCK`] bytes, at block offsets, from
//! block-aligned memory). A chain's records rarely start or end on a block boundary, so its
//! write is widened: it starts at the block holding its first byte, rewriting the records
//! already there with the same bytes (kept from the previous write, [`DirectFile::tail`], or
//! read back once after an open), and ends at the next boundary, padded with zeros (what a
//! zero-filled segment holds there, and an end in a recycled one). The format does not
//! change: a reader sees the same records a buffered write leaves; past the last one, the
//! rest of its block is zeros where a buffered write leaves a recycled segment's earlier
//! contents, either of them the end of the written part (`docs/FORMAT.md`, "Recycled
//! segments").
//!
//! - **Rewriting a block that holds acknowledged records.** The rewrite carries the same bytes
//!   for them, so a write torn at any sector leaves each sector old or new, both holding
//!   them: like every log that rewrites its last partial page, this relies on the device
//!   writing a sector whole.
//! - **Two writes of one block never overlap.** A chain whose first block is the last block
//!   of a direct write still in flight is held until that write completed
//!   ([`super::UringBackend`]'s `held` queue): the kernel may complete overlapping writes in
//!   any order, and the older one landing last would take the newer records back after they
//!   were acknowledged.
//! - **`O_DSYNC` only where it covers what the writer counts on.** The writer takes a sync
//!   to cover every write completed before it was submitted (an fdatasync does). A
//!   `O_DSYNC` write makes only itself durable; so a file gets `O_DSYNC` writes only while
//!   every record write it had was one (a log whose chains all sync: `Strict`). Once a chain
//!   without a sync wrote to it, its later syncing chains are a direct write and a linked
//!   fdatasync, which flushes the device's cache for the earlier ones too.
//! - **Where direct I/O is refused** (the file system reports no direct-I/O alignment, or
//!   one this backend does not meet, or the open fails), the file is written through the
//!   page cache as on the plain ring backend, with a warning once a process; never mixed
//!   within a file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;

use rkyv::util::AlignedVec;

use crate::backend::IoFile;

/// The block size and the buffers' alignment: the most any common device asks for, checked
/// against what the file system reports for each file ([`direct_alignment_fits`]).
pub(crate) const BLOCK: usize = 4096;

/// A write widened to whole blocks.
#[derive(Debug)]
pub(crate) struct AlignedWrite {
    /// The descriptor it goes through (`O_DIRECT`, with `O_DSYNC` when `dsync`).
    pub fd: Arc<File>,
    /// Block-aligned offset.
    pub offset: u64,
    /// Block-aligned memory, a whole number of blocks.
    pub buf: AlignedVec<BLOCK>,
    /// Written through the `O_DSYNC` descriptor: durable once it completed.
    pub dsync: bool,
}

impl AlignedWrite {
    /// The first and last block it writes, by block offset.
    pub fn blocks(&self) -> (u64, u64) {
        let last = self.offset + self.buf.len() as u64 - BLOCK as u64;
        (self.offset, last)
    }
}

/// How a segment file is written.
#[derive(Debug)]
enum Mode {
    /// Through the page cache: direct I/O was refused.
    Buffered,
    Direct {
        plain: Arc<File>,
        dsync: Arc<File>,
        /// Every record write to the file so far went through `dsync`.
        all_dsync: bool,
    },
}

/// The segment file being written.
#[derive(Debug)]
pub(crate) struct DirectFile {
    file: Arc<IoFile>,
    mode: Mode,
    /// The bytes of the block the last write ended in, up to where it ended (the next
    /// write starts there), and that block's offset; `None` until known.
    tail: Option<(u64, Vec<u8>)>,
}

/// The segment files' direct writes: the one being written.
#[derive(Debug, Default)]
pub(crate) struct DirectWrites {
    current: Option<DirectFile>,
    /// Segment files direct I/O was refused for, written through the page cache.
    pub refused: u64,
}

impl DirectWrites {
    /// The widened write of `data` at `offset` of `file` (`sync`: the chain asks for a
    /// sync), or `None` when the file is written through the page cache. An error only from
    /// reading back the block the write starts in.
    pub fn prepare(
        &mut self,
        file: &Arc<IoFile>,
        offset: u64,
        data: &[u8],
        sync: bool,
        refuse: bool,
    ) -> io::Result<Option<AlignedWrite>> {
        if !self
            .current
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.file, file))
        {
            let mode = open_direct(file, refuse);
            if matches!(mode, Mode::Buffered) {
                self.refused += 1;
            }
            self.current = Some(DirectFile {
                file: Arc::clone(file),
                mode,
                tail: None,
            });
        }
        let current = self.current.as_mut().expect("just set");
        let Mode::Direct {
            plain,
            dsync,
            all_dsync,
        } = &mut current.mode
        else {
            return Ok(None);
        };
        *all_dsync &= sync;
        let use_dsync = *all_dsync;
        let start = offset - offset % BLOCK as u64;
        let lead = usize::try_from(offset - start).expect("below a block");
        let end = offset + data.len() as u64;
        let len = (lead + data.len()).div_ceil(BLOCK) * BLOCK;
        let mut buf = AlignedVec::<BLOCK>::with_capacity(len);
        if lead > 0 {
            match &current.tail {
                Some((block, bytes)) if *block == start && bytes.len() == lead => {
                    buf.extend_from_slice(bytes);
                }
                _ => {
                    // After an open: what the recovered log holds there (synced by the
                    // recovery, so the device has it).
                    let mut block = AlignedVec::<BLOCK>::with_capacity(BLOCK);
                    block.resize(BLOCK, 0);
                    plain.read_exact_at(&mut block, start)?;
                    buf.extend_from_slice(&block[..lead]);
                }
            }
        }
        buf.extend_from_slice(data);
        buf.resize(len, 0);
        let tail_block = end - end % BLOCK as u64;
        let tail_from = usize::try_from(tail_block - start).expect("within the write");
        let tail_to = usize::try_from(end - start).expect("within the write");
        // The kept bytes reuse their allocation: this runs once a chain.
        let mut tail = current
            .tail
            .take()
            .map(|(_, bytes)| bytes)
            .unwrap_or_default();
        tail.clear();
        tail.extend_from_slice(&buf[tail_from..tail_to]);
        current.tail = Some((tail_block, tail));
        Ok(Some(AlignedWrite {
            fd: Arc::clone(if use_dsync { dsync } else { plain }),
            offset: start,
            buf,
            dsync: use_dsync,
        }))
    }
}

/// The file's direct descriptors, or why the page cache is used instead (`refuse`: an
/// injected refusal, [`crate::backend::uring_faults::UringFaults::refuse_direct`]).
fn open_direct(file: &IoFile, refuse: bool) -> Mode {
    let mode = if refuse {
        Err("refused by an injected fault".to_string())
    } else {
        try_open_direct(file)
    };
    match mode {
        Ok(mode) => mode,
        Err(reason) => {
            warn_buffered(file, &reason);
            Mode::Buffered
        }
    }
}

fn try_open_direct(file: &IoFile) -> Result<Mode, String> {
    let len = file
        .file
        .metadata()
        .map_err(|e| format!("its length: {e}"))?
        .len();
    if !len.is_multiple_of(BLOCK as u64) {
        return Err(format!("its length {len} is not a multiple of {BLOCK}"));
    }
    direct_alignment_fits(&file.file)?;
    // A second open file description of the same file (not of its name, which a removal
    // may take), with flags of its own.
    let path = format!("/proc/self/fd/{}", file.file.as_raw_fd());
    let open = |flags| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(&path)
            .map(Arc::new)
            .map_err(|e| format!("opening it with O_DIRECT: {e}"))
    };
    Ok(Mode::Direct {
        plain: open(libc::O_DIRECT)?,
        dsync: open(libc::O_DIRECT | libc::O_DSYNC)?,
        all_dsync: true,
    })
}

/// `statx`'s direct-I/O alignment (Linux 6.1 and later): refused unless [`BLOCK`]-aligned
/// offsets, lengths and memory meet it.
fn direct_alignment_fits(file: &File) -> Result<(), String> {
    /// `STATX_DIOALIGN`, not in every `libc` release.
    const STATX_DIOALIGN: u32 = 0x2000;
    // SAFETY: an all-zero `statx` is a valid value of the plain C struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `stx` is a valid, writable `statx` for the call; the empty path with
    // AT_EMPTY_PATH makes the call about the open descriptor, which `file` keeps open.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 {
        return Err(format!("statx: {}", io::Error::last_os_error()));
    }
    let (offset_align, mem_align) = (stx.stx_dio_offset_align, stx.stx_dio_mem_align);
    if stx.stx_mask & STATX_DIOALIGN == 0 || offset_align == 0 {
        return Err("the file system reports no direct I/O for it".into());
    }
    let fits = |align: u32| align as usize <= BLOCK && BLOCK.is_multiple_of(align as usize);
    if !fits(offset_align) || !fits(mem_align) {
        return Err(format!(
            "it needs {offset_align}-byte offsets and {mem_align}-byte memory, beyond {BLOCK}"
        ));
    }
    Ok(())
}

/// The page-cache fallback's warning, once a process; later ones at debug level.
fn warn_buffered(file: &IoFile, reason: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let path = file.path.display();
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!(%path, reason, "direct writes refused; writing through the page cache");
    } else {
        tracing::warn!(%path, reason, "direct writes refused; writing through the page cache");
    }
}

/// A chain alone in flight, run on the writer thread: its widened write through its direct
/// descriptor, then, unless that write was `O_DSYNC`, an fdatasync.
pub(crate) fn run_chain(
    chain: &crate::backend::Chain,
    aligned: &AlignedWrite,
) -> Result<(), crate::backend::ChainError> {
    aligned
        .fd
        .write_all_at(&aligned.buf, aligned.offset)
        .map_err(|error| crate::backend::ChainError {
            operation: "write",
            error,
        })?;
    if chain.sync && !aligned.dsync {
        chain
            .file
            .file
            .sync_data()
            .map_err(|error| crate::backend::ChainError {
                operation: "fdatasync",
                error,
            })?;
    }
    Ok(())
}
