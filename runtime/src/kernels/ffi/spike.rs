//! Spike-sparse variants of the conv/dense kernels, for layers whose input `x` is binary spikes
//! (every element 0 or 1). Same C signatures, layouts and results (to f32 rounding: the sums run
//! in another order) as [`snn_conv2d_f32`](super::snn_conv2d_f32),
//! [`snn_dense_f32`](super::snn_dense_f32) and their backward kernels.
//!
//! Each kernel first counts the nonzero inputs (one vectorised pass, per image for the conv
//! forward, per call otherwise). Below a crossover density (the `*_SPIKE_MAX_DENSITY`
//! constants, measured by `runtime/examples/sparse_crossover.rs`, bench/RESULTS.md) it takes the
//! accumulate-only path: lists of the active inputs, then for every active input the weight
//! row/patch it selects is *added* to the outputs (no multiplies, zeros skipped). At or above
//! it, or when some input is neither 0 nor 1 (then adding would be wrong), the GEMM kernels run.
//!
//! Vectorisation: the weights are re-laid out per call so that the `BLOCK` output channels
//! of one (input, tap) are contiguous; the sums for one output row/pixel then stay in
//! `BLOCK / lanes` vector registers while the active inputs' rows are added. The backward's dW
//! is the mirror image: the output gradient's `BLOCK` lanes stay in registers and are added to
//! the dW rows of the active inputs (dx needs all of `dy` and stays on the GEMM path).
//!
//! Threads split the output channels into disjoint `BLOCK`-wide blocks (the conv forward: the
//! images), so every output element is summed by one thread in one fixed order and results do
//! not depend on the thread count.

use super::{
    Conv, ConvForward, Scratch, SendPtr, kernel_threads, snn_conv2d_backward_f32,
    snn_dense_backward_f32, snn_dense_f32, split, split_map, threads_capped, to_usize,
};
use std::sync::OnceLock;

/// Output channels per accumulator block: 4 AVX-512 (8 AVX2) registers of partial sums.
const BLOCK: usize = 64;
/// `BLOCK` lanes of one weight row, output or gradient.
type Row = [f32; BLOCK];
const ZERO: Row = [0.0; BLOCK];

/// A [`Row`] on a cache line of its own (the conv forward's weight table: every vector load
/// from it stays within one line).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line(Row);

// The thresholds below are measured crossovers (bench/cpu/sparse.sh, bench/RESULTS.md "Spike-sparse
// kernels: crossover firing rate"; 2-core AVX-512 VM, 2 threads, best of 4 sweeps), each set
// under the lowest crossover measured for its kind so that the sparse path does not lose at the
// gesture network's shapes.

/// [`snn_conv2d_spike_f32`] takes the sparse path for an image whose density of ones is below
/// this (on a CPU with AVX-512F, else [`CONV_SPIKE_MAX_DENSITY_PORTABLE`]). Measured crossovers
/// of the AVX-512 kernel (weight lines L1-resident per pass over a group of taps, sums in
/// registers per pixel) against the packed GEMM (`ffi::gemm`, 0.84–0.90 of peak): 43–48 %
/// (64→128, 32×32) and above 50 % (128→128, 16×16: the sparse path wins at every density
/// measured), 80 images (the earlier [pixel][lane] kernel: 21 % and 22 %; against the earlier
/// `matrixmultiply` path 31 % and 38 %).
pub const CONV_SPIKE_MAX_DENSITY: f64 = 0.4;
/// [`CONV_SPIKE_MAX_DENSITY`] without AVX-512F (the portable [pixel][lane] kernel, measured with
/// AVX-512 code generation: 21 % and 22 %).
pub const CONV_SPIKE_MAX_DENSITY_PORTABLE: f64 = 0.2;
/// [`snn_dense_spike_f32`]: the sparse path below this density of the whole input. Measured
/// crossovers: 4.4 % (8192→256, 80 rows) and 20 % (4096→4096, 400 rows): the per-call
/// transposed copy of the weights (n_in·n_out) is amortised over the rows.
pub const DENSE_SPIKE_MAX_DENSITY: f64 = 0.04;
/// [`snn_conv2d_backward_spike_f32`]: dW on the sparse path below this density of the whole
/// input (with AVX-512F and stride 1, else [`CONV_BACKWARD_SPIKE_MAX_DENSITY_PORTABLE`]).
/// Measured crossovers (dx + dW + db against the GEMM backward; dx stays a GEMM, so the gain is
/// at most ~2×) of the AVX-512 input-stationary kernel (per channel and 3 taps, the sums in
/// registers while the channel's active pixels add their dy lines; bands of rows keep those
/// lines in L1): 38–39 % (64→128, 32×32) and 43 % (128→128, 16×16), 80 images (the earlier
/// table-scatter kernel: 10 % and 14 %).
pub const CONV_BACKWARD_SPIKE_MAX_DENSITY: f64 = 0.35;
/// [`CONV_BACKWARD_SPIKE_MAX_DENSITY`] without AVX-512F or with a stride above 1 (the portable
/// `[tap·c + ci][lane]` table kernel, measured with AVX-512 code generation: 11 % and 14 %).
pub const CONV_BACKWARD_SPIKE_MAX_DENSITY_PORTABLE: f64 = 0.1;
/// [`snn_dense_backward_spike_f32`]: dW on the sparse path below this density. Measured
/// crossovers: 1.2 % (8192→256, 80 rows: the dW GEMM is small and the sparse path's fixed
/// zeroing/transposition of an n_in·n_out table about as dear) and 8.9 % (4096→4096, 400 rows).
pub const DENSE_BACKWARD_SPIKE_MAX_DENSITY: f64 = 0.01;

/// How a spike kernel chooses its path: the sparse one when the input's density of ones is
/// below `max_density` (`f64::INFINITY`: always, for binary input; `0.0`: never), on at most
/// `threads` threads. The GEMM fallback uses the kernels' own thread count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpikeDispatch {
    pub max_density: f64,
    pub threads: usize,
}

impl SpikeDispatch {
    /// The C kernels' dispatch: `max_density` and [`kernel_threads`].
    pub(super) fn with(max_density: f64) -> SpikeDispatch {
        SpikeDispatch {
            max_density,
            threads: kernel_threads(),
        }
    }

    /// [`Self::with`] `avx512_max` on a CPU with AVX-512F, `portable_max` on others (the two
    /// crossovers measured for each kernel).
    pub(super) fn by_isa(avx512_max: f64, portable_max: f64) -> SpikeDispatch {
        SpikeDispatch::with(if avx512() { avx512_max } else { portable_max })
    }

    /// Whether `nnz` ones in `total` inputs (None: not binary) take the sparse path.
    pub(super) fn sparse(&self, nnz: Option<usize>, total: usize) -> bool {
        nnz.is_some_and(|nnz| (nnz as f64) < self.max_density * total as f64)
    }

    pub(super) fn threads_for(&self, work: usize) -> usize {
        threads_capped(self.threads, work)
    }

    /// The nonzero count of `items` blocks of `len` elements of `x` (in parallel), None when
    /// some element is neither 0 nor 1.
    fn count(&self, x: &[f32], items: usize, len: usize) -> Option<usize> {
        split_map(items, self.threads_for(items * len), |a0, a1| {
            count_spikes(&x[a0 * len..a1 * len])
        })
        .into_iter()
        .sum()
    }
}

