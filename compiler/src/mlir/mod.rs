//! Lowering of the typed graph IR into MLIR (func/arith/math/scf/memref) with melior, and the
//! pass pipelines that take it to the LLVM dialect.

pub mod context;
