//! Concatenation along one axis and its backward, which splits the gradient back into pieces.
//! All operands must agree in rank and in every extent except the concatenation axis.

use ndarray::{ArrayD, ArrayViewD, Axis, NdFloat, Slice};

use super::shape::check_axis;
use crate::kernels::error::{KernelError, KernelResult};

/// Joins `inputs` (at least one) along `axis`.
pub fn concat<A: NdFloat>(inputs: &[ArrayViewD<'_, A>], axis: usize) -> KernelResult<ArrayD<A>> {
    const OP: &str = "concat";
    let Some(first) = inputs.first() else {
        return Err(KernelError::argument(OP, "needs at least one input"));
    };
    check_axis(OP, axis, first.shape())?;
    let fits = |x: &ArrayViewD<'_, A>| {
        x.ndim() == first.ndim()
            && (0..x.ndim()).all(|a| a == axis || x.shape()[a] == first.shape()[a])
    };
    if !inputs.iter().all(fits) {
        let shapes: Vec<&[usize]> = inputs.iter().map(|x| x.shape()).collect();
        return Err(KernelError::shape(
            OP,
            format!("inputs {shapes:?} differ outside axis {axis}"),
        ));
    }
    ndarray::concatenate(Axis(axis), inputs)
        .map_err(|e| KernelError::shape(OP, format!("along axis {axis}: {e}")))
}

/// Splits `dy` along `axis` into pieces of the given extents (the inputs' extents on `axis`).
pub fn concat_backward<A: NdFloat>(
    dy: ArrayViewD<'_, A>,
    sizes: &[usize],
    axis: usize,
) -> KernelResult<Vec<ArrayD<A>>> {
    const OP: &str = "concat_backward";
    check_axis(OP, axis, dy.shape())?;
    if sizes.iter().sum::<usize>() != dy.shape()[axis] {
        return Err(KernelError::shape(
            OP,
            format!(
                "piece extents {sizes:?} do not add up to {} (axis {axis} of gradient {:?})",
                dy.shape()[axis],
                dy.shape()
            ),
        ));
    }
    let mut start = 0;
    Ok(sizes
        .iter()
        .map(|&size| {
            let piece = dy
                .slice_axis(Axis(axis), Slice::from(start..start + size))
                .to_owned();
            start += size;
            piece
        })
        .collect())
}
