//! The masked input gradient of a convolution, [`snn_conv2d_backward_dx_masked_f32`]: `dx` only
//! at the positions a mask marks as needed. In a spiking network the gradient of a layer's
//! spikes is only used multiplied by the surrogate derivative, which is zero at most positions,
//! so most of the dense `dx = conv_transpose(w, dy)` would be thrown away. Owns the dispatch
//! between this and the dense dx (by the mask's density, [`CONV_DX_MASKED_MAX_DENSITY`],
//! measured by `runtime/examples/sparse_crossover.rs`), and the AVX-512 and portable kernels.
//!
//! At stride 1 (padding under the kernel size), with the weights flipped and rearranged once
//! per call into `wr[p][c][q][o]` and each image's `dy` transposed into a zero-bordered
//! pixel-major `dyt[y][x][o]` (`o` padded with zeros to whole 16-lane vectors), every element
//! is `dx[c][y][x] = Σ_p dot(wr[p][c], dyt[y + p][x..x + kw])`: one dot product of `kw·o`
//! contiguous floats per kernel row, no bounds checks.
//!
//! Per image (the rows of the bands a thread took): the mask is scanned plane by plane into
//! each channel's list of needed pixels and `dy` transposed, both read as long streams; then,
//! band by band (rows whose `dyt` under one kernel row stays in L1), for every kernel row and
//! channel, the channel's weight row stays in registers while the band's needed pixels of that
//! channel stream their `dyt` runs through it, four at a time (16-lane sums per element, added
//! up 16 elements at a time at the end of the band); last, dx's rows are rewritten plane by
//! plane, zeros and the needed values.
//!
//! Each multiply-add loads its `dyt` vector (no two needed elements share one), and this CPU
//! sustains about one 512-bit load per cycle, half its FMA rate: the kernel reaches ~65 % of
//! the FMA peak, the dense GEMM (several FMAs per load) ~85 %.
//!
//! Threads take contiguous runs of (image, band) pairs; every element is summed in an order
//! fixed by the shapes and the mask, so results do not depend on the thread count.

#[cfg(target_arch = "x86_64")]
use super::spike::transpose16;
use super::spike::{avx512, for_each_nonzero, multiversion};
use super::{
    Conv, Pooled, Scratch, SendPtr, SpikeDispatch, conv_backward_dx, split, split_map, to_usize,
};

/// [`snn_conv2d_backward_dx_masked_f32`] takes the masked path when fewer than this fraction of
/// the mask's elements are nonzero (on a CPU with AVX-512F, else
/// [`CONV_DX_MASKED_MAX_DENSITY_PORTABLE`]), the dense dx otherwise. Measured crossovers
/// (bench/cpu/sparse.sh, bench/RESULTS.md "Masked conv input gradient"; 2-core AVX-512 VM, 2
/// threads, 80 images): 66–67 % (dx of the 64→128 conv, 32×32) and 61–62 % (128→128, 16×16);
/// set where the masked path is still clearly faster (1.2× at 50 %; 2.3× at 20 %, about the
/// surrogate derivative's density).
pub const CONV_DX_MASKED_MAX_DENSITY: f64 = 0.5;
/// [`CONV_DX_MASKED_MAX_DENSITY`] without AVX-512F (the auto-vectorised kernel and a scalar
/// transposition of `dy`, measured with AVX-512 code generation: 13 % and 21 %).
pub const CONV_DX_MASKED_MAX_DENSITY_PORTABLE: f64 = 0.1;

/// Floats of `dyt` one band's kernel row reads at most (36 KiB of the 48 KiB L1, unless one row
/// is more): the rows are re-read by every channel while the weights and the sums stream past
/// them, and the more rows a band has, the more elements share each load of a channel's
/// weights. Measured at the gesture shapes: 2 rows of 32 pixels (o = 128) beat 1 and 4.
const BAND_FLOATS: usize = 9 << 10;

/// Floats ahead of a sequential read at which [`scan_avx512`] and [`transpose_cells_avx512`]
/// prefetch (2 KiB: the next planes of the same image follow, rows of the same planes).
const PREFETCH: usize = 512;

/// Weight vectors of one chunk held in registers (with 2 × 4 sums: all 32 zmm); at most 24
/// ([`group`] spells out 24 steps). A 3 × 3 kernel's row of 128 channels is one chunk: its sums
/// are loaded and stored once per kernel row (16 + 8 measured 10 % slower).
const CHUNK: usize = 24;

/// The masked path's layout for one call's geometry.
struct Plan {
    g: Conv,
    /// `o` rounded up to whole 16-lane vectors.
    op: usize,
    /// `dyt`'s rows and columns: the input's, plus the flipped kernel's reach.
    ht: usize,
    wt: usize,
    /// Where `dy`'s row 0 and column 0 sit in `dyt` (the transposed convolution's padding).
    top: usize,
    left: usize,
    /// Floats of one kernel row's dot product, `kw·op`.
    run: usize,
    /// Input rows per band, and bands per image.
    rows: usize,
    bands: usize,
    /// Each kernel row's run as (first float, vectors) pieces of at most [`CHUNK`] vectors.
    chunks: Vec<(usize, usize)>,
}

impl Plan {
    /// The plan, or None where the geometry is not the masked path's (stride above 1, padding
    /// not under the kernel size): the dense dx handles those.
    fn new(g: Conv) -> Option<Plan> {
        let (ht, wt) = (g.h + g.kh - 1, g.w + g.kw - 1);
        // Pixel indices are kept in u32 and go through i32 lanes.
        if g.sh != 1 || g.sw != 1 || g.ph >= g.kh || g.pw >= g.kw || ht * wt > i32::MAX as usize {
            return None;
        }
        let op = g.o.next_multiple_of(16);
        let run = g.kw * op;
        let rows = (BAND_FLOATS / (wt * op)).clamp(1, g.h);
        // Whole chunks, then the rest as 16 + 8 + 4 + 2 + 1 (few kernel instances).
        let mut chunks = Vec::new();
        let (mut v, vectors) = (0, run / 16);
        for s in [CHUNK, 16, 8, 4, 2, 1] {
            while vectors - v >= s {
                chunks.push((16 * v, s));
                v += s;
                if s < CHUNK {
                    break;
                }
            }
        }
        Some(Plan {
            g,
            op,
            ht,
            wt,
            top: g.kh - 1 - g.ph,
            left: g.kw - 1 - g.pw,
            run,
            rows,
            bands: g.h.div_ceil(rows),
            chunks,
        })
    }

