//! Prophesee EVT 3.0 `.raw` reader: `%` text header, then little-endian 16-bit words whose top
//! nibble is a type (y address, x address, vectorised x masks, 24-bit time split in two halves).

use std::path::Path;

use super::cursor::{Cursor, le_u16};
use super::error::EventError;
use super::io::map_file;
use super::types::{ReadOptions, Recording, Sink};

/// Reads an EVT 3.0 file through a memory map.
pub fn read(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Recording, EventError> {
    let path = path.as_ref();
    let bytes = map_file(path)?;
    decode(&bytes, path, opts)
}

/// Decodes EVT 3.0 bytes held in memory; errors name the file as `<memory>`.
pub fn from_bytes(bytes: &[u8], opts: &ReadOptions) -> Result<Recording, EventError> {
    decode(bytes, Path::new("<memory>"), opts)
}

pub(crate) fn decode(
    bytes: &[u8],
    file: &Path,
    opts: &ReadOptions,
) -> Result<Recording, EventError> {
    let mut cur = Cursor::new(bytes, file);
    let (mut version, mut declared) = (None, None);
    while cur.peek() == Some(b'%') {
        let at = cur.offset();
        let line = String::from_utf8_lossy(cur.line("EVT header line")?).into_owned();
        let body = line.trim_start_matches('%').trim();
        if body == "end" {
            break;
        }
        let (key, value) = body.split_once(' ').unwrap_or((body, ""));
        match key {
            "evt" => version = Some((at, value.trim().to_string())),
            "format" => {
                version = Some((at, value.split(';').next().unwrap_or("").trim().to_string()))
            }
            "geometry" => declared = declared.or_else(|| geometry(value)),
            "plugin_name" => declared = declared.or_else(|| plugin_sensor(value)),
            _ => {}
        }
        if key == "format" {
            let dim = |k: &str| {
                value.split(';').find_map(|kv| {
                    kv.trim()
                        .strip_prefix(k)?
                        .strip_prefix('=')?
                        .parse::<u16>()
                        .ok()
                })
            };
            if let (Some(w), Some(h)) = (dim("width"), dim("height")) {
                declared = Some((w, h));
            }
        }
    }
    match version {
        Some((_, v)) if v == "3.0" || v == "EVT3" => {}
        found => {
            let (offset, found) = found.unwrap_or((0, "none".to_string()));
            return Err(EventError::UnsupportedVersion {
                file: file.to_path_buf(),
                offset,
                format: "Prophesee EVT",
                found,
                supported: "3.0",
            });
        }
    }

    let data_at = cur.pos();
    let data = cur.rest();
    let whole = data.len() / 2 * 2;
    if whole != data.len() {
        return Err(
            Cursor::with_base(&data[whole..], file, (data_at + whole) as u64)
                .truncated(2, "EVT 3.0 word (2 bytes)"),
        );
    }
    let mut rec = Recording::default();
    let mut sink = Sink::new(&mut rec, file, opts, declared);
    let (mut y, mut base_x, mut pol) = (0i64, 0i64, false);
    let (mut low, mut high, mut epoch) = (0i64, 0i64, 0i64);
    for i in 0..data.len() / 2 {
        let w = le_u16(data, 2 * i);
        let offset = (data_at + 2 * i) as u64;
        let v = i64::from(w & 0x7FF);
        let t = epoch + ((high << 12) | low);
        match w >> 12 {
            0x0 => y = v,
            0x2 => sink.push(offset, t, v, y, w & 0x800 != 0)?,
            0x3 => (base_x, pol) = (v, w & 0x800 != 0),
            0x4 | 0x5 => {
                let bits = if w >> 12 == 0x4 { 12 } else { 8 };
                for b in 0..bits {
                    if w & (1 << b) != 0 {
                        sink.push(offset, t, base_x + b, y, pol)?;
                    }
                }
                base_x += bits;
            }
            0x6 => low = i64::from(w & 0xFFF),
            0x8 => {
                let h = i64::from(w & 0xFFF);
                // The 24-bit time wraps every 16.8 s; a smaller high half means one wrap.
                if h < high {
                    epoch += 1 << 24;
                }
                high = h;
            }
            0xA => sink.report().triggers += 1,
            _ => sink.report().other += 1,
        }
    }
    Ok(rec)
}

fn geometry(value: &str) -> Option<(u16, u16)> {
    let (w, h) = value.trim().split_once('x')?;
    Some((w.trim().parse().ok()?, h.trim().parse().ok()?))
}

/// Older headers name only the HAL plugin; Gen4.1 and IMX636 are 1280 x 720, Gen3.1 640 x 480.
fn plugin_sensor(value: &str) -> Option<(u16, u16)> {
    let v = value.to_ascii_lowercase();
    if v.contains("gen41") || v.contains("imx636") {
        Some((1280, 720))
    } else if v.contains("gen31") {
        Some((640, 480))
    } else {
        None
    }
}
