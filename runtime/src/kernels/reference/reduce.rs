//! Sum / mean / max over a set of axes (with or without keepdim), forward and backward.
//! Also owns the "first argmax" rule that max pooling shares, so ties resolve identically.

use ndarray::{Array2, ArrayD, ArrayViewD, Axis, NdFloat};

use super::layout::AxisSplit;
use super::scalar::count;
use super::shape::expect_shape;
use crate::kernels::error::{KernelError, KernelResult};

/// Which reduction [`reduce`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    Sum,
    Mean,
    /// Gradient flows to the first maximal element in row-major order of the reduced slice.
    Max,
}

/// Reduces `x` over `axes` (distinct, any order; empty means no reduction). With `keepdim`
/// the reduced axes stay as size-1 axes, otherwise they are dropped.
pub fn reduce<A: NdFloat>(
    x: ArrayViewD<'_, A>,
    kind: ReduceKind,
    axes: &[usize],
    keepdim: bool,
) -> KernelResult<ArrayD<A>> {
    const OP: &str = "reduce";
    let split = AxisSplit::new(OP, x.shape(), axes)?;
    let m = split.to_matrix(x)?;
    let values = match kind {
        ReduceKind::Sum => m.sum_axis(Axis(1)).to_vec(),
        ReduceKind::Mean => (m.sum_axis(Axis(1)) / count::<A>(split.cols())).to_vec(),
        ReduceKind::Max => row_argmax(OP, &m)?.into_iter().map(|(_, v)| v).collect(),
    };
    split.rows_to_tensor(values, keepdim)
}

/// Gradient of [`reduce`] with respect to `x`, given `dy` shaped like the forward output.
pub fn reduce_backward<A: NdFloat>(
    x: ArrayViewD<'_, A>,
    kind: ReduceKind,
    axes: &[usize],
    keepdim: bool,
    dy: ArrayViewD<'_, A>,
) -> KernelResult<ArrayD<A>> {
    const OP: &str = "reduce_backward";
    let split = AxisSplit::new(OP, x.shape(), axes)?;
    expect_shape(
        OP,
        "output gradient",
        dy.shape(),
        &split.reduced_shape(keepdim),
    )?;
    // Row-major order of dy matches the matrix rows because kept axes keep their order.
    let dy: Vec<A> = dy.iter().copied().collect();
    let mut dx = Array2::zeros((split.rows(), split.cols()));
    match kind {
        ReduceKind::Sum | ReduceKind::Mean => {
            let scale = match kind {
                ReduceKind::Mean => A::one() / count::<A>(split.cols()),
                _ => A::one(),
            };
            for (mut row, &g) in dx.outer_iter_mut().zip(&dy) {
                row.fill(g * scale);
            }
        }
        ReduceKind::Max => {
            let argmax = row_argmax(OP, &split.to_matrix(x)?)?;
            for (r, ((col, _), &g)) in argmax.into_iter().zip(&dy).enumerate() {
                dx[[r, col]] = g;
            }
        }
    }
    split.to_tensor(dx)
}

/// Index and value of the first maximum, with NaN winning so that max propagates NaN like
/// NumPy and PyTorch do. `None` for an empty sequence.
pub(crate) fn first_argmax<A: NdFloat>(values: impl IntoIterator<Item = A>) -> Option<(usize, A)> {
    values.into_iter().enumerate().reduce(|best, (i, v)| {
        if v > best.1 || (v.is_nan() && !best.1.is_nan()) {
            (i, v)
        } else {
            best
        }
    })
}

/// [`first_argmax`] of every row; a max over zero elements has no value, so it is an error.
fn row_argmax<A: NdFloat>(op: &'static str, m: &Array2<A>) -> KernelResult<Vec<(usize, A)>> {
    m.outer_iter()
        .map(|row| {
            first_argmax(row.iter().copied()).ok_or_else(|| {
                KernelError::shape(op, "max over an empty set of elements".to_string())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::first_argmax;

    #[test]
    fn first_argmax_prefers_earliest_tie_and_nan() {
        assert_eq!(first_argmax([1.0, 3.0, 3.0, 2.0]), Some((1, 3.0)));
        let (i, v) = first_argmax([1.0, f64::NAN, 5.0]).expect("non-empty");
        assert!(i == 1 && v.is_nan());
        assert_eq!(first_argmax(Vec::<f64>::new()), None);
    }
}
