//! Verification of lowered modules, the pass pipeline to the LLVM dialect, and the capture of
//! MLIR's own diagnostics so that failures reach the user as messages instead of a bare "failed".

use super::context::new_context;
use super::lower::grad::{lower_training, lower_training_module};
use super::lower::{LowerError, LowerOptions, lower_graphs};
use crate::ir::Graph;
use melior::{
    Context,
    diagnostic::DiagnosticSeverity,
    ir::{
        Module,
        operation::{OperationLike, WalkOrder, WalkResult},
    },
    pass::PassManager,
    utility::{parse_pass_pipeline, register_all_passes},
};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Once;
use std::time::{Duration, Instant};

/// From the lowered func/scf/memref/arith/math module to the LLVM dialect. The leading
/// canonicalize folds loops over size-1 axes (a third of the output for small models) and LICM
/// hoists what Cranelift would not; the vectorised scans' `vector.load/store/broadcast` become
/// LLVM vector ops (Cranelift's f32x4). Bare pointers are safe because every memref is static;
/// `check_llvm_only` guards against the silent half-conversion MLIR performs otherwise.
pub const LLVM_PIPELINE: &str = "builtin.module(\
canonicalize, \
loop-invariant-code-motion, \
convert-scf-to-cf, \
expand-strided-metadata, \
convert-vector-to-llvm, \
finalize-memref-to-llvm, \
convert-math-to-llvm, \
convert-arith-to-llvm, \
convert-cf-to-llvm, \
convert-func-to-llvm{use-bare-ptr-memref-call-conv=true}, \
reconcile-unrealized-casts, \
canonicalize, \
cse)";

/// [`LLVM_PIPELINE`] for the threaded CPU JIT: every `scf.parallel` becomes an
/// `omp.parallel { omp.wsloop { omp.loop_nest } }` whose body is LLVM dialect, which the CPU
/// backend outlines into a function it runs on several threads (`backend::cpu::translate`; no
/// OpenMP runtime is involved). `convert-scf-to-openmp` wraps each body in a
/// `memref.alloca_scope`, which must become LLVM (`finalize-memref-to-llvm`) before
/// `convert-scf-to-cf` gives it several blocks. `convert-openmp-to-llvm` comes after
/// `convert-func-to-llvm` because it also converts functions, with full memref descriptors.
pub const LLVM_PIPELINE_THREADED: &str = "builtin.module(\
canonicalize, \
loop-invariant-code-motion, \
convert-scf-to-openmp, \
expand-strided-metadata, \
finalize-memref-to-llvm, \
convert-scf-to-cf, \
convert-vector-to-llvm, \
finalize-memref-to-llvm, \
convert-math-to-llvm, \
convert-arith-to-llvm, \
convert-cf-to-llvm, \
convert-func-to-llvm{use-bare-ptr-memref-call-conv=true}, \
convert-openmp-to-llvm, \
reconcile-unrealized-casts, \
canonicalize, \
cse)";

/// The ops of [`LLVM_PIPELINE_THREADED`]'s output that are not LLVM dialect: the CPU backend
/// translates exactly these.
pub const PARALLEL_LOOP_OPS: [&str; 5] = [
    "omp.parallel",
    "omp.wsloop",
    "omp.loop_nest",
    "omp.yield",
    "omp.terminator",
];

static REGISTER_PASSES: Once = Once::new();

/// `register_all_passes` double-frees when called twice: every caller goes through here.
pub fn ensure_passes_registered() {
    REGISTER_PASSES.call_once(register_all_passes);
}

/// Runs `f` with a handler collecting every MLIR diagnostic emitted on `context` meanwhile.
pub fn with_diagnostics<T>(context: &Context, f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let messages = Rc::new(RefCell::new(Vec::new()));
    let sink = Rc::clone(&messages);
    let id = context.attach_diagnostic_handler(move |d| {
        let severity = match d.severity() {
            DiagnosticSeverity::Error => "error",
            DiagnosticSeverity::Warning => "warning",
            DiagnosticSeverity::Note => "note",
            DiagnosticSeverity::Remark => "remark",
        };
        let mut text = format!("{}: {severity}: {d}", d.location());
        for i in 0..d.note_count() {
            if let Ok(note) = d.note(i) {
                text.push_str(&format!("\n  note: {note}"));
            }
        }
        sink.borrow_mut().push(text);
        true
    });
    let result = f();
    context.detach_diagnostic_handler(id);
    let messages = messages.borrow().clone();
    (result, messages)
}

fn with_messages(headline: &str, messages: &[String]) -> LowerError {
    if messages.is_empty() {
        LowerError::new(format!("{headline} (MLIR gave no details)"))
    } else {
        LowerError::new(format!("{headline}:\n{}", messages.join("\n")))
    }
}

/// MLIR's verifier over the whole module, its messages in the error.
pub fn verify(context: &Context, module: &Module) -> Result<(), LowerError> {
    let (ok, messages) = with_diagnostics(context, || module.as_operation().verify());
    if ok {
        Ok(())
    } else {
        Err(with_messages(
            "the generated MLIR does not verify",
            &messages,
        ))
    }
}

/// Parses and runs a textual pass pipeline (`builtin.module(...)`) on `module`.
pub fn run_pipeline(
    context: &Context,
    module: &mut Module,
    pipeline: &str,
) -> Result<(), LowerError> {
    ensure_passes_registered();
    let pm = PassManager::new(context);
    let (parsed, messages) = with_diagnostics(context, || {
        parse_pass_pipeline(pm.as_operation_pass_manager(), pipeline)
    });
    if parsed.is_err() {
        return Err(with_messages(
            &format!("invalid pass pipeline `{pipeline}`"),
            &messages,
        ));
    }
    let (ran, messages) = with_diagnostics(context, || pm.run(module));
    match ran {
        Ok(()) => Ok(()),
        Err(_) => Err(with_messages("the MLIR pass pipeline failed", &messages)),
    }
}

