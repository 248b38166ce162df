//! The packed f32 matrix product behind the conv kernels ([`super`]): operands packed into
//! strips ([`pack`]) and `MR × NR` tiles of the result computed by an AVX-512 (or AVX2+FMA)
//! register-blocked kernel ([`tiles`]).
//!
//! Why not `matrixmultiply` here: it packs both operands on every call, so a convolution that
//! multiplies the same weights by 80 images packed the weights 80 times, and its 16 × 16
//! AVX-512 kernel needs 17 loads per 16 FMAs; this one packs the weights once per call, packs
//! the image side straight from the input (im2col into the packed layout), and its 8 × 32
//! tile needs 10 loads per 16 FMAs. The dense kernels keep `matrixmultiply` (their weights are
//! used once per call, transposed, so packing them is the cost either way).
//!
//! Packed layout: an operand with `lanes` rows (of A) or columns (of B) and depth `k` is stored
//! as strips of `W` lanes (`W` = [`MR`] or [`NR`]), strip `s` at `s·k·W`, element (lane
//! `s·W + l`, depth `kk`) at `(s·k + kk)·W + l`, lanes past the end zero. A tile kernel reads
//! one A strip and one B strip over any range of depths.
//!
//! Every element of the result is summed in an order fixed by the shapes (depth passes of at
//! most [`KC`], or blocks of [`DEPTH_BLOCK`], each in depth order), whichever thread computes it.

use std::sync::{Mutex, OnceLock};

/// Rows of a result tile: the A lanes broadcast per step.
pub(super) const MR: usize = 8;
/// Columns of a result tile: two AVX-512 vectors of B per step.
pub(super) const NR: usize = 32;
/// Depth per pass over a tile (at most; passes split the depth evenly): each pass reloads the
/// result tile, and its B strip (`KC·NR` floats, L2-resident) is re-read by every A strip.
/// Measured on the gesture convs: 1152 (one pass for all of them) beat 256 (64→128 forward
/// 0.89 vs 0.79 of the 2-thread peak), 640 in between.
pub(super) const KC: usize = 1152;
/// Depths packed at a time where both operands are packed per block ([`gemm`], the conv dW).
pub(super) const DEPTH_BLOCK: usize = 256;
/// Floats of packed B per chunk in [`gemm`] (256 KiB).
const B_CHUNK: usize = 1 << 16;

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([f32; 16]);

/// 64-byte-aligned f32 scratch that keeps its allocation from one use to the next.
#[derive(Default)]
pub(super) struct Scratch(Vec<Line>);

impl Scratch {
    /// `len` elements of the buffer (contents unspecified), grown when needed.
    pub(super) fn get(&mut self, len: usize) -> &mut [f32] {
        let lines = len.div_ceil(16);
        if self.0.len() < lines {
            self.0.resize(lines, Line([0.0; 16]));
        }
        // SAFETY: `lines·16 >= len` initialised f32s; `Line` is 16 f32s with no padding.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<f32>(), len) }
    }

    /// The first `len` elements, as [`Scratch::get`] left them (`len` at most what it gave).
    pub(super) fn slice(&self, len: usize) -> &[f32] {
        assert!(
            len <= self.0.len() * 16,
            "scratch of {} floats read as {len}",
            self.0.len() * 16
        );
        // SAFETY: as in `get`, within the allocation.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<f32>(), len) }
    }
}

/// Scratch buffers between kernel calls: the workers are new threads every call, so
/// thread-locals would not outlive them, and fresh multi-MiB buffers cost page faults.
static POOL: Mutex<Vec<Scratch>> = Mutex::new(Vec::new());

/// Buffers the pool keeps at most (a few per worker thread).
const POOL_MAX: usize = 64;

impl Scratch {
    /// A buffer from the pool (a new, empty one when there is none), returned when dropped.
    pub(super) fn pooled() -> Pooled {
        let s = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
        Pooled(s.unwrap_or_default())
    }
}

