//! File access for the event layer: read-only memory maps for readers, atomic writes for outputs.
//! Readers decode straight from the map, so no whole-file copy is made besides the decoded columns.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;

use super::error::EventError;

/// The bytes of a file, memory-mapped (or empty for an empty file, which cannot be mapped).
pub(crate) struct Mapped(Option<Mmap>);

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

pub(crate) fn map_file(path: &Path) -> Result<Mapped, EventError> {
    let file = File::open(path).map_err(|e| EventError::io(path, e))?;
    let len = file.metadata().map_err(|e| EventError::io(path, e))?.len();
    if len == 0 {
        return Ok(Mapped(None));
    }
    // SAFETY: the map is read-only and lives only while one reader decodes it. Another process
    // truncating the file meanwhile could fault; that is the accepted trade-off of mmap for
    // multi-megabyte recordings, and the readers never hold the map past the call.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| EventError::io(path, e))?;
    Ok(Mapped(Some(map)))
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
