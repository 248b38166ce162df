//! Format auto-detection, the one-call `read_events(path)` entry point and `EventReader`, which reads
//! file after file with its buffers kept (and frames while decoding where a reader can).
//! Magic bytes decide where a format has them; the extension decides for headerless N-MNIST files.

use std::path::Path;

use super::error::EventError;
use super::frame::{FrameBuffer, FrameSpec, frame_into};
use super::io::{load_into, map_file};
use super::types::{ReadOptions, ReadReport, Recording};
use super::{aedat2, aedat4, aedat31, evt3, nmnist, npy, npz};

/// The event formats this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Aedat2,
    Aedat31,
    Aedat4,
    Evt3,
    NMnist,
    Npy,
    Npz,
}

/// Detects the format of `bytes` (the start of the file is enough) read from `path`.
pub fn detect_format(bytes: &[u8], path: &Path) -> Result<Format, EventError> {
    const AER: &[u8] = b"#!AER-DAT";
    if let Some(rest) = bytes.strip_prefix(AER) {
        return match rest.first() {
            Some(b'2') => Ok(Format::Aedat2),
            Some(b'3') => Ok(Format::Aedat31),
            Some(b'4') => Ok(Format::Aedat4),
            _ => Err(EventError::UnsupportedVersion {
                file: path.to_path_buf(),
                offset: AER.len() as u64,
                format: "AEDAT",
                found: String::from_utf8_lossy(&rest[..rest.len().min(8)]).into_owned(),
                supported: "2.0, 3.0, 3.1, 4.0",
            }),
        };
    }
    // Prophesee raw files open with `% key value` header lines.
    if bytes.starts_with(b"% ") {
        return Ok(Format::Evt3);
    }
    if bytes.starts_with(b"\x93NUMPY") {
        return Ok(Format::Npy);
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Ok(Format::Npz);
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("bin" | "bs2") => Ok(Format::NMnist),
        _ => Err(EventError::UnknownFormat {
            file: path.to_path_buf(),
            magic: bytes[..bytes.len().min(8)].to_vec(),
        }),
    }
}

/// Reads any supported event file, choosing the reader by magic bytes or extension.
pub fn read_events(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Recording, EventError> {
    let path = path.as_ref();
    let bytes = map_file(path)?;
    decode_as(detect_format(&bytes, path)?, &bytes, path, opts)
}

/// Reads one file after another into buffers kept between calls: the bytes of small files,
/// the event columns and AEDAT 4's decompression buffer. Results and errors are those of
/// [`read_events`]; only the allocations (and their page faults) are saved. N-MNIST and
/// AEDAT 4 decode into the kept columns; other formats read as `read_events` does.
#[derive(Debug, Default)]
pub struct EventReader {
    opts: ReadOptions,
    bytes: Vec<u8>,
    scratch: Vec<u8>,
    rec: Recording,
}

impl EventReader {
    pub fn new(opts: ReadOptions) -> Self {
        Self {
            opts,
            ..Self::default()
        }
    }

    /// Reads `path`; the recording is valid until the next call.
    pub fn read(&mut self, path: impl AsRef<Path>) -> Result<&Recording, EventError> {
        let path = path.as_ref();
        let bytes = load_into(path, &mut self.bytes)?;
        let format = detect_format(&bytes, path)?;
        decode_kept(
            format,
            &bytes,
            path,
            &self.opts,
            &mut self.rec,
            &mut self.scratch,
        )?;
        Ok(&self.rec)
    }

    /// Reads `path` and frames its events into `out`: the tensor
    /// `frame(&read_events(path)?.events, spec)` gives, with the same errors (reading ones
    /// first). N-MNIST files, and AEDAT 4 files framed by time window, are decoded straight
    /// into the frames without event columns; the rest go through [`Self::read`] and
    /// [`frame_into`]. After an error, `out` may hold a partial framing until the next
    /// successful one (which resets it fully).
    pub fn read_frames(
        &mut self,
        path: impl AsRef<Path>,
        spec: &FrameSpec,
        out: &mut FrameBuffer,
    ) -> Result<FramedRead, EventError> {
        let path = path.as_ref();
        let bytes = load_into(path, &mut self.bytes)?;
        let format = detect_format(&bytes, path)?;
        let fused = match format {
            Format::NMnist => nmnist::frame_bytes(&bytes, &self.opts, spec, out),
            Format::Aedat4 => {
                aedat4::frame_into(&bytes, path, &self.opts, spec, out, &mut self.scratch)?
            }
            _ => None,
        };
        if let Some((events, report)) = fused {
            return Ok(FramedRead { events, report });
        }
        decode_kept(
            format,
            &bytes,
            path,
            &self.opts,
            &mut self.rec,
            &mut self.scratch,
        )?;
        frame_into(&self.rec.events, spec, out)?;
        Ok(FramedRead {
            events: self.rec.events.len(),
            report: self.rec.report,
        })
    }
}

/// What [`EventReader::read_frames`] read: the polarity events framed (before any denoising)
/// and the reader's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramedRead {
    pub events: usize,
    pub report: ReadReport,
}

/// Decodes into `out`, reusing its columns where the format's reader can.
fn decode_kept(
    format: Format,
    bytes: &[u8],
    path: &Path,
    opts: &ReadOptions,
    out: &mut Recording,
    scratch: &mut Vec<u8>,
) -> Result<(), EventError> {
    match format {
        Format::NMnist => nmnist::decode_into(bytes, path, opts, out),
        Format::Aedat4 => aedat4::decode_into(bytes, path, opts, out, scratch),
        format => {
            *out = decode_as(format, bytes, path, opts)?;
            Ok(())
        }
    }
}

pub(crate) fn decode_as(
    format: Format,
    bytes: &[u8],
    path: &Path,
    opts: &ReadOptions,
) -> Result<Recording, EventError> {
    match format {
        Format::Aedat2 => aedat2::decode(bytes, path, opts),
        Format::Aedat31 => aedat31::decode(bytes, path, opts),
        Format::Aedat4 => aedat4::decode(bytes, path, opts),
        Format::Evt3 => evt3::decode(bytes, path, opts),
        Format::NMnist => nmnist::decode(bytes, path, opts),
        Format::Npy => npy::decode(bytes, path, opts),
        Format::Npz => npz::decode(bytes, path, opts),
    }
}
