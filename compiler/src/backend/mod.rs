//! Code generation backends: turning the lowered LLVM-dialect module into machine code.
//! `cpu` owns the Cranelift translation, the in-process JIT and the AOT object/shared library.

pub mod cpu;
pub mod gpu;
