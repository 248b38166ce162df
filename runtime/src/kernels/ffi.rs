//! `extern "C"` kernels that code generated for the CPU calls: f32 convolution and dense layers
//! as matrix products. The convolutions and the dense forward use this module's packed GEMM
//! (`ffi/gemm.rs`: weights packed once per call, the input's columns read in place from a padded copy
//! or im2col-packed, AVX-512 / AVX2+FMA tile kernels); the dense backward uses `matrixmultiply`
//! (measured faster for its shapes; see docs/decisions.md for why not the `gemm` crate).
//!
//! Layouts (dense, row-major, as the lowering's memrefs):
//! - [`snn_conv2d_f32`]: `x[n][c][h][w]`, `w[o][c][kh][kw]`, `bias[o]` (or null), `y[n][o][oh][ow]`,
//!   where `n` is every axis before the channel axis (T·B) folded together; PyTorch's
//!   cross-correlation with symmetric zero padding.
//! - [`snn_dense_f32`]: `x[outer][n_in][inner]`, `w[n_out][n_in]`, `bias[n_out]` (or null),
//!   `y[outer][n_out][inner]`: a dense layer along one axis of a tensor.
//!
//! Threads: `SNN_THREADS` (a positive integer) or else `std::thread::available_parallelism`,
//! read once. Work is split into contiguous blocks of output strips, images, rows or columns, so
//! each thread writes a disjoint part of the result, and every element is summed in an order
//! fixed by the shapes: results do not depend on the thread count.
//!
//! [`snn_conv2d_spike_f32`], [`snn_dense_spike_f32`] and their backward: the same kernels for
//! binary (spike) input, accumulate-only and zero-skipping below a measured crossover density,
//! these GEMM kernels above it.
//!
//! [`snn_conv2d_backward_dx_masked_f32`]: a convolution's input gradient only where a mask says
//! it is needed (the spiking layers' surrogate derivative is zero at most positions), as dot
//! products over the needed positions below a measured crossover density, the dense dx above it.
//!
//! [`snn_parallel_for`]: the generated code's own parallel loops (outlined by the CPU backend),
//! on the same number of threads.

use std::sync::OnceLock;

mod gemm;
mod masked;
mod parallel;
mod spike;
use gemm::{BSrc, DEPTH_BLOCK, Init, MR, NR, Pooled, Scratch, View, pack, packed_len, tiles};
pub use masked::{
    CONV_DX_MASKED_MAX_DENSITY, CONV_DX_MASKED_MAX_DENSITY_PORTABLE, conv2d_backward_dx_masked,
    snn_conv2d_backward_dx_masked_f32,
};
pub use parallel::{LoopBody, set_min_parallel_ns, snn_parallel_for};
pub use spike::{
    CONV_BACKWARD_SPIKE_MAX_DENSITY, CONV_SPIKE_MAX_DENSITY, DENSE_BACKWARD_SPIKE_MAX_DENSITY,
    DENSE_SPIKE_MAX_DENSITY, SpikeDispatch, conv2d_backward_spike, conv2d_spike,
    dense_backward_spike, dense_spike, snn_conv2d_backward_spike_f32, snn_conv2d_spike_f32,
    snn_dense_backward_spike_f32, snn_dense_spike_f32,
};

#[cfg(test)]
thread_local! {
    /// A test's thread count for the kernels it calls (see `tests::with_threads`).
    static TEST_THREADS: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Worker threads for the kernels (see the module docs).
pub fn kernel_threads() -> usize {
    #[cfg(test)]
    if let Some(n) = TEST_THREADS.get() {
        return n;
    }
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("SNN_THREADS")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1)
    })
}

/// Below this many multiply-adds per call a second thread costs more than it saves.
const MIN_MACS_PER_THREAD: usize = 1 << 18;

/// `dst[m×n] (row stride dst_rs) = lhs[m×k] · rhs[k×n]` (+ dst when `accumulate`), strides in
/// elements, single-threaded.
///
/// # Safety
/// Every pointer must address the elements its shape and strides describe; `dst` must not
/// overlap the inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: forwarded from the caller. sgemm computes dst := alpha·lhs·rhs + beta·dst and
    // does not read dst when beta is 0.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            lhs,
            lhs_rs,
            lhs_cs,
            rhs,
            rhs_rs,
            rhs_cs,
            if accumulate { 1.0 } else { 0.0 },
            dst,
            dst_rs,
            1,
        );
    }
}

/// [`sgemm`] with the rows or the columns of `dst`, whichever are more, split over up to
/// `threads` threads. Each thread packs the whole of the other operand, so the smaller one is
/// the one packed more than once; every element's sum is the same whatever the split. The
/// dense backward's products (a short depth or a long, thin result) measured faster here than
/// through [`gemm::gemm`] (bench/RESULTS.md).
///
/// # Safety
/// As [`sgemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_split(
    threads: usize,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
) {
    let (dp, lp, rp) = (
        SendPtr(dst),
        SendPtr(lhs.cast_mut()),
        SendPtr(rhs.cast_mut()),
    );
    let at =
        |p: SendPtr<f32>, i: usize, stride: isize| p.get().wrapping_offset(i as isize * stride);
    if m >= n {
        split(m, threads, |i0, i1| {
            // SAFETY: rows i0..i1 of dst (and of lhs) are this thread's.
            unsafe {
                sgemm(
                    i1 - i0,
                    n,
                    k,
                    at(dp, i0, dst_rs),
                    dst_rs,
                    accumulate,
                    at(lp, i0, lhs_rs),
                    lhs_rs,
                    lhs_cs,
                    rp.get(),
                    rhs_rs,
                    rhs_cs,
                );
            }
        });
    } else {
        split(n, threads, |j0, j1| {
            // SAFETY: columns j0..j1 of dst (and of rhs) are this thread's.
            unsafe {
                sgemm(
                    m,
                    j1 - j0,
                    k,
                    at(dp, j0, 1),
                    dst_rs,
                    accumulate,
                    lp.get(),
                    lhs_rs,
                    lhs_cs,
                    at(rp, j0, rhs_cs),
                    rhs_rs,
                    rhs_cs,
                );
            }
        });
    }
}

/// Splits `0..items` into at most `threads` contiguous blocks and runs `f(start, end)` for each,
/// in parallel when there is more than one block.
fn split<F: Fn(usize, usize) + Sync>(items: usize, threads: usize, f: F) {
    split_map(items, threads, f);
}

