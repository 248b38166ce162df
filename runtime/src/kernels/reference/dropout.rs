//! Inverted dropout with a caller-supplied keep mask, forward and backward.
//! The mask makes the op deterministic, so the interpreter and every backend agree exactly.

use ndarray::{ArrayD, ArrayViewD, NdFloat, Zip};

use super::shape::expect_shape;
use crate::kernels::error::{KernelError, KernelResult};

/// `x · mask / (1 − p)`; `mask` (1 = keep, 0 = drop) has `x`'s shape and `p ∈ [0, 1]`.
/// With `p = 1` nothing is kept and the output is zero, as in PyTorch.
pub fn dropout<A: NdFloat>(
    x: ArrayViewD<'_, A>,
    mask: ArrayViewD<'_, A>,
    p: A,
) -> KernelResult<ArrayD<A>> {
    masked_scale("dropout", x, mask, p)
}

/// Gradient of [`dropout`]: the same mask and scale applied to `dy`, since the op is linear.
pub fn dropout_backward<A: NdFloat>(
    dy: ArrayViewD<'_, A>,
    mask: ArrayViewD<'_, A>,
    p: A,
) -> KernelResult<ArrayD<A>> {
    masked_scale("dropout_backward", dy, mask, p)
}

fn masked_scale<A: NdFloat>(
    op: &'static str,
    x: ArrayViewD<'_, A>,
    mask: ArrayViewD<'_, A>,
    p: A,
) -> KernelResult<ArrayD<A>> {
    if !(A::zero()..=A::one()).contains(&p) {
        return Err(KernelError::argument(
            op,
            format!("drop probability {p} is outside [0, 1]"),
        ));
    }
    expect_shape(op, "mask", mask.shape(), x.shape())?;
    let scale = if p == A::one() {
        A::zero()
    } else {
        A::one() / (A::one() - p)
    };
    Ok(Zip::from(&x).and(&mask).map_collect(|&v, &m| v * m * scale))
}