    /// Input rows `y0..y1` of band `b`.
    fn band_rows(&self, b: usize) -> (usize, usize) {
        (b * self.rows, self.g.h.min((b + 1) * self.rows))
    }

    /// `wr[(p·c + ci)·run + q·op + oc] = w[oc][ci][kh − 1 − p][kw − 1 − q]`, zero for `oc ≥ o`
    /// (written in order, read with a stride).
    fn weights(&self, ws: &[f32], wr: &mut [f32]) {
        let g = &self.g;
        let (kk, taps) = (g.kh * g.kw, g.taps());
        for (pc, row) in wr.chunks_exact_mut(self.run).enumerate() {
            let (p, ci) = (pc / g.c, pc % g.c);
            for (q, cell) in row.chunks_exact_mut(self.op).enumerate() {
                let t = ci * kk + (g.kh - 1 - p) * g.kw + g.kw - 1 - q;
                for (d, &v) in cell.iter_mut().zip(ws[t..].iter().step_by(taps)) {
                    *d = v;
                }
                cell[g.o..].fill(0.0);
            }
        }
    }

    /// Rows `y0..y1` of `dyt` (`ht × wt` cells of `op` floats) from one image's `dy`
    /// (`o·oh·ow`): `dyt[y][x][oc] = dy[oc][y − top][x − left]`, zero outside `dy` and for
    /// `oc ≥ o`. `dy` is read plane by plane (16 at a time with AVX-512): a row of all channels
    /// at once would be `o` streams 4 KiB apart, more than the prefetchers follow.
    fn transpose(&self, dyi: &[f32], y0: usize, y1: usize, dyt: &mut [f32], wide: bool) {
        let g = &self.g;
        let (op, cell_row) = (self.op, self.wt * self.op);
        let cols = g.ow.min(self.wt - self.left);
        // dyt rows that hold dy's rows, and the borders and padding lanes around them.
        let inside = |y: usize| y.wrapping_sub(self.top) < g.oh && cols > 0;
        for y in y0..y1 {
            let row = &mut dyt[y * cell_row..(y + 1) * cell_row];
            if !inside(y) {
                row.fill(0.0);
                continue;
            }
            row[..self.left * op].fill(0.0);
            row[(self.left + cols) * op..].fill(0.0);
            for cell in row[self.left * op..(self.left + cols) * op].chunks_exact_mut(op) {
                cell[g.o..].fill(0.0);
            }
        }
        // dy's rows among y0..y1 (contiguous).
        let (lo, hi) = (y0.max(self.top), y1.min(self.top + g.oh));
        if lo >= hi || cols == 0 {
            return;
        }
        let (px, first) = (g.pixels(), lo * cell_row + self.left * op);
        let src = &dyi[(lo - self.top) * g.ow..];
        let cells = &mut dyt[first..];
        #[cfg(target_arch = "x86_64")]
        if wide {
            let shape = Cells {
                rows: hi - lo,
                cols,
                ow: g.ow,
                px,
                o: g.o,
                op,
                cell_row,
            };
            // SAFETY: `wide` only where the CPU has AVX-512F.
            unsafe { transpose_cells_avx512(src, shape, cells) };
            return;
        }
        let _ = wide;
        for oc in 0..g.o {
            for r in 0..hi - lo {
                let src = &src[oc * px + r * g.ow..][..cols];
                let cells = &mut cells[r * cell_row..][..cols * op];
                for (x, &v) in src.iter().enumerate() {
                    cells[x * op + oc] = v;
                }
            }
        }
    }
}

/// The part of `dy` [`transpose_cells_avx512`] transposes: `rows` rows of `cols` columns of
/// `o` planes (`px` apart, rows `ow` apart) into cells of `op` floats (rows `cell_row` apart).
#[derive(Clone, Copy)]
struct Cells {
    rows: usize,
    cols: usize,
    ow: usize,
    px: usize,
    o: usize,
    op: usize,
    cell_row: usize,
}

/// `cells[r·cell_row + x·op + oc] = src[oc·px + r·ow + x]` for the rows, columns and channels
/// of `c` (the other lanes untouched), in 16 × 16 tiles transposed in registers (the partial
/// tiles element by element). Sixteen planes at a time, each read along its rows: all `o` at
/// once would be `o` streams 4 KiB apart, too many for the prefetchers.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_cells_avx512(src: &[f32], c: Cells, cells: &mut [f32]) {
    use std::arch::x86_64::*;
    for o0 in (0..c.o).step_by(16) {
        let no = 16.min(c.o - o0);
        for r in 0..c.rows {
            let (src, cells) = (&src[r * c.ow..], &mut cells[r * c.cell_row..]);
            for x0 in (0..c.cols).step_by(16) {
                let nx = 16.min(c.cols - x0);
                if nx < 16 || no < 16 {
                    for x in x0..x0 + nx {
                        for l in 0..no {
                            cells[x * c.op + o0 + l] = src[(o0 + l) * c.px + x];
                        }
                    }
                    continue;
                }
                let rows: [__m512; 16] = std::array::from_fn(|l| {
                    let s = &src[(o0 + l) * c.px + x0..][..16];
                    // The planes' later rows (as in `scan_avx512`).
                    _mm_prefetch::<_MM_HINT_T0>(s.as_ptr().wrapping_add(PREFETCH).cast());
                    // SAFETY: s holds 16 floats.
                    unsafe { _mm512_loadu_ps(s.as_ptr()) }
                });
                for (k, col) in transpose16(rows).iter().enumerate() {
                    let d = &mut cells[(x0 + k) * c.op + o0..][..16];
                    // SAFETY: d holds 16 floats.
                    unsafe { _mm512_storeu_ps(d.as_mut_ptr(), *col) };
                }
            }
        }
    }
}