/// [`split`], returning each block's result in block order (so that a caller reducing them gets
/// the same order whatever ran first).
fn split_map<R: Send, F: Fn(usize, usize) -> R + Sync>(
    items: usize,
    threads: usize,
    f: F,
) -> Vec<R> {
    let threads = threads.clamp(1, items.max(1));
    if threads == 1 {
        return vec![f(0, items)];
    }
    let per = items.div_ceil(threads);
    let Some(pool) = parallel::pool() else {
        return (0..items)
            .step_by(per)
            .map(|start| f(start, (start + per).min(items)))
            .collect();
    };
    // The generated loops' pool: no thread is created per call. Blocks beyond the first go to
    // the workers; each result lands in its block's slot.
    let rest: Vec<std::sync::Mutex<Option<R>>> = (per..items)
        .step_by(per)
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    let first = pool.in_place_scope(|s| {
        let f = &f;
        for (k, slot) in rest.iter().enumerate() {
            let start = per * (k + 1);
            s.spawn(move |_| {
                let r = f(start, (start + per).min(items));
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
        }
        f(0, per.min(items))
    });
    // `in_place_scope` re-raises a block's panic, so every slot is filled here.
    let mut out = vec![first];
    out.extend(
        rest.into_iter()
            .filter_map(|slot| slot.into_inner().unwrap_or_else(|e| e.into_inner())),
    );
    out
}

/// Runs `f(start, end)` over contiguous blocks of `0..items` on the kernels' threads, in
/// blocks of at least `min_block` items (so that small jobs stay on the calling thread).
pub(crate) fn for_blocks<F: Fn(usize, usize) + Sync>(items: usize, min_block: usize, f: F) {
    let threads = kernel_threads().min(items / min_block.max(1)).max(1);
    split(items, threads, f);
}

/// The sum of `xs` in 16 independent lanes (so that it runs in vectors), then across them.
fn lane_sum(xs: &[f32]) -> f32 {
    let (chunks, tail) = xs.as_chunks::<16>();
    let mut lanes = [0f32; 16];
    for chunk in chunks {
        for (l, v) in lanes.iter_mut().zip(chunk) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

fn threads_for(macs: usize) -> usize {
    threads_capped(kernel_threads(), macs)
}

/// At most `threads`, and fewer when `work` (multiply-adds or comparable steps) is small.
fn threads_capped(threads: usize, work: usize) -> usize {
    threads.min((work / MIN_MACS_PER_THREAD).max(1)).max(1)
}

/// A raw pointer that may cross threads: every user writes a disjoint range.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: the kernels hand each thread a disjoint part of the buffer.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so that closures capture the whole `SendPtr`, not its field).
    fn get(self) -> *mut T {
        self.0
    }
}

fn to_usize(v: i64) -> usize {
    usize::try_from(v).unwrap_or(0)
}

/// Geometry of one convolution call.
#[derive(Clone, Copy)]
struct Conv {
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
}

impl Conv {
    /// The geometry from the C ABI's arguments, in their order (negative values count as 0).
    fn from_abi([c, h, w, o, kh, kw, sh, sw, ph, pw, oh, ow]: [i64; 12]) -> Conv {
        Conv {
            c: to_usize(c),
            h: to_usize(h),
            w: to_usize(w),
            o: to_usize(o),
            kh: to_usize(kh),
            kw: to_usize(kw),
            sh: to_usize(sh),
            sw: to_usize(sw),
            ph: to_usize(ph),
            pw: to_usize(pw),
            oh: to_usize(oh),
            ow: to_usize(ow),
        }
    }

    fn taps(&self) -> usize {
        self.c * self.kh * self.kw
    }
    fn pixels(&self) -> usize {
        self.oh * self.ow
    }
    /// Whether a call over `n` images has nothing to compute (the ABI's no-op sizes).
    fn is_empty(&self, n: usize) -> bool {
        n == 0 || self.c == 0 || self.o == 0 || self.pixels() == 0 || self.kh == 0 || self.kw == 0
    }
    /// Tap `t` of the column matrix as (channel, kernel row, kernel column).
    fn tap(&self, t: usize) -> (usize, usize, usize) {
        let kk = self.kh * self.kw;
        (t / kk, t % kk / self.kw, t % self.kw)
    }

    /// Taps `t0..t1` as (channel, kernel row, kernel column), counted up without divisions.
    fn taps_from(&self, t0: usize, t1: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        let (kh, kw) = (self.kh, self.kw);
        std::iter::successors(Some(self.tap(t0)), move |&(c, p, q)| {
            Some(if q + 1 < kw {
                (c, p, q + 1)
            } else if p + 1 < kh {
                (c, p + 1, 0)
            } else {
                (c + 1, 0, 0)
            })
        })
        .take(t1.saturating_sub(t0))
    }

    /// Input row of output row `i` under kernel row `p`, None in the padding.
    fn input_row(&self, i: usize, p: usize) -> Option<usize> {
        (i * self.sh + p)
            .checked_sub(self.ph)
            .filter(|&ih| ih < self.h)
    }

    /// For kernel column `q` at stride 1: the output columns `lo..hi` (within `j0..j1`) whose
    /// input column `j + q − pw` lies inside the row, as one contiguous run.
    fn inside(&self, q: usize, j0: usize, j1: usize) -> (usize, usize) {
        let lo = self.pw.saturating_sub(q).clamp(j0, j1);
        let hi = (self.w + self.pw).saturating_sub(q).clamp(lo, j1);
        (lo, hi)
    }

    /// Splits output pixels `p0..p0 + len` into runs within one output row: `f(offset, i, j0,
    /// j1)` for pixels `i·ow + j0 .. i·ow + j1`, `offset` from `p0`.
    fn runs(&self, p0: usize, len: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
        let (mut px, end) = (p0, p0 + len);
        while px < end {
            let (i, j0) = (px / self.ow, px % self.ow);
            let j1 = self.ow.min(j0 + end - px);
            f(px - p0, i, j0, j1);
            px += j1 - j0;
        }
    }

    /// Rows and columns of a padded plane (see [`Conv::pad`]).
    fn padded_plane(&self) -> (usize, usize) {
        (self.h + 2 * self.ph, self.w + 2 * self.pw)
    }

    /// Floats of channels `c0..c1` padded, rounded up to whole 64-byte lines (so that what
    /// follows them in a [`Scratch`] stays aligned).
    fn padded_len(&self, c0: usize, c1: usize) -> usize {
        let (hp, wp) = self.padded_plane();
        ((c1 - c0) * hp * wp).next_multiple_of(16)
    }

    /// Channels `c0..c1` of image `x` with the zero padding written out, plane `c − c0` of `xp`
    /// `hp × wp` ([`Conv::padded_plane`]): [`Conv::im2col`] then reads every tap without
    /// bounds checks.
    fn pad(&self, x: &[f32], c0: usize, c1: usize, xp: &mut [f32]) {
        let (hp, wp) = self.padded_plane();
        let (h, w, ph, pw) = (self.h, self.w, self.ph, self.pw);
        let planes = x[c0 * h * w..c1 * h * w].chunks_exact(h * w);
        for (plane, src) in xp.chunks_exact_mut(hp * wp).zip(planes) {
            plane[..ph * wp].fill(0.0);
            plane[(ph + h) * wp..].fill(0.0);
            let rows = plane[ph * wp..(ph + h) * wp].chunks_exact_mut(wp);
            for (row, s) in rows.zip(src.chunks_exact(w)) {
                row[..pw].fill(0.0);
                copy_run(&mut row[pw..pw + w], s);
                row[pw + w..].fill(0.0);
            }
        }
    }

    /// im2col of one image, taps `t0..t1` over output pixels `p0..p0 + len`:
    /// `dst[(t − t0)·ld + px − p0] = x_pad[c][i·sh + p][j·sw + q]` for tap t = (c, p, q) and
    /// pixel px = (i, j), read from `xp`, the image's channels from `c0` on padded by
    /// [`Conv::pad`]. Owns the index logic that [`Conv::col2im_add`] inverts.
    #[allow(clippy::too_many_arguments)]
    fn im2col(
        &self,
        xp: &[f32],
        c0: usize,
        t0: usize,
        t1: usize,
        p0: usize,
        len: usize,
        dst: &mut [f32],
        ld: usize,
    ) {
        let (hp, wp) = self.padded_plane();
        // Runs outside, taps inside: the per-tap step is one short copy.
        self.runs(p0, len, |off, i, j0, j1| {
            let n = j1 - j0;
            for ((c, p, q), row) in self.taps_from(t0, t1).zip(dst.chunks_mut(ld)) {
                let start = ((c - c0) * hp + i * self.sh + p) * wp + j0 * self.sw + q;
                let dst = &mut row[off..off + n];
                if self.sw == 1 {
                    copy_run(dst, &xp[start..start + n]);
                } else {
                    for (d, s) in dst.iter_mut().zip(xp[start..].iter().step_by(self.sw)) {
                        *d = *s;
                    }
                }
            }
        });
    }

    /// The adjoint of [`Conv::im2col`] over all taps (`t0 = 0`, `t1 = taps`, else the same
    /// arguments): `dx[c][ih][iw] += src[..]`.
    fn col2im_add(&self, src: &[f32], p0: usize, len: usize, dx: &mut [f32], ld: usize) {
        let hw = self.h * self.w;
        self.runs(p0, len, |off, i, j0, j1| {
            // Kernel column outermost: taps (c, p, q) and (c, p, q + 1) add to overlapping,
            // shifted ranges of one row, and back to back the second's loads wait on the
            // first's stores.
            for q in 0..self.kw {
                let (lo, hi) = self.inside(q, j0, j1);
                for cp in 0..self.c * self.kh {
                    let (c, p) = (cp / self.kh, cp % self.kh);
                    let Some(ih) = self.input_row(i, p) else {
                        continue;
                    };
                    let row = &src[(cp * self.kw + q) * ld + off..][..j1 - j0];
                    let dst = &mut dx[c * hw + ih * self.w..c * hw + (ih + 1) * self.w];
                    if self.sw == 1 {
                        let s0 = lo + q - self.pw;
                        add_run(&mut dst[s0..s0 + (hi - lo)], &row[lo - j0..hi - j0]);
                    } else {
                        for (j, v) in (j0..j1).zip(row) {
                            if let Some(d) = (j * self.sw + q)
                                .checked_sub(self.pw)
                                .and_then(|iw| dst.get_mut(iw))
                            {
                                *d += v;
                            }
                        }
                    }
                }
            }
        });
    }

    /// Packed strips per image: output pixels in runs of [`NR`].
    fn strips(&self) -> usize {
        self.pixels().div_ceil(NR)
    }
}

/// `dst = src` (equal lengths). im2col's runs are short (an output row within a strip), and a
/// `memcpy` call per run cost more than the copy: the usual lengths get fixed-size copies that
/// compile to a few vector moves.
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
        let d: &mut [f32; N] = dst.try_into().expect("N floats");
        d.copy_from_slice(src);
    }
    match dst.len() {
        32 => fixed::<32>(dst, src),
        16 => fixed::<16>(dst, src),
        8 => fixed::<8>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// `dst += src` (equal lengths), with fixed-size loops for the usual lengths as [`copy_run`].
#[inline(always)]
fn add_run(dst: &mut [f32], src: &[f32]) {
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
        let d: &mut [f32; N] = dst.try_into().expect("N floats");
        let s: &[f32; N] = src.try_into().expect("N floats");
        for (d, s) in d.iter_mut().zip(s) {
            *d += s;
        }
    }
    match dst.len() {
        32 => fixed::<32>(dst, src),
        16 => fixed::<16>(dst, src),
        8 => fixed::<8>(dst, src),
        _ => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d += s;
            }
        }
    }
}