/// Generates `fn $name` that runs `$body` compiled for AVX-512 or AVX2 when the CPU has it (the
/// crate is built for baseline x86-64, and these loops are only fast with wide vectors).
macro_rules! multiversion {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the feature.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(super) use multiversion;

multiversion! {
    /// Nonzero elements of `x`, or None when one is neither 0 nor 1 (the sparse paths add
    /// weights unscaled, so only binary input may take them).
    fn count_spikes(x: &[f32]) -> Option<usize> {
        let (mut total, mut bad) = (0usize, false);
        // u32 counts vectorise twice as wide as usize; the chunks keep them from overflowing.
        for chunk in x.chunks(1 << 20) {
            let mut n = 0u32;
            for &v in chunk {
                n += u32::from(v != 0.0);
                bad |= v != 0.0 && v != 1.0;
            }
            total += n as usize;
        }
        (!bad).then_some(total)
    }
}

/// The active inputs of `x[outer][n_in][inner]` (0/1 values) as one list per row
/// `r = a·inner + i`: the `k` with `x[a][k][i] ≠ 0`, increasing (compressed sparse rows).
struct Spikes {
    start: Vec<usize>,
    k: Vec<u32>,
}

impl Spikes {
    fn rows(&self) -> usize {
        self.start.len() - 1
    }

    fn row(&self, r: usize) -> &[u32] {
        &self.k[self.start[r]..self.start[r + 1]]
    }
}

multiversion! {
    /// The counting pass of [`scan_spikes`]: `start[r + 1]` = the active inputs of row `r`,
    /// and whether some element is neither 0 nor 1.
    fn row_counts(x: &[f32], outer: usize, n_in: usize, inner: usize) -> (Vec<usize>, bool) {
        let rows = outer * inner;
        let len = n_in * inner;
        let mut start = vec![0usize; rows + 1];
        let mut bad = false;
        for (a, xa) in x.chunks_exact(len.max(1)).take(outer).enumerate() {
            let counts = &mut start[a * inner + 1..(a + 1) * inner + 1];
            if inner == 1 {
                counts[0] = xa.iter().map(|&v| u32::from(v != 0.0)).sum::<u32>() as usize;
                bad |= xa.iter().any(|&v| v != 0.0 && v != 1.0);
            } else {
                for xk in xa.chunks_exact(inner) {
                    for (c, &v) in counts.iter_mut().zip(xk) {
                        *c += usize::from(v != 0.0);
                        bad |= v != 0.0 && v != 1.0;
                    }
                }
            }
        }
        (start, bad)
    }
}

multiversion! {
    /// The filling pass of [`scan_spikes`] from `start` as [`row_counts`] left it; tests 16
    /// inputs at a time (zero runs cost no branch per element).
    fn fill_spikes(x: &[f32], outer: usize, n_in: usize, inner: usize, start: Vec<usize>) -> Spikes {
        let mut start = start;
        let rows = outer * inner;
        let len = n_in * inner;
        for r in 0..rows {
            start[r + 1] += start[r];
        }
        let mut k = vec![0u32; start[rows]];
        let mut next = start[..rows].to_vec();
        for (a, xa) in x.chunks_exact(len.max(1)).take(outer).enumerate() {
            if inner == 1 {
                let at = &mut next[a];
                for_each_nonzero(xa, |kk| {
                    k[*at] = kk as u32;
                    *at += 1;
                });
            } else {
                let next = &mut next[a * inner..(a + 1) * inner];
                for (kk, xk) in xa.chunks_exact(inner).enumerate() {
                    for_each_nonzero(xk, |i| {
                        k[next[i]] = kk as u32;
                        next[i] += 1;
                    });
                }
            }
        }
        Spikes { start, k }
    }
}

/// [`Spikes`] of `x[outer][n_in][inner]`: a counting pass, then a filling pass.
fn scan_spikes(x: &[f32], outer: usize, n_in: usize, inner: usize) -> Spikes {
    let (start, _) = row_counts(x, outer, n_in, inner);
    fill_spikes(x, outer, n_in, inner, start)
}

/// [`scan_spikes`] when `d` sends `x` down the sparse path (binary, and sparse enough), else
/// None with only the counting pass spent: that pass decides, instead of a count of its own
/// before the scan (about 1.5 % of a gesture training step).
fn scan_sparse(
    d: &SpikeDispatch,
    x: &[f32],
    outer: usize,
    n_in: usize,
    inner: usize,
) -> Option<Spikes> {
    let (start, bad) = row_counts(x, outer, n_in, inner);
    let nnz: usize = start.iter().sum();
    (!bad && d.sparse(Some(nnz), x.len())).then(|| fill_spikes(x, outer, n_in, inner, start))
}

/// Calls `f(i)` for every `i` with `xs[i] ≠ 0`, in increasing order.
#[inline(always)]
pub(super) fn for_each_nonzero(xs: &[f32], mut f: impl FnMut(usize)) {
    let (chunks, tail) = xs.as_chunks::<16>();
    for (ci, ch) in chunks.iter().enumerate() {
        let mut m = ch
            .iter()
            .enumerate()
            .fold(0u32, |m, (b, &v)| m | (u32::from(v != 0.0) << b));
        while m != 0 {
            f(ci * 16 + m.trailing_zeros() as usize);
            m &= m - 1;
        }
    }
    for (i, &v) in tail.iter().enumerate() {
        if v != 0.0 {
            f(chunks.len() * 16 + i);
        }
    }
}

#[inline(always)]
fn add(acc: &mut Row, row: &Row) {
    for (a, b) in acc.iter_mut().zip(row) {
        *a += b;
    }
}

multiversion! {
    /// Dense forward, one block of output channels: `out[r] = init + Σ_{k ∈ spikes.row(r)}
    /// table[k]` (`table[k]` = the block's weights of input `k`).
    fn sum_rows(table: &[Row], init: &Row, spikes: &Spikes, out: &mut [Row]) {
        for (r, o) in out.iter_mut().enumerate() {
            let mut acc = *init;
            for &k in spikes.row(r) {
                add(&mut acc, &table[k as usize]);
            }
            *o = acc;
        }
    }
}

multiversion! {
    /// Dense backward, one block of output channels: `table[k] += g[r]` for every active
    /// input `k` of row `r` (dWᵀ's block accumulates `dy`'s rows; no multiplies as x is 0/1).
    fn scatter_rows(g: &[Row], spikes: &Spikes, table: &mut [Row]) {
        for (r, v) in g.iter().enumerate() {
            for &k in spikes.row(r) {
                add(&mut table[k as usize], v);
            }
        }
    }
}

multiversion! {
    /// Conv forward of one image, one block of output channels, output-stationary:
    /// `out[i·ow + j] = init + Σ_{tap (p, q)} Σ_{c active at input (i·sh + p − ph, j·sw + q − pw)}
    /// table[(p·kw + q)·c_total + c]`; `spikes` has a row per input pixel listing its channels.
    fn conv_sum(g: &Conv, spikes: &Spikes, table: &[Line], init: &Row, out: &mut [Row]) {
        for i in 0..g.oh {
            for j in 0..g.ow {
                let mut acc = *init;
                for p in 0..g.kh {
                    // Above the image this wraps to a huge value, like below it.
                    let ih = (i * g.sh + p).wrapping_sub(g.ph);
                    if ih >= g.h {
                        continue;
                    }
                    for q in 0..g.kw {
                        let iw = (j * g.sw + q).wrapping_sub(g.pw);
                        if iw >= g.w {
                            continue;
                        }
                        let taps = &table[(p * g.kw + q) * g.c..][..g.c];
                        for &c in spikes.row(ih * g.w + iw) {
                            add(&mut acc, &taps[c as usize].0);
                        }
                    }
                }
                out[i * g.ow + j] = acc;
            }
        }
    }
}

/// The sparse forward of one image (`y` = its `[o][pixel]` output) from its [`Spikes`] (a row
/// per input pixel listing its active channels) and the weight table of [`conv_forward_spike`]:
/// [`conv_image_avx512`] when `wide`, else [`conv_sum`] per block and a transposition (`out`,
/// `acc`: their scratch).
#[allow(clippy::too_many_arguments)]
fn conv_image(
    g: &Conv,
    spikes: &Spikes,
    table: &[Line],
    bias: Option<&[f32]>,
    y: &mut [f32],
    out: &mut Vec<Row>,
    acc: &mut Vec<Line>,
    wide: bool,
) {
    let (px, kk) = (g.pixels(), g.kh * g.kw);
    #[cfg(target_arch = "x86_64")]
    if wide {
        // SAFETY: `wide` only when the CPU has AVX-512F ([`avx512`]); the table and the lists
        // are as documented there.
        unsafe { conv_image_avx512(g, spikes, table, bias, y, acc) };
        return;
    }
    let _ = (wide, acc);
    out.resize(px, ZERO);
    for b in 0..g.o.div_ceil(BLOCK) {
        let (o0, width) = block(b, g.o);
        let tb = &table[b * kk * g.c..(b + 1) * kk * g.c];
        conv_sum(g, spikes, tb, &block_init(bias, o0, width), out);
        // out is [pixel][lane]; y is [channel][pixel].
        scatter_lanes(out, &mut y[o0 * px..], px, width, false);
    }
}

/// Bytes of weight lines [`conv_image_avx512`] keeps in L1 per pass (of 48 KiB).
const L1_TABLE: usize = 32 << 10;

/// Whether the CPU runs [`conv_image_avx512`].
pub(super) fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`conv_image`] with AVX-512, output-stationary: for each block of `BLOCK` output channels and
/// each output pixel, its sums stay in 8 vector registers (two sets of 4, even and odd list
/// entries, for two independent add chains per lane) while the rows of every active
/// (tap, input channel) it sees are added: per tap, one walk down the list of the input pixel
/// under it. Every 16 pixels the 16 × `BLOCK` sums are transposed in registers into `y`'s
/// `[channel][pixel]` rows.
///
/// # Safety
/// The CPU has AVX-512F; `table` holds `blocks · kh·kw · c` lines (as built by
/// [`conv_forward_spike`]), `spikes` has `h·w` rows of channels below `c`, `y` holds `o · oh·ow`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
// The loops over `v` step several register arrays in lockstep; `k` picks `buf` or `acc`.
#[allow(clippy::needless_range_loop)]
unsafe fn conv_image_avx512(
    g: &Conv,
    spikes: &Spikes,
    table: &[Line],
    bias: Option<&[f32]>,
    y: &mut [f32],
    acc: &mut Vec<Line>,
) {
    use std::arch::x86_64::*;
    let (px, kk) = (g.pixels(), g.kh * g.kw);
    // Taps per pass: their weight lines (c each) stay within L1 (the image's sums, one line per
    // pixel, wait in `acc` between passes).
    // Below ~3 % of inputs active the table's traffic costs less than those passes: one pass.
    let group = if spikes.k.len() * 32 < g.c * g.h * g.w {
        kk.max(1)
    } else {
        (L1_TABLE / (g.c * std::mem::size_of::<Line>()).max(1)).clamp(1, kk.max(1))
    };
    if group < kk {
        acc.resize(px, Line(ZERO));
    }
    let mut buf = [Line(ZERO); 16];
    let (starts, ks) = (spikes.start.as_ptr(), spikes.k.as_ptr());
    for b in 0..g.o.div_ceil(BLOCK) {
        let (o0, width) = block(b, g.o);
        let init = Line(block_init(bias, o0, width));
        let tb = &table[b * kk * g.c..(b + 1) * kk * g.c];
        let tp = tb.as_ptr().cast::<f32>();
        for t0 in (0..kk).step_by(group) {
            let t1 = kk.min(t0 + group);
            let last = t1 == kk;
            for p0 in (0..px).step_by(16) {
                let count = 16.min(px - p0);
                for k in 0..count {
                    let pix = p0 + k;
                    let (i, j) = (pix / g.ow, pix % g.ow);
                    let from = if t0 == 0 { &init } else { &acc[pix] };
                    // SAFETY: lanes 16v..16v + 16 of one line.
                    let mut a: [__m512; 4] = std::array::from_fn(|v| unsafe {
                        _mm512_load_ps(from.0.as_ptr().add(16 * v))
                    });
                    let mut s = [_mm512_setzero_ps(); 4];
                    for t in t0..t1 {
                        let (p, q) = (t / g.kw, t % g.kw);
                        // Above the image this wraps to a huge value, like below it.
                        let ih = (i * g.sh + p).wrapping_sub(g.ph);
                        let iw = (j * g.sw + q).wrapping_sub(g.pw);
                        if ih >= g.h || iw >= g.w {
                            continue;
                        }
                        let r = ih * g.w + iw;
                        // SAFETY: r < h·w = spikes.rows(); the list's entries are channels
                        // below c, so every row read lies in the tap's c lines of `tb`.
                        unsafe {
                            let (mut e, end) = (*starts.add(r), *starts.add(r + 1));
                            let base = tp.add(t * g.c * BLOCK);
                            while e + 2 <= end {
                                let r0 = base.add(*ks.add(e) as usize * BLOCK);
                                let r1 = base.add(*ks.add(e + 1) as usize * BLOCK);
                                for v in 0..4 {
                                    a[v] = _mm512_add_ps(a[v], _mm512_load_ps(r0.add(16 * v)));
                                    s[v] = _mm512_add_ps(s[v], _mm512_load_ps(r1.add(16 * v)));
                                }
                                e += 2;
                            }
                            if e < end {
                                let r0 = base.add(*ks.add(e) as usize * BLOCK);
                                for v in 0..4 {
                                    a[v] = _mm512_add_ps(a[v], _mm512_load_ps(r0.add(16 * v)));
                                }
                            }
                        }
                    }
                    let to = if last { &mut buf[k] } else { &mut acc[pix] };
                    for v in 0..4 {
                        // SAFETY: lanes 16v..16v + 16 of one line.
                        unsafe {
                            _mm512_store_ps(
                                to.0.as_mut_ptr().add(16 * v),
                                _mm512_add_ps(a[v], s[v]),
                            )
                        };
                    }
                }
                if !last {
                    continue;
                }
                // buf is [pixel][lane]; y is [channel][pixel].
                for v in 0..width.div_ceil(16) {
                    let lanes = 16.min(width - 16 * v);
                    if count < 16 {
                        for (k, line) in buf.iter().enumerate().take(count) {
                            for l in 0..lanes {
                                y[(o0 + 16 * v + l) * px + p0 + k] = line.0[16 * v + l];
                            }
                        }
                        continue;
                    }
                    // SAFETY: lanes 16v..16v + 16 of each line.
                    let rows: [__m512; 16] = std::array::from_fn(|k| unsafe {
                        _mm512_load_ps(buf[k].0.as_ptr().add(16 * v))
                    });
                    let cols = transpose16(rows);
                    for (l, col) in cols.iter().enumerate().take(lanes) {
                        let dst = &mut y[(o0 + 16 * v + l) * px + p0..][..16];
                        // SAFETY: dst holds 16 floats.
                        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), *col) };
                    }
                }
            }
        }
    }
}