multiversion! {
    /// Nonzero elements of `x` (NaN counts as nonzero, -0.0 as zero, as the mask reads them).
    fn count_nonzero(x: &[f32]) -> usize {
        // u32 counts vectorise twice as wide as usize; the chunks keep them from overflowing.
        x.chunks(1 << 20)
            .map(|chunk| chunk.iter().map(|&v| u32::from(v != 0.0)).sum::<u32>() as usize)
            .sum()
    }
}

/// Where [`scan`] writes one channel's needed elements.
struct Found<'a> {
    /// Their `dyt` pixels `(y0 + r)·wt + x`.
    px: &'a mut [u32],
    /// Their indices `r·w + x` in the channel's rows.
    pos: &'a mut [u32],
    /// Per row `r`: the number of elements before it.
    row_at: &'a mut [usize],
}

/// The needed elements of one channel's rows (`mask`, rows of `w` floats from row `y0`), in
/// increasing order, to `out` from `len` on; returns the new length. `out.px` and `out.pos`
/// have room for every element and 16 more.
fn scan(mask: &[f32], w: usize, y0: usize, wt: usize, out: Found, len: usize, wide: bool) -> usize {
    #[cfg(target_arch = "x86_64")]
    if wide {
        // SAFETY: `wide` only where the CPU has AVX-512F.
        return unsafe { scan_avx512(mask, w, y0, wt, out, len) };
    }
    let _ = wide;
    scan_portable(mask, w, y0, wt, out, len)
}

multiversion! {
    /// [`scan`] without intrinsics.
    fn scan_portable(mask: &[f32], w: usize, y0: usize, wt: usize, out: Found, len: usize) -> usize {
        let mut len = len;
        for (r, row) in mask.chunks_exact(w).enumerate() {
            out.row_at[r] = len;
            let base = (y0 + r) * wt;
            for_each_nonzero(row, |x| {
                out.px[len] = (base + x) as u32;
                out.pos[len] = (r * w + x) as u32;
                len += 1;
            });
        }
        len
    }
}

/// [`scan`] 16 elements at a time: a compare, and the indices of the nonzero ones compressed
/// into vectors stored whole (the room after the last element takes the rest), no branches on
/// the data.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scan_avx512(
    mask: &[f32],
    w: usize,
    y0: usize,
    wt: usize,
    out: Found,
    len: usize,
) -> usize {
    use std::arch::x86_64::*;
    let mut len = len;
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (r, row) in mask.chunks_exact(w).enumerate() {
        out.row_at[r] = len;
        for x0 in (0..w).step_by(16) {
            let n = 16.min(w - x0);
            let lanes = (1u32 << n).wrapping_sub(1) as u16;
            let at = row[x0..].as_ptr();
            // Each step waits on its load through `len`, so only a few dozen steps are in
            // flight: too few to cover memory latency without a prefetch well ahead.
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH).cast());
            // SAFETY: the first n of 16 floats, the rest masked off.
            let v = unsafe { _mm512_maskz_loadu_ps(lanes, at) };
            let m = _mm512_mask_cmp_ps_mask::<_CMP_NEQ_UQ>(lanes, v, _mm512_setzero_ps());
            // Stored whether or not any is nonzero: at 5 % density a branch on it mispredicted
            // every other time and cost more than the stores.
            let at = |first: usize| {
                _mm512_maskz_compress_epi32(
                    m,
                    _mm512_add_epi32(_mm512_set1_epi32(first as i32), iota),
                )
            };
            let (p, q) = (&mut out.px[len..len + 16], &mut out.pos[len..len + 16]);
            // SAFETY: p and q hold 16 u32s each.
            unsafe {
                _mm512_storeu_si512(p.as_mut_ptr().cast(), at((y0 + r) * wt + x0));
                _mm512_storeu_si512(q.as_mut_ptr().cast(), at(r * w + x0));
            }
            len += m.count_ones() as usize;
        }
    }
    len
}

/// Per-thread buffers: the image's `dyt`, its needed elements and their sums.
struct Worker<'a> {
    plan: &'a Plan,
    wr: &'a [f32],
    dys: &'a [f32],
    dx: SendPtr<f32>,
    wide: bool,
    dyt: Pooled,
    needed: Needed,
}

/// One image's needed elements (of the bands a thread took), per channel. Kept between calls
/// ([`Needed::take`]), like the kernels' scratch: fresh lists cost page faults every call.
#[derive(Default)]
struct Needed {
    /// Channel `ci`'s are `start[ci]..start[ci + 1]` of `px`, `pos` and `values`.
    start: Vec<usize>,
    /// Their `dyt` pixels (kernel row 0), per channel increasing.
    px: Vec<u32>,
    /// Their indices in the channel's rows.
    pos: Vec<u32>,
    /// Their gradients.
    values: Vec<f32>,
    /// Per channel, per row from the first band's: the channel's elements before it, and
    /// after the last row its total (`rows + 1` entries a channel).
    row_at: Vec<usize>,
    /// The first band's first row, and the rows.
    y0: usize,
    rows: usize,
    /// Per channel: the band at hand's elements (from, to) and where their sums start.
    bands: Vec<(usize, usize, usize)>,
    /// The band's sums, 16 lanes per element, and then added up.
    acc: Scratch,
    sums: Vec<f32>,
}

/// Lists that [`Needed::take`] lends.
static NEEDED: std::sync::Mutex<Vec<Needed>> = std::sync::Mutex::new(Vec::new());