/// A [`Scratch`] on loan from the pool.
pub(super) struct Pooled(Scratch);

impl std::ops::Deref for Pooled {
    type Target = Scratch;
    fn deref(&self) -> &Scratch {
        &self.0
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Scratch {
        &mut self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(std::mem::take(&mut self.0));
        }
    }
}

/// A strided operand to pack: element (lane `l`, depth `kk`) at `p[l·ls + kk·ks]`.
#[derive(Clone, Copy)]
pub(super) struct View {
    pub p: *const f32,
    pub ls: usize,
    pub ks: usize,
}

// SAFETY: a `View` only reads, and its users keep what it addresses alive and unwritten.
unsafe impl Send for View {}
unsafe impl Sync for View {}

/// Floats that [`pack`] writes for `lanes` lanes of depth `k` in strips of `W`.
pub(super) fn packed_len<const W: usize>(lanes: usize, k: usize) -> usize {
    lanes.div_ceil(W) * k * W
}

/// Packs `lanes × k` of `src` into `dst` in strips of `W` lanes (see the module docs).
///
/// # Safety
/// `src` must address every element (l < lanes, kk < k) it describes.
pub(super) unsafe fn pack<const W: usize>(dst: &mut [f32], src: View, lanes: usize, k: usize) {
    let dst = &mut dst[..packed_len::<W>(lanes, k)];
    if src.ls == 1 {
        // Each depth's lanes are contiguous: depth by depth (one streaming read of each), one
        // copy per strip.
        for kk in 0..k {
            // SAFETY: the lanes at depth kk, per the caller.
            let from = unsafe { std::slice::from_raw_parts(src.p.add(kk * src.ks), lanes) };
            for (s, from) in from.chunks(W).enumerate() {
                let row = &mut dst[(s * k + kk) * W..][..W];
                if let Ok(from) = <&[f32; W]>::try_from(from) {
                    // A fixed-size copy: a `memcpy` call per depth cost more than the copy.
                    <&mut [f32; W]>::try_from(row)
                        .expect("W floats")
                        .copy_from_slice(from);
                } else {
                    row[..from.len()].copy_from_slice(from);
                    row[from.len()..].fill(0.0);
                }
            }
        }
        return;
    }
    for (s, strip) in dst.chunks_exact_mut(k * W).enumerate() {
        let l0 = s * W;
        // SAFETY: as above.
        unsafe { transpose::<W>(strip, src, l0, W.min(lanes - l0), k) };
    }
}

/// One strip of [`pack`] when lanes are not contiguous: with depth contiguous (`ks == 1`, the
/// usual case) in 8 × 8 blocks through AVX transposes, the rest element by element.
///
/// # Safety
/// As [`pack`], for lanes `l0..l0 + nl`.
unsafe fn transpose<const W: usize>(strip: &mut [f32], src: View, l0: usize, nl: usize, k: usize) {
    if nl < W {
        strip.fill(0.0);
    }
    let at = |l: usize| src.p.wrapping_add((l0 + l) * src.ls);
    // Lanes 0..l8 and depths 0..k8 in 8 × 8 blocks.
    let (mut l8, mut k8) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if src.ks == 1 && std::arch::is_x86_feature_detected!("avx") {
        (l8, k8) = (nl / 8 * 8, k / 8 * 8);
        for g in (0..l8).step_by(8) {
            for k0 in (0..k8).step_by(8) {
                // SAFETY: lanes g..g + 8 at depths k0..k0 + 8, per the caller; the block's
                // outputs lie within the strip.
                unsafe {
                    transpose8(at(g).add(k0), src.ls, strip[k0 * W + g..].as_mut_ptr(), W);
                }
            }
        }
    }
    for l in 0..nl {
        let ks = if l < l8 { k8..k } else { 0..k };
        for kk in ks {
            // SAFETY: element (l0 + l, kk), per the caller.
            strip[kk * W + l] = unsafe { *at(l).add(kk * src.ks) };
        }
    }
}

