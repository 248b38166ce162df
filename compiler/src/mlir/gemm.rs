//! Convolutions and dense layers as matrix products, for [`LoopForm::FlatGemm`] (the GPU
//! form): generated kernels rearrange the operands (im2col, transposes, bias) around calls of
//! `snn_gemm_f32`, which the GPU backend turns into cuBLAS's strided batched SGEMM (a launch
//! manifest `gemm` step) and MLIR's ExecutionEngine runs as the runtime's CPU kernel (tests).
//!
//! Why: a generated loop nest gives each output one thread that re-reads both operands for
//! every multiply-add (1.4 TFLOP/s for the gesture network's conv weight gradient on an H200);
//! a tuned GEMM keeps tiles in registers and shared memory.
//!
//! Layouts are those of the runtime's CPU kernels: images `[lead.., C, H, W]` with every axis
//! before the channel folded into `N` images, weights `[OC, C, KH, KW]`.
//!
//! [`LoopForm::FlatGemm`]: crate::mlir::lower::LoopForm::FlatGemm

use super::{Buf, Fx, V};
use melior::ir::Block;
use snn_runtime::gpu::manifest::Gemm;

/// A static size as the runtime's [`Gemm`] takes it (shapes are never negative; a zero size
/// is refused by the manifest check and does nothing on the CPU).
pub(super) fn size(v: i64) -> usize {
    usize::try_from(v).unwrap_or(0)
}

/// A convolution's geometry over `[lead.., C, H, W]` images.
pub(super) struct ConvShape {
    /// The axes before the channel (T, B), folded into the images.
    pub lead: Vec<i64>,
    pub c: i64,
    pub oc: i64,
    pub oh: i64,
    pub ow: i64,
    pub kh: i64,
    pub kw: i64,
    pub stride: (i64, i64),
    pub pad: (i64, i64),
}

impl ConvShape {
    fn images(&self) -> usize {
        size(self.lead.iter().product())
    }

    /// Rows of the im2col matrix: `C·KH·KW`.
    fn taps(&self) -> usize {
        size(self.c * self.kh * self.kw)
    }

    fn pixels(&self) -> usize {
        size(self.oh * self.ow)
    }

    fn out_channels(&self) -> usize {
        size(self.oc)
    }

    /// `[lead.., C, KH, KW, OH, OW]`: the im2col matrix of every image.
    fn cols(&self) -> Vec<i64> {
        let mut d = self.lead.clone();
        d.extend([self.c, self.kh, self.kw, self.oh, self.ow]);
        d
    }
}

