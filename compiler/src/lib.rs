//! snnc: the compiler for attention spiking neural networks.
//!
//! Pipeline: `syntax` (pest grammar, AST with spans) → `sema` (names, blocks, shapes) → `ir`
//! (typed graph) → `mlir` (melior lowering) → backends. `diag` is shared by every stage.

pub mod mlir;
pub mod diag;
pub mod syntax;
pub mod ir;
pub mod sema;
pub mod cli;