/// `dst[c·ds + r] = src[r·ss + c]` for an 8 × 8 block.
///
/// # Safety
/// The CPU must have AVX; `src` must address 8 rows of 8 floats `ss` apart, `dst` 8 rows of 8
/// floats `ds` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the 8 source rows, per the caller.
    let r: [__m256; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.add(i * ss)) });
    let t = [
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
        _mm256_unpacklo_ps(r[4], r[5]),
        _mm256_unpackhi_ps(r[4], r[5]),
        _mm256_unpacklo_ps(r[6], r[7]),
        _mm256_unpackhi_ps(r[6], r[7]),
    ];
    let u = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    let out = [
        _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
        _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
        _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
        _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
        _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
        _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
        _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
        _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
    ];
    for (c, v) in out.into_iter().enumerate() {
        // SAFETY: the 8 destination rows, per the caller.
        unsafe { _mm256_storeu_ps(dst.add(c * ds), v) };
    }
}

/// How a tile's first depth chunk starts: from zero, from the result already there (to add to
/// it), or from a per-row bias (`bias[r]` for the tile's row `r`).
#[derive(Clone, Copy)]
pub(super) enum Init {
    Zero,
    Load,
    Bias(*const f32),
}

// SAFETY: the bias is only read, and kept alive by the caller.
unsafe impl Send for Init {}
unsafe impl Sync for Init {}

impl Init {
    /// This start for the tile whose first row is row `m0` of the result.
    fn at_row(self, m0: usize) -> Init {
        match self {
            // SAFETY (of the later reads): the caller's bias covers every row of the result.
            Init::Bias(b) => Init::Bias(b.wrapping_add(m0)),
            other => other,
        }
    }
}

/// Where a tile kernel reads B: at depth `kk`, columns `0..16` from `lo + off(kk)` and
/// columns `16..32` from `hi + off(kk)`, with `off(kk) = table[kk]` when `table` is not null,
/// else `kk·step`. A packed strip is `lo` = the strip, `hi` = `lo + 16`, `step` = [`NR`]; a
/// convolution's padded input is read in place through a table of tap offsets.
#[derive(Clone, Copy)]
pub(super) struct BSrc {
    pub lo: *const f32,
    pub hi: *const f32,
    pub step: usize,
    pub table: *const usize,
}

impl BSrc {
    /// Packed strip `s` of `b` (strips of depth `k`).
    pub(super) fn packed(b: &[f32], k: usize, s: usize) -> BSrc {
        let lo = b[s * k * NR..].as_ptr();
        BSrc {
            lo,
            hi: lo.wrapping_add(16),
            step: NR,
            table: std::ptr::null(),
        }
    }

    /// The same source from depth `k0` on.
    fn at_depth(self, k0: usize) -> BSrc {
        if self.table.is_null() {
            BSrc {
                lo: self.lo.wrapping_add(k0 * self.step),
                hi: self.hi.wrapping_add(k0 * self.step),
                ..self
            }
        } else {
            BSrc {
                table: self.table.wrapping_add(k0),
                ..self
            }
        }
    }
}

/// `c[r·rsc + j] = init + Σ_kk a[kk·MR + r] · B(kk, j)` for `r < rows`, `j < cols`: one tile from
/// an A strip and a B source (`k` depths each).
type TileFn = unsafe fn(usize, *const f32, BSrc, *mut f32, usize, usize, usize, Init);

/// The widest tile kernel this CPU runs.
fn tile_fn() -> TileFn {
    static TILE: OnceLock<TileFn> = OnceLock::new();
    *TILE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return tile_avx512 as TileFn;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return tile_avx2 as TileFn;
            }
        }
        tile_scalar as TileFn
    })
}

