//! Writers for small synthetic files in every supported format, built from the documented byte
//! layouts (not from the readers), so round-trips check the readers against the specification.

use snn_runtime::events::Events;

/// A pseudo-random but deterministic event list: `n` events on a `w x h` sensor, `dt` µs apart.
pub fn synthetic(n: usize, w: u16, h: u16, t0: i64, dt: i64) -> Events {
    let mut ev = Events::new(Some((w, h)));
    for i in 0..n {
        let k = i as u64 * 2_654_435_761;
        ev.push((
            t0 + i as i64 * dt,
            (k % u64::from(w)) as u16,
            ((k >> 16) % u64::from(h)) as u16,
            (k >> 7 & 1) as u8,
        ));
    }
    ev
}

// ---------------------------------------------------------------- AEDAT 2.0

/// An AEDAT 2.0 DAVIS file: header lines, then big-endian records; `imu_every` inserts one
/// IMU word (bit 31, bits 10-11) before every n-th event.
pub fn aedat2(ev: &Events, chip: &str, imu_every: usize) -> Vec<u8> {
    let mut out = b"#!AER-DAT2.0\r\n# This is a raw AE data file created by a test\r\n".to_vec();
    out.extend_from_slice(
        format!("# AEChip: {chip}\r\n#End of Preferences for this AEChip\r\n").as_bytes(),
    );
    for i in 0..ev.len() {
        if imu_every > 0 && i % imu_every == 0 {
            out.extend_from_slice(&(0x8000_0C00u32).to_be_bytes());
            out.extend_from_slice(&(ev.t[i] as u32).to_be_bytes());
        }
        let a =
            (u32::from(ev.y[i]) << 22) | (u32::from(ev.x[i]) << 12) | (u32::from(ev.p[i]) << 11);
        out.extend_from_slice(&a.to_be_bytes());
        out.extend_from_slice(&(ev.t[i] as u32).to_be_bytes());
    }
    out
}

// ---------------------------------------------------------------- AEDAT 3.1

pub const AEDAT31_HEADER: &str = "#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#Start-Time: 2017-01-01 00:00:00 (TZ+0000)\r\n#!END-HEADER\r\n";

/// One AEDAT 3.1 packet header (28 bytes, little-endian).
#[allow(clippy::too_many_arguments)]
pub fn aedat31_packet_header(
    ty: u16,
    size: u32,
    ts_offset: u32,
    overflow: u32,
    capacity: u32,
    number: u32,
    valid: u32,
) -> Vec<u8> {
    let mut h = Vec::with_capacity(28);
    h.extend_from_slice(&ty.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes()); // eventSource
    for v in [size, ts_offset, overflow, capacity, number, valid] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

/// `data` word of a polarity event: valid bit 0, polarity bit 1, y bits 2.., x bits 17...
pub fn polarity_word(x: u16, y: u16, p: u8, valid: bool) -> u32 {
    (u32::from(x) << 17) | (u32::from(y) << 2) | (u32::from(p) << 1) | u32::from(valid)
}

/// An AEDAT 3.1 DVS128 recording with polarity packets of at most `per_packet` events, each
/// packet carrying `(t >> 31)` as its overflow counter; after every polarity packet comes a
/// special-event packet with one event and an IMU6 packet with two (36-byte) samples.
pub fn aedat31(ev: &Events, per_packet: usize) -> Vec<u8> {
    let mut out = AEDAT31_HEADER.as_bytes().to_vec();
    let mut i = 0;
    while i < ev.len() {
        let overflow = (ev.t[i] >> 31) as u32;
        let mut j = i;
        while j < ev.len() && j - i < per_packet && (ev.t[j] >> 31) as u32 == overflow {
            j += 1;
        }
        let n = (j - i) as u32;
        out.extend(aedat31_packet_header(1, 8, 4, overflow, n, n, n));
        for k in i..j {
            out.extend_from_slice(&polarity_word(ev.x[k], ev.y[k], ev.p[k], true).to_le_bytes());
            out.extend_from_slice(&((ev.t[k] & 0x7FFF_FFFF) as u32).to_le_bytes());
        }
        out.extend(aedat31_packet_header(0, 8, 4, overflow, 1, 1, 1));
        out.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        out.extend(aedat31_packet_header(3, 36, 32, overflow, 2, 2, 2));
        out.extend_from_slice(&[0u8; 72]);
        i = j;
    }
    out
}

// ---------------------------------------------------------------- AEDAT 4.0

/// The IOHeader FlatBuffer: root table with compression (i32), dataTablePosition (i64) and
/// infoNode (string), laid out by hand.
pub fn ioheader(compression: i32, data_table: i64, info: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&20u32.to_le_bytes()); // root table at 20
    b.extend_from_slice(b"IOHE");
    for v in [10u16, 20, 4, 8, 16] {
        b.extend_from_slice(&v.to_le_bytes()); // vtable at 8: len, table len, 3 field offsets
    }
    b.extend_from_slice(&[0, 0]); // pad to 20
    b.extend_from_slice(&12i32.to_le_bytes()); // table 20: soffset to vtable at 8
    b.extend_from_slice(&compression.to_le_bytes()); // 24
    b.extend_from_slice(&data_table.to_le_bytes()); // 28
    b.extend_from_slice(&4u32.to_le_bytes()); // 36: string at 40
    b.extend_from_slice(&(info.len() as u32).to_le_bytes());
    b.extend_from_slice(info.as_bytes());
    b.push(0);
    b
}