/// The 16 × 16 transpose of `r` (`out[l]` lane `k` = `r[k]` lane `l`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn transpose16(r: [std::arch::x86_64::__m512; 16]) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    // Pairs of rows interleaved by 32-bit, then by 64-bit elements: each 128-bit lane of u[4m + n]
    // holds element n of rows 4m..4m + 4, per lane.
    let t: [__m512; 16] = std::array::from_fn(|k| {
        let (a, b) = (r[k & !1], r[k | 1]);
        if k & 1 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    let u: [__m512; 16] = std::array::from_fn(|k| {
        // k = 4m + n: from t[4m + (n >> 1)] and t[4m + 2 + (n >> 1)], low or high by n & 1.
        let (m, n) = (k / 4, k % 4);
        let (a, b) = (
            _mm512_castps_pd(t[4 * m + (n >> 1)]),
            _mm512_castps_pd(t[4 * m + 2 + (n >> 1)]),
        );
        _mm512_castpd_ps(if n & 1 == 0 {
            _mm512_unpacklo_pd(a, b)
        } else {
            _mm512_unpackhi_pd(a, b)
        })
    });
    // 128-bit lanes: w[k] for k = 8h + 4e + n takes lanes of u[n] and u[4 + n] (h = 0) or
    // u[8 + n] and u[12 + n] (h = 1), even (e = 0) or odd 128-bit lanes.
    let w: [__m512; 16] = std::array::from_fn(|k| {
        let (h, e, n) = (k / 8, (k / 4) % 2, k % 4);
        let (a, b) = (u[8 * h + n], u[8 * h + 4 + n]);
        if e == 0 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    });
    std::array::from_fn(|k| {
        let (e, m) = (k / 8, k % 8);
        let (a, b) = (w[m], w[8 + m]);
        if e == 0 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    })
}

/// The output index `o` with `o·stride + tap − pad = input`, if there is one below `len`.
#[inline(always)]
fn output_of(input: usize, tap: usize, stride: usize, pad: usize, len: usize) -> Option<usize> {
    let t = (input + pad).checked_sub(tap)?;
    (t % stride == 0 && t / stride < len).then_some(t / stride)
}

multiversion! {
    /// Conv dW of one image, one block of output channels: for every active input (c, ih, iw)
    /// and tap (p, q) that reaches an output pixel, `table[(p·kw + q)·c_total + c] += dyt[pixel]`
    /// (`dyt` = the image's output gradient as `[oh·ow][BLOCK]`).
    fn conv_scatter(g: &Conv, spikes: &Spikes, dyt: &[Row], table: &mut [Row]) {
        for ih in 0..g.h {
            for iw in 0..g.w {
                let cs = spikes.row(ih * g.w + iw);
                if cs.is_empty() {
                    continue;
                }
                for p in 0..g.kh {
                    let Some(i) = output_of(ih, p, g.sh, g.ph, g.oh) else {
                        continue;
                    };
                    for q in 0..g.kw {
                        let Some(j) = output_of(iw, q, g.sw, g.pw, g.ow) else {
                            continue;
                        };
                        let v = &dyt[i * g.ow + j];
                        let taps = &mut table[(p * g.kw + q) * g.c..][..g.c];
                        for &c in cs {
                            add(&mut taps[c as usize], v);
                        }
                    }
                }
            }
        }
    }
}

/// Whether [`conv2d_backward_spike`]'s sparse dW runs [`conv_dw_image_avx512`] for geometry
/// `g`: AVX-512F, stride 1 and input sides below 2¹⁶ (the packed pixel lists of
/// [`channel_pixels`]); else the portable [`conv_scatter`].
fn dw_wide(g: &Conv) -> bool {
    avx512() && g.sh == 1 && g.sw == 1 && g.h < 1 << 16 && g.w < 1 << 16
}

multiversion! {
    /// The active pixels of one image `x[c][h][w]` (0/1) per channel: channel `ci`'s are
    /// `at[start[ci]..start[ci + 1]]`, each packed as `ih << 16 | iw`, increasing.
    fn channel_pixels(x: &[f32], c: usize, h: usize, w: usize) -> (Vec<usize>, Vec<u32>) {
        let hw = h * w;
        let mut start = Vec::with_capacity(c + 1);
        let mut at = Vec::new();
        start.push(0);
        for ci in 0..c {
            for ih in 0..h {
                let row = &x[ci * hw + ih * w..][..w];
                for_each_nonzero(row, |iw| at.push(((ih as u32) << 16) | iw as u32));
            }
            start.push(at.len());
        }
        (start, at)
    }
}

/// Taps whose dW sums [`conv_dw_image_avx512`] keeps in registers per walk down a channel's
/// pixel list (4 vector registers each).
const DW_GROUP: usize = 3;

/// `dyt[pixel]` lanes `l < width` = `src[l·px + pixel]`, lanes past `width` zero: one image's
/// output gradient of a `BLOCK`-channel block transposed to `[pixel][lane]` lines, 16 × 16
/// tiles transposed in registers.
///
/// # Safety
/// The CPU has AVX-512F; `src` holds `width · px` values, `dyt` at least `px` lines.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_dy_avx512(dyt: &mut [Line], src: &[f32], px: usize, width: usize) {
    use std::arch::x86_64::*;
    for p0 in (0..px).step_by(16) {
        let count = 16.min(px - p0);
        for v in 0..BLOCK / 16 {
            let lanes = 16.min(width.saturating_sub(16 * v));
            if count < 16 || lanes < 16 {
                for k in 0..count {
                    for l in 0..16 {
                        dyt[p0 + k].0[16 * v + l] = if l < lanes {
                            src[(16 * v + l) * px + p0 + k]
                        } else {
                            0.0
                        };
                    }
                }
                continue;
            }
            let rows: [__m512; 16] = std::array::from_fn(|l| {
                let s = &src[(16 * v + l) * px + p0..][..16];
                // SAFETY: s holds 16 floats.
                unsafe { _mm512_loadu_ps(s.as_ptr()) }
            });
            let cols = transpose16(rows);
            for (k, col) in cols.iter().enumerate() {
                // SAFETY: lanes 16v..16v + 16 of one line.
                unsafe { _mm512_store_ps(dyt[p0 + k].0.as_mut_ptr().add(16 * v), *col) };
            }
        }
    }
}