/// The tiles of `C = A·B` (rows `0..m`) for `strips` column strips: A packed over depth `k`,
/// `b(s)` strip `s`'s B source, `out(s)` its first result column (row 0) and valid columns
/// (≤ [`NR`]), rows `rsc` apart. Depth runs in chunks of [`KC`]: the first starts from `init`,
/// the rest add.
///
/// # Safety
/// `a` must hold [`packed_len`] floats for `m` lanes; every `b(s)` must address `k` depths of
/// its valid columns; every tile that `out` addresses must be writable (and readable for
/// [`Init::Load`]) and not otherwise in use.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tiles(
    m: usize,
    k: usize,
    a: &[f32],
    b: impl Fn(usize) -> BSrc,
    strips: usize,
    out: impl Fn(usize) -> (*mut f32, usize),
    rsc: usize,
    init: Init,
) {
    // SAFETY: forwarded.
    unsafe { tiles_with(tile_fn(), m, k, a, b, strips, out, rsc, init) }
}

/// [`tiles`] with a given tile kernel.
///
/// # Safety
/// As [`tiles`], and the CPU must run `tile`.
#[allow(clippy::too_many_arguments)]
unsafe fn tiles_with(
    tile: TileFn,
    m: usize,
    k: usize,
    a: &[f32],
    b: impl Fn(usize) -> BSrc,
    strips: usize,
    out: impl Fn(usize) -> (*mut f32, usize),
    rsc: usize,
    init: Init,
) {
    let kc = k.div_ceil(k.div_ceil(KC).max(1)).max(1);
    let mut k0 = 0;
    while k0 < k {
        let kl = kc.min(k - k0);
        let init = if k0 == 0 { init } else { Init::Load };
        for s in 0..strips {
            let (c, cols) = out(s);
            let bs = b(s).at_depth(k0);
            for (ms, m0) in (0..m).step_by(MR).enumerate() {
                let ap = &a[(ms * k + k0) * MR..];
                // SAFETY: A strips of `k` depths, chunk k0..k0 + kl; B and the tile per the
                // caller.
                unsafe {
                    tile(
                        kl,
                        ap.as_ptr(),
                        bs,
                        c.wrapping_add(m0 * rsc),
                        rsc,
                        MR.min(m - m0),
                        cols,
                        init.at_row(m0),
                    );
                }
            }
        }
        k0 += kl;
    }
}

