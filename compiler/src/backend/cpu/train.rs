//! Training on the CPU backend: `@<M>_forward_train` and `@<M>_backward` (docs/abi.md)
//! JIT-compiled at one static batch size, behind safe wrappers that check every buffer.

use super::jit::{CompileTimings, register_runtime_symbols};
use super::translate::{define_packed_entry, translate_module};
use super::{BackendError, host_isa, run_llvm_pipeline};
use crate::ir::Graph;
use crate::mlir::LowerOptions;
use crate::mlir::context::new_context;
use crate::mlir::grad::{
    TrainArg, TrainRole, backward_signature, backward_symbol, forward_train_signature,
    forward_train_symbol, lower_training_module_with,
};
use crate::mlir::lower::LoopForm;
use crate::mlir::pipeline::{verify, with_diagnostics};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::Linkage;
use std::time::Instant;

type Entry = unsafe extern "C" fn(*const *mut f32);

/// A model's training functions at one batch size, compiled to machine code in this process.
/// The batch is static (the buffers' shapes are baked into the code): a driver whose last batch
/// is smaller compiles a second instance for it.
pub struct CompiledTraining {
    // `Option` so that `Drop` can hand the module to `free_memory`, which takes it by value.
    module: Option<JITModule>,
    forward_entry: Entry,
    /// `None` in an evaluation build ([`LowerOptions::eval`]), which has no backward.
    backward_entry: Option<Entry>,
    model: String,
    batch: usize,
    forward_sig: Vec<TrainArg>,
    backward_sig: Vec<TrainArg>,
    timings: CompileTimings,
}

/// What passes between the functions, in signature order: what `forward_train` writes for the
/// backward (saved values, per-scan states) and the dropout masks the caller writes before it
/// ([`TrainScratch::get_mut`]). Allocated once per compiled batch size, reused by every step.
pub struct TrainScratch {
    names: Vec<String>,
    buffers: Vec<Vec<f32>>,
}

impl TrainScratch {
    /// A saved forward value (`saved` role) or a scan's states (`<scan>.states`) by name.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        let k = self.names.iter().position(|n| n == name)?;
        Some(&self.buffers[k])
    }

    /// A buffer by name, to write: the caller fills each `dropout_mask` before `forward_train`.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut [f32]> {
        let k = self.names.iter().position(|n| n == name)?;
        Some(&mut self.buffers[k])
    }

    /// Bytes held between the forward and the backward.
    pub fn bytes(&self) -> usize {
        self.buffers.iter().map(Vec::len).sum::<usize>() * std::mem::size_of::<f32>()
    }
}

/// Gradients of one backward pass.
pub struct TrainGrads {
    /// One buffer per *trainable* parameter, in `Graph::params` order.
    pub params: Vec<Vec<f32>>,
    /// One buffer per model input, in declaration order.
    pub inputs: Vec<Vec<f32>>,
}

fn elements(a: &TrainArg) -> usize {
    a.shape.iter().product()
}

