//! Lowering of a graph's forward pass to MLIR (func/arith/math/scf/memref) with melior: one
//! `@<model>_forward` function per model over static memrefs, one explicit loop nest per op.

use crate::ir::graph::{BinaryOp, Graph, Node, Op, ParamRole, PoolKind, ReduceKind, ScanEmit};
use crate::ir::graph::{UnaryOp, ValueId};
use crate::ir::scalar::{NeuronProgram, Scalar, ScalarBinary, ScalarUnary, Target, Var};
use crate::ir::types::{Axis, Elem, TensorType};
use melior::{
    Context,
    dialect::func,
    ir::{
        Attribute, Block, BlockLike, Identifier, Location, Module, Region, RegionLike, Type, Value,
        ValueLike,
        attribute::{
            ArrayAttribute, DenseI32ArrayAttribute, DenseI64ArrayAttribute, DictionaryAttribute,
            FloatAttribute, IntegerAttribute, StringAttribute, TypeAttribute,
        },
        operation::OperationBuilder,
        r#type::{FunctionType, IntegerType, MemRefType, TypeLike},
    },
};
use snn_runtime::gpu::manifest::Gemm;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// The backward program's lowering: a child module so that it reuses this file's builders.
#[path = "gemm.rs"]
mod gemm;
#[path = "grad.rs"]
pub mod grad;

/// Every SSA value we build lives as long as the function under construction, which lives as
/// long as the context: melior lets block results take the context's lifetime, so we use one.
type V<'c> = Value<'c, 'c>;

/// Parameters of the lowering that the graph IR leaves open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LowerOptions {
    /// Size of the batch axis `B` (dynamic in the IR, static in MLIR).
    pub batch: usize,
    /// Inference semantics: batchnorm normalises with the running statistics and leaves them
    /// unchanged (PyTorch's `eval()`). Otherwise it uses the batch's statistics and updates
    /// the running ones, as in training. Dropout is the identity in `@<model>_forward`; in
    /// `_forward_train` it applies the caller's masks unless `eval`.
    pub eval: bool,
    /// Fill every intermediate gradient buffer of `_backward` with NaN when it is allocated.
    /// Those buffers are not zeroed (the first contribution stores, or zeroes them first;
    /// see `grad`); with this set, a contribution that wrongly assumes zeros shows in the
    /// gradient tests instead of reading whatever memory was there.
    pub poison_gradients: bool,
}

impl LowerOptions {
    /// Training semantics (batch statistics) at batch size `batch`.
    pub fn with_batch(batch: usize) -> Self {
        LowerOptions {
            batch,
            eval: false,
            poison_gradients: false,
        }
    }
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions::with_batch(1)
    }
}

/// Loads the element(s) of an operand at an index: `(block, index, vector)`.
type ElemLoad<'a, 'c> = dyn Fn(&Block<'c>, &[V<'c>], bool) -> V<'c> + 'a;
/// [`Fx::split_sums`]'s terms: `(block, output index, reduced index)` to the values to add.
pub(super) type SumTerms<'a, 'c> = dyn Fn(&Block<'c>, &[V<'c>], &[V<'c>]) -> Vec<V<'c>> + 'a;
/// [`Fx::split_sums`]'s finish: `(block, output index, sums)`.
pub(super) type SumFinish<'a, 'c> = dyn Fn(&Block<'c>, &[V<'c>], &[V<'c>]) + 'a;
/// [`Fx::stream_reduce`]'s initialisation and finish: `(block, index, vector)`.
pub(super) type RowStep<'a, 'c> = dyn Fn(&Block<'c>, &[V<'c>], bool) + 'a;
/// [`Fx::stream_reduce`]'s accumulation: `(block, index, reduced index, vector)`.
pub(super) type StreamStep<'a, 'c> = dyn Fn(&Block<'c>, &[V<'c>], &[V<'c>], bool) + 'a;
/// [`Fx::split_sums`]: this many threads fill a GPU (132 multiprocessors of 2048 threads,
/// a few waves); outputs times partial sums stop growing here.
const SPLIT_ENOUGH_THREADS: i64 = 1 << 20;
/// [`Fx::split_sums`]: the most partial sums held per sum (64 MiB of f32).
const SPLIT_MAX_PARTIALS: i64 = 1 << 24;
/// [`Fx::split_sums`]: the fewest terms one partial sum adds.
const SPLIT_MIN_TERMS: i64 = 2;
/// Threads of a GPU warp: a split's contiguous axis is cut into rows this long.
const WARP: i64 = 32;
/// The argmax reduction's split ([`Fx::split_axes`]) has one combining stage: each partial
/// adds at least this many terms, and the split stops once the combining chain would be longer
/// than each partial's (beyond [`SPLIT_BALANCED_THREADS`] threads).
const SPLIT_ARGMAX_MIN_TERMS: i64 = 32;
const SPLIT_BALANCED_THREADS: i64 = 1 << 14;

/// How data-parallel loop nests are emitted. The CPU path keeps one `scf.parallel` dimension
/// per tensor axis; the GPU path wants a single flat dimension per kernel so that tiling and
/// `gpu-map-parallel-loops` give full 1-D thread blocks, and no host-side work between kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoopForm {
    /// One `scf.parallel` dimension per axis; nested parallel loops where natural (CPU).
    #[default]
    Nested,
    /// Every parallel nest is one 1-D `scf.parallel` over the element count, its indices
    /// recovered with div/rem; no nested parallel loops, no loads outside loops (GPU).
    Flat,
    /// [`LoopForm::Nested`], except that conv2d and dense layers become calls to the runtime's
    /// kernels of [`RUNTIME_KERNELS`] (`snn_runtime::kernels::ffi`, pointers passed as
    /// `index`): for the CPU JIT, which binds those symbols.
    Kernels,
    /// [`LoopForm::Flat`], except that conv2d and dense layers are matrix products: generated
    /// kernels rearrange their operands around calls of `snn_gemm_f32` (see `gemm.rs`), which
    /// the GPU backend turns into cuBLAS steps of the launch manifest.
    FlatGemm,
}

/// The runtime kernels [`LoopForm::Kernels`] calls: name and number of `index` arguments.
/// The `_spike_` variants take the same arguments; they are called for inputs typed `spike`
/// (binary), and choose between accumulate-only and GEMM at run time by the firing rate.
pub const RUNTIME_KERNELS: [(&str, usize); 10] = [
    ("snn_conv2d_f32", 17),
    ("snn_dense_f32", 8),
    ("snn_conv2d_backward_f32", 19),
    ("snn_conv2d_backward_dx_masked_f32", 16),
    ("snn_dense_backward_f32", 10),
    ("snn_conv2d_spike_f32", 17),
    ("snn_dense_spike_f32", 8),
    ("snn_conv2d_backward_spike_f32", 19),
    ("snn_dense_backward_spike_f32", 10),
    ("snn_gemm_f32", 13),
];

/// The kernel `dense` or `spike` (the input is binary spikes) names.
fn kernel_for(node_input: &TensorType, dense: &'static str, spike: &'static str) -> &'static str {
    if node_input.elem == Elem::Spike {
        spike
    } else {
        dense
    }
}

/// A loop-nest body: (block, induction variables, carried values) → the next carried values.
type CarryBody<'f, 'c> = dyn FnMut(&Block<'c>, &[V<'c>], &[V<'c>]) -> Vec<V<'c>> + 'f;

/// The values summed at an index: `(block, index, vector)`.
pub(super) type ElemTerms<'a, 'c> = dyn Fn(&Block<'c>, &[V<'c>], bool) -> Vec<V<'c>> + 'a;
/// [`Fx::by_planes`]'s fold: `(block, kept index, reduced index, acc, partials)` to the next
/// `acc`.
pub(super) type PlaneFold<'a, 'c> =
    dyn Fn(&Block<'c>, &[V<'c>], &[V<'c>], &[V<'c>], &[V<'c>]) -> Vec<V<'c>> + 'a;
/// A fold body: (block, induction variables, carried values, vector?) → the next carried
/// values (see `Fx::fold_nest`).
type FoldBody<'f, 'c> = dyn FnMut(&Block<'c>, &[V<'c>], &[V<'c>], bool) -> Vec<V<'c>> + 'f;

/// Lanes of the vectorised neuron scans (`vector<4xf32>`: Cranelift's 128-bit vectors).
const LANES: i64 = 4;
/// Independent vector partial results of a fold (see `Fx::fold_nest`).
const FOLD_COPIES: i64 = 4;
/// Independent vectors each scan loop iteration advances (separate dependency chains that the
/// out-of-order core overlaps): 4 × 4 = 16 neurons per iteration.
const SCAN_COPIES: i64 = 4;
/// Vectorised scans with the time loop outermost (states in buffers, every element per step)
/// instead of innermost (states in registers, T steps per group of elements).
const SCAN_TIME_OUTER: bool = true;

/// Why a graph could not be lowered (or the lowered module failed MLIR's checks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LowerError {
    pub message: String,
}

impl LowerError {
    pub fn new(message: impl Into<String>) -> Self {
        LowerError {
            message: message.into(),
        }
    }
}

impl fmt::Display for LowerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LowerError {}

/// What a forward-function argument is, for the manifest and the runtime that fills it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgRole {
    Input,
    Param,
    /// A parameter the forward writes (batchnorm running statistics).
    State,
    Output,
}

impl ArgRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ArgRole::Input => "input",
            ArgRole::Param => "param",
            ArgRole::State => "state",
            ArgRole::Output => "output",
        }
    }
}

/// One argument of `@<model>_forward`, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardArg {
    pub name: String,
    pub role: ArgRole,
    pub shape: Vec<usize>,
}

/// The symbol of a model's forward function.
pub fn forward_symbol(g: &Graph) -> String {
    format!("{}_forward", g.name)
}

/// The arguments of `@<model>_forward`: inputs, parameters, outputs (see the module docs).
pub fn forward_signature(g: &Graph, opts: &LowerOptions) -> Result<Vec<ForwardArg>, LowerError> {
    let mut args = Vec::new();
    for (id, node) in g.inputs() {
        let Op::Input { name, .. } = &node.op else {
            continue;
        };
        args.push(ForwardArg {
            name: name.clone(),
            role: ArgRole::Input,
            shape: shape_of(g.ty(id), opts.batch, &node.name)?,
        });
    }
    for p in &g.params {
        let role = match p.role {
            ParamRole::RunningMean | ParamRole::RunningVar => ArgRole::State,
            _ => ArgRole::Param,
        };
        args.push(ForwardArg {
            name: p.name.clone(),
            role,
            shape: p.shape.clone(),
        });
    }
    for out in &g.outputs {
        let node = g
            .nodes
            .get(out.0)
            .ok_or_else(|| LowerError::new(format!("output %{} is not a node", out.0)))?;
        args.push(ForwardArg {
            name: node.name.clone(),
            role: ArgRole::Output,
            shape: shape_of(&node.ty, opts.batch, &node.name)?,
        });
    }
    Ok(args)
}

/// Static sizes of a tensor with `B = batch`; refuses empty and absurdly large tensors.
fn shape_of(ty: &TensorType, batch: usize, name: &str) -> Result<Vec<usize>, LowerError> {
    let shape: Vec<usize> = ty
        .dims
        .iter()
        .map(|(a, s)| if *a == Axis::B { batch } else { *s })
        .collect();
    let mut total: u64 = 1;
    for &s in &shape {
        if s == 0 {
            return Err(LowerError::new(format!(
                "`{name}` has an empty axis ({}); static lowering needs every size >= 1 (is --batch 0?)",
                ty.shape_string()
            )));
        }
        total = total.saturating_mul(s as u64);
    }
    // Index arithmetic is 64-bit and buffers are malloc'ed: stay far from either limit.
    if total > (1u64 << 40) {
        return Err(LowerError::new(format!(
            "`{name}` would hold {total} elements at this batch size; too large to lower"
        )));
    }
    Ok(shape)
}

fn to_i64(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&s| s as i64).collect()
}

/// Lowers every graph into one module (one `@<model>_forward` each). Not verified here: see
/// [`super::pipeline`].
///
/// Calling convention (no results; the caller owns every buffer): each model input, then every
/// parameter in `Graph::params` order, then one buffer per model output (see
/// [`forward_signature`]). Buffers are static, row-major `memref<...xf32>` in the IR's axis
/// order with `B = opts.batch`; each argument carries `{snnc.name, snnc.role}`.
///
/// Semantics: batchnorm is the training-mode forward (batch statistics; the running statistics
/// are updated in place with momentum and the unbiased variance), or with
/// [`LowerOptions::eval`] the inference one (running statistics, unchanged); dropout is the
/// identity (its
/// inference behaviour: training masks need the runtime's RNG); `detach` is the identity in a
/// forward pass; `fire` is the branch-free `x >= 0 ? 1 : 0`; intermediates are
/// `memref.alloc`ed at their definition and freed after their last use.
pub fn lower_graphs<'c>(
    context: &'c Context,
    graphs: &[&Graph],
    opts: &LowerOptions,
) -> Result<Module<'c>, LowerError> {
    lower_graphs_with(context, graphs, opts, LoopForm::Nested)
}

/// [`lower_graphs`] with a choice of loop form (see [`LoopForm`]).
pub fn lower_graphs_with<'c>(
    context: &'c Context,
    graphs: &[&Graph],
    opts: &LowerOptions,
    form: LoopForm,
) -> Result<Module<'c>, LowerError> {
    if opts.batch == 0 {
        return Err(LowerError::new("the batch size must be at least 1"));
    }
    let module = Module::new(Location::unknown(context));
    let mut seen = std::collections::HashSet::new();
    let mut kernels = BTreeSet::new();
    for g in graphs {
        if !seen.insert(forward_symbol(g)) {
            return Err(LowerError::new(format!(
                "two models are named `{}`; their forward functions would clash",
                g.name
            )));
        }
        kernels.extend(lower_graph(context, &module, g, opts, form)?);
    }
    declare_kernels(context, &module, &kernels);
    Ok(module)
}

/// `func.func private @name(index, ...)` for each runtime kernel the module calls.
pub(crate) fn declare_kernels<'c>(
    context: &'c Context,
    module: &Module<'c>,
    used: &BTreeSet<&'static str>,
) {
    let index = Type::index(context);
    for (name, arity) in RUNTIME_KERNELS {
        if !used.contains(name) {
            continue;
        }
        let ty = FunctionType::new(context, &vec![index; arity], &[]);
        module.body().append_operation(func::func(
            context,
            StringAttribute::new(context, name),
            TypeAttribute::new(ty.into()),
            Region::new(),
            &[(
                Identifier::new(context, "sym_visibility"),
                StringAttribute::new(context, "private").into(),
            )],
            Location::unknown(context),
        ));
    }
}

fn lower_graph<'c>(
    context: &'c Context,
    module: &Module<'c>,
    g: &Graph,
    opts: &LowerOptions,
    form: LoopForm,
) -> Result<BTreeSet<&'static str>, LowerError> {
    let problems = crate::ir::verify::verify(g);
    if !problems.is_empty() {
        return Err(LowerError::new(format!(
            "model `{}` has an ill-formed graph:\n  {}",
            g.name,
            problems.join("\n  ")
        )));
    }
    let sig = forward_signature(g, opts)?;
    let f32 = Type::float32(context);
    let loc = Location::name(context, &forward_symbol(g), Location::unknown(context));
    let arg_types: Vec<Type<'c>> = sig
        .iter()
        .map(|a| MemRefType::new(f32, &to_i64(&a.shape), None, None).into())
        .collect();
    let entry = Block::new(&arg_types.iter().map(|t| (*t, loc)).collect::<Vec<_>>());
    let kernels;
    {
        let mut fx = Fx::new(context, &entry, loc);
        fx.set_form(form);
        let mut lowering = Lowering::new(fx, g, opts.batch)?;
        lowering.eval = opts.eval;
        lowering.run()?;
        kernels = lowering.fx.used_kernels.take();
        entry.append_operation(func::r#return(&[], loc));
    }
    let region = Region::new();
    region.append_block(entry);
    append_func(
        context,
        module,
        &forward_symbol(g),
        &arg_types,
        sig.iter().map(|a| (a.name.as_str(), a.role.as_str())),
        region,
        loc,
    );
    Ok(kernels)
}