/// `C[m×n] = init + A·B` on up to `threads` threads, with A as `m` lanes and B as `n` lanes
/// over depth `k` in any layout (both packed per block of [`DEPTH_BLOCK`] depths). Threads take
/// disjoint column strips of C (row strips when there are fewer column strips than threads);
/// every element sums its depth blocks in order, so the result does not depend on the thread
/// count.
///
/// # Safety
/// `a` and `b` must address the elements they describe; `c`: `m` rows of `n` writable floats
/// `rsc` apart (also read for [`Init::Load`]) that nothing else accesses meanwhile; a bias
/// `m` floats.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    threads: usize,
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    c: *mut f32,
    rsc: usize,
    init: Init,
) {
    if m == 0 || n == 0 {
        return;
    }
    let cp = super::SendPtr(c);
    if k == 0 {
        for r in 0..m {
            for j in 0..n {
                // SAFETY: element (r, j) of C, per the caller.
                unsafe {
                    let e = cp.get().add(r * rsc + j);
                    *e = start(init, e, r);
                }
            }
        }
        return;
    }
    let (m_strips, n_strips) = (m.div_ceil(MR), n.div_ceil(NR));
    let by_columns = n_strips >= threads;
    super::split(
        if by_columns { n_strips } else { m_strips },
        threads,
        |s0, s1| {
            // The whole views (a closure would capture their pointer fields alone).
            let (a, b) = (a, b);
            let (m0, m1, n0, n1) = if by_columns {
                (0, m, s0 * NR, (s1 * NR).min(n))
            } else {
                (s0 * MR, (s1 * MR).min(m), 0, n)
            };
            // B in chunks of strips that stay in L2 between packing and use.
            let depth = DEPTH_BLOCK.min(k);
            let chunk = (B_CHUNK / (depth * NR)).max(1) * NR;
            let (mut pa, mut pb) = (Scratch::pooled(), Scratch::pooled());
            let pa = pa.get(packed_len::<MR>(m1 - m0, depth));
            let pb = pb.get(packed_len::<NR>(chunk.min(n1 - n0), depth));
            for k0 in (0..k).step_by(DEPTH_BLOCK) {
                let kb = DEPTH_BLOCK.min(k - k0);
                let a = View {
                    p: a.p.wrapping_add(m0 * a.ls + k0 * a.ks),
                    ..a
                };
                let init = if k0 == 0 { init.at_row(m0) } else { Init::Load };
                // SAFETY: rows m0..m1 of A at depths k0..k0 + kb, per the caller.
                unsafe { pack::<MR>(pa, a, m1 - m0, kb) };
                for c0 in (n0..n1).step_by(chunk) {
                    let c1 = (c0 + chunk).min(n1);
                    let b = View {
                        p: b.p.wrapping_add(c0 * b.ls + k0 * b.ks),
                        ..b
                    };
                    let out = |s: usize| {
                        let j = c0 + s * NR;
                        (cp.get().wrapping_add(m0 * rsc + j), NR.min(c1 - j))
                    };
                    // SAFETY: lanes c0..c1 of B at those depths, per the caller; C's block
                    // (m0..m1, c0..c1) is this thread's.
                    unsafe {
                        pack::<NR>(pb, b, c1 - c0, kb);
                        let b = |s: usize| BSrc::packed(pb, kb, s);
                        tiles(m1 - m0, kb, pa, b, (c1 - c0).div_ceil(NR), out, rsc, init);
                    }
                }
            }
        },
    );
}

/// Adds the tile's start (see [`Init`]) to row `r`'s accumulated value `v` at column `j`.
///
/// # Safety
/// As the tile kernels.
#[inline(always)]
unsafe fn start(init: Init, c: *const f32, r: usize) -> f32 {
    match init {
        Init::Zero => 0.0,
        // SAFETY: per the caller.
        Init::Load => unsafe { *c },
        Init::Bias(b) => unsafe { *b.add(r) },
    }
}

/// [`TileFn`] without vector instructions (CPUs with neither AVX-512 nor AVX2).
///
/// # Safety
/// `a`: `k` depths of a packed strip; `b`: `k` depths of columns `0..cols`; `c`: `rows × cols`
/// writable at row stride `rsc`, readable for [`Init::Load`]; `bias` (Init::Bias) `rows`
/// floats.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_scalar(
    k: usize,
    a: *const f32,
    b: BSrc,
    c: *mut f32,
    rsc: usize,
    rows: usize,
    cols: usize,
    init: Init,
) {
    for r in 0..rows {
        for j in 0..cols {
            let col = if j < 16 {
                b.lo.wrapping_add(j)
            } else {
                b.hi.wrapping_add(j - 16)
            };
            // SAFETY: per the contract above.
            unsafe {
                let cp = c.add(r * rsc + j);
                let mut acc = 0.0f32;
                for kk in 0..k {
                    let off = if b.table.is_null() {
                        kk * b.step
                    } else {
                        *b.table.add(kk)
                    };
                    acc = (*a.add(kk * MR + r)).mul_add(*col.add(off), acc);
                }
                *cp = start(init, cp, r) + acc;
            }
        }
    }
}