/// Conv dW of one image and one `BLOCK`-channel block with AVX-512, input-stationary: for
/// each input channel and group of [`DW_GROUP`] taps, the group's sums stay in registers
/// while the channel's active pixels are walked, each adding the `dyt` line of the output
/// pixel it feeds through every tap; then `table[ci·kk + tap] += sums`. Taps falling outside
/// the output read the zero line `dyt[oh·ow]` instead of branching (stride 1 only).
///
/// # Safety
/// The CPU has AVX-512F; `g` has stride 1; `start`/`at` are [`channel_pixels`] of the image;
/// `dyt` holds `oh·ow + 1` lines, the last zero; `table` holds `c · kh·kw` lines.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)]
unsafe fn conv_dw_image_avx512(
    g: &Conv,
    start: &[usize],
    at: &[u32],
    dyt: &[Line],
    table: &mut [Line],
) {
    use std::arch::x86_64::*;
    let (kk, px) = (g.kh * g.kw, g.pixels());
    assert!(dyt.len() > px && table.len() >= g.c * kk && start.len() > g.c);
    let dp = dyt.as_ptr().cast::<f32>();
    // Bands of input rows whose dy lines under one kernel row fit L1 (`L1_TABLE`): per band
    // and group of taps, every channel's pixels in the band are walked.
    let rows = (L1_TABLE / (g.ow * std::mem::size_of::<Line>()).max(1)).max(1);
    let mut pos = start[..g.c].to_vec();
    let mut ends = vec![0usize; g.c];
    for r0 in (0..g.h).step_by(rows) {
        let r1 = g.h.min(r0 + rows) as u32;
        for ci in 0..g.c {
            let mut e = pos[ci];
            while e < start[ci + 1] && at[e] >> 16 < r1 {
                e += 1;
            }
            ends[ci] = e;
        }
        for t0 in (0..kk).step_by(DW_GROUP) {
            for ci in 0..g.c {
                let pixels = &at[pos[ci]..ends[ci]];
                if pixels.is_empty() {
                    continue;
                }
                let n = DW_GROUP.min(kk - t0);
                // Per tap of the group: kernel row and column, and the offset of its output
                // pixel from (ih + ph)·ow + (iw + pw); unused slots repeat the last tap.
                let tap = |k: usize| t0 + k.min(n - 1);
                let tp: [usize; DW_GROUP] = std::array::from_fn(|k| tap(k) / g.kw);
                let tq: [usize; DW_GROUP] = std::array::from_fn(|k| tap(k) % g.kw);
                let off: [usize; DW_GROUP] = std::array::from_fn(|k| tp[k] * g.ow + tq[k]);
                // Input pixels whose every tap lands inside the output: i0 in [kh - 1, oh),
                // j0 in [kw - 1, ow) (i0, j0 = the pixel shifted by the padding).
                let (lo_i, lo_j) = (g.kh - 1, g.kw - 1);
                let mut a = [[_mm512_setzero_ps(); 4]; DW_GROUP];
                for &pk in pixels {
                    let (i0, j0) = ((pk >> 16) as usize + g.ph, (pk & 0xffff) as usize + g.pw);
                    let inside = i0 >= lo_i && i0 < g.oh && j0 >= lo_j && j0 < g.ow;
                    let base = i0 * g.ow + j0;
                    for k in 0..DW_GROUP {
                        if k >= n {
                            break;
                        }
                        let r = if inside {
                            base - off[k]
                        } else {
                            // Above/left of the output this wraps to a huge value, like below it.
                            let (i, j) = (i0.wrapping_sub(tp[k]), j0.wrapping_sub(tq[k]));
                            if i < g.oh && j < g.ow {
                                i * g.ow + j
                            } else {
                                px
                            }
                        };
                        // SAFETY: r ≤ px < dyt.len(); lanes 16v..16v + 16 of line r.
                        unsafe {
                            let row = dp.add(r * BLOCK);
                            for v in 0..4 {
                                a[k][v] = _mm512_add_ps(a[k][v], _mm512_load_ps(row.add(16 * v)));
                            }
                        }
                    }
                }
                for k in 0..n {
                    let line = &mut table[ci * kk + t0 + k];
                    for v in 0..4 {
                        // SAFETY: lanes 16v..16v + 16 of one line.
                        unsafe {
                            let p = line.0.as_mut_ptr().add(16 * v);
                            _mm512_store_ps(p, _mm512_add_ps(_mm512_load_ps(p), a[k][v]));
                        }
                    }
                }
            }
        }
        pos.copy_from_slice(&ends);
    }
}

multiversion! {
    /// Lanes `..width` of `dst[k]` = `src[l·stride + k]`: one block of a `[lane][k]` matrix
    /// transposed into rows, in 16-row tiles (the tile's rows stay in L1 while the source is
    /// read a cache line per lane).
    fn gather_lanes(dst: &mut [Row], src: &[f32], stride: usize, width: usize) {
        for (t, tile) in dst.chunks_mut(16).enumerate() {
            for l in 0..width {
                let s = &src[l * stride + t * 16..][..tile.len()];
                for (d, &v) in tile.iter_mut().zip(s) {
                    d[l] = v;
                }
            }
        }
    }
}

multiversion! {
    /// The inverse of [`gather_lanes`]: `dst[l·stride + k] = src[k][l]` (`+=` when `add`).
    fn scatter_lanes(src: &[Row], dst: &mut [f32], stride: usize, width: usize, add: bool) {
        for (t, tile) in src.chunks(16).enumerate() {
            for l in 0..width {
                let d = &mut dst[l * stride + t * 16..][..tile.len()];
                if add {
                    for (d, s) in d.iter_mut().zip(tile) {
                        *d += s[l];
                    }
                } else {
                    for (d, s) in d.iter_mut().zip(tile) {
                        *d = s[l];
                    }
                }
            }
        }
    }
}

/// Channels `o0..o0 + width` of the `BLOCK`-wide block starting at `o0` (`n` channels in all).
fn block(b: usize, n: usize) -> (usize, usize) {
    let o0 = b * BLOCK;
    (o0, BLOCK.min(n - o0))
}

/// The bias lanes of one block (zero without a bias).
fn block_init(bias: Option<&[f32]>, o0: usize, width: usize) -> Row {
    let mut init = ZERO;
    if let Some(b) = bias {
        init[..width].copy_from_slice(&b[o0..o0 + width]);
    }
    init
}

/// [`snn_conv2d_spike_f32`] with an explicit dispatch; returns how many images took the sparse
/// path.
///
/// # Safety
/// As [`snn_conv2d_f32`](super::snn_conv2d_f32).
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv2d_spike(
    d: SpikeDispatch,
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    y: *mut f32,
    n: i64,
    c: i64,
    h: i64,
    wd: i64,
    o: i64,
    kh: i64,
    kw: i64,
    sh: i64,
    sw: i64,
    ph: i64,
    pw: i64,
    oh: i64,
    ow: i64,
) -> usize {
    let g = Conv::from_abi([c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow]);
    // SAFETY: forwarded.
    unsafe { conv_forward_spike(d, avx512(), x, w, bias, y, to_usize(n), g) }
}

/// [`conv2d_spike`] on geometry `g`, its sparse images with [`conv_image_avx512`] when `wide`.
///
/// # Safety
/// As [`snn_conv2d_f32`](super::snn_conv2d_f32); `wide` only on a CPU with AVX-512F.
#[allow(clippy::too_many_arguments)]
unsafe fn conv_forward_spike(
    d: SpikeDispatch,
    wide: bool,
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    y: *mut f32,
    n: usize,
    g: Conv,
) -> usize {
    if g.is_empty(n) {
        return 0;
    }
    let (in_len, out_len, kk) = (g.c * g.h * g.w, g.o * g.pixels(), g.kh * g.kw);
    // SAFETY: sizes as documented.
    let (xs, ws) = unsafe {
        (
            std::slice::from_raw_parts(x, n * in_len),
            std::slice::from_raw_parts(w, g.o * g.taps()),
        )
    };
    let bias = (!bias.is_null()).then(|| unsafe { std::slice::from_raw_parts(bias, g.o) });
    let blocks = g.o.div_ceil(BLOCK);
    // table[(b·kk + tap)·c + ci][l] = w[b·BLOCK + l][ci][tap] (zero past o): built by the first
    // sparse image.
    let table: OnceLock<Vec<Line>> = OnceLock::new();
    let build_table = || {
        let mut t = vec![Line(ZERO); blocks * kk * g.c];
        for (oc, wo) in ws.chunks_exact(g.taps()).enumerate() {
            let (b, l) = (oc / BLOCK, oc % BLOCK);
            for (ci, wc) in wo.chunks_exact(kk).enumerate() {
                for (tap, &v) in wc.iter().enumerate() {
                    t[(b * kk + tap) * g.c + ci].0[l] = v;
                }
            }
        }
        t
    };
    // The GEMM path's packed weights: built by the first dense image.
    let gemm: OnceLock<ConvForward> = OnceLock::new();
    let yp = SendPtr(y);
    split_map(n, d.threads_for(n * out_len * g.taps()), |start, end| {
        let (mut cols, mut out, mut acc) = (Scratch::pooled(), Vec::new(), Vec::new());
        let mut sparse = 0;
        for img in start..end {
            let xi = &xs[img * in_len..(img + 1) * in_len];
            let Some(spikes) = scan_sparse(&d, xi, 1, g.c, g.h * g.w) else {
                let fwd = gemm.get_or_init(|| ConvForward::new(g, ws, bias, false));
                // SAFETY: image `img`'s strips are written by this thread only.
                unsafe {
                    fwd.strips(
                        xs,
                        yp.get(),
                        img * g.strips(),
                        (img + 1) * g.strips(),
                        &mut cols,
                    )
                };
                continue;
            };
            sparse += 1;
            let table = table.get_or_init(&build_table);
            // SAFETY: image `img`'s output block is written by this thread only.
            let yi =
                unsafe { std::slice::from_raw_parts_mut(yp.get().add(img * out_len), out_len) };
            conv_image(&g, &spikes, table, bias, yi, &mut out, &mut acc, wide);
        }
        sparse
    })
    .into_iter()
    .sum()
}