impl<'c> Fx<'c, '_> {
    /// `snn_gemm_f32` on the first elements of `a`, `b` and `c`.
    pub(super) fn gemm(&self, a: V<'c>, b: V<'c>, c: V<'c>, g: Gemm) {
        let mut args = vec![self.base_ptr(a), self.base_ptr(b), self.base_ptr(c)];
        args.extend(g.to_abi().map(|v| self.cidx(v)));
        self.call_kernel("snn_gemm_f32", &args);
    }

    /// `body(kh, kw)` for every tap of the kernel window, as constants: one thread writes all
    /// of a pixel's taps, so its index arithmetic (a div/rem per axis in flat form) is done
    /// once rather than per tap, which had made im2col compute-bound.
    fn each_tap(&self, s: &ConvShape, mut body: impl FnMut(V<'c>, V<'c>)) {
        for kh in 0..s.kh {
            for kw in 0..s.kw {
                body(self.cidx(kh), self.cidx(kw));
            }
        }
    }

    /// The input value convolution tap `(c, kh, kw)` of output pixel `(oh, ow)` reads in image
    /// `lead` (0 in the padding).
    #[allow(clippy::too_many_arguments)]
    fn conv_tap(
        &self,
        b: &Block<'c>,
        x: &Buf<'c>,
        s: &ConvShape,
        lead: &[V<'c>],
        (c, kh, kw): (V<'c>, V<'c>, V<'c>),
        (oh, ow): (V<'c>, V<'c>),
    ) -> V<'c> {
        let ih = self.ilin(b, oh, s.stride.0, Some(kh), -s.pad.0);
        let iw = self.ilin(b, ow, s.stride.1, Some(kw), -s.pad.1);
        let mut idx = lead.to_vec();
        idx.extend([c, ih, iw]);
        let (ph, pw) = (idx.len() - 2, idx.len() - 1);
        if s.pad == (0, 0) {
            return self.load(b, x.mem, &idx);
        }
        self.load_padded(b, x, &mut idx, [(ph, ih), (pw, iw)])
    }

    /// `y = conv(x, w)`: every image's im2col matrix `[C·KH·KW, OH·OW]`, then one product per
    /// image with the weights `[OC, C·KH·KW]`. The caller adds the bias.
    pub(super) fn conv2d_gemm(&self, x: &Buf<'c>, w: V<'c>, y: &Buf<'c>, s: &ConvShape) {
        let cols = self.alloc(&s.cols());
        let lead_n = s.lead.len();
        let mut pixels = s.lead.clone();
        pixels.extend([s.c, s.oh, s.ow]);
        self.par(self.entry, &pixels, |b, i| {
            let (lead, c, oh, ow) = (&i[..lead_n], i[lead_n], i[lead_n + 1], i[lead_n + 2]);
            self.each_tap(s, |kh, kw| {
                let v = self.conv_tap(b, x, s, lead, (c, kh, kw), (oh, ow));
                self.store(b, v, cols, &[lead, &[c, kh, kw, oh, ow]].concat());
            });
        });
        self.gemm(
            w,
            cols,
            y.mem,
            Gemm {
                batch: s.images(),
                stride_b: s.taps() * s.pixels(),
                stride_c: s.out_channels() * s.pixels(),
                ..Gemm::single(s.out_channels(), s.pixels(), s.taps())
            },
        );
        self.stmt(self.entry, "memref.dealloc", &[cols]);
    }

    /// `dw += Σ over images and pixels of dy ⊗ taps`: `dy` as `[OC, N·OH·OW]` and the taps as
    /// `[C·KH·KW, N·OH·OW]`, then one product of depth `N·OH·OW`.
    pub(super) fn conv2d_weight_grad_gemm(
        &self,
        x: &Buf<'c>,
        dy: &Buf<'c>,
        dw: V<'c>,
        s: &ConvShape,
    ) {
        let lead_n = s.lead.len();
        let mut dy_t_dims = vec![s.oc];
        dy_t_dims.extend(&s.lead);
        dy_t_dims.extend([s.oh, s.ow]);
        let dy_t = self.alloc(&dy_t_dims);
        self.par(self.entry, &dy_t_dims, |b, i| {
            let mut idx = i[1..=lead_n].to_vec();
            idx.extend([i[0], i[lead_n + 1], i[lead_n + 2]]);
            let v = self.load(b, dy.mem, &idx);
            self.store(b, v, dy_t, i);
        });
        let mut taps_dims = vec![s.c, s.kh, s.kw];
        taps_dims.extend(&s.lead);
        taps_dims.extend([s.oh, s.ow]);
        let taps = self.alloc(&taps_dims);
        let mut pixels = vec![s.c];
        pixels.extend(&s.lead);
        pixels.extend([s.oh, s.ow]);
        self.par(self.entry, &pixels, |b, i| {
            let (c, lead, oh, ow) = (i[0], &i[1..=lead_n], i[lead_n + 1], i[lead_n + 2]);
            self.each_tap(s, |kh, kw| {
                let v = self.conv_tap(b, x, s, lead, (c, kh, kw), (oh, ow));
                self.store(b, v, taps, &[&[c, kh, kw][..], lead, &[oh, ow]].concat());
            });
        });
        self.gemm(
            dy_t,
            taps,
            dw,
            Gemm {
                trans_b: true,
                accumulate: true,
                ..Gemm::single(s.out_channels(), s.taps(), s.images() * s.pixels())
            },
        );
        self.stmt(self.entry, "memref.dealloc", &[dy_t]);
        self.stmt(self.entry, "memref.dealloc", &[taps]);
    }

    /// The gradient of every image's im2col matrix, `wᵀ·dy[i]`, as a new
    /// `[lead.., C, KH, KW, OH, OW]` buffer: the caller sums it into `dx` (col2im) and frees it.
    pub(super) fn conv2d_cols_grad_gemm(&self, w: V<'c>, dy: &Buf<'c>, s: &ConvShape) -> V<'c> {
        let dcols = self.alloc(&s.cols());
        self.gemm(
            w,
            dy.mem,
            dcols,
            Gemm {
                batch: s.images(),
                trans_a: true,
                stride_b: s.out_channels() * s.pixels(),
                stride_c: s.taps() * s.pixels(),
                ..Gemm::single(s.taps(), s.pixels(), s.out_channels())
            },
        );
        dcols
    }

    /// `y[.., o, ..] += bias[o]` along axis `axis`.
    pub(super) fn add_bias(&self, y: &Buf<'c>, bias: V<'c>, axis: usize) {
        self.par(self.entry, &y.dims, |b, i| {
            let v = self.load(b, y.mem, i);
            let v = self.addf(b, v, self.load(b, bias, &[i[axis]]));
            self.store(b, v, y.mem, i);
        });
    }
}

impl ConvShape {
    /// The geometry of a convolution of `x` into `y` when both are `[lead.., C, H, W]` with the
    /// channel at `pc`; `None` for other layouts (they keep the generated loops).
    pub(super) fn of(
        x: &[i64],
        y: &[i64],
        pc: usize,
        (kh, kw): (i64, i64),
        stride: (i64, i64),
        pad: (i64, i64),
    ) -> Option<Self> {
        let rank = x.len();
        if pc + 3 != rank || y.len() != rank || x[..pc] != y[..pc] {
            return None;
        }
        Some(ConvShape {
            lead: x[..pc].to_vec(),
            c: x[pc],
            oc: y[pc],
            oh: y[pc + 1],
            ow: y[pc + 2],
            kh,
            kw,
            stride,
            pad,
        })
    }
}