/// [`TileFn`] for AVX-512: 16 accumulators (`MR` rows × 2 vectors), each step one B pair
/// (masked to the valid columns) and `MR` broadcast FMAs.
///
/// # Safety
/// As [`tile_scalar`], on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx512(
    k: usize,
    a: *const f32,
    b: BSrc,
    c: *mut f32,
    rsc: usize,
    rows: usize,
    cols: usize,
    init: Init,
) {
    use std::arch::x86_64::*;
    let lanes = |n: usize| -> __mmask16 { ((1u32 << n.min(16)) - 1) as __mmask16 };
    let (m0, m1) = (lanes(cols), lanes(cols.saturating_sub(16)));
    // SAFETY: per the caller.
    let acc = unsafe {
        if b.table.is_null() {
            let step = b.step;
            avx512_steps(k, a, b, m0, m1, |kk| kk * step)
        } else {
            avx512_steps(k, a, b, m0, m1, |kk| *b.table.add(kk))
        }
    };
    for (r, acc) in acc.iter().enumerate() {
        if r >= rows {
            break;
        }
        // SAFETY: row r, columns < cols (masked), per the caller.
        unsafe {
            let cr = c.add(r * rsc);
            let (v0, v1) = match init {
                Init::Zero => (acc[0], acc[1]),
                Init::Load => (
                    _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cr), acc[0]),
                    _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cr.add(16)), acc[1]),
                ),
                Init::Bias(bp) => {
                    let bv = _mm512_set1_ps(*bp.add(r));
                    (_mm512_add_ps(bv, acc[0]), _mm512_add_ps(bv, acc[1]))
                }
            };
            _mm512_mask_storeu_ps(cr, m0, v0);
            _mm512_mask_storeu_ps(cr.add(16), m1, v1);
        }
    }
}

/// The accumulation loop of [`tile_avx512`], for one way of finding B's depth offsets.
///
/// # Safety
/// As [`tile_avx512`]; `off(kk)` for `kk < k` as [`BSrc`] describes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_steps(
    k: usize,
    a: *const f32,
    b: BSrc,
    m0: std::arch::x86_64::__mmask16,
    m1: std::arch::x86_64::__mmask16,
    off: impl Fn(usize) -> usize,
) -> [[std::arch::x86_64::__m512; 2]; MR] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for kk in 0..k {
        // SAFETY: one depth of the A strip and of B's valid columns, per the caller.
        unsafe {
            let o = off(kk);
            let b0 = _mm512_maskz_loadu_ps(m0, b.lo.add(o));
            let b1 = _mm512_maskz_loadu_ps(m1, b.hi.add(o));
            let ak = a.add(kk * MR);
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ak.add(r));
                acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
            }
        }
    }
    acc
}