/// Appends `func.func @symbol(args) -> ()` whose arguments carry `{snnc.name, snnc.role}`, the
/// labels the backends and manifests read.
pub(super) fn append_func<'c, 'a>(
    context: &'c Context,
    module: &Module<'c>,
    symbol: &str,
    arg_types: &[Type<'c>],
    names_roles: impl IntoIterator<Item = (&'a str, &'a str)>,
    region: Region<'c>,
    loc: Location<'c>,
) {
    let arg_attrs: Vec<Attribute<'c>> = names_roles
        .into_iter()
        .map(|(name, role)| {
            DictionaryAttribute::new(
                context,
                &[
                    (
                        Identifier::new(context, "snnc.name"),
                        StringAttribute::new(context, name).into(),
                    ),
                    (
                        Identifier::new(context, "snnc.role"),
                        StringAttribute::new(context, role).into(),
                    ),
                ],
            )
            .into()
        })
        .collect();
    module.body().append_operation(func::func(
        context,
        StringAttribute::new(context, symbol),
        TypeAttribute::new(FunctionType::new(context, arg_types, &[]).into()),
        region,
        &[(
            Identifier::new(context, "arg_attrs"),
            ArrayAttribute::new(context, &arg_attrs).into(),
        )],
        loc,
    ));
}

/// `arith.cmpf` predicates (MLIR's enum order).
mod fpred {
    pub const OEQ: i64 = 1;
    pub const OGT: i64 = 2;
    pub const OGE: i64 = 3;
    pub const OLT: i64 = 4;
    pub const OLE: i64 = 5;
    pub const ORD: i64 = 7;
    pub const UNE: i64 = 13;
    pub const UNO: i64 = 14;
}

/// `arith.cmpi` predicates (MLIR's enum order).
mod ipred {
    pub const SLT: i64 = 2;
    pub const SGE: i64 = 5;
}

/// Op builders for one function: constants are created once, at the top of the entry block, so
/// they dominate every loop nest and the emitted text stays readable.
struct Fx<'c, 'e> {
    ctx: &'c Context,
    entry: &'e Block<'c>,
    loc: Cell<Location<'c>>,
    f32: Type<'c>,
    index: Type<'c>,
    i1: Type<'c>,
    consts: RefCell<HashMap<(bool, u64), V<'c>>>,
    n_consts: Cell<usize>,
    /// [`LoopForm::Flat`]: `par` emits one flat dimension.
    flat: bool,
    /// [`LoopForm::Kernels`]: conv2d and dense call the runtime.
    kernels: bool,
    /// [`LoopForm::FlatGemm`]: conv2d and dense as `snn_gemm_f32` products.
    gemm: bool,
    /// The runtime kernels called so far (declared in the module afterwards).
    used_kernels: RefCell<BTreeSet<&'static str>>,
    /// `vector<4xf32>` splats of constants, by bit pattern.
    vconsts: RefCell<HashMap<u64, V<'c>>>,
}

impl<'c, 'e> Fx<'c, 'e> {
    /// Flat loops and runtime kernel calls as `form` asks.
    pub(super) fn set_form(&mut self, form: LoopForm) {
        self.flat = matches!(form, LoopForm::Flat | LoopForm::FlatGemm);
        self.kernels = form == LoopForm::Kernels;
        self.gemm = form == LoopForm::FlatGemm;
    }

    fn new(ctx: &'c Context, entry: &'e Block<'c>, loc: Location<'c>) -> Self {
        Fx {
            ctx,
            entry,
            loc: Cell::new(loc),
            f32: Type::float32(ctx),
            index: Type::index(ctx),
            i1: IntegerType::new(ctx, 1).into(),
            consts: RefCell::new(HashMap::new()),
            n_consts: Cell::new(0),
            flat: false,
            kernels: false,
            gemm: false,
            used_kernels: RefCell::new(BTreeSet::new()),
            vconsts: RefCell::new(HashMap::new()),
        }
    }

    fn vec_type(&self, elem: Type<'c>) -> Type<'c> {
        Type::vector(&[LANES as u64], elem)
    }

    /// `vector.broadcast` of a scalar, placed in `b`.
    fn splat(&self, b: &Block<'c>, x: V<'c>) -> V<'c> {
        self.val(b, "vector.broadcast", &[x], self.vec_type(x.r#type()), &[])
    }

    /// The f32 constant `v`, as a `vector<4xf32>` splat when `like` is a vector (hoisted to
    /// the top of the entry block with the scalar constants).
    fn cf_as(&self, v: f64, like: V<'c>) -> V<'c> {
        self.cf_w(v, like.r#type().is_vector())
    }

    /// The f32 constant `v`, splat to `vector<4xf32>` when `vector`.
    fn cf_w(&self, v: f64, vector: bool) -> V<'c> {
        let s = self.cf(v);
        if !vector {
            return s;
        }
        let key = u64::from((v as f32).to_bits());
        if let Some(c) = self.vconsts.borrow().get(&key) {
            return *c;
        }
        let op = self.build("vector.broadcast", &[s], &[self.vec_type(self.f32)], &[]);
        let n = self.n_consts.get();
        let c: V<'c> = self
            .entry
            .insert_operation(n, op)
            .result(0)
            .unwrap_or_else(|_| panic!("internal: broadcast without result"))
            .into();
        self.n_consts.set(n + 1);
        self.vconsts.borrow_mut().insert(key, c);
        c
    }

    /// The aligned base pointer of a memref, as an `index` (for runtime kernel calls).
    fn base_ptr(&self, mem: V<'c>) -> V<'c> {
        self.val(
            self.entry,
            "memref.extract_aligned_pointer_as_index",
            &[mem],
            self.index,
            &[],
        )
    }

    /// `func.call @name(args)` in the entry block (all arguments `index`), recorded for
    /// [`declare_kernels`].
    fn call_kernel(&self, name: &'static str, args: &[V<'c>]) {
        self.used_kernels.borrow_mut().insert(name);
        let callee = melior::ir::attribute::FlatSymbolRefAttribute::new(self.ctx, name);
        self.entry
            .append_operation(func::call(self.ctx, callee, args, &[], self.loc.get()));
    }

    fn build(
        &self,
        name: &str,
        operands: &[V<'c>],
        results: &[Type<'c>],
        attrs: &[(&str, Attribute<'c>)],
    ) -> melior::ir::Operation<'c> {
        let attrs: Vec<(Identifier<'c>, Attribute<'c>)> = attrs
            .iter()
            .map(|(k, v)| (Identifier::new(self.ctx, k), *v))
            .collect();
        OperationBuilder::new(name, self.loc.get())
            .add_operands(operands)
            .add_results(results)
            .add_attributes(&attrs)
            .build()
            .unwrap_or_else(|e| panic!("internal: cannot build `{name}`: {e}"))
    }

    /// Appends an op with one result to `b` and returns that result.
    fn val(
        &self,
        b: &Block<'c>,
        name: &str,
        operands: &[V<'c>],
        ty: Type<'c>,
        attrs: &[(&str, Attribute<'c>)],
    ) -> V<'c> {
        let op = b.append_operation(self.build(name, operands, &[ty], attrs));
        op.result(0)
            .unwrap_or_else(|_| panic!("internal: `{name}` has no result"))
            .into()
    }

    fn stmt(&self, b: &Block<'c>, name: &str, operands: &[V<'c>]) {
        b.append_operation(self.build(name, operands, &[], &[]));
    }

    fn constant(&self, key: (bool, u64), attr: Attribute<'c>, ty: Type<'c>) -> V<'c> {
        if let Some(v) = self.consts.borrow().get(&key) {
            return *v;
        }
        let op = self.build("arith.constant", &[], &[ty], &[("value", attr)]);
        let n = self.n_consts.get();
        let v: V<'c> = self
            .entry
            .insert_operation(n, op)
            .result(0)
            .unwrap_or_else(|_| panic!("internal: constant without result"))
            .into();
        self.n_consts.set(n + 1);
        self.consts.borrow_mut().insert(key, v);
        v
    }

    fn cidx(&self, v: i64) -> V<'c> {
        self.constant(
            (true, v as u64),
            IntegerAttribute::new(self.index, v).into(),
            self.index,
        )
    }

    fn cf(&self, v: f64) -> V<'c> {
        let v = v as f32;
        self.constant(
            (false, u64::from(v.to_bits())),
            FloatAttribute::new(self.ctx, self.f32, f64::from(v)).into(),
            self.f32,
        )
    }

    fn bin(&self, b: &Block<'c>, name: &str, x: V<'c>, y: V<'c>) -> V<'c> {
        self.val(b, name, &[x, y], x.r#type(), &[])
    }

    fn addf(&self, b: &Block<'c>, x: V<'c>, y: V<'c>) -> V<'c> {
        self.bin(b, "arith.addf", x, y)
    }
    fn subf(&self, b: &Block<'c>, x: V<'c>, y: V<'c>) -> V<'c> {
        self.bin(b, "arith.subf", x, y)
    }
    fn mulf(&self, b: &Block<'c>, x: V<'c>, y: V<'c>) -> V<'c> {
        self.bin(b, "arith.mulf", x, y)
    }
    fn divf(&self, b: &Block<'c>, x: V<'c>, y: V<'c>) -> V<'c> {
        self.bin(b, "arith.divf", x, y)
    }

    fn unary(&self, b: &Block<'c>, name: &str, x: V<'c>) -> V<'c> {
        self.val(b, name, &[x], x.r#type(), &[])
    }

    fn cmpf(&self, b: &Block<'c>, pred: i64, x: V<'c>, y: V<'c>) -> V<'c> {
        let attr = IntegerAttribute::new(IntegerType::new(self.ctx, 64).into(), pred).into();
        let ty = if x.r#type().is_vector() {
            self.vec_type(self.i1)
        } else {
            self.i1
        };
        self.val(b, "arith.cmpf", &[x, y], ty, &[("predicate", attr)])
    }

    fn cmpi(&self, b: &Block<'c>, pred: i64, x: V<'c>, y: V<'c>) -> V<'c> {
        let attr = IntegerAttribute::new(IntegerType::new(self.ctx, 64).into(), pred).into();
        self.val(b, "arith.cmpi", &[x, y], self.i1, &[("predicate", attr)])
    }

    fn select(&self, b: &Block<'c>, c: V<'c>, x: V<'c>, y: V<'c>) -> V<'c> {
        self.val(b, "arith.select", &[c, x, y], x.r#type(), &[])
    }

    /// `vector.shuffle` of two `vector<4xf32>`: lane `i` of the result is lane `mask[i]` of
    /// `x ++ y`.
    fn shuffle(&self, b: &Block<'c>, x: V<'c>, y: V<'c>, mask: [i64; 4]) -> V<'c> {
        self.val(
            b,
            "vector.shuffle",
            &[x, y],
            self.vec_type(self.f32),
            &[("mask", DenseI64ArrayAttribute::new(self.ctx, &mask).into())],
        )
    }

    /// Whether `v` replaces `best` as a running first maximum (scalars or vectors): it is
    /// greater, or a NaN over a number. A NaN beats any number and the earliest of equal
    /// values or of NaNs stays, as in the runtime kernels' `first_argmax`.
    fn first_max_wins(&self, b: &Block<'c>, v: V<'c>, best: V<'c>) -> V<'c> {
        let gt = self.cmpf(b, fpred::OGT, v, best);
        let v_nan = self.cmpf(b, fpred::UNO, v, v);
        let best_num = self.cmpf(b, fpred::ORD, best, best);
        let nan_wins = self.bin(b, "arith.andi", v_nan, best_num);
        self.bin(b, "arith.ori", gt, nan_wins)
    }

    /// An index as f32 (exact below 2^24): how argmax buffers hold indices.
    fn index_to_f32(&self, b: &Block<'c>, i: V<'c>) -> V<'c> {
        let i64t: Type<'c> = IntegerType::new(self.ctx, 64).into();
        let i = self.val(b, "arith.index_cast", &[i], i64t, &[]);
        self.val(b, "arith.sitofp", &[i], self.f32, &[])
    }

    /// The inverse of [`Self::index_to_f32`].
    fn f32_to_index(&self, b: &Block<'c>, f: V<'c>) -> V<'c> {
        let i64t: Type<'c> = IntegerType::new(self.ctx, 64).into();
        let i = self.val(b, "arith.fptosi", &[f], i64t, &[]);
        self.val(b, "arith.index_cast", &[i], self.index, &[])
    }

    /// 1.0 where the i1 `c` holds, else 0.0: how predicates and `fire` stay branch-free.
    fn bool_to_f32(&self, b: &Block<'c>, c: V<'c>) -> V<'c> {
        self.select(b, c, self.cf_as(1.0, c), self.cf_as(0.0, c))
    }

    fn sigmoid(&self, b: &Block<'c>, x: V<'c>) -> V<'c> {
        let neg = self.unary(b, "arith.negf", x);
        let e = self.unary(b, "math.exp", neg);
        let den = self.addf(b, self.cf_as(1.0, x), e);
        self.divf(b, self.cf_as(1.0, x), den)
    }

    /// `x * mul + y + add` on indices, omitting the trivial parts.
    /// `x[idx]` with `idx[pos] = i` for each tap, or 0 where a tap falls outside its axis
    /// (zero padding). No branches: out-of-range indices are clamped to 0 and the value masked.
    fn load_padded(
        &self,
        b: &Block<'c>,
        x: &Buf<'c>,
        idx: &mut [V<'c>],
        taps: [(usize, V<'c>); 2],
    ) -> V<'c> {
        let c0 = self.cidx(0);
        let mut inb: Option<V<'c>> = None;
        for (pos, i) in taps {
            let lo = self.cmpi(b, ipred::SGE, i, c0);
            let hi = self.cmpi(b, ipred::SLT, i, self.cidx(x.dims[pos]));
            let both = self.bin(b, "arith.andi", lo, hi);
            inb = Some(match inb {
                Some(prev) => self.bin(b, "arith.andi", prev, both),
                None => both,
            });
        }
        let Some(inb) = inb else {
            return self.load(b, x.mem, idx);
        };
        for (pos, i) in taps {
            idx[pos] = self.select(b, inb, i, c0);
        }
        let v = self.load(b, x.mem, idx);
        self.select(b, inb, v, self.cf(0.0))
    }

    fn ilin(&self, b: &Block<'c>, x: V<'c>, mul: i64, y: Option<V<'c>>, add: i64) -> V<'c> {
        let mut v = if mul == 1 {
            x
        } else {
            self.bin(b, "arith.muli", x, self.cidx(mul))
        };
        if let Some(y) = y {
            v = self.bin(b, "arith.addi", v, y);
        }
        if add != 0 {
            v = self.bin(b, "arith.addi", v, self.cidx(add));
        }
        v
    }

    fn load(&self, b: &Block<'c>, mem: V<'c>, idx: &[V<'c>]) -> V<'c> {
        let mut operands = vec![mem];
        operands.extend_from_slice(idx);
        self.val(b, "memref.load", &operands, self.f32, &[])
    }

    fn store(&self, b: &Block<'c>, v: V<'c>, mem: V<'c>, idx: &[V<'c>]) {
        let mut operands = vec![v, mem];
        operands.extend_from_slice(idx);
        self.stmt(b, "memref.store", &operands);
    }

    /// `vector.load` of 4 consecutive f32 along the last axis.
    fn vload(&self, b: &Block<'c>, mem: V<'c>, idx: &[V<'c>]) -> V<'c> {
        let mut operands = vec![mem];
        operands.extend_from_slice(idx);
        self.val(b, "vector.load", &operands, self.vec_type(self.f32), &[])
    }

    fn vstore(&self, b: &Block<'c>, v: V<'c>, mem: V<'c>, idx: &[V<'c>]) {
        let mut operands = vec![v, mem];
        operands.extend_from_slice(idx);
        self.stmt(b, "vector.store", &operands);
    }

    /// [`Self::vload`] when `vector`, else [`Self::load`].
    fn load_w(&self, b: &Block<'c>, mem: V<'c>, idx: &[V<'c>], vector: bool) -> V<'c> {
        if vector {
            self.vload(b, mem, idx)
        } else {
            self.load(b, mem, idx)
        }
    }

    /// [`Self::vstore`] when `vector`, else [`Self::store`].
    fn store_w(&self, b: &Block<'c>, v: V<'c>, mem: V<'c>, idx: &[V<'c>], vector: bool) {
        if vector {
            self.vstore(b, v, mem, idx);
        } else {
            self.store(b, v, mem, idx);
        }
    }

    fn memref_type(&self, dims: &[i64]) -> Type<'c> {
        MemRefType::new(self.f32, dims, None, None).into()
    }

    /// A new f32 buffer of shape `dims`, allocated in the entry block (the caller frees it).
    pub(super) fn alloc(&self, dims: &[i64]) -> V<'c> {
        self.val(
            self.entry,
            "memref.alloc",
            &[],
            self.memref_type(dims),
            &[(
                "operandSegmentSizes",
                DenseI32ArrayAttribute::new(self.ctx, &[0, 0]).into(),
            )],
        )
    }

    /// `n` sums over the nest `red` for every index `o` of `out`: `terms(block, o, r)` gives
    /// the `n` values at reduced index `r`, and `finish(block, o, sums)` consumes the totals.
    /// `inner`: the last reduced axis is the terms' contiguous one in memory (a sum over an
    /// image's pixels), rather than the last output axis (a sum over rows).
    ///
    /// In flat form a GPU runs one thread per output, so few outputs over many terms (batchnorm
    /// statistics per channel, bias and gate gradients) would leave the device idle, each
    /// thread adding up a long chain of loads. Below [`SPLIT_ENOUGH_THREADS`] outputs, reduced
    /// axes become parallel too (see [`Self::split_plan`]): one kernel writes partial sums into
    /// a temporary `[n, lead.., out.., trail..]`, and the partials are then reduced the same
    /// way (split again while they are many), the last stage finishing. Threads are ordered
    /// leading axes slowest and the trailing (contiguous) axis fastest, so a warp reads
    /// neighbouring elements: a warp-wide chain of strided single loads ran at a tenth of the
    /// memory bandwidth. The order of the additions changes, within f32 rounding.
    pub(super) fn split_sums(
        &self,
        out: &[i64],
        red: &[i64],
        n: usize,
        inner: bool,
        terms: &SumTerms<'_, 'c>,
        finish: &SumFinish<'_, 'c>,
    ) {
        self.split_fold(out, red, &vec![0.0; n], "arith.addf", inner, terms, finish);
    }

    /// How many leading and trailing axes of `red` [`Self::split_sums`] runs in parallel for
    /// `out_n` outputs ((0, 0): none; always outside the flat form). The trailing one is the
    /// last axis when it is contiguous (`inner`); leading axes are added while there are fewer
    /// than [`SPLIT_ENOUGH_THREADS`] threads, each partial adds at least [`SPLIT_MIN_TERMS`]
    /// terms and the temporary holds at most [`SPLIT_MAX_PARTIALS`] values per sum.
    fn split_plan(&self, out_n: i64, red: &[i64], inner: bool) -> (usize, usize) {
        let red_n: i64 = red.iter().product();
        if !self.flat || out_n >= SPLIT_ENOUGH_THREADS || red_n < 2 * SPLIT_MIN_TERMS {
            return (0, 0);
        }
        let (mut trail, mut parts) = (0, 1i64);
        if let (true, [_, .., last]) = (inner, red)
            && out_n * last <= SPLIT_MAX_PARTIALS
            && red_n / last >= SPLIT_MIN_TERMS
        {
            trail = 1;
            parts = *last;
        }
        let mut lead = 0;
        while lead + trail < red.len() && out_n * parts < SPLIT_ENOUGH_THREADS {
            let next = parts * red[lead];
            if out_n * next > SPLIT_MAX_PARTIALS || red_n / next < SPLIT_MIN_TERMS {
                break;
            }
            parts = next;
            lead += 1;
        }
        (lead, trail)
    }

    /// The argmax reduction's split: leading axes only, one combining stage (see
    /// [`SPLIT_ARGMAX_MIN_TERMS`]).
    fn split_axes(&self, out_n: i64, red: &[i64]) -> usize {
        let red_n: i64 = red.iter().product();
        let (mut lead, mut parts) = (0, 1i64);
        while self.flat && lead < red.len() && out_n * parts < SPLIT_ENOUGH_THREADS {
            let next = parts * red[lead];
            let terms = red_n / next;
            let unbalanced = next > terms && out_n * parts >= SPLIT_BALANCED_THREADS;
            if out_n * next > SPLIT_MAX_PARTIALS || terms < SPLIT_ARGMAX_MIN_TERMS || unbalanced {
                break;
            }
            parts = next;
            lead += 1;
        }
        lead
    }

    /// [`Self::split_sums`] for any associative and commutative `combine` (`arith.addf`,
    /// `arith.maximumf`) from `inits` (its identities).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn split_fold(
        &self,
        out: &[i64],
        red: &[i64],
        inits: &[f64],
        combine: &str,
        inner: bool,
        terms: &SumTerms<'_, 'c>,
        finish: &SumFinish<'_, 'c>,
    ) {
        let out_n: i64 = out.iter().product();
        // A long contiguous last axis (a flattened image) is split into rows of a warp's width,
        // so that the rows' index can be the fastest thread index.
        if let (true, true, Some(&last)) = (self.flat, inner, red.last())
            && last >= 2 * WARP
            && last % WARP == 0
            && out_n < SPLIT_ENOUGH_THREADS
        {
            let k = red.len() - 1;
            let mut rows = red[..k].to_vec();
            rows.extend([last / WARP, WARP]);
            let joined = |b: &Block<'c>, o: &[V<'c>], r: &[V<'c>]| {
                let mut r1 = r[..k].to_vec();
                r1.push(self.ilin(b, r[k], WARP, Some(r[k + 1]), 0));
                terms(b, o, &r1)
            };
            return self.split_fold(out, &rows, inits, combine, inner, &joined, finish);
        }
        let n = inits.len();
        let init_values: Vec<V<'c>> = inits.iter().map(|v| self.cf(*v)).collect();
        let fold = |b: &Block<'c>, acc: &[V<'c>], vals: Vec<V<'c>>| -> Vec<V<'c>> {
            acc.iter()
                .zip(vals)
                .map(|(a, v)| self.bin(b, combine, *a, v))
                .collect()
        };
        let (lead, trail) = self.split_plan(out_n, red, inner);
        if lead + trail == 0 {
            self.par(self.entry, out, |b, o| {
                let sums = self.carry_nest(b, red, &init_values, &[], &mut |b, r, acc| {
                    fold(b, acc, terms(b, o, r))
                });
                finish(b, o, &sums);
            });
            return;
        }
        let (outer, rest) = red.split_at(lead);
        let (middle, tail) = rest.split_at(rest.len() - trail);
        // Thread index and partials' layout: [lead.., out.., trail..].
        let mut dims = outer.to_vec();
        dims.extend_from_slice(out);
        dims.extend_from_slice(tail);
        let partials = self.partials(n, &dims);
        let at = |k: usize, idx: &[V<'c>]| [&[self.cidx(k as i64)][..], idx].concat();
        self.par(self.entry, &dims, |b, idx| {
            let (l, rest) = idx.split_at(lead);
            let (o, t) = rest.split_at(out.len());
            let sums = self.carry_nest(b, middle, &init_values, &[], &mut |b, r, acc| {
                fold(b, acc, terms(b, o, &[l, r, t].concat()))
            });
            for (k, v) in sums.iter().enumerate() {
                self.store(b, *v, partials, &at(k, idx));
            }
        });
        // The partials, reduced over their leading and trailing axes (split again if many).
        let mut red_next = outer.to_vec();
        red_next.extend_from_slice(tail);
        let load_partials = |b: &Block<'c>, o: &[V<'c>], r: &[V<'c>]| -> Vec<V<'c>> {
            let (l, t) = r.split_at(lead);
            let idx = [l, o, t].concat();
            (0..n)
                .map(|k| self.load(b, partials, &at(k, &idx)))
                .collect()
        };
        self.split_fold(
            out,
            &red_next,
            inits,
            combine,
            trail > 0,
            &load_partials,
            finish,
        );
        self.stmt(self.entry, "memref.dealloc", &[partials]);
    }

    /// Where a CPU reduction over the `reduced` axes of `dims` splits into planes for
    /// [`Self::by_planes`]: the last kept axis, when only reduced axes follow it and some
    /// reduced axis (of more than one index) precedes it (a channel's statistics over T, B,
    /// H, W; channel attention's pooling over T, H, W). Reducing such an output by itself
    /// reads one plane (the contiguous axes after the last kept one), skips the other
    /// outputs' planes and reads the next: about half the memory bandwidth of reading in
    /// order, measured on the gesture network's batchnorms.
    pub(super) fn plane_split(&self, dims: &[i64], reduced: &[bool]) -> Option<usize> {
        if self.flat {
            return None;
        }
        let last_kept = (0..dims.len()).rev().find(|&k| !reduced[k])?;
        let before = (0..last_kept).any(|k| reduced[k] && dims[k] > 1);
        (last_kept + 1 < dims.len() && before).then_some(last_kept)
    }

    /// A reduction in memory order (see [`Self::plane_split`], whose `last_kept` it takes):
    /// in parallel over the planes (indices of the axes up to `last_kept`), `plane(block,
    /// index)` gives `n` partial results of a plane, kept in a `[n, planes..]` buffer; then
    /// in parallel over the outputs (the kept axes' indices, in order), `fold(block, kept,
    /// r, acc, partials)` folds each of the output's planes (`r`: their reduced indices, in
    /// row-major order) into `acc` (from `inits`), and `finish(block, kept, acc)` consumes
    /// the result.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn by_planes(
        &self,
        dims: &[i64],
        reduced: &[bool],
        last_kept: usize,
        inits: &[V<'c>],
        plane: &dyn Fn(&Block<'c>, &[V<'c>]) -> Vec<V<'c>>,
        fold: &PlaneFold<'_, 'c>,
        finish: &SumFinish<'_, 'c>,
    ) {
        let n = inits.len();
        let planes = &dims[..=last_kept];
        let partials = self.partials(n, planes);
        let at = |k: usize, idx: &[V<'c>]| [&[self.cidx(k as i64)][..], idx].concat();
        self.par(self.entry, planes, |b, p| {
            for (k, v) in plane(b, p).iter().enumerate() {
                self.store(b, *v, partials, &at(k, p));
            }
        });
        let kept: Vec<i64> = (0..=last_kept)
            .filter(|&k| !reduced[k])
            .map(|k| dims[k])
            .collect();
        let outer: Vec<i64> = (0..=last_kept)
            .filter(|&k| reduced[k])
            .map(|k| dims[k])
            .collect();
        self.par(self.entry, &kept, |b, o| {
            let acc = self.carry_nest(b, &outer, inits, &[], &mut |b, r, acc| {
                let (mut ko, mut ro) = (o.iter(), r.iter());
                let p: Vec<V<'c>> = (0..=last_kept)
                    .filter_map(|k| if reduced[k] { ro.next() } else { ko.next() })
                    .copied()
                    .collect();
                let values: Vec<V<'c>> =
                    (0..n).map(|k| self.load(b, partials, &at(k, &p))).collect();
                fold(b, o, r, acc, &values)
            });
            finish(b, o, &acc);
        });
        self.stmt(self.entry, "memref.dealloc", &[partials]);
    }

    /// `n` sums per channel (axis `pc` of `dims`, followed by at least one more axis) in
    /// memory order ([`Self::by_planes`]): each plane's contiguous rest is summed in vectors.
    /// `terms(block, idx, vector)` gives the `n` values at `idx` (four lanes when `vector`);
    /// `finish(block, c, sums)` consumes channel `c`'s totals.
    pub(super) fn channel_sums(
        &self,
        dims: &[i64],
        pc: usize,
        n: usize,
        terms: &ElemTerms<'_, 'c>,
        finish: &dyn Fn(&Block<'c>, V<'c>, &[V<'c>]),
    ) {
        let reduced: Vec<bool> = (0..dims.len()).map(|k| k != pc).collect();
        let rest = &dims[pc + 1..];
        let zeros = vec![self.cf(0.0); n];
        self.by_planes(
            dims,
            &reduced,
            pc,
            &zeros,
            &|b, p| {
                self.sum_nest(b, rest, n, true, &mut |b, r, acc, vector| {
                    let idx = [p, r].concat();
                    acc.iter()
                        .zip(terms(b, &idx, vector))
                        .map(|(a, v)| self.addf(b, *a, v))
                        .collect()
                })
            },
            &|b, _, _, acc, values| {
                acc.iter()
                    .zip(values)
                    .map(|(a, v)| self.addf(b, *a, *v))
                    .collect()
            },
            &|b, c, sums| finish(b, c[0], sums),
        );
    }

    /// A `[n, dims...]` buffer of partial results: `n` per thread of a split reduction.
    fn partials(&self, n: usize, dims: &[i64]) -> V<'c> {
        self.alloc(&[&[n as i64][..], dims].concat())
    }

    /// `scf.parallel` over `[0, dims)`: iterations must write disjoint elements. In flat form
    /// one dimension over the element count, the row-major indices recovered with div/rem.
    fn par<R>(
        &self,
        b: &Block<'c>,
        dims: &[i64],
        body: impl FnOnce(&Block<'c>, &[V<'c>]) -> R,
    ) -> R {
        if !self.flat || dims.is_empty() {
            return self.par_nd(b, dims, body);
        }
        let total: i64 = dims.iter().product();
        self.par_nd(b, &[total], |blk, flat| {
            let mut ivs = vec![self.cidx(0); dims.len()];
            let mut rest = flat[0];
            for (k, &d) in dims.iter().enumerate().rev() {
                // Size-1 axes index 0; the outermost axis takes whatever remains.
                if d == 1 {
                    continue;
                }
                if k == 0 || dims[..k].iter().all(|&o| o == 1) {
                    ivs[k] = rest;
                    break;
                }
                ivs[k] = self.bin(blk, "arith.remui", rest, self.cidx(d));
                rest = self.bin(blk, "arith.divui", rest, self.cidx(d));
            }
            body(blk, &ivs)
        })
    }

    /// [`Self::par`] with the last axis in `vector<4xf32>` groups, then a scalar tail (plain
    /// `par` in flat form and for last axes shorter than a vector). `body(block, ivs, vector)`
    /// gets the first lane's indices; it loads and stores with [`Self::load_w`] /
    /// [`Self::store_w`] / [`Self::load_bcast`] and builds constants with [`Self::cf_as`], so the
    /// same body serves both parts. Elementwise passes were one scalar element per iteration
    /// (~1 ns each: 6.5 ms per pass over the LIF bench's 6.5 M values).
    fn par_vec(&self, b: &Block<'c>, dims: &[i64], body: impl Fn(&Block<'c>, &[V<'c>], bool)) {
        let Some(&width) = dims.last() else {
            return self.par(b, dims, |b, ivs| body(b, ivs, false));
        };
        if self.flat || width < LANES {
            return self.par(b, dims, |b, ivs| body(b, ivs, false));
        }
        let last = dims.len() - 1;
        let (groups, tail) = (width / LANES, width % LANES);
        for (count, lanes, start) in [(groups, LANES, 0), (tail, 1, groups * LANES)] {
            if count == 0 {
                continue;
            }
            let mut part = dims.to_vec();
            part[last] = count;
            self.par(b, &part, |b, ivs| {
                let mut ivs = ivs.to_vec();
                ivs[last] = self.ilin(b, ivs[last], lanes, None, start);
                body(b, &ivs, lanes > 1);
            });
        }
    }

    /// `mem` (of shape `src`) at the indices `ivs` of a `dst`-shaped loop, size-1 axes
    /// broadcast; a vector when `vector` (a size-1 last axis is loaded once and splat).
    fn load_bcast(
        &self,
        b: &Block<'c>,
        mem: V<'c>,
        src: &[i64],
        dst: &[i64],
        ivs: &[V<'c>],
        vector: bool,
    ) -> V<'c> {
        let idx = broadcast(self, src, dst, ivs);
        let last = src.len().saturating_sub(1);
        if vector && src.get(last) == Some(&1) && dst.get(last) != Some(&1) {
            let s = self.load(b, mem, &idx);
            self.splat(b, s)
        } else {
            self.load_w(b, mem, &idx, vector)
        }
    }

    fn par_nd<R>(
        &self,
        b: &Block<'c>,
        dims: &[i64],
        body: impl FnOnce(&Block<'c>, &[V<'c>]) -> R,
    ) -> R {
        if dims.is_empty() {
            return body(b, &[]);
        }
        let loc = self.loc.get();
        let blk = Block::new(&vec![(self.index, loc); dims.len()]);
        let ivs: Vec<V<'c>> = (0..dims.len()).map(|i| block_arg(&blk, i)).collect();
        let r = body(&blk, &ivs);
        blk.append_operation(self.build("scf.reduce", &[], &[], &[]));
        let region = Region::new();
        region.append_block(blk);
        let n = dims.len();
        let mut operands: Vec<V<'c>> = vec![self.cidx(0); n];
        operands.extend(dims.iter().map(|&d| self.cidx(d)));
        operands.extend(std::iter::repeat_n(self.cidx(1), n));
        let segments = DenseI32ArrayAttribute::new(self.ctx, &[n as i32, n as i32, n as i32, 0]);
        let op = OperationBuilder::new("scf.parallel", loc)
            .add_operands(&operands)
            .add_attributes(&[(
                Identifier::new(self.ctx, "operandSegmentSizes"),
                segments.into(),
            )])
            .add_regions([region])
            .build()
            .unwrap_or_else(|e| panic!("internal: cannot build scf.parallel: {e}"));
        b.append_operation(op);
        r
    }

    /// One `scf.for` over `[0, ub)` carrying `inits`; `body(block, iv, carried)` returns the
    /// values to yield, plus anything the caller wants back.
    fn for_carry<R>(
        &self,
        b: &Block<'c>,
        ub: i64,
        inits: &[V<'c>],
        body: impl FnOnce(&Block<'c>, V<'c>, &[V<'c>]) -> (Vec<V<'c>>, R),
    ) -> (Vec<V<'c>>, R) {
        let loc = self.loc.get();
        let mut args = vec![(self.index, loc)];
        args.extend(inits.iter().map(|v| (v.r#type(), loc)));
        let blk = Block::new(&args);
        let iv = block_arg(&blk, 0);
        let carried: Vec<V<'c>> = (1..=inits.len()).map(|i| block_arg(&blk, i)).collect();
        let (yields, r) = body(&blk, iv, &carried);
        blk.append_operation(self.build("scf.yield", &yields, &[], &[]));
        let region = Region::new();
        region.append_block(blk);
        let mut operands = vec![self.cidx(0), self.cidx(ub), self.cidx(1)];
        operands.extend_from_slice(inits);
        let types: Vec<Type<'c>> = inits.iter().map(|v| v.r#type()).collect();
        let op = OperationBuilder::new("scf.for", loc)
            .add_operands(&operands)
            .add_results(&types)
            .add_regions([region])
            .build()
            .unwrap_or_else(|e| panic!("internal: cannot build scf.for: {e}"));
        let op = b.append_operation(op);
        let results = (0..inits.len())
            .map(|i| {
                op.result(i)
                    .unwrap_or_else(|_| panic!("internal: scf.for result {i}"))
                    .into()
            })
            .collect();
        (results, r)
    }

    /// Nested `scf.for`s over `[0, dims)` carrying one accumulator; `body(block, ivs, acc)`
    /// returns the next accumulator. The dyn body keeps the recursion monomorphic.
    fn acc_nest(
        &self,
        b: &Block<'c>,
        dims: &[i64],
        init: V<'c>,
        body: &mut dyn FnMut(&Block<'c>, &[V<'c>], V<'c>) -> V<'c>,
    ) -> V<'c> {
        self.acc_nest_from(b, dims, &[], init, body)
    }

    fn acc_nest_from(
        &self,
        b: &Block<'c>,
        dims: &[i64],
        outer: &[V<'c>],
        init: V<'c>,
        body: &mut dyn FnMut(&Block<'c>, &[V<'c>], V<'c>) -> V<'c>,
    ) -> V<'c> {
        let Some((&first, rest)) = dims.split_first() else {
            return body(b, outer, init);
        };
        let (results, ()) = self.for_carry(b, first, &[init], |blk, iv, acc| {
            let mut ivs = outer.to_vec();
            ivs.push(iv);
            let next = self.acc_nest_from(blk, rest, &ivs, acc[0], body);
            (vec![next], ())
        });
        results[0]
    }

    /// Sequential loops over `dims` with the last axis in `vector<4xf32>` groups, then a
    /// scalar tail: `body(block, ivs, vector)` gets the first lane's indices (the sequential
    /// [`Self::par_vec`]).
    fn for_vec(&self, b: &Block<'c>, dims: &[i64], body: &dyn Fn(&Block<'c>, &[V<'c>], bool)) {
        let Some((&width, outer)) = dims.split_last() else {
            return body(b, &[], false);
        };
        let (groups, tail) = (width / LANES, width % LANES);
        for (count, lanes, start) in [(groups, LANES, 0), (tail, 1, groups * LANES)] {
            if count == 0 {
                continue;
            }
            let mut part = outer.to_vec();
            part.push(count);
            self.carry_nest(b, &part, &[], &[], &mut |b, ivs, _| {
                let mut ivs = ivs.to_vec();
                let last = ivs.len() - 1;
                ivs[last] = self.ilin(b, ivs[last], lanes, None, start);
                body(b, &ivs, lanes > 1);
                vec![]
            });
        }
    }

    /// A reduction over the `reduced` axes of `dims` that keeps the last axes, in streaming
    /// order: in parallel over the kept axes before the last reduced one (`outer`), then for
    /// each reduced index in row-major order, one pass in vectors over the kept axes after it
    /// (`tail`, contiguous in the input and the output alike). The running results live in the
    /// output's `tail` row, in L1. Walking the reduced axes per output instead (spatial
    /// attention's pooling over T and C) reads the input with a stride of a whole feature map.
    ///
    /// `before(block, idx, vector)` initialises, `body(block, idx, r, vector)` accumulates the
    /// element at `idx` (reduced index `r`), `after` finishes; `idx` indexes `dims` (reduced
    /// positions 0 in `before` and `after`). Returns false, emitting nothing, when the layout
    /// does not suit (the last axis reduced, or no kept axis before the last reduced one to run
    /// in parallel).
    pub(super) fn stream_reduce(
        &self,
        dims: &[i64],
        reduced: &[bool],
        before: &RowStep<'_, 'c>,
        body: &StreamStep<'_, 'c>,
        after: &RowStep<'_, 'c>,
    ) -> bool {
        let Some(last_red) = reduced.iter().rposition(|r| *r) else {
            return false;
        };
        let outer: Vec<usize> = (0..last_red).filter(|&k| !reduced[k]).collect();
        let outer_dims: Vec<i64> = outer.iter().map(|&k| dims[k]).collect();
        if self.flat || last_red + 1 == dims.len() || outer_dims.iter().product::<i64>() < 2 {
            return false;
        }
        let red: Vec<usize> = (0..dims.len()).filter(|&k| reduced[k]).collect();
        let red_dims: Vec<i64> = red.iter().map(|&k| dims[k]).collect();
        let tail_dims = &dims[last_red + 1..];
        let full = |o: &[V<'c>], r: &[V<'c>], t: &[V<'c>]| {
            let mut idx = vec![self.cidx(0); dims.len()];
            for (k, v) in outer.iter().zip(o) {
                idx[*k] = *v;
            }
            for (k, v) in red.iter().zip(r) {
                idx[*k] = *v;
            }
            idx[last_red + 1..].copy_from_slice(t);
            idx
        };
        self.par(self.entry, &outer_dims, |b, o| {
            self.for_vec(b, tail_dims, &|b, t, vector| {
                before(b, &full(o, &[], t), vector)
            });
            self.carry_nest(b, &red_dims, &[], &[], &mut |b, r, _| {
                self.for_vec(b, tail_dims, &|b, t, vector| {
                    body(b, &full(o, r, t), r, vector)
                });
                vec![]
            });
            self.for_vec(b, tail_dims, &|b, t, vector| {
                after(b, &full(o, &[], t), vector)
            });
        });
        true
    }

    /// Nested `scf.for`s over `dims` carrying several values; `body(block, ivs, carried)`
    /// returns the next ones. The dyn body keeps the recursion monomorphic.
    fn carry_nest(
        &self,
        b: &Block<'c>,
        dims: &[i64],
        inits: &[V<'c>],
        outer: &[V<'c>],
        body: &mut CarryBody<'_, 'c>,
    ) -> Vec<V<'c>> {
        let Some((&first, rest)) = dims.split_first() else {
            return body(b, outer, inits);
        };
        let (results, ()) = self.for_carry(b, first, inits, |blk, iv, carried| {
            let mut ivs = outer.to_vec();
            ivs.push(iv);
            (self.carry_nest(blk, rest, carried, &ivs, body), ())
        });
        results
    }

    /// `n` sums over the nest `dims`, from 0: `body(block, ivs, sums, vector)` returns the
    /// sums plus one more element (or, with `vector`, four consecutive ones along the last
    /// axis from `ivs`; only when `contiguous`: the last of `dims` is the buffers' last
    /// axis). See [`Self::fold_nest`].
    fn sum_nest(
        &self,
        b: &Block<'c>,
        dims: &[i64],
        n: usize,
        contiguous: bool,
        body: &mut FoldBody<'_, 'c>,
    ) -> Vec<V<'c>> {
        self.fold_nest(b, dims, &vec![0.0; n], "arith.addf", contiguous, body)
    }

    /// Folds over the nest `dims` from `inits` (identities of `combine`) with the associative
    /// `combine` (`arith.addf`, `arith.maximumf`), which `body` applies to the values it reads.
    /// Vector partial results run over the last axis's whole groups of four, in up to
    /// [`FOLD_COPIES`] interleaved sets (`body` is called once per set, with that set's
    /// values), then are combined with each other and across lanes, then the scalar tail
    /// follows: for sums the order differs from one element at a time, within f32 rounding.
    fn fold_nest(
        &self,
        b: &Block<'c>,
        dims: &[i64],
        inits: &[f64],
        combine: &str,
        contiguous: bool,
        body: &mut FoldBody<'_, 'c>,
    ) -> Vec<V<'c>> {
        let width = dims.last().copied().unwrap_or(1);
        if self.flat || !contiguous || width < LANES {
            let inits: Vec<V<'c>> = inits.iter().map(|v| self.cf(*v)).collect();
            return self.carry_nest(b, dims, &inits, &[], &mut |b, r, acc| {
                body(b, r, acc, false)
            });
        }
        let last = dims.len() - 1;
        let groups = width / LANES;
        // Independent partial results over consecutive vectors: one chain of dependent adds
        // runs at one vector per add latency (~4 cycles), several chains at the load rate.
        let copies = [FOLD_COPIES, 2, 1]
            .into_iter()
            .find(|c| groups % c == 0)
            .unwrap_or(1);
        let n = inits.len();
        let mut part = dims.to_vec();
        part[last] = groups / copies;
        let vinits: Vec<V<'c>> = (0..copies)
            .flat_map(|_| inits.iter().map(|v| self.cf_w(*v, true)))
            .collect();
        let partial = self.carry_nest(b, &part, &vinits, &[], &mut |b, r, acc| {
            let mut next = Vec::with_capacity(acc.len());
            for (k, acc) in acc.chunks(n).enumerate() {
                let mut r = r.to_vec();
                r[last] = self.ilin(b, r[last], LANES * copies, None, k as i64 * LANES);
                next.extend(body(b, &r, acc, true));
            }
            next
        });
        let folded: Vec<V<'c>> = (0..n)
            .map(|j| {
                let v = (1..copies as usize).fold(partial[j], |v, k| {
                    self.bin(b, combine, v, partial[k * n + j])
                });
                self.across_lanes(b, v, combine)
            })
            .collect();
        if width % LANES == 0 {
            return folded;
        }
        part[last] = width % LANES;
        self.carry_nest(b, &part, &folded, &[], &mut |b, r, acc| {
            let mut r = r.to_vec();
            r[last] = self.ilin(b, r[last], 1, None, groups * LANES);
            body(b, &r, acc, false)
        })
    }

    /// A `vector<4xf32>`'s lanes combined with `combine`: ((l0 ∘ l1) ∘ l2) ∘ l3.
    fn across_lanes(&self, b: &Block<'c>, v: V<'c>, combine: &str) -> V<'c> {
        let lane = |k: i64| {
            self.val(
                b,
                "vector.extract",
                &[v],
                self.f32,
                &[(
                    "static_position",
                    DenseI64ArrayAttribute::new(self.ctx, &[k]).into(),
                )],
            )
        };
        let mut acc = lane(0);
        for k in 1..LANES {
            let x = lane(k);
            acc = self.bin(b, combine, acc, x);
        }
        acc
    }

    /// Element-wise copy between two buffers of the same static shape.
    fn copy(&self, b: &Block<'c>, src: V<'c>, dst: V<'c>, dims: &[i64]) {
        self.par_vec(b, dims, |b, ivs, vector| {
            let v = self.load_w(b, src, ivs, vector);
            self.store_w(b, v, dst, ivs, vector);
        });
    }
}

fn block_arg<'c>(blk: &Block<'c>, i: usize) -> V<'c> {
    blk.argument(i)
        .unwrap_or_else(|_| panic!("internal: block argument {i}"))
        .into()
}

/// `ivs` with `v` inserted at `pos` (the axis a loop nest does not range over).
fn insert_at<T: Copy>(ivs: &[T], pos: usize, v: T) -> Vec<T> {
    let mut out = ivs.to_vec();
    out.insert(pos.min(out.len()), v);
    out
}

/// `dims` without position `pos`.
fn remove_at(dims: &[i64], pos: usize) -> Vec<i64> {
    dims.iter()
        .enumerate()
        .filter(|(i, _)| *i != pos)
        .map(|(_, d)| *d)
        .collect()
}

/// A lowered value: its memref and static sizes.
#[derive(Clone)]
struct Buf<'c> {
    mem: V<'c>,
    dims: Vec<i64>,
}

/// A forward value as its readers see it: a buffer, or a broadcast product recomputed element by
/// element where it is read (the backward's rematerialised products, `grad::rematerialized`,
/// and the training forward's inlined ones, [`Lowering::inline_products`]).
#[derive(Clone)]
enum FwdValue<'c> {
    Stored(Buf<'c>),
    Product(Box<(FwdValue<'c>, FwdValue<'c>)>),
}

impl<'c> FwdValue<'c> {
    /// The element(s) at `idx` of a `dims`-shaped loop, broadcasting size-1 axes: for a
    /// product, the same multiply the forward did.
    fn load(
        &self,
        fx: &Fx<'c, '_>,
        b: &Block<'c>,
        dims: &[i64],
        idx: &[V<'c>],
        vector: bool,
    ) -> V<'c> {
        match self {
            FwdValue::Stored(buf) => fx.load_bcast(b, buf.mem, &buf.dims, dims, idx, vector),
            FwdValue::Product(p) => {
                let (a, c) = (
                    p.0.load(fx, b, dims, idx, vector),
                    p.1.load(fx, b, dims, idx, vector),
                );
                fx.mulf(b, a, c)
            }
        }
    }
}

/// Where each node's value lives and when allocated buffers die.
struct Liveness {
    /// The node whose storage a value shares (itself unless it is a view).
    root: Vec<usize>,
    /// Last node reading each root's storage (the root itself when nothing reads it).
    last_use: Vec<usize>,
    /// Output slot a node computes straight into.
    direct_out: Vec<Option<usize>>,
}

/// Dropout, and flatten of a contiguous [T, B, C, H, W], are views of their input.
/// The memref of view node `node` (see [`is_view`]) over its operand `x`, placed in the
/// entry block.
fn view_of<'c>(fx: &Fx<'c, '_>, node: &Node, x: &Buf<'c>, dims: &[i64]) -> V<'c> {
    match node.op {
        Op::Flatten => {
            let reassociation = ArrayAttribute::new(
                fx.ctx,
                &[vec![0], vec![1], vec![2, 3, 4]]
                    .iter()
                    .map(|group| {
                        let items: Vec<Attribute<'c>> = group
                            .iter()
                            .map(|&d| {
                                IntegerAttribute::new(IntegerType::new(fx.ctx, 64).into(), d).into()
                            })
                            .collect();
                        ArrayAttribute::new(fx.ctx, &items).into()
                    })
                    .collect::<Vec<_>>(),
            );
            fx.val(
                fx.entry,
                "memref.collapse_shape",
                &[x.mem],
                fx.memref_type(dims),
                &[("reassociation", reassociation.into())],
            )
        }
        _ => x.mem,
    }
}

/// Dropout's scale of the kept values, as the reference kernel has it (0 when all are dropped).
pub(super) fn dropout_scale(p: f64) -> f64 {
    if p >= 1.0 { 0.0 } else { 1.0 / (1.0 - p) }
}

pub(super) fn is_view(g: &Graph, node: &Node) -> bool {
    match node.op {
        // Dropout with p > 0 multiplies by its mask in training (see `Lowering::dropout`).
        Op::Dropout { p } => p <= 0.0,
        Op::Flatten => node
            .inputs
            .first()
            .is_some_and(|x| flatten_collapses(g.ty(*x))),
        _ => false,
    }
}

fn flatten_collapses(ty: &TensorType) -> bool {
    let axes: Vec<Axis> = ty.dims.iter().map(|(a, _)| *a).collect();
    axes == [Axis::T, Axis::B, Axis::C, Axis::H, Axis::W]
}

fn liveness(g: &Graph) -> Liveness {
    let n = g.nodes.len();
    let mut root: Vec<usize> = (0..n).collect();
    for (i, node) in g.nodes.iter().enumerate() {
        if is_view(g, node)
            && let Some(x) = node.inputs.first()
        {
            root[i] = root[x.0];
        }
    }
    let mut last_use: Vec<usize> = (0..n).collect();
    for (i, node) in g.nodes.iter().enumerate() {
        for x in &node.inputs {
            let r = root[x.0];
            last_use[r] = last_use[r].max(i);
        }
        // A view keeps its root alive at least until the view itself is defined.
        let r = root[i];
        last_use[r] = last_use[r].max(i);
    }
    let mut direct_out = vec![None; n];
    for (k, out) in g.outputs.iter().enumerate() {
        let node = &g.nodes[out.0];
        let computes = !matches!(node.op, Op::Input { .. }) && !is_view(g, node);
        if computes && direct_out[out.0].is_none() {
            direct_out[out.0] = Some(k);
        }
    }
    Liveness {
        root,
        last_use,
        direct_out,
    }
}

struct Lowering<'a, 'c, 'e> {
    fx: Fx<'c, 'e>,
    g: &'a Graph,
    batch: usize,
    bufs: Vec<Option<Buf<'c>>>,
    params: Vec<V<'c>>,
    outputs: Vec<V<'c>>,
    live: Liveness,
    /// Extra buffers `forward_train` fills (see [`grad`]); empty for inference.
    train: grad::TrainSinks<'c>,
    /// [`LowerOptions::eval`].
    eval: bool,
    /// Products never written to memory, recomputed by each reader ([`Self::inline_products`]).
    inlined: Vec<bool>,
    /// Nodes already lowered in an earlier node's loop ([`Self::max_sibling`]).
    early: Vec<bool>,
}

impl<'a, 'c, 'e> Lowering<'a, 'c, 'e> {
    fn new(fx: Fx<'c, 'e>, g: &'a Graph, batch: usize) -> Result<Self, LowerError> {
        let n_inputs = g.inputs().count();
        let mut bufs: Vec<Option<Buf<'c>>> = vec![None; g.nodes.len()];
        for (k, (id, node)) in g.inputs().enumerate() {
            bufs[id.0] = Some(Buf {
                mem: block_arg(fx.entry, k),
                dims: to_i64(&shape_of(&node.ty, batch, &node.name)?),
            });
        }
        let params = (0..g.params.len())
            .map(|p| block_arg(fx.entry, n_inputs + p))
            .collect();
        let outputs = (0..g.outputs.len())
            .map(|k| block_arg(fx.entry, n_inputs + g.params.len() + k))
            .collect();
        Ok(Lowering {
            fx,
            g,
            batch,
            bufs,
            params,
            outputs,
            live: liveness(g),
            train: grad::TrainSinks::default(),
            eval: false,
            inlined: vec![false; g.nodes.len()],
            early: vec![false; g.nodes.len()],
        })
    }

    fn run(&mut self) -> Result<(), LowerError> {
        let g = self.g;
        self.inlined = self.inline_products();
        for (i, node) in g.nodes.iter().enumerate() {
            if self.inlined[i] {
                continue;
            }
            self.fx.loc.set(Location::name(
                self.fx.ctx,
                &node.name,
                Location::unknown(self.fx.ctx),
            ));
            if !self.early[i] {
                self.lower_node(i, node)
                    .map_err(|e| LowerError::new(format!("cannot lower `{}`: {e}", node.name)))?;
            }
            let here = self.buf(ValueId(i))?;
            for (k, out) in g.outputs.iter().enumerate() {
                if out.0 == i && self.live.direct_out[i] != Some(k) {
                    self.fx
                        .copy(self.fx.entry, here.mem, self.outputs[k], &here.dims);
                }
            }
            self.train.save(&self.fx, i, &here);
            for r in 0..=i {
                if self.live.last_use[r] == i && self.allocated(r) {
                    let mem = self.buf(ValueId(r))?.mem;
                    self.fx.stmt(self.fx.entry, "memref.dealloc", &[mem]);
                }
            }
        }
        Ok(())
    }

    /// The training forward's broadcast products (attention's `x · gate`) that are never
    /// written: each reader multiplies the operands itself, as the backward does for the same
    /// products. A gated map costs a write and a read per reader otherwise, for one multiply
    /// (or a few, along a chain of gates) per element. Only where every operand stays in
    /// memory until the end (a model input, a saved value or itself inlined), every reader
    /// reads element by element (a reduction, an elementwise op), and nothing else wants the
    /// buffer (an output, a saved value, a view). Not in flat (GPU) forms.
    fn inline_products(&self) -> Vec<bool> {
        let g = self.g;
        let mut inlined = vec![false; g.nodes.len()];
        if self.fx.flat {
            return inlined;
        }
        for (i, node) in g.nodes.iter().enumerate() {
            if !matches!(node.op, Op::Binary(BinaryOp::Mul))
                || self.live.direct_out[i].is_some()
                || self.train.saved_buffer(i).is_some()
            {
                continue;
            }
            let resident = |v: ValueId| {
                let r = self.live.root[v.0];
                matches!(g.nodes[r].op, Op::Input { .. })
                    || self.train.saved_buffer(r).is_some()
                    || inlined[r]
            };
            let mut readers = g
                .nodes
                .iter()
                .filter(|n| n.inputs.iter().any(|v| v.0 == i))
                .peekable();
            let reads_elementwise = readers.peek().is_some()
                && readers.all(|n| {
                    !is_view(g, n)
                        && matches!(n.op, Op::Reduce { .. } | Op::Unary(_) | Op::Binary(_))
                });
            inlined[i] = reads_elementwise && node.inputs.iter().all(|&v| resident(v));
        }
        inlined
    }

    /// For mean reduction `i`, a later max reduction of the same operand over the same axes
    /// (attention's average and max pooling): lowered in the mean's loop, which loads each
    /// element once for both. Not in flat (GPU) forms.
    fn max_sibling(&self, i: usize) -> Option<usize> {
        let g = self.g;
        let node = &g.nodes[i];
        let Op::Reduce {
            kind: ReduceKind::Mean,
            axes,
            keepdim,
        } = &node.op
        else {
            return None;
        };
        if self.fx.flat {
            return None;
        }
        let x = node.inputs.first()?;
        (i + 1..g.nodes.len()).find(|&j| {
            let other = &g.nodes[j];
            other.inputs.first() == Some(x)
                && matches!(&other.op, Op::Reduce { kind: ReduceKind::Max, axes: a, keepdim: k }
                    if a == axes && k == keepdim)
        })
    }

    /// Operand `k` of `node` as its readers load it: stored, or an inlined product.
    fn operand(&self, node: &Node, k: usize) -> Result<FwdValue<'c>, LowerError> {
        let id = node.inputs.get(k).ok_or_else(|| {
            LowerError::new(format!("`{}` needs operand {k}", node.op.mnemonic()))
        })?;
        self.value(*id)
    }

    fn value(&self, id: ValueId) -> Result<FwdValue<'c>, LowerError> {
        if !self.inlined.get(id.0).copied().unwrap_or(false) {
            return self.buf(id).map(FwdValue::Stored);
        }
        let node = &self.g.nodes[id.0];
        Ok(FwdValue::Product(Box::new((
            self.operand(node, 0)?,
            self.operand(node, 1)?,
        ))))
    }

    /// Whether node `r` owns a `memref.alloc` (not an argument, not a view).
    fn allocated(&self, r: usize) -> bool {
        let node = &self.g.nodes[r];
        self.live.root[r] == r
            && !self.inlined[r]
            && !matches!(node.op, Op::Input { .. })
            && self.live.direct_out[r].is_none()
            && self.train.saved_buffer(r).is_none()
    }

    /// Whether training batchnorm `bn` leaves its normalisation to the 2×2 average pool that
    /// alone reads it ([`pooled_batch_norm`]), which then averages the batchnorm's input: the
    /// full-size normalised map is never written (one write and one read of the largest
    /// feature maps saved per step). Needs the input kept until the pool (the training
    /// forward saves it for the backward) and the batchnorm's own output unneeded.
    fn pool_normalises(&self, bn: usize) -> bool {
        if self.eval || self.live.direct_out[bn].is_some() || self.train.saved_buffer(bn).is_some()
        {
            return false;
        }
        let g = self.g;
        let Some(pool) =
            (bn + 1..g.nodes.len()).find(|&j| g.nodes[j].inputs.iter().any(|v| v.0 == bn))
        else {
            return false;
        };
        let Some(x) = g.nodes[bn].inputs.first().map(|v| self.live.root[v.0]) else {
            return false;
        };
        pooled_batch_norm(g, &g.nodes[pool]) == Some(bn)
            && (!self.allocated(x) || self.live.last_use[x] >= pool)
    }

    fn buf(&self, id: ValueId) -> Result<Buf<'c>, LowerError> {
        self.bufs
            .get(id.0)
            .and_then(|b| b.clone())
            .ok_or_else(|| LowerError::new(format!("value %{} is used before it is defined", id.0)))
    }

    fn input(&self, node: &Node, k: usize) -> Result<Buf<'c>, LowerError> {
        let id = node.inputs.get(k).ok_or_else(|| {
            LowerError::new(format!("`{}` needs operand {k}", node.op.mnemonic()))
        })?;
        self.buf(*id)
    }

    fn param(&self, node: &Node, k: usize) -> Result<V<'c>, LowerError> {
        node.params
            .get(k)
            .and_then(|p| self.params.get(p.0))
            .copied()
            .ok_or_else(|| LowerError::new(format!("`{}` needs parameter {k}", node.op.mnemonic())))
    }

    fn position(&self, node: &Node, k: usize, axis: Axis) -> Result<usize, LowerError> {
        let id = node.inputs.get(k).ok_or_else(|| {
            LowerError::new(format!("`{}` needs operand {k}", node.op.mnemonic()))
        })?;
        self.g.ty(*id).position(axis).ok_or_else(|| {
            LowerError::new(format!(
                "`{}` needs a {} axis, found {}",
                node.op.mnemonic(),
                axis.letter(),
                self.g.ty(*id).shape_string()
            ))
        })
    }

    fn lower_node(&mut self, i: usize, node: &Node) -> Result<(), LowerError> {
        let dims = to_i64(&shape_of(&node.ty, self.batch, &node.name)?);
        if let Op::Input { .. } = node.op {
            return Ok(());
        }
        if is_view(self.g, node) {
            let x = self.input(node, 0)?;
            let mem = view_of(&self.fx, node, &x, &dims);
            self.bufs[i] = Some(Buf { mem, dims });
            return Ok(());
        }
        // A batchnorm its pool normalises holds only its statistics, [2, C].
        let dims = match &node.op {
            Op::BatchNorm { axis, .. } if self.pool_normalises(i) => {
                vec![2, dims[self.position(node, 0, *axis)?]]
            }
            _ => dims,
        };
        let y = self.output_buf(i, dims);
        match &node.op {
            Op::Input { .. } => Ok(()),
            Op::Dropout { p } => self.dropout(node, &y, *p),
            Op::Conv2d {
                kernel,
                stride,
                padding,
                ..
            } => self.conv2d(node, &y, *kernel, *stride, *padding),
            Op::Dense { axis, .. } => self.dense(node, &y, *axis),
            Op::Pool {
                kind,
                kernel,
                stride,
            } => self.pool(node, &y, *kind, *kernel as i64, *stride as i64),
            Op::BatchNorm {
                axis,
                eps,
                momentum,
            } if self.eval => self.batch_norm_eval(node, &y, *axis, *eps),
            Op::BatchNorm {
                axis,
                eps,
                momentum,
            } => self.batch_norm(i, node, &y, *axis, *eps, *momentum),
            Op::Flatten => self.flatten_copy(node, &y),
            Op::Reduce {
                kind,
                axes,
                keepdim,
            } => {
                let max = match self.max_sibling(i) {
                    Some(j) => {
                        let node_j = &self.g.nodes[j];
                        let dims_j = to_i64(&shape_of(&node_j.ty, self.batch, &node_j.name)?);
                        self.early[j] = true;
                        let argmax = self.train.aux_for(self.g, node_j, grad::Aux::Argmax);
                        Some((self.output_buf(j, dims_j), argmax))
                    }
                    None => None,
                };
                self.reduce(node, &y, *kind, axes, *keepdim, max.as_ref())
            }
            Op::Concat { axis } => self.concat(node, &y, *axis),
            Op::Unary(op) => self.unary(node, &y, *op),
            Op::Binary(op) => self.binary(node, &y, *op),
            Op::Scan { neuron, emit } => self.scan(node, &y, neuron, *emit),
        }
    }

    /// Node `i`'s output buffer, recorded as its value: a model output or a saved value the
    /// backward reads is computed straight into its argument (no copy, no second buffer).
    fn output_buf(&mut self, i: usize, dims: Vec<i64>) -> Buf<'c> {
        let mem = match (self.live.direct_out[i], self.train.saved_buffer(i)) {
            (Some(k), _) => self.outputs[k],
            (None, Some(saved)) => saved,
            (None, None) => self.fx.alloc(&dims),
        };
        let buf = Buf { mem, dims };
        self.bufs[i] = Some(buf.clone());
        buf
    }

    /// Training batchnorm `node`'s running statistics and saved batch statistics.
    fn batch_stats(
        &self,
        node: &Node,
        m: i64,
        eps: f64,
        momentum: f64,
    ) -> Result<BatchStats<'c>, LowerError> {
        Ok(BatchStats {
            run_mean: self.param(node, 2)?,
            run_var: self.param(node, 3)?,
            saved: self.train.aux_for(self.g, node, grad::Aux::BatchStats),
            m,
            eps,
            momentum,
        })
    }

    fn conv2d(
        &self,
        node: &Node,
        y: &Buf<'c>,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<(), LowerError> {
        let fx = &self.fx;
        let x = self.input(node, 0)?;
        let pc = self.position(node, 0, Axis::C)?;
        let ph = self.position(node, 0, Axis::H)?;
        let pw = self.position(node, 0, Axis::W)?;
        let w = self.param(node, 0)?;
        let bias = if node.params.len() > 1 {
            Some(self.param(node, 1)?)
        } else {
            None
        };
        let (kh, kw) = (kernel.0 as i64, kernel.1 as i64);
        let (sh, sw) = (stride.0 as i64, stride.1 as i64);
        let (padh, padw) = (padding.0 as i64, padding.1 as i64);
        let (h, wd) = (x.dims[ph], x.dims[pw]);
        let rank = x.dims.len();
        // The kernel wants [N, C, H, W] images: C, H, W the trailing axes, in that order.
        if fx.kernels && pc + 3 == rank && ph + 2 == rank && pw + 1 == rank && y.dims.len() == rank
        {
            let n: i64 = x.dims[..pc].iter().product();
            let bias_ptr = match bias {
                Some(b) => fx.base_ptr(b),
                None => fx.cidx(0),
            };
            let mut args = vec![
                fx.base_ptr(x.mem),
                fx.base_ptr(w),
                bias_ptr,
                fx.base_ptr(y.mem),
            ];
            for v in [
                n, x.dims[pc], h, wd, y.dims[pc], kh, kw, sh, sw, padh, padw, y.dims[ph],
                y.dims[pw],
            ] {
                args.push(fx.cidx(v));
            }
            let input = self.g.ty(node.inputs[0]);
            fx.call_kernel(
                kernel_for(input, "snn_conv2d_f32", "snn_conv2d_spike_f32"),
                &args,
            );
            return Ok(());
        }
        if fx.gemm && ph == pc + 1 && pw == pc + 2 {
            let shape = gemm::ConvShape::of(&x.dims, &y.dims, pc, (kh, kw), (sh, sw), (padh, padw));
            if let Some(shape) = shape {
                fx.conv2d_gemm(&x, w, y, &shape);
                if let Some(bias) = bias {
                    fx.add_bias(y, bias, pc);
                }
                return Ok(());
            }
        }
        let red = [x.dims[pc], kh, kw];
        fx.par(fx.entry, &y.dims, |b, o| {
            let init = match bias {
                Some(bias) => fx.load(b, bias, &[o[pc]]),
                None => fx.cf(0.0),
            };
            let acc = fx.acc_nest(b, &red, init, &mut |b, r, acc| {
                let ih = fx.ilin(b, o[ph], sh, Some(r[1]), -padh);
                let iw = fx.ilin(b, o[pw], sw, Some(r[2]), -padw);
                let mut idx = o.to_vec();
                idx[pc] = r[0];
                let v = if padh == 0 && padw == 0 {
                    idx[ph] = ih;
                    idx[pw] = iw;
                    fx.load(b, x.mem, &idx)
                } else {
                    fx.load_padded(b, &x, &mut idx, [(ph, ih), (pw, iw)])
                };
                let wv = fx.load(b, w, &[o[pc], r[0], r[1], r[2]]);
                let p = fx.mulf(b, v, wv);
                fx.addf(b, acc, p)
            });
            fx.store(b, acc, y.mem, o);
        });
        Ok(())
    }

    fn dense(&self, node: &Node, y: &Buf<'c>, axis: Axis) -> Result<(), LowerError> {
        let fx = &self.fx;
        let x = self.input(node, 0)?;
        let pa = self.position(node, 0, axis)?;
        let w = self.param(node, 0)?;
        let bias = if node.params.len() > 1 {
            Some(self.param(node, 1)?)
        } else {
            None
        };
        let n_in = x.dims[pa];
        if fx.kernels && y.dims.len() == x.dims.len() {
            let outer: i64 = x.dims[..pa].iter().product();
            let inner: i64 = x.dims[pa + 1..].iter().product();
            let bias_ptr = match bias {
                Some(b) => fx.base_ptr(b),
                None => fx.cidx(0),
            };
            let args = [
                fx.base_ptr(x.mem),
                fx.base_ptr(w),
                bias_ptr,
                fx.base_ptr(y.mem),
                fx.cidx(outer),
                fx.cidx(n_in),
                fx.cidx(inner),
                fx.cidx(y.dims[pa]),
            ];
            let input = self.g.ty(node.inputs[0]);
            fx.call_kernel(
                kernel_for(input, "snn_dense_f32", "snn_dense_spike_f32"),
                &args,
            );
            return Ok(());
        }
        // The last axis: `y[outer, n_out] = x[outer, n_in] · wᵀ`.
        if fx.gemm && pa + 1 == x.dims.len() && y.dims.len() == x.dims.len() {
            let outer: i64 = x.dims[..pa].iter().product();
            let product = Gemm {
                trans_b: true,
                ..Gemm::single(gemm::size(outer), gemm::size(y.dims[pa]), gemm::size(n_in))
            };
            fx.gemm(x.mem, w, y.mem, product);
            if let Some(bias) = bias {
                fx.add_bias(y, bias, pa);
            }
            return Ok(());
        }
        fx.par(fx.entry, &y.dims, |b, o| {
            let init = match bias {
                Some(bias) => fx.load(b, bias, &[o[pa]]),
                None => fx.cf(0.0),
            };
            let acc = fx.acc_nest(b, &[n_in], init, &mut |b, r, acc| {
                let mut idx = o.to_vec();
                idx[pa] = r[0];
                let xv = fx.load(b, x.mem, &idx);
                let wv = fx.load(b, w, &[o[pa], r[0]]);
                let p = fx.mulf(b, xv, wv);
                fx.addf(b, acc, p)
            });
            fx.store(b, acc, y.mem, o);
        });
        Ok(())
    }

    fn pool(
        &self,
        node: &Node,
        y: &Buf<'c>,
        kind: PoolKind,
        k: i64,
        s: i64,
    ) -> Result<(), LowerError> {
        let fx = &self.fx;
        let ph = self.position(node, 0, Axis::H)?;
        let pw = self.position(node, 0, Axis::W)?;
        // A batchnorm left to this pool (`pool_normalises`) passed its statistics: the windows
        // average the batchnorm's input, then normalise (an affine map per channel commutes
        // with the average).
        let bn = node
            .inputs
            .first()
            .map(|v| v.0)
            .filter(|&v| self.pool_normalises(v));
        if let Some(v) = bn
            && !fx.flat
        {
            return self.pool_with_batch_norm(y, v);
        }
        let (x, norm) = match bn {
            Some(v) => {
                let bn_node = &self.g.nodes[v];
                let Op::BatchNorm { axis, .. } = bn_node.op else {
                    return Err(LowerError::new("internal: fused batchnorm is not one"));
                };
                let stats = self.buf(ValueId(v))?.mem;
                let pc = self.position(bn_node, 0, axis)?;
                let affine = (self.param(bn_node, 0)?, self.param(bn_node, 1)?);
                (self.input(bn_node, 0)?, Some((stats, pc, affine)))
            }
            None => (self.input(node, 0)?, None),
        };
        let finish = |b: &Block<'c>, o: &[V<'c>], v: V<'c>, vector: bool| -> V<'c> {
            let Some((stats, pc, (gamma, beta))) = norm else {
                return v;
            };
            let c = o[pc];
            let mean = fx.load(b, stats, &[fx.cidx(0), c]);
            let inv_std = fx.load(b, stats, &[fx.cidx(1), c]);
            let (g, be) = (fx.load(b, gamma, &[c]), fx.load(b, beta, &[c]));
            bn_affine(fx, b, v, (mean, inv_std, g, be), vector)
        };
        let combine = |b: &Block<'c>, acc: V<'c>, v: V<'c>| match kind {
            PoolKind::Avg => fx.addf(b, acc, v),
            PoolKind::Max => fx.bin(b, "arith.maximumf", acc, v),
        };
        if pairs_in_lanes(fx, k, s, pw, x.dims.len()) {
            // 2×2 windows, stride 2: four outputs from two rows of eight inputs, the even
            // and odd columns separated by shuffles; the same order of operations as one
            // output at a time.
            fx.par_vec(fx.entry, &y.dims, |b, o, vector| {
                if !vector {
                    let v = self.pool_one(b, &x, o, (ph, pw), kind, (k, s));
                    return fx.store(b, finish(b, o, v, false), y.mem, o);
                }
                let mut acc = fx.cf_w(
                    match kind {
                        PoolKind::Avg => 0.0,
                        PoolKind::Max => f64::NEG_INFINITY,
                    },
                    true,
                );
                for kh in 0..2 {
                    let (_, _, even, odd) = window_row(fx, b, x.mem, o, (ph, pw), kh);
                    acc = combine(b, acc, even);
                    acc = combine(b, acc, odd);
                }
                let v = match kind {
                    PoolKind::Avg => fx.divf(b, acc, fx.cf_w(4.0, true)),
                    PoolKind::Max => acc,
                };
                fx.vstore(b, finish(b, o, v, true), y.mem, o);
            });
            return Ok(());
        }
        fx.par(fx.entry, &y.dims, |b, o| {
            let v = self.pool_one(b, &x, o, (ph, pw), kind, (k, s));
            fx.store(b, finish(b, o, v, false), y.mem, o);
        });
        Ok(())
    }

    /// One output of a pooling window, at `o`.
    /// A 2×2 average pool (stride 2) of the input of training batchnorm `bn`, which left its
    /// work to the pool ([`Self::pool_normalises`]): per channel, one pass over the input
    /// averages each window into `y` and sums the batchnorm's statistics
    /// ([`shifted_moments`]), then the channel's pooled values (a quarter of the input, still
    /// in cache) are normalised in place, an affine map per channel commuting with the
    /// average. The largest feature maps are read once instead of twice.
    fn pool_with_batch_norm(&self, y: &Buf<'c>, bn: usize) -> Result<(), LowerError> {
        let fx = &self.fx;
        let node = &self.g.nodes[bn];
        let Op::BatchNorm {
            axis,
            eps,
            momentum,
        } = node.op
        else {
            return Err(LowerError::new("internal: fused batchnorm is not one"));
        };
        let x = self.input(node, 0)?;
        let pc = self.position(node, 0, axis)?;
        let (gamma, beta) = (self.param(node, 0)?, self.param(node, 1)?);
        let rank = x.dims.len();
        let (ph, pw) = (rank - 2, rank - 1);
        let m = x.dims.iter().product::<i64>() / x.dims[pc];
        let st = self.batch_stats(node, m, eps, momentum)?;
        // The window of output `o` (vector: four outputs from two rows of eight inputs):
        // the window sum, and the sums of d and d² over its inputs.
        let window = |b: &Block<'c>, o: &[V<'c>], shift: V<'c>, vector: bool| {
            let k = if vector { fx.splat(b, shift) } else { shift };
            let mut rows = Vec::new();
            for kh in 0..2 {
                if vector {
                    let (lo, hi, even, odd) = window_row(fx, b, x.mem, o, (ph, pw), kh);
                    rows.push((even, odd, fx.subf(b, lo, k), fx.subf(b, hi, k)));
                } else {
                    let mut idx = o.to_vec();
                    idx[ph] = fx.ilin(b, o[ph], 2, None, kh);
                    idx[pw] = fx.ilin(b, o[pw], 2, None, 0);
                    let left = fx.load(b, x.mem, &idx);
                    idx[pw] = fx.ilin(b, o[pw], 2, None, 1);
                    let right = fx.load(b, x.mem, &idx);
                    rows.push((left, right, fx.subf(b, left, k), fx.subf(b, right, k)));
                }
            }
            // The pool's own order: the even then the odd column of each row.
            let mut acc = fx.cf_w(0.0, vector);
            for &(even, odd, _, _) in &rows {
                acc = fx.addf(b, acc, even);
                acc = fx.addf(b, acc, odd);
            }
            // Tree sums: the carried sums wait one add per window, not four.
            let pair = |(_, _, lo, hi): (V<'c>, V<'c>, V<'c>, V<'c>)| {
                (
                    fx.addf(b, lo, hi),
                    fx.addf(b, fx.mulf(b, lo, lo), fx.mulf(b, hi, hi)),
                )
            };
            let (d0, q0) = pair(rows[0]);
            let (d1, q1) = pair(rows[1]);
            (acc, fx.addf(b, d0, d1), fx.addf(b, q0, q1))
        };
        // The shift of `shifted_moments`: the channel's first value.
        let first = vec![fx.cidx(0); rank - 1];
        let shift = |b: &Block<'c>, c: V<'c>| fx.load(b, x.mem, &insert_at(&first, pc, c));
        let stats = self.buf(ValueId(bn))?.mem;
        fx.channel_sums(
            &y.dims,
            pc,
            2,
            &|b, o, vector| {
                let (total, d, q) = window(b, o, shift(b, o[pc]), vector);
                let avg = fx.divf(b, total, fx.cf_w(4.0, vector));
                fx.store_w(b, avg, y.mem, o, vector);
                vec![d, q]
            },
            &|b, c, sums| st.finish(fx, b, c, (shift(b, c), sums), stats),
        );
        normalise_planes(
            fx,
            &y.dims,
            pc,
            stats,
            (gamma, beta),
            &|b, o, ch, vector| {
                let v = fx.load_w(b, y.mem, o, vector);
                let v = bn_affine(fx, b, v, ch, vector);
                fx.store_w(b, v, y.mem, o, vector);
            },
        );
        Ok(())
    }

    fn pool_one(
        &self,
        b: &Block<'c>,
        x: &Buf<'c>,
        o: &[V<'c>],
        (ph, pw): (usize, usize),
        kind: PoolKind,
        (k, s): (i64, i64),
    ) -> V<'c> {
        let fx = &self.fx;
        {
            let init = match kind {
                PoolKind::Avg => fx.cf(0.0),
                PoolKind::Max => fx.cf(f64::NEG_INFINITY),
            };
            let acc = fx.acc_nest(b, &[k, k], init, &mut |b, r, acc| {
                let mut idx = o.to_vec();
                idx[ph] = fx.ilin(b, o[ph], s, Some(r[0]), 0);
                idx[pw] = fx.ilin(b, o[pw], s, Some(r[1]), 0);
                let v = fx.load(b, x.mem, &idx);
                match kind {
                    PoolKind::Avg => fx.addf(b, acc, v),
                    PoolKind::Max => fx.bin(b, "arith.maximumf", acc, v),
                }
            });
            match kind {
                PoolKind::Avg => fx.divf(b, acc, fx.cf((k * k) as f64)),
                PoolKind::Max => acc,
            }
        }
    }

    /// Inference batchnorm: `y = (x − running_mean) / √(running_var + ε) · γ + β`, one
    /// elementwise pass (vectors along the last axis when it is not the channel axis).
    fn batch_norm_eval(
        &self,
        node: &Node,
        y: &Buf<'c>,
        axis: Axis,
        eps: f64,
    ) -> Result<(), LowerError> {
        let fx = &self.fx;
        let x = self.input(node, 0)?;
        let pa = self.position(node, 0, axis)?;
        let (gamma, beta) = (self.param(node, 0)?, self.param(node, 1)?);
        let (run_mean, run_var) = (self.param(node, 2)?, self.param(node, 3)?);
        let channel = |b: &Block<'c>, c: V<'c>| {
            let rm = fx.load(b, run_mean, &[c]);
            let rv = fx.load(b, run_var, &[c]);
            let var_eps = fx.addf(b, rv, fx.cf(eps));
            let std = fx.unary(b, "math.sqrt", var_eps);
            let inv_std = fx.divf(b, fx.cf(1.0), std);
            (rm, inv_std, fx.load(b, gamma, &[c]), fx.load(b, beta, &[c]))
        };
        if fx.flat || pa + 1 == x.dims.len() {
            fx.par(fx.entry, &x.dims, |b, idx| {
                let stats = channel(b, idx[pa]);
                bn_apply(fx, b, (&x, y), idx, stats, false);
            });
            return Ok(());
        }
        let others = remove_at(&x.dims, pa);
        fx.par(fx.entry, &[x.dims[pa]], |b, c| {
            let stats = channel(b, c[0]);
            fx.par_vec(b, &others, |b, r, vector| {
                bn_apply(fx, b, (&x, y), &insert_at(r, pa, c[0]), stats, vector)
            });
        });
        Ok(())
    }

    /// Dropout with p > 0: `x · mask · 1/(1 − p)` with the training forward's mask argument
    /// (the product order of the interpreter's kernel); a copy of `x` without one (inference
    /// and evaluation, where dropout is the identity).
    fn dropout(&self, node: &Node, y: &Buf<'c>, p: f64) -> Result<(), LowerError> {
        let fx = &self.fx;
        let x = self.input(node, 0)?;
        let mask = self.train.mask_for(self.g, node);
        let scale = dropout_scale(p);
        fx.par_vec(fx.entry, &y.dims, |b, idx, vector| {
            let mut v = fx.load_w(b, x.mem, idx, vector);
            if let Some(mask) = mask {
                let m = fx.load_w(b, mask, idx, vector);
                v = fx.mulf(b, v, m);
                v = fx.mulf(b, v, fx.cf_as(scale, v));
            }
            fx.store_w(b, v, y.mem, idx, vector);
        });
        Ok(())
    }

    /// Training batchnorm (batch statistics, running statistics updated). Left to its pool
    /// when [`Self::pool_normalises`]: then only the statistics, into `y` = [2, C].
    #[allow(clippy::too_many_arguments)]
    fn batch_norm(
        &self,
        i: usize,
        node: &Node,
        y: &Buf<'c>,
        axis: Axis,
        eps: f64,
        momentum: f64,
    ) -> Result<(), LowerError> {
        let fx = &self.fx;
        let x = self.input(node, 0)?;
        let pa = self.position(node, 0, axis)?;
        let (gamma, beta) = (self.param(node, 0)?, self.param(node, 1)?);
        let others = remove_at(&x.dims, pa);
        let m: i64 = others.iter().product();
        // Vectors along the last axis need it to be one of `others`.
        let lanes_ok = pa + 1 != x.dims.len();
        let for_pool = self.pool_normalises(i);
        if for_pool && !fx.flat {
            // The pool computes the statistics in its own pass (`pool_with_batch_norm`).
            return Ok(());
        }
        let st = self.batch_stats(node, m, eps, momentum)?;
        if fx.flat {
            // Flat form: mean and 1/std per channel in a [2, C] buffer between kernels (a
            // nested parallel loop after side effects cannot be one GPU launch), each sum
            // split over the leading axes (`split_sums`), then one kernel normalises; left to
            // its pool, the statistics go straight to `y`.
            let stats = if for_pool {
                y.mem
            } else {
                fx.alloc(&[2, x.dims[pa]])
            };
            let at = |k: i64, c: V<'c>| [fx.cidx(k), c];
            let value = |b: &Block<'c>, o: &[V<'c>], r: &[V<'c>]| {
                fx.load(b, x.mem, &insert_at(r, pa, o[0]))
            };
            let inner = pa + 1 != x.dims.len();
            // One pass for both moments, shifted by the channel's first value
            // (`shifted_moments`).
            let first = vec![fx.cidx(0); others.len()];
            let shift = |b: &Block<'c>, c: V<'c>| fx.load(b, x.mem, &insert_at(&first, pa, c));
            let deviation = |b: &Block<'c>, o: &[V<'c>], r: &[V<'c>]| {
                let d = fx.subf(b, value(b, o, r), shift(b, o[0]));
                vec![d, fx.mulf(b, d, d)]
            };
            fx.split_sums(&[x.dims[pa]], &others, 2, inner, &deviation, &|b, o, s| {
                st.finish(fx, b, o[0], (shift(b, o[0]), s), stats)
            });
            if for_pool {
                return Ok(());
            }
            fx.par(fx.entry, &x.dims, |b, idx| {
                let c = idx[pa];
                let mean = fx.load(b, stats, &at(0, c));
                let inv_std = fx.load(b, stats, &at(1, c));
                let (g, be) = (fx.load(b, gamma, &[c]), fx.load(b, beta, &[c]));
                bn_apply(fx, b, (&x, y), idx, (mean, inv_std, g, be), false);
            });
            fx.stmt(fx.entry, "memref.dealloc", &[stats]);
            return Ok(());
        }
        // The shift of `shifted_moments`: the channel's first value.
        let first = vec![fx.cidx(0); others.len()];
        let shift = |b: &Block<'c>, c: V<'c>| fx.load(b, x.mem, &insert_at(&first, pa, c));
        if lanes_ok {
            // Channels before the contiguous axes (feature maps): statistics and normalisation
            // in memory order, through a [2, C] buffer of mean and 1/std.
            let stats = fx.alloc(&[2, x.dims[pa]]);
            fx.channel_sums(
                &x.dims,
                pa,
                2,
                &|b, idx, vector| {
                    let v = fx.load_w(b, x.mem, idx, vector);
                    let k = shift(b, idx[pa]);
                    let k = if vector { fx.splat(b, k) } else { k };
                    let d = fx.subf(b, v, k);
                    vec![d, fx.mulf(b, d, d)]
                },
                &|b, c, sums| st.finish(fx, b, c, (shift(b, c), sums), stats),
            );
            normalise_planes(
                fx,
                &x.dims,
                pa,
                stats,
                (gamma, beta),
                &|b, idx, ch, vector| bn_apply(fx, b, (&x, y), idx, ch, vector),
            );
            fx.stmt(fx.entry, "memref.dealloc", &[stats]);
            return Ok(());
        }
        fx.par(fx.entry, &[x.dims[pa]], |b, c| {
            let c = c[0];
            // One pass for the statistics (`shifted_moments`).
            let shift = shift(b, c);
            let sums = fx.sum_nest(b, &others, 2, lanes_ok, &mut |b, r, acc, vector| {
                let v = fx.load_w(b, x.mem, &insert_at(r, pa, c), vector);
                let k = if vector { fx.splat(b, shift) } else { shift };
                let d = fx.subf(b, v, k);
                let d2 = fx.mulf(b, d, d);
                vec![fx.addf(b, acc[0], d), fx.addf(b, acc[1], d2)]
            });
            let (mean, sq) = shifted_moments(fx, b, shift, (sums[0], sums[1]), m);
            let inv_std = st.update(fx, b, c, mean, sq);
            let g = fx.load(b, gamma, &[c]);
            let be = fx.load(b, beta, &[c]);
            let normalise = |b: &Block<'c>, r: &[V<'c>], vector: bool| {
                let idx = insert_at(r, pa, c);
                bn_apply(fx, b, (&x, y), &idx, (mean, inv_std, g, be), vector);
            };
            if lanes_ok {
                fx.par_vec(b, &others, normalise);
            } else {
                fx.par(b, &others, |b, r| normalise(b, r, false));
            }
        });
        Ok(())
    }

    /// Flatten of anything but a contiguous [T, B, C, H, W]: an explicit gather into
    /// [T', B, N] (T' = 1 when the input has no time axis).
    fn flatten_copy(&self, node: &Node, y: &Buf<'c>) -> Result<(), LowerError> {
        let fx = &self.fx;
        let x = self.input(node, 0)?;
        let xty = self.g.ty(node.inputs[0]);
        let pc = self.position(node, 0, Axis::C)?;
        let ph = self.position(node, 0, Axis::H)?;
        let pw = self.position(node, 0, Axis::W)?;
        let (h, w) = (x.dims[ph], x.dims[pw]);
        let pt = xty.position(Axis::T);
        let pb = xty.position(Axis::B);
        if xty.rank() != 3 + usize::from(pt.is_some()) + usize::from(pb.is_some()) {
            return Err(LowerError::new(format!(
                "flatten of {} is not supported",
                xty.shape_string()
            )));
        }
        fx.par(fx.entry, &y.dims, |b, o| {
            let n = o[2];
            let hw = fx.cidx(h * w);
            let c = fx.bin(b, "arith.divui", n, hw);
            let rest = fx.bin(b, "arith.remui", n, hw);
            let hh = fx.bin(b, "arith.divui", rest, fx.cidx(w));
            let ww = fx.bin(b, "arith.remui", rest, fx.cidx(w));
            let mut idx = vec![fx.cidx(0); xty.rank()];
            idx[pc] = c;
            idx[ph] = hh;
            idx[pw] = ww;
            if let Some(pt) = pt {
                idx[pt] = o[0];
            }
            if let Some(pb) = pb {
                idx[pb] = o[1];
            }
            let v = fx.load(b, x.mem, &idx);
            fx.store(b, v, y.mem, o);
        });
        Ok(())
    }

    fn reduce(
        &self,
        node: &Node,
        y: &Buf<'c>,
        kind: ReduceKind,
        axes: &[Axis],
        keepdim: bool,
        max: Option<&(Buf<'c>, Option<V<'c>>)>,
    ) -> Result<(), LowerError> {
        let fx = &self.fx;
        let x = self.operand(node, 0)?;
        let xty = self.g.ty(node.inputs[0]);
        let x_dims = to_i64(&shape_of(xty, self.batch, &node.name)?);
        let reduced: Vec<bool> = xty.dims.iter().map(|(a, _)| axes.contains(a)).collect();
        let red_dims: Vec<i64> = x_dims
            .iter()
            .zip(&reduced)
            .filter(|(_, r)| **r)
            .map(|(d, _)| *d)
            .collect();
        if fx.flat {
            let x = self.input(node, 0)?;
            return self.reduce_flat(node, (&x, y), kind, (&reduced, &red_dims), keepdim);
        }
        let load = |b: &Block<'c>, idx: &[V<'c>], vector: bool| x.load(fx, b, &x_dims, idx, vector);
        let own_argmax = (kind == ReduceKind::Max)
            .then(|| self.train.aux_for(self.g, node, grad::Aux::Argmax))
            .flatten();
        let mut outs = vec![(kind, y, own_argmax)];
        if let Some((y_max, argmax)) = max {
            outs.push((ReduceKind::Max, y_max, *argmax));
        }
        if self.reduce_streaming((&x_dims, &load), &outs, (&reduced, &red_dims), keepdim) {
            return Ok(());
        }
        // A max with its argmax saved, and the mean of the same elements if lowered together.
        let argmax_max = match (max, own_argmax) {
            (Some((y_max, argmax)), _) => Some((Some(y), y_max, *argmax)),
            (None, Some(at)) => Some((None, y, Some(at))),
            (None, None) => None,
        };
        if let Some(outs) = argmax_max {
            self.max_and_mean((&x_dims, &load), outs, (&reduced, &red_dims), keepdim);
            return Ok(());
        }
        let count: i64 = red_dims.iter().product();
        let (init, combine) = match kind {
            ReduceKind::Max => (f64::NEG_INFINITY, "arith.maximumf"),
            ReduceKind::Mean | ReduceKind::Sum => (0.0, "arith.addf"),
        };
        // The last axis is reduced (attention's pooling over H, W, or T, H, W, or C, H, W):
        // each output folds rows of contiguous elements, in vectors.
        if reduced.last() == Some(&true) {
            fx.par(fx.entry, &y.dims, |b, o| {
                let acc = fx.fold_nest(
                    b,
                    &red_dims,
                    &[init],
                    combine,
                    true,
                    &mut |b, r, acc, vector| {
                        let idx = reduce_index(&reduced, keepdim, o, r);
                        let v = load(b, &idx, vector);
                        vec![fx.bin(b, combine, acc[0], v)]
                    },
                )[0];
                let v = match kind {
                    ReduceKind::Mean => fx.divf(b, acc, fx.cf(count as f64)),
                    ReduceKind::Max | ReduceKind::Sum => acc,
                };
                fx.store(b, v, y.mem, o);
            });
            return Ok(());
        }
        let body = |b: &Block<'c>, o: &[V<'c>], vector: bool| {
            let init = match kind {
                ReduceKind::Max => fx.cf_w(f64::NEG_INFINITY, vector),
                ReduceKind::Mean | ReduceKind::Sum => fx.cf_w(0.0, vector),
            };
            let acc = fx.acc_nest(b, &red_dims, init, &mut |b, r, acc| {
                let idx = reduce_index(&reduced, keepdim, o, r);
                let v = load(b, &idx, vector);
                match kind {
                    ReduceKind::Max => fx.bin(b, "arith.maximumf", acc, v),
                    ReduceKind::Mean | ReduceKind::Sum => fx.addf(b, acc, v),
                }
            });
            let v = match kind {
                ReduceKind::Mean => fx.divf(b, acc, fx.cf_as(count as f64, acc)),
                ReduceKind::Max | ReduceKind::Sum => acc,
            };
            fx.store_w(b, v, y.mem, o, vector);
        };
        // Vectors along the kept last axis (its lanes are consecutive in x and y alike).
        if y.dims.last() == Some(&1) {
            fx.par(fx.entry, &y.dims, |b, o| body(b, o, false));
        } else {
            fx.par_vec(fx.entry, &y.dims, body);
        }
        Ok(())
    }

    /// [`Self::reduce`] over axes followed by kept ones (spatial attention's mean and max
    /// over T and C) in streaming order ([`Fx::stream_reduce`]); false when the layout does not
    /// suit. A max keeps the first maximum: reduced indices arrive in row-major order and only
    /// a strictly greater value (or a first NaN) replaces the running one.
    /// [`Self::reduce`] of a max and its argmax if saved, with the mean of the same elements
    /// when `y_mean` (a mean with its sibling max, [`Self::max_sibling`]): one
    /// [`first_max_and_sum`] per output (or per four outputs along a kept last axis), or in
    /// memory order by planes ([`Fx::plane_split`]).
    fn max_and_mean(
        &self,
        (x_dims, load): (&[i64], &ElemLoad<'_, 'c>),
        (y_mean, y_max, argmax): (Option<&Buf<'c>>, &Buf<'c>, Option<V<'c>>),
        (reduced, red_dims): (&[bool], &[i64]),
        keepdim: bool,
    ) {
        let with_sum = y_mean.is_some();
        let fx = &self.fx;
        let count = red_dims.iter().product::<i64>() as f64;
        let x_index = |o: &[V<'c>], r: &[V<'c>]| reduce_index(reduced, keepdim, o, r);
        if let Some(last_kept) = fx.plane_split(x_dims, reduced) {
            // In memory order: each plane's first maximum (index within the plane) and sum,
            // then per output its planes in order, an earlier plane's maximum kept on ties.
            let rest = &x_dims[last_kept + 1..];
            let plane_size: i64 = rest.iter().product();
            let outer: Vec<i64> = (0..=last_kept)
                .filter(|&k| reduced[k])
                .map(|k| x_dims[k])
                .collect();
            let lanes = if rest.last().is_some_and(|&w| w % LANES == 0) {
                MaxLanes::Block
            } else {
                MaxLanes::Scalar
            };
            let inits = [fx.cf(f64::NEG_INFINITY), fx.cf(0.0), fx.cf(0.0)];
            // The output's index from the kept axes' indices.
            let y_index = |kept: &[V<'c>]| -> Vec<V<'c>> {
                let mut k = kept.iter();
                reduced
                    .iter()
                    .filter_map(|&r| match (r, keepdim) {
                        (false, _) => k.next().copied(),
                        (true, true) => Some(fx.cidx(0)),
                        (true, false) => None,
                    })
                    .collect()
            };
            fx.by_planes(
                x_dims,
                reduced,
                last_kept,
                &inits,
                &|b, p| {
                    let (v, i, sum) =
                        first_max_and_sum(fx, b, rest, lanes, with_sum, &|b, r, vector| {
                            load(b, &[p, r].concat(), vector)
                        });
                    vec![v, i, sum.unwrap_or(v)]
                },
                &|b, _, r, acc, part| {
                    let base = fx.index_to_f32(b, linear(fx, b, r, &outer));
                    let at = fx.mulf(b, base, fx.cf(plane_size as f64));
                    let i = fx.addf(b, at, part[1]);
                    let wins = fx.first_max_wins(b, part[0], acc[0]);
                    vec![
                        fx.select(b, wins, part[0], acc[0]),
                        fx.select(b, wins, i, acc[1]),
                        fx.addf(b, acc[2], part[2]),
                    ]
                },
                &|b, kept, acc| {
                    let o = y_index(kept);
                    fx.store(b, acc[0], y_max.mem, &o);
                    if let Some(at) = argmax {
                        fx.store(b, acc[1], at, &o);
                    }
                    if let Some(y) = y_mean {
                        let mean = fx.divf(b, acc[2], fx.cf(count));
                        fx.store(b, mean, y.mem, &o);
                    }
                },
            );
            return;
        }
        let per_output = |b: &Block<'c>, o: &[V<'c>], lanes: MaxLanes, vector: bool| {
            let (v, i, sum) =
                first_max_and_sum(fx, b, red_dims, lanes, with_sum, &|b, r, vector| {
                    load(b, &x_index(o, r), vector)
                });
            fx.store_w(b, v, y_max.mem, o, vector);
            if let Some(at) = argmax {
                fx.store_w(b, i, at, o, vector);
            }
            if let (Some(y), Some(sum)) = (y_mean, sum) {
                let mean = fx.divf(b, sum, fx.cf_w(count, vector));
                fx.store_w(b, mean, y.mem, o, vector);
            }
        };
        if reduced.last() == Some(&false) && y_max.dims.last().is_some_and(|&w| w >= LANES) {
            fx.par_vec(fx.entry, &y_max.dims, |b, o, vector| {
                let lanes = if vector {
                    MaxLanes::Outputs
                } else {
                    MaxLanes::Scalar
                };
                per_output(b, o, lanes, vector);
            });
        } else {
            let contiguous =
                reduced.last() == Some(&true) && red_dims.last().is_some_and(|&w| w % LANES == 0);
            let lanes = if contiguous {
                MaxLanes::Block
            } else {
                MaxLanes::Scalar
            };
            fx.par(fx.entry, &y_max.dims, |b, o| per_output(b, o, lanes, false));
        }
    }

    fn reduce_streaming(
        &self,
        (x_dims, load): (&[i64], &ElemLoad<'_, 'c>),
        outs: &[(ReduceKind, &Buf<'c>, Option<V<'c>>)],
        (reduced, red_dims): (&[bool], &[i64]),
        keepdim: bool,
    ) -> bool {
        let fx = &self.fx;
        // The output's index of input element `idx`.
        let y_index = |idx: &[V<'c>]| -> Vec<V<'c>> {
            idx.iter()
                .zip(reduced)
                .filter_map(|(v, r)| match (r, keepdim) {
                    (false, _) => Some(*v),
                    (true, true) => Some(fx.cidx(0)),
                    (true, false) => None,
                })
                .collect()
        };
        let before = |b: &Block<'c>, idx: &[V<'c>], vector: bool| {
            let yi = y_index(idx);
            for &(kind, y, argmax) in outs {
                let init = match kind {
                    ReduceKind::Max => f64::NEG_INFINITY,
                    ReduceKind::Mean | ReduceKind::Sum => 0.0,
                };
                fx.store_w(b, fx.cf_w(init, vector), y.mem, &yi, vector);
                if let Some(at) = argmax {
                    fx.store_w(b, fx.cf_w(0.0, vector), at, &yi, vector);
                }
            }
        };
        let body = |b: &Block<'c>, idx: &[V<'c>], r: &[V<'c>], vector: bool| {
            let yi = y_index(idx);
            let v = load(b, idx, vector);
            for &(kind, y, argmax) in outs {
                let best = fx.load_w(b, y.mem, &yi, vector);
                let next = match (kind, argmax) {
                    (ReduceKind::Max, Some(at)) => {
                        let wins = fx.first_max_wins(b, v, best);
                        let i = fx.index_to_f32(b, linear(fx, b, r, red_dims));
                        let i = if vector { fx.splat(b, i) } else { i };
                        let old = fx.load_w(b, at, &yi, vector);
                        let i = fx.select(b, wins, i, old);
                        fx.store_w(b, i, at, &yi, vector);
                        fx.select(b, wins, v, best)
                    }
                    (ReduceKind::Max, None) => fx.bin(b, "arith.maximumf", best, v),
                    (ReduceKind::Mean | ReduceKind::Sum, _) => fx.addf(b, best, v),
                };
                fx.store_w(b, next, y.mem, &yi, vector);
            }
        };
        let count: i64 = red_dims.iter().product();
        let after = |b: &Block<'c>, idx: &[V<'c>], vector: bool| {
            let yi = y_index(idx);
            for &(kind, y, _) in outs {
                if kind == ReduceKind::Mean {
                    let v = fx.load_w(b, y.mem, &yi, vector);
                    let v = fx.divf(b, v, fx.cf_w(count as f64, vector));
                    fx.store_w(b, v, y.mem, &yi, vector);
                }
            }
        };
        fx.stream_reduce(x_dims, reduced, &before, &body, &after)
    }

    /// [`Self::reduce`] in flat form: one thread per output, or with few outputs, reduced axes
    /// in parallel too ([`Fx::split_fold`]). A max reduction that saves its argmax splits only
    /// leading axes ([`Fx::split_axes`]) and keeps each part's first maximum with its linear
    /// index over the reduced axes;
    /// the parts are then combined in order with the same rule, so the first maximum overall
    /// wins, as unsplit.
    fn reduce_flat(
        &self,
        node: &Node,
        (x, y): (&Buf<'c>, &Buf<'c>),
        kind: ReduceKind,
        (reduced, red_dims): (&[bool], &[i64]),
        keepdim: bool,
    ) -> Result<(), LowerError> {
        let fx = &self.fx;
        let x_index = |o: &[V<'c>], r: &[V<'c>]| reduce_index(reduced, keepdim, o, r);
        let count: i64 = red_dims.iter().product();
        let argmax = (kind == ReduceKind::Max)
            .then(|| self.train.aux_for(self.g, node, grad::Aux::Argmax))
            .flatten();
        let Some(at) = argmax else {
            let (init, combine) = match kind {
                ReduceKind::Max => (f64::NEG_INFINITY, "arith.maximumf"),
                ReduceKind::Mean | ReduceKind::Sum => (0.0, "arith.addf"),
            };
            let terms =
                |b: &Block<'c>, o: &[V<'c>], r: &[V<'c>]| vec![fx.load(b, x.mem, &x_index(o, r))];
            let inner = reduced.last() == Some(&true);
            fx.split_fold(
                &y.dims,
                red_dims,
                &[init],
                combine,
                inner,
                &terms,
                &|b, o, acc| {
                    let v = match kind {
                        ReduceKind::Mean => fx.divf(b, acc[0], fx.cf(count as f64)),
                        ReduceKind::Max | ReduceKind::Sum => acc[0],
                    };
                    fx.store(b, v, y.mem, o);
                },
            );
            return Ok(());
        };
        let lead = fx.split_axes(y.dims.iter().product(), red_dims);
        if lead == 0 {
            fx.par(fx.entry, &y.dims, |b, o| {
                let read = |b: &Block<'c>, r: &[V<'c>], _: bool| fx.load(b, x.mem, &x_index(o, r));
                let (v, i) = first_max(fx, b, red_dims, MaxLanes::Scalar, &read);
                fx.store(b, v, y.mem, o);
                fx.store(b, i, at, o);
            });
            return Ok(());
        }
        let (outer, inner) = red_dims.split_at(lead);
        let inner_n: i64 = inner.iter().product();
        let partials = fx.partials(2, &[outer, &y.dims[..]].concat());
        let at_part = |k: i64, idx: &[V<'c>]| {
            let mut at = vec![fx.cidx(k)];
            at.extend_from_slice(idx);
            at
        };
        let mut dims = outer.to_vec();
        dims.extend_from_slice(&y.dims);
        fx.par(fx.entry, &dims, |b, idx| {
            let (l, o) = idx.split_at(outer.len());
            let read = |b: &Block<'c>, r: &[V<'c>], _: bool| {
                let mut full = l.to_vec();
                full.extend_from_slice(r);
                fx.load(b, x.mem, &x_index(o, &full))
            };
            let (v, i) = first_max(fx, b, inner, MaxLanes::Scalar, &read);
            // The part's first index over all reduced axes (exact in f32 below 2^24).
            let base = fx.ilin(b, linear(fx, b, l, outer), inner_n, None, 0);
            let i = fx.addf(b, fx.index_to_f32(b, base), i);
            fx.store(b, v, partials, &at_part(0, idx));
            fx.store(b, i, partials, &at_part(1, idx));
        });
        fx.par(fx.entry, &y.dims, |b, o| {
            let inits = [fx.cf(f64::NEG_INFINITY), fx.cf(0.0)];
            let best = fx.carry_nest(b, outer, &inits, &[], &mut |b, l, carried| {
                let mut idx = l.to_vec();
                idx.extend_from_slice(o);
                let v = fx.load(b, partials, &at_part(0, &idx));
                let i = fx.load(b, partials, &at_part(1, &idx));
                let wins = fx.first_max_wins(b, v, carried[0]);
                vec![
                    fx.select(b, wins, v, carried[0]),
                    fx.select(b, wins, i, carried[1]),
                ]
            });
            fx.store(b, best[0], y.mem, o);
            fx.store(b, best[1], at, o);
        });
        fx.stmt(fx.entry, "memref.dealloc", &[partials]);
        Ok(())
    }

    fn concat(&self, node: &Node, y: &Buf<'c>, axis: Axis) -> Result<(), LowerError> {
        let fx = &self.fx;
        let pa = self.position(node, 0, axis)?;
        let mut offset = 0;
        for k in 0..node.inputs.len() {
            let x = self.input(node, k)?;
            fx.par(fx.entry, &x.dims, |b, ivs| {
                let v = fx.load(b, x.mem, ivs);
                let mut idx = ivs.to_vec();
                idx[pa] = fx.ilin(b, ivs[pa], 1, None, offset);
                fx.store(b, v, y.mem, &idx);
            });
            offset += x.dims[pa];
        }
        Ok(())
    }

    fn unary(&self, node: &Node, y: &Buf<'c>, op: UnaryOp) -> Result<(), LowerError> {
        let fx = &self.fx;
        let x = self.operand(node, 0)?;
        fx.par_vec(fx.entry, &y.dims, |b, o, vector| {
            let v = x.load(fx, b, &y.dims, o, vector);
            let r = match op {
                UnaryOp::Relu => fx.bin(b, "arith.maximumf", v, fx.cf_as(0.0, v)),
                UnaryOp::Sigmoid => fx.sigmoid(b, v),
            };
            fx.store_w(b, r, y.mem, o, vector);
        });
        Ok(())
    }

    fn binary(&self, node: &Node, y: &Buf<'c>, op: BinaryOp) -> Result<(), LowerError> {
        let fx = &self.fx;
        let a = self.operand(node, 0)?;
        let c = self.operand(node, 1)?;
        fx.par_vec(fx.entry, &y.dims, |b, o, vector| {
            let va = a.load(fx, b, &y.dims, o, vector);
            let vc = c.load(fx, b, &y.dims, o, vector);
            let r = match op {
                BinaryOp::Add => fx.addf(b, va, vc),
                BinaryOp::Mul => fx.mulf(b, va, vc),
            };
            fx.store_w(b, r, y.mem, o, vector);
        });
        Ok(())
    }

    /// A neuron layer. Flat (GPU) form and the training forward: every element runs its own
    /// `scf.for` over T, the state variables carried as `iter_args`. Otherwise the innermost
    /// axis is vectorised in groups of [`SCAN_COPIES`] `vector<4xf32>`, then single vectors,
    /// then a scalar tail; with [`SCAN_TIME_OUTER`] the time loop is outermost and the states
    /// live in buffers (`x[t]` and `y[t]` stream contiguously: measured 1.3× faster on the LIF
    /// bench than T innermost with the states in registers, whose `x[t]` loads stride B·N).
    fn scan(
        &self,
        node: &Node,
        y: &Buf<'c>,
        neuron: &NeuronProgram,
        emit: ScanEmit,
    ) -> Result<(), LowerError> {
        check_program(neuron)?;
        let fx = &self.fx;
        let x = self.input(node, 0)?;
        let gate = if node.inputs.len() > 1 {
            Some(self.input(node, 1)?)
        } else {
            None
        };
        let pt = self.position(node, 0, Axis::T)?;
        let steps = x.dims[pt];
        // Learnable scalars are [1]-shaped parameters: read each once, outside the loops.
        // Flat form reads them inside the kernel: the host never touches device memory.
        let mut learn_params = Vec::new();
        for k in 0..neuron.learns.len() {
            learn_params.push(self.param(node, k)?);
        }
        let load_learns = |b: &Block<'c>| -> Vec<V<'c>> {
            learn_params
                .iter()
                .map(|p| fx.load(b, *p, &[fx.cidx(0)]))
                .collect()
        };
        let entry_learns = if fx.flat {
            Vec::new()
        } else {
            load_learns(fx.entry)
        };
        let others = remove_at(&x.dims, pt);
        let saved_states = self.train.states_for(self.g, node);
        let last = x.dims.len() - 1;
        let width = x.dims[last];
        let gate_ok = gate.as_ref().is_none_or(|g| {
            g.dims.len() == x.dims.len() && (g.dims[last] == 1 || g.dims[last] == width)
        });
        let saving_inner = saved_states.is_some() && !SCAN_TIME_OUTER;
        if fx.flat || saving_inner || pt == last || width < LANES || !gate_ok {
            return self.scan_part(
                node,
                y,
                neuron,
                emit,
                (&x, gate.as_ref(), pt, steps),
                &others,
                None,
                (1, 1),
                &|b: &Block<'c>| {
                    if fx.flat {
                        load_learns(b)
                    } else {
                        entry_learns.clone()
                    }
                },
            );
        }
        let vec_learns: Vec<V<'c>> = entry_learns
            .iter()
            .map(|v| fx.splat(fx.entry, *v))
            .collect();
        let outer = &others[..others.len() - 1];
        let parts = vector_parts(width);
        if SCAN_TIME_OUTER {
            // States in buffers; for t: every element (streams x[t] and y[t] contiguously).
            let bufs: Vec<V<'c>> = neuron.states.iter().map(|_| fx.alloc(&others)).collect();
            fx.par(fx.entry, &others, |b, o| {
                for (buf, (_, v)) in bufs.iter().zip(&neuron.states) {
                    fx.store(b, fx.cf(*v), *buf, o);
                }
            });
            let (_, r) = fx.for_carry(fx.entry, steps, &[], |b, t, _| {
                let mut r = Ok(());
                for &(start, count, lanes, copies) in &parts {
                    let mut dims = outer.to_vec();
                    dims.push(count);
                    let learns = if lanes == 1 {
                        &entry_learns
                    } else {
                        &vec_learns
                    };
                    r = self.scan_step_at(
                        b,
                        neuron,
                        emit,
                        (&x, gate.as_ref(), y, pt),
                        (t, &bufs, saved_states, &others),
                        &dims,
                        start,
                        (lanes, copies),
                        learns,
                    );
                    if r.is_err() {
                        break;
                    }
                }
                (vec![], r)
            });
            r?;
            for buf in bufs {
                fx.stmt(fx.entry, "memref.dealloc", &[buf]);
            }
            return Ok(());
        }
        for (start, count, lanes, copies) in parts {
            let mut dims = outer.to_vec();
            dims.push(count);
            let learns = if lanes == 1 {
                entry_learns.clone()
            } else {
                vec_learns.clone()
            };
            self.scan_part(
                node,
                y,
                neuron,
                emit,
                (&x, gate.as_ref(), pt, steps),
                &dims,
                Some(start),
                (lanes, copies),
                &|_: &Block<'c>| learns.clone(),
            )?;
        }
        Ok(())
    }

    /// Time-outer form: step `t` of every element in `dims` (groups of `lanes × copies` along
    /// the last axis from `start`), the states read from and written back to `bufs`; in the
    /// training forward the states at the start of the step also go to `saved[t][s][element]`
    /// (element = the row-major index over `others`, the scan's axes without T).
    #[allow(clippy::too_many_arguments)]
    fn scan_step_at(
        &self,
        b: &Block<'c>,
        neuron: &NeuronProgram,
        emit: ScanEmit,
        (x, gate, y, pt): (&Buf<'c>, Option<&Buf<'c>>, &Buf<'c>, usize),
        (t, bufs, saved, others): (V<'c>, &[V<'c>], Option<V<'c>>, &[i64]),
        dims: &[i64],
        start: i64,
        (lanes, copies): (i64, i64),
        learns: &[V<'c>],
    ) -> Result<(), LowerError> {
        let fx = &self.fx;
        let vector = lanes > 1;
        fx.par(b, dims, |b, o| {
            for c in 0..copies {
                let base = lane_base(fx, b, o, start, (lanes, copies), c);
                let idx = insert_at(&base, pt, t);
                let carried: Vec<V<'c>> = bufs
                    .iter()
                    .map(|m| fx.load_w(b, *m, &base, vector))
                    .collect();
                if let Some(buf) = saved {
                    let e = linear(fx, b, &base, others);
                    for (s, v) in carried.iter().enumerate() {
                        fx.store_w(b, *v, buf, &[t, fx.cidx(s as i64), e], vector);
                    }
                }
                let input = fx.load_w(b, x.mem, &idx, vector);
                let gate_f = gate.map(|g| {
                    let idx = &idx;
                    move || fx.load_bcast(b, g.mem, &g.dims, &x.dims, idx, vector)
                });
                let gate_f = gate_f.as_ref().map(|f| f as &dyn Fn() -> V<'c>);
                let (states, out) =
                    self.scan_step(b, neuron, emit, input, &carried, learns, gate_f)?;
                for (s, m) in states.iter().zip(bufs) {
                    fx.store_w(b, *s, *m, &base, vector);
                }
                fx.store_w(b, out, y.mem, &idx, vector);
            }
            Ok(())
        })
    }

    /// One loop nest of a scan over `dims` (the non-T axes; with `offset`, the last of them
    /// counts groups of `lanes × copies` elements starting at that element).
    #[allow(clippy::too_many_arguments)]
    fn scan_part(
        &self,
        node: &Node,
        y: &Buf<'c>,
        neuron: &NeuronProgram,
        emit: ScanEmit,
        (x, gate, pt, steps): (&Buf<'c>, Option<&Buf<'c>>, usize, i64),
        dims: &[i64],
        offset: Option<i64>,
        (lanes, copies): (i64, i64),
        learns_in: &dyn Fn(&Block<'c>) -> Vec<V<'c>>,
    ) -> Result<(), LowerError> {
        let fx = &self.fx;
        let others = remove_at(&x.dims, pt);
        let saved_states = self.train.states_for(self.g, node);
        let n_states = neuron.states.len();
        let vector = lanes > 1;
        fx.par(fx.entry, dims, |b, o| {
            let learns = learns_in(b);
            // Element index (over `others`) of each copy's first lane.
            let bases: Vec<Vec<V<'c>>> = (0..copies)
                .map(|c| match offset {
                    None => o.to_vec(),
                    Some(start) => lane_base(fx, b, o, start, (lanes, copies), c),
                })
                .collect();
            let mut inits = Vec::new();
            for _ in 0..copies {
                for (_, v) in &neuron.states {
                    inits.push(fx.cf_w(*v, vector));
                }
            }
            let (_, r) = fx.for_carry(b, steps, &inits, |b, t, carried| {
                let mut next = Vec::with_capacity(carried.len());
                let mut result = Ok(());
                for (c, base) in bases.iter().enumerate() {
                    let carried = &carried[c * n_states..(c + 1) * n_states];
                    let idx = insert_at(base, pt, t);
                    if let Some(buf) = saved_states {
                        grad::store_states(fx, b, buf, t, base, &others, carried);
                    }
                    let input = fx.load_w(b, x.mem, &idx, vector);
                    // Loaded where the program fires (as the scalar form always did).
                    let idx_ref = &idx;
                    let gate_v = gate.map(|g| {
                        move || fx.load_bcast(b, g.mem, &g.dims, &x.dims, idx_ref, vector)
                    });
                    let gate_v = gate_v.as_ref().map(|f| f as &dyn Fn() -> V<'c>);
                    match self.scan_step(b, neuron, emit, input, carried, &learns, gate_v) {
                        Ok((states, out)) => {
                            fx.store_w(b, out, y.mem, &idx, vector);
                            next.extend(states);
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                if result.is_err() {
                    return (carried.to_vec(), result);
                }
                (next, result)
            });
            r
        })
    }

    /// One time step of a neuron program: the next states and the emitted value.
    #[allow(clippy::too_many_arguments)]
    fn scan_step(
        &self,
        b: &Block<'c>,
        neuron: &NeuronProgram,
        emit: ScanEmit,
        input: V<'c>,
        carried: &[V<'c>],
        learns: &[V<'c>],
        gate: Option<&dyn Fn() -> V<'c>>,
    ) -> Result<(Vec<V<'c>>, V<'c>), LowerError> {
        let fx = &self.fx;
        let mut env = Env {
            input,
            states: carried.to_vec(),
            learns,
            locals: vec![None; neuron.locals.len()],
        };
        for (k, (target, expr)) in neuron.steps.iter().enumerate() {
            if k == neuron.fire_step
                && let Some(g) = gate
            {
                let g = g();
                env.states[0] = fx.mulf(b, env.states[0], g);
            }
            let v = eval(fx, b, expr, &env)?;
            match target {
                Target::State(s) => env.states[*s] = v,
                Target::Local(l) => env.locals[*l] = Some(v),
            }
        }
        let out = match emit {
            ScanEmit::Spikes => env.locals.get(neuron.spike).copied().flatten(),
            ScanEmit::Membrane => env.states.first().copied(),
        };
        match out {
            Some(v) => Ok((env.states, v)),
            None => Err(LowerError::new(format!(
                "neuron `{}` never assigns its output",
                neuron.name
            ))),
        }
    }
}

/// Indices into a broadcast operand: size-1 axes that the result widens read element 0.
fn broadcast<'c>(fx: &Fx<'c, '_>, src: &[i64], dst: &[i64], ivs: &[V<'c>]) -> Vec<V<'c>> {
    src.iter()
        .zip(dst)
        .zip(ivs)
        .map(|((s, d), iv)| if s == d { *iv } else { fx.cidx(0) })
        .collect()
}

/// `y[idx] = (x[idx] − mean) / std · γ + β` for one channel's `(mean, std, γ, β)` (scalars,
/// splat when `vector`): batchnorm's normalisation, in training and inference alike.
fn bn_apply<'c>(
    fx: &Fx<'c, '_>,
    b: &Block<'c>,
    (x, y): (&Buf<'c>, &Buf<'c>),
    idx: &[V<'c>],
    (mean, inv_std, g, be): (V<'c>, V<'c>, V<'c>, V<'c>),
    vector: bool,
) {
    let v = fx.load_w(b, x.mem, idx, vector);
    let out = bn_affine(fx, b, v, (mean, inv_std, g, be), vector);
    fx.store_w(b, out, y.mem, idx, vector);
}

/// `(v − mean) · inv_std · γ + β`: batchnorm's map of one value (or lane vector).
/// A training batchnorm's per-channel bookkeeping once its batch statistics are known.
struct BatchStats<'c> {
    run_mean: V<'c>,
    run_var: V<'c>,
    /// The backward's `[2, C]` batch mean and 1/std, when training.
    saved: Option<V<'c>>,
    /// Elements per channel.
    m: i64,
    eps: f64,
    momentum: f64,
}

impl<'c> BatchStats<'c> {
    /// From channel `c`'s shifted sums (Σd, Σd², d = x − `shift`): [`Self::update`], and the
    /// mean and 1/std stored into `stats` ([2, C]).
    fn finish(
        &self,
        fx: &Fx<'c, '_>,
        b: &Block<'c>,
        c: V<'c>,
        (shift, sums): (V<'c>, &[V<'c>]),
        stats: V<'c>,
    ) {
        let (mean, sq) = shifted_moments(fx, b, shift, (sums[0], sums[1]), self.m);
        let inv_std = self.update(fx, b, c, mean, sq);
        fx.store(b, mean, stats, &[fx.cidx(0), c]);
        fx.store(b, inv_std, stats, &[fx.cidx(1), c]);
    }

    /// From channel `c`'s batch mean and Σ(x − mean)²: the running statistics' update and
    /// the saved batch statistics; returns 1/std.
    fn update(&self, fx: &Fx<'c, '_>, b: &Block<'c>, c: V<'c>, mean: V<'c>, sq: V<'c>) -> V<'c> {
        let m = self.m;
        let var = fx.divf(b, sq, fx.cf(m as f64));
        let keep = fx.cf(1.0 - self.momentum);
        let mom = fx.cf(self.momentum);
        let rm = fx.load(b, self.run_mean, &[c]);
        let rm_keep = fx.mulf(b, keep, rm);
        let rm_new = fx.mulf(b, mom, mean);
        let rm_new = fx.addf(b, rm_keep, rm_new);
        fx.store(b, rm_new, self.run_mean, &[c]);
        // PyTorch keeps the unbiased variance in the running statistics.
        let unbiased = if m > 1 {
            fx.divf(b, sq, fx.cf((m - 1) as f64))
        } else {
            var
        };
        let rv = fx.load(b, self.run_var, &[c]);
        let rv_keep = fx.mulf(b, keep, rv);
        let rv_new = fx.mulf(b, mom, unbiased);
        let rv_new = fx.addf(b, rv_keep, rv_new);
        fx.store(b, rv_new, self.run_var, &[c]);
        let var_eps = fx.addf(b, var, fx.cf(self.eps));
        let std = fx.unary(b, "math.sqrt", var_eps);
        let inv_std = fx.divf(b, fx.cf(1.0), std);
        if let Some(saved) = self.saved {
            fx.store(b, mean, saved, &[fx.cidx(0), c]);
            fx.store(b, inv_std, saved, &[fx.cidx(1), c]);
        }
        inv_std
    }
}

/// A batchnorm channel's mean, 1/std, γ and β.
type BnChannel<'c> = (V<'c>, V<'c>, V<'c>, V<'c>);
/// [`normalise_planes`]'s body: `(block, index, channel, vector)`.
type PlaneApply<'a, 'c> = dyn Fn(&Block<'c>, &[V<'c>], BnChannel<'c>, bool) + 'a;

/// Per plane of `dims` (the indices up to the channel axis `pc`), in memory order: channel
/// `c`'s mean and 1/std from `stats` ([2, C]) and its γ and β, then `apply(block, index,
/// (mean, 1/std, γ, β), vector)` along the plane's contiguous rest.
fn normalise_planes<'c>(
    fx: &Fx<'c, '_>,
    dims: &[i64],
    pc: usize,
    stats: V<'c>,
    (gamma, beta): (V<'c>, V<'c>),
    apply: &PlaneApply<'_, 'c>,
) {
    let (planes, rest) = dims.split_at(pc + 1);
    fx.par(fx.entry, planes, |b, plane| {
        let c = plane[pc];
        let mean = fx.load(b, stats, &[fx.cidx(0), c]);
        let inv_std = fx.load(b, stats, &[fx.cidx(1), c]);
        let (g, be) = (fx.load(b, gamma, &[c]), fx.load(b, beta, &[c]));
        fx.for_vec(b, rest, &|b, r, vector| {
            apply(b, &[plane, r].concat(), (mean, inv_std, g, be), vector)
        });
    });
}

/// A channel's mean and Σ(x − mean)² from the sums of d = x − `shift` and of d² over its `m`
/// elements. One pass for both sums: Σ(x − mean)² = Σd² − (Σd)²/m cancels only as far as
/// (mean − shift)² exceeds the variance, which a shift taken from the channel's own values
/// rarely does by much (unshifted, E[x²] − E[x]² loses everything to a large mean); a second
/// pass over the largest feature maps for the exact deviations costs more than the rounding
/// it saves.
fn shifted_moments<'c>(
    fx: &Fx<'c, '_>,
    b: &Block<'c>,
    shift: V<'c>,
    (sum_d, sum_d2): (V<'c>, V<'c>),
    m: i64,
) -> (V<'c>, V<'c>) {
    let mean_d = fx.divf(b, sum_d, fx.cf(m as f64));
    let mean = fx.addf(b, shift, mean_d);
    let sq = fx.subf(b, sum_d2, fx.mulf(b, sum_d, mean_d));
    (mean, fx.bin(b, "arith.maximumf", sq, fx.cf(0.0)))
}

fn bn_affine<'c>(
    fx: &Fx<'c, '_>,
    b: &Block<'c>,
    v: V<'c>,
    (mean, inv_std, g, be): (V<'c>, V<'c>, V<'c>, V<'c>),
    vector: bool,
) -> V<'c> {
    let w = |s: V<'c>| if vector { fx.splat(b, s) } else { s };
    let d = fx.subf(b, v, w(mean));
    // A product with the reciprocal, as PyTorch's kernels do: a vector division per element
    // cost more than the rest of the pass.
    let n = fx.mulf(b, d, w(inv_std));
    let s = fx.mulf(b, n, w(g));
    fx.addf(b, s, w(be))
}