impl Needed {
    /// Lists from the pool (new ones when it is empty).
    fn take() -> Needed {
        let pool = NEEDED.lock();
        pool.unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    /// Returns them to the pool (a few per thread at most).
    fn give(self) {
        let mut pool = NEEDED.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < 16 {
            pool.push(self);
        }
    }
}

impl Worker<'_> {
    /// Bands `b0..b1` of image `img`: reads the mask in their rows of dx, then overwrites them.
    /// The mask, `dy` and dx are each read or written plane by plane over all the bands' rows
    /// (band by band they would be `c` or `o` short runs 4 KiB apart, and each band waited on
    /// memory: the hardware prefetchers follow a few long streams, and prefetching the runs
    /// ahead did not help).
    ///
    /// # Safety
    /// These bands' rows of dx (every channel's) are this thread's alone.
    unsafe fn image(&mut self, img: usize, b0: usize, b1: usize) {
        let plan = self.plan;
        let g = &plan.g;
        let (wt, row_len) = (plan.wt, plan.wt * plan.op);
        let (y0, y1) = (plan.band_rows(b0).0, plan.band_rows(b1 - 1).1);
        let span = (y1 - y0) * g.w;
        let nd = &mut self.needed;
        if nd.px.len() < g.c * span + 16 {
            nd.px.resize(g.c * span + 16, 0);
            nd.pos.resize(g.c * span + 16, 0);
        }
        (nd.y0, nd.rows) = (y0, y1 - y0);
        nd.row_at.resize(g.c * (nd.rows + 1), 0);
        nd.start.clear();
        nd.start.push(0);
        let mut total = 0;
        for (ci, row_at) in nd.row_at.chunks_exact_mut(nd.rows + 1).enumerate() {
            // SAFETY: this thread's rows (the caller's); the slice ends here.
            let mask = unsafe { rows(self.dx, g, img, ci, y0, y1) };
            let out = Found {
                px: &mut nd.px,
                pos: &mut nd.pos,
                row_at: &mut row_at[..nd.rows],
            };
            total = scan(mask, g.w, y0, wt, out, total, self.wide);
            row_at[nd.rows] = total;
            nd.start.push(total);
        }
        if total > 0 {
            let dyt = self.dyt.get(plan.ht * row_len);
            let out_len = g.o * g.pixels();
            let dyi = &self.dys[img * out_len..(img + 1) * out_len];
            plan.transpose(dyi, y0, y1 + g.kh - 1, dyt, self.wide);
            nd.values.resize(total, 0.0);
            for b in b0..b1 {
                nd.band(plan, self.wr, dyt, b, self.wide);
            }
        }
        for ci in 0..g.c {
            // SAFETY: as above.
            let out = unsafe { rows(self.dx, g, img, ci, y0, y1) };
            out.fill(0.0);
            let (e0, e1) = (nd.start[ci], nd.start[ci + 1]);
            for (&q, &v) in nd.pos[e0..e1].iter().zip(&nd.values[e0..e1]) {
                out[q as usize] = v;
            }
        }
    }
}

impl Needed {
    /// The values of band `b`'s elements, from the image's `dyt`.
    fn band(&mut self, plan: &Plan, wr: &[f32], dyt: &[f32], b: usize, wide: bool) {
        let (b0, b1) = plan.band_rows(b);
        let (r0, r1) = (b0 - self.y0, b1 - self.y0);
        let mut slots = 0;
        self.bands.clear();
        for row_at in self.row_at.chunks_exact(self.rows + 1) {
            let (from, to) = (row_at[r0], row_at[r1]);
            self.bands.push((from, to, slots));
            slots += to - from;
        }
        if slots == 0 {
            return;
        }
        let acc = self.acc.get(16 * slots);
        if !wide {
            // The AVX-512 kernel's first pass starts the sums itself.
            acc.fill(0.0);
        }
        plan.band_sums(wr, dyt, &self.bands, &self.px, acc, wide);
        self.sums.resize(slots, 0.0);
        lane_sums(acc, &mut self.sums, wide);
        for &(from, to, k) in &self.bands {
            self.values[from..to].copy_from_slice(&self.sums[k..k + to - from]);
        }
    }
}

/// Image `img`'s channel `ci`, rows `y0..y1` of `dx` (laid out as `g`'s input).
///
/// # Safety
/// These rows are the caller's alone while the slice lives.
unsafe fn rows<'b>(
    dx: SendPtr<f32>,
    g: &Conv,
    img: usize,
    ci: usize,
    y0: usize,
    y1: usize,
) -> &'b mut [f32] {
    let at = (img * g.c + ci) * g.h * g.w + y0 * g.w;
    // SAFETY: per the caller, within dx's n·c·h·w.
    unsafe { std::slice::from_raw_parts_mut(dx.get().add(at), (y1 - y0) * g.w) }
}

/// `out[i]` = the 16 lanes of `sums[16·i..][..16]` added, in a fixed order (AVX-512: a tree
/// over 16 elements at a time, with shuffles shared between them).
fn lane_sums(sums: &[f32], out: &mut [f32], wide: bool) {
    #[cfg(target_arch = "x86_64")]
    if wide {
        // SAFETY: `wide` only where the CPU has AVX-512F.
        unsafe { lane_sums_avx512(sums, out) };
        return;
    }
    let _ = wide;
    for (o, v) in out.iter_mut().zip(sums.chunks_exact(16)) {
        let t: [f32; 8] = std::array::from_fn(|k| v[k] + v[k + 8]);
        let u: [f32; 4] = std::array::from_fn(|k| t[k] + t[k + 4]);
        *o = (u[0] + u[2]) + (u[1] + u[3]);
    }
}

/// [`lane_sums`] for 16 elements at a time: halves added pairwise across elements (quarters,
/// then pairs of lanes, then lanes), 45 instructions for 16 sums, then the sums put in order.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn lane_sums_avx512(sums: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    // After the tree lane 4q + k holds element 4k + q (an involution).
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for (o, block) in out.chunks_mut(16).zip(sums.chunks(256)) {
        let v: [__m512; 16] = std::array::from_fn(|e| match block.get(16 * e..16 * e + 16) {
            // SAFETY: s holds 16 floats.
            Some(s) => unsafe { _mm512_loadu_ps(s.as_ptr()) },
            None => _mm512_setzero_ps(),
        });
        // Quarters: [a.q0 + a.q2, a.q1 + a.q3, b.q0 + b.q2, b.q1 + b.q3] for a pair (a, b).
        let s: [__m512; 8] = std::array::from_fn(|i| {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(a, b),
                _mm512_shuffle_f32x4::<0xee>(a, b),
            )
        });
        // Quarter q: 4 partial sums of element 4m + q.
        let u: [__m512; 4] = std::array::from_fn(|m| {
            let (a, b) = (s[2 * m], s[2 * m + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(a, b),
                _mm512_shuffle_f32x4::<0xdd>(a, b),
            )
        });
        // Quarter q: 2 partial sums each of elements q and 4 + q (8 + q and 12 + q).
        let z: [__m512; 2] = std::array::from_fn(|h| {
            let (a, b) = (u[2 * h], u[2 * h + 1]);
            _mm512_add_ps(
                _mm512_shuffle_ps::<0x44>(a, b),
                _mm512_shuffle_ps::<0xee>(a, b),
            )
        });
        let r = _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(z[0], z[1]),
            _mm512_shuffle_ps::<0xdd>(z[0], z[1]),
        );
        let r = _mm512_permutexvar_ps(order, r);
        let n = o.len();
        // SAFETY: the first n ≤ 16 floats of o.
        unsafe { _mm512_mask_storeu_ps(o.as_mut_ptr(), ((1u32 << n) - 1) as u16, r) };
    }
}

