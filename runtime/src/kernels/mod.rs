//! Numerical kernels the reference interpreter and the backends' tests call into.
//! Owns the shared error type, the reference kernels and the finite-difference checker.

pub mod error;
pub mod finite_difference;
pub mod reference;

pub use error::{KernelError, KernelResult};
