//! AEDAT 3.1 reader (cAER / DVS128 Gesture): `#` text header to `#!END-HEADER`, then packets of a
//! 28-byte little-endian header plus fixed-size events; polarity events are returned, others counted.

use std::path::Path;

use super::cursor::{Cursor, le_u32};
use super::error::EventError;
use super::io::map_file;
use super::types::{ReadOptions, Recording, Sink};

const MAGIC: &[u8] = b"#!AER-DAT";
const END_HEADER: &[u8] = b"#!END-HEADER";
const POLARITY: u16 = 1;

/// Reads an AEDAT 3.x file through a memory map.
pub fn read(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Recording, EventError> {
    let path = path.as_ref();
    let bytes = map_file(path)?;
    decode(&bytes, path, opts)
}

/// Decodes AEDAT 3.x bytes held in memory; errors name the file as `<memory>`.
pub fn from_bytes(bytes: &[u8], opts: &ReadOptions) -> Result<Recording, EventError> {
    decode(bytes, Path::new("<memory>"), opts)
}

pub(crate) fn decode(
    bytes: &[u8],
    file: &Path,
    opts: &ReadOptions,
) -> Result<Recording, EventError> {
    let mut cur = Cursor::new(bytes, file);
    let first = cur.line("AEDAT 3 magic line")?;
    let Some(version) = first.strip_prefix(MAGIC) else {
        return Err(EventError::corrupt(file, 0, "missing `#!AER-DAT` magic"));
    };
    // 3.0 and 3.1 share the packet layout; 3.1 only fixed header details.
    if version != b"3.1" && version != b"3.0" {
        return Err(EventError::UnsupportedVersion {
            file: file.to_path_buf(),
            offset: MAGIC.len() as u64,
            format: "AEDAT",
            found: String::from_utf8_lossy(version).into_owned(),
            supported: "3.0 and 3.1 (this reader), 2.0 and 4.0 (see read_events)",
        });
    }
    let mut declared = None;
    loop {
        let at = cur.offset();
        let line = cur.line("AEDAT 3 header line (no `#!END-HEADER`)")?;
        if line.starts_with(END_HEADER) {
            break;
        }
        if !line.starts_with(b"#") {
            return Err(EventError::corrupt(
                file,
                at,
                "header line does not start with `#` before `#!END-HEADER`",
            ));
        }
        let text = String::from_utf8_lossy(line);
        if declared.is_none()
            && let Some((key, value)) = text.trim_start_matches(['#', ' ', '-']).split_once(':')
            && key.trim_start().starts_with("Source")
        {
            declared = source_size(value);
        }
    }

    let mut rec = Recording::default();
    let mut sink = Sink::new(&mut rec, file, opts, declared);
    while !cur.is_empty() {
        let header_at = cur.offset();
        let h = cur.take(28, "AEDAT 3 packet header (28 bytes)")?;
        let event_type = u16::from_le_bytes([h[0], h[1]]);
        let (size, ts_offset, overflow) = (le_u32(h, 4), le_u32(h, 8), le_u32(h, 12));
        let (capacity, number) = (le_u32(h, 16), le_u32(h, 20));
        if number > capacity {
            return Err(EventError::corrupt(
                file,
                header_at,
                format!("packet holds {number} events but its capacity is {capacity}"),
            ));
        }
        let len = u64::from(capacity) * u64::from(size);
        let len = usize::try_from(len)
            .map_err(|_| EventError::corrupt(file, header_at, "packet size overflows"))?;
        let data_at = cur.offset();
        let data = cur.take(
            len,
            "AEDAT 3 packet events (eventCapacity x eventSize bytes)",
        )?;
        let number = number as usize;
        let report = sink.report();
        match event_type {
            POLARITY => {
                if size != 8 || ts_offset != 4 {
                    return Err(EventError::corrupt(
                        file,
                        header_at,
                        format!(
                            "polarity packet with eventSize {size} and eventTSOffset {ts_offset} (expected 8 and 4)"
                        ),
                    ));
                }
                sink.reserve(number);
                // cAER timestamps are 31-bit; the packet's overflow counter supplies the high bits.
                let high = i64::from(overflow) << 31;
                for (i, ev) in data.chunks_exact(8).take(number).enumerate() {
                    let d = le_u32(ev, 0);
                    if d & 1 == 0 {
                        sink.report().invalid += 1;
                        continue;
                    }
                    let t = high | i64::from(le_u32(ev, 4) & 0x7FFF_FFFF);
                    let (x, y, p) = ((d >> 17) & 0x1FFF, (d >> 2) & 0x1FFF, (d >> 1) & 1);
                    sink.push(data_at + 8 * i as u64, t, x.into(), y.into(), p == 1)?;
                }
            }
            0 => report.special += number as u64,
            2 => report.frames += number as u64,
            3 | 4 => report.imu += number as u64,
            _ => report.other += number as u64,
        }
    }
    Ok(rec)
}

/// Sensor size from a header `Source` value such as ` DVS128` or ` DAVIS240C`.
fn source_size(value: &str) -> Option<(u16, u16)> {
    let v = value.trim().to_ascii_uppercase();
    if v.starts_with("DVS128") || v.starts_with("DAVIS128") {
        Some((128, 128))
    } else if v.starts_with("DAVIS240") {
        Some((240, 180))
    } else if v.starts_with("DAVIS346") {
        Some((346, 260))
    } else if v.starts_with("DAVIS640") {
        Some((640, 480))
    } else {
        None
    }
}
