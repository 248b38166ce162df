//! LZ4 frame decompression for AEDAT 4 packets into one reused buffer.
//!
//! DV writes every packet as its own small LZ4 frame (no checksums, no content size, 64 KB
//! blocks). `lz4_flex::frame::FrameDecoder` allocates its block buffers per frame and copies
//! every block out through `io::Read`, which cost more than the decompression itself (profiled:
//! memset + memmove + mmap/munmap of the buffers ≈ 45 % of reading the bundled recording).
//! [`decompress_frame`] decodes that common layout block by block straight into the caller's
//! buffer with `lz4_flex::block`. Anything it does not handle, or any error, goes to
//! `FrameDecoder` instead, so what is accepted and every error message stay exactly
//! `FrameDecoder`'s.

use std::io::Read;

const MAGIC: u32 = 0x184D_2204;
/// LZ4 match offsets are 16-bit: no match reaches further back than this.
const WINDOW: usize = 64 * 1024;

/// Decompresses the LZ4 frame(s) in `raw` into `out[..n]` and returns `n`, reading at most
/// `limit` bytes of output (as `FrameDecoder::take(limit)` does). `out` keeps its length
/// between calls so that its zero-fill is paid once.
pub(crate) fn decompress_frame(
    raw: &[u8],
    out: &mut Vec<u8>,
    limit: u64,
) -> std::io::Result<usize> {
    if let Some(n) = fast(raw, out).filter(|&n| n as u64 <= limit) {
        return Ok(n);
    }
    // The reference path: same bytes out, or the error to report.
    let mut all = Vec::new();
    lz4_flex::frame::FrameDecoder::new(raw)
        .take(limit)
        .read_to_end(&mut all)?;
    let n = all.len();
    if out.len() < n {
        out.resize(n, 0);
    }
    out[..n].copy_from_slice(&all);
    Ok(n)
}

/// One frame with independent or linked blocks, no checksums, no content size, no dictionary,
/// ending with an end mark exactly at the end of `raw`. `None` for anything else or any fault.
fn fast(raw: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let (header, mut rest) = frame_header(raw)?;
    let mut pos = 0;
    loop {
        let Some(block) = next_block(&mut rest, header.max_block)? else {
            return Some(pos);
        };
        let max_block = header.max_block;
        if out.len() < pos + max_block {
            out.resize(pos + max_block, 0);
        }
        let (before, after) = out.split_at_mut(pos);
        let room = &mut after[..max_block];
        let n = match block {
            Block::Stored(bytes) => {
                room[..bytes.len()].copy_from_slice(bytes);
                bytes.len()
            }
            Block::Compressed(bytes) => {
                // Linked blocks may copy from the previous 64 KB of output, as the frame
                // decoder's prefix/dictionary does; independent blocks only from themselves.
                let dict = if header.linked {
                    &before[pos.saturating_sub(WINDOW)..]
                } else {
                    &[][..]
                };
                lz4_flex::block::decompress_into_with_dict(bytes, room, dict).ok()?
            }
        };
        pos += n;
    }
}

/// Checks that the frame in `raw` decodes, without writing its output, and puts at least the
/// first `want` bytes of that output (fewer if the first block is shorter) in `out[..k]`.
/// Returns `(k, total decompressed length)`, or `None` for a frame [`fast`] would not take, or
/// one that any rule of lz4_flex's decoder might reject: the caller then decompresses it fully.
///
/// For AEDAT 4 `FRME` packets (10.6 MB of pixels in the bundled recording) only the FlatBuffer
/// header at the start is read; the rest need only be valid, and checking is cheaper than
/// copying every literal and match.
pub(crate) fn check_frame(raw: &[u8], out: &mut Vec<u8>, want: usize) -> Option<(usize, usize)> {
    let (header, mut rest) = frame_header(raw)?;
    let (mut total, mut prefix) = (0, None);
    loop {
        let Some(block) = next_block(&mut rest, header.max_block)? else {
            return Some((prefix.unwrap_or(0), total));
        };
        // Matches may reach into earlier blocks of a linked frame (at most 64 KB back, the
        // largest offset); independent blocks start without history.
        let history = if header.linked { total } else { 0 };
        let n = match block {
            Block::Stored(bytes) => {
                if prefix.is_none() {
                    out.clear();
                    out.extend_from_slice(&bytes[..want.min(bytes.len())]);
                }
                bytes.len()
            }
            Block::Compressed(bytes) => {
                let n = block_len(bytes, header.max_block, history)?;
                if prefix.is_none() {
                    block_prefix(bytes, want, out)?;
                }
                n
            }
        };
        prefix.get_or_insert(out.len());
        total += n;
    }
}