/// Names of the ops outside the LLVM dialect (the enclosing `builtin.module` aside).
pub fn non_llvm_ops(module: &Module) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    module.as_operation().walk(WalkOrder::PreOrder, |op| {
        let name = op.name();
        let name = name
            .as_string_ref()
            .as_str()
            .unwrap_or("<non-utf8 op name>");
        if name != "builtin.module" && !name.starts_with("llvm.") {
            found.insert(name.to_string());
        }
        WalkResult::Advance
    });
    found
}

/// Errs when anything but `llvm.*` survived the pipeline: MLIR's conversions can leave ops
/// behind and still succeed.
pub fn check_llvm_only(module: &Module) -> Result<(), LowerError> {
    check_llvm_only_except(module, &[])
}

/// [`check_llvm_only`], allowing the ops in `allowed` (e.g. [`PARALLEL_LOOP_OPS`]).
pub fn check_llvm_only_except(module: &Module, allowed: &[&str]) -> Result<(), LowerError> {
    let mut left = non_llvm_ops(module);
    left.retain(|op| !allowed.contains(&op.as_str()));
    if left.is_empty() {
        Ok(())
    } else {
        Err(LowerError::new(format!(
            "lowering to the LLVM dialect left non-LLVM ops behind: {}",
            left.into_iter().collect::<Vec<_>>().join(", ")
        )))
    }
}

/// Which form `emit` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The lowered, verified func/scf/memref/arith/math module.
    Mlir,
    /// Every function (forward, forward_train, backward) after [`LLVM_PIPELINE`]: LLVM
    /// dialect only.
    LlvmMlir,
    /// The training functions (`_forward_train`, `_backward`) before the pipeline, verified.
    MlirGrad,
}

/// Wall-clock time of each phase of `emit`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    pub lower: Duration,
    pub verify: Duration,
    pub pipeline: Duration,
}

/// Lowers `graphs` into one module, verifies it, optionally runs the LLVM pipeline, and
/// returns the module's text.
pub fn emit(
    graphs: &[&Graph],
    opts: &LowerOptions,
    stage: Stage,
) -> Result<(String, Timings), LowerError> {
    let context = new_context();
    let mut timings = Timings::default();
    let start = Instant::now();
    let (lowered, messages) = with_diagnostics(&context, || match stage {
        Stage::Mlir => lower_graphs(&context, graphs, opts),
        Stage::MlirGrad => lower_training_module(&context, graphs, opts),
        Stage::LlvmMlir => lower_graphs(&context, graphs, opts)
            .and_then(|m| lower_training(&context, &m, graphs, opts).map(|()| m)),
    });
    let mut module = match lowered {
        Ok(m) => m,
        Err(e) if messages.is_empty() => return Err(e),
        Err(e) => return Err(with_messages(&e.message, &messages)),
    };
    timings.lower = start.elapsed();
    let start = Instant::now();
    verify(&context, &module)?;
    timings.verify = start.elapsed();
    if stage == Stage::LlvmMlir {
        let start = Instant::now();
        run_pipeline(&context, &mut module, LLVM_PIPELINE)?;
        check_llvm_only(&module)?;
        timings.pipeline = start.elapsed();
    }
    Ok((format!("{}\n", module.as_operation()), timings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use melior::{
        dialect::func,
        ir::{
            Block, BlockLike, Location, Region, RegionLike, Type,
            attribute::{StringAttribute, TypeAttribute},
            r#type::FunctionType,
        },
    };

    /// `func @f() -> f32` whose body returns nothing: MLIR's verifier rejects it.
    fn broken_module(context: &Context) -> Module<'_> {
        let location = Location::unknown(context);
        let module = Module::new(location);
        let f32 = Type::float32(context);
        let block = Block::new(&[]);
        block.append_operation(func::r#return(&[], location));
        let region = Region::new();
        region.append_block(block);
        module.body().append_operation(func::func(
            context,
            StringAttribute::new(context, "f"),
            TypeAttribute::new(FunctionType::new(context, &[], &[f32]).into()),
            region,
            &[],
            location,
        ));
        module
    }

    #[test]
    fn verifier_messages_reach_the_error() {
        let context = new_context();
        let module = broken_module(&context);
        let err = verify(&context, &module).expect_err("must not verify");
        assert!(err.message.contains("does not verify"), "{err}");
        assert!(err.message.contains("func.return"), "{err}");
    }

    #[test]
    fn bad_pipelines_are_reported_and_registration_is_idempotent() {
        let context = new_context();
        let mut module = Module::new(Location::unknown(&context));
        ensure_passes_registered();
        ensure_passes_registered();
        let err = run_pipeline(&context, &mut module, "builtin.module(no-such-pass)")
            .expect_err("unknown pass");
        assert!(err.message.contains("no-such-pass"), "{err}");
        run_pipeline(&context, &mut module, LLVM_PIPELINE).expect("empty module lowers");
        assert!(non_llvm_ops(&module).is_empty());
    }

    #[test]
    fn non_llvm_ops_are_named() {
        let context = new_context();
        let module = broken_module(&context);
        let err = check_llvm_only(&module).expect_err("func survives");
        assert!(err.message.contains("func.func"), "{err}");
    }
}
