//! GPU backend: the forward MLIR through MLIR's gpu/NVVM lowering to PTX (one module per model),
//! plus the launch manifest (buffers, kernels, host launch sequence) the CUDA runtime replays.

pub mod cli;
#[cfg(feature = "gpu")]
pub mod train;

use crate::ir::Graph;
use crate::mlir::context::new_context;
use crate::mlir::grad::{
    TrainArg, backward_signature, backward_symbol, forward_train_signature, forward_train_symbol,
    lower_training_module_with,
};
use crate::mlir::lower::{
    LoopForm, LowerError, LowerOptions, forward_signature, lower_graphs_with,
};
use crate::mlir::optim::{has_optimizer, lower_optimizer, optimizer_signature, optimizer_symbol};
use crate::mlir::pipeline::{run_pipeline, verify, with_diagnostics};
use melior::{
    Context,
    ir::{
        Attribute, AttributeLike, BlockLike, Module, RegionLike, Value, ValueLike,
        attribute::{ArrayAttribute, DenseI32ArrayAttribute, IntegerAttribute},
        operation::{OperationLike, OperationRef},
        r#type::{DimSize, MemRefType, ShapedTypeLike},
    },
};
use mlir_sys::MlirOperation;
use snn_runtime::gpu::manifest::{
    ArgSpec, BufferKind, BufferSpec, FORMAT, Gemm, KernelSpec, LaunchArg, LaunchManifest, Step,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Threads per block: the tile size of every flat parallel loop.
pub const BLOCK_SIZE: usize = 256;

/// PTX targets we accept for `--chip` (PTX is forward compatible: newer GPUs JIT it too).
pub const CHIPS: &[&str] = &["sm_90", "sm_80"];

/// Parameters of GPU code generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuOptions {
    /// PTX `.target`, e.g. `sm_90`.
    pub chip: String,
    pub batch: usize,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            chip: "sm_90".into(),
            batch: 1,
        }
    }
}

/// First half, on the host function: each flat `scf.parallel` is tiled by the block size, the
/// tile loop mapped to blocks and the intra-tile loop to threads, then turned into
/// `gpu.launch`; `no-min-max-bounds` is required or the conversion silently does nothing (the
/// tail is guarded by an `scf.if` instead). `canonicalize` folds the grid sizes to constants
/// so the manifest can read them; constants are sunk into the launches (outlining no longer
/// does it) and outlining makes one `gpu.module` per launch.
pub fn parallel_pipeline() -> String {
    format!(
        "builtin.module(\
func.func(scf-parallel-loop-tiling{{parallel-loop-tile-sizes={BLOCK_SIZE} no-min-max-bounds=true}}, \
gpu-map-parallel-loops, convert-parallel-loops-to-gpu), \
lower-affine, canonicalize, gpu-launch-sink-index-computations, gpu-kernel-outlining, \
canonicalize)"
    )
}

/// Second half, after the kernels are merged into one `gpu.module`: NVVM for `chip`, bare
/// pointers for the static memrefs (one `.u64` parameter per buffer).
pub fn nvvm_pipeline(chip: &str) -> String {
    format!(
        "builtin.module(\
nvvm-attach-target{{chip={chip}}}, \
gpu.module(convert-scf-to-cf, convert-gpu-to-nvvm{{use-bare-ptr-memref-call-conv=true}}, \
reconcile-unrealized-casts, canonicalize, cse))"
    )
}

/// Last, once the libdevice calls have bodies ([`LIBDEVICE_SUBSTITUTES`]): PTX text.
/// `format=isa` needs no CUDA toolkit.
pub const BINARY_PIPELINE: &str = "builtin.module(gpu-module-to-binary{format=isa})";