/// The forward product of one [`snn_conv2d_f32`] call, `y[o][px] = w[o][taps] · cols[taps][px]`
/// (+ bias, or added to `y`): owns the weights packed once for all threads, and computes any
/// range of output strips (strip `u`: image `u / strips`, pixels `(u % strips)·NR ..`) from
/// the input.
struct ConvForward<'a> {
    g: Conv,
    w: Pooled,
    bias: Option<&'a [f32]>,
    /// Add to `y` (the bias unused) instead of overwriting it.
    accumulate: bool,
    /// The taps' offsets in a padded image ([`Conv::pad`]) when the tile kernels read the
    /// columns there in place: at stride 1 along rows, with output rows of whole 16-pixel
    /// halves of a strip. Empty: strips are im2col-packed first.
    taps_at: Vec<usize>,
}

/// Floats of packed im2col columns per block of strips (512 KiB: packed and consumed in L2).
const COLS_BLOCK: usize = 1 << 17;

impl<'a> ConvForward<'a> {
    fn new(g: Conv, ws: &[f32], bias: Option<&'a [f32]>, accumulate: bool) -> ConvForward<'a> {
        let mut w = Scratch::pooled();
        let k = g.taps();
        // SAFETY: ws holds o × taps, row-major.
        unsafe {
            pack::<MR>(
                w.get(packed_len::<MR>(g.o, k)),
                View {
                    p: ws.as_ptr(),
                    ls: k,
                    ks: 1,
                },
                g.o,
                k,
            );
        }
        let (hp, wp) = g.padded_plane();
        // Reads in place are unchecked: only when every tap of every output lies in the padded
        // image (`oh`, `ow` as documented; the packed path's slicing checks them otherwise).
        let inside = (g.oh - 1) * g.sh + g.kh <= hp && g.ow - 1 + g.kw <= wp;
        let taps_at = if g.sw == 1 && g.ow.is_multiple_of(16) && inside {
            g.taps_from(0, k)
                .map(|(c, p, q)| (c * hp + p) * wp + q)
                .collect()
        } else {
            Vec::new()
        };
        ConvForward {
            g,
            w,
            bias,
            accumulate,
            taps_at,
        }
    }

    /// Output strips `u0..u1` of `y` from the images `xs`: each image padded in `scratch`, and
    /// its columns read there in place or im2col-packed block by block after it.
    ///
    /// # Safety
    /// `y` must address the call's `n·o·oh·ow` outputs; nothing else may access these strips'
    /// outputs meanwhile.
    unsafe fn strips(&self, xs: &[f32], y: *mut f32, u0: usize, u1: usize, scratch: &mut Scratch) {
        let g = &self.g;
        let (k, px, per) = (g.taps(), g.pixels(), g.strips());
        let (in_len, out_len) = (g.c * g.h * g.w, g.o * px);
        let at = |u: usize| (u / per, u % per * NR);
        let out = |u: usize| {
            let (img, p0) = at(u);
            (y.wrapping_add(img * out_len + p0), NR.min(px - p0))
        };
        let w = self.w.slice(packed_len::<MR>(g.o, k));
        let init = match self.bias {
            _ if self.accumulate => Init::Load,
            Some(b) => Init::Bias(b.as_ptr()),
            None => Init::Zero,
        };
        let padded = g.padded_len(0, g.c);
        if !self.taps_at.is_empty() {
            let xp = scratch.get(padded);
            let wp = g.padded_plane().1;
            let mut u = u0;
            while u < u1 {
                // This image's strips.
                let img = u / per;
                let end = u1.min((img + 1) * per);
                g.pad(&xs[img * in_len..(img + 1) * in_len], 0, g.c, xp);
                // Pixel `p`'s tap (0, 0, 0) in the padded image (a past-the-end half is
                // masked: any pixel will do).
                let tap0 = |p: usize| {
                    let p = p.min(px - 1);
                    xp.as_ptr().wrapping_add(p / g.ow * g.sh * wp + p % g.ow)
                };
                let b = |s: usize| {
                    let p0 = at(u + s).1;
                    BSrc {
                        lo: tap0(p0),
                        hi: tap0(p0 + 16),
                        step: 0,
                        table: self.taps_at.as_ptr(),
                    }
                };
                // SAFETY: every tap of these strips' pixels lies in the padded image; the
                // strips' outputs per the caller.
                unsafe { tiles(g.o, k, w, b, end - u, |s| out(u + s), px, init) };
                u = end;
            }
            return;
        }
        let block = (COLS_BLOCK / (k * NR)).clamp(1, 64);
        let (xp, cols) = scratch
            .get(padded + block.min(u1 - u0) * k * NR)
            .split_at_mut(padded);
        let mut padded_image = None;
        for b0 in (u0..u1).step_by(block) {
            let b1 = (b0 + block).min(u1);
            let packed = &mut cols[..(b1 - b0) * k * NR];
            for (strip, u) in packed.chunks_exact_mut(k * NR).zip(b0..b1) {
                let (img, p0) = at(u);
                if padded_image != Some(img) {
                    g.pad(&xs[img * in_len..(img + 1) * in_len], 0, g.c, xp);
                    padded_image = Some(img);
                }
                let len = NR.min(px - p0);
                g.im2col(xp, 0, 0, k, p0, len, strip, NR);
                if len < NR {
                    for row in strip.chunks_exact_mut(NR) {
                        row[len..].fill(0.0);
                    }
                }
            }
            let packed = &cols[..(b1 - b0) * k * NR];
            // SAFETY: w and the strips packed above; the strips' outputs per the caller.
            unsafe {
                tiles(
                    g.o,
                    k,
                    w,
                    |s| BSrc::packed(packed, k, s),
                    b1 - b0,
                    |s| out(b0 + s),
                    px,
                    init,
                )
            };
        }
    }
}

/// 2-D convolution of `n` images (see the module docs for the layouts). `bias` may be null.
/// Sizes that are not positive make the call a no-op.
///
/// # Safety
/// `x`, `w`, `bias` (unless null) and `y` must point to live, non-overlapping f32 buffers of
/// `n·c·h·w`, `o·c·kh·kw`, `o` and `n·o·oh·ow` elements, with `oh = (h + 2ph − kh)/sh + 1` and
/// `ow = (w + 2pw − kw)/sw + 1`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn snn_conv2d_f32(
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
    let g = Conv::from_abi([c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow]);
    let n = to_usize(n);
    if g.is_empty(n) {
        return;
    }
    // SAFETY: sizes as documented above.
    let (xs, ws) = unsafe {
        (
            std::slice::from_raw_parts(x, n * g.c * g.h * g.w),
            std::slice::from_raw_parts(w, g.o * g.taps()),
        )
    };
    let bias = (!bias.is_null()).then(|| unsafe { std::slice::from_raw_parts(bias, g.o) });
    let fwd = ConvForward::new(g, ws, bias, false);
    let yp = SendPtr(y);
    let macs = n * g.o * g.pixels() * g.taps();
    // Threads take contiguous runs of output strips (disjoint outputs; a strip's sums do not
    // depend on who computes it).
    split(n * g.strips(), threads_for(macs), |u0, u1| {
        // SAFETY: strips u0..u1 are this thread's.
        unsafe { fwd.strips(xs, yp.get(), u0, u1, &mut Scratch::pooled()) };
    });
}

