//! AEDAT 2.0 (jAER) reader: `#` text header, then big-endian `(address u32, timestamp u32)` records.
//! Decodes DAVIS and DVS128 polarity addresses; counts IMU, APS and special words instead of returning them.

use std::path::Path;

use super::cursor::{Cursor, be_u32};
use super::error::EventError;
use super::io::map_file;
use super::types::{ReadOptions, Recording, Sink};

const MAGIC: &[u8] = b"#!AER-DAT";

/// Address layout, chosen from the header's `# AEChip:` class name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chip {
    /// DAVIS family: bit 31 marks APS/IMU words, bit 10 special events.
    Davis,
    /// DVS128: `x = (a >> 1) & 0x7F`, `y = (a >> 8) & 0x7F`, `p = a & 1`, bit 15 special.
    Dvs128,
}

/// Reads an AEDAT 2.0 file through a memory map.
pub fn read(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Recording, EventError> {
    let path = path.as_ref();
    let bytes = map_file(path)?;
    decode(&bytes, path, opts)
}

/// Decodes AEDAT 2.0 bytes held in memory; errors name the file as `<memory>`.
pub fn from_bytes(bytes: &[u8], opts: &ReadOptions) -> Result<Recording, EventError> {
    decode(bytes, Path::new("<memory>"), opts)
}

pub(crate) fn decode(
    bytes: &[u8],
    file: &Path,
    opts: &ReadOptions,
) -> Result<Recording, EventError> {
    let mut cur = Cursor::new(bytes, file);
    let first = cur.line("AEDAT 2.0 magic line")?;
    let Some(version) = first.strip_prefix(MAGIC) else {
        return Err(EventError::corrupt(file, 0, "missing `#!AER-DAT` magic"));
    };
    if version != b"2.0" {
        return Err(EventError::UnsupportedVersion {
            file: file.to_path_buf(),
            offset: MAGIC.len() as u64,
            format: "AEDAT",
            found: String::from_utf8_lossy(version).into_owned(),
            supported: "2.0 (this reader), 3.1 and 4.0 (see read_events)",
        });
    }
    let mut chip_name = None;
    // jAER writes only `#` lines before the data, and its own reader stops at the first byte that
    // is not `#`; a data word starting with 0x23 would be misread the same way by every tool.
    while cur.peek() == Some(b'#') {
        let line = cur.line("AEDAT 2.0 header line")?;
        if let Some(rest) = line.strip_prefix(b"# AEChip:") {
            chip_name = Some(String::from_utf8_lossy(rest).trim().to_string());
        }
    }
    let (chip, declared) = chip_layout(chip_name.as_deref());

    let data_start = cur.pos();
    let data = cur.rest();
    let whole = data.len() / 8 * 8;
    if whole != data.len() {
        return Err(
            Cursor::with_base(&data[whole..], file, (data_start + whole) as u64)
                .truncated(8, "AEDAT 2.0 record (address, timestamp)"),
        );
    }
    let mut rec = Recording::default();
    let mut sink = Sink::new(&mut rec, file, opts, declared);
    sink.reserve(data.len() / 8);
    for (i, rec) in data.chunks_exact(8).enumerate() {
        let offset = (data_start + i * 8) as u64;
        let a = be_u32(rec, 0);
        let t = i64::from(be_u32(rec, 4));
        match chip {
            Chip::Davis => {
                if a & (1 << 31) != 0 {
                    // APS and IMU readouts share bit 31; bits 10 and 11 both set mark IMU words.
                    if a & (0b11 << 10) == (0b11 << 10) {
                        sink.report().imu += 1;
                    } else {
                        sink.report().aps += 1;
                    }
                } else if a & (1 << 10) != 0 {
                    sink.report().special += 1;
                } else {
                    let (x, y, p) = ((a >> 12) & 0x3FF, (a >> 22) & 0x1FF, (a >> 11) & 1);
                    sink.push(offset, t, x.into(), y.into(), p == 1)?;
                }
            }
            Chip::Dvs128 => {
                if a & (1 << 15) != 0 {
                    sink.report().special += 1;
                } else {
                    let (x, y, p) = ((a >> 1) & 0x7F, (a >> 8) & 0x7F, a & 1);
                    sink.push(offset, t, x.into(), y.into(), p == 1)?;
                }
            }
        }
    }
    Ok(rec)
}

/// Sensor size and address layout from a jAER chip class name such as
/// `eu.seebetter.ini.chips.davis.DAVIS240C`. Unknown chips get the DAVIS layout (the jAER default
/// for AEDAT 2.0 since 2014) and no declared size.
fn chip_layout(name: Option<&str>) -> (Chip, Option<(u16, u16)>) {
    let Some(name) = name else {
        return (Chip::Davis, None);
    };
    let class = name.rsplit('.').next().unwrap_or(name).to_ascii_uppercase();
    let size = if class.contains("DVS128") || class.contains("DAVIS128") {
        Some((128, 128))
    } else if class.contains("DAVIS240") || class.contains("SBRET10") {
        Some((240, 180))
    } else if class.contains("DAVIS346") {
        Some((346, 260))
    } else if class.contains("DAVIS640") {
        Some((640, 480))
    } else {
        None
    };
    let chip = if class.starts_with("DVS128") {
        Chip::Dvs128
    } else {
        Chip::Davis
    };
    (chip, size)
}
