//! The typed graph IR: tensor types, ops, the scalar programs of neurons, shape inference, the
//! printer and the verifier. Everything after sema (autodiff, passes, backends) consumes this.

pub mod cost;
pub mod graph;
pub mod infer;
pub mod printer;
pub mod scalar;
pub mod types;
pub mod verify;

pub use graph::*;
pub use types::{Axis, Elem, TensorType};