/// `convert-gpu-to-nvvm` turns math ops into calls to libdevice (`__nv_*`), which ships only
/// with the CUDA toolkit and which the driver's JIT cannot resolve. These bodies replace the
/// declarations: sqrt and fabs exact (`sqrt.rn`), exp/log/pow/tanh through the hardware's
/// `ex2.approx`/`lg2.approx` (relative error about 1e-6 for the arguments spiking models see).
pub const LIBDEVICE_SUBSTITUTES: &[(&str, &str)] = &[
    (
        "__nv_sqrtf",
        "llvm.func @__nv_sqrtf(%x: f32) -> f32 {
  %r = llvm.intr.sqrt(%x) : (f32) -> f32
  llvm.return %r : f32
}",
    ),
    (
        "__nv_fabsf",
        "llvm.func @__nv_fabsf(%x: f32) -> f32 {
  %r = llvm.intr.fabs(%x) : (f32) -> f32
  llvm.return %r : f32
}",
    ),
    (
        "__nv_expf",
        "llvm.func @__nv_expf(%x: f32) -> f32 {
  %l = llvm.mlir.constant(1.44269502 : f32) : f32
  %y = llvm.fmul %x, %l : f32
  %r = llvm.inline_asm \"ex2.approx.f32 $0, $1;\", \"=f,f\" %y : (f32) -> f32
  llvm.return %r : f32
}",
    ),
    (
        "__nv_logf",
        "llvm.func @__nv_logf(%x: f32) -> f32 {
  %l = llvm.mlir.constant(0.693147182 : f32) : f32
  %y = llvm.inline_asm \"lg2.approx.f32 $0, $1;\", \"=f,f\" %x : (f32) -> f32
  %r = llvm.fmul %y, %l : f32
  llvm.return %r : f32
}",
    ),
    (
        "__nv_powf",
        "llvm.func @__nv_powf(%x: f32, %y: f32) -> f32 {
  %l = llvm.inline_asm \"lg2.approx.f32 $0, $1;\", \"=f,f\" %x : (f32) -> f32
  %p = llvm.fmul %l, %y : f32
  %r = llvm.inline_asm \"ex2.approx.f32 $0, $1;\", \"=f,f\" %p : (f32) -> f32
  llvm.return %r : f32
}",
    ),
    (
        "__nv_tanhf",
        "llvm.func @__nv_tanhf(%x: f32) -> f32 {
  %one = llvm.mlir.constant(1.0 : f32) : f32
  %two = llvm.mlir.constant(2.0 : f32) : f32
  %l = llvm.mlir.constant(2.88539004 : f32) : f32
  %a = llvm.intr.fabs(%x) : (f32) -> f32
  %y = llvm.fmul %a, %l : f32
  %e = llvm.inline_asm \"ex2.approx.f32 $0, $1;\", \"=f,f\" %y : (f32) -> f32
  %d = llvm.fadd %e, %one : f32
  %q = llvm.fdiv %two, %d : f32
  %t = llvm.fsub %one, %q : f32
  %r = llvm.intr.copysign(%t, %x) : (f32, f32) -> f32
  llvm.return %r : f32
}",
    ),
];

/// One model compiled for the GPU.
#[derive(Clone, Debug)]
pub struct GpuArtifact {
    pub model: String,
    /// One PTX module holding every kernel of the forward.
    pub ptx: String,
    pub manifest: LaunchManifest,
    pub timings: GpuTimings,
}

/// Wall-clock time of each phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuTimings {
    pub lower: Duration,
    pub to_gpu: Duration,
    pub to_ptx: Duration,
}

/// Lowers `g` (flat loops), maps its loops to kernels, generates PTX for `opts.chip` and
/// extracts the launch manifest.
pub fn compile(g: &Graph, opts: &GpuOptions) -> Result<GpuArtifact, LowerError> {
    let lower_opts = LowerOptions::with_batch(opts.batch);
    let sig = forward_signature(g, &lower_opts)?;
    let args = arg_specs(
        sig.iter()
            .map(|a| (a.name.as_str(), a.role.as_str(), a.shape.as_slice())),
    );
    let functions = [(crate::mlir::lower::forward_symbol(g), args)];
    let (ptx, mut manifests, timings) = compile_functions(g, opts, &functions, |context| {
        lower_graphs_with(context, &[g], &lower_opts, LoopForm::FlatGemm)
    })?;
    let manifest = manifests.remove(0);
    Ok(GpuArtifact {
        model: g.name.clone(),
        ptx,
        manifest,
        timings,
    })
}