impl Plan {
    /// One band's sums: `acc[16·(k + i)..][..16] += wr[p][ci] ⊙ dyt[(px[e0 + i]·op + p·wt·op)..]
    /// [..run]` lane by lane for every kernel row `p` and channel `ci` with `bands[ci] = (e0,
    /// e1, k)`, `i < e1 − e0`: kernel row by kernel row (the band's `dyt` rows under it stay in
    /// L1 while the channels go by), each row's run in chunks of weights held in registers.
    fn band_sums(
        &self,
        wr: &[f32],
        dyt: &[f32],
        bands: &[(usize, usize, usize)],
        px: &[u32],
        acc: &mut [f32],
        wide: bool,
    ) {
        let g = &self.g;
        let row_len = self.wt * self.op;
        // Every run read lies inside `dyt` (each channel's last pixel is its largest), every
        // sum inside `acc`, every weight row inside `wr`.
        let reach = (g.kh - 1) * row_len + self.run;
        let fits = |px: u32| px as usize * self.op + reach <= dyt.len();
        for &(e0, e1, k) in bands {
            if let Some(&last) = px[e0..e1].last() {
                assert!(fits(last) && 16 * (k + e1 - e0) <= acc.len());
            }
        }
        assert!(bands.len() == g.c && g.kh * g.c * self.run <= wr.len());
        #[cfg(target_arch = "x86_64")]
        if wide {
            for p in 0..g.kh {
                for &(k0, s) in &self.chunks {
                    let w = wr[p * g.c * self.run + k0..].as_ptr();
                    let d = dyt[p * row_len + k0..].as_ptr();
                    let (run, op, sp) = (self.run, self.op, acc.as_mut_ptr());
                    let fresh = p == 0 && k0 == 0;
                    // SAFETY: `wide` only where the CPU has AVX-512F; chunk (k0, s) lies
                    // within every run, the runs and sums as checked above.
                    unsafe {
                        match s {
                            24 => sweep_avx512::<24>(w, run, d, op, bands, px, sp, fresh),
                            16 => sweep_avx512::<16>(w, run, d, op, bands, px, sp, fresh),
                            8 => sweep_avx512::<8>(w, run, d, op, bands, px, sp, fresh),
                            4 => sweep_avx512::<4>(w, run, d, op, bands, px, sp, fresh),
                            2 => sweep_avx512::<2>(w, run, d, op, bands, px, sp, fresh),
                            _ => sweep_avx512::<1>(w, run, d, op, bands, px, sp, fresh),
                        }
                    }
                }
            }
            return;
        }
        let _ = wide;
        for p in 0..g.kh {
            let d = &dyt[p * row_len..];
            for (ci, &(e0, e1, k)) in bands.iter().enumerate() {
                let wrow = &wr[(p * g.c + ci) * self.run..][..self.run];
                let sums = &mut acc[16 * k..16 * (k + e1 - e0)];
                dots_portable(wrow, d, &px[e0..e1], self.op, sums);
            }
        }
    }
}

multiversion! {
    /// One channel's part of [`Plan::band_sums`] for one kernel row, without intrinsics: 16
    /// lanes per element, the run in one pass.
    fn dots_portable(wrow: &[f32], d: &[f32], at: &[u32], op: usize, sums: &mut [f32]) {
        for (&a, sum) in at.iter().zip(sums.chunks_exact_mut(16)) {
            let a = a as usize * op;
            let mut s = [0f32; 16];
            s.copy_from_slice(sum);
            for (w, x) in wrow.chunks_exact(16).zip(d[a..a + wrow.len()].chunks_exact(16)) {
                for l in 0..16 {
                    s[l] += w[l] * x[l];
                }
            }
            sum.copy_from_slice(&s);
        }
    }
}

/// [`Plan::band_sums`] for one kernel row and one chunk of `S` weight vectors, every channel:
/// channel `ci`'s chunk (at `w + ci·run`) stays in registers while its elements go by in groups
/// of 4, then 2 and 1 (each element's sum: two chains, even and odd vectors, added before it is
/// stored; started from zero when `fresh`, else from what is stored).
///
/// # Safety
/// The CPU has AVX-512F; `w + ci·run` holds `S` vectors for every channel of `bands`, `d +
/// px[e]·op` too for each of their elements, and `sums + 16·k` 16 floats per element.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn sweep_avx512<const S: usize>(
    w: *const f32,
    run: usize,
    d: *const f32,
    op: usize,
    bands: &[(usize, usize, usize)],
    px: &[u32],
    sums: *mut f32,
    fresh: bool,
) {
    use std::arch::x86_64::*;
    for (ci, &(e0, e1, k)) in bands.iter().enumerate() {
        if e0 == e1 {
            continue;
        }
        // SAFETY: this channel's chunk of S vectors.
        let wv: [__m512; S] =
            std::array::from_fn(|s| unsafe { _mm512_loadu_ps(w.add(ci * run + 16 * s)) });
        let mut groups = px[e0..e1].chunks_exact(4);
        // SAFETY (each group): as the caller's; the group's sums follow the previous group's.
        let mut sp = unsafe { sums.add(16 * k) };
        for grp in &mut groups {
            unsafe {
                group::<S, 4>(&wv, d, grp, op, sp, fresh);
                sp = sp.add(64);
            }
        }
        let rest = groups.remainder();
        let (two, one) = rest.split_at(rest.len() & 2);
        if !two.is_empty() {
            unsafe {
                group::<S, 2>(&wv, d, two, op, sp, fresh);
                sp = sp.add(32);
            }
        }
        if !one.is_empty() {
            unsafe { group::<S, 1>(&wv, d, one, op, sp, fresh) };
        }
    }
}