pub fn info_node(w: u16, h: u16) -> String {
    format!(
        r#"<dv version="2.0"><node name="outInfo" path="/mainloop/Recorder/outInfo/"><node name="0" path="/mainloop/Recorder/outInfo/0/"><attr key="compression" type="string">LZ4</attr><attr key="typeIdentifier" type="string">EVTS</attr><node name="info" path="/mainloop/Recorder/outInfo/0/info/"><attr key="sizeX" type="int">{w}</attr><attr key="sizeY" type="int">{h}</attr></node></node><node name="2" path="/mainloop/Recorder/outInfo/2/"><attr key="typeIdentifier" type="string">IMUS</attr></node></node></dv>"#
    )
}

/// A size-prefixed packet FlatBuffer whose root table has one vector field of `count` elements.
pub fn packet_flatbuffer(ident: &[u8; 4], elems: &[u8], count: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0u32.to_le_bytes()); // size prefix, patched below
    b.extend_from_slice(&14u32.to_le_bytes()); // root at 4 + 14 = 18
    b.extend_from_slice(ident);
    for v in [6u16, 8, 4] {
        b.extend_from_slice(&v.to_le_bytes()); // vtable at 12
    }
    b.extend_from_slice(&6i32.to_le_bytes()); // table at 18 -> vtable 12
    b.extend_from_slice(&6u32.to_le_bytes()); // field 0 at 22 -> vector at 28
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(elems);
    let size = (b.len() - 4) as u32;
    b[..4].copy_from_slice(&size.to_le_bytes());
    b
}

/// Compression codes as in IOHeader: 0 none, 1 LZ4, 3 zstd.
pub fn compress(code: i32, raw: &[u8]) -> Vec<u8> {
    match code {
        0 => raw.to_vec(),
        1 => {
            use std::io::Write;
            let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
            enc.write_all(raw).expect("lz4");
            enc.finish().expect("lz4")
        }
        3 => ruzstd::encoding::compress_to_vec(raw, ruzstd::encoding::CompressionLevel::Fastest),
        _ => unreachable!(),
    }
}

/// An AEDAT 4 file with event packets of `per_packet` events and an IMU packet (3 samples) after
/// each; `with_table` appends a fake file data table and records its position.
pub fn aedat4(ev: &Events, per_packet: usize, code: i32, with_table: bool) -> Vec<u8> {
    let (w, h) = ev.sensor().expect("sensor");
    let mut packets = Vec::new();
    for chunk in (0..ev.len()).collect::<Vec<_>>().chunks(per_packet) {
        let mut elems = Vec::new();
        for &i in chunk {
            elems.extend_from_slice(&ev.t[i].to_le_bytes());
            elems.extend_from_slice(&(ev.x[i] as i16).to_le_bytes());
            elems.extend_from_slice(&(ev.y[i] as i16).to_le_bytes());
            elems.extend_from_slice(&[ev.p[i], 0, 0, 0]);
        }
        for (id, fb) in [
            (0i32, packet_flatbuffer(b"EVTS", &elems, chunk.len() as u32)),
            (2, packet_flatbuffer(b"IMUS", &[0; 12], 3)),
        ] {
            let payload = compress(code, &fb);
            packets.extend_from_slice(&id.to_le_bytes());
            packets.extend_from_slice(&(payload.len() as i32).to_le_bytes());
            packets.extend_from_slice(&payload);
        }
    }
    let info = info_node(w, h);
    let header_len = ioheader(code, 0, &info).len();
    let start = 14 + 4 + header_len;
    let table = if with_table {
        (start + packets.len()) as i64
    } else {
        -1
    };
    let header = ioheader(code, table, &info);
    let mut out = b"#!AER-DAT4.0\r\n".to_vec();
    out.extend_from_slice(&(header.len() as i32).to_le_bytes());
    out.extend(header);
    out.extend(packets);
    if with_table {
        out.extend_from_slice(&compress(1, b"file data table, not a packet"));
    }
    out
}