/// One model's training functions compiled for the GPU: `forward_train`, `backward` and the
/// optimiser step (docs/abi.md) share one PTX module.
#[derive(Clone, Debug)]
pub struct GpuTrainingArtifact {
    pub model: String,
    /// One PTX module holding the kernels of both functions.
    pub ptx: String,
    pub forward_train: LaunchManifest,
    /// `None` in an evaluation build, which has no backward.
    pub backward: Option<LaunchManifest>,
    /// `@<model>_optimizer` (one Adam/AdamW step on the device, [`crate::mlir::optim`]):
    /// `None` in an evaluation build and for a model with nothing to train.
    pub optimizer: Option<LaunchManifest>,
    pub timings: GpuTimings,
}

/// [`compile`] for training: `@<model>_forward_train` and `@<model>_backward` in flat form,
/// their kernels in one PTX module, one launch manifest per function.
pub fn compile_training(g: &Graph, opts: &GpuOptions) -> Result<GpuTrainingArtifact, LowerError> {
    compile_training_with(g, opts, false)
}

/// [`compile_training`]; with `eval`, only `forward_train`, with batchnorm on the running
/// statistics and no dropout (an evaluation pass that still saves the spikes the driver
/// counts).
pub fn compile_training_with(
    g: &Graph,
    opts: &GpuOptions,
    eval: bool,
) -> Result<GpuTrainingArtifact, LowerError> {
    let lower_opts = LowerOptions {
        eval,
        ..LowerOptions::with_batch(opts.batch)
    };
    let fsig = forward_train_signature(g, &lower_opts)?;
    let mut functions = vec![(forward_train_symbol(g), train_arg_specs(&fsig))];
    let with_optimizer = !eval && has_optimizer(g);
    if !eval {
        let bsig = backward_signature(g, &lower_opts)?;
        functions.push((backward_symbol(g), train_arg_specs(&bsig)));
    }
    if with_optimizer {
        functions.push((
            optimizer_symbol(g),
            train_arg_specs(&optimizer_signature(g)),
        ));
    }
    let (ptx, manifests, timings) = compile_functions(g, opts, &functions, |context| {
        let module = lower_training_module_with(context, &[g], &lower_opts, LoopForm::FlatGemm)?;
        if with_optimizer {
            lower_optimizer(context, &module, g)?;
        }
        Ok(module)
    })?;
    // Every manifest names the training PTX, which sits beside the forward's `<model>.ptx`.
    let mut manifests = manifests.into_iter().map(|mut m| {
        m.ptx = format!("{}.train.ptx", g.name);
        m
    });
    let forward_train = manifests
        .next()
        .ok_or_else(|| LowerError::new("internal: no forward_train manifest"))?;
    let backward = if eval { None } else { manifests.next() };
    let optimizer = if with_optimizer {
        manifests.next()
    } else {
        None
    };
    Ok(GpuTrainingArtifact {
        model: g.name.clone(),
        ptx,
        forward_train,
        backward,
        optimizer,
        timings,
    })
}

/// A manifest's arguments from a signature's (name, role, shape) triples.
fn arg_specs<'a>(sig: impl Iterator<Item = (&'a str, &'a str, &'a [usize])>) -> Vec<ArgSpec> {
    sig.map(|(name, role, shape)| ArgSpec {
        name: name.into(),
        role: role.into(),
        shape: shape.to_vec(),
    })
    .collect()
}

fn train_arg_specs(sig: &[TrainArg]) -> Vec<ArgSpec> {
    arg_specs(
        sig.iter()
            .map(|a| (a.name.as_str(), a.role.as_str(), a.shape.as_slice())),
    )
}

