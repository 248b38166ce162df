//! snnc: the compiler for attention spiking neural networks.
//!
//! Pipeline: `syntax` (pest grammar, AST with spans) → `sema` (names, blocks, shapes) → `ir`
//! (typed graph) → `mlir` (melior lowering) → backends. `diag` is shared by every stage.

pub mod autodiff;
pub mod backend;
pub mod cli;
pub mod diag;
pub mod interp;
pub mod ir;
pub mod mlir;
pub mod sema;
pub mod syntax;
pub mod train;
