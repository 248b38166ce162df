//! Elementwise unary functions (sigmoid, relu, exp, log, tanh, abs) and their derivatives.
//! At kinks the derivative follows PyTorch: relu'(0) = 0 and abs'(0) = 0.

use ndarray::{ArrayD, ArrayViewD, NdFloat, Zip};

use super::shape::expect_shape;
use crate::kernels::error::KernelResult;

/// Which function [`unary`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Sigmoid,
    Relu,
    Exp,
    Log,
    Tanh,
    Abs,
}

impl UnaryOp {
    pub fn apply<A: NdFloat>(self, x: A) -> A {
        match self {
            Self::Sigmoid => sigmoid(x),
            Self::Relu => x.max(A::zero()),
            Self::Exp => x.exp(),
            Self::Log => x.ln(),
            Self::Tanh => x.tanh(),
            Self::Abs => x.abs(),
        }
    }

    /// d/dx of [`Self::apply`] at `x`.
    pub fn derivative<A: NdFloat>(self, x: A) -> A {
        match self {
            Self::Sigmoid => {
                let s = sigmoid(x);
                s * (A::one() - s)
            }
            Self::Relu => {
                if x > A::zero() {
                    A::one()
                } else {
                    A::zero()
                }
            }
            Self::Exp => x.exp(),
            Self::Log => x.recip(),
            Self::Tanh => {
                let t = x.tanh();
                A::one() - t * t
            }
            // NaN stays NaN; 0 maps to 0 (PyTorch's sign convention).
            Self::Abs => {
                if x == A::zero() {
                    A::zero()
                } else {
                    x.signum()
                }
            }
        }
    }
}

/// `op(x)` elementwise.
pub fn unary<A: NdFloat>(op: UnaryOp, x: ArrayViewD<'_, A>) -> ArrayD<A> {
    x.mapv(|v| op.apply(v))
}

/// `dy · op'(x)` elementwise; `dy` must have `x`'s shape.
pub fn unary_backward<A: NdFloat>(
    op: UnaryOp,
    x: ArrayViewD<'_, A>,
    dy: ArrayViewD<'_, A>,
) -> KernelResult<ArrayD<A>> {
    expect_shape("unary_backward", "output gradient", dy.shape(), x.shape())?;
    Ok(Zip::from(&x)
        .and(&dy)
        .map_collect(|&v, &g| g * op.derivative(v)))
}

/// Logistic function, evaluated so that `exp` never overflows for large |x|.
fn sigmoid<A: NdFloat>(x: A) -> A {
    if x >= A::zero() {
        A::one() / (A::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (A::one() + e)
    }
}

#[cfg(test)]
mod tests {
    use super::UnaryOp;

    #[test]
    fn sigmoid_is_stable_at_extremes() {
        assert_eq!(UnaryOp::Sigmoid.apply(1000.0_f64), 1.0);
        assert_eq!(UnaryOp::Sigmoid.apply(-1000.0_f64), 0.0);
        assert_eq!(UnaryOp::Sigmoid.apply(0.0_f32), 0.5);
    }

    #[test]
    fn kinks_follow_pytorch() {
        assert_eq!(UnaryOp::Relu.derivative(0.0_f64), 0.0);
        assert_eq!(UnaryOp::Abs.derivative(0.0_f64), 0.0);
        assert_eq!(UnaryOp::Abs.derivative(-2.0_f64), -1.0);
    }
}