/// What the frame descriptor says, for the frames [`fast`] takes.
struct FrameHeader {
    max_block: usize,
    linked: bool,
}

/// Parses the magic and descriptor; `None` unless version 01 with no block checksum, content
/// size, content checksum, reserved bit or dictionary id, and a valid header checksum.
fn frame_header(raw: &[u8]) -> Option<(FrameHeader, &[u8])> {
    let (&[m0, m1, m2, m3, flg, bd, hc], rest) = raw.split_first_chunk::<7>()?;
    // Bits: 7-6 version, 5 block independence, 4 block checksum, 3 content size, 2 content
    // checksum, 1 reserved, 0 dictionary id.
    if u32::from_le_bytes([m0, m1, m2, m3]) != MAGIC || flg & 0b1101_1111 != 0b0100_0000 {
        return None;
    }
    let max_block = match bd {
        0x40 => 64 << 10,
        0x50 => 256 << 10,
        0x60 => 1 << 20,
        0x70 => 4 << 20,
        _ => return None,
    };
    if hc != header_checksum(flg, bd) {
        return None;
    }
    let linked = flg & 0b0010_0000 == 0;
    Some((FrameHeader { max_block, linked }, rest))
}

/// One data block of a frame.
enum Block<'a> {
    Stored(&'a [u8]),
    Compressed(&'a [u8]),
}

/// The next block, `Some(None)` at an end mark that ends `rest` exactly, `None` otherwise
/// (a truncated block, a block over `max_block`, bytes after the end mark).
fn next_block<'a>(rest: &mut &'a [u8], max_block: usize) -> Option<Option<Block<'a>>> {
    let (&size, tail) = rest.split_first_chunk::<4>()?;
    let size = u32::from_le_bytes(size);
    if size == 0 {
        return tail.is_empty().then_some(None);
    }
    let len = (size & 0x7FFF_FFFF) as usize;
    if len > max_block || len > tail.len() {
        return None;
    }
    let (block, tail) = tail.split_at(len);
    *rest = tail;
    Some(Some(if size & 0x8000_0000 != 0 {
        Block::Stored(block)
    } else {
        Block::Compressed(block)
    }))
}

/// The decompressed length of an LZ4 block, walked with the rules of lz4_flex's
/// `decompress_internal` — a token and its length bytes present, literals within the input
/// and within `room` bytes of output, a non-zero 2-byte offset reaching no further back than
/// the block's own output plus `history` earlier bytes, matches within `room` — without
/// copying anything. `None` where any of those fails.
fn block_len(input: &[u8], room: usize, history: usize) -> Option<usize> {
    let (mut ip, mut op) = (0usize, 0usize);
    loop {
        let token = *input.get(ip)?;
        ip += 1;
        let mut literals = usize::from(token >> 4);
        if literals == 15 {
            literals += length_bytes(input, &mut ip)?;
        }
        if literals > input.len() - ip || literals > room - op {
            return None;
        }
        ip += literals;
        op += literals;
        // The last sequence of a block is literals only.
        if ip >= input.len() {
            return Some(op);
        }
        let offset = usize::from(u16::from_le_bytes([*input.get(ip)?, *input.get(ip + 1)?]));
        ip += 2;
        let mut length = 4 + usize::from(token & 0xF);
        if length == 19 {
            length += length_bytes(input, &mut ip)?;
        }
        if offset == 0 || offset > op + history || length > room - op {
            return None;
        }
        op += length;
    }
}