/// A dense layer along one axis: `y[a][j][i] = bias[j] + Σ_k w[j][k] · x[a][k][i]` for
/// `a < outer`, `j < n_out`, `i < inner`. `bias` may be null; non-positive sizes make it a no-op.
///
/// # Safety
/// `x`, `w`, `bias` (unless null) and `y` must point to live, non-overlapping f32 buffers of
/// `outer·n_in·inner`, `n_out·n_in`, `n_out` and `outer·n_out·inner` elements.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snn_dense_f32(
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    y: *mut f32,
    outer: i64,
    n_in: i64,
    inner: i64,
    n_out: i64,
) {
    let (outer, n_in, inner, n_out) = (
        to_usize(outer),
        to_usize(n_in),
        to_usize(inner),
        to_usize(n_out),
    );
    if outer == 0 || inner == 0 || n_out == 0 {
        return;
    }
    let bias = (!bias.is_null()).then(|| unsafe { std::slice::from_raw_parts(bias, n_out) });
    let (xp, wp, yp) = (SendPtr(x.cast_mut()), SendPtr(w.cast_mut()), SendPtr(y));
    let macs = outer * n_out * inner * n_in;
    if inner == 1 {
        // One product over all rows: y[outer×n_out] = x[outer×n_in] · wᵀ.
        if let Some(b) = bias {
            // SAFETY: y holds outer × n_out.
            let out = unsafe { std::slice::from_raw_parts_mut(y, outer * n_out) };
            for row in out.chunks_exact_mut(n_out) {
                row.copy_from_slice(b);
            }
        }
        // SAFETY: x is outer × n_in, w n_out × n_in (both with depth n_in contiguous).
        unsafe {
            gemm::gemm(
                threads_for(macs),
                outer,
                n_out,
                n_in,
                View {
                    p: x,
                    ls: n_in,
                    ks: 1,
                },
                View {
                    p: w,
                    ls: n_in,
                    ks: 1,
                },
                y,
                n_out,
                if bias.is_some() {
                    Init::Load
                } else {
                    Init::Zero
                },
            );
        }
        return;
    }
    // Per outer index: y_a[n_out×inner] = w[n_out×n_in] · x_a[n_in×inner].
    split(outer, threads_for(macs), |start, end| {
        for a in start..end {
            // SAFETY: block `a` of y belongs to this thread.
            let ya = unsafe { yp.get().add(a * n_out * inner) };
            if let Some(b) = bias {
                let out = unsafe { std::slice::from_raw_parts_mut(ya, n_out * inner) };
                for (row, &bj) in out.chunks_exact_mut(inner).zip(b) {
                    row.fill(bj);
                }
            }
            // SAFETY: shapes as documented.
            unsafe {
                sgemm(
                    n_out,
                    inner,
                    n_in,
                    ya,
                    inner as isize,
                    bias.is_some(),
                    wp.get(),
                    n_in as isize,
                    1,
                    xp.get().add(a * n_in * inner),
                    inner as isize,
                    1,
                );
            }
        }
    });
}

