//! AEDAT 4.0 reader (DV / dv-processing): FlatBuffer `IOHeader`, then `(stream id, size, payload)`
//! packets, each an LZ4 frame, zstd frame or raw FlatBuffer; returns polarity events (or frames them
//! as they decode, for `EventReader::read_frames`), counts the rest.

use std::io::Read;
use std::path::Path;

use super::cursor::{Cursor, le_i64, le_u16};
use super::error::EventError;
use super::flatbuf::Buf;
use super::frame::{FrameBuffer, FrameSink, FrameSpec};
use super::io::map_file;
use super::lz4::{check_frame, decompress_frame};
use super::types::{EventSink, ReadOptions, ReadReport, Recording, Sink};

const MAGIC: &[u8] = b"#!AER-DAT";
/// Largest decompressed packet accepted; DV writes packets of a few hundred kB, so anything
/// near this is a corrupt length field, not data.
const MAX_PACKET: u64 = 1 << 30;
/// Bytes of an APS frame packet decoded to read its FlatBuffer header: the root table and its
/// vtable sit at the front (FlatBuffers builds back to front), the pixels after them.
const FRAME_HEADER_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Lz4,
    Zstd,
}

#[derive(Debug)]
struct Stream {
    id: i32,
    type_id: [u8; 4],
    size: Option<(u16, u16)>,
}

/// Reads an AEDAT 4.0 file through a memory map, decompressing one packet at a time.
pub fn read(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Recording, EventError> {
    let path = path.as_ref();
    let bytes = map_file(path)?;
    decode(&bytes, path, opts)
}

/// Decodes AEDAT 4.0 bytes held in memory; errors name the file as `<memory>`.
pub fn from_bytes(bytes: &[u8], opts: &ReadOptions) -> Result<Recording, EventError> {
    decode(bytes, Path::new("<memory>"), opts)
}

pub(crate) fn decode(
    bytes: &[u8],
    file: &Path,
    opts: &ReadOptions,
) -> Result<Recording, EventError> {
    let mut rec = Recording::default();
    decode_into(bytes, file, opts, &mut rec, &mut Vec::new())?;
    Ok(rec)
}

/// [`decode`] into `out`, reusing its columns and `scratch` for decompressed packets.
pub(crate) fn decode_into(
    bytes: &[u8],
    file: &Path,
    opts: &ReadOptions,
    out: &mut Recording,
    scratch: &mut Vec<u8>,
) -> Result<(), EventError> {
    let header = parse_header(bytes, file)?;
    let mut sink = Sink::new(out, file, opts, header.declared);
    decode_packets(header, file, &mut sink, scratch)
}

/// Reads and frames in one pass: events go from each decompressed packet straight into `out`
/// (see [`FrameSink`]), with the checks and errors of [`decode`]. `Ok(None)` (after reading
/// only the header) when the spec is not one that path takes; the caller then reads and
/// frames separately.
pub(crate) fn frame_into(
    bytes: &[u8],
    file: &Path,
    opts: &ReadOptions,
    spec: &FrameSpec,
    out: &mut FrameBuffer,
    scratch: &mut Vec<u8>,
) -> Result<Option<(usize, ReadReport)>, EventError> {
    let header = parse_header(bytes, file)?;
    let Some(mut sink) = FrameSink::new(file, opts, header.declared, spec, out) else {
        return Ok(None);
    };
    decode_packets(header, file, &mut sink, scratch)?;
    Ok(Some(sink.finish()))
}

/// The file header: how packets are compressed, the declared streams, the event sensor size
/// and the packet area.
struct Header<'a> {
    compression: Compression,
    streams: Vec<Stream>,
    declared: Option<(u16, u16)>,
    packets: Cursor<'a>,
}

fn parse_header<'a>(bytes: &'a [u8], file: &'a Path) -> Result<Header<'a>, EventError> {
    let mut cur = Cursor::new(bytes, file);
    let first = cur.line("AEDAT 4 magic line")?;
    let Some(version) = first.strip_prefix(MAGIC) else {
        return Err(EventError::corrupt(file, 0, "missing `#!AER-DAT` magic"));
    };
    if version != b"4.0" {
        return Err(EventError::UnsupportedVersion {
            file: file.to_path_buf(),
            offset: MAGIC.len() as u64,
            format: "AEDAT",
            found: String::from_utf8_lossy(version).into_owned(),
            supported: "4.0 (this reader), 2.0 and 3.1 (see read_events)",
        });
    }
    let header_at = cur.offset();
    let header_len = cur.i32_le("IOHeader size")?;
    let header_len = usize::try_from(header_len)
        .map_err(|_| EventError::corrupt(file, header_at, "negative IOHeader size"))?;
    let header = Buf {
        bytes: cur.take(header_len, "IOHeader")?,
        file,
        offset: header_at + 4,
        what: "IOHeader",
    };
    if header.identifier(0)? != b"IOHE" {
        return Err(header.err(4, "file identifier is not `IOHE`"));
    }
    let root = header.root(0)?;
    let compression = match root.i32_or(0, 0)? {
        0 => Compression::None,
        1 | 2 => Compression::Lz4,
        3 | 4 => Compression::Zstd,
        c => return Err(header.err(0, &format!("unknown compression type {c}"))),
    };
    let data_table = root.i64_or(1, -1)?;
    let streams = parse_streams(&String::from_utf8_lossy(root.string(2)?));
    if streams.is_empty() {
        return Err(header.err(0, "infoNode declares no output streams"));
    }

    // Packets end where the (headerless) file data table starts; -1 means none was written.
    let end = match usize::try_from(data_table) {
        Ok(pos) if pos >= cur.pos() && pos <= bytes.len() => pos,
        Ok(_) => {
            return Err(header.err(
                0,
                &format!("dataTablePosition {data_table} lies outside the packet area"),
            ));
        }
        Err(_) => bytes.len(),
    };
    let packets = Cursor::with_base(&bytes[cur.pos()..end], file, cur.offset());
    // The first event stream declares the sensor, even for a recording without event packets.
    let declared = streams
        .iter()
        .find(|s| &s.type_id == b"EVTS")
        .and_then(|s| s.size);
    Ok(Header {
        compression,
        streams,
        declared,
        packets,
    })
}