impl CompiledTraining {
    /// Lowers the training functions of `g` at `opts.batch` and JIT-compiles them for this CPU.
    pub fn compile(g: &Graph, opts: &LowerOptions) -> Result<CompiledTraining, BackendError> {
        let start = Instant::now();
        let context = new_context();
        let (lowered, messages) =
            // forward_train's conv2d/dense call the runtime's GEMM kernels (bound below).
            with_diagnostics(&context, || {
                lower_training_module_with(&context, &[g], opts, LoopForm::Kernels)
            });
        let mut mlir = lowered.map_err(|e| {
            if messages.is_empty() {
                BackendError::new(e.message)
            } else {
                BackendError::new(format!("{}:\n{}", e.message, messages.join("\n")))
            }
        })?;
        verify(&context, &mlir)?;
        run_llvm_pipeline(&context, &mut mlir, true)?;
        let mlir_time = start.elapsed();

        let start = Instant::now();
        let forward_sig = forward_train_signature(g, opts)?;
        let backward_sig = backward_signature(g, opts)?;
        let isa = host_isa(false)?;
        let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
        register_runtime_symbols(&mut builder);
        let mut module = JITModule::new(builder);
        let translation = translate_module(&mlir, &mut module, false)?;
        let mut packed = Vec::new();
        let mut functions = vec![(forward_train_symbol(g), forward_sig.len())];
        if !opts.eval {
            functions.push((backward_symbol(g), backward_sig.len()));
        }
        for (symbol, n_args) in functions {
            let id = translation
                .defined
                .iter()
                .find(|(name, _)| *name == symbol)
                .map(|(_, id)| *id)
                .ok_or_else(|| BackendError::new(format!("the module defines no @{symbol}")))?;
            packed.push(define_packed_entry(
                &mut module,
                &format!("{symbol}_packed"),
                id,
                n_args,
                Linkage::Local,
            )?);
        }
        module
            .finalize_definitions()
            .map_err(|e| BackendError::new(format!("cannot link the JIT code: {e}")))?;
        let entry = |id| {
            let code = module.get_finalized_function(id);
            // SAFETY: the packed entries were defined above with exactly this signature (one
            // pointer, no results) under the host's default calling convention, `extern "C"`.
            unsafe { std::mem::transmute::<*const u8, Entry>(code) }
        };
        let forward_entry = entry(packed[0]);
        let backward_entry = packed.get(1).map(|id| entry(*id));
        Ok(CompiledTraining {
            module: Some(module),
            forward_entry,
            backward_entry,
            model: g.name.clone(),
            batch: opts.batch,
            forward_sig,
            backward_sig,
            timings: CompileTimings {
                mlir: mlir_time,
                cranelift: start.elapsed(),
            },
        })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn timings(&self) -> CompileTimings {
        self.timings
    }

    /// The arguments of `@<M>_forward_train` and `@<M>_backward`, in order.
    pub fn signatures(&self) -> (&[TrainArg], &[TrainArg]) {
        (&self.forward_sig, &self.backward_sig)
    }

    /// Zeroed saved-value and scan-state buffers of the compiled sizes.
    pub fn scratch(&self) -> TrainScratch {
        let between = self
            .forward_sig
            .iter()
            .filter(|a| a.role.between_functions());
        TrainScratch {
            names: between.clone().map(|a| a.name.clone()).collect(),
            buffers: between.map(|a| vec![0.0; elements(a)]).collect(),
        }
    }

    fn check(&self, a: &TrainArg, len: usize) -> Result<(), BackendError> {
        if len == elements(a) {
            Ok(())
        } else {
            Err(BackendError::new(format!(
                "{} (batch {}): `{}` ({} {:?}) needs {} values, got {len}",
                self.model,
                self.batch,
                a.name,
                a.role.as_str(),
                a.shape,
                elements(a)
            )))
        }
    }

    fn count(&self, what: &str, expected: usize, got: usize) -> Result<(), BackendError> {
        if expected == got {
            Ok(())
        } else {
            Err(BackendError::new(format!(
                "{}: expected {expected} {what}, got {got}",
                self.model
            )))
        }
    }

    fn check_scratch(&self, scratch: &TrainScratch) -> Result<(), BackendError> {
        let sig = self
            .forward_sig
            .iter()
            .filter(|a| a.role.between_functions());
        self.count("saved buffers", sig.clone().count(), scratch.buffers.len())?;
        for (a, (name, b)) in sig.zip(scratch.names.iter().zip(&scratch.buffers)) {
            if &a.name != name {
                return Err(BackendError::new(format!(
                    "{}: the scratch buffers belong to another model",
                    self.model
                )));
            }
            self.check(a, b.len())?;
        }
        Ok(())
    }

    /// Runs `@<M>_forward_train`. `inputs` in declaration order; `params` holds every parameter
    /// and running statistic in `Graph::params` order (running statistics are updated in place);
    /// `scratch` receives what the backward reads. Returns the model outputs.
    pub fn forward_train(
        &self,
        inputs: &[&[f32]],
        params: &mut [Vec<f32>],
        scratch: &mut TrainScratch,
    ) -> Result<Vec<Vec<f32>>, BackendError> {
        let sig = &self.forward_sig;
        let n = |r: TrainRole| sig.iter().filter(|a| a.role == r).count();
        self.count("inputs", n(TrainRole::Input), inputs.len())?;
        self.count(
            "parameters",
            n(TrainRole::Param) + n(TrainRole::State),
            params.len(),
        )?;
        self.check_scratch(scratch)?;
        let mut outputs: Vec<Vec<f32>> = sig
            .iter()
            .filter(|a| a.role == TrainRole::Output)
            .map(|a| vec![0.0; elements(a)])
            .collect();
        let (mut i, mut p, mut o, mut s) = (0, 0, 0, 0);
        let mut ptrs: Vec<*mut f32> = Vec::with_capacity(sig.len());
        for a in sig {
            let (len, ptr) = match a.role {
                TrainRole::Input => {
                    i += 1;
                    // The generated code never stores through an input pointer.
                    (inputs[i - 1].len(), inputs[i - 1].as_ptr().cast_mut())
                }
                TrainRole::Param | TrainRole::State => {
                    p += 1;
                    (params[p - 1].len(), params[p - 1].as_mut_ptr())
                }
                TrainRole::Output => {
                    o += 1;
                    (outputs[o - 1].len(), outputs[o - 1].as_mut_ptr())
                }
                TrainRole::Saved | TrainRole::ScanStates | TrainRole::DropoutMask => {
                    s += 1;
                    let b = &mut scratch.buffers[s - 1];
                    (b.len(), b.as_mut_ptr())
                }
                other => {
                    return Err(BackendError::new(format!(
                        "{}: unexpected `{}` argument in forward_train",
                        self.model,
                        other.as_str()
                    )));
                }
            };
            self.check(a, len)?;
            ptrs.push(ptr);
        }
        // SAFETY: one pointer per argument, each to a live buffer of exactly the element count
        // the code was compiled for (checked above); the function touches only those buffers
        // and its own heap temporaries, and writes only params' running statistics, outputs
        // and scratch, all borrowed mutably here.
        unsafe { (self.forward_entry)(ptrs.as_ptr()) };
        Ok(outputs)
    }

    /// Runs `@<M>_backward` over what the last `forward_train` with the same `inputs`, `params`
    /// (as they were before it: only running statistics changed, which the backward does not
    /// read) and `scratch` saw. `d_outputs`: the loss gradient of each model output.
    pub fn backward(
        &self,
        inputs: &[&[f32]],
        params: &[Vec<f32>],
        scratch: &TrainScratch,
        d_outputs: &[&[f32]],
    ) -> Result<TrainGrads, BackendError> {
        let backward_entry = self.backward_entry.ok_or_else(|| {
            BackendError::new(format!(
                "{}: compiled for evaluation, which has no backward",
                self.model
            ))
        })?;
        let sig = &self.backward_sig;
        let n = |r: TrainRole| sig.iter().filter(|a| a.role == r).count();
        self.count("inputs", n(TrainRole::Input), inputs.len())?;
        self.count(
            "parameters",
            n(TrainRole::Param) + n(TrainRole::State),
            params.len(),
        )?;
        self.count("output gradients", n(TrainRole::DOutput), d_outputs.len())?;
        self.check_scratch(scratch)?;
        let alloc = |r: TrainRole| -> Vec<Vec<f32>> {
            sig.iter()
                .filter(|a| a.role == r)
                .map(|a| vec![0.0; elements(a)])
                .collect()
        };
        let mut grads = TrainGrads {
            params: alloc(TrainRole::DParam),
            inputs: alloc(TrainRole::DInput),
        };
        let (mut i, mut p, mut s, mut d, mut dp, mut di) = (0, 0, 0, 0, 0, 0);
        let mut ptrs: Vec<*mut f32> = Vec::with_capacity(sig.len());
        // Read-only arguments are passed as `*mut` because the ABI has one pointer type; the
        // generated backward never stores through them (docs/abi.md: only d_param/d_input).
        let ro = |b: &[f32]| (b.len(), b.as_ptr().cast_mut());
        for a in sig {
            let (len, ptr) = match a.role {
                TrainRole::Input => {
                    i += 1;
                    ro(inputs[i - 1])
                }
                TrainRole::Param | TrainRole::State => {
                    p += 1;
                    ro(&params[p - 1])
                }
                TrainRole::Saved | TrainRole::ScanStates | TrainRole::DropoutMask => {
                    s += 1;
                    ro(&scratch.buffers[s - 1])
                }
                TrainRole::DOutput => {
                    d += 1;
                    ro(d_outputs[d - 1])
                }
                TrainRole::DParam => {
                    dp += 1;
                    let b = &mut grads.params[dp - 1];
                    (b.len(), b.as_mut_ptr())
                }
                TrainRole::DInput => {
                    di += 1;
                    let b = &mut grads.inputs[di - 1];
                    (b.len(), b.as_mut_ptr())
                }
                TrainRole::Output | TrainRole::OptimizerState | TrainRole::OptimizerScalars => {
                    return Err(BackendError::new(format!(
                        "{}: unexpected `{}` argument in backward",
                        self.model,
                        a.role.as_str()
                    )));
                }
            };
            self.check(a, len)?;
            ptrs.push(ptr);
        }
        // SAFETY: as in `forward_train`: every buffer has the compiled element count; the
        // function writes only the gradient buffers, which are owned here.
        unsafe { backward_entry(ptrs.as_ptr()) };
        Ok(grads)
    }
}

impl Drop for CompiledTraining {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: the entries point into this module's code and die with `self`; no other
            // pointer into the module escapes `CompiledTraining`.
            unsafe { module.free_memory() };
        }
    }
}