/// `P` elements of [`sweep_avx512`].
///
/// # Safety
/// As [`sweep_avx512`], with `at` of `P` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn group<const S: usize, const P: usize>(
    wv: &[std::arch::x86_64::__m512; S],
    d: *const f32,
    at: &[u32],
    op: usize,
    sums: *mut f32,
    fresh: bool,
) {
    use std::arch::x86_64::*;
    let base: [*const f32; P] = std::array::from_fn(|j| d.wrapping_add(at[j] as usize * op));
    // SAFETY: 16 sums per element.
    let mut even: [__m512; P] = std::array::from_fn(|j| {
        if fresh {
            _mm512_setzero_ps()
        } else {
            unsafe { _mm512_loadu_ps(sums.add(16 * j)) }
        }
    });
    let mut odd = [_mm512_setzero_ps(); P];
    // Spelled out per vector: as a loop, LLVM kept the sums on the stack (indexed by s % 2).
    macro_rules! steps {
        ($($s:literal)*) => {$(
            if $s < S {
                for j in 0..P {
                    // SAFETY: vector $s of element j's chunk.
                    let x = unsafe { _mm512_loadu_ps(base[j].add(16 * $s)) };
                    if $s % 2 == 0 {
                        even[j] = _mm512_fmadd_ps(wv[$s], x, even[j]);
                    } else {
                        odd[j] = _mm512_fmadd_ps(wv[$s], x, odd[j]);
                    }
                }
            }
        )*};
    }
    steps!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23);
    for j in 0..P {
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(sums.add(16 * j), _mm512_add_ps(even[j], odd[j])) };
    }
}

/// [`snn_conv2d_backward_dx_masked_f32`] with an explicit dispatch (the masked path when the
/// mask's density is below `d.max_density`, on at most `d.threads` threads); returns whether
/// the masked path ran.
///
/// # Safety
/// As [`snn_conv2d_backward_dx_masked_f32`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv2d_backward_dx_masked(
    d: SpikeDispatch,
    w: *const f32,
    dy: *const f32,
    dx: *mut f32,
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
    unsafe { conv_dx_masked(d, avx512(), w, dy, dx, to_usize(n), g) }
}

/// [`conv2d_backward_dx_masked`] on geometry `g`, with the AVX-512 kernels when `wide`.
///
/// # Safety
/// As [`snn_conv2d_backward_dx_masked_f32`]; `wide` only on a CPU with AVX-512F.
unsafe fn conv_dx_masked(
    d: SpikeDispatch,
    wide: bool,
    w: *const f32,
    dy: *const f32,
    dx: *mut f32,
    n: usize,
    g: Conv,
) -> bool {
    let in_len = g.c * g.h * g.w;
    let total = n * in_len;
    if total == 0 {
        return false;
    }
    if g.is_empty(n) {
        // No output reaches the input: every gradient is 0.
        // SAFETY: dx holds n·c·h·w floats.
        unsafe { std::slice::from_raw_parts_mut(dx, total) }.fill(0.0);
        return false;
    }
    let (out_len, kk) = (g.o * g.pixels(), g.kh * g.kw);
    // SAFETY: sizes as documented.
    let (ws, dys) = unsafe {
        (
            std::slice::from_raw_parts(w, g.o * g.taps()),
            std::slice::from_raw_parts(dy, n * out_len),
        )
    };
    let plan = Plan::new(g);
    // (A dispatch that never takes the masked path need not count.)
    let nnz = plan.as_ref().filter(|_| d.max_density > 0.0).map(|_| {
        // SAFETY: dx holds n·c·h·w floats, only read here.
        let mask = unsafe { std::slice::from_raw_parts(dx.cast_const(), total) };
        split_map(n, d.threads_for(total), |i0, i1| {
            count_nonzero(&mask[i0 * in_len..i1 * in_len])
        })
        .into_iter()
        .sum::<usize>()
    });
    let Some(plan) = plan.filter(|_| d.sparse(nnz, total)) else {
        // SAFETY: dx holds n·c·h·w floats that nothing else accesses; slices as documented.
        unsafe {
            conv_backward_dx(
                g,
                n,
                ws,
                dys,
                dx,
                d.threads_for(n * out_len * g.taps()),
                true,
            )
        };
        return false;
    };
    let dxp = SendPtr(dx);
    if nnz == Some(0) {
        // Nothing needed: all zeros.
        split(n, d.threads_for(total), |i0, i1| {
            // SAFETY: images i0..i1 of dx are this thread's.
            let part = unsafe {
                std::slice::from_raw_parts_mut(dxp.get().add(i0 * in_len), (i1 - i0) * in_len)
            };
            part.fill(0.0);
        });
        return true;
    }
    let mut wr = Scratch::pooled();
    let wr = wr.get(g.kh * g.c * plan.run);
    plan.weights(ws, wr);
    let wr = &*wr;
    let work = nnz.unwrap_or(0) * kk * plan.op + n * out_len;
    let plan = &plan;
    split(n * plan.bands, d.threads_for(work), |u0, u1| {
        let mut worker = Worker {
            plan,
            wr,
            dys,
            dx: dxp,
            wide,
            dyt: Scratch::pooled(),
            needed: Needed::take(),
        };
        let mut u = u0;
        while u < u1 {
            // This image's bands in the run.
            let (img, b0) = (u / plan.bands, u % plan.bands);
            let b1 = plan.bands.min(b0 + u1 - u);
            // SAFETY: these bands' rows of dx belong to this thread (threads take disjoint
            // runs).
            unsafe { worker.image(img, b0, b1) };
            u += b1 - b0;
        }
        worker.needed.give();
    });
    true
}