/// How a vectorised scan covers `width` elements of its last axis: `(start, count, lanes,
/// copies)` parts of [`SCAN_COPIES`] vectors, then single vectors, then a scalar tail.
fn vector_parts(width: i64) -> Vec<(i64, i64, i64, i64)> {
    let group = LANES * SCAN_COPIES;
    let big = width / group;
    let mid = (width - big * group) / LANES;
    let tail = width - big * group - mid * LANES;
    [
        (0, big, LANES, SCAN_COPIES),
        (big * group, mid, LANES, 1),
        (big * group + mid * LANES, tail, 1, 1),
    ]
    .into_iter()
    .filter(|p| p.1 > 0)
    .collect()
}

/// The indices of copy `c`'s first lane in a [`vector_parts`] part starting at `start`: `o`
/// with its last index turned from a group number into an element index.
fn lane_base<'c>(
    fx: &Fx<'c, '_>,
    b: &Block<'c>,
    o: &[V<'c>],
    start: i64,
    (lanes, copies): (i64, i64),
    c: i64,
) -> Vec<V<'c>> {
    let mut base = o.to_vec();
    let j = base.len() - 1;
    base[j] = fx.ilin(b, o[j], lanes * copies, None, start + c * lanes);
    base
}

/// The batchnorm that average-pool `pool` reads, when the pool's gradient can stand in for the
/// batchnorm's (the MA-SNN conv layers' `bn -> pool.avg(2)`): 2×2 windows at stride 2 tiling
/// the last two axes, the batchnorm's output read by nothing else (in every loop form). The
/// batchnorm's backward then reads each pooled value for its window instead of a full-size
/// gradient the pool's backward would write first (a write and two reads of the largest
/// feature maps per step); in the training forward the pool normalises
/// ([`Lowering::pool_normalises`]).
fn pooled_batch_norm(g: &Graph, pool: &Node) -> Option<usize> {
    let Op::Pool {
        kind: PoolKind::Avg,
        kernel: 2,
        stride: 2,
    } = pool.op
    else {
        return None;
    };
    let x = pool.inputs.first()?.0;
    let ty = &g.nodes[x].ty;
    let rank = ty.rank();
    let spatial = (ty.position(Axis::H)?, ty.position(Axis::W)?);
    let tiles = rank >= 3
        && spatial == (rank - 2, rank - 1)
        && ty.dims[rank - 2].1.is_multiple_of(2)
        && ty.dims[rank - 1].1.is_multiple_of(2);
    let only_reader = g.outputs.iter().all(|o| o.0 != x)
        && g.nodes
            .iter()
            .flat_map(|n| &n.inputs)
            .filter(|v| v.0 == x)
            .count()
            == 1;
    let is_bn = matches!(g.nodes[x].op, Op::BatchNorm { axis, .. } if ty.position(axis).is_some_and(|a| a + 2 < rank));
    (tiles && only_reader && is_bn).then_some(x)
}

