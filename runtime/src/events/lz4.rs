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
    let (&[m0, m1, m2, m3, flg, bd, hc], mut rest) = raw.split_first_chunk::<7>()?;
    // Version 01; no block checksum (bit 4), content size (3), content checksum (2),
    // reserved bit (1) or dictionary id (0); bit 5 is block independence.
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
    let mut pos = 0;
    loop {
        let (&size, tail) = rest.split_first_chunk::<4>()?;
        rest = tail;
        let size = u32::from_le_bytes(size);
        if size == 0 {
            return rest.is_empty().then_some(pos);
        }
        let len = (size & 0x7FFF_FFFF) as usize;
        if len > max_block || len > rest.len() {
            return None;
        }
        let (block, tail) = rest.split_at(len);
        rest = tail;
        if out.len() < pos + max_block {
            out.resize(pos + max_block, 0);
        }
        let (before, after) = out.split_at_mut(pos);
        let room = &mut after[..max_block];
        let n = if size & 0x8000_0000 != 0 {
            room[..len].copy_from_slice(block);
            len
        } else {
            // Linked blocks may copy from the previous 64 KB of output, as the frame decoder's
            // prefix/dictionary does; independent blocks only from themselves.
            let dict = if linked {
                &before[pos.saturating_sub(WINDOW)..]
            } else {
                &[][..]
            };
            lz4_flex::block::decompress_into_with_dict(block, room, dict).ok()?
        };
        pos += n;
    }
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
