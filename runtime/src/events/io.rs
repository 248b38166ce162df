//! File access for the event layer: whole-file bytes for readers (one `read` for small files,
//! a read-only memory map for large ones) and atomic writes for outputs. Readers decode straight
//! from these bytes, so no further whole-file copy is made besides the decoded columns.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;

use super::error::EventError;

/// Files up to this size are read into a new buffer rather than mapped. For small files (an
/// N-MNIST sample is ~20 KB) `mmap` + page faults + `munmap` cost more than copying the bytes
/// once; large recordings are mapped so that they are never held twice.
const READ_LIMIT: u64 = 1 << 20;
/// Files up to this size are read into a caller's reused buffer ([`load_into`]): once the buffer
/// has grown, a read is one copy from the page cache with no page faults, which measured ~20 %
/// faster than mapping for the 6 MB AEDAT 4 sample. Beyond it, holding a copy costs too much memory.
const REUSE_LIMIT: u64 = 64 << 20;

/// The bytes of a file: read into memory, memory-mapped, or empty (an empty file cannot be mapped).
pub(crate) enum Mapped<'b> {
    Empty,
    Read(Vec<u8>),
    /// Read into a caller's buffer that outlives this value.
    Buffer(&'b [u8]),
    Map(Mmap),
}

impl Deref for Mapped<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mapped::Empty => &[],
            Mapped::Read(v) => v,
            Mapped::Buffer(b) => b,
            Mapped::Map(m) => m,
        }
    }
}

/// The whole file, in a new buffer or mapped.
pub(crate) fn map_file(path: &Path) -> Result<Mapped<'static>, EventError> {
    let mut buf = Vec::new();
    Ok(match load(path, &mut buf, READ_LIMIT)? {
        Loaded::Empty => Mapped::Empty,
        Loaded::Read(n) => {
            buf.truncate(n);
            Mapped::Read(buf)
        }
        Loaded::Map(m) => Mapped::Map(m),
    })
}

/// The whole file, small ones read into `buf` (whose allocation is reused), large ones mapped.
pub(crate) fn load_into<'b>(path: &Path, buf: &'b mut Vec<u8>) -> Result<Mapped<'b>, EventError> {
    Ok(match load(path, buf, REUSE_LIMIT)? {
        Loaded::Empty => Mapped::Empty,
        Loaded::Read(n) => Mapped::Buffer(&buf[..n]),
        Loaded::Map(m) => Mapped::Map(m),
    })
}

/// Where [`load`] put the bytes.
enum Loaded {
    Empty,
    /// The first `n` bytes of the buffer passed to `load`.
    Read(usize),
    Map(Mmap),
}

/// Reads files up to `read_limit` bytes into `buf`, maps larger ones.
fn load(path: &Path, buf: &mut Vec<u8>, read_limit: u64) -> Result<Loaded, EventError> {
    let mut file = File::open(path).map_err(|e| EventError::io(path, e))?;
    let len = file.metadata().map_err(|e| EventError::io(path, e))?.len();
    if len == 0 {
        return Ok(Loaded::Empty);
    }
    if len <= read_limit {
        // `len` bytes, as a map of the file at this moment would hold; a file that shrank
        // meanwhile yields fewer, which the readers report as truncation. Reading into the
        // sized buffer takes one `read` call where `read_to_end` starts with 8 KB reads, and
        // a reused buffer is only zero-filled when it grows.
        let len = len as usize;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let mut filled = 0;
        while filled < len {
            match file.read(&mut buf[filled..len]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(EventError::io(path, e)),
            }
        }
        return Ok(Loaded::Read(filled));
    }
    // SAFETY: the map is read-only and lives only while one reader decodes it. Another process
    // truncating the file meanwhile could fault; that is the accepted trade-off of mmap for
    // multi-megabyte recordings, and the readers never hold the map past the call.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| EventError::io(path, e))?;
    Ok(Loaded::Map(map))
}

/// Writes `path` atomically: the content goes to a temporary file in the same directory, which is
/// flushed, synced and renamed over `path`, so readers never see a half-written output.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), EventError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        EventError::invalid(path, "output path has no file name; give a file path")
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        // Best effort: the temporary may not exist if creation itself failed.
        let _ = fs::remove_file(&tmp);
        EventError::io(path, e)
    })
}