/// [`snn_conv2d_f32`](super::snn_conv2d_f32) for binary `x` (see the module docs): per image,
/// the accumulate-only kernel below [`CONV_SPIKE_MAX_DENSITY`], else the GEMM one.
///
/// # Safety
/// As [`snn_conv2d_f32`](super::snn_conv2d_f32).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn snn_conv2d_spike_f32(
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    y: *mut f32,
    n: i64,
    c: i64,
    h: i64,
    wd: i64,
    o: i64,
    kh: i64,
    kw: i64,
    sh: i64,
    sw: i64,
    ph: i64,
    pw: i64,
    oh: i64,
    ow: i64,
) {
    let d = SpikeDispatch::by_isa(CONV_SPIKE_MAX_DENSITY, CONV_SPIKE_MAX_DENSITY_PORTABLE);
    // SAFETY: forwarded.
    unsafe {
        conv2d_spike(
            d, x, w, bias, y, n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow,
        )
    };
}

/// [`snn_dense_spike_f32`] with an explicit dispatch; returns whether it took the sparse path.
///
/// # Safety
/// As [`snn_dense_f32`](super::snn_dense_f32).
#[allow(clippy::too_many_arguments)]
pub unsafe fn dense_spike(
    d: SpikeDispatch,
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    y: *mut f32,
    outer: i64,
    n_in: i64,
    inner: i64,
    n_out: i64,
) -> bool {
    let (outer_, n_in_, inner_, n_out_) = (
        to_usize(outer),
        to_usize(n_in),
        to_usize(inner),
        to_usize(n_out),
    );
    if outer_ == 0 || inner_ == 0 || n_out_ == 0 {
        return false;
    }
    let len = n_in_ * inner_;
    // SAFETY: sizes as documented.
    let xs = unsafe { std::slice::from_raw_parts(x, outer_ * len) };
    let nnz = d.count(xs, outer_, len);
    if !d.sparse(nnz, xs.len()) {
        // SAFETY: forwarded.
        unsafe { snn_dense_f32(x, w, bias, y, outer, n_in, inner, n_out) };
        return false;
    }
    let (outer, n_in, inner, n_out) = (outer_, n_in_, inner_, n_out_);
    // SAFETY: sizes as documented.
    let ws = unsafe { std::slice::from_raw_parts(w, n_out * n_in) };
    let bias = (!bias.is_null()).then(|| unsafe { std::slice::from_raw_parts(bias, n_out) });
    let parts = spike_parts(&d, xs, outer, n_in, inner);
    let yp = SendPtr(y);
    let work = (nnz.unwrap_or(0) + n_in + outer * inner) * n_out;
    split(n_out.div_ceil(BLOCK), d.threads_for(work), |b0, b1| {
        let (mut table, mut out) = (vec![ZERO; n_in], Vec::new());
        for b in b0..b1 {
            let (j0, width) = block(b, n_out);
            // table[k][l] = w[j0 + l][k]; lanes past `width` (last block) keep stale values
            // that only reach lanes never stored.
            gather_lanes(&mut table, &ws[j0 * n_in..], n_in, width);
            let init = block_init(bias, j0, width);
            for (a0, spikes) in &parts {
                out.resize(spikes.rows(), ZERO);
                sum_rows(&table, &init, spikes, &mut out);
                for (r, acc) in out.iter().enumerate() {
                    let (a, i) = (a0 + r / inner, r % inner);
                    for (l, &v) in acc[..width].iter().enumerate() {
                        // SAFETY: channels j0..j0 + width of y belong to this thread.
                        unsafe { *yp.get().add((a * n_out + j0 + l) * inner + i) = v };
                    }
                }
            }
        }
    });
    true
}

/// The [`Spikes`] of `x[outer][n_in][inner]`, scanned in parallel blocks of `outer`: each block
/// with its first `a`.
fn spike_parts(
    d: &SpikeDispatch,
    xs: &[f32],
    outer: usize,
    n_in: usize,
    inner: usize,
) -> Vec<(usize, Spikes)> {
    let len = n_in * inner;
    split_map(outer, d.threads_for(xs.len()), |a0, a1| {
        (
            a0,
            scan_spikes(&xs[a0 * len..a1 * len], a1 - a0, n_in, inner),
        )
    })
}

/// [`snn_dense_f32`](super::snn_dense_f32) for binary `x` (see the module docs): the
/// accumulate-only kernel below [`DENSE_SPIKE_MAX_DENSITY`], else the GEMM one.
///
/// # Safety
/// As [`snn_dense_f32`](super::snn_dense_f32).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snn_dense_spike_f32(
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    y: *mut f32,
    outer: i64,
    n_in: i64,
    inner: i64,
    n_out: i64,
) {
    let d = SpikeDispatch::with(DENSE_SPIKE_MAX_DENSITY);
    // SAFETY: forwarded.
    unsafe { dense_spike(d, x, w, bias, y, outer, n_in, inner, n_out) };
}

/// [`snn_conv2d_backward_spike_f32`] with an explicit dispatch; returns whether dW took the
/// sparse path.
///
/// # Safety
/// As [`snn_conv2d_backward_f32`](super::snn_conv2d_backward_f32).
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv2d_backward_spike(
    d: SpikeDispatch,
    x: *const f32,
    w: *const f32,
    dy: *const f32,
    dx: *mut f32,
    dw: *mut f32,
    db: *mut f32,
    n: i64,
    c: i64,
    h: i64,
    wd: i64,
    o: i64,
    kh: i64,
    kw: i64,
    sh: i64,
    sw: i64,
    ph: i64,
    pw: i64,
    oh: i64,
    ow: i64,
) -> bool {
    let g = Conv::from_abi([c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow]);
    // SAFETY: forwarded.
    unsafe {
        conv_backward_spike(
            d,
            dw_wide(&g),
            x,
            w,
            dy,
            dx,
            dw,
            db,
            [n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow],
        )
    }
}