/// Row `kh` of the 2×2 windows (stride 2) of four consecutive outputs at `o` of `x`: the two
/// vectors of eight inputs, and their even and odd columns (each window's left and right).
fn window_row<'c>(
    fx: &Fx<'c, '_>,
    b: &Block<'c>,
    x: V<'c>,
    o: &[V<'c>],
    (ph, pw): (usize, usize),
    kh: i64,
) -> (V<'c>, V<'c>, V<'c>, V<'c>) {
    let mut idx = o.to_vec();
    idx[ph] = fx.ilin(b, o[ph], 2, None, kh);
    idx[pw] = fx.ilin(b, o[pw], 2, None, 0);
    let lo = fx.vload(b, x, &idx);
    idx[pw] = fx.ilin(b, o[pw], 2, None, LANES);
    let hi = fx.vload(b, x, &idx);
    let even = fx.shuffle(b, lo, hi, [0, 2, 4, 6]);
    let odd = fx.shuffle(b, lo, hi, [1, 3, 5, 7]);
    (lo, hi, even, odd)
}

/// Whether a `k`×`k` pooling with stride `s` over the width axis `pw` (of `rank` axes) runs
/// four outputs per vector: 2×2 windows at stride 2 along the last axis, with vectors.
fn pairs_in_lanes(fx: &Fx<'_, '_>, k: i64, s: i64, pw: usize, rank: usize) -> bool {
    k == 2 && s == 2 && pw + 1 == rank && !fx.flat
}