/// The dx part of [`snn_conv2d_backward_f32`]: `dx += ∂L/∂x` for `n` images (`dx = ∂L/∂x`
/// when `overwrite`: what dx held is never read).
///
/// At stride 1 (padding under the kernel size) dx is itself a convolution of dy, with the
/// weights transposed (`c` outputs from `o` inputs) and flipped, and padding `k − 1 − p`: the
/// forward's kernel, threads over disjoint strips of dx, no col2im. Otherwise (or when that
/// product's `c` rows would fill fewer of the tile rows than the `taps` rows of `dcols`), per
/// image: `dcols[taps][px] = wᵀ · dy` strip by strip, scattered into dx, threads over images
/// (neighbouring strips' scatters overlap).
///
/// # Safety
/// `dx` must address `n·c·h·w` writable floats that nothing else accesses meanwhile; the
/// slices as [`snn_conv2d_backward_f32`] documents.
unsafe fn conv_backward_dx(
    g: Conv,
    n: usize,
    ws: &[f32],
    dys: &[f32],
    dx: *mut f32,
    threads: usize,
    overwrite: bool,
) {
    let (in_len, out_len, taps, px) = (g.c * g.h * g.w, dys.len() / n, g.taps(), g.pixels());
    if in_len == 0 {
        return;
    }
    let kk = g.kh * g.kw;
    let rows_used = |rows: usize| rows as f64 / rows.next_multiple_of(MR) as f64;
    if g.sh == 1 && g.sw == 1 && g.ph < g.kh && g.pw < g.kw && rows_used(g.c) >= rows_used(taps) {
        let t = Conv {
            c: g.o,
            h: g.oh,
            w: g.ow,
            o: g.c,
            ph: g.kh - 1 - g.ph,
            pw: g.kw - 1 - g.pw,
            oh: g.h,
            ow: g.w,
            ..g
        };
        // wt[c][o][p][q] = w[o][c][kh − 1 − p][kw − 1 − q].
        let mut wt = Scratch::pooled();
        let wt = wt.get(ws.len());
        for (o, wo) in ws.chunks_exact(taps).enumerate() {
            for (c, wc) in wo.chunks_exact(kk).enumerate() {
                let dst = &mut wt[(c * g.o + o) * kk..][..kk];
                for (d, v) in dst.iter_mut().zip(wc.iter().rev()) {
                    *d = *v;
                }
            }
        }
        let fwd = ConvForward::new(t, wt, None, !overwrite);
        let dxp = SendPtr(dx);
        split(n * t.strips(), threads, |u0, u1| {
            // SAFETY: strips u0..u1 of dx are this thread's.
            unsafe { fwd.strips(dys, dxp.get(), u0, u1, &mut Scratch::pooled()) };
        });
        return;
    }
    // wᵀ[taps × o] as the left operand of dx's product, packed once.
    let mut wt = Scratch::pooled();
    // SAFETY: w holds o × taps.
    unsafe {
        pack::<MR>(
            wt.get(packed_len::<MR>(taps, g.o)),
            View {
                p: ws.as_ptr(),
                ls: 1,
                ks: taps,
            },
            taps,
            g.o,
        );
    }
    let wt = wt.slice(packed_len::<MR>(taps, g.o));
    let dxp = SendPtr(dx);
    split(n, threads, |start, end| {
        let (mut dyp, mut dcols) = (Scratch::pooled(), Scratch::pooled());
        let dyp = dyp.get(packed_len::<NR>(px, g.o));
        let dcols = dcols.get(taps * NR);
        for img in start..end {
            let dyi = &dys[img * out_len..(img + 1) * out_len];
            // SAFETY: image `img` of dx is written by this thread only.
            let dxi =
                unsafe { std::slice::from_raw_parts_mut(dxp.get().add(img * in_len), in_len) };
            if overwrite {
                // col2im only adds.
                dxi.fill(0.0);
            }
            // dy packed whole, row by row: strip by strip, its rows (often 4 KiB apart) would
            // be read as many short streams sharing L1 sets.
            let dy_image = View {
                p: dyi.as_ptr(),
                ls: 1,
                ks: px,
            };
            // SAFETY: dy's o × px.
            unsafe { pack::<NR>(dyp, dy_image, px, g.o) };
            for (s, p0) in (0..px).step_by(NR).enumerate() {
                let len = NR.min(px - p0);
                let out = dcols.as_mut_ptr();
                let b = |_| BSrc::packed(dyp, g.o, s);
                // SAFETY: strip s of the packed dy; dcols holds taps × NR.
                unsafe { tiles(taps, g.o, wt, b, 1, |_| (out, len), NR, Init::Zero) };
                g.col2im_add(dcols, p0, len, dxi, NR);
            }
        }
    });
}

/// Backward of [`snn_conv2d_f32`], accumulating: `dx += ∂L/∂x`, `dw += ∂L/∂w` and
/// `db += ∂L/∂bias` from `dy` (`dx`, `dw`, `db` may each be null when not wanted: a null `dx`
/// skips the input gradient, which the compiler then computes only where it is needed with
/// [`snn_conv2d_backward_dx_masked_f32`]). Same layouts and sizes.
///
/// dx: per image, `dcols[taps][px] = wᵀ · dy` strip by strip, scattered into dx (threads over
/// images: neighbouring strips' scatters overlap). dW: `dw[o][taps] += Σ_images dy · colsᵀ`
/// with the images' pixels as the product's depth, threads over disjoint blocks of dw; db from
/// the same packed dy. Every sum runs in an order fixed by the shapes, so results do not
/// depend on the thread count.
///
/// # Safety
/// As [`snn_conv2d_f32`], with `dy` like `y` and `dx`, `dw`, `db` like `x`, `w`, `bias`; the
/// written buffers must not overlap any other.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn snn_conv2d_backward_f32(
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
    let n = to_usize(n);
    if g.is_empty(n) {
        return;
    }
    let (in_len, out_len, taps, px) = (g.c * g.h * g.w, g.o * g.pixels(), g.taps(), g.pixels());
    // SAFETY: sizes as documented.
    let (xs, ws, dys) = unsafe {
        (
            std::slice::from_raw_parts(x, n * in_len),
            std::slice::from_raw_parts(w, g.o * taps),
            std::slice::from_raw_parts(dy, n * out_len),
        )
    };
    let macs = n * out_len * taps;
    if !dx.is_null() {
        // SAFETY: dx holds n·c·h·w (the rest as documented).
        unsafe { conv_backward_dx(g, n, ws, dys, dx, threads_for(macs), false) };
    }
    if dw.is_null() && db.is_null() {
        return;
    }
    if dw.is_null() {
        // db alone (dW took the spike kernels' sparse path): each (image, channel) plane of
        // dy summed where it lies, rather than packed as for the product (a transpose of all
        // of dy); threads take whole images, reading dy in memory order (a channel at a time
        // would skip from plane to plane), then each channel adds its images' sums in order.
        let planes: Vec<f32> = split_map(
            n,
            threads_capped(kernel_threads(), n * out_len),
            |i0, i1| {
                (i0..i1)
                    .flat_map(|img| {
                        (0..g.o).map(move |oc| lane_sum(&dys[img * out_len + oc * px..][..px]))
                    })
                    .collect::<Vec<f32>>()
            },
        )
        .concat();
        // SAFETY: db holds o elements.
        let db = unsafe { std::slice::from_raw_parts_mut(db, g.o) };
        for (oc, d) in db.iter_mut().enumerate() {
            *d += (0..n).map(|img| planes[img * g.o + oc]).sum::<f32>();
        }
        return;
    }
    // Threads own dw's column strips (taps) when there are enough of them, else row strips
    // (channels); each packs its rows of dy and its taps of the columns per depth block.
    let threads = threads_for(macs);
    let (m_strips, n_strips) = (g.o.div_ceil(MR), taps.div_ceil(NR));
    let by_taps = n_strips >= threads;
    let (dwp, want_db) = (SendPtr(dw), !db.is_null());
    let db_parts = split_map(
        if by_taps { n_strips } else { m_strips },
        threads,
        |s0, s1| {
            let (m0, m1, t0, t1) = if by_taps {
                (0, g.o, s0 * NR, (s1 * NR).min(taps))
            } else {
                (s0 * MR, (s1 * MR).min(g.o), 0, taps)
            };
            // db: the thread holding tap 0 sums its channels' dy as it packs them.
            let mut db_part = vec![0f32; if want_db && t0 == 0 { m1 - m0 } else { 0 }];
            let (mut a, mut cols, mut b) =
                (Scratch::pooled(), Scratch::pooled(), Scratch::pooled());
            let a = a.get(packed_len::<MR>(m1 - m0, DEPTH_BLOCK));
            let cols = cols.get((t1 - t0) * DEPTH_BLOCK);
            let b = b.get(packed_len::<NR>(t1 - t0, DEPTH_BLOCK));
            // The channels that taps t0..t1 read, padded per image.
            let kk = g.kh * g.kw;
            let (c0, c1) = (t0 / kk, (t1 - 1) / kk + 1);
            let mut xp = Scratch::pooled();
            let xp = xp.get(g.padded_len(c0, c1));
            for img in 0..n {
                let (xi, dyi) = (&xs[img * in_len..(img + 1) * in_len], &dys[img * out_len..]);
                if !dwp.get().is_null() {
                    g.pad(xi, c0, c1, xp);
                }
                for k0 in (0..px).step_by(DEPTH_BLOCK) {
                    let k = DEPTH_BLOCK.min(px - k0);
                    // SAFETY: dy's channels m0..m1, pixels k0..k0 + k.
                    unsafe {
                        pack::<MR>(
                            a,
                            View {
                                p: dyi[m0 * px + k0..].as_ptr(),
                                ls: px,
                                ks: 1,
                            },
                            m1 - m0,
                            k,
                        )
                    };
                    let packed = &a[..packed_len::<MR>(m1 - m0, k)];
                    for (strip, sums) in packed.chunks_exact(k * MR).zip(db_part.chunks_mut(MR)) {
                        // The block's sums in registers, then added to the running ones.
                        let mut acc = [0f32; MR];
                        for step in strip.chunks_exact(MR) {
                            for (a, v) in acc.iter_mut().zip(step) {
                                *a += v;
                            }
                        }
                        for (s, a) in sums.iter_mut().zip(acc) {
                            *s += a;
                        }
                    }
                    if dwp.get().is_null() {
                        continue;
                    }
                    g.im2col(xp, c0, t0, t1, k0, k, cols, k);
                    let out = |s: usize| {
                        let t = t0 + s * NR;
                        (dwp.get().wrapping_add(m0 * taps + t), NR.min(t1 - t))
                    };
                    // SAFETY: cols holds taps t0..t1 × k; dw's block (m0..m1, t0..t1) is this
                    // thread's.
                    unsafe {
                        pack::<NR>(
                            b,
                            View {
                                p: cols.as_ptr(),
                                ls: k,
                                ks: 1,
                            },
                            t1 - t0,
                            k,
                        );
                        tiles(
                            m1 - m0,
                            k,
                            a,
                            |s| BSrc::packed(b, k, s),
                            (t1 - t0).div_ceil(NR),
                            out,
                            taps,
                            Init::Load,
                        );
                    }
                }
            }
            (m0, db_part)
        },
    );
    if !db.is_null() {
        // SAFETY: db holds o elements.
        let dbs = unsafe { std::slice::from_raw_parts_mut(db, g.o) };
        for (m0, part) in db_parts {
            for (d, p) in dbs[m0..].iter_mut().zip(part) {
                *d += p;
            }
        }
    }
}

