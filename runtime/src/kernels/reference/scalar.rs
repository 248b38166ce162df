//! Conversions from counts and literals to the generic float type `A`.
//! Kept in one place so the (unreachable) cast-failure fallback is written once.

use ndarray::NdFloat;

/// An element count as a float; exact in f64 for any count a tensor in memory can have.
pub(crate) fn count<A: NdFloat>(n: usize) -> A {
    // Casts from usize to a float round but never fail, so the fallback is unreachable.
    A::from(n).unwrap_or_else(A::nan)
}

/// A literal such as a default hyper-parameter, rounded to `A`.
pub(crate) fn constant<A: NdFloat>(x: f64) -> A {
    // Finite f64 literals always cast to f32/f64, so the fallback is unreachable.
    A::from(x).unwrap_or_else(A::nan)
}