/// The index into a reduction's input from its output index `o` and the reduced axes'
/// indices `r` (`reduced` marks the input's reduced axes; with `keepdim` the output keeps them
/// at size 1).
fn reduce_index<'c>(reduced: &[bool], keepdim: bool, o: &[V<'c>], r: &[V<'c>]) -> Vec<V<'c>> {
    let (mut k, mut kept) = (0, 0);
    let mut idx = Vec::with_capacity(reduced.len());
    for (pos, red) in reduced.iter().enumerate() {
        if *red {
            idx.push(r[k]);
            k += 1;
        } else {
            idx.push(o[if keepdim { pos } else { kept }]);
            kept += 1;
        }
    }
    idx
}

/// The row-major indices over `dims` of the linear index `i` (the inverse of [`linear`]).
fn delinearise<'c>(fx: &Fx<'c, '_>, b: &Block<'c>, i: V<'c>, dims: &[i64]) -> Vec<V<'c>> {
    let mut r = vec![fx.cidx(0); dims.len()];
    let mut rest = i;
    for (k, &d) in dims.iter().enumerate().rev() {
        if k == 0 {
            r[k] = rest;
        } else {
            r[k] = fx.bin(b, "arith.remui", rest, fx.cidx(d));
            rest = fx.bin(b, "arith.divui", rest, fx.cidx(d));
        }
    }
    r
}

/// How [`first_max`] uses vectors.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MaxLanes {
    /// One output, one element at a time.
    Scalar,
    /// Four outputs at once, one per lane (a kept last axis).
    Outputs,
    /// One output, four consecutive elements of the last axis of the nest at a time (its
    /// length a multiple of four); the lanes' winners are combined at the end.
    Block,
}

