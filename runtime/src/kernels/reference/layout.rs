//! Views an N-d tensor as a matrix `[kept, moved]` with a chosen set of axes moved to the back.
//! Dense, batch norm and reduce all work row-wise on such matrices, so they share this mapping.

use ndarray::{Array2, ArrayD, ArrayViewD, IxDyn};

use super::shape::{check_axes, reshape, reshape_error};
use crate::kernels::error::KernelResult;

/// How a tensor of one shape maps onto a `[rows, cols]` matrix: rows enumerate the kept axes
/// and columns the moved axes, each row-major in the original axis order (so the order in
/// which `moved` lists its axes never matters, e.g. for which of several ties comes first).
#[derive(Debug, Clone)]
pub(crate) struct AxisSplit {
    op: &'static str,
    /// Source axis order that puts kept axes first and moved axes last.
    perm: Vec<usize>,
    permuted_shape: Vec<usize>,
    kept: usize,
    rows: usize,
    cols: usize,
}

impl AxisSplit {
    /// Validates `moved` against `shape` (in range, distinct) and records the mapping.
    pub(crate) fn new(op: &'static str, shape: &[usize], moved: &[usize]) -> KernelResult<Self> {
        check_axes(op, moved, shape)?;
        let (kept_axes, moved_axes): (Vec<usize>, Vec<usize>) =
            (0..shape.len()).partition(|a| !moved.contains(a));
        let perm = [kept_axes, moved_axes].concat();
        let permuted_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
        let kept = shape.len() - moved.len();
        Ok(Self {
            op,
            rows: permuted_shape[..kept].iter().product(),
            cols: permuted_shape[kept..].iter().product(),
            perm,
            permuted_shape,
            kept,
        })
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Extents of the kept axes, in their original order.
    pub(crate) fn kept_shape(&self) -> &[usize] {
        &self.permuted_shape[..self.kept]
    }

    /// Copies `x` (which must have the shape this split was built for) into matrix form.
    pub(crate) fn to_matrix<A: Clone>(&self, x: ArrayViewD<'_, A>) -> KernelResult<Array2<A>> {
        let permuted = x.permuted_axes(IxDyn(&self.perm));
        Ok(reshape(self.op, &permuted, (self.rows, self.cols))?.into_owned())
    }

    /// Inverse of [`Self::to_matrix`], returning a standard-layout tensor.
    pub(crate) fn to_tensor<A: Clone>(&self, m: Array2<A>) -> KernelResult<ArrayD<A>> {
        let from = m.shape().to_vec();
        let m = if m.is_standard_layout() {
            m
        } else {
            m.as_standard_layout().into_owned()
        };
        let permuted = m
            .into_shape_with_order(IxDyn(&self.permuted_shape))
            .map_err(|_| reshape_error(self.op, &from, &self.permuted_shape))?;
        let mut inverse = vec![0; self.perm.len()];
        for (position, &axis) in self.perm.iter().enumerate() {
            inverse[axis] = position;
        }
        let restored = permuted.permuted_axes(IxDyn(&inverse));
        Ok(if restored.is_standard_layout() {
            restored
        } else {
            restored.as_standard_layout().into_owned()
        })
    }

    /// Shape of one value per row: the kept axes, with every moved axis either dropped or
    /// (with `keepdim`) left in place as a size-1 axis.
    pub(crate) fn reduced_shape(&self, keepdim: bool) -> Vec<usize> {
        if !keepdim {
            return self.kept_shape().to_vec();
        }
        let mut shape = vec![1; self.perm.len()];
        for (&axis, &extent) in self.perm[..self.kept].iter().zip(self.kept_shape()) {
            shape[axis] = extent;
        }
        shape
    }

    /// Per-row results of a matrix computation as a tensor of [`Self::reduced_shape`].
    pub(crate) fn rows_to_tensor<A>(
        &self,
        values: Vec<A>,
        keepdim: bool,
    ) -> KernelResult<ArrayD<A>> {
        let shape = self.reduced_shape(keepdim);
        let len = values.len();
        ArrayD::from_shape_vec(IxDyn(&shape), values)
            .map_err(|_| reshape_error(self.op, &[len], &shape))
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    use super::AxisSplit;

    #[test]
    fn round_trips_through_matrix_form() {
        let x = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |i| {
            (i[0] * 100 + i[1] * 10 + i[2]) as f64
        });
        let split = AxisSplit::new("test", x.shape(), &[2, 0]).expect("valid axes");
        let m = split.to_matrix(x.view()).expect("matrix");
        assert_eq!(m.shape(), &[3, 8]);
        // Row = axis 1, columns = (axis 0, axis 2) row-major, whatever order `moved` used.
        assert_eq!(m[[1, 0]], 10.0);
        assert_eq!(m[[1, 1]], 11.0);
        assert_eq!(m[[1, 4]], 110.0);
        assert_eq!(split.to_tensor(m).expect("tensor"), x);
    }

    #[test]
    fn keepdim_reinserts_moved_axes() {
        let split = AxisSplit::new("test", &[2, 3, 4], &[2, 0]).expect("valid axes");
        let t = split
            .rows_to_tensor(vec![1.0, 2.0, 3.0], true)
            .expect("tensor");
        assert_eq!(t.shape(), &[1, 3, 1]);
    }
}
