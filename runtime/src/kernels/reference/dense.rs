//! Dense (fully connected) contraction of one chosen axis of an N-d tensor with `W[out, in]`.
//! Linear layers contract the channel axis; attention MLPs contract the time or channel axis.

use ndarray::{ArrayD, ArrayView2, ArrayViewD, Axis, Ix1, Ix2, NdFloat};

use super::layout::AxisSplit;
use super::shape::{check_axis, expect_shape, fixed_rank};
use crate::kernels::error::{KernelError, KernelResult};

/// Gradients of [`dense`]; `db` is what a bias would receive (ignore it for bias-free layers).
#[derive(Debug, Clone, PartialEq)]
pub struct DenseGrads<A> {
    pub dx: ArrayD<A>,
    pub dw: ArrayD<A>,
    pub db: ArrayD<A>,
}

/// `y[.., o, ..] = Σ_i W[o, i] · x[.., i, ..] + b[o]`, contracting `axis` of `x`; the output
/// has `x`'s shape with that axis resized from `in` to `out`.
pub fn dense<A: NdFloat>(
    x: ArrayViewD<'_, A>,
    w: ArrayViewD<'_, A>,
    bias: Option<ArrayViewD<'_, A>>,
    axis: usize,
) -> KernelResult<ArrayD<A>> {
    const OP: &str = "dense";
    let (x_split, w) = operands(OP, &x, w, axis)?;
    let y_shape = resized(x.shape(), axis, w.nrows());
    let mut y = x_split.to_matrix(x)?.dot(&w.t());
    if let Some(b) = bias {
        expect_shape(OP, "bias", b.shape(), &[w.nrows()])?;
        y += &fixed_rank::<_, Ix1>(OP, "bias", b)?;
    }
    AxisSplit::new(OP, &y_shape, &[axis])?.to_tensor(y)
}

/// Gradients of [`dense`] for the upstream gradient `dy` (shape of the forward output).
pub fn dense_backward<A: NdFloat>(
    x: ArrayViewD<'_, A>,
    w: ArrayViewD<'_, A>,
    dy: ArrayViewD<'_, A>,
    axis: usize,
) -> KernelResult<DenseGrads<A>> {
    const OP: &str = "dense_backward";
    let (x_split, w) = operands(OP, &x, w, axis)?;
    let y_shape = resized(x.shape(), axis, w.nrows());
    expect_shape(OP, "output gradient", dy.shape(), &y_shape)?;
    let dy = AxisSplit::new(OP, &y_shape, &[axis])?.to_matrix(dy)?;
    let x_mat = x_split.to_matrix(x)?;
    Ok(DenseGrads {
        dx: x_split.to_tensor(dy.dot(&w))?,
        dw: dy.t().dot(&x_mat).into_dyn(),
        db: dy.sum_axis(Axis(0)).into_dyn(),
    })
}

/// Checks `W` is `[out, in]` with `in` matching `x`'s contracted axis.
fn operands<'w, A: NdFloat>(
    op: &'static str,
    x: &ArrayViewD<'_, A>,
    w: ArrayViewD<'w, A>,
    axis: usize,
) -> KernelResult<(AxisSplit, ArrayView2<'w, A>)> {
    check_axis(op, axis, x.shape())?;
    let w = fixed_rank::<_, Ix2>(op, "weight", w)?;
    if w.ncols() != x.shape()[axis] {
        return Err(KernelError::shape(
            op,
            format!(
                "weight {:?} expects {} inputs, input {:?} has {} along axis {axis}",
                w.shape(),
                w.ncols(),
                x.shape(),
                x.shape()[axis]
            ),
        ));
    }
    Ok((AxisSplit::new(op, x.shape(), &[axis])?, w))
}

/// `shape` with `axis` replaced by `extent`.
fn resized(shape: &[usize], axis: usize, extent: usize) -> Vec<usize> {
    let mut out = shape.to_vec();
    out[axis] = extent;
    out
}
