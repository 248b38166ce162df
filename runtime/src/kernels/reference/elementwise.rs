//! Broadcasting binary arithmetic (add, sub, mul, div) on equal-rank tensors, forward and
//! backward, plus `sum_to_shape`, which folds a broadcast gradient back onto an operand.

use ndarray::{ArrayD, ArrayViewD, IxDyn, NdFloat, Zip};

use super::reduce::{ReduceKind, reduce};
use super::shape::{broadcast_shape, expect_shape};
use crate::kernels::error::{KernelError, KernelResult};

/// Which binary operation [`binary`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryOp {
    pub fn apply<A: NdFloat>(self, a: A, b: A) -> A {
        match self {
            Self::Add => a + b,
            Self::Sub => a - b,
            Self::Mul => a * b,
            Self::Div => a / b,
        }
    }

    /// `(∂/∂a, ∂/∂b)` of [`Self::apply`] at `(a, b)`.
    pub fn partials<A: NdFloat>(self, a: A, b: A) -> (A, A) {
        match self {
            Self::Add => (A::one(), A::one()),
            Self::Sub => (A::one(), -A::one()),
            Self::Mul => (b, a),
            Self::Div => (A::one() / b, -a / (b * b)),
        }
    }
}

/// Gradients of [`binary`], each already reduced to its operand's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryGrads<A> {
    pub da: ArrayD<A>,
    pub db: ArrayD<A>,
}

/// `op(a, b)` elementwise; equal ranks, and along each axis equal extents or one of them 1.
pub fn binary<A: NdFloat>(
    op: BinaryOp,
    a: ArrayViewD<'_, A>,
    b: ArrayViewD<'_, A>,
) -> KernelResult<ArrayD<A>> {
    const OP: &str = "binary";
    with_broadcast(OP, &a, &b, |a, b| {
        Ok(Zip::from(&a).and(&b).map_collect(|&x, &y| op.apply(x, y)))
    })
}

/// Gradients of [`binary`] for `dy` shaped like the broadcast output.
pub fn binary_backward<A: NdFloat>(
    op: BinaryOp,
    a: ArrayViewD<'_, A>,
    b: ArrayViewD<'_, A>,
    dy: ArrayViewD<'_, A>,
) -> KernelResult<BinaryGrads<A>> {
    const OP: &str = "binary_backward";
    let (da, db) = with_broadcast(OP, &a, &b, |a_b, b_b| {
        expect_shape(OP, "output gradient", dy.shape(), a_b.shape())?;
        let mut da = ArrayD::zeros(a_b.raw_dim());
        let mut db = ArrayD::zeros(a_b.raw_dim());
        Zip::from(&mut da)
            .and(&mut db)
            .and(&a_b)
            .and(&b_b)
            .and(&dy)
            .for_each(|da, db, &x, &y, &g| {
                let (pa, pb) = op.partials(x, y);
                *da = g * pa;
                *db = g * pb;
            });
        Ok((da, db))
    })?;
    Ok(BinaryGrads {
        da: sum_to_shape(da.view(), a.shape())?,
        db: sum_to_shape(db.view(), b.shape())?,
    })
}

/// Sums `grad` over every axis where `shape` has extent 1, undoing a broadcast of an operand
/// of `shape` to `grad`'s shape. Ranks must agree and other extents must match.
pub fn sum_to_shape<A: NdFloat>(
    grad: ArrayViewD<'_, A>,
    shape: &[usize],
) -> KernelResult<ArrayD<A>> {
    const OP: &str = "sum_to_shape";
    if broadcast_shape(OP, grad.shape(), shape)? != grad.shape() {
        return Err(KernelError::shape(
            OP,
            format!(
                "operand shape {shape:?} is larger than gradient shape {:?}",
                grad.shape()
            ),
        ));
    }
    let axes: Vec<usize> = (0..shape.len()).filter(|&a| shape[a] == 1).collect();
    reduce(grad, ReduceKind::Sum, &axes, true)
}

/// Runs `f` on both operands viewed at their common broadcast shape.
fn with_broadcast<A, R>(
    op: &'static str,
    a: &ArrayViewD<'_, A>,
    b: &ArrayViewD<'_, A>,
    f: impl FnOnce(ArrayViewD<'_, A>, ArrayViewD<'_, A>) -> KernelResult<R>,
) -> KernelResult<R> {
    let shape = IxDyn(&broadcast_shape(op, a.shape(), b.shape())?);
    match (a.broadcast(shape.clone()), b.broadcast(shape)) {
        (Some(a), Some(b)) => f(a, b),
        _ => Err(KernelError::shape(
            op,
            format!(
                "shapes {:?} and {:?} do not broadcast",
                a.shape(),
                b.shape()
            ),
        )),
    }
}