/// The input gradient of [`snn_conv2d_f32`](super::snn_conv2d_f32) where it is needed. On entry
/// `dx` holds a mask (nonzero, NaN included: this element's gradient is needed; 0 or -0: it is
/// not); on exit every needed element
/// holds `∂L/∂x` (what [`snn_conv2d_backward_f32`](super::snn_conv2d_backward_f32) adds to a
/// zeroed dx, to f32 rounding: the sums run in another order) and every other element holds 0
/// or its true gradient: below [`CONV_DX_MASKED_MAX_DENSITY`] of nonzero mask elements (stride
/// 1, padding under the kernel size) only the needed elements are computed and the rest are 0;
/// otherwise the dense dx overwrites all of it. Arguments as `snn_conv2d_backward_f32` without
/// `x`, `dw` and `db`; sizes that are not positive make the call a no-op (or zero dx when only
/// the output side is empty).
///
/// # Safety
/// `w`, `dy` and `dx` must point to live f32 buffers of `o·c·kh·kw`, `n·o·oh·ow` and `n·c·h·w`
/// elements, `dx` overlapping neither of the others, with `oh = (h + 2ph − kh)/sh + 1` and
/// `ow = (w + 2pw − kw)/sw + 1`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn snn_conv2d_backward_dx_masked_f32(
    w: *const f32,
    dy: *const f32,
    dx: *mut f32,
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
    let d = SpikeDispatch::by_isa(
        CONV_DX_MASKED_MAX_DENSITY,
        CONV_DX_MASKED_MAX_DENSITY_PORTABLE,
    );
    // SAFETY: forwarded.
    unsafe {
        conv2d_backward_dx_masked(d, w, dy, dx, n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow)
    };
}

#[cfg(test)]
mod tests {
    use super::super::tests::values;
    use super::super::{snn_conv2d_backward_f32, snn_conv2d_backward_spike_f32};
    use super::*;

    /// (n, c, h, w, o, kh, kw, sh, sw, ph, pw).
    type Shape = [usize; 11];

    /// Output channel counts that are not multiples of 16 (o = 5: one partial vector; runs of
    /// 2, 3, 5, 6, 19 and 39 vectors: chunks of 24, 16, 8, 4, 2 and 1), the gesture channels on
    /// a small image, 1 × 1, 3 × 3, 5 × 5 and 3 × 2 kernels, padding 0, 1 and 2, several bands
    /// of rows (o = 128 on 20 columns: 3 rows a band; o = 5 on 300 columns: 1), and stride 2
    /// (the dense fallback).
    const SHAPES: [Shape; 11] = [
        [2, 3, 7, 6, 5, 3, 3, 1, 1, 1, 1],
        [1, 64, 5, 6, 128, 3, 3, 1, 1, 1, 1],
        [3, 5, 6, 7, 20, 1, 1, 1, 1, 0, 0],
        [2, 4, 8, 8, 17, 3, 3, 1, 1, 0, 0],
        [1, 3, 6, 9, 40, 3, 2, 1, 1, 1, 0],
        [2, 2, 4, 5, 300, 1, 1, 1, 1, 0, 0],
        [2, 8, 7, 20, 128, 3, 3, 1, 1, 1, 1],
        [1, 2, 7, 7, 9, 5, 5, 1, 1, 2, 2],
        [1, 3, 4, 5, 200, 3, 3, 1, 1, 1, 1],
        [2, 2, 5, 300, 5, 3, 3, 1, 1, 1, 1],
        [2, 6, 9, 8, 7, 3, 3, 2, 2, 1, 1],
    ];

    fn abi([n, c, h, w, o, kh, kw, sh, sw, ph, pw]: Shape) -> [i64; 13] {
        let oh = (h + 2 * ph - kh) / sh + 1;
        let ow = (w + 2 * pw - kw) / sw + 1;
        [n, c, h, w, o, kh, kw, sh, sw, ph, pw, oh, ow].map(|v| v as i64)
    }

