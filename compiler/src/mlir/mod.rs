//! Lowering of the typed graph IR into MLIR (func/arith/math/scf/memref) with melior, and the
//! pass pipelines that take it to the LLVM dialect.

pub mod context;
pub mod lower;
pub mod optim;
pub mod pipeline;

pub use lower::grad;
pub use lower::{ArgRole, ForwardArg, LowerError, LowerOptions, forward_signature, lower_graphs};
pub use pipeline::{LLVM_PIPELINE, Stage, Timings, emit};
