//! N-MNIST `.bin` / `.bs2` reader: headerless 5-byte events on the 34 x 34 ATIS crop.
//! `x = b0, y = b1, p = b2 >> 7, t = (b2 & 0x7F) << 16 | b3 << 8 | b4` (µs, 23 bits).

use std::path::Path;

use super::cursor::Cursor;
use super::error::EventError;
use super::io::map_file;
use super::types::{ReadOptions, Recording, Sink};

/// N-MNIST's saccade recordings are cropped to 34 x 34 pixels.
pub const SENSOR: (u16, u16) = (34, 34);

/// Reads an N-MNIST binary file through a memory map.
pub fn read(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Recording, EventError> {
    let path = path.as_ref();
    let bytes = map_file(path)?;
    decode(&bytes, path, opts)
}

/// Decodes N-MNIST bytes held in memory; errors name the file as `<memory>`.
pub fn from_bytes(bytes: &[u8], opts: &ReadOptions) -> Result<Recording, EventError> {
    decode(bytes, Path::new("<memory>"), opts)
}

pub(crate) fn decode(
    bytes: &[u8],
    file: &Path,
    opts: &ReadOptions,
) -> Result<Recording, EventError> {
    let mut rec = Recording::default();
    decode_into(bytes, file, opts, &mut rec)?;
    Ok(rec)
}

/// [`decode`] into `out`, reusing its columns.
pub(crate) fn decode_into(
    bytes: &[u8],
    file: &Path,
    opts: &ReadOptions,
    out: &mut Recording,
) -> Result<(), EventError> {
    let whole = bytes.len() / 5 * 5;
    if whole != bytes.len() {
        return Err(Cursor::with_base(&bytes[whole..], file, whole as u64)
            .truncated(5, "N-MNIST event (5 bytes)"));
    }
    let mut sink = Sink::new(out, file, opts, Some(SENSOR));
    sink.extend(bytes.chunks_exact(5).enumerate().map(|(i, b)| {
        let t = (i64::from(b[2] & 0x7F) << 16) | (i64::from(b[3]) << 8) | i64::from(b[4]);
        ((i * 5) as u64, t, b[0].into(), b[1].into(), b[2] >> 7 == 1)
    }))
}
