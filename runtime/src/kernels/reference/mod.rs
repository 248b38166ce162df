//! Reference kernels: the exact, readable semantics every backend is tested against.
//! Generic over `A: NdFloat` (f64 in tests, f32 in models), on dynamic-rank ndarray tensors.
//!
//! Every op validates its shapes and returns [`KernelError`](crate::kernels::KernelError)
//! rather than panicking. Backward functions take the forward inputs plus the upstream
//! gradient `dy` (shaped like the forward output) and recompute what they need, so callers
//! never have to keep kernel-specific caches.

pub mod batch_norm;
pub mod concat;
pub mod conv;
pub mod dense;
pub mod dropout;
pub mod elementwise;
mod layout;
pub mod pool;
pub mod reduce;
mod scalar;
mod shape;
pub mod unary;

pub use batch_norm::{
    BatchNormGrads, BatchNormParams, BatchNormTrainOutput, batch_norm_eval,
    batch_norm_eval_backward, batch_norm_train, batch_norm_train_backward,
};
pub use concat::{concat, concat_backward};
pub use conv::{Conv2dGrads, Conv2dParams, conv2d, conv2d_backward};
pub use dense::{DenseGrads, dense, dense_backward};
pub use dropout::{dropout, dropout_backward};
pub use elementwise::{BinaryGrads, BinaryOp, binary, binary_backward, sum_to_shape};
pub use pool::{Pool2dParams, avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward};
pub use reduce::{ReduceKind, reduce, reduce_backward};
pub use shape::broadcast_shape;
pub use unary::{UnaryOp, unary, unary_backward};