/// The first maximum of `value` over the nest `dims` in row-major order, by
/// [`Fx::first_max_wins`]'s rule: `(value, linear index over dims as f32)`, vectors with
/// [`MaxLanes::Outputs`]. `value(block, r, vector)` loads the element(s) at reduced indices `r`.
fn first_max<'c>(
    fx: &Fx<'c, '_>,
    b: &Block<'c>,
    dims: &[i64],
    lanes: MaxLanes,
    value: &dyn Fn(&Block<'c>, &[V<'c>], bool) -> V<'c>,
) -> (V<'c>, V<'c>) {
    let (v, i, _) = first_max_and_sum(fx, b, dims, lanes, false, value);
    (v, i)
}

/// [`first_max`], and with `sum` also the sum of the same elements from the same loads
/// (attention's average and max pooling of one map: one pass instead of two).
fn first_max_and_sum<'c>(
    fx: &Fx<'c, '_>,
    b: &Block<'c>,
    dims: &[i64],
    lanes: MaxLanes,
    sum: bool,
    value: &dyn Fn(&Block<'c>, &[V<'c>], bool) -> V<'c>,
) -> (V<'c>, V<'c>, Option<V<'c>>) {
    let vector = lanes != MaxLanes::Scalar;
    let Some(last) = dims.len().checked_sub(1) else {
        let v = value(b, &[], vector);
        return (v, fx.cf_w(0.0, vector), sum.then_some(v));
    };
    let block = lanes == MaxLanes::Block;
    let mut part = dims.to_vec();
    // Blocks run several independent chains over interleaved groups (a single chain of
    // compare-and-select waits its latency every 4 elements): chain k reads groups k, k + copies…
    let copies = if block {
        let groups = dims[last] / LANES;
        let copies = [FOLD_COPIES, 2, 1]
            .into_iter()
            .find(|c| groups % c == 0)
            .unwrap_or(1);
        part[last] = groups / copies;
        copies
    } else {
        1
    };
    // Lane k of a block reads element 4g + k: its index is the group's plus k.
    let offsets = block.then(|| {
        let lanes: Vec<V<'c>> = (0..LANES).map(|k| fx.cf(k as f64)).collect();
        fx.val(b, "vector.from_elements", &lanes, fx.vec_type(fx.f32), &[])
    });
    // Each chain carries (max, index) and, with `sum`, its running sum.
    let width = if sum { 3 } else { 2 };
    let inits: Vec<V<'c>> = (0..copies)
        .flat_map(|_| {
            let mut init = vec![fx.cf_w(f64::NEG_INFINITY, vector), fx.cf_w(0.0, vector)];
            if sum {
                init.push(fx.cf_w(0.0, vector));
            }
            init
        })
        .collect();
    let best = fx.carry_nest(b, &part, &inits, &[], &mut |b, r, carried| {
        let mut next = Vec::with_capacity(carried.len());
        for (k, chain) in carried.chunks(width).enumerate() {
            let mut r = r.to_vec();
            if block {
                r[last] = fx.ilin(b, r[last], LANES * copies, None, k as i64 * LANES);
            }
            let v = value(b, &r, vector);
            let i = fx.index_to_f32(b, linear(fx, b, &r, dims));
            let i = if vector { fx.splat(b, i) } else { i };
            let i = match offsets {
                Some(o) => fx.addf(b, i, o),
                None => i,
            };
            let wins = fx.first_max_wins(b, v, chain[0]);
            next.push(fx.select(b, wins, v, chain[0]));
            next.push(fx.select(b, wins, i, chain[1]));
            if sum {
                next.push(fx.addf(b, chain[2], v));
            }
        }
        next
    });
    let total = sum.then(|| {
        let chains = best
            .chunks(width)
            .map(|c| c[2])
            .reduce(|acc, s| fx.addf(b, acc, s));
        let total = chains.unwrap_or_else(|| fx.cf_w(0.0, vector));
        if block {
            fx.across_lanes(b, total, "arith.addf")
        } else {
            total
        }
    });
    if !block {
        return (best[0], best[1], total);
    }
    // Each chain's lane holds the first maximum of its own subsequence: the winner is the
    // greatest (a NaN first), and of equals the one with the smallest index.
    let pick = |(v, i): (V<'c>, V<'c>), (bv, bi): (V<'c>, V<'c>)| {
        let wins = fx.first_max_wins(b, v, bv);
        let equal = fx.cmpf(b, fpred::OEQ, v, bv);
        let v_nan = fx.cmpf(b, fpred::UNO, v, v);
        let best_nan = fx.cmpf(b, fpred::UNO, bv, bv);
        let both_nan = fx.bin(b, "arith.andi", v_nan, best_nan);
        let tie = fx.bin(b, "arith.ori", equal, both_nan);
        let earlier = fx.cmpf(b, fpred::OLT, i, bi);
        let tie_earlier = fx.bin(b, "arith.andi", tie, earlier);
        let take = fx.bin(b, "arith.ori", wins, tie_earlier);
        (fx.select(b, take, v, bv), fx.select(b, take, i, bi))
    };
    let mut chains = (best[0], best[1]);
    for chain in best.chunks(width).skip(1) {
        chains = pick((chain[0], chain[1]), chains);
    }
    let lane = |v: V<'c>, k: i64| {
        fx.val(
            b,
            "vector.extract",
            &[v],
            fx.f32,
            &[(
                "static_position",
                DenseI64ArrayAttribute::new(fx.ctx, &[k]).into(),
            )],
        )
    };
    let mut winner = (lane(chains.0, 0), lane(chains.1, 0));
    for k in 1..LANES {
        winner = pick((lane(chains.0, k), lane(chains.1, k)), winner);
    }
    (winner.0, winner.1, total)
}