/// The shared pipeline: `lower` builds a module of flat-form functions; every host function
/// is mapped to kernels, all kernels go into one PTX module, and each of `functions`
/// (symbol, arguments) gets a launch manifest, in that order.
fn compile_functions(
    g: &Graph,
    opts: &GpuOptions,
    functions: &[(String, Vec<ArgSpec>)],
    lower: impl for<'a> FnOnce(&'a Context) -> Result<Module<'a>, LowerError>,
) -> Result<(String, Vec<LaunchManifest>, GpuTimings), LowerError> {
    if !CHIPS.contains(&opts.chip.as_str()) {
        return Err(LowerError::new(format!(
            "unsupported GPU chip `{}` (supported: {})",
            opts.chip,
            CHIPS.join(", ")
        )));
    }
    let context = new_context();
    let mut timings = GpuTimings::default();
    let start = Instant::now();
    let (lowered, messages) = with_diagnostics(&context, || lower(&context));
    let mut module = lowered.map_err(|e| {
        if messages.is_empty() {
            e
        } else {
            LowerError::new(format!("{}:\n{}", e.message, messages.join("\n")))
        }
    })?;
    verify(&context, &module)?;
    timings.lower = start.elapsed();

    let start = Instant::now();
    run_pipeline(&context, &mut module, &parallel_pipeline())?;
    check_host_ops(&module, &["gpu.launch_func"])?;
    merge_gpu_modules(&context, &module, &format!("{}_kernels", g.name))?;
    verify(&context, &module)?;
    timings.to_gpu = start.elapsed();

    let start = Instant::now();
    run_pipeline(&context, &mut module, &nvvm_pipeline(&opts.chip))?;
    define_libdevice_calls(&context, &module)?;
    run_pipeline(&context, &mut module, BINARY_PIPELINE)?;
    let ptx = binary_ptx(&module)?;
    timings.to_ptx = start.elapsed();

    let mut manifests = Vec::with_capacity(functions.len());
    for (symbol, args) in functions {
        let manifest = extract_manifest(g, opts, &module, symbol, args.clone())?;
        for k in &manifest.kernels {
            if !ptx.contains(&format!(".entry {}(", k.name)) {
                return Err(LowerError::new(format!(
                    "kernel `{}` is launched but not in the PTX",
                    k.name
                )));
            }
        }
        manifests.push(manifest);
    }
    Ok((ptx, manifests, timings))
}

fn op_name(op: &OperationRef) -> String {
    op.name()
        .as_string_ref()
        .as_str()
        .unwrap_or("<non-utf8 op name>")
        .to_string()
}

/// Ops of the module's top-level block.
fn top_level<'c, 'a>(module: &'a Module<'c>) -> Vec<OperationRef<'c, 'a>> {
    let mut ops = Vec::new();
    let mut op = module.body().first_operation();
    while let Some(o) = op {
        op = o.next_in_block();
        ops.push(o);
    }
    ops
}

/// Ops of an op's first block (region 0).
fn body_ops<'c, 'a>(op: &OperationRef<'c, 'a>) -> Vec<OperationRef<'c, 'a>> {
    let mut ops = Vec::new();
    let Some(block) = op.region(0).ok().and_then(|r| r.first_block()) else {
        return ops;
    };
    let mut next = block.first_operation();
    while let Some(o) = next {
        next = o.next_in_block();
        ops.push(o);
    }
    ops
}

/// The host program may only allocate, view, free, launch and call the runtime's GEMM
/// (`snn_gemm_f32` on buffer addresses): anything else (an `scf.parallel` the conversion
/// refused, a load) would need the host to touch device memory.
fn check_host_ops(module: &Module, launch_ops: &[&str]) -> Result<(), LowerError> {
    const HOST: &[&str] = &[
        "arith.constant",
        "memref.alloc",
        "memref.dealloc",
        "memref.collapse_shape",
        "memref.extract_aligned_pointer_as_index",
        "func.call",
        "func.return",
    ];
    for f in top_level(module) {
        if op_name(&f) != "func.func" {
            continue;
        }
        for op in body_ops(&f) {
            let name = op_name(&op);
            if !HOST.contains(&name.as_str()) && !launch_ops.contains(&name.as_str()) {
                return Err(LowerError::new(format!(
                    "`{name}` at {} was not mapped to a GPU kernel",
                    op.location()
                )));
            }
        }
    }
    Ok(())
}

