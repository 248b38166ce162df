//! Numerical kernels the reference interpreter and the backends' tests call into.
//! Owns the shared error type, the reference kernels, the finite-difference checker and the
//! `extern "C"` conv/GEMM kernels generated CPU code calls ([`ffi`]).

pub mod error;
pub mod ffi;
pub mod finite_difference;
pub mod reference;

pub use error::{KernelError, KernelResult};