/// Row-major linear index of `ivs` over `dims` (0 for no dims).
fn linear<'c>(fx: &Fx<'c, '_>, b: &Block<'c>, ivs: &[V<'c>], dims: &[i64]) -> V<'c> {
    let mut acc = fx.cidx(0);
    for (k, (iv, d)) in ivs.iter().zip(dims).enumerate() {
        acc = if k == 0 {
            *iv
        } else {
            fx.ilin(b, acc, *d, Some(*iv), 0)
        };
    }
    acc
}

/// Refuses programs that index outside their states, learnables or locals, so that the loop
/// body can be built without failing half-way.
fn check_program(p: &NeuronProgram) -> Result<(), LowerError> {
    if p.states.is_empty() {
        return Err(LowerError::new(format!(
            "neuron `{}` has no state variable",
            p.name
        )));
    }
    let mut assigned = vec![false; p.locals.len()];
    for (target, expr) in &p.steps {
        let mut bad = None;
        expr.visit(&mut |e| {
            if let Scalar::Var(v) = e {
                let ok = match *v {
                    Var::Input => true,
                    Var::State(i) => i < p.states.len(),
                    Var::Learn(i) => i < p.learns.len(),
                    Var::Local(i) => assigned.get(i).copied().unwrap_or(false),
                };
                if !ok && bad.is_none() {
                    bad = Some(*v);
                }
            }
        });
        if let Some(v) = bad {
            return Err(LowerError::new(format!(
                "neuron `{}` reads {v:?} before it exists",
                p.name
            )));
        }
        match *target {
            Target::State(i) if i < p.states.len() => {}
            Target::Local(i) if i < p.locals.len() => assigned[i] = true,
            t => {
                return Err(LowerError::new(format!(
                    "neuron `{}` assigns to {t:?}, which it does not declare",
                    p.name
                )));
            }
        }
    }
    Ok(())
}

/// What a neuron's scalar expressions read at one time step.
struct Env<'l, 'c> {
    input: V<'c>,
    states: Vec<V<'c>>,
    learns: &'l [V<'c>],
    locals: Vec<Option<V<'c>>>,
}