/// Moves every outlined kernel into the first `gpu.module` (renamed `name`) so that the model
/// is one PTX module: one `cuModuleLoadData`, one file. Outlining gives every module's kernel
/// the same name, so each kernel takes its (unique) module's name.
fn merge_gpu_modules(context: &Context, module: &Module, name: &str) -> Result<(), LowerError> {
    let gpu_modules: Vec<(String, MlirOperation)> = top_level(module)
        .into_iter()
        .filter(|o| op_name(o) == "gpu.module")
        .map(|o| (symbol_name(&o), o.to_raw()))
        .collect();
    let Some(((_, first), rest)) = gpu_modules.split_first() else {
        return Err(LowerError::new("no GPU kernel was generated"));
    };
    let first = *first;
    // (module, kernel) as launches spell it -> the kernel's name in the merged module.
    let mut renamed: HashMap<(String, String), String> = HashMap::new();
    for (module_name, m) in &gpu_modules {
        // SAFETY: a live gpu.module of `module`.
        let op = unsafe { OperationRef::from_raw(*m) };
        let funcs: Vec<_> = body_ops(&op)
            .into_iter()
            .filter(|f| op_name(f) == "gpu.func")
            .collect();
        let single = funcs.len() == 1;
        for f in funcs {
            let old = symbol_name(&f);
            let new = if single {
                module_name.clone()
            } else {
                format!("{module_name}_{old}")
            };
            set_attr(context, f.to_raw(), "sym_name", &format!("\"{new}\""))?;
            renamed.insert((module_name.clone(), old), new);
        }
    }
    // SAFETY: raw handles of live ops of `module`; each moved op is detached before being
    // appended, and each emptied gpu.module is detached before being destroyed.
    unsafe {
        let first_block =
            mlir_sys::mlirRegionGetFirstBlock(mlir_sys::mlirOperationGetRegion(first, 0));
        for (_, m) in rest {
            let block = mlir_sys::mlirRegionGetFirstBlock(mlir_sys::mlirOperationGetRegion(*m, 0));
            let mut op = mlir_sys::mlirBlockGetFirstOperation(block);
            while !op.ptr.is_null() {
                let next = mlir_sys::mlirOperationGetNextInBlock(op);
                mlir_sys::mlirOperationRemoveFromParent(op);
                mlir_sys::mlirBlockAppendOwnedOperation(first_block, op);
                op = next;
            }
            mlir_sys::mlirOperationRemoveFromParent(*m);
            mlir_sys::mlirOperationDestroy(*m);
        }
    }
    set_attr(context, first, "sym_name", &format!("\"{name}\""))?;
    for f in top_level(module) {
        if op_name(&f) != "func.func" {
            continue;
        }
        for op in body_ops(&f) {
            if op_name(&op) != "gpu.launch_func" {
                continue;
            }
            let (root, leaf) = kernel_ref(&op)?;
            let new = renamed.get(&(root.clone(), leaf.clone())).ok_or_else(|| {
                LowerError::new(format!(
                    "internal: launch of unknown kernel @{root}::@{leaf}"
                ))
            })?;
            set_attr(context, op.to_raw(), "kernel", &format!("@{name}::@{new}"))?;
        }
    }
    Ok(())
}