/// Backward of [`snn_dense_f32`], accumulating into `dx`, `dw` and `db` (`dw`, `db` may be
/// null).
///
/// # Safety
/// As [`snn_dense_f32`], with `dy` like `y` and `dx`, `dw`, `db` like `x`, `w`, `bias`; the
/// written buffers must not overlap any other.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn snn_dense_backward_f32(
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
    let (outer, n_in, inner, n_out) = (
        to_usize(outer),
        to_usize(n_in),
        to_usize(inner),
        to_usize(n_out),
    );
    if outer == 0 || inner == 0 || n_out == 0 || n_in == 0 {
        return;
    }
    let (xp, wp, dyp, dxp, dwp) = (
        SendPtr(x.cast_mut()),
        SendPtr(w.cast_mut()),
        SendPtr(dy.cast_mut()),
        SendPtr(dx),
        SendPtr(dw),
    );
    let macs = outer * n_out * inner * n_in;
    // dx_a[n_in×inner] += wᵀ[n_in×n_out] · dy_a[n_out×inner], threads over a (or rows).
    if inner == 1 {
        // SAFETY: dy is outer × n_out, w n_out × n_in, dx outer × n_in.
        unsafe {
            sgemm_split(
                threads_for(macs),
                outer,
                n_in,
                n_out,
                dx,
                n_in as isize,
                true,
                dy,
                n_out as isize,
                1,
                w,
                n_in as isize,
                1,
            );
        }
    } else {
        split(outer, threads_for(macs), |start, end| {
            for a in start..end {
                // SAFETY: block a of dx belongs to this thread.
                unsafe {
                    sgemm(
                        n_in,
                        inner,
                        n_out,
                        dxp.get().add(a * n_in * inner),
                        inner as isize,
                        true,
                        wp.get(),
                        1,
                        n_in as isize,
                        dyp.get().add(a * n_out * inner),
                        inner as isize,
                        1,
                    );
                }
            }
        });
    }
    if !dw.is_null() && inner == 1 {
        // One product: dw[n_out×n_in] += dyᵀ[n_out×outer] · x[outer×n_in].
        // SAFETY: as above; dw is n_out × n_in.
        unsafe {
            sgemm_split(
                threads_for(macs),
                n_out,
                n_in,
                outer,
                dw,
                n_in as isize,
                true,
                dy,
                1,
                n_out as isize,
                x,
                n_in as isize,
                1,
            );
        }
    } else if !dw.is_null() {
        // dw[n_out×n_in] += Σ_a dy_a[n_out×inner] · x_aᵀ[inner×n_in], threads over dw's rows.
        split(n_out, threads_for(macs), |start, end| {
            for a in 0..outer {
                // SAFETY: rows start..end of dw belong to this thread.
                unsafe {
                    sgemm(
                        end - start,
                        n_in,
                        inner,
                        dwp.get().add(start * n_in),
                        n_in as isize,
                        true,
                        dyp.get().add((a * n_out + start) * inner),
                        inner as isize,
                        1,
                        xp.get().add(a * n_in * inner),
                        1,
                        inner as isize,
                    );
                }
            }
        });
    }
    if !db.is_null() {
        // SAFETY: db holds n_out elements, dy outer·n_out·inner.
        let (dbs, dys) = unsafe {
            (
                std::slice::from_raw_parts_mut(db, n_out),
                std::slice::from_raw_parts(dy, outer * n_out * inner),
            )
        };
        for block in dys.chunks_exact(n_out * inner) {
            for (d, row) in dbs.iter_mut().zip(block.chunks_exact(inner)) {
                *d += row.iter().sum::<f32>();
            }
        }
    }
}