    /// A mask with about `density` nonzero elements, of varied values and signs.
    fn mask(len: usize, density: f64, seed: u32) -> Vec<f32> {
        let pick = values(len, seed);
        let v = values(len, seed + 1);
        pick.iter()
            .zip(v)
            .map(|(&p, v)| {
                if f64::from(p + 1.0) / 2.0 < density {
                    if v == 0.0 { -3.0 } else { v }
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// dx of the dense backward kernel (from zero, no dW or db).
    fn dense_dx(a: [i64; 13], w: &[f32], dy: &[f32]) -> Vec<f32> {
        let [n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow] = a;
        let len = (n * c * h * wd) as usize;
        let (x, mut dx) = (vec![0f32; len], vec![0f32; len]);
        let null = std::ptr::null_mut();
        // SAFETY: buffers of the documented sizes.
        unsafe {
            snn_conv2d_backward_f32(
                x.as_ptr(),
                w.as_ptr(),
                dy.as_ptr(),
                dx.as_mut_ptr(),
                null,
                null,
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
        dx
    }

    /// The masked kernel on a copy of `mask`: (dx, whether the masked path ran).
    fn masked(
        d: SpikeDispatch,
        wide: bool,
        a: [i64; 13],
        w: &[f32],
        dy: &[f32],
        mask: &[f32],
    ) -> (Vec<f32>, bool) {
        let [n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow] = a;
        let g = Conv::from_abi([c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow]);
        let mut dx = mask.to_vec();
        // SAFETY: buffers of the documented sizes.
        let ran = unsafe {
            conv_dx_masked(
                d,
                wide,
                w.as_ptr(),
                dy.as_ptr(),
                dx.as_mut_ptr(),
                n as usize,
                g,
            )
        };
        (dx, ran)
    }

    fn forced(threads: usize) -> SpikeDispatch {
        SpikeDispatch {
            max_density: f64::INFINITY,
            threads,
        }
    }

    const NEVER: SpikeDispatch = SpikeDispatch {
        max_density: 0.0,
        threads: 2,
    };

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.iter()
            .map(|v| v.to_bits())
            .eq(b.iter().map(|v| v.to_bits()))
    }

    /// The needed elements of `got` within f32 rounding of `want` (sums of up to o·kh·kw terms
    /// in [-1, 1], run in another order); the others 0 when `zeroed`, else exactly `want`'s.
    fn check(what: &str, got: &[f32], want: &[f32], mask: &[f32], zeroed: bool) {
        for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mask).enumerate() {
            if m != 0.0 {
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs() + 1e-5,
                    "{what}[{i}]: {g} vs {w}"
                );
            } else if zeroed {
                assert!(g.to_bits() == 0, "{what}[{i}]: {g} where not needed");
            } else {
                assert!(g.to_bits() == w.to_bits(), "{what}[{i}]: {g} vs dense {w}");
            }
        }
    }

    #[test]
    fn masked_dx_matches_the_dense_kernel() {
        let widths: &[bool] = if avx512() { &[false, true] } else { &[false] };
        for (case, &shape) in SHAPES.iter().enumerate() {
            let a = abi(shape);
            let [n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow] = a;
            let g = Conv::from_abi([c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow]);
            let fast = Plan::new(g).is_some();
            assert_eq!(fast, sh == 1, "{case}: fast path");
            let w = values((o * c * kh * kw) as usize, 30 + case as u32);
            let dy = values((n * o * oh * ow) as usize, 40 + case as u32);
            let want = dense_dx(a, &w, &dy);
            let len = want.len();
            for (di, &density) in [0.0, 0.1, 0.4, 1.0].iter().enumerate() {
                let m = mask(len, density, (case * 10 + di) as u32);
                let what = format!("case {case} density {density}");
                for &wide in widths {
                    let (one, ran) = masked(forced(1), wide, a, &w, &dy, &m);
                    assert_eq!(ran, fast, "{what}: path");
                    check(&format!("{what} wide {wide}"), &one, &want, &m, fast);
                    // 3 threads split images into runs of bands.
                    for threads in [2, 3] {
                        let (other, _) = masked(forced(threads), wide, a, &w, &dy, &m);
                        assert!(
                            same_bits(&one, &other),
                            "{what} wide {wide}: {threads} threads"
                        );
                    }
                }
                // Dense: every element the true gradient, whatever the mask.
                let (dense, ran) = masked(NEVER, avx512(), a, &w, &dy, &m);
                assert!(!ran, "{what}: dense path");
                assert!(same_bits(&dense, &want), "{what}: dense path differs");
            }
        }
    }

    #[test]
    fn lane_sums_add_every_element_s_lanes() {
        for n in [1, 5, 16, 17, 40] {
            let v = values(16 * n, n as u32);
            let want: Vec<f32> = v.chunks_exact(16).map(|l| l.iter().sum()).collect();
            for &wide in if avx512() {
                &[false, true][..]
            } else {
                &[false][..]
            } {
                let mut got = vec![f32::NAN; n];
                lane_sums(&v, &mut got, wide);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-5, "{n} wide {wide}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn the_dispatch_follows_the_mask_density() {
        let shape = [2, 4, 8, 8, 16, 3, 3, 1, 1, 1, 1];
        let a = abi(shape);
        let [n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow] = a;
        let w = values((o * c * kh * kw) as usize, 1);
        let dy = values((n * o * oh * ow) as usize, 2);
        let want = dense_dx(a, &w, &dy);
        let d = SpikeDispatch {
            max_density: 0.3,
            threads: 2,
        };
        for (density, sparse) in [(0.1, true), (0.6, false)] {
            let m = mask(want.len(), density, 5);
            let (dx, ran) = masked(d, avx512(), a, &w, &dy, &m);
            assert_eq!(ran, sparse, "density {density}");
            check("dispatch", &dx, &want, &m, sparse);
        }
        // The C entry point: needed elements right, the others 0 or their true gradient.
        let m = mask(want.len(), 0.2, 6);
        let mut dx = m.clone();
        // SAFETY: buffers of the documented sizes.
        unsafe {
            snn_conv2d_backward_dx_masked_f32(
                w.as_ptr(),
                dy.as_ptr(),
                dx.as_mut_ptr(),
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
        for ((&g, &wt), &mk) in dx.iter().zip(&want).zip(&m) {
            let fine = if mk != 0.0 {
                (g - wt).abs() <= 1e-4 * wt.abs() + 1e-5
            } else {
                g == 0.0 || g.to_bits() == wt.to_bits()
            };
            assert!(fine, "entry point: {g} vs {wt} (mask {mk})");
        }
        // Empty output side: nothing reaches the input, every gradient is 0.
        let mut dx = vec![1f32; 2 * 3 * 4 * 4];
        // SAFETY: o = 0: w and dy are empty.
        unsafe {
            snn_conv2d_backward_dx_masked_f32(
                w.as_ptr(),
                dy.as_ptr(),
                dx.as_mut_ptr(),
                2,
                3,
                4,
                4,
                0,
                3,
                3,
                1,
                1,
                1,
                1,
                4,
                4,
            )
        };
        assert!(dx.iter().all(|&v| v == 0.0), "o = 0");
    }

    /// A null dx leaves dW and db as the call with dx computes them, in both backward kernels.
    #[test]
    fn a_null_dx_skips_only_the_input_gradient() {
        for (case, &shape) in SHAPES.iter().enumerate() {
            let a = abi(shape);
            let [n, c, h, wd, o, kh, kw, sh, sw, ph, pw, oh, ow] = a;
            let x_len = (n * c * h * wd) as usize;
            // Binary x, so that the spike kernel may take its sparse dW path.
            let x: Vec<f32> = values(x_len, 50 + case as u32)
                .iter()
                .map(|&v| f32::from(u8::from(v > 0.6)))
                .collect();
            let w = values((o * c * kh * kw) as usize, 60 + case as u32);
            let dy = values((n * o * oh * ow) as usize, 70 + case as u32);
            for spike in [false, true] {
                let run = |with_dx: bool| {
                    let (mut dx, mut dw, mut db) = (
                        vec![1f32; x_len],
                        vec![1f32; w.len()],
                        vec![1f32; o as usize],
                    );
                    let dxp = if with_dx {
                        dx.as_mut_ptr()
                    } else {
                        std::ptr::null_mut()
                    };
                    let f = if spike {
                        snn_conv2d_backward_spike_f32
                    } else {
                        snn_conv2d_backward_f32
                    };
                    // SAFETY: buffers of the documented sizes (dx null or n·c·h·w).
                    unsafe {
                        f(
                            x.as_ptr(),
                            w.as_ptr(),
                            dy.as_ptr(),
                            dxp,
                            dw.as_mut_ptr(),
                            db.as_mut_ptr(),
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
                    (dx, dw, db)
                };
                let (_, dw, db) = run(true);
                let (dx0, dw0, db0) = run(false);
                let what = format!("case {case} spike {spike}");
                assert!(same_bits(&dw, &dw0), "{what}: dw");
                assert!(same_bits(&db, &db0), "{what}: db");
                assert!(dx0.iter().all(|&v| v == 1.0), "{what}: dx untouched");
            }
        }
    }
}
