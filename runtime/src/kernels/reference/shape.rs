//! Shape validation shared by every reference kernel: ranks, exact shapes, axes, broadcasting,
//! sliding-window extents and internal reshapes, so error messages read the same across ops.

use std::fmt;

use ndarray::{ArrayBase, ArrayView, ArrayViewD, CowArray, Data, Dimension, ShapeArg};

use crate::kernels::error::{KernelError, KernelResult};

/// Views `x` with a static rank, or says which operand of `op` had the wrong rank.
pub(crate) fn fixed_rank<'a, A, D: Dimension>(
    op: &'static str,
    name: &str,
    x: ArrayViewD<'a, A>,
) -> KernelResult<ArrayView<'a, A, D>> {
    let shape = x.shape().to_vec();
    x.into_dimensionality::<D>().map_err(|_| {
        KernelError::shape(
            op,
            format!(
                "{name} must have rank {}, got shape {shape:?}",
                D::NDIM.unwrap_or(0)
            ),
        )
    })
}

/// Requires `actual == expected`, naming both shapes otherwise.
pub(crate) fn expect_shape(
    op: &'static str,
    name: &str,
    actual: &[usize],
    expected: &[usize],
) -> KernelResult<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(KernelError::shape(
            op,
            format!("{name} has shape {actual:?}, expected {expected:?}"),
        ))
    }
}

/// Requires `axis < rank`.
pub(crate) fn check_axis(op: &'static str, axis: usize, shape: &[usize]) -> KernelResult<()> {
    if axis < shape.len() {
        Ok(())
    } else {
        Err(KernelError::argument(
            op,
            format!("axis {axis} is out of range for shape {shape:?}"),
        ))
    }
}

/// Requires every axis in range and no axis named twice.
pub(crate) fn check_axes(op: &'static str, axes: &[usize], shape: &[usize]) -> KernelResult<()> {
    for (i, &axis) in axes.iter().enumerate() {
        check_axis(op, axis, shape)?;
        if axes[..i].contains(&axis) {
            return Err(KernelError::argument(
                op,
                format!("axis {axis} is listed twice in {axes:?}"),
            ));
        }
    }
    Ok(())
}

/// The shape two equal-rank operands broadcast to: per axis the extents agree or one is 1.
/// Rank promotion is deliberately not supported, so that every broadcast is explicit in the IR.
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> KernelResult<Vec<usize>> {
    let incompatible =
        || KernelError::shape(op, format!("shapes {a:?} and {b:?} do not broadcast"));
    if a.len() != b.len() {
        return Err(incompatible());
    }
    a.iter()
        .zip(b)
        .map(|(&m, &n)| match (m, n) {
            _ if m == n => Ok(m),
            (1, _) => Ok(n),
            (_, 1) => Ok(m),
            _ => Err(incompatible()),
        })
        .collect()
}

/// Number of window positions along one spatial axis (floor mode); rejects empty windows,
/// zero strides and windows larger than the padded input.
pub(crate) fn window_count(
    op: &'static str,
    what: &str,
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> KernelResult<usize> {
    if kernel == 0 || stride == 0 {
        return Err(KernelError::argument(
            op,
            format!("{what}: kernel {kernel} and stride {stride} must be positive"),
        ));
    }
    let padded = input + 2 * padding;
    if padded < kernel {
        return Err(KernelError::shape(
            op,
            format!("{what}: kernel {kernel} exceeds padded input extent {padded}"),
        ));
    }
    Ok((padded - kernel) / stride + 1)
}

/// Reshapes in row-major order, copying only when `x` is not already contiguous. Element
/// counts are the calling kernel's invariant, so a failure is reported rather than unwrapped.
pub(crate) fn reshape<'a, A, S, D, E>(
    op: &'static str,
    x: &'a ArrayBase<S, D>,
    shape: E,
) -> KernelResult<CowArray<'a, A, E::Dim>>
where
    A: Clone,
    S: Data<Elem = A>,
    D: Dimension,
    E: ShapeArg + Clone + fmt::Debug,
{
    x.to_shape(shape.clone())
        .map_err(|_| reshape_error(op, x.shape(), &shape))
}

/// The error for an internal reshape whose element counts disagree.
pub(crate) fn reshape_error(op: &'static str, from: &[usize], to: &impl fmt::Debug) -> KernelError {
    KernelError::shape(op, format!("cannot reshape {from:?} into {to:?}"))
}
