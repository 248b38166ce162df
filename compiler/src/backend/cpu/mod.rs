//! The CPU backend: LLVM-dialect MLIR → Cranelift IR (`translate`), in-process JIT (`jit`, and
//! `train` for the training functions), object file + library + header (`aot`), `manifest`.

pub mod aot;
pub mod cli;
pub mod jit;
pub mod manifest;
pub mod train;
pub mod translate;

pub use aot::{AotArtifacts, build_aot};
pub use jit::CompiledModel;
pub use manifest::{BufferSpec, Manifest};
pub use train::{CompiledTraining, TrainGrads, TrainScratch};
pub use translate::{Translation, translate_module};

use crate::ir::Graph;
use crate::mlir::LowerOptions;
use crate::mlir::context::new_context;
use crate::mlir::lower::{LoopForm, LowerError, lower_graphs_with};
use crate::mlir::pipeline::{
    LLVM_PIPELINE, LLVM_PIPELINE_THREADED, PARALLEL_LOOP_OPS, check_llvm_only,
    check_llvm_only_except, run_pipeline, verify, with_diagnostics,
};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use melior::{Context, ir::Module};
use std::fmt;

/// Why a model could not be compiled or run by the CPU backend. Always a message, never a panic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendError {
    pub message: String,
}

impl BackendError {
    pub fn new(message: impl Into<String>) -> Self {
        BackendError {
            message: message.into(),
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BackendError {}

impl From<LowerError> for BackendError {
    fn from(e: LowerError) -> Self {
        BackendError::new(e.message)
    }
}

/// Lowers `graphs` into one module and runs the LLVM pipeline; the caller keeps `context` alive
/// as long as the module. Conv2d and dense layers call the runtime's GEMM kernels
/// ([`LoopForm::Kernels`]): whoever runs the code must bind the symbols of
/// [`crate::mlir::lower::RUNTIME_KERNELS`] (the JIT does, see `jit::runtime_kernels`).
pub fn lower_to_llvm<'c>(
    context: &'c Context,
    graphs: &[&Graph],
    opts: &LowerOptions,
) -> Result<Module<'c>, BackendError> {
    lower_to_llvm_with(context, graphs, opts, LoopForm::Kernels)
}

/// [`lower_to_llvm`] as the JIT compiles it: parallel loops are left as `omp.*` regions
/// ([`LLVM_PIPELINE_THREADED`]), which the translation outlines and runs on the runtime's
/// threads. Only this crate's translation can run the result (not MLIR's ExecutionEngine).
pub fn lower_to_llvm_threaded<'c>(
    context: &'c Context,
    graphs: &[&Graph],
    opts: &LowerOptions,
) -> Result<Module<'c>, BackendError> {
    lower_through(context, graphs, opts, LoopForm::Kernels, true)
}

/// [`lower_to_llvm`] with a choice of loop form ([`LoopForm::Nested`]: plain loops only, for
/// code that must not depend on the runtime, such as the AOT shared library).
pub fn lower_to_llvm_with<'c>(
    context: &'c Context,
    graphs: &[&Graph],
    opts: &LowerOptions,
    form: LoopForm,
) -> Result<Module<'c>, BackendError> {
    lower_through(context, graphs, opts, form, false)
}

fn lower_through<'c>(
    context: &'c Context,
    graphs: &[&Graph],
    opts: &LowerOptions,
    form: LoopForm,
    threaded: bool,
) -> Result<Module<'c>, BackendError> {
    let (lowered, messages) =
        with_diagnostics(context, || lower_graphs_with(context, graphs, opts, form));
    let mut module = match lowered {
        Ok(m) => m,
        Err(e) if messages.is_empty() => return Err(e.into()),
        Err(e) => {
            return Err(BackendError::new(format!(
                "{}:\n{}",
                e.message,
                messages.join("\n")
            )));
        }
    };
    verify(context, &module)?;
    run_llvm_pipeline(context, &mut module, threaded)?;
    Ok(module)
}

/// [`LLVM_PIPELINE`], or [`LLVM_PIPELINE_THREADED`] when `threaded`, and the check that only
/// what the translation supports is left.
pub(crate) fn run_llvm_pipeline(
    context: &Context,
    module: &mut Module,
    threaded: bool,
) -> Result<(), BackendError> {
    if threaded {
        run_pipeline(context, module, LLVM_PIPELINE_THREADED)?;
        check_llvm_only_except(module, &PARALLEL_LOOP_OPS)?;
    } else {
        run_pipeline(context, module, LLVM_PIPELINE)?;
        check_llvm_only(module)?;
    }
    Ok(())
}

/// The CLIF text of the selected graphs' forward functions (the `--emit clif` stage), before
/// Cranelift's own optimisations.
pub fn emit_clif(graphs: &[&Graph], opts: &LowerOptions) -> Result<String, BackendError> {
    let context = new_context();
    let module = lower_to_llvm_threaded(&context, graphs, opts)?;
    let isa = host_isa(false)?;
    let builder = cranelift_object::ObjectBuilder::new(
        isa,
        "snnc_clif",
        cranelift_module::default_libcall_names(),
    )
    .map_err(|e| BackendError::new(format!("cannot create the object module: {e}")))?;
    let mut object = cranelift_object::ObjectModule::new(builder);
    let t = translate_module(&module, &mut object, true)?;
    Ok(t.clif)
}

/// The host ISA (cranelift-native detects SSE4.1/AVX/FMA...) at `opt_level=speed`. The JIT
/// needs `is_pic=false`; a shared library needs position-independent code.
pub fn host_isa(pic: bool) -> Result<OwnedTargetIsa, BackendError> {
    let mut flags = settings::builder();
    let set = |flags: &mut settings::Builder, name: &str, value: &str| {
        flags
            .set(name, value)
            .map_err(|e| BackendError::new(format!("cranelift flag {name}={value}: {e}")))
    };
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "is_pic", if pic { "true" } else { "false" })?;
    // Long-range calls: the JIT may place code and libm far apart.
    set(&mut flags, "use_colocated_libcalls", "false")?;
    let isa_builder = cranelift_native::builder()
        .map_err(|e| BackendError::new(format!("this host is not supported by Cranelift: {e}")))?;
    isa_builder
        .finish(settings::Flags::new(flags))
        .map_err(|e| BackendError::new(format!("cannot configure the host ISA: {e}")))
}

/// The target triple and the ISA features Cranelift uses (`x86_64-unknown-linux-gnu +avx2 ...`):
/// code generated on this host may not run on a CPU without them.
pub fn target_description(isa: &dyn cranelift_codegen::isa::TargetIsa) -> String {
    let mut text = isa.triple().to_string();
    for v in isa.isa_flags() {
        if v.as_bool() == Some(true) {
            text.push_str(&format!(" +{}", v.name.trim_start_matches("has_")));
        }
    }
    text
}