/// An LZ4 length continuation: bytes added up to and including the first one below 255.
fn length_bytes(input: &[u8], ip: &mut usize) -> Option<usize> {
    let mut n = 0;
    loop {
        let b = *input.get(*ip)?;
        *ip += 1;
        n += usize::from(b);
        if b != 0xFF {
            return Some(n);
        }
    }
}

/// Decodes the first block of a frame (no history) into `out` until it holds at least `want`
/// bytes or the block ends. Byte-wise and bounds-checked: it runs on a few hundred bytes.
fn block_prefix(input: &[u8], want: usize, out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    let mut ip = 0;
    while out.len() < want {
        let token = *input.get(ip)?;
        ip += 1;
        let mut literals = usize::from(token >> 4);
        if literals == 15 {
            literals += length_bytes(input, &mut ip)?;
        }
        out.extend_from_slice(input.get(ip..ip + literals)?);
        ip += literals;
        if ip >= input.len() {
            break;
        }
        let offset = usize::from(u16::from_le_bytes([*input.get(ip)?, *input.get(ip + 1)?]));
        ip += 2;
        let mut length = 4 + usize::from(token & 0xF);
        if length == 19 {
            length += length_bytes(input, &mut ip)?;
        }
        // Overlapping copies repeat the bytes just written, so copy one at a time.
        for _ in 0..length {
            if out.len() >= want {
                break;
            }
            out.push(*out.get(out.len().checked_sub(offset)?)?);
        }
    }
    Some(())
}