/// Emits one scalar expression of a neuron program as arith/math ops in `b`.
fn eval<'c>(
    fx: &Fx<'c, '_>,
    b: &Block<'c>,
    e: &Scalar,
    env: &Env<'_, 'c>,
) -> Result<V<'c>, LowerError> {
    Ok(match e {
        Scalar::Const(c) => fx.cf_as(*c, env.input),
        Scalar::Var(v) => {
            let found = match *v {
                Var::Input => Some(env.input),
                Var::State(i) => env.states.get(i).copied(),
                Var::Learn(i) => env.learns.get(i).copied(),
                Var::Local(i) => env.locals.get(i).copied().flatten(),
            };
            found.ok_or_else(|| LowerError::new(format!("{v:?} is not defined here")))?
        }
        Scalar::Unary(op, x) => {
            let x = eval(fx, b, x, env)?;
            match op {
                ScalarUnary::Neg => fx.unary(b, "arith.negf", x),
                ScalarUnary::Not => {
                    let z = fx.cmpf(b, fpred::OEQ, x, fx.cf_as(0.0, x));
                    fx.bool_to_f32(b, z)
                }
                ScalarUnary::Exp => fx.unary(b, "math.exp", x),
                ScalarUnary::Log => fx.unary(b, "math.log", x),
                ScalarUnary::Sqrt => fx.unary(b, "math.sqrt", x),
                ScalarUnary::Abs => fx.unary(b, "math.absf", x),
                ScalarUnary::Sigmoid => fx.sigmoid(b, x),
                ScalarUnary::Tanh => fx.unary(b, "math.tanh", x),
                ScalarUnary::Atan => fx.unary(b, "math.atan", x),
                // maxnumf matches the IR's reference semantics (`f64::max`).
                ScalarUnary::Relu => fx.bin(b, "arith.maxnumf", x, fx.cf_as(0.0, x)),
                ScalarUnary::Detach => x,
            }
        }
        // Small whole powers as products: `math.powf` is a libm call per element (it was most
        // of the LIF layer's backward through the ATan surrogate's `(…)^2`), and x·x is the
        // correctly rounded square that powf returns too.
        Scalar::Binary(ScalarBinary::Pow, x, y) if matches!(**y, Scalar::Const(c) if c == 2.0 || c == 3.0 || c == 4.0) =>
        {
            let x = eval(fx, b, x, env)?;
            let sq = fx.mulf(b, x, x);
            match **y {
                Scalar::Const(2.0) => sq,
                Scalar::Const(3.0) => fx.mulf(b, sq, x),
                _ => fx.mulf(b, sq, sq),
            }
        }
        Scalar::Binary(op, x, y) => {
            let x = eval(fx, b, x, env)?;
            let y = eval(fx, b, y, env)?;
            let cmp = |pred| {
                let c = fx.cmpf(b, pred, x, y);
                fx.bool_to_f32(b, c)
            };
            let truthy = |v| fx.cmpf(b, fpred::UNE, v, fx.cf_as(0.0, v));
            match op {
                ScalarBinary::Add => fx.addf(b, x, y),
                ScalarBinary::Sub => fx.subf(b, x, y),
                ScalarBinary::Mul => fx.mulf(b, x, y),
                ScalarBinary::Div => fx.divf(b, x, y),
                ScalarBinary::Pow => fx.bin(b, "math.powf", x, y),
                ScalarBinary::Min => fx.bin(b, "arith.minnumf", x, y),
                ScalarBinary::Max => fx.bin(b, "arith.maxnumf", x, y),
                ScalarBinary::Lt => cmp(fpred::OLT),
                ScalarBinary::Le => cmp(fpred::OLE),
                ScalarBinary::Gt => cmp(fpred::OGT),
                ScalarBinary::Ge => cmp(fpred::OGE),
                ScalarBinary::Eq => cmp(fpred::OEQ),
                // Unordered: NaN != anything, as in the reference evaluator.
                ScalarBinary::Ne => cmp(fpred::UNE),
                ScalarBinary::And | ScalarBinary::Or => {
                    let (tx, ty) = (truthy(x), truthy(y));
                    let name = if *op == ScalarBinary::And {
                        "arith.andi"
                    } else {
                        "arith.ori"
                    };
                    let c = fx.bin(b, name, tx, ty);
                    fx.bool_to_f32(b, c)
                }
            }
        }
        Scalar::Select(c, x, y) => {
            let c = eval(fx, b, c, env)?;
            let x = eval(fx, b, x, env)?;
            let y = eval(fx, b, y, env)?;
            let c = fx.cmpf(b, fpred::UNE, c, fx.cf_as(0.0, c));
            fx.select(b, c, x, y)
        }
        Scalar::Fire { arg, .. } => {
            let a = eval(fx, b, arg, env)?;
            let c = fx.cmpf(b, fpred::OGE, a, fx.cf_as(0.0, a));
            fx.bool_to_f32(b, c)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::scalar::{ScalarUnary, Target};
    use crate::mlir::context::new_context;
    use crate::sema::compile_source;
    use melior::ir::operation::OperationLike;
    use std::path::Path;

    const GOLDEN_SMALL: &str = include_str!("../../../tests/reference/golden_small.snn");

    fn golden_small() -> Graph {
        let c = compile_source(Path::new("golden_small.snn"), GOLDEN_SMALL.to_string(), &[]);
        assert!(!c.diags.has_errors());
        c.graphs.into_iter().next().expect("one model")
    }

    fn lowered_text(g: &Graph, batch: usize) -> String {
        let context = new_context();
        let module =
            lower_graphs(&context, &[g], &LowerOptions::with_batch(batch)).expect("lowers");
        assert!(module.as_operation().verify());
        module.as_operation().to_string()
    }

    #[test]
    fn index_helpers() {
        assert_eq!(insert_at(&[1, 2, 3], 1, 9), vec![1, 9, 2, 3]);
        assert_eq!(insert_at(&[1, 2], 5, 9), vec![1, 2, 9]);
        assert_eq!(remove_at(&[4, 5, 6], 0), vec![5, 6]);
        assert!(flatten_collapses(&TensorType::image(
            2,
            3,
            4,
            5,
            crate::ir::Elem::Real
        )));
        assert!(!flatten_collapses(&TensorType::flat(
            2,
            3,
            crate::ir::Elem::Real
        )));
    }

    #[test]
    fn signature_is_inputs_then_params_then_outputs() {
        let g = golden_small();
        let sig = forward_signature(&g, &LowerOptions::with_batch(3)).expect("signature");
        assert_eq!(sig.len(), 1 + g.params.len() + 1);
        assert_eq!(sig[0].role, ArgRole::Input);
        assert_eq!(sig[0].shape, vec![4, 3, 2, 8, 8]);
        assert!(
            sig[1..=g.params.len()]
                .iter()
                .zip(&g.params)
                .all(|(a, p)| a.name == p.name)
        );
        let states: Vec<&str> = sig
            .iter()
            .filter(|a| a.role == ArgRole::State)
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(states, ["bn0.running_mean", "bn0.running_var"]);
        let last = sig.last().expect("output");
        assert_eq!(
            (last.role, last.shape.clone()),
            (ArgRole::Output, vec![3, 3])
        );
    }

    /// Every `memref.alloc` is freed exactly once, after its last textual use, and nothing
    /// is allocated for values computed straight into an output or viewed through flatten.
    #[test]
    fn every_intermediate_is_freed_after_its_last_use() {
        let g = golden_small();
        let text = lowered_text(&g, 1);
        let lines: Vec<&str> = text.lines().collect();
        let allocs: Vec<String> = lines
            .iter()
            .filter_map(|l| l.trim().split_once(" = memref.alloc()"))
            .map(|(name, _)| name.to_string())
            .collect();
        let computed = g
            .nodes
            .iter()
            .filter(|n| !matches!(n.op, Op::Input { .. } | Op::Flatten | Op::Dropout { .. }))
            .count();
        // Vectorised time-outer scans also allocate one buffer per state variable.
        let state_bufs: usize = g
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Scan { neuron, .. } if SCAN_TIME_OUTER => {
                    let x = g.ty(*n.inputs.first()?);
                    let dims = shape_of(x, 1, &n.name).ok()?;
                    let pt = x.position(Axis::T)?;
                    let last = dims.len() - 1;
                    (pt != last && dims[last] as i64 >= LANES).then_some(neuron.states.len())
                }
                _ => None,
            })
            .sum();
        assert!(state_bufs > 0, "golden_small has vectorised scans");
        // A training batchnorm over feature maps also allocates its statistics and its
        // partial sums (`Fx::channel_sums`).
        let bn_bufs = 2 * g
            .nodes
            .iter()
            .filter(|n| {
                matches!(n.op, Op::BatchNorm { axis, .. }
                if n.inputs.first().is_some_and(|x| {
                    let ty = g.ty(*x);
                    ty.position(axis).is_some_and(|p| p + 1 < ty.rank())
                }))
            })
            .count();
        assert!(
            bn_bufs > 0,
            "golden_small has a batchnorm over feature maps"
        );
        // So does a pooling whose reduced axes surround kept ones (channel attention's mean
        // and max over T, H, W: `Fx::plane_split`), for its partial results.
        let plane_bufs = g
            .nodes
            .iter()
            .filter(|n| {
                let Op::Reduce {
                    kind: ReduceKind::Mean,
                    axes,
                    ..
                } = &n.op
                else {
                    return false;
                };
                let Some(x) = n.inputs.first() else {
                    return false;
                };
                let reduced: Vec<bool> = g
                    .ty(*x)
                    .dims
                    .iter()
                    .map(|(a, _)| axes.contains(a))
                    .collect();
                let last_kept = reduced.iter().rposition(|r| !r);
                last_kept.is_some_and(|k| k + 1 < reduced.len() && reduced[..k].contains(&true))
            })
            .count();
        assert!(plane_bufs > 0, "golden_small has channel attention");
        assert_eq!(
            allocs.len(),
            computed - g.outputs.len() + state_bufs + bn_bufs + plane_bufs
        );
        for a in &allocs {
            let uses = |l: &&str| {
                l.split(|c: char| !(c.is_alphanumeric() || c == '%' || c == '_'))
                    .any(|w| w == a)
            };
            let freed: Vec<usize> = (0..lines.len())
                .filter(|&i| lines[i].contains("memref.dealloc") && uses(&lines[i]))
                .collect();
            assert_eq!(freed.len(), 1, "{a} freed {freed:?}");
            let last = (0..lines.len()).filter(|&i| uses(&lines[i])).max();
            assert_eq!(last, freed.first().copied(), "{a} used after its dealloc");
        }
    }

    #[test]
    fn malformed_neuron_programs_are_errors_not_panics() {
        let mut p = NeuronProgram {
            name: "Bad".into(),
            args: vec![],
            states: vec![("v".into(), 0.0)],
            learns: vec![],
            locals: vec!["s".into()],
            steps: vec![(Target::State(0), Scalar::Var(Var::Local(0)))],
            spike: 0,
            surrogates: vec![],
            fire_step: 0,
        };
        assert!(check_program(&p).is_err(), "local read before assignment");
        p.steps = vec![(Target::State(3), Scalar::Const(1.0))];
        assert!(check_program(&p).is_err(), "unknown state");
        p.steps = vec![(
            Target::Local(0),
            Scalar::Unary(ScalarUnary::Exp, Box::new(Scalar::Var(Var::Learn(0)))),
        )];
        assert!(check_program(&p).is_err(), "unknown learnable");
        p.steps = vec![(Target::Local(0), Scalar::Var(Var::Input))];
        assert!(check_program(&p).is_ok());
        p.states.clear();
        assert!(check_program(&p).is_err(), "no membrane");
    }

    #[test]
    fn refuses_zero_batch_and_duplicate_models() {
        let g = golden_small();
        let context = new_context();
        let Err(err) = lower_graphs(&context, &[&g], &LowerOptions::with_batch(0)) else {
            panic!("batch 0 must be refused");
        };
        assert!(err.message.contains("batch"));
        let Err(err) = lower_graphs(&context, &[&g, &g], &LowerOptions::default()) else {
            panic!("two models with one name must be refused");
        };
        assert!(err.message.contains("clash"), "{err}");
    }

    #[test]
    fn constants_are_hoisted_and_shared() {
        let text = lowered_text(&golden_small(), 1);
        let zeros = text.matches("arith.constant 0 : index").count();
        assert_eq!(zeros, 1, "{text}");
        let first_loop = text.find("scf.parallel").expect("a loop");
        let last_const = text.rfind("arith.constant").expect("constants");
        assert!(last_const < first_loop);
    }
}