/// Decodes every packet after the header, handing polarity events to `sink`.
fn decode_packets<S: EventSink>(
    header: Header<'_>,
    file: &Path,
    sink: &mut S,
    scratch: &mut Vec<u8>,
) -> Result<(), EventError> {
    let Header {
        compression,
        streams,
        mut packets,
        ..
    } = header;
    while !packets.is_empty() {
        let at = packets.offset();
        let id = packets.i32_le("packet stream id")?;
        let size = packets.i32_le("packet size")?;
        let size = usize::try_from(size)
            .map_err(|_| EventError::corrupt(file, at, "negative packet size"))?;
        let raw = packets.take(size, "packet payload")?;
        let Some(stream) = streams.iter().find(|s| s.id == id) else {
            return Err(EventError::corrupt(
                file,
                at,
                format!("packet for stream {id}, which the header does not declare"),
            ));
        };
        // APS frames are only counted: check that the packet decodes and read its FlatBuffer
        // header, without writing out the pixels. Whatever this cannot settle takes the full path.
        if &stream.type_id == b"FRME"
            && compression == Compression::Lz4
            && let Some((k, total)) = check_frame(raw, scratch, FRAME_HEADER_BYTES)
            && total as u64 <= MAX_PACKET
        {
            let buf = Buf {
                bytes: &scratch[..k],
                file,
                offset: at,
                what: "packet",
            };
            if buf.identifier(4).ok() == Some(b"FRME") && buf.root(4).is_ok() {
                sink.report().frames += 1;
                continue;
            }
        }
        let payload = decompress(compression, raw, scratch).map_err(|e| {
            EventError::corrupt(
                file,
                at,
                format!("cannot decompress packet ({compression:?}): {e}"),
            )
        })?;
        let buf = Buf {
            bytes: payload,
            file,
            offset: at,
            what: "packet",
        };
        if buf.identifier(4)? != stream.type_id {
            return Err(buf.err(
                8,
                &format!(
                    "identifier differs from stream type {}",
                    String::from_utf8_lossy(&stream.type_id)
                ),
            ));
        }
        let root = buf.root(4)?;
        match &stream.type_id {
            b"EVTS" => {
                // struct Event { int64 t; int16 x; int16 y; bool on; pad[3] }
                let (elems, _) = root.vector(0, 16)?;
                sink.extend(elems.chunks_exact(16).map(|e| {
                    let (x, y) = (le_u16(e, 8) as i16, le_u16(e, 10) as i16);
                    // Errors name the packet's file offset: events live in its decompressed payload.
                    (at, le_i64(e, 0), x.into(), y.into(), e[12] != 0)
                }))?;
            }
            b"IMUS" => sink.report().imu += root.vector(0, 4)?.1 as u64,
            b"TRIG" => sink.report().triggers += root.vector(0, 16)?.1 as u64,
            b"FRME" => sink.report().frames += 1,
            _ => sink.report().other += 1,
        }
    }
    Ok(())
}

fn decompress<'a>(
    c: Compression,
    raw: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> std::io::Result<&'a [u8]> {
    match c {
        Compression::None => return Ok(raw),
        Compression::Lz4 => {
            // `scratch` keeps its length across packets (only the first `n` bytes are this
            // packet's), so it is zero-filled once per file rather than once per packet.
            let n = decompress_frame(raw, scratch, MAX_PACKET)?;
            return Ok(&scratch[..n]);
        }
        Compression::Zstd => {
            scratch.clear();
            let decoder =
                ruzstd::decoding::StreamingDecoder::new(raw).map_err(std::io::Error::other)?;
            decoder.take(MAX_PACKET).read_to_end(scratch)?;
        }
    }
    Ok(scratch)
}

/// Output streams from the IOHeader's `infoNode` XML: each `<node>` directly under `outInfo/`
/// with its `typeIdentifier` and, for event streams, `sizeX`/`sizeY`.
fn parse_streams(xml: &str) -> Vec<Stream> {
    let marker = "/outInfo/";
    let mut starts = Vec::new();
    let mut from = 0;
    while let Some(i) = xml[from..].find("path=\"") {
        let p = from + i + 6;
        let path = xml[p..].split('"').next().unwrap_or("");
        if let Some(rest) = path.split(marker).nth(1)
            && let Some(id) = rest.strip_suffix('/')
            && let Ok(id) = id.parse::<i32>()
        {
            starts.push((p, id));
        }
        from = p;
    }
    let mut out = Vec::new();
    for (k, &(p, id)) in starts.iter().enumerate() {
        let text = &xml[p..starts.get(k + 1).map_or(xml.len(), |s| s.0)];
        let Some(t) = attr(text, "typeIdentifier") else {
            continue;
        };
        let Ok(type_id) = <[u8; 4]>::try_from(t.as_bytes()) else {
            continue;
        };
        let dim = |key| attr(text, key).and_then(|v| v.parse::<u16>().ok());
        let size = dim("sizeX").zip(dim("sizeY"));
        out.push(Stream { id, type_id, size });
    }
    out
}

fn attr<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let i = text.find(&format!("key=\"{key}\""))?;
    let rest = &text[i..];
    let open = rest.find('>')? + 1;
    let close = rest[open..].find('<')?;
    Some(rest[open..open + close].trim())
}