/// [`conv2d_backward_spike`] with the ABI's sizes in `a`, its sparse dW with
/// [`conv_dw_image_avx512`] when `wide`.
///
/// # Safety
/// As [`snn_conv2d_backward_f32`](super::snn_conv2d_backward_f32); `wide` only where
/// [`dw_wide`] holds.
#[allow(clippy::too_many_arguments)]
unsafe fn conv_backward_spike(
    d: SpikeDispatch,
    wide: bool,
    x: *const f32,
    w: *const f32,
    dy: *const f32,
    dx: *mut f32,
    dw: *mut f32,
    db: *mut f32,
    a: [i64; 13],
) -> bool {
    let [n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow] = a;
    let g = Conv::from_abi([c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow]);
    let n_ = to_usize(n);
    let empty = g.is_empty(n_);
    let (in_len, out_len, px, kk) = (g.c * g.h * g.w, g.o * g.pixels(), g.pixels(), g.kh * g.kw);
    // SAFETY: sizes as documented.
    let xs = unsafe { std::slice::from_raw_parts(x, if empty { 0 } else { n_ * in_len }) };
    // Each image's counting pass (`row_counts`) decides the path and, if sparse, serves its
    // list of active inputs.
    let counted: Vec<(Vec<usize>, bool)> = if empty || dw.is_null() {
        Vec::new()
    } else {
        split_map(n_, d.threads_for(xs.len()), |start, end| {
            (start..end)
                .map(|img| row_counts(&xs[img * in_len..(img + 1) * in_len], 1, g.c, g.h * g.w))
                .collect::<Vec<_>>()
        })
        .into_iter()
        .flatten()
        .collect()
    };
    let binary = counted.iter().all(|(_, bad)| !bad);
    let nnz: usize = counted
        .iter()
        .map(|(start, _)| start.iter().sum::<usize>())
        .sum();
    let sparse = !counted.is_empty() && binary && d.sparse(Some(nnz), xs.len());
    // dx and db (and dW on the dense path) from the GEMM kernel.
    let dw_dense = if sparse { std::ptr::null_mut() } else { dw };
    // SAFETY: forwarded.
    unsafe {
        snn_conv2d_backward_f32(
            x, w, dy, dx, dw_dense, db, n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow,
        );
    }
    if !sparse {
        return false;
    }
    let n = n_;
    // SAFETY: sizes as documented.
    let dys = unsafe { std::slice::from_raw_parts(dy, n * out_len) };
    if wide {
        // SAFETY: `wide` as documented.
        unsafe { conv_dw_wide(&d, &g, xs, dys, dw, n) };
        return true;
    }
    let counted = &counted;
    let spikes: Vec<Spikes> = split_map(n, d.threads_for(xs.len()), |start, end| {
        (start..end)
            .map(|img| {
                let x = &xs[img * in_len..(img + 1) * in_len];
                fill_spikes(x, 1, g.c, g.h * g.w, counted[img].0.clone())
            })
            .collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    let dwp = SendPtr(dw);
    let work = nnz * kk * g.o + n * out_len;
    split(g.o.div_ceil(BLOCK), d.threads_for(work), |b0, b1| {
        let (mut table, mut dyt) = (vec![ZERO; kk * g.c], vec![ZERO; px]);
        for b in b0..b1 {
            let (o0, width) = block(b, g.o);
            table.fill(ZERO);
            for (img, sp) in spikes.iter().enumerate() {
                if sp.k.is_empty() {
                    continue;
                }
                let dyi = &dys[img * out_len..(img + 1) * out_len];
                // dyt[pixel][l] = dy[o0 + l][pixel]; lanes past `width` stay stale and only
                // reach table lanes never read.
                gather_lanes(&mut dyt, &dyi[o0 * px..], px, width);
                conv_scatter(&g, sp, &dyt, &mut table);
            }
            // SAFETY: dw's rows o0..o0 + width (c·kk each) belong to this thread.
            let rows = unsafe {
                std::slice::from_raw_parts_mut(dwp.get().add(o0 * g.taps()), width * g.taps())
            };
            // dw[o0 + l][ci][tap] += table[tap·c + ci][l].
            for (t, lanes) in table.iter().enumerate() {
                let (tap, ci) = (t / g.c, t % g.c);
                for (l, &v) in lanes[..width].iter().enumerate() {
                    rows[l * g.taps() + ci * kk + tap] += v;
                }
            }
        }
    });
    true
}

/// The sparse dW of [`conv_backward_spike`] with [`conv_dw_image_avx512`]: per thread a block
/// of `BLOCK` output channels, its `[ci·kk + tap][lane]` sums in `table` over all images, then
/// added into dw's rows.
///
/// # Safety
/// [`dw_wide`] holds for `g`; `xs`, `dys` hold `n` images of `g`'s input and output gradient,
/// `dw` points to `o · c·kh·kw` floats.
unsafe fn conv_dw_wide(
    d: &SpikeDispatch,
    g: &Conv,
    xs: &[f32],
    dys: &[f32],
    dw: *mut f32,
    n: usize,
) {
    let (in_len, out_len, px, kk) = (g.c * g.h * g.w, g.o * g.pixels(), g.pixels(), g.kh * g.kw);
    let lists: Vec<(Vec<usize>, Vec<u32>)> = split_map(n, d.threads_for(xs.len()), |i0, i1| {
        (i0..i1)
            .map(|img| channel_pixels(&xs[img * in_len..(img + 1) * in_len], g.c, g.h, g.w))
            .collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    let nnz: usize = lists.iter().map(|l| l.1.len()).sum();
    let dwp = SendPtr(dw);
    let work = nnz * kk * g.o + n * out_len;
    split(g.o.div_ceil(BLOCK), d.threads_for(work), |b0, b1| {
        // One line past the pixels stays zero: the taps that miss the output read it.
        let (mut table, mut dyt) = (vec![Line(ZERO); kk * g.c], vec![Line(ZERO); px + 1]);
        for b in b0..b1 {
            let (o0, width) = block(b, g.o);
            table.fill(Line(ZERO));
            for (img, (start, at)) in lists.iter().enumerate() {
                if at.is_empty() {
                    continue;
                }
                let dyi = &dys[img * out_len..(img + 1) * out_len];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU has AVX-512F and g stride 1 ([`dw_wide`]); sizes as there.
                unsafe {
                    gather_dy_avx512(&mut dyt, &dyi[o0 * px..(o0 + width) * px], px, width);
                    conv_dw_image_avx512(g, start, at, &dyt, &mut table);
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (dyi, start);
            }
            // SAFETY: dw's rows o0..o0 + width (c·kk each) belong to this thread.
            let rows = unsafe {
                std::slice::from_raw_parts_mut(dwp.get().add(o0 * g.taps()), width * g.taps())
            };
            // SAFETY: Line is a Row with a larger alignment.
            let t =
                unsafe { std::slice::from_raw_parts(table.as_ptr().cast::<Row>(), table.len()) };
            // dw[o0 + l][ci·kk + tap] += table[ci·kk + tap][l].
            scatter_lanes(t, rows, g.taps(), width, true);
        }
    });
}

/// [`snn_conv2d_backward_f32`](super::snn_conv2d_backward_f32) for binary `x`: dx and db as
/// there (each may be null: a null `dx` skips the input gradient, for a caller that computes it
/// with [`snn_conv2d_backward_dx_masked_f32`](super::snn_conv2d_backward_dx_masked_f32)); dW
/// accumulate-only below [`CONV_BACKWARD_SPIKE_MAX_DENSITY`] (density over the whole call), else
/// the GEMM one.
///
/// # Safety
/// As [`snn_conv2d_backward_f32`](super::snn_conv2d_backward_f32).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn snn_conv2d_backward_spike_f32(
    x: *const f32,
    w: *const f32,
    dy: *const f32,
    dx: *mut f32,
    dw: *mut f32,
    db: *mut f32,
    n: i64,
    c: i64,
    h: i64,
    wd: i64,
    o: i64,
    kh: i64,
    kw: i64,
    sh: i64,
    sw: i64,
    ph: i64,
    pw: i64,
    oh: i64,
    ow: i64,
) {
    let g = Conv::from_abi([c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow]);
    let d = SpikeDispatch::with(if dw_wide(&g) {
        CONV_BACKWARD_SPIKE_MAX_DENSITY
    } else {
        CONV_BACKWARD_SPIKE_MAX_DENSITY_PORTABLE
    });
    // SAFETY: forwarded.
    unsafe {
        conv2d_backward_spike(
            d, x, w, dy, dx, dw, db, n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow,
        )
    };
}

/// [`snn_dense_backward_spike_f32`] with an explicit dispatch; returns whether dW took the
/// sparse path.
///
/// # Safety
/// As [`snn_dense_backward_f32`](super::snn_dense_backward_f32).
#[allow(clippy::too_many_arguments)]
pub unsafe fn dense_backward_spike(
    d: SpikeDispatch,
    x: *const f32,
    w: *const f32,
    dy: *const f32,
    dx: *mut f32,
    dw: *mut f32,
    db: *mut f32,
    outer: i64,
    n_in: i64,
    inner: i64,
    n_out: i64,
) -> bool {
    let (outer_, n_in_, inner_, n_out_) = (
        to_usize(outer),
        to_usize(n_in),
        to_usize(inner),
        to_usize(n_out),
    );
    let empty = outer_ == 0 || inner_ == 0 || n_out_ == 0 || n_in_ == 0;
    let len = n_in_ * inner_;
    // SAFETY: sizes as documented.
    let xs = unsafe { std::slice::from_raw_parts(x, if empty { 0 } else { outer_ * len }) };
    let sparse = !empty && !dw.is_null() && d.sparse(d.count(xs, outer_, len), xs.len());
    let dw_dense = if sparse { std::ptr::null_mut() } else { dw };
    // SAFETY: forwarded; dx and db (and dW on the dense path) from the GEMM kernel.
    unsafe { snn_dense_backward_f32(x, w, dy, dx, dw_dense, db, outer, n_in, inner, n_out) };
    if !sparse {
        return false;
    }
    let (outer, n_in, inner, n_out) = (outer_, n_in_, inner_, n_out_);
    // SAFETY: sizes as documented.
    let dys = unsafe { std::slice::from_raw_parts(dy, outer * n_out * inner) };
    let parts = spike_parts(&d, xs, outer, n_in, inner);
    let nnz: usize = parts.iter().map(|(_, s)| s.k.len()).sum();
    let dwp = SendPtr(dw);
    let work = (nnz + 2 * n_in + outer * inner) * n_out;
    split(n_out.div_ceil(BLOCK), d.threads_for(work), |b0, b1| {
        let (mut table, mut g) = (vec![ZERO; n_in], Vec::new());
        for b in b0..b1 {
            let (j0, width) = block(b, n_out);
            table.fill(ZERO);
            for (a0, spikes) in &parts {
                // g[r][l] = dy[a][j0 + l][i]; lanes past `width` stay zero.
                g.clear();
                g.resize(spikes.rows(), ZERO);
                for (r, gr) in g.iter_mut().enumerate() {
                    let (a, i) = (a0 + r / inner, r % inner);
                    for (l, v) in gr[..width].iter_mut().enumerate() {
                        *v = dys[(a * n_out + j0 + l) * inner + i];
                    }
                }
                scatter_rows(&g, spikes, &mut table);
            }
            // SAFETY: dw's rows j0..j0 + width (n_in each) belong to this thread.
            let rows =
                unsafe { std::slice::from_raw_parts_mut(dwp.get().add(j0 * n_in), width * n_in) };
            scatter_lanes(&table, rows, n_in, width, true);
        }
    });
    true
}

/// [`snn_dense_backward_f32`](super::snn_dense_backward_f32) for binary `x`: dx and db as
/// there; dW accumulate-only below [`DENSE_BACKWARD_SPIKE_MAX_DENSITY`], else the GEMM one.
///
/// # Safety
/// As [`snn_dense_backward_f32`](super::snn_dense_backward_f32).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn snn_dense_backward_spike_f32(
    x: *const f32,
    w: *const f32,
    dy: *const f32,
    dx: *mut f32,
    dw: *mut f32,
    db: *mut f32,
    outer: i64,
    n_in: i64,
    inner: i64,
    n_out: i64,
) {
    let d = SpikeDispatch::with(DENSE_BACKWARD_SPIKE_MAX_DENSITY);
    // SAFETY: forwarded.
    unsafe { dense_backward_spike(d, x, w, dy, dx, dw, db, outer, n_in, inner, n_out) };
}

#[cfg(test)]
mod tests {
    use super::super::tests::values;
    use super::super::{snn_conv2d_f32, snn_dense_backward_f32, snn_dense_f32};
    use super::*;

    /// 0/1 values with about `density` ones.
    fn spikes(n: usize, density: f64, seed: u32) -> Vec<f32> {
        values(n, seed)
            .iter()
            .map(|&v| f32::from(u8::from(f64::from(v + 1.0) / 2.0 < density)))
            .collect()
    }

    /// Densities every test runs: none, sparse, the order of the thresholds, dense, all ones.
    const DENSITIES: [f64; 5] = [0.0, 0.04, 0.25, 0.6, 1.0];

    fn always(threads: usize) -> SpikeDispatch {
        SpikeDispatch {
            max_density: f64::INFINITY,
            threads,
        }
    }

    const NEVER: SpikeDispatch = SpikeDispatch {
        max_density: 0.0,
        threads: 2,
    };

    /// Equal to f32 rounding: the sparse sums run in another order than the GEMM's.
    fn assert_close(what: &str, got: &[f32], want: &[f32]) {
        assert_near(what, got, want, 1e-5);
    }

    fn assert_near(what: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.iter()
            .map(|v| v.to_bits())
            .eq(b.iter().map(|v| v.to_bits()))
    }

    /// (n, c, h, w, o, kh, kw, sh, sw, ph, pw): padded, stride 2, odd sizes, a partial and
    /// several channel blocks (o = 70, 130), pointwise, kernel larger than the padding.
    /// The last two have enough input channels for the AVX-512 forward's passes over groups
    /// of taps (2 taps a pass, 1), odd widths and pixel counts not a multiple of 16.
    const CONVS: [[usize; 11]; 7] = [
        [3, 2, 7, 6, 4, 3, 3, 1, 1, 1, 1],
        [2, 3, 9, 8, 70, 3, 2, 2, 3, 1, 0],
        [4, 6, 5, 5, 3, 1, 1, 1, 1, 0, 0],
        [1, 5, 4, 4, 130, 5, 5, 1, 1, 2, 2],
        [2, 4, 11, 10, 9, 3, 3, 2, 2, 1, 1],
        [2, 48, 7, 9, 70, 3, 3, 1, 1, 1, 1],
        [1, 130, 6, 5, 20, 3, 3, 1, 2, 1, 1],
    ];

    fn conv_abi([n, c, h, w, o, kh, kw, sh, sw, ph, pw]: [usize; 11]) -> ([i64; 13], usize, usize) {
        let oh = (h + 2 * ph - kh) / sh + 1;
        let ow = (w + 2 * pw - kw) / sw + 1;
        let v = [n, c, h, w, o, kh, kw, sh, sw, ph, pw, oh, ow].map(|v| v as i64);
        (v, n * c * h * w, n * o * oh * ow)
    }

    #[test]
    fn conv_spike_matches_the_gemm_kernel() {
        for (case, &shape) in CONVS.iter().enumerate() {
            let (a, x_len, y_len) = conv_abi(shape);
            let [n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow] = a;
            let wt = values((o * c * kh * kw) as usize, 2);
            for (bias, with_bias) in [(values(o as usize, 3), true), (Vec::new(), false)] {
                let bp = if with_bias {
                    bias.as_ptr()
                } else {
                    std::ptr::null()
                };
                for (di, &density) in DENSITIES.iter().enumerate() {
                    let x = spikes(x_len, density, (case * 10 + di) as u32);
                    let run = |d: Option<SpikeDispatch>| {
                        let mut y = vec![f32::NAN; y_len];
                        let args = (x.as_ptr(), wt.as_ptr(), bp, y.as_mut_ptr());
                        let sparse = unsafe {
                            match d {
                                None => {
                                    snn_conv2d_f32(
                                        args.0, args.1, args.2, args.3, n, c, h, wd, o, kh, kw, sh,
                                        sw, ph, pw, oh, ow,
                                    );
                                    0
                                }
                                Some(d) => conv2d_spike(
                                    d, args.0, args.1, args.2, args.3, n, c, h, wd, o, kh, kw, sh,
                                    sw, ph, pw, oh, ow,
                                ),
                            }
                        };
                        (y, sparse)
                    };
                    let (want, _) = run(None);
                    let (one, s1) = run(Some(always(1)));
                    let (three, s3) = run(Some(always(3)));
                    let (dense, s0) = run(Some(NEVER));
                    assert_eq!((s1, s3, s0), (n as usize, n as usize, 0), "paths");
                    assert_close(&format!("conv {case} density {density}"), &one, &want);
                    assert!(same_bits(&one, &three), "thread count changed conv {case}");
                    assert!(same_bits(&dense, &want), "dense path differs");
                }
            }
        }
    }

    #[test]
    fn conv_spike_paths_agree() {
        // The portable forward (conv_sum per block, then a transposition) and the AVX-512 one
        // (where the CPU has it) against the GEMM kernel, whatever the dispatch would pick.
        let widths: &[bool] = if avx512() { &[false, true] } else { &[false] };
        for (case, &shape) in CONVS.iter().enumerate() {
            let (a, x_len, y_len) = conv_abi(shape);
            let [n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow] = a;
            let g = Conv::from_abi([c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow]);
            let wt = values((o * c * kh * kw) as usize, 4);
            let bias = values(o as usize, 5);
            for (di, &density) in [0.0, 0.1, 0.3, 0.5, 1.0].iter().enumerate() {
                let x = spikes(x_len, density, (case * 7 + di) as u32);
                let mut want = vec![f32::NAN; y_len];
                unsafe {
                    snn_conv2d_f32(
                        x.as_ptr(),
                        wt.as_ptr(),
                        bias.as_ptr(),
                        want.as_mut_ptr(),
                        n,
                        c,
                        h,
                        wd,
                        o,
                        kh,
                        kw,
                        sh,
                        sw,
                        ph,
                        pw,
                        oh,
                        ow,
                    )
                };
                for &wide in widths {
                    for threads in [1, 2] {
                        let mut y = vec![f32::NAN; y_len];
                        let sparse = unsafe {
                            conv_forward_spike(
                                always(threads),
                                wide,
                                x.as_ptr(),
                                wt.as_ptr(),
                                bias.as_ptr(),
                                y.as_mut_ptr(),
                                n as usize,
                                g,
                            )
                        };
                        assert_eq!(sparse, n as usize);
                        let what = format!("conv {case} density {density} wide {wide}");
                        // Up to c·kh·kw = 1170 terms, summed in another order.
                        assert_near(&what, &y, &want, 1e-4);
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transpose16_transposes() {
        if !avx512() {
            return;
        }
        use std::arch::x86_64::*;
        let m: Vec<f32> = (0..256).map(|v| v as f32).collect();
        let mut t = vec![0f32; 256];
        // SAFETY: the CPU has AVX-512F; 16 rows of 16 floats each way.
        unsafe {
            let rows: [__m512; 16] = std::array::from_fn(|k| _mm512_loadu_ps(m[16 * k..].as_ptr()));
            for (l, col) in transpose16(rows).iter().enumerate() {
                _mm512_storeu_ps(t[16 * l..].as_mut_ptr(), *col);
            }
        }
        for k in 0..16 {
            for l in 0..16 {
                assert_eq!(t[16 * l + k], m[16 * k + l]);
            }
        }
    }

    /// (outer, n_in, inner, n_out, bias): inner = 1 (the usual layer), inner > 1, a partial
    /// block, several blocks.
    const DENSES: [(usize, usize, usize, usize, bool); 5] = [
        (5, 7, 1, 3, true),
        (3, 40, 6, 2, true),
        (2, 9, 5, 70, false),
        (70, 33, 1, 130, true),
        (33, 300, 1, 64, false),
    ];

    #[test]
    fn dense_spike_matches_the_gemm_kernel() {
        for (case, &(outer, n_in, inner, n_out, with_bias)) in DENSES.iter().enumerate() {
            let w = values(n_out * n_in, 5);
            let b = values(n_out, 6);
            let bp = if with_bias {
                b.as_ptr()
            } else {
                std::ptr::null()
            };
            let sizes = [outer, n_in, inner, n_out].map(|v| v as i64);
            for (di, &density) in DENSITIES.iter().enumerate() {
                let x = spikes(outer * n_in * inner, density, (case * 10 + di) as u32);
                let run = |d: Option<SpikeDispatch>| {
                    let mut y = vec![f32::NAN; outer * n_out * inner];
                    let [o, k, i, j] = sizes;
                    let sparse = unsafe {
                        match d {
                            None => {
                                snn_dense_f32(
                                    x.as_ptr(),
                                    w.as_ptr(),
                                    bp,
                                    y.as_mut_ptr(),
                                    o,
                                    k,
                                    i,
                                    j,
                                );
                                false
                            }
                            Some(d) => dense_spike(
                                d,
                                x.as_ptr(),
                                w.as_ptr(),
                                bp,
                                y.as_mut_ptr(),
                                o,
                                k,
                                i,
                                j,
                            ),
                        }
                    };
                    (y, sparse)
                };
                let (want, _) = run(None);
                let (one, s1) = run(Some(always(1)));
                let (three, s3) = run(Some(always(3)));
                let (dense, s0) = run(Some(NEVER));
                assert_eq!((s1, s3, s0), (true, true, false), "paths");
                assert_close(&format!("dense {case} density {density}"), &one, &want);
                assert!(same_bits(&one, &three), "thread count changed dense {case}");
                assert!(same_bits(&dense, &want), "dense path differs");
            }
        }
    }

    /// dx, dw, db after one backward call that accumulates into buffers of ones.
    type Grads = (Vec<f32>, Vec<f32>, Vec<f32>);

    #[test]
    fn conv_backward_spike_matches_the_gemm_kernel() {
        for (case, &shape) in CONVS.iter().enumerate() {
            let (a, x_len, y_len) = conv_abi(shape);
            let [n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow] = a;
            let w = values((o * c * kh * kw) as usize, 8);
            let dy = values(y_len, 9);
            for (di, &density) in DENSITIES.iter().enumerate() {
                let x = spikes(x_len, density, (case * 10 + di) as u32);
                let run = |d: Option<SpikeDispatch>, want_dw: bool| -> (Grads, bool) {
                    let (mut dx, mut dw, mut db) = (
                        vec![1f32; x_len],
                        vec![1f32; w.len()],
                        vec![1f32; o as usize],
                    );
                    let dwp = if want_dw {
                        dw.as_mut_ptr()
                    } else {
                        std::ptr::null_mut()
                    };
                    let p = (
                        x.as_ptr(),
                        w.as_ptr(),
                        dy.as_ptr(),
                        dx.as_mut_ptr(),
                        dwp,
                        db.as_mut_ptr(),
                    );
                    let sparse = unsafe {
                        match d {
                            None => {
                                snn_conv2d_backward_f32(
                                    p.0, p.1, p.2, p.3, p.4, p.5, n, c, h, wd, o, kh, kw, sh, sw,
                                    ph, pw, oh, ow,
                                );
                                false
                            }
                            Some(d) => conv2d_backward_spike(
                                d, p.0, p.1, p.2, p.3, p.4, p.5, n, c, h, wd, o, kh, kw, sh, sw,
                                ph, pw, oh, ow,
                            ),
                        }
                    };
                    ((dx, dw, db), sparse)
                };
                let (want, _) = run(None, true);
                let (one, s1) = run(Some(always(1)), true);
                let (three, s3) = run(Some(always(3)), true);
                let (dense, s0) = run(Some(NEVER), true);
                let (no_dw, s_null) = run(Some(always(2)), false);
                assert_eq!((s1, s3, s0, s_null), (true, true, false, false), "paths");
                let what = format!("conv backward {case} density {density}");
                assert_close(&what, &one.1, &want.1);
                assert!(same_bits(&one.0, &want.0), "{what}: dx");
                // With dW on the sparse path, db sums dy's rows directly: another order.
                assert_close(&format!("{what}: db"), &one.2, &want.2);
                assert!(
                    same_bits(&one.1, &three.1) && same_bits(&one.2, &three.2),
                    "{what}: thread count changed dw or db"
                );
                assert!(same_bits(&dense.1, &want.1), "{what}: dense path");
                assert!(no_dw.1.iter().all(|&v| v == 1.0), "{what}: wrote a null dw");
                assert!(same_bits(&no_dw.0, &want.0), "{what}: dx without dw");
            }
        }
    }

    /// The AVX-512 dW (where [`dw_wide`] holds: stride 1) and the portable one agree with the
    /// GEMM's on 1 and 2 threads, the wide one bit-identical across thread counts; the shapes of
    /// `CONVS` and one tall and wide enough for several bands of rows (`rows` = 3).
    #[test]
    fn conv_backward_dw_paths_agree() {
        let shapes = CONVS
            .iter()
            .copied()
            .chain([[2, 3, 13, 40, 70, 3, 3, 1, 1, 1, 1]]);
        for (case, shape) in shapes.enumerate() {
            let (a, x_len, y_len) = conv_abi(shape);
            let [n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow] = a;
            let g = Conv::from_abi([c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow]);
            assert_eq!(dw_wide(&g), avx512() && sh == 1 && sw == 1, "{case}: wide");
            let w = values((o * c * kh * kw) as usize, 21);
            let dy = values(y_len, 22);
            for (di, &density) in [0.0, 0.1, 0.35, 1.0].iter().enumerate() {
                let x = spikes(x_len, density, (case * 10 + di + 300) as u32);
                let run = |d: Option<SpikeDispatch>, wide: bool| -> Vec<f32> {
                    let (mut dx, mut dw, mut db) = (
                        vec![0f32; x_len],
                        vec![0.5f32; w.len()],
                        vec![0f32; o as usize],
                    );
                    let p = (x.as_ptr(), w.as_ptr(), dy.as_ptr());
                    let (pdx, pdw, pdb) = (dx.as_mut_ptr(), dw.as_mut_ptr(), db.as_mut_ptr());
                    unsafe {
                        match d {
                            None => snn_conv2d_backward_f32(
                                p.0, p.1, p.2, pdx, pdw, pdb, n, c, h, wd, o, kh, kw, sh, sw, ph,
                                pw, oh, ow,
                            ),
                            Some(d) => {
                                let sparse =
                                    conv_backward_spike(d, wide, p.0, p.1, p.2, pdx, pdw, pdb, a);
                                assert!(sparse, "{case}: sparse path");
                            }
                        }
                    }
                    dw
                };
                let want = run(None, false);
                let what = format!("conv dW {case} density {density}");
                for wide in [false, dw_wide(&g)] {
                    let one = run(Some(always(1)), wide);
                    let two = run(Some(always(2)), wide);
                    // Sums of up to n·oh·ow terms of either sign.
                    assert_near(&format!("{what} wide {wide}"), &one, &want, 1e-4);
                    assert!(
                        same_bits(&one, &two),
                        "{what} wide {wide}: threads changed dw"
                    );
                }
            }
        }
    }

    #[test]
    fn dense_backward_spike_matches_the_gemm_kernel() {
        for (case, &(outer, n_in, inner, n_out, _)) in DENSES.iter().enumerate() {
            let w = values(n_out * n_in, 11);
            let dy = values(outer * n_out * inner, 12);
            let [o, k, i, j] = [outer, n_in, inner, n_out].map(|v| v as i64);
            for (di, &density) in DENSITIES.iter().enumerate() {
                let x = spikes(outer * n_in * inner, density, (case * 10 + di) as u32);
                let run = |d: Option<SpikeDispatch>| -> (Grads, bool) {
                    let (mut dx, mut dw, mut db) =
                        (vec![1f32; x.len()], vec![1f32; w.len()], vec![1f32; n_out]);
                    let p = (
                        x.as_ptr(),
                        w.as_ptr(),
                        dy.as_ptr(),
                        dx.as_mut_ptr(),
                        dw.as_mut_ptr(),
                        db.as_mut_ptr(),
                    );
                    let sparse = unsafe {
                        match d {
                            None => {
                                snn_dense_backward_f32(p.0, p.1, p.2, p.3, p.4, p.5, o, k, i, j);
                                false
                            }
                            Some(d) => {
                                dense_backward_spike(d, p.0, p.1, p.2, p.3, p.4, p.5, o, k, i, j)
                            }
                        }
                    };
                    ((dx, dw, db), sparse)
                };
                let (want, _) = run(None);
                let (one, s1) = run(Some(always(1)));
                let (three, s3) = run(Some(always(3)));
                let (dense, s0) = run(Some(NEVER));
                assert_eq!((s1, s3, s0), (true, true, false), "paths");
                let what = format!("dense backward {case} density {density}");
                assert_close(&what, &one.1, &want.1);
                assert!(same_bits(&one.0, &want.0), "{what}: dx");
                // With dW on the sparse path, db sums dy's rows directly: another order.
                assert_close(&format!("{what}: db"), &one.2, &want.2);
                assert!(
                    same_bits(&one.1, &three.1) && same_bits(&one.2, &three.2),
                    "{what}: thread count changed dw or db"
                );
                assert!(same_bits(&dense.1, &want.1), "{what}: dense path");
            }
        }
    }

    #[test]
    fn the_dispatch_follows_density_and_binarity() {
        let (outer, n_in, n_out) = (40, 500, 20);
        let w = values(n_out * n_in, 1);
        let mut y = vec![0f32; outer * n_out];
        let run = |d: SpikeDispatch, x: &[f32], y: &mut [f32]| unsafe {
            dense_spike(
                d,
                x.as_ptr(),
                w.as_ptr(),
                std::ptr::null(),
                y.as_mut_ptr(),
                outer as i64,
                n_in as i64,
                1,
                n_out as i64,
            )
        };
        let d = SpikeDispatch::with(DENSE_SPIKE_MAX_DENSITY);
        let low = spikes(outer * n_in, DENSE_SPIKE_MAX_DENSITY / 4.0, 2);
        let high = spikes(outer * n_in, (DENSE_SPIKE_MAX_DENSITY * 2.0).min(1.0), 3);
        assert!(run(d, &low, &mut y), "low density takes the sparse path");
        assert!(!run(d, &high, &mut y), "high density takes the GEMM path");
        // A value other than 0 and 1 (graded input) rules the sparse path out.
        let mut graded = low.clone();
        graded[17] = 0.5;
        assert!(
            !run(always(2), &graded, &mut y),
            "non-binary input stays dense"
        );
        graded[17] = f32::NAN;
        assert!(!run(always(2), &graded, &mut y), "NaN input stays dense");

        // The conv forward decides per image.
        let [n, c, h, wd, o] = [2usize, 3, 6, 6, 4];
        let img = c * h * wd;
        let mut x = spikes(img, CONV_SPIKE_MAX_DENSITY / 4.0, 4);
        x.extend(spikes(img, (CONV_SPIKE_MAX_DENSITY * 2.0).min(1.0), 5));
        let w = values(o * c * 9, 6);
        let mut y = vec![0f32; n * o * h * wd];
        let d = SpikeDispatch::with(CONV_SPIKE_MAX_DENSITY);
        let [n, c, h, wd, o] = [n, c, h, wd, o].map(|v| v as i64);
        let forward = |x: &[f32], y: &mut [f32]| unsafe {
            conv2d_spike(
                d,
                x.as_ptr(),
                w.as_ptr(),
                std::ptr::null(),
                y.as_mut_ptr(),
                n,
                c,
                h,
                wd,
                o,
                3,
                3,
                1,
                1,
                1,
                1,
                h,
                wd,
            )
        };
        assert_eq!(forward(&x, &mut y), 1, "one sparse and one dense image");

        // The counting pass that dispatches also checks binarity: a graded value or a NaN in
        // the sparse image sends it to the GEMM path too, forward and weight gradient alike.
        let low = spikes(x.len(), CONV_BACKWARD_SPIKE_MAX_DENSITY / 4.0, 7);
        let dy = values(y.len(), 8);
        let a = [n, c, h, wd, o, 3, 3, 1, 1, 1, 1, h, wd];
        let db = SpikeDispatch::with(CONV_BACKWARD_SPIKE_MAX_DENSITY);
        let weight_gradient = |x: &[f32]| {
            let (mut dx, mut dw, mut dbias) = (vec![0f32; x.len()], vec![0f32; w.len()], [0f32; 4]);
            let (pdx, pdw, pdb) = (dx.as_mut_ptr(), dw.as_mut_ptr(), dbias.as_mut_ptr());
            unsafe {
                conv_backward_spike(
                    db,
                    false,
                    x.as_ptr(),
                    w.as_ptr(),
                    dy.as_ptr(),
                    pdx,
                    pdw,
                    pdb,
                    a,
                )
            }
        };
        assert!(weight_gradient(&low), "sparse weight gradient");
        for bad in [0.5, f32::NAN] {
            let mut graded = x.clone();
            graded[5] = bad;
            assert_eq!(
                forward(&graded, &mut y),
                0,
                "{bad}: a non-binary image stays dense"
            );
            let mut graded = low.clone();
            graded[5] = bad;
            assert!(
                !weight_gradient(&graded),
                "{bad}: a non-binary input's weight gradient stays dense"
            );
        }
    }
}