/// The frame descriptor's checksum byte: second byte of xxHash32 (seed 0) of `[FLG, BD]`.
fn header_checksum(flg: u8, bd: u8) -> u8 {
    const P1: u32 = 0x9E37_79B1;
    const P2: u32 = 0x85EB_CA77;
    const P3: u32 = 0xC2B2_AE3D;
    const P5: u32 = 0x1656_67B1;
    // xxHash32 of an input shorter than 4 bytes: seed + P5 + length, then one round per byte.
    let mut h = P5.wrapping_add(2);
    for b in [flg, bd] {
        h = h.wrapping_add(u32::from(b).wrapping_mul(P5));
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 15;
    h = h.wrapping_mul(P2);
    h ^= h >> 13;
    h = h.wrapping_mul(P3);
    h ^= h >> 16;
    (h >> 8) as u8
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn encode(data: &[u8], info: lz4_flex::frame::FrameInfo) -> Vec<u8> {
        let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
        enc.write_all(data).expect("encode");
        enc.finish().expect("finish")
    }

    /// Compressible data with long-range repeats, longer than several 64 KB blocks.
    fn sample(len: usize) -> Vec<u8> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if i % 3000 < 1500 {
                    (i / 3000 % 251) as u8
                } else {
                    state as u8
                }
            })
            .collect()
    }

    #[test]
    fn fast_path_takes_dv_frames_and_matches_the_frame_decoder() {
        use lz4_flex::frame::{BlockMode, BlockSize, FrameInfo};
        for len in [0, 1, 100, 65_536, 65_537, 300_000] {
            let data = sample(len);
            for mode in [BlockMode::Linked, BlockMode::Independent] {
                for size in [BlockSize::Max64KB, BlockSize::Max256KB] {
                    let raw = encode(&data, FrameInfo::new().block_mode(mode).block_size(size));
                    let mut out = Vec::new();
                    let n = fast(&raw, &mut out).expect("fast path must take this frame");
                    assert_eq!(&out[..n], &data[..], "{len} {mode:?} {size:?}");
                    // Reused, longer buffer: same result.
                    let n = decompress_frame(&raw, &mut out, u64::MAX).expect("again");
                    assert_eq!(&out[..n], &data[..]);
                }
            }
        }
    }

    /// `check_frame` may only accept what the frame decoder decodes, and must then give its
    /// length and first bytes: checked over clean frames and thousands of damaged ones.
    #[test]
    fn checking_without_output_agrees_with_the_frame_decoder() {
        use lz4_flex::frame::{BlockMode, FrameInfo};
        let reference = |bytes: &[u8]| {
            let mut v = Vec::new();
            lz4_flex::frame::FrameDecoder::new(bytes)
                .read_to_end(&mut v)
                .ok()
                .map(|_| v)
        };
        let mut accepted = 0;
        for (k, mode) in [BlockMode::Linked, BlockMode::Independent]
            .into_iter()
            .enumerate()
        {
            let data = sample(150_000 + k * 7_000);
            let raw = encode(&data, FrameInfo::new().block_mode(mode));
            let mut out = Vec::new();
            let (n, total) = check_frame(&raw, &mut out, 300).expect("clean frame");
            assert_eq!((total, &out[..n]), (data.len(), &data[..300]));
            let mut state = 0x1234_5678_9ABC_DEF1u64 + k as u64;
            let mut rand = |m: usize| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % m as u64) as usize
            };
            for trial in 0..3_000 {
                let mut bad = raw.clone();
                match trial % 3 {
                    0 => bad.truncate(rand(raw.len())),
                    1 => {
                        let at = rand(raw.len());
                        bad[at] ^= 1 << rand(8);
                    }
                    _ => {
                        for _ in 0..1 + rand(4) {
                            let at = rand(raw.len());
                            bad[at] = rand(256) as u8;
                        }
                    }
                }
                let want = 1 + rand(70_000);
                if let Some((n, total)) = check_frame(&bad, &mut out, want) {
                    accepted += 1;
                    let full = reference(&bad).unwrap_or_else(|| panic!("trial {trial}"));
                    assert_eq!(total, full.len(), "trial {trial}");
                    assert!(n >= want.min(full.len()).min(1) && n <= full.len());
                    assert_eq!(&out[..n], &full[..n], "trial {trial}");
                }
            }
        }
        // Flips inside literals keep the frame valid: some damaged frames must be accepted.
        assert!(accepted > 100, "{accepted}");
    }

    #[test]
    fn other_frames_and_faults_go_to_the_frame_decoder() {
        use lz4_flex::frame::FrameInfo;
        let data = sample(200_000);
        let checked = encode(&data, FrameInfo::new().content_checksum(true));
        let mut out = Vec::new();
        assert!(fast(&checked, &mut out).is_none());
        let n = decompress_frame(&checked, &mut out, u64::MAX).expect("checksummed");
        assert_eq!(&out[..n], &data[..]);
        // Bytes after the end mark (here a second frame): `read_to_end` on the frame decoder
        // stops at the first end mark and ignores them, so the fallback must too.
        let plain = encode(&data[..1000], FrameInfo::new());
        let two = [plain.clone(), plain.clone()].concat();
        assert!(fast(&two, &mut out).is_none());
        assert_eq!(
            decompress_frame(&two, &mut out, u64::MAX).expect("two"),
            1000
        );
        // The output limit truncates, as `take` does.
        assert_eq!(decompress_frame(&plain, &mut out, 10).expect("limit"), 10);
        // Every truncation and every single-byte corruption: same verdict and message as the
        // frame decoder alone.
        let raw = encode(&data, FrameInfo::new());
        let reference = |bytes: &[u8]| {
            let mut v = Vec::new();
            lz4_flex::frame::FrameDecoder::new(bytes)
                .read_to_end(&mut v)
                .map(|_| v)
                .map_err(|e| e.to_string())
        };
        let ours = |bytes: &[u8]| {
            let mut v = vec![7; 10];
            decompress_frame(bytes, &mut v, u64::MAX)
                .map(|n| v[..n].to_vec())
                .map_err(|e| e.to_string())
        };
        for cut in (0..raw.len()).step_by(97).chain(0..12) {
            assert_eq!(ours(&raw[..cut]), reference(&raw[..cut]), "cut {cut}");
        }
        for at in (0..raw.len()).step_by(53).chain(0..12) {
            let mut bad = raw.clone();
            bad[at] ^= 0x5A;
            assert_eq!(ours(&bad), reference(&bad), "flip at {at}");
        }
    }
}
