//! Average and max pooling on `[N, C, H, W]` (no padding, floor mode), forward and backward.
//! Max pooling routes each window's gradient to its first argmax, like `reduce`'s max.

use std::ops::Range;

use ndarray::{
    Array4, ArrayD, ArrayView2, ArrayViewD, ArrayViewMut2, Ix2, Ix4, NdFloat, SliceInfo,
    SliceInfoElem, s,
};

use super::reduce::first_argmax;
use super::scalar::count;
use super::shape::{expect_shape, fixed_rank, window_count};
use crate::kernels::error::{KernelError, KernelResult};

/// Window extent and step, each as (height, width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2dParams {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
}

impl Pool2dParams {
    /// Non-overlapping `k × k` windows, the usual `AvgPool2d(k)` / `MaxPool2d(k)`.
    pub fn square(k: usize) -> Self {
        Self {
            kernel: (k, k),
            stride: (k, k),
        }
    }
}

/// Mean over each window.
pub fn avg_pool2d<A: NdFloat>(
    x: ArrayViewD<'_, A>,
    params: Pool2dParams,
) -> KernelResult<ArrayD<A>> {
    let area = count::<A>(params.kernel.0 * params.kernel.1);
    pool_forward("avg_pool2d", x, params, |w| w.sum() / area)
}

/// Maximum over each window (NaN propagates).
pub fn max_pool2d<A: NdFloat>(
    x: ArrayViewD<'_, A>,
    params: Pool2dParams,
) -> KernelResult<ArrayD<A>> {
    pool_forward("max_pool2d", x, params, |w| {
        first_argmax(w.iter().copied()).map_or_else(A::nan, |(_, v)| v)
    })
}

/// Gradient of [`avg_pool2d`]: each window spreads its gradient evenly; overlaps add up.
pub fn avg_pool2d_backward<A: NdFloat>(
    input_shape: &[usize],
    dy: ArrayViewD<'_, A>,
    params: Pool2dParams,
) -> KernelResult<ArrayD<A>> {
    let area = count::<A>(params.kernel.0 * params.kernel.1);
    pool_backward(
        "avg_pool2d_backward",
        input_shape,
        dy,
        params,
        |_, mut window, g| {
            window += g / area;
            Ok(())
        },
    )
}

/// Gradient of [`max_pool2d`]: each window's gradient goes to its first maximal element in
/// row-major order, so ties are resolved deterministically.
pub fn max_pool2d_backward<A: NdFloat>(
    x: ArrayViewD<'_, A>,
    dy: ArrayViewD<'_, A>,
    params: Pool2dParams,
) -> KernelResult<ArrayD<A>> {
    const OP: &str = "max_pool2d_backward";
    let x = fixed_rank::<_, Ix4>(OP, "input", x)?;
    let kw = params.kernel.1;
    pool_backward(OP, x.shape(), dy, params, |at, mut window, g| {
        let (k, _) = first_argmax(x.slice(at.slice()).iter().copied())
            .ok_or_else(|| KernelError::argument(OP, "empty pooling window"))?;
        window[[k / kw, k % kw]] += g;
        Ok(())
    })
}

/// Where one output element's window sits in the input.
struct Window {
    n: usize,
    c: usize,
    rows: Range<usize>,
    cols: Range<usize>,
}

impl Window {
    fn slice(&self) -> SliceInfo<[SliceInfoElem; 4], Ix4, Ix2> {
        s![self.n, self.c, self.rows.clone(), self.cols.clone()]
    }
}

/// Validated input extents and the output `[N, C, (H − kh)/sh + 1, (W − kw)/sw + 1]`.
fn shapes(
    op: &'static str,
    input: &[usize],
    params: Pool2dParams,
) -> KernelResult<([usize; 4], [usize; 4])> {
    let &[n, c, h, w] = input else {
        return Err(KernelError::shape(
            op,
            format!("input must be [N, C, H, W], got {input:?}"),
        ));
    };
    let out_h = window_count(op, "height", h, params.kernel.0, params.stride.0, 0)?;
    let out_w = window_count(op, "width", w, params.kernel.1, params.stride.1, 0)?;
    Ok(([n, c, h, w], [n, c, out_h, out_w]))
}

/// Every output position with its input window, in row-major output order.
fn windows(out: [usize; 4], params: Pool2dParams) -> impl Iterator<Item = ([usize; 4], Window)> {
    let [n, c, oh, ow] = out;
    let ((kh, kw), (sh, sw)) = (params.kernel, params.stride);
    ndarray::indices((n, c, oh, ow))
        .into_iter()
        .map(move |(n, c, i, j)| {
            let window = Window {
                n,
                c,
                rows: i * sh..i * sh + kh,
                cols: j * sw..j * sw + kw,
            };
            ([n, c, i, j], window)
        })
}

fn pool_forward<A: NdFloat>(
    op: &'static str,
    x: ArrayViewD<'_, A>,
    params: Pool2dParams,
    pool: impl Fn(ArrayView2<'_, A>) -> A,
) -> KernelResult<ArrayD<A>> {
    let (_, out) = shapes(op, x.shape(), params)?;
    let x = fixed_rank::<_, Ix4>(op, "input", x)?;
    let mut y = Array4::zeros(out);
    for (at, window) in windows(out, params) {
        y[at] = pool(x.slice(window.slice()));
    }
    Ok(y.into_dyn())
}

fn pool_backward<A: NdFloat>(
    op: &'static str,
    input_shape: &[usize],
    dy: ArrayViewD<'_, A>,
    params: Pool2dParams,
    mut scatter: impl FnMut(&Window, ArrayViewMut2<'_, A>, A) -> KernelResult<()>,
) -> KernelResult<ArrayD<A>> {
    let (input, out) = shapes(op, input_shape, params)?;
    expect_shape(op, "output gradient", dy.shape(), &out)?;
    let dy = fixed_rank::<_, Ix4>(op, "output gradient", dy)?;
    let mut dx = Array4::zeros(input);
    for (at, window) in windows(out, params) {
        scatter(&window, dx.slice_mut(window.slice()), dy[at])?;
    }
    Ok(dx.into_dyn())
}