// ---------------------------------------------------------------- N-MNIST

pub fn nmnist(ev: &Events) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..ev.len() {
        let t = ev.t[i] as u32;
        out.extend_from_slice(&[
            ev.x[i] as u8,
            ev.y[i] as u8,
            (ev.p[i] << 7) | ((t >> 16) & 0x7F) as u8,
            (t >> 8) as u8,
            t as u8,
        ]);
    }
    out
}

// ---------------------------------------------------------------- NumPy

/// A `.npy` v1.0 file with the given header dict and raw data, padded as NumPy does.
pub fn npy(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A structured event array `[('p','|u1'),('', '|V1'),('y','>u2'),('x','<i4'),('t','>i8')]`:
/// mixed widths, both endiannesses and a padding field, in an unusual field order.
pub fn npy_structured(ev: &Events) -> Vec<u8> {
    let mut data = Vec::new();
    for i in 0..ev.len() {
        data.push(ev.p[i]);
        data.push(0xEE);
        data.extend_from_slice(&ev.y[i].to_be_bytes());
        data.extend_from_slice(&i32::from(ev.x[i]).to_le_bytes());
        data.extend_from_slice(&ev.t[i].to_be_bytes());
    }
    let dict = format!(
        "{{'descr': [('p', '|u1'), ('', '|V1'), ('y', '>u2'), ('x', '<i4'), ('t', '>i8')], 'fortran_order': False, 'shape': ({},), }}",
        ev.len()
    );
    npy(&dict, &data)
}

/// A 1-D plain array `.npy` of little-endian values `vals` with type string `ty` (`<i8`, `<u2`...).
pub fn npy_column(ty: &str, vals: impl Iterator<Item = i64>) -> Vec<u8> {
    let size: usize = ty[2..].parse().expect("size");
    let mut data = Vec::new();
    let mut n = 0;
    for v in vals {
        data.extend_from_slice(&v.to_le_bytes()[..size]);
        n += 1;
    }
    npy(
        &format!("{{'descr': '{ty}', 'fortran_order': False, 'shape': ({n},), }}"),
        &data,
    )
}

/// A zip archive of named members; `deflate` compresses them.
pub fn zip(members: &[(&str, Vec<u8>)], deflate: bool) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in members {
        w.start_file(*name, opts).expect("zip member");
        w.write_all(data).expect("zip write");
    }
    w.finish().expect("zip finish").into_inner()
}

// ---------------------------------------------------------------- Prophesee EVT 3.0

/// An EVT 3.0 file: each event as TIME_HIGH, TIME_LOW, ADDR_Y, ADDR_X words, except that runs of
/// same-time, same-row, same-polarity events at x, x+1, ... use VECT_BASE_X + VECT_12/VECT_8 masks.
pub fn evt3(ev: &Events) -> Vec<u8> {
    let (w, h) = ev.sensor().expect("sensor");
    let mut out = format!("% evt 3.0\n% geometry {w}x{h}\n% end\n").into_bytes();
    let mut word = |v: u16| out.extend_from_slice(&v.to_le_bytes());
    let mut i = 0;
    while i < ev.len() {
        let t = ev.t[i] & 0xFF_FFFF;
        word(0x8000 | (t >> 12) as u16);
        word(0x6000 | (t & 0xFFF) as u16);
        word(ev.y[i]);
        let mut j = i + 1;
        while j < ev.len()
            && j - i < 12
            && ev.t[j] == ev.t[i]
            && ev.y[j] == ev.y[i]
            && ev.p[j] == ev.p[i]
            && usize::from(ev.x[j]) == usize::from(ev.x[i]) + (j - i)
        {
            j += 1;
        }
        let pol = u16::from(ev.p[i]) << 11;
        if j - i >= 2 {
            word(0x3000 | pol | ev.x[i]);
            let mask = (1u16 << (j - i)) - 1;
            word(if j - i > 8 {
                0x4000 | mask
            } else {
                0x5000 | mask
            });
        } else {
            word(0x2000 | pol | ev.x[i]);
        }
        i = j;
    }
    out
}