/// `snn_gemm_f32(a, b, c, batch, m, n, k, trans_a, trans_b, stride_a, stride_b, stride_c,
/// accumulate)`: the matrix product [`Gemm`](crate::gpu::manifest::Gemm) describes, on the
/// CPU. Code lowered for the GPU calls it for convolutions and dense layers (cuBLAS there);
/// here it lets that code run under MLIR's ExecutionEngine in tests. Invalid arguments (a
/// negative size, a flag not 0 or 1) do nothing: generated code never passes them.
///
/// # Safety
/// `a`, `b` and `c` must address at least [`Gemm::extents`](crate::gpu::manifest::Gemm::extents)
/// f32 elements each; `c` must not overlap `a` or `b`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn snn_gemm_f32(
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    batch: i64,
    m: i64,
    n: i64,
    k: i64,
    trans_a: i64,
    trans_b: i64,
    stride_a: i64,
    stride_b: i64,
    stride_c: i64,
    accumulate: i64,
) {
    let Ok(g) = crate::gpu::manifest::Gemm::from_abi([
        batch, m, n, k, trans_a, trans_b, stride_a, stride_b, stride_c, accumulate,
    ]) else {
        return;
    };
    let (a_rs, a_cs) = if g.trans_a { (1, g.m) } else { (g.k, 1) };
    let (b_rs, b_cs) = if g.trans_b { (1, g.k) } else { (g.n, 1) };
    for i in 0..g.batch {
        // SAFETY: the caller vouches for the extents; each matrix lies inside them.
        unsafe {
            sgemm(
                g.m,
                g.n,
                g.k,
                c.add(i * g.stride_c),
                g.n as isize,
                g.accumulate,
                a.add(i * g.stride_a),
                a_rs as isize,
                a_cs as isize,
                b.add(i * g.stride_b),
                b_rs as isize,
                b_cs as isize,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::{Conv2dParams, conv2d};
    use ndarray::{ArrayD, IxDyn};

    /// Pseudo-random values in [-1, 1] (also for the spike kernels' tests).
    pub(super) fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// f32 test data as the f64 arrays the reference kernels take.
    fn to64(v: &[f32], s: &[usize]) -> ArrayD<f64> {
        ArrayD::from_shape_vec(IxDyn(s), v.iter().map(|&a| f64::from(a)).collect()).expect("shape")
    }

    /// `f()` with the kernels it calls on this thread using `threads` threads.
    fn with_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
        TEST_THREADS.set(Some(threads));
        let r = f();
        TEST_THREADS.set(None);
        r
    }

    /// (n, c, h, w, o, kh, kw, sh, sw, ph, pw).
    type ConvShape = [usize; 11];

    /// Padded, strided, pointwise, wider than tall; then shapes across the packed GEMM's blocks.
    const CONV_SHAPES: [ConvShape; 12] = [
        [3, 2, 7, 6, 4, 3, 3, 1, 1, 1, 1],
        [2, 3, 9, 8, 5, 3, 2, 2, 3, 1, 0],
        [4, 6, 5, 5, 3, 1, 1, 1, 1, 0, 0],
        [1, 1, 4, 4, 2, 5, 5, 1, 1, 2, 2],
        // 289 pixels: 9 full strips and a partial one, two dW depth blocks; 576 taps: 7 strips
        // per im2col block, so blocks straddle images; 10 channels: a partial row tile.
        [3, 64, 17, 17, 10, 3, 3, 1, 1, 1, 1],
        // Stride 2, an odd image count, dW split by taps over 3 strips.
        [5, 8, 31, 29, 12, 3, 3, 2, 2, 1, 1],
        // One tap strip (25 taps): dW split by channels; a 5 × 5 kernel with padding 2.
        [4, 1, 20, 20, 20, 5, 5, 1, 1, 2, 2],
        // Rows of 32 and 16 pixels: columns read in place from the padded input; dx as the
        // transposed convolution (8 or 16 channels), in place or packed (rows of 10 or 17).
        [2, 16, 12, 32, 10, 3, 3, 1, 1, 1, 1],
        [3, 8, 10, 10, 6, 3, 3, 1, 1, 1, 1],
        [2, 8, 8, 17, 4, 3, 2, 1, 1, 1, 0],
        // In place with row stride 2 (dx through col2im); a partial last strip (5 × 16 pixels).
        [2, 8, 9, 32, 5, 3, 3, 2, 1, 1, 1],
        [3, 4, 5, 16, 7, 3, 3, 1, 1, 1, 1],
    ];

    /// `y` from [`snn_conv2d_f32`] (with bias) and `dx`, `dw`, `db` from
    /// [`snn_conv2d_backward_f32`] (accumulated onto ones) at `shape` on `threads` threads.
    fn run_conv(shape: ConvShape, threads: usize) -> [Vec<f32>; 4] {
        let [n, c, h, w, o, kh, kw, sh, sw, ph, pw] = shape;
        let (oh, ow) = ((h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1);
        let (x, wt, b) = (
            values(n * c * h * w, 1),
            values(o * c * kh * kw, 2),
            values(o, 3),
        );
        let dy = values(n * o * oh * ow, 4);
        let geometry = [c, h, w, o, kh, kw, sh, sw, ph, pw, oh, ow].map(|v| v as i64);
        let [c, h, w, o, kh, kw, sh, sw, ph, pw, oh, ow] = geometry;
        let mut y = vec![f32::NAN; dy.len()];
        let (mut dx, mut dw, mut db) = (
            vec![1f32; x.len()],
            vec![1f32; wt.len()],
            vec![1f32; b.len()],
        );
        with_threads(threads, || unsafe {
            let (x, wt, n) = (x.as_ptr(), wt.as_ptr(), n as i64);
            snn_conv2d_f32(
                x,
                wt,
                b.as_ptr(),
                y.as_mut_ptr(),
                n,
                c,
                h,
                w,
                o,
                kh,
                kw,
                sh,
                sw,
                ph,
                pw,
                oh,
                ow,
            );
            snn_conv2d_backward_f32(
                x,
                wt,
                dy.as_ptr(),
                dx.as_mut_ptr(),
                dw.as_mut_ptr(),
                db.as_mut_ptr(),
                n,
                c,
                h,
                w,
                o,
                kh,
                kw,
                sh,
                sw,
                ph,
                pw,
                oh,
                ow,
            );
        });
        [y, dx, dw, db]
    }

    #[test]
    fn conv_matches_the_reference_for_any_thread_count() {
        use crate::kernels::reference::conv2d_backward;
        for shape in CONV_SHAPES {
            let got = run_conv(shape, 1);
            for threads in [2, 3] {
                let other = run_conv(shape, threads);
                for (a, b) in got.iter().zip(&other) {
                    let same = a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{shape:?}: 1 thread vs {threads} differ");
                }
            }
            let [n, c, h, w, o, kh, kw, sh, sw, ph, pw] = shape;
            let (oh, ow) = ((h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1);
            let p = Conv2dParams {
                stride: (sh, sw),
                padding: (ph, pw),
            };
            let x = to64(&values(n * c * h * w, 1), &[n, c, h, w]);
            let wt = to64(&values(o * c * kh * kw, 2), &[o, c, kh, kw]);
            let b = to64(&values(o, 3), &[o]);
            let dy = to64(&values(n * o * oh * ow, 4), &[n, o, oh, ow]);
            let y = conv2d(x.view(), wt.view(), Some(b.view()), p).expect("reference conv");
            let back =
                conv2d_backward(x.view(), wt.view(), dy.view(), p).expect("reference backward");
            // The backward's outputs started from ones.
            for (what, got, want, start) in [
                ("y", &got[0], &y, 0.0),
                ("dx", &got[1], &back.dx, 1.0),
                ("dw", &got[2], &back.dw, 1.0),
                ("db", &got[3], &back.db, 1.0),
            ] {
                for (g, r) in got.iter().zip(want.iter()) {
                    let err = (f64::from(*g) - start - r).abs();
                    assert!(
                        err < 1e-4 * (1.0 + r.abs()),
                        "{shape:?} {what}: {g} - {start} vs {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn dense_is_the_same_for_any_thread_count() {
        // (outer, n_in, inner, n_out): split by rows, by columns, and per outer index.
        for [outer, n_in, inner, n_out] in [[80, 512, 1, 64], [7, 300, 1, 700], [3, 64, 40, 50]] {
            let (x, w, b) = (
                values(outer * n_in * inner, 1),
                values(n_out * n_in, 2),
                values(n_out, 3),
            );
            let dy = values(outer * n_out * inner, 4);
            let run = |threads| {
                let mut y = vec![f32::NAN; dy.len()];
                let (mut dx, mut dw, mut db) =
                    (vec![1f32; x.len()], vec![1f32; w.len()], vec![1f32; n_out]);
                let dims = [outer, n_in, inner, n_out].map(|v| v as i64);
                with_threads(threads, || unsafe {
                    snn_dense_f32(
                        x.as_ptr(),
                        w.as_ptr(),
                        b.as_ptr(),
                        y.as_mut_ptr(),
                        dims[0],
                        dims[1],
                        dims[2],
                        dims[3],
                    );
                    snn_dense_backward_f32(
                        x.as_ptr(),
                        w.as_ptr(),
                        dy.as_ptr(),
                        dx.as_mut_ptr(),
                        dw.as_mut_ptr(),
                        db.as_mut_ptr(),
                        dims[0],
                        dims[1],
                        dims[2],
                        dims[3],
                    );
                });
                [y, dx, dw, db].map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>())
            };
            let one = run(1);
            for threads in [2, 3] {
                assert!(
                    run(threads) == one,
                    "{outer}, {n_in}, {inner}, {n_out}: {threads} threads"
                );
            }
        }
    }

    #[test]
    fn dense_backward_matches_a_naive_product() {
        for &(outer, n_in, inner, n_out) in &[(5, 7, 1, 3), (3, 4, 6, 2), (70, 33, 1, 11)] {
            let x = values(outer * n_in * inner, 10);
            let w = values(n_out * n_in, 11);
            let dy = values(outer * n_out * inner, 12);
            let mut dx = vec![1f32; x.len()];
            let mut dw = vec![1f32; w.len()];
            let mut db = vec![1f32; n_out];
            unsafe {
                snn_dense_backward_f32(
                    x.as_ptr(),
                    w.as_ptr(),
                    dy.as_ptr(),
                    dx.as_mut_ptr(),
                    dw.as_mut_ptr(),
                    db.as_mut_ptr(),
                    outer as i64,
                    n_in as i64,
                    inner as i64,
                    n_out as i64,
                );
            }
            let at = |v: &[f32], i: usize| f64::from(v[i]);
            for a in 0..outer {
                for k in 0..n_in {
                    for i in 0..inner {
                        let want: f64 = (0..n_out)
                            .map(|j| at(&w, j * n_in + k) * at(&dy, (a * n_out + j) * inner + i))
                            .sum();
                        let got = at(&dx, (a * n_in + k) * inner + i) - 1.0;
                        assert!((got - want).abs() < 1e-4, "dx {got} vs {want}");
                    }
                }
            }
            for j in 0..n_out {
                for k in 0..n_in {
                    let mut want = 0.0;
                    for a in 0..outer {
                        for i in 0..inner {
                            want += at(&dy, (a * n_out + j) * inner + i)
                                * at(&x, (a * n_in + k) * inner + i);
                        }
                    }
                    let got = at(&dw, j * n_in + k) - 1.0;
                    assert!((got - want).abs() < 1e-4, "dw {got} vs {want}");
                }
                let want: f64 = (0..outer)
                    .flat_map(|a| (0..inner).map(move |i| (a * n_out + j) * inner + i))
                    .map(|i| at(&dy, i))
                    .sum();
                assert!((at(&db, j) - 1.0 - want).abs() < 1e-4, "db");
            }
        }
    }

    #[test]
    fn dense_matches_a_naive_product() {
        for &(outer, n_in, inner, n_out, with_bias) in &[
            (5, 7, 1, 3, true),
            (3, 4, 6, 2, true),
            (2, 9, 5, 4, false),
            (70, 33, 1, 11, false),
        ] {
            let x = values(outer * n_in * inner, 4);
            let w = values(n_out * n_in, 5);
            let b = values(n_out, 6);
            let mut y = vec![f32::NAN; outer * n_out * inner];
            let bias = if with_bias {
                b.as_ptr()
            } else {
                std::ptr::null()
            };
            unsafe {
                snn_dense_f32(
                    x.as_ptr(),
                    w.as_ptr(),
                    bias,
                    y.as_mut_ptr(),
                    outer as i64,
                    n_in as i64,
                    inner as i64,
                    n_out as i64,
                );
            }
            for a in 0..outer {
                for j in 0..n_out {
                    for i in 0..inner {
                        let mut acc = if with_bias { f64::from(b[j]) } else { 0.0 };
                        for k in 0..n_in {
                            acc += f64::from(w[j * n_in + k])
                                * f64::from(x[(a * n_in + k) * inner + i]);
                        }
                        let got = f64::from(y[(a * n_out + j) * inner + i]);
                        assert!((got - acc).abs() < 1e-4, "{got} vs {acc}");
                    }
                }
            }
        }
    }

    /// Every combination of transpositions, a broadcast operand (stride 0) and accumulation,
    /// against the definition.
    #[test]
    fn gemm_matches_its_definition() {
        let (batch, m, n, k) = (3usize, 5usize, 7usize, 4usize);
        let fill = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| (((i * 37 + seed * 11) % 23) as f32 - 11.0) / 7.0)
                .collect()
        };
        for (ta, tb, broadcast_a, acc) in
            (0..16).map(|x| (x & 1, (x >> 1) & 1, x & 4 != 0, x & 8 != 0))
        {
            let stride_a = if broadcast_a { 0 } else { m * k };
            let a = fill(m * k * batch, 1);
            let b = fill(k * n * batch, 2);
            let c0 = fill(m * n * batch, 3);
            let mut c = c0.clone();
            // SAFETY: each buffer holds the extents of these sizes and strides.
            unsafe {
                snn_gemm_f32(
                    a.as_ptr(),
                    b.as_ptr(),
                    c.as_mut_ptr(),
                    batch as i64,
                    m as i64,
                    n as i64,
                    k as i64,
                    ta as i64,
                    tb as i64,
                    stride_a as i64,
                    (k * n) as i64,
                    (m * n) as i64,
                    i64::from(acc),
                );
            }
            for bi in 0..batch {
                for i in 0..m {
                    for j in 0..n {
                        let mut want = if acc { c0[bi * m * n + i * n + j] } else { 0.0 };
                        for p in 0..k {
                            let av = if ta == 1 {
                                a[bi * stride_a + p * m + i]
                            } else {
                                a[bi * stride_a + i * k + p]
                            };
                            let bv = if tb == 1 {
                                b[bi * k * n + j * k + p]
                            } else {
                                b[bi * k * n + p * n + j]
                            };
                            want += av * bv;
                        }
                        let got = c[bi * m * n + i * n + j];
                        assert!(
                            (got - want).abs() < 1e-4,
                            "ta {ta} tb {tb} bcast {broadcast_a} acc {acc}: [{bi},{i},{j}] {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