/// [`TileFn`] for AVX2+FMA: the tile as four 8-column quarters, each `MR` accumulators, one B
/// vector and `MR` broadcasts per step (the A strip is re-read from L1 per quarter).
///
/// # Safety
/// As [`tile_scalar`], on a CPU with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2(
    k: usize,
    a: *const f32,
    b: BSrc,
    c: *mut f32,
    rsc: usize,
    rows: usize,
    cols: usize,
    init: Init,
) {
    use std::arch::x86_64::*;
    for q0 in (0..cols).step_by(8) {
        let n = (cols - q0).min(8);
        let col = if q0 < 16 {
            b.lo.wrapping_add(q0)
        } else {
            b.hi.wrapping_add(q0 - 16)
        };
        // Lanes past the valid columns are not read.
        let mask = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), mask);
        let mut acc = [_mm256_setzero_ps(); MR];
        for kk in 0..k {
            // SAFETY: one depth of the A strip and of B's valid columns, per the caller.
            unsafe {
                let off = if b.table.is_null() {
                    kk * b.step
                } else {
                    *b.table.add(kk)
                };
                let bv = _mm256_maskload_ps(col.add(off), mask);
                let ak = a.add(kk * MR);
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&*ak.add(r)), bv, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            if r >= rows {
                break;
            }
            let mut v = [0f32; 8];
            // SAFETY: `v` holds 8 floats.
            unsafe { _mm256_storeu_ps(v.as_mut_ptr(), *acc) };
            for (j, v) in v[..n].iter().enumerate() {
                // SAFETY: row r, column q0 + j < cols, per the caller.
                unsafe {
                    let cp = c.add(r * rsc + q0 + j);
                    *cp = start(init, cp, r) + v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tile kernels this CPU runs.
    fn kernels() -> Vec<(&'static str, TileFn)> {
        let mut all = vec![("scalar", tile_scalar as TileFn)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                all.push(("avx2", tile_avx2 as TileFn));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                all.push(("avx512", tile_avx512 as TileFn));
            }
        }
        all
    }

    #[test]
    fn tiles_match_a_naive_product() {
        use crate::kernels::ffi::tests::values;
        // Partial row and column tiles and 8 × 8 blocks, several depth chunks, bias and
        // accumulation; B packed both from its rows (copies) and its columns (transposes).
        let (m, n, k) = (13, 45, 2 * KC + 7);
        let av = values(m * k, 1);
        let bv = values(k * n, 2);
        let bt: Vec<f32> = (0..n * k).map(|i| bv[i % k * n + i / k]).collect();
        let bias = values(m, 3);
        let (mut pa, mut pb, mut pbt) =
            (Scratch::default(), Scratch::default(), Scratch::default());
        let pa = pa.get(packed_len::<MR>(m, k));
        let pb = pb.get(packed_len::<NR>(n, k));
        let pbt = pbt.get(packed_len::<NR>(n, k));
        unsafe {
            pack::<MR>(
                pa,
                View {
                    p: av.as_ptr(),
                    ls: k,
                    ks: 1,
                },
                m,
                k,
            );
            pack::<NR>(
                pb,
                View {
                    p: bv.as_ptr(),
                    ls: 1,
                    ks: n,
                },
                n,
                k,
            );
            pack::<NR>(
                pbt,
                View {
                    p: bt.as_ptr(),
                    ls: k,
                    ks: 1,
                },
                n,
                k,
            );
        }
        assert_eq!(pb, pbt, "copied and transposed packs");
        // B row-major read in place: rows `n` apart, or through a table of row offsets.
        let rows: Vec<usize> = (0..k).map(|kk| kk * n).collect();
        let in_place = |s: usize, table: bool| {
            let lo = bv.as_ptr().wrapping_add(s * NR);
            BSrc {
                lo,
                hi: lo.wrapping_add(16),
                step: n,
                table: if table {
                    rows.as_ptr()
                } else {
                    std::ptr::null()
                },
            }
        };
        let sources: [(&str, &dyn Fn(usize) -> BSrc); 3] = [
            ("packed", &|s| BSrc::packed(pb, k, s)),
            ("strided", &|s| in_place(s, false)),
            ("table", &|s| in_place(s, true)),
        ];
        for ((name, tile), (source, b)) in kernels()
            .into_iter()
            .flat_map(|t| sources.iter().map(move |s| (t, *s)))
        {
            for init in [Init::Zero, Init::Load, Init::Bias(bias.as_ptr())] {
                let mut c = vec![0.5f32; m * n];
                let cp = c.as_mut_ptr();
                let out = |s: usize| (cp.wrapping_add(s * NR), NR.min(n - s * NR));
                unsafe { tiles_with(tile, m, k, pa, b, n.div_ceil(NR), out, n, init) };
                for i in 0..m {
                    for j in 0..n {
                        let mut want: f64 = match init {
                            Init::Zero => 0.0,
                            Init::Load => 0.5,
                            Init::Bias(_) => f64::from(bias[i]),
                        };
                        for kk in 0..k {
                            want += f64::from(av[i * k + kk]) * f64::from(bv[kk * n + j]);
                        }
                        let got = f64::from(c[i * n + j]);
                        assert!(
                            (got - want).abs() < 1e-3,
                            "{name} {source} ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
