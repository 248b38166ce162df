//! 2-D convolution (cross-correlation, PyTorch semantics) on `[N, C, H, W]`, forward and backward.
//! Lowered per sample to im2col + one matrix product, so the index logic lives in one place.

use ndarray::{
    Array2, Array4, ArrayD, ArrayView3, ArrayViewD, ArrayViewMut3, Axis, Ix1, Ix4, NdFloat,
};

use super::shape::{expect_shape, fixed_rank, reshape, window_count};
use crate::kernels::error::{KernelError, KernelResult};

/// Stride and symmetric zero padding, each as (height, width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self {
            stride: (1, 1),
            padding: (0, 0),
        }
    }
}

/// Gradients of [`conv2d`]; `db` is what a bias would receive (ignore it for bias-free layers).
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2dGrads<A> {
    pub dx: ArrayD<A>,
    pub dw: ArrayD<A>,
    pub db: ArrayD<A>,
}

/// `y[n, o, i, j] = b[o] + Σ_{c,p,q} w[o, c, p, q] · x_pad[n, c, i·sh + p, j·sw + q]`,
/// output `[N, O, (H + 2ph − kh)/sh + 1, (W + 2pw − kw)/sw + 1]`.
pub fn conv2d<A: NdFloat>(
    x: ArrayViewD<'_, A>,
    w: ArrayViewD<'_, A>,
    bias: Option<ArrayViewD<'_, A>>,
    params: Conv2dParams,
) -> KernelResult<ArrayD<A>> {
    const OP: &str = "conv2d";
    let g = Geometry::new(OP, x.shape(), w.shape(), params)?;
    let x = fixed_rank::<_, Ix4>(OP, "input", x)?;
    let bias = bias
        .map(|b| {
            expect_shape(OP, "bias", b.shape(), &[g.out_channels])?;
            fixed_rank::<_, Ix1>(OP, "bias", b)
        })
        .transpose()?;
    let w = reshape(OP, &w, (g.out_channels, g.taps()))?;
    let mut y = Array4::zeros((g.batch, g.out_channels, g.out_h, g.out_w));
    for (x_n, mut y_n) in x.outer_iter().zip(y.outer_iter_mut()) {
        let out = w.dot(&g.im2col(x_n));
        y_n.assign(&reshape(OP, &out, (g.out_channels, g.out_h, g.out_w))?);
        if let Some(b) = &bias {
            for (mut plane, &b_o) in y_n.outer_iter_mut().zip(b) {
                plane += b_o;
            }
        }
    }
    Ok(y.into_dyn())
}

/// Gradients of [`conv2d`] for the upstream gradient `dy` (shape of the forward output).
pub fn conv2d_backward<A: NdFloat>(
    x: ArrayViewD<'_, A>,
    w: ArrayViewD<'_, A>,
    dy: ArrayViewD<'_, A>,
    params: Conv2dParams,
) -> KernelResult<Conv2dGrads<A>> {
    const OP: &str = "conv2d_backward";
    let g = Geometry::new(OP, x.shape(), w.shape(), params)?;
    let x = fixed_rank::<_, Ix4>(OP, "input", x)?;
    expect_shape(
        OP,
        "output gradient",
        dy.shape(),
        &[g.batch, g.out_channels, g.out_h, g.out_w],
    )?;
    let w_mat = reshape(OP, &w, (g.out_channels, g.taps()))?;
    let dy = reshape(OP, &dy, (g.batch, g.out_channels, g.out_h * g.out_w))?;
    let mut dx = Array4::zeros(x.raw_dim());
    let mut dw = Array2::zeros(w_mat.raw_dim());
    for ((x_n, dy_n), dx_n) in x.outer_iter().zip(dy.outer_iter()).zip(dx.outer_iter_mut()) {
        dw += &dy_n.dot(&g.im2col(x_n).t());
        g.col2im_add(&w_mat.t().dot(&dy_n), dx_n);
    }
    Ok(Conv2dGrads {
        dx: dx.into_dyn(),
        dw: reshape(OP, &dw, w.shape())?.into_owned().into_dyn(),
        db: dy.sum_axis(Axis(2)).sum_axis(Axis(0)).into_dyn(),
    })
}

/// Validated extents of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    channels: usize,
    in_h: usize,
    in_w: usize,
    out_channels: usize,
    kh: usize,
    kw: usize,
    out_h: usize,
    out_w: usize,
    params: Conv2dParams,
}

impl Geometry {
    fn new(op: &'static str, x: &[usize], w: &[usize], params: Conv2dParams) -> KernelResult<Self> {
        let &[batch, channels, in_h, in_w] = x else {
            return Err(KernelError::shape(
                op,
                format!("input must be [N, C, H, W], got {x:?}"),
            ));
        };
        let &[out_channels, w_channels, kh, kw] = w else {
            return Err(KernelError::shape(
                op,
                format!("weight must be [O, C, kh, kw], got {w:?}"),
            ));
        };
        if w_channels != channels {
            return Err(KernelError::shape(
                op,
                format!(
                    "weight {w:?} expects {w_channels} input channels, input {x:?} has {channels}"
                ),
            ));
        }
        let (sh, sw) = params.stride;
        let (ph, pw) = params.padding;
        Ok(Self {
            batch,
            channels,
            in_h,
            in_w,
            out_channels,
            kh,
            kw,
            out_h: window_count(op, "height", in_h, kh, sh, ph)?,
            out_w: window_count(op, "width", in_w, kw, sw, pw)?,
            params,
        })
    }

    /// Length of one receptive field, C·kh·kw.
    fn taps(&self) -> usize {
        self.channels * self.kh * self.kw
    }

    /// Calls `f(row, col, ih, iw)` for every receptive-field tap that lands inside the
    /// unpadded input; taps on padding are skipped because they contribute zero either way.
    fn for_each_tap(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let (sh, sw) = self.params.stride;
        let (ph, pw) = self.params.padding;
        for c in 0..self.channels {
            for p in 0..self.kh {
                for q in 0..self.kw {
                    let row = (c * self.kh + p) * self.kw + q;
                    for i in 0..self.out_h {
                        let Some(ih) = (i * sh + p).checked_sub(ph).filter(|&h| h < self.in_h)
                        else {
                            continue;
                        };
                        for j in 0..self.out_w {
                            if let Some(iw) =
                                (j * sw + q).checked_sub(pw).filter(|&v| v < self.in_w)
                            {
                                f(row, i * self.out_w + j, ih, iw);
                            }
                        }
                    }
                }
            }
        }
    }

    /// One sample `[C, H, W]` → `[C·kh·kw, out_h·out_w]`, zero where a tap hits padding.
    fn im2col<A: NdFloat>(&self, x: ArrayView3<'_, A>) -> Array2<A> {
        let mut cols = Array2::zeros((self.taps(), self.out_h * self.out_w));
        self.for_each_tap(|row, col, ih, iw| cols[[row, col]] = x[[self.channel(row), ih, iw]]);
        cols
    }

    /// Adjoint of [`Self::im2col`]: scatters column gradients back, summing overlaps.
    fn col2im_add<A: NdFloat>(&self, cols: &Array2<A>, mut dx: ArrayViewMut3<'_, A>) {
        self.for_each_tap(|row, col, ih, iw| dx[[self.channel(row), ih, iw]] += cols[[row, col]]);
    }

    fn channel(&self, row: usize) -> usize {
        row / (self.kh * self.kw)
    }
}