/// Gives every `__nv_*` declaration in the gpu.module a body from [`LIBDEVICE_SUBSTITUTES`].
fn define_libdevice_calls(context: &Context, module: &Module) -> Result<(), LowerError> {
    for m in top_level(module) {
        if op_name(&m) != "gpu.module" {
            continue;
        }
        let block = m
            .region(0)
            .ok()
            .and_then(|r| r.first_block())
            .ok_or_else(|| LowerError::new("internal: empty gpu.module"))?
            .to_raw();
        for f in body_ops(&m) {
            let name = symbol_name(&f);
            if op_name(&f) != "llvm.func" || !name.starts_with("__nv_") {
                continue;
            }
            let declared = f.region(0).ok().and_then(|r| r.first_block()).is_none();
            if !declared {
                continue;
            }
            let Some((_, body)) = LIBDEVICE_SUBSTITUTES.iter().find(|(n, _)| *n == name) else {
                let op = name.trim_start_matches("__nv_").trim_end_matches('f');
                return Err(LowerError::new(format!(
                    "`{op}` has no GPU implementation without libdevice (available: {})",
                    LIBDEVICE_SUBSTITUTES
                        .iter()
                        .map(|(n, _)| n.trim_start_matches("__nv_").trim_end_matches('f'))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            let parsed = Module::parse(context, &format!("module {{\n{body}\n}}"))
                .ok_or_else(|| LowerError::new(format!("internal: {name} does not parse")))?;
            let def = parsed
                .body()
                .first_operation()
                .ok_or_else(|| LowerError::new(format!("internal: {name} is empty")))?
                .to_raw();
            // SAFETY: `def` is detached from the parsed module before `block` takes it; the
            // declaration is detached from the live gpu.module before being destroyed.
            unsafe {
                mlir_sys::mlirOperationRemoveFromParent(def);
                mlir_sys::mlirBlockAppendOwnedOperation(block, def);
                let decl = f.to_raw();
                mlir_sys::mlirOperationRemoveFromParent(decl);
                mlir_sys::mlirOperationDestroy(decl);
            }
        }
    }
    Ok(())
}

/// Sets attribute `attr` of a live op from its textual form.
fn set_attr(
    context: &Context,
    op: MlirOperation,
    attr: &str,
    text: &str,
) -> Result<(), LowerError> {
    let value = Attribute::parse(context, text)
        .ok_or_else(|| LowerError::new(format!("internal: cannot parse attribute {text}")))?;
    let attr =
        std::ffi::CString::new(attr).map_err(|_| LowerError::new("internal: attribute name"))?;
    // SAFETY: `op` is a live op; the name is NUL-terminated and copied by MLIR.
    unsafe {
        mlir_sys::mlirOperationSetAttributeByName(
            op,
            mlir_sys::mlirStringRefCreateFromCString(attr.as_ptr()),
            value.to_raw(),
        );
    }
    Ok(())
}

/// An op's `sym_name`, unquoted.
fn symbol_name(op: &OperationRef) -> String {
    op.attribute("sym_name")
        .map(|a| a.to_string().trim_matches('"').to_string())
        .unwrap_or_default()
}

/// `gpu.launch_func`'s `@module::@kernel`, as (module, kernel).
fn kernel_ref(op: &OperationRef) -> Result<(String, String), LowerError> {
    let attr = op
        .attribute("kernel")
        .map_err(|_| LowerError::new("internal: gpu.launch_func without a kernel"))?;
    let text = attr.to_string();
    let clean = |s: &str| s.trim_start_matches('@').trim_matches('"').to_string();
    match text.split_once("::") {
        Some((root, leaf)) => Ok((clean(root), clean(leaf))),
        None => Err(LowerError::new(format!(
            "internal: kernel reference {text}"
        ))),
    }
}

/// The PTX text of the single `gpu.binary` the pipeline produced.
fn binary_ptx(module: &Module) -> Result<String, LowerError> {
    let binaries: Vec<_> = top_level(module)
        .into_iter()
        .filter(|o| op_name(o) == "gpu.binary")
        .collect();
    let [binary] = binaries.as_slice() else {
        return Err(LowerError::new(format!(
            "expected one gpu.binary, found {}",
            binaries.len()
        )));
    };
    let objects = binary
        .attribute("objects")
        .ok()
        .and_then(|a| ArrayAttribute::try_from(a).ok())
        .ok_or_else(|| LowerError::new("gpu.binary without objects"))?;
    let object = objects
        .element(0)
        .map_err(|_| LowerError::new("gpu.binary with no object"))?;
    // SAFETY: `object` is a #gpu.object attribute (the only kind `objects` holds); the
    // returned string points into the attribute's storage, which the context keeps alive.
    let text = unsafe {
        let s = mlir_sys::mlirGPUObjectAttrGetObject(object.to_raw());
        std::slice::from_raw_parts(s.data.cast::<u8>(), s.length)
    };
    String::from_utf8(text.to_vec()).map_err(|_| LowerError::new("the PTX is not UTF-8"))
}

fn memref_shape(value: Value) -> Result<Vec<usize>, LowerError> {
    let ty = MemRefType::try_from(value.r#type())
        .map_err(|_| LowerError::new(format!("expected a memref, found {}", value.r#type())))?;
    (0..ty.rank())
        .map(|i| match ty.dim_size(i) {
            Ok(DimSize::Static(n)) => Ok(n as usize),
            _ => Err(LowerError::new(format!(
                "dynamic memref {}",
                value.r#type()
            ))),
        })
        .collect()
}

fn key(v: Value) -> usize {
    v.to_raw().ptr as usize
}

/// A host call of `snn_gemm_f32(a, b, c, ints..)` as a manifest step: the three operands
/// must be buffer addresses and the integers constants.
fn gemm_step(
    op: &OperationRef,
    addresses: &HashMap<usize, usize>,
    ints: &HashMap<usize, i64>,
) -> Result<Step, LowerError> {
    let callee = op
        .attribute("callee")
        .map(|a| a.to_string())
        .unwrap_or_default();
    if callee != "@snn_gemm_f32" || op.operand_count() != 3 + Gemm::ABI_INTS {
        return Err(LowerError::new(format!(
            "unexpected host call {callee} with {} operands",
            op.operand_count()
        )));
    }
    let operand = |i: usize| {
        op.operand(i)
            .map(|v| key(v))
            .map_err(|_| LowerError::new("gemm operand"))
    };
    let buffer = |i: usize| -> Result<usize, LowerError> {
        addresses
            .get(&operand(i)?)
            .copied()
            .ok_or_else(|| LowerError::new("a GEMM operand is not a buffer address"))
    };
    let mut abi = [0i64; Gemm::ABI_INTS];
    for (j, v) in abi.iter_mut().enumerate() {
        *v = *ints
            .get(&operand(3 + j)?)
            .ok_or_else(|| LowerError::new("a GEMM size is not a constant"))?;
    }
    Ok(Step::Gemm {
        a: buffer(0)?,
        b: buffer(1)?,
        c: buffer(2)?,
        gemm: Gemm::from_abi(abi).map_err(LowerError::new)?,
    })
}

/// Reads the host function back into a manifest: arguments and allocations become buffers,
/// views point at their source, and each `gpu.launch_func` becomes a launch with constant
/// grid/block sizes and buffer arguments.
fn extract_manifest(
    g: &Graph,
    opts: &GpuOptions,
    module: &Module,
    symbol: &str,
    args: Vec<ArgSpec>,
) -> Result<LaunchManifest, LowerError> {
    let func = top_level(module)
        .into_iter()
        .find(|o| {
            op_name(o) == "func.func"
                && o.attribute("sym_name")
                    .is_ok_and(|a| a.to_string() == format!("\"{symbol}\""))
        })
        .ok_or_else(|| LowerError::new(format!("no @{symbol} after the GPU pipeline")))?;
    let entry = func
        .region(0)
        .ok()
        .and_then(|r| r.first_block())
        .ok_or_else(|| LowerError::new("forward function without a body"))?;
    let mut buffers: Vec<BufferSpec> = Vec::new();
    let mut ids: HashMap<usize, usize> = HashMap::new();
    for i in 0..entry.argument_count() {
        let arg = entry
            .argument(i)
            .map_err(|_| LowerError::new("internal: argument count"))?;
        let shape = memref_shape(arg.into())?;
        ids.insert(key(arg.into()), buffers.len());
        buffers.push(BufferSpec {
            id: buffers.len(),
            shape,
            kind: BufferKind::Arg { arg: i },
        });
    }
    let mut ints: HashMap<usize, i64> = HashMap::new();
    // `index` addresses of buffers (the GEMM's operands) -> buffer id.
    let mut addresses: HashMap<usize, usize> = HashMap::new();
    let mut kernels: Vec<KernelSpec> = Vec::new();
    let mut steps = Vec::new();
    let lookup = |ids: &HashMap<usize, usize>, v: Value| {
        ids.get(&key(v)).copied().ok_or_else(|| {
            LowerError::new(format!(
                "a kernel argument of type {} is not a buffer",
                v.r#type()
            ))
        })
    };
    for op in body_ops(&func) {
        match op_name(&op).as_str() {
            "arith.constant" => {
                if let Some(v) = op
                    .attribute("value")
                    .ok()
                    .and_then(|a| IntegerAttribute::try_from(a).ok())
                {
                    let r = op
                        .result(0)
                        .map_err(|_| LowerError::new("constant result"))?;
                    ints.insert(key(r.into()), v.value());
                }
            }
            "memref.alloc" => {
                let r: Value = op
                    .result(0)
                    .map_err(|_| LowerError::new("alloc result"))?
                    .into();
                let id = buffers.len();
                buffers.push(BufferSpec {
                    id,
                    shape: memref_shape(r)?,
                    kind: BufferKind::Temp,
                });
                ids.insert(key(r), id);
                steps.push(Step::Alloc { buffer: id });
            }
            "memref.dealloc" => {
                let v = op
                    .operand(0)
                    .map_err(|_| LowerError::new("dealloc operand"))?;
                steps.push(Step::Free {
                    buffer: lookup(&ids, v)?,
                });
            }
            "memref.collapse_shape" => {
                let src = op.operand(0).map_err(|_| LowerError::new("view source"))?;
                let r: Value = op
                    .result(0)
                    .map_err(|_| LowerError::new("view result"))?
                    .into();
                let id = buffers.len();
                buffers.push(BufferSpec {
                    id,
                    shape: memref_shape(r)?,
                    kind: BufferKind::View {
                        of: lookup(&ids, src)?,
                    },
                });
                ids.insert(key(r), id);
            }
            "gpu.launch_func" => {
                let seg = op
                    .attribute("operandSegmentSizes")
                    .ok()
                    .and_then(|a| DenseI32ArrayAttribute::try_from(a).ok())
                    .ok_or_else(|| LowerError::new("gpu.launch_func without segment sizes"))?;
                let seg: Vec<usize> = (0..seg.len())
                    .map(|i| seg.element(i).unwrap_or(0).max(0) as usize)
                    .collect();
                // [async deps, grid x/y/z, block x/y/z, cluster x/y/z, dyn shared mem,
                //  kernel operands, async object]
                let [deps, gx, gy, gz, bx, by, bz, cx, cy, cz, shm, n_args, ..] = seg[..] else {
                    return Err(LowerError::new(format!(
                        "unexpected gpu.launch_func operand segments {seg:?}"
                    )));
                };
                if deps != 0 || cx + cy + cz != 0 || shm != 0 || [gx, gy, gz, bx, by, bz] != [1; 6]
                {
                    return Err(LowerError::new(format!(
                        "unsupported gpu.launch_func form {seg:?}"
                    )));
                }
                let dim = |i: usize| -> Result<u32, LowerError> {
                    let v = op
                        .operand(i)
                        .map_err(|_| LowerError::new("launch operand"))?;
                    ints.get(&key(v))
                        .and_then(|&n| u32::try_from(n).ok())
                        .ok_or_else(|| LowerError::new("a launch dimension is not a constant"))
                };
                let grid = [dim(0)?, dim(1)?, dim(2)?];
                let block = [dim(3)?, dim(4)?, dim(5)?];
                let mut args = Vec::with_capacity(n_args);
                for i in 6..6 + n_args {
                    let v = op
                        .operand(i)
                        .map_err(|_| LowerError::new("launch operand"))?;
                    args.push(LaunchArg {
                        buffer: lookup(&ids, v)?,
                        shape: memref_shape(v)?,
                    });
                }
                let (_, kernel) = kernel_ref(&op)?;
                if !kernels.iter().any(|k| k.name == kernel) {
                    kernels.push(KernelSpec {
                        name: kernel.clone(),
                        params: n_args,
                    });
                }
                steps.push(Step::Launch {
                    kernel,
                    grid,
                    block,
                    args,
                });
            }
            "memref.extract_aligned_pointer_as_index" => {
                let src = op
                    .operand(0)
                    .map_err(|_| LowerError::new("pointer source"))?;
                let r = op
                    .result(0)
                    .map_err(|_| LowerError::new("pointer result"))?;
                addresses.insert(key(r.into()), lookup(&ids, src)?);
            }
            "func.call" => steps.push(gemm_step(&op, &addresses, &ints)?),
            "func.return" => {}
            other => {
                return Err(LowerError::new(format!(
                    "unexpected host op `{other}` after the GPU pipeline"
                )));
            }
        }
    }
    let manifest = LaunchManifest {
        format: FORMAT.into(),
        model: g.name.clone(),
        chip: opts.chip.clone(),
        batch: opts.batch,
        ptx: format!("{}.ptx", g.name),
        args,
        buffers,
        kernels,
        steps,
    };
    manifest.check().map_err(LowerError::new)?;
    Ok(manifest)
}
