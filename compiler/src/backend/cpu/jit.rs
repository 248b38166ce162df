//! In-process execution: a model's forward function compiled by cranelift-jit for the host,
//! called through a packed entry point with shape checks against the manifest.

use super::manifest::Manifest;
use super::translate::{define_packed_entry, translate_module};
use super::{BackendError, host_isa, lower_to_llvm_threaded, target_description};
use crate::ir::Graph;
use crate::mlir::LowerOptions;
use crate::mlir::context::new_context;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::Linkage;
use std::time::{Duration, Instant};

/// A model's forward pass, compiled to machine code in this process.
pub struct CompiledModel {
    // `Option` so that `Drop` can hand the module to `free_memory`, which takes it by value.
    module: Option<JITModule>,
    entry: unsafe extern "C" fn(*const *mut f32),
    manifest: Manifest,
    timings: CompileTimings,
}

/// Wall-clock time of each phase of [`CompiledModel::compile`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CompileTimings {
    /// Lowering to MLIR, verification and the pipeline to the LLVM dialect.
    pub mlir: Duration,
    /// Translation to CLIF and Cranelift's compilation and linking.
    pub cranelift: Duration,
}

impl CompiledModel {
    /// Lowers `g` at `opts.batch`, translates it and JIT-compiles it for this CPU.
    pub fn compile(g: &Graph, opts: &LowerOptions) -> Result<CompiledModel, BackendError> {
        let start = Instant::now();
        let context = new_context();
        let mlir = lower_to_llvm_threaded(&context, &[g], opts)?;
        let mlir_time = start.elapsed();

        let start = Instant::now();
        let isa = host_isa(false)?;
        let target = target_description(&*isa);
        let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
        register_runtime_symbols(&mut builder);
        let mut module = JITModule::new(builder);
        let translation = translate_module(&mlir, &mut module, false)?;
        let manifest = Manifest::new(g, opts, &target)?;
        let forward = translation
            .defined
            .iter()
            .find(|(name, _)| *name == manifest.symbol)
            .map(|(_, id)| *id)
            .ok_or_else(|| {
                BackendError::new(format!("the module defines no @{}", manifest.symbol))
            })?;
        let packed = define_packed_entry(
            &mut module,
            &manifest.packed_symbol,
            forward,
            manifest.buffers.len(),
            Linkage::Local,
        )?;
        module
            .finalize_definitions()
            .map_err(|e| BackendError::new(format!("cannot link the JIT code: {e}")))?;
        let code = module.get_finalized_function(packed);
        // SAFETY: `packed` was defined above with exactly this signature (one pointer, no
        // results) under the host's default calling convention, which is `extern "C"`.
        let entry = unsafe {
            std::mem::transmute::<*const u8, unsafe extern "C" fn(*const *mut f32)>(code)
        };
        Ok(CompiledModel {
            module: Some(module),
            entry,
            manifest,
            timings: CompileTimings {
                mlir: mlir_time,
                cranelift: start.elapsed(),
            },
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn timings(&self) -> CompileTimings {
        self.timings
    }

    /// Runs the forward pass. `inputs` and `params` are in argument order (`params` holds the
    /// parameters and running statistics in `Graph::params` order; running statistics are
    /// updated in place); `outputs` are resized to their shapes and overwritten.
    pub fn forward(
        &self,
        inputs: &[&[f32]],
        params: &mut [Vec<f32>],
        outputs: &mut [Vec<f32>],
    ) -> Result<(), BackendError> {
        let m = &self.manifest;
        let n_in = m.with_role("input").count();
        let n_params = m.params().count();
        let n_out = m.with_role("output").count();
        if inputs.len() != n_in || params.len() != n_params || outputs.len() != n_out {
            return Err(BackendError::new(format!(
                "{}: expected {n_in} inputs, {n_params} parameters and {n_out} outputs, got {}, {} and {}",
                m.model,
                inputs.len(),
                params.len(),
                outputs.len()
            )));
        }
        let mut ptrs: Vec<*mut f32> = Vec::with_capacity(m.buffers.len());
        let (mut i, mut p, mut o) = (0, 0, 0);
        for b in &m.buffers {
            let (len, ptr) = match b.role.as_str() {
                "input" => {
                    i += 1;
                    // The generated code never stores through an input pointer.
                    (inputs[i - 1].len(), inputs[i - 1].as_ptr().cast_mut())
                }
                "output" => {
                    o += 1;
                    outputs[o - 1].resize(b.elements, 0.0);
                    (outputs[o - 1].len(), outputs[o - 1].as_mut_ptr())
                }
                _ => {
                    p += 1;
                    (params[p - 1].len(), params[p - 1].as_mut_ptr())
                }
            };
            if len != b.elements {
                return Err(BackendError::new(format!(
                    "{}: `{}` ({} {:?}) needs {} values, got {len}",
                    m.model, b.name, b.role, b.shape, b.elements
                )));
            }
            ptrs.push(ptr);
        }
        // SAFETY: one pointer per argument, each to a live buffer of exactly the element count
        // the code was compiled for; the forward function only touches those buffers and its
        // own heap temporaries.
        unsafe { (self.entry)(ptrs.as_ptr()) };
        Ok(())
    }

    /// Runs the forward pass over one buffer per argument, in argument order (inputs, params
    /// and state, outputs), with the same checks as [`CompiledModel::forward`].
    pub fn forward_args(&self, args: &mut [Vec<f32>]) -> Result<(), BackendError> {
        let m = &self.manifest;
        if args.len() != m.buffers.len() {
            return Err(BackendError::new(format!(
                "{}: expected {} buffers, got {}",
                m.model,
                m.buffers.len(),
                args.len()
            )));
        }
        for (b, a) in m.buffers.iter().zip(args.iter()) {
            if a.len() != b.elements {
                return Err(BackendError::new(format!(
                    "{}: `{}` ({} {:?}) needs {} values, got {}",
                    m.model,
                    b.name,
                    b.role,
                    b.shape,
                    b.elements,
                    a.len()
                )));
            }
        }
        let ptrs: Vec<*mut f32> = args.iter_mut().map(|a| a.as_mut_ptr()).collect();
        // SAFETY: as in `forward`: every buffer has the compiled element count.
        unsafe { (self.entry)(ptrs.as_ptr()) };
        Ok(())
    }
}

impl Drop for CompiledModel {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: `entry` points into this module's code and dies with `self`; no other
            // pointer into the module escapes `CompiledModel`.
            unsafe { module.free_memory() };
        }
    }
}

/// The runtime kernels `LoopForm::Kernels` lowering calls, by symbol (also for MLIR's
/// ExecutionEngine in tests).
pub fn runtime_kernels() -> [(&'static str, *const u8); 10] {
    use snn_runtime::kernels::ffi;
    [
        ("snn_conv2d_f32", ffi::snn_conv2d_f32 as *const u8),
        ("snn_dense_f32", ffi::snn_dense_f32 as *const u8),
        (
            "snn_conv2d_backward_f32",
            ffi::snn_conv2d_backward_f32 as *const u8,
        ),
        (
            "snn_conv2d_backward_dx_masked_f32",
            ffi::snn_conv2d_backward_dx_masked_f32 as *const u8,
        ),
        (
            "snn_dense_backward_f32",
            ffi::snn_dense_backward_f32 as *const u8,
        ),
        (
            "snn_conv2d_spike_f32",
            ffi::snn_conv2d_spike_f32 as *const u8,
        ),
        ("snn_dense_spike_f32", ffi::snn_dense_spike_f32 as *const u8),
        (
            "snn_conv2d_backward_spike_f32",
            ffi::snn_conv2d_backward_spike_f32 as *const u8,
        ),
        (
            "snn_dense_backward_spike_f32",
            ffi::snn_dense_backward_spike_f32 as *const u8,
        ),
        ("snn_gemm_f32", ffi::snn_gemm_f32 as *const u8),
    ]
}

/// The symbols generated code imports, resolved to this process's definitions rather than
/// looked up with `dlsym` (the executable need not export libm).
pub(super) fn register_runtime_symbols(builder: &mut JITBuilder) {
    unsafe extern "C" {
        fn malloc(size: usize) -> *mut u8;
        fn free(ptr: *mut u8);
    }
    macro_rules! libm1 {
        ($($name:literal => $f32fn:expr, $f64fn:expr;)*) => {
            $(
                extern "C" fn f32fn(x: f32) -> f32 { $f32fn(x) }
                extern "C" fn f64fn(x: f64) -> f64 { $f64fn(x) }
                builder.symbol(concat!($name, "f"), f32fn as *const u8);
                builder.symbol($name, f64fn as *const u8);
            )*
        };
    }
    builder.symbol("malloc", malloc as *const u8);
    builder.symbol("free", free as *const u8);
    // Conv2d/dense kernels that `LoopForm::Kernels` code calls.
    for (name, f) in runtime_kernels() {
        builder.symbol(name, f);
    }
    // Outlined parallel loops run through this (`translate::parallel`).
    builder.symbol(
        "snn_parallel_for",
        snn_runtime::kernels::ffi::snn_parallel_for as *const u8,
    );
    // One block per function: the inner `fn` items must not clash.
    {
        libm1!("exp" => f32::exp, f64::exp;);
    }
    {
        libm1!("exp2" => f32::exp2, f64::exp2;);
    }
    {
        libm1!("exp10" => |x: f32| 10f32.powf(x), |x: f64| 10f64.powf(x););
    }
    {
        libm1!("log" => f32::ln, f64::ln;);
    }
    {
        libm1!("log2" => f32::log2, f64::log2;);
    }
    {
        libm1!("log10" => f32::log10, f64::log10;);
    }
    {
        libm1!("sin" => f32::sin, f64::sin;);
    }
    {
        libm1!("cos" => f32::cos, f64::cos;);
    }
    {
        libm1!("tan" => f32::tan, f64::tan;);
    }
    {
        libm1!("asin" => f32::asin, f64::asin;);
    }
    {
        libm1!("acos" => f32::acos, f64::acos;);
    }
    {
        libm1!("atan" => f32::atan, f64::atan;);
    }
    {
        libm1!("sinh" => f32::sinh, f64::sinh;);
    }
    {
        libm1!("cosh" => f32::cosh, f64::cosh;);
    }
    {
        libm1!("tanh" => f32::tanh, f64::tanh;);
    }
    {
        libm1!("round" => f32::round, f64::round;);
    }
    extern "C" fn powf(x: f32, y: f32) -> f32 {
        x.powf(y)
    }
    extern "C" fn pow(x: f64, y: f64) -> f64 {
        x.powf(y)
    }
    extern "C" fn atan2f(x: f32, y: f32) -> f32 {
        x.atan2(y)
    }
    extern "C" fn atan2(x: f64, y: f64) -> f64 {
        x.atan2(y)
    }
    extern "C" fn fmodf(x: f32, y: f32) -> f32 {
        x % y
    }
    extern "C" fn fmod(x: f64, y: f64) -> f64 {
        x % y
    }
    builder.symbol("powf", powf as *const u8);
    builder.symbol("pow", pow as *const u8);
    builder.symbol("atan2f", atan2f as *const u8);
    builder.symbol("atan2", atan2 as *const u8);
    builder.symbol("fmodf", fmodf as *const u8);
    builder.symbol("fmod", fmod as *const u8);
}
