//! Lowering of the backward program (`autodiff::GradGraph`) to MLIR: `@<model>_forward_train`
//! (the forward that also keeps what BPTT needs) and `@<model>_backward`; ABI in docs/abi.md.
//!
//! A child module of `lower` (declared there with `#[path]`) so that it reuses the forward's
//! op builders, buffers, loops and scalar-expression emission instead of duplicating them.
//!
//! Semantics are those of `Interpreter::backward` in train mode, with two documented
//! differences: every model input gets a gradient buffer (zeros when no gradient reaches it),
//! and `smooth_fire` does not exist. Dropout masks are arguments, drawn by the caller as the
//! interpreter draws them.

use super::gemm::{ConvShape, size};
use super::{
    Buf, Env, FwdValue, Fx, LANES, LoopForm, LowerError, LowerOptions, Lowering, V, append_func,
    block_arg, check_program, declare_kernels, delinearise, dropout_scale, eval, forward_signature,
    fpred, insert_at, is_view, kernel_for, lane_base, linear, pairs_in_lanes, pooled_batch_norm,
    reduce_index, remove_at, shape_of, to_i64, vector_parts, view_of,
};
use crate::autodiff::{GradGraph, ScanAdjoint, differentiate};
use crate::ir::graph::{BinaryOp, Graph, Node, Op, PoolKind, ReduceKind, ScanEmit, UnaryOp};
use crate::ir::scalar::{NeuronProgram, Target, Var};
use crate::ir::types::Axis;
use melior::ir::ValueLike as _;
use melior::{
    Context,
    dialect::func,
    ir::{Block, BlockLike, Location, Module, Region, RegionLike, Type, r#type::MemRefType},
};
use snn_runtime::gpu::manifest::Gemm;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, HashSet};

/// `arith.cmpi` predicates (MLIR's enum order).
const IEQ: i64 = 0;
const ISLT: i64 = 2;
const ISGE: i64 = 5;

/// What an argument of `@<model>_forward_train` or `@<model>_backward` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainRole {
    Input,
    Param,
    /// Batchnorm running statistics: written by the forward, unused by the backward.
    State,
    Output,
    /// A forward value the backward reads (written by `forward_train`).
    Saved,
    /// Per-scan neuron states at the start of every step, `[T, states, elements]`.
    ScanStates,
    /// The gradient of a model output (the seed of the backward).
    DOutput,
    /// The gradient of a trainable parameter (written by the backward).
    DParam,
    /// The gradient of a model input (written by the backward).
    DInput,
    /// A dropout node's keep mask (1 kept, 0 dropped), written by the caller before
    /// `forward_train`, read by both functions; absent from evaluation builds.
    DropoutMask,
    /// A trainable parameter's Adam moment, read and written by `@<model>_optimizer`
    /// ([`crate::mlir::optim`]); zero before the first step.
    OptimizerState,
    /// The scalars of one optimiser step (`snn_runtime::train::DeviceScalar` order), written
    /// by the driver before each `@<model>_optimizer`.
    OptimizerScalars,
}

impl TrainRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TrainRole::Input => "input",
            TrainRole::Param => "param",
            TrainRole::State => "state",
            TrainRole::Output => "output",
            TrainRole::Saved => "saved",
            TrainRole::ScanStates => "scan_states",
            TrainRole::DOutput => "d_output",
            TrainRole::DParam => "d_param",
            TrainRole::DInput => "d_input",
            TrainRole::DropoutMask => "dropout_mask",
            TrainRole::OptimizerState => "optimizer_state",
            TrainRole::OptimizerScalars => "optimizer_scalars",
        }
    }

    /// Whether `forward_train` and `backward` both take it, beyond the forward's own
    /// arguments: saved values, scan states and dropout masks.
    pub fn between_functions(self) -> bool {
        matches!(
            self,
            TrainRole::Saved | TrainRole::ScanStates | TrainRole::DropoutMask
        )
    }
}

/// One argument of a training function, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainArg {
    pub name: String,
    pub role: TrainRole,
    pub shape: Vec<usize>,
}

pub fn forward_train_symbol(g: &Graph) -> String {
    format!("{}_forward_train", g.name)
}

pub fn backward_symbol(g: &Graph) -> String {
    format!("{}_backward", g.name)
}

/// The saved values passed between the functions: `GradGraph::saved` with views replaced by
/// the value they view (the backward rebuilds the views) and without model inputs (both
/// functions receive them anyway) and without the products the backward recomputes
/// ([`rematerialized`]), then every spike-emitting scan output the backward does not need (node
/// order): a training driver counts spikes from them.
fn saved_values(g: &Graph, grad: &GradGraph) -> Vec<usize> {
    let mut saved = needed_values(g, grad);
    let remat = rematerialized(g, &saved);
    saved.retain(|v| !remat.contains(v));
    saved_spikes(g, saved)
}

/// `GradGraph::saved` with views replaced by the value they view, without model inputs.
fn needed_values(g: &Graph, grad: &GradGraph) -> Vec<usize> {
    let mut needed: Vec<usize> = Vec::new();
    for v in &grad.saved {
        let r = view_root(g, v.0);
        let input = g
            .nodes
            .get(r)
            .is_none_or(|n| matches!(n.op, Op::Input { .. }));
        if !input && !needed.contains(&r) {
            needed.push(r);
        }
    }
    needed
}

/// The products `saved_values` leaves to the backward to recompute (see [`rematerialized`]).
fn recomputed_values(g: &Graph, grad: &GradGraph) -> Vec<usize> {
    rematerialized(g, &needed_values(g, grad))
}

/// `saved` plus every spike-emitting scan output not among them, in node order.
fn saved_spikes(g: &Graph, mut saved: Vec<usize>) -> Vec<usize> {
    for (i, n) in g.nodes.iter().enumerate() {
        if n.emits_spikes() && !saved.contains(&i) {
            saved.push(i);
        }
    }
    saved
}

/// The saved products the backward recomputes instead of receiving: elementwise (broadcast)
/// multiplications whose operands are model inputs, other saved values or themselves
/// recomputed, and that no view reads (attention's gated activations, `x · gate`, each a full
/// feature map). One multiply per element in the backward buys one feature map less memory.
fn rematerialized(g: &Graph, saved: &[usize]) -> Vec<usize> {
    let viewed: Vec<usize> = g
        .nodes
        .iter()
        .filter(|n| is_view(g, n))
        .filter_map(|n| n.inputs.first().map(|x| x.0))
        .collect();
    let mut order = saved.to_vec();
    order.sort_unstable();
    let mut remat: Vec<usize> = Vec::new();
    for &v in &order {
        let node = &g.nodes[v];
        if !matches!(node.op, Op::Binary(BinaryOp::Mul)) || viewed.contains(&v) {
            continue;
        }
        // Operands precede `v`: saved ones are either kept or recomputed before it.
        let available = |u: usize| {
            let r = view_root(g, u);
            matches!(g.nodes[r].op, Op::Input { .. }) || saved.contains(&r)
        };
        if node.inputs.iter().all(|u| available(u.0)) {
            remat.push(v);
        }
    }
    remat
}

/// What the forward computes anyway and saves beside a node's value so that the backward
/// need not compute it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Aux {
    /// A max-reduction's `<node>.argmax`: where each output's first maximum is, a linear index
    /// over the reduced axes in f32 (exact below 2^24); the backward adds the gradient there
    /// instead of searching the input again. The output's shape.
    Argmax,
    /// A batchnorm's `<node>.batch_stats`: the batch mean and 1/sqrt(var + eps) per channel,
    /// `[2, C]`; the backward would otherwise take two more passes over the input.
    BatchStats,
}

impl Aux {
    fn suffix(self) -> &'static str {
        match self {
            Aux::Argmax => "argmax",
            Aux::BatchStats => "batch_stats",
        }
    }
}

/// The auxiliary saved buffers, in node order: (node, kind, shape).
fn aux_buffers(g: &Graph, batch: usize) -> Result<Vec<(usize, Aux, Vec<usize>)>, LowerError> {
    let mut out = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        match &n.op {
            Op::Reduce {
                kind: ReduceKind::Max,
                ..
            } => out.push((i, Aux::Argmax, shape_of(&n.ty, batch, &n.name)?)),
            Op::BatchNorm { axis, .. } => {
                let channels = n
                    .ty
                    .dims
                    .iter()
                    .find(|(a, _)| a == axis)
                    .map(|(_, d)| *d)
                    .ok_or_else(|| {
                        LowerError::new(format!("batchnorm `{}` lacks its channel axis", n.name))
                    })?;
                out.push((i, Aux::BatchStats, vec![2, channels]));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The value node `v` views (through any chain of views), or `v` itself.
fn view_root(g: &Graph, mut v: usize) -> usize {
    while let Some(n) = g.nodes.get(v)
        && is_view(g, n)
        && let Some(x) = n.inputs.first()
    {
        v = x.0;
    }
    v
}

/// Scan nodes in node order with the shape of their per-step states buffer.
fn scan_state_shapes(g: &Graph, batch: usize) -> Result<Vec<(usize, Vec<usize>)>, LowerError> {
    let mut out = Vec::new();
    for (i, node) in g.nodes.iter().enumerate() {
        let Op::Scan { neuron, .. } = &node.op else {
            continue;
        };
        let x = node
            .inputs
            .first()
            .ok_or_else(|| LowerError::new(format!("scan `{}` has no input", node.name)))?;
        let ty = g.ty(*x);
        let pt = ty
            .position(Axis::T)
            .ok_or_else(|| LowerError::new(format!("scan `{}` needs a T axis", node.name)))?;
        let dims = shape_of(ty, batch, &node.name)?;
        let elements: usize = remove_at(&to_i64(&dims), pt).iter().product::<i64>() as usize;
        out.push((i, vec![dims[pt], neuron.states.len(), elements]));
    }
    Ok(out)
}

/// Dropout nodes that drop something (p > 0), in node order, with p: each takes a mask
/// argument in training builds.
pub fn dropout_nodes(g: &Graph) -> Vec<(usize, f64)> {
    g.nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match n.op {
            Op::Dropout { p } if !is_view(g, n) => Some((i, p)),
            _ => None,
        })
        .collect()
}

/// The name of dropout node `node`'s mask argument.
pub fn dropout_mask_name(node: &Node) -> String {
    format!("{}.mask", node.name)
}

fn saved_and_states(g: &Graph, opts: &LowerOptions) -> Result<Vec<TrainArg>, LowerError> {
    let grad = differentiate(g);
    let mut args = Vec::new();
    for v in saved_values(g, &grad) {
        let node = &g.nodes[v];
        args.push(TrainArg {
            name: node.name.clone(),
            role: TrainRole::Saved,
            shape: shape_of(&node.ty, opts.batch, &node.name)?,
        });
    }
    for (v, aux, shape) in aux_buffers(g, opts.batch)? {
        args.push(TrainArg {
            name: format!("{}.{}", g.nodes[v].name, aux.suffix()),
            role: TrainRole::Saved,
            shape,
        });
    }
    for (i, shape) in scan_state_shapes(g, opts.batch)? {
        args.push(TrainArg {
            name: format!("{}.states", g.nodes[i].name),
            role: TrainRole::ScanStates,
            shape,
        });
    }
    if !opts.eval {
        for (i, _) in dropout_nodes(g) {
            let node = &g.nodes[i];
            args.push(TrainArg {
                name: dropout_mask_name(node),
                role: TrainRole::DropoutMask,
                shape: shape_of(&node.ty, opts.batch, &node.name)?,
            });
        }
    }
    Ok(args)
}

fn forward_args(g: &Graph, opts: &LowerOptions) -> Result<Vec<TrainArg>, LowerError> {
    Ok(forward_signature(g, opts)?
        .into_iter()
        .map(|a| TrainArg {
            name: a.name,
            role: match a.role {
                super::ArgRole::Input => TrainRole::Input,
                super::ArgRole::Param => TrainRole::Param,
                super::ArgRole::State => TrainRole::State,
                super::ArgRole::Output => TrainRole::Output,
            },
            shape: a.shape,
        })
        .collect())
}

/// `@<model>_forward_train`: the forward's arguments, then saved values, then scan states.
pub fn forward_train_signature(
    g: &Graph,
    opts: &LowerOptions,
) -> Result<Vec<TrainArg>, LowerError> {
    let mut args = forward_args(g, opts)?;
    args.extend(saved_and_states(g, opts)?);
    Ok(args)
}

/// `@<model>_backward`: inputs, parameters, saved values, scan states, output gradients, then
/// the results: trainable-parameter gradients and input gradients.
pub fn backward_signature(g: &Graph, opts: &LowerOptions) -> Result<Vec<TrainArg>, LowerError> {
    let fwd = forward_args(g, opts)?;
    let mut args: Vec<TrainArg> = fwd
        .iter()
        .filter(|a| a.role != TrainRole::Output)
        .cloned()
        .collect();
    args.extend(saved_and_states(g, opts)?);
    for a in fwd.iter().filter(|a| a.role == TrainRole::Output) {
        args.push(TrainArg {
            name: format!("d{}", a.name),
            role: TrainRole::DOutput,
            shape: a.shape.clone(),
        });
    }
    for p in g.params.iter().filter(|p| p.role.trainable()) {
        args.push(TrainArg {
            name: format!("d{}", p.name),
            role: TrainRole::DParam,
            shape: p.shape.clone(),
        });
    }
    for a in fwd.iter().filter(|a| a.role == TrainRole::Input) {
        args.push(TrainArg {
            name: format!("d{}", a.name),
            role: TrainRole::DInput,
            shape: a.shape.clone(),
        });
    }
    Ok(args)
}

/// Appends `@<model>_forward_train` and `@<model>_backward` of every graph to `module`; with
/// [`LowerOptions::eval`] only `_forward_train` (an evaluation pass that saves the spikes).
pub fn lower_training<'c>(
    context: &'c Context,
    module: &Module<'c>,
    graphs: &[&Graph],
    opts: &LowerOptions,
) -> Result<(), LowerError> {
    lower_training_with(context, module, graphs, opts, LoopForm::Nested)
}

/// [`lower_training`] with a loop form: [`LoopForm::Kernels`] makes conv2d and dense layers call
/// the runtime's kernels; [`LoopForm::Flat`] makes every parallel loop one flat dimension (the
/// GPU form).
pub fn lower_training_with<'c>(
    context: &'c Context,
    module: &Module<'c>,
    graphs: &[&Graph],
    opts: &LowerOptions,
    form: LoopForm,
) -> Result<(), LowerError> {
    if opts.batch == 0 {
        return Err(LowerError::new("the batch size must be at least 1"));
    }
    let mut kernels = BTreeSet::new();
    for g in graphs {
        let problems = crate::ir::verify::verify(g);
        if !problems.is_empty() {
            return Err(LowerError::new(format!(
                "model `{}` has an ill-formed graph:\n  {}",
                g.name,
                problems.join("\n  ")
            )));
        }
        kernels.extend(lower_forward_train(context, module, g, opts, form)?);
        // An evaluation build's backward would never run (no masks, running statistics).
        if !opts.eval {
            kernels.extend(lower_backward(context, module, g, opts, form)?);
        }
    }
    declare_kernels(context, module, &kernels);
    Ok(())
}

/// A module with only the training functions of `graphs`.
pub fn lower_training_module<'c>(
    context: &'c Context,
    graphs: &[&Graph],
    opts: &LowerOptions,
) -> Result<Module<'c>, LowerError> {
    lower_training_module_with(context, graphs, opts, LoopForm::Nested)
}

/// [`lower_training_module`] with a loop form (see [`lower_training_with`]).
pub fn lower_training_module_with<'c>(
    context: &'c Context,
    graphs: &[&Graph],
    opts: &LowerOptions,
    form: LoopForm,
) -> Result<Module<'c>, LowerError> {
    let module = Module::new(Location::unknown(context));
    lower_training_with(context, &module, graphs, opts, form)?;
    Ok(module)
}

/// Defines `func.func @symbol` over static f32 memrefs with `{snnc.name, snnc.role}` on every
/// argument; `body` fills the entry block (the `func.return` is added here).
fn define<'c>(
    context: &'c Context,
    module: &Module<'c>,
    symbol: &str,
    sig: &[TrainArg],
    body: impl FnOnce(&Block<'c>, Location<'c>) -> Result<(), LowerError>,
) -> Result<(), LowerError> {
    let f32 = Type::float32(context);
    let loc = Location::name(context, symbol, Location::unknown(context));
    let arg_types: Vec<Type<'c>> = sig
        .iter()
        .map(|a| MemRefType::new(f32, &to_i64(&a.shape), None, None).into())
        .collect();
    let entry = Block::new(&arg_types.iter().map(|t| (*t, loc)).collect::<Vec<_>>());
    body(&entry, loc)?;
    entry.append_operation(func::r#return(&[], loc));
    let region = Region::new();
    region.append_block(entry);
    append_func(
        context,
        module,
        symbol,
        &arg_types,
        sig.iter().map(|a| (a.name.as_str(), a.role.as_str())),
        region,
        loc,
    );
    Ok(())
}

/// Where the forward's lowering also writes for training; empty for inference.
#[derive(Default)]
pub(super) struct TrainSinks<'c> {
    /// Node → its saved-value output buffer.
    saved: HashMap<usize, V<'c>>,
    /// Scan node → its `[T, states, elements]` output buffer.
    states: HashMap<usize, V<'c>>,
    /// (node, kind) → its auxiliary saved buffer (see [`Aux`]).
    aux: HashMap<(usize, Aux), V<'c>>,
    /// Dropout node → its mask argument.
    masks: HashMap<usize, V<'c>>,
}

impl<'c> TrainSinks<'c> {
    /// Copies a just-computed node value into its saved-value buffer, if it has one and the
    /// value was not computed there (views and model outputs are).
    pub(super) fn save(&self, fx: &Fx<'c, '_>, node: usize, here: &Buf<'c>) {
        if let Some(dst) = self.saved.get(&node)
            && *dst != here.mem
        {
            fx.copy(fx.entry, here.mem, *dst, &here.dims);
        }
    }

    /// Dropout node `node`'s mask argument (training builds only).
    pub(super) fn mask_for(&self, g: &Graph, node: &Node) -> Option<V<'c>> {
        index_of(g, node).and_then(|i| self.masks.get(&i).copied())
    }

    /// The saved-value argument of node `node`, if the backward reads it.
    pub(super) fn saved_buffer(&self, node: usize) -> Option<V<'c>> {
        self.saved.get(&node).copied()
    }

    /// The auxiliary buffer `aux` of a node (identified by address), when training.
    pub(super) fn aux_for(&self, g: &Graph, node: &Node, aux: Aux) -> Option<V<'c>> {
        let i = index_of(g, node)?;
        self.aux.get(&(i, aux)).copied()
    }

    /// The states buffer of a scan node (identified by address: `scan` gets the node only).
    pub(super) fn states_for(&self, g: &Graph, node: &Node) -> Option<V<'c>> {
        let i = index_of(g, node)?;
        self.states.get(&i).copied()
    }
}

/// Stores the carried states at the start of step `t` of element `o` (the scan's indices
/// without T) into `[T, states, elements]`, the interpreter's layout.
pub(super) fn store_states<'c>(
    fx: &Fx<'c, '_>,
    b: &Block<'c>,
    buf: V<'c>,
    t: V<'c>,
    o: &[V<'c>],
    others: &[i64],
    carried: &[V<'c>],
) {
    let e = linear(fx, b, o, others);
    for (s, v) in carried.iter().enumerate() {
        fx.store(b, *v, buf, &[t, fx.cidx(s as i64), e]);
    }
}

fn lower_forward_train<'c>(
    context: &'c Context,
    module: &Module<'c>,
    g: &Graph,
    opts: &LowerOptions,
    form: LoopForm,
) -> Result<BTreeSet<&'static str>, LowerError> {
    let sig = forward_train_signature(g, opts)?;
    let mut used = BTreeSet::new();
    let n_fwd = forward_signature(g, opts)?.len();
    let grad = differentiate(g);
    let saved = saved_values(g, &grad);
    let aux = aux_buffers(g, opts.batch)?;
    let scans = scan_state_shapes(g, opts.batch)?;
    define(
        context,
        module,
        &forward_train_symbol(g),
        &sig,
        |entry, loc| {
            let mut fx = Fx::new(context, entry, loc);
            fx.set_form(form);
            let mut lowering = Lowering::new(fx, g, opts.batch)?;
            // Eval: an evaluation pass that still wants the saved spikes (the driver's
            // counts); its backward is not meaningful and is not called.
            lowering.eval = opts.eval;
            for (k, v) in saved.iter().enumerate() {
                lowering.train.saved.insert(*v, block_arg(entry, n_fwd + k));
            }
            let n_saved = saved.len();
            for (k, (v, kind, _)) in aux.iter().enumerate() {
                lowering
                    .train
                    .aux
                    .insert((*v, *kind), block_arg(entry, n_fwd + n_saved + k));
            }
            for (k, (v, _)) in scans.iter().enumerate() {
                lowering
                    .train
                    .states
                    .insert(*v, block_arg(entry, n_fwd + n_saved + aux.len() + k));
            }
            if !opts.eval {
                let first = n_fwd + n_saved + aux.len() + scans.len();
                for (k, (v, _)) in dropout_nodes(g).iter().enumerate() {
                    lowering.train.masks.insert(*v, block_arg(entry, first + k));
                }
            }
            lowering.run()?;
            used = lowering.fx.used_kernels.take();
            Ok(())
        },
    )?;
    Ok(used)
}

fn lower_backward<'c>(
    context: &'c Context,
    module: &Module<'c>,
    g: &Graph,
    opts: &LowerOptions,
    form: LoopForm,
) -> Result<BTreeSet<&'static str>, LowerError> {
    let sig = backward_signature(g, opts)?;
    let grad = differentiate(g);
    let mut used = BTreeSet::new();
    define(context, module, &backward_symbol(g), &sig, |entry, loc| {
        let mut fx = Fx::new(context, entry, loc);
        fx.set_form(form);
        let mut bw = Backward::new(fx, g, opts.batch, &grad, &sig)?;
        bw.poison = opts.poison_gradients;
        bw.run(&grad)?;
        used = bw.fx.used_kernels.take();
        Ok(())
    })?;
    Ok(used)
}

/// The position of `node` in `g` (nodes are handed around by reference; lowering state is
/// indexed by position).
fn index_of(g: &Graph, node: &Node) -> Option<usize> {
    g.nodes.iter().position(|n| std::ptr::eq(n, node))
}

/// The input index of a reduction from its output index and the reduced axes' indices.
type XIndex<'f, 'c> = dyn Fn(&[V<'c>], &[V<'c>]) -> Vec<V<'c>> + 'f;

/// A scan's neuron program, what it emits, and its adjoint equations.
type ScanProgram<'a> = (&'a NeuronProgram, ScanEmit, &'a ScanAdjoint);

/// The buffers a reverse scan reads and writes.
struct ScanIo<'a, 'c> {
    /// The input current (saved by the forward) and the optional gate.
    x: &'a Buf<'c>,
    gate: Option<&'a Buf<'c>>,
    dy: &'a Buf<'c>,
    dx: &'a Buf<'c>,
    /// `[T, states, elements]`: the states at the start of every step.
    states: V<'c>,
    /// The gate's gradient at the input's shape, reduced to the gate's shape afterwards.
    dgate: Option<V<'c>>,
    /// `[learnables, elements]`: each element's share of the learnables' gradients.
    dlearn: Option<V<'c>>,
    pt: usize,
    steps: i64,
    /// The input's axes without T.
    others: &'a [i64],
}

/// What one reverse step reads: the forward's input, states and gate at step t, and the
/// gradient arriving at the scan's output.
struct StepValues<'c> {
    input: V<'c>,
    states: Vec<V<'c>>,
    gate: Option<V<'c>>,
    d: V<'c>,
}

/// The forward's values of one scan step at input indices `idx` (element `e` of the states
/// buffer `states`), and the gradient arriving at the output from `dy` (0 without).
#[allow(clippy::too_many_arguments)]
fn step_inputs<'c>(
    fx: &Fx<'c, '_>,
    b: &Block<'c>,
    (x, gate, states): (&Buf<'c>, Option<&Buf<'c>>, V<'c>),
    ns: usize,
    (t, e): (V<'c>, V<'c>),
    idx: &[V<'c>],
    vector: bool,
    dy: Option<&Buf<'c>>,
) -> StepValues<'c> {
    StepValues {
        input: fx.load_w(b, x.mem, idx, vector),
        states: (0..ns)
            .map(|s| fx.load_w(b, states, &[t, fx.cidx(s as i64), e], vector))
            .collect(),
        gate: gate.map(|g| fx.load_bcast(b, g.mem, &g.dims, &x.dims, idx, vector)),
        d: match dy {
            Some(dy) => fx.load_w(b, dy.mem, idx, vector),
            None => fx.cf_w(0.0, vector),
        },
    }
}

impl<'c> ScanIo<'_, 'c> {
    /// The step-t values at input indices `idx` (element `e` of the states buffer).
    fn step_values(
        &self,
        fx: &Fx<'c, '_>,
        b: &Block<'c>,
        ns: usize,
        (t, e): (V<'c>, V<'c>),
        idx: &[V<'c>],
        vector: bool,
    ) -> StepValues<'c> {
        let io = (self.x, self.gate, self.states);
        step_inputs(fx, b, io, ns, (t, e), idx, vector, Some(self.dy))
    }

    /// Accumulates the input's adjoint into dx and stores the gate's.
    fn write(
        &self,
        bw: &Backward<'_, 'c, '_>,
        b: &Block<'c>,
        adj_input: V<'c>,
        dgate: Option<V<'c>>,
        idx: &[V<'c>],
        vector: bool,
    ) {
        let fx = &bw.fx;
        bw.acc_w(b, adj_input, self.dx.mem, idx, vector);
        if let (Some(v), Some(m)) = (dgate, self.dgate) {
            fx.store_w(b, v, m, idx, vector);
        }
    }
}

/// The backward function under construction.
struct Backward<'a, 'c, 'e> {
    fx: Fx<'c, 'e>,
    g: &'a Graph,
    batch: usize,
    /// Forward values available to the backward: inputs and saved values.
    fwd: Vec<Option<Buf<'c>>>,
    params: Vec<V<'c>>,
    /// Per-step states buffer of each scan node.
    states: HashMap<usize, V<'c>>,
    /// (node, kind) → its auxiliary saved buffer (see [`Aux`]).
    aux: HashMap<(usize, Aux), V<'c>>,
    /// Products the forward does not pass, recomputed when a step reads them.
    recomputed: Vec<usize>,
    /// Buffers recomputed for the current step, freed after it.
    temps: RefCell<Vec<V<'c>>>,
    /// Gradient of each node while it is live; `owned` when `memref.alloc`ed here.
    grads: Vec<Option<(Buf<'c>, bool)>>,
    /// Gradient output buffer of each trainable parameter.
    dparams: Vec<Option<V<'c>>>,
    d_outputs: Vec<V<'c>>,
    /// Dropout node → its mask argument.
    masks: HashMap<usize, V<'c>>,
    /// Gradient buffers by [`key`] (views too) → their allocation and its shape.
    roots: RefCell<HashMap<usize, (V<'c>, Vec<i64>)>>,
    /// Allocations not written yet, by [`key`]: they hold garbage until the first claim
    /// ([`Backward::claim`]) zeroes them, or lets its op store instead of add.
    fresh: RefCell<HashSet<usize>>,
    /// The buffer (by [`key`]) the current op writes once per element into a fresh
    /// allocation: [`Backward::acc_w`] stores there instead of adding.
    storing: RefCell<Vec<usize>>,
    /// [`LowerOptions::poison_gradients`].
    poison: bool,
    /// Batchnorms whose gradient is their average pool's, read window by window (see
    /// [`pooled_batch_norm`]); the pool's own step is skipped.
    pooled: HashSet<usize>,
    /// Scan node → its adjoint equations (for [`Backward::fire_support_into`], which runs
    /// before the scan's own step).
    adjoints: HashMap<usize, ScanAdjoint>,
    /// Node → what the step that reads its gradient applies on the fly ([`LazyGrad`]).
    lazy: HashMap<usize, LazyGrad<'c>>,
    /// Nodes with a step of their own (a [`LazyGrad`] waits only for those).
    stepped: HashSet<usize>,
    /// The current step's [`LazyGrad`], applied by [`Backward::dy_load`].
    dy_lazy: RefCell<Option<LazyGrad<'c>>>,
    /// Set by a step that keeps its own gradient buffer alive (a deferred mean-reduction
    /// term reads it later).
    keep_dy: Cell<bool>,
}

/// What the step that reads a node's gradient applies to each element it loads, instead of
/// a pass over the gradient buffer beforehand (CPU forms): the broadcast gradients of mean
/// reductions of the node (attention's average pooling), and the mask of a ReLU that alone
/// read the node (`x > 0` of its output), in that order. Each such pass read and wrote a
/// whole feature map (about 4 % of a TCSA gesture step).
#[derive(Clone, Default)]
struct LazyGrad<'c> {
    /// Broadcast gradients (a mean reduction's `dy`) and their scale, added in order.
    terms: Vec<(Buf<'c>, f64)>,
    /// The ReLU output whose positive elements pass the gradient.
    mask: Option<Buf<'c>>,
}

impl<'c> LazyGrad<'c> {
    /// `d`, the stored gradient at `idx` of a `dims`-shaped buffer, with the terms and the mask
    /// applied.
    fn apply(
        &self,
        fx: &Fx<'c, '_>,
        b: &Block<'c>,
        mut d: V<'c>,
        (dims, idx): (&[i64], &[V<'c>]),
        vector: bool,
    ) -> V<'c> {
        for (t, scale) in &self.terms {
            let v = fx.load_bcast(b, t.mem, &t.dims, dims, idx, vector);
            let v = fx.mulf(b, v, fx.cf_as(*scale, v));
            d = fx.addf(b, d, v);
        }
        if let Some(y) = &self.mask {
            let v = fx.load_w(b, y.mem, idx, vector);
            let pos = fx.cmpf(b, fpred::OGT, v, fx.cf_as(0.0, v));
            d = fx.mulf(b, d, fx.bool_to_f32(b, pos));
        }
        d
    }
}

/// A value's identity, for maps keyed by buffer.
fn key(v: V<'_>) -> usize {
    v.to_raw().ptr as usize
}

impl<'a, 'c, 'e> Backward<'a, 'c, 'e> {
    fn new(
        fx: Fx<'c, 'e>,
        g: &'a Graph,
        batch: usize,
        grad: &GradGraph,
        sig: &[TrainArg],
    ) -> Result<Self, LowerError> {
        let n = g.nodes.len();
        let arg = |k: usize| block_arg(fx.entry, k);
        let mut k = 0;
        let mut fwd: Vec<Option<Buf<'c>>> = vec![None; n];
        let mut grads: Vec<Option<(Buf<'c>, bool)>> = vec![None; n];
        let inputs: Vec<usize> = g.inputs().map(|(id, _)| id.0).collect();
        for &i in &inputs {
            fwd[i] = Some(Buf {
                mem: arg(k),
                dims: to_i64(&sig[k].shape),
            });
            k += 1;
        }
        let params: Vec<V<'c>> = (0..g.params.len()).map(|p| arg(k + p)).collect();
        k += g.params.len();
        for v in saved_values(g, grad) {
            fwd[v] = Some(Buf {
                mem: arg(k),
                dims: to_i64(&sig[k].shape),
            });
            k += 1;
        }
        // Views, which the forward does not pass, over the inputs and saved values they view.
        for (i, node) in g.nodes.iter().enumerate() {
            if fwd[i].is_none()
                && is_view(g, node)
                && let Some(x) = node.inputs.first().and_then(|x| fwd[x.0].clone())
            {
                let dims = to_i64(&shape_of(&node.ty, batch, &node.name)?);
                let mem = view_of(&fx, node, &x, &dims);
                fwd[i] = Some(Buf { mem, dims });
            }
        }
        let mut aux = HashMap::new();
        for (v, kind, _) in aux_buffers(g, batch)? {
            aux.insert((v, kind), arg(k));
            k += 1;
        }
        let mut states = HashMap::new();
        for (v, _) in scan_state_shapes(g, batch)? {
            states.insert(v, arg(k));
            k += 1;
        }
        let mut masks = HashMap::new();
        for (v, _) in dropout_nodes(g) {
            masks.insert(v, arg(k));
            k += 1;
        }
        let d_outputs: Vec<V<'c>> = (0..g.outputs.len()).map(|o| arg(k + o)).collect();
        k += g.outputs.len();
        let mut dparams = vec![None; g.params.len()];
        for (p, decl) in g.params.iter().enumerate() {
            if decl.role.trainable() {
                dparams[p] = Some(arg(k));
                k += 1;
            }
        }
        for &i in &inputs {
            grads[i] = Some((
                Buf {
                    mem: arg(k),
                    dims: to_i64(&sig[k].shape),
                },
                false,
            ));
            k += 1;
        }
        if k != sig.len() {
            return Err(LowerError::new(format!(
                "internal: backward signature has {} arguments, {k} were bound",
                sig.len()
            )));
        }
        Ok(Backward {
            fx,
            g,
            batch,
            fwd,
            params,
            states,
            aux,
            masks,
            roots: RefCell::new(HashMap::new()),
            fresh: RefCell::new(HashSet::new()),
            storing: RefCell::new(Vec::new()),
            pooled: HashSet::new(),
            adjoints: HashMap::new(),
            lazy: HashMap::new(),
            stepped: HashSet::new(),
            dy_lazy: RefCell::new(None),
            keep_dy: Cell::new(false),
            poison: false,
            recomputed: recomputed_values(g, grad),
            temps: RefCell::new(Vec::new()),
            grads,
            dparams,
            d_outputs,
        })
    }

    fn run(&mut self, grad: &GradGraph) -> Result<(), LowerError> {
        self.adjoints = grad
            .steps
            .iter()
            .filter_map(|step| Some((step.node.0, step.scan.clone()?)))
            .collect();
        self.stepped = grad
            .steps
            .iter()
            .map(|step| step.node.0)
            .filter(|&v| !matches!(self.g.nodes[v].op, Op::Input { .. }))
            .collect();
        // Results are accumulated into: start from zero.
        for (p, d) in self.dparams.iter().enumerate() {
            if let Some(d) = d {
                self.zero(*d, &to_i64(&self.g.params[p].shape));
            }
        }
        for (buf, _) in self.grads.iter().flatten() {
            self.zero(buf.mem, &buf.dims);
        }
        let g = self.g;
        for (k, out) in g.outputs.iter().enumerate() {
            let d = self.grad_of(out.0)?;
            self.claim(&d, true);
            let seed = self.d_outputs[k];
            let fx = &self.fx;
            fx.par_vec(fx.entry, &d.dims, |b, ivs, vector| {
                let v = fx.load_w(b, seed, ivs, vector);
                self.acc_w(b, v, d.mem, ivs, vector);
            });
        }
        for step in &grad.steps {
            let i = step.node.0;
            let node = &g.nodes[i];
            let Some((dy, owned)) = self.grads[i].clone() else {
                continue;
            };
            if let Some(bn) = pooled_batch_norm(g, node) {
                // The pool's gradient becomes the batchnorm's, spread as it reads it.
                self.grads[i] = None;
                self.grads[bn] = Some((dy, owned));
                if let Some(lazy) = self.lazy.remove(&i) {
                    self.lazy.insert(bn, lazy);
                }
                self.pooled.insert(bn);
                continue;
            }
            self.fx.loc.set(Location::name(
                self.fx.ctx,
                &format!("{}.grad", node.name),
                Location::unknown(self.fx.ctx),
            ));
            if self.relu_passes_through(i, node, owned) {
                continue;
            }
            let lazy = self.lazy.remove(&i);
            if let Some(lazy) = &lazy {
                if self.reads_lazily(node) {
                    *self.dy_lazy.borrow_mut() = Some(lazy.clone());
                } else {
                    self.apply_lazy(&dy, lazy);
                }
            }
            self.storing.borrow_mut().clear();
            self.keep_dy.set(false);
            self.step(i, node, &dy, step.scan.as_ref()).map_err(|e| {
                LowerError::new(format!("cannot differentiate `{}`: {e}", node.name))
            })?;
            *self.dy_lazy.borrow_mut() = None;
            // Every reader of this gradient came before it in the reverse walk.
            self.grads[i] = None;
            if owned && !self.keep_dy.get() {
                self.fx.stmt(self.fx.entry, "memref.dealloc", &[dy.mem]);
            }
            // The terms' buffers (mean reductions' gradients) were kept for this read.
            for (t, _) in lazy.iter().flat_map(|l| &l.terms) {
                self.fx.stmt(self.fx.entry, "memref.dealloc", &[t.mem]);
            }
            for t in self.temps.borrow_mut().drain(..) {
                self.fx.stmt(self.fx.entry, "memref.dealloc", &[t]);
            }
        }
        Ok(())
    }

    /// Whether `node`'s step reads its gradient through [`Self::dy_load`], so that a
    /// [`LazyGrad`] need not be applied first.
    fn reads_lazily(&self, node: &Node) -> bool {
        !self.fx.flat && matches!(node.op, Op::Binary(_) | Op::BatchNorm { .. })
    }

    /// Applies `lazy` to gradient buffer `dy` in place (for a step that loads `dy` itself).
    fn apply_lazy(&self, dy: &Buf<'c>, lazy: &LazyGrad<'c>) {
        let fx = &self.fx;
        fx.par_vec(fx.entry, &dy.dims, |b, idx, vector| {
            let d = fx.load_w(b, dy.mem, idx, vector);
            let d = lazy.apply(fx, b, d, (&dy.dims, idx), vector);
            fx.store_w(b, d, dy.mem, idx, vector);
        });
    }

    /// The gradient `dy` of the current step at `idx`, with its [`LazyGrad`] applied.
    fn dy_load(&self, b: &Block<'c>, dy: &Buf<'c>, idx: &[V<'c>], vector: bool) -> V<'c> {
        let d = self.fx.load_w(b, dy.mem, idx, vector);
        match &*self.dy_lazy.borrow() {
            Some(lazy) => lazy.apply(&self.fx, b, d, (&dy.dims, idx), vector),
            None => d,
        }
    }

    /// Whether gradient buffer `buf` is an allocation of its own (not a view) that already
    /// holds a contribution, so that a [`LazyGrad`] term can wait for its reader.
    fn written_allocation(&self, buf: &Buf<'c>) -> bool {
        let roots = self.roots.borrow();
        roots
            .get(&key(buf.mem))
            .is_some_and(|(root, _)| key(*root) == key(buf.mem))
            && !self.fresh.borrow().contains(&key(buf.mem))
    }

    /// A ReLU (node `i`) that alone reads its operand passes its gradient through: the
    /// operand's gradient is the ReLU's buffer under the mask of the ReLU's output, applied by
    /// the operand's reader ([`LazyGrad`]); no pass of its own. CPU forms only.
    fn relu_passes_through(&mut self, i: usize, node: &Node, owned: bool) -> bool {
        let g = self.g;
        let Some(x) = node.inputs.first().map(|x| x.0) else {
            return false;
        };
        let alone = g
            .nodes
            .iter()
            .flat_map(|n| &n.inputs)
            .filter(|v| v.0 == x)
            .count()
            == 1;
        let Some((dy, _)) = self.grads[i].clone() else {
            return false;
        };
        if self.fx.flat
            || node.op != Op::Unary(UnaryOp::Relu)
            || !owned
            || !alone
            || g.outputs.iter().any(|o| o.0 == x)
            || is_view(g, &g.nodes[x])
            || self.grads[x].is_some()
            || !self.stepped.contains(&x)
            || !self.written_allocation(&dy)
        {
            return false;
        }
        let Ok(y) = self.own_value(node) else {
            return false;
        };
        let mut lazy = self.lazy.remove(&i).unwrap_or_default();
        lazy.mask = Some(y);
        self.lazy.insert(x, lazy);
        self.grads[i] = None;
        self.grads[x] = Some((dy, true));
        true
    }

    fn zero(&self, mem: V<'c>, dims: &[i64]) {
        let fx = &self.fx;
        fx.par_vec(fx.entry, dims, |b, ivs, vector| {
            fx.store_w(b, fx.cf_w(0.0, vector), mem, ivs, vector)
        });
    }

    fn alloc(&self, dims: &[i64]) -> V<'c> {
        self.fx.alloc(dims)
    }

    /// `mem[idx] += v`.
    fn acc(&self, b: &Block<'c>, v: V<'c>, mem: V<'c>, idx: &[V<'c>]) {
        self.acc_w(b, v, mem, idx, false);
    }

    /// `mem[idx..idx + 4] += v` when `vector`, else [`Self::acc`].
    fn acc_w(&self, b: &Block<'c>, v: V<'c>, mem: V<'c>, idx: &[V<'c>], vector: bool) {
        if self.storing.borrow().contains(&key(mem)) {
            return self.fx.store_w(b, v, mem, idx, vector);
        }
        let old = self.fx.load_w(b, mem, idx, vector);
        let new = self.fx.addf(b, old, v);
        self.fx.store_w(b, new, mem, idx, vector);
    }

    /// Prepares gradient buffer `buf` for the op about to contribute to it. `once`: the op's
    /// next loop nest writes every element exactly once (through [`Self::acc`] /
    /// [`Self::acc_w`]). The first contribution to an allocation then stores instead of adding
    /// (no zeroing pass, no read); any other first contribution zeroes it first. Zeroing every
    /// gradient at allocation cost a full write pass per feature map (85 M elements per
    /// TCSA gesture step) plus a read in every first addition.
    fn claim(&self, buf: &Buf<'c>, once: bool) {
        self.storing.borrow_mut().clear();
        self.claim_also(buf, once);
    }

    /// [`Self::claim`] for a second buffer the same loop nest writes (the first stays claimed).
    fn claim_also(&self, buf: &Buf<'c>, once: bool) {
        let Some((root, dims)) = self.roots.borrow().get(&key(buf.mem)).cloned() else {
            return;
        };
        if !self.fresh.borrow_mut().remove(&key(root)) {
            return;
        }
        if once {
            self.storing.borrow_mut().push(key(buf.mem));
        } else {
            self.zero(root, &dims);
        }
    }

    /// The gradient buffer of node `v`, allocated at its first contribution (not zeroed: see
    /// [`Self::claim`]).
    /// The gradient of a view is the same view of its operand's gradient: what flows into it
    /// lands where the operand's gradient accumulates, and the view's own step does nothing.
    fn grad_of(&mut self, v: usize) -> Result<Buf<'c>, LowerError> {
        if let Some((buf, _)) = &self.grads[v] {
            return Ok(buf.clone());
        }
        let g = self.g;
        let node = &g.nodes[v];
        let dims = to_i64(&shape_of(&node.ty, self.batch, &node.name)?);
        if is_view(g, node)
            && let Some(x) = node.inputs.first()
        {
            let dx = self.grad_of(x.0)?;
            let buf = Buf {
                mem: view_of(&self.fx, node, &dx, &dims),
                dims,
            };
            let root = self.roots.borrow().get(&key(dx.mem)).cloned();
            if let Some(root) = root {
                self.roots.borrow_mut().insert(key(buf.mem), root);
            }
            self.grads[v] = Some((buf.clone(), false));
            return Ok(buf);
        }
        // Not zeroed: the first contribution decides how (see `claim`).
        let mem = self.alloc(&dims);
        if self.poison {
            let fx = &self.fx;
            fx.par_vec(fx.entry, &dims, |b, ivs, vector| {
                fx.store_w(b, fx.cf_w(f64::NAN, vector), mem, ivs, vector)
            });
        }
        self.roots
            .borrow_mut()
            .insert(key(mem), (mem, dims.clone()));
        self.fresh.borrow_mut().insert(key(mem));
        let buf = Buf { mem, dims };
        self.grads[v] = Some((buf.clone(), true));
        Ok(buf)
    }

    /// `node`'s own forward value (saved by the forward).
    fn own_value(&self, node: &Node) -> Result<Buf<'c>, LowerError> {
        index_of(self.g, node)
            .and_then(|i| self.fwd[i].clone())
            .ok_or_else(|| LowerError::new(format!("`{}` was not saved by the forward", node.name)))
    }

    /// The auxiliary saved buffer `aux` of `node`, if the forward saved one.
    fn aux_of(&self, node: &Node, aux: Aux) -> Option<V<'c>> {
        let i = index_of(self.g, node)?;
        self.aux.get(&(i, aux)).copied()
    }

    fn saved(&self, node: &Node, k: usize) -> Result<Buf<'c>, LowerError> {
        let id = node
            .inputs
            .get(k)
            .ok_or_else(|| LowerError::new(format!("operand {k} is missing")))?;
        self.forward_value(id.0)
    }

    /// Node `v`'s forward value: passed by the forward, or recomputed into a buffer that lives
    /// until the end of the current step.
    fn forward_value(&self, v: usize) -> Result<Buf<'c>, LowerError> {
        if let Some(buf) = self.fwd[v].clone() {
            return Ok(buf);
        }
        let node = &self.g.nodes[v];
        if !self.recomputed.contains(&v) {
            return Err(LowerError::new(format!(
                "`{}` was not saved by the forward",
                node.name
            )));
        }
        let value = self.product_of(v)?;
        let dims = to_i64(&shape_of(&node.ty, self.batch, &node.name)?);
        let mem = self.alloc(&dims);
        let fx = &self.fx;
        fx.par_vec(fx.entry, &dims, |b, o, vector| {
            let r = value.load(fx, b, &dims, o, vector);
            fx.store_w(b, r, mem, o, vector);
        });
        self.temps.borrow_mut().push(mem);
        Ok(Buf { mem, dims })
    }

    /// The gradient buffer of operand `k`, ready for contributions that may add to an element
    /// more than once or leave some untouched (scatters, runtime kernels).
    fn input_grad(&mut self, node: &Node, k: usize) -> Result<Buf<'c>, LowerError> {
        let buf = self.operand_grad(node, k)?;
        self.claim(&buf, false);
        Ok(buf)
    }

    /// [`Self::input_grad`] for an op whose next loop nest writes every element of the
    /// operand's gradient exactly once.
    fn input_grad_once(&mut self, node: &Node, k: usize) -> Result<Buf<'c>, LowerError> {
        let buf = self.operand_grad(node, k)?;
        self.claim(&buf, true);
        Ok(buf)
    }

    fn operand_grad(&mut self, node: &Node, k: usize) -> Result<Buf<'c>, LowerError> {
        let id = node
            .inputs
            .get(k)
            .ok_or_else(|| LowerError::new(format!("operand {k} is missing")))?;
        self.grad_of(id.0)
    }

    fn param(&self, node: &Node, k: usize) -> Result<V<'c>, LowerError> {
        node.params
            .get(k)
            .and_then(|p| self.params.get(p.0))
            .copied()
            .ok_or_else(|| LowerError::new(format!("parameter {k} is missing")))
    }

    /// The gradient buffer of the node's `k`-th parameter, if it exists and is trainable.
    fn dparam(&self, node: &Node, k: usize) -> Option<V<'c>> {
        node.params
            .get(k)
            .and_then(|p| self.dparams.get(p.0).copied().flatten())
    }

    fn position(&self, node: &Node, k: usize, axis: Axis) -> Result<usize, LowerError> {
        let id = node
            .inputs
            .get(k)
            .ok_or_else(|| LowerError::new(format!("operand {k} is missing")))?;
        self.g.ty(*id).position(axis).ok_or_else(|| {
            LowerError::new(format!(
                "`{}` needs a {} axis",
                node.op.mnemonic(),
                axis.letter()
            ))
        })
    }

    fn step(
        &mut self,
        i: usize,
        node: &Node,
        dy: &Buf<'c>,
        scan: Option<&ScanAdjoint>,
    ) -> Result<(), LowerError> {
        match &node.op {
            Op::Input { .. } => Ok(()),
            Op::Conv2d {
                stride, padding, ..
            } => self.conv2d(node, dy, *stride, *padding),
            Op::Dense { axis, .. } => self.dense(node, dy, *axis),
            Op::Pool {
                kind,
                kernel,
                stride,
            } => self.pool(node, dy, *kind, *kernel as i64, *stride as i64),
            Op::BatchNorm { axis, .. } => self.batch_norm(i, node, dy, *axis),
            // Views (dropout with p = 0 is one): their gradient is a view of the operand's
            // (see `grad_of`).
            _ if is_view(self.g, node) => Ok(()),
            Op::Dropout { p } => self.dropout(i, node, dy, *p),
            Op::Flatten => self.flatten(node, dy),
            Op::Reduce {
                kind,
                axes,
                keepdim,
            } => self.reduce(node, dy, *kind, axes, *keepdim),
            Op::Concat { axis } => self.concat(node, dy, *axis),
            Op::Unary(op) => self.unary(node, dy, *op),
            Op::Binary(op) => self.binary(node, dy, *op),
            Op::Scan { neuron, emit } => {
                let adj = scan.ok_or_else(|| LowerError::new("scan without adjoint equations"))?;
                self.scan(i, node, dy, neuron, *emit, adj)
            }
        }
    }

    /// For a conv whose input is the spike train of a neuron layer read by nothing else:
    /// writes into that layer's (fresh) gradient buffer, per element and step, 1 where the
    /// surrogate lets the spike's gradient through (some partial derivative of the `fire`
    /// equation is nonzero) and 0 where it does not, and returns the buffer. Elsewhere the
    /// scan's backward multiplies the spike gradient by zero, so the conv's dx is only needed
    /// where the buffer holds 1 (`snn_conv2d_backward_dx_masked_f32`). For the rectangular
    /// surrogate of the MA-SNN neurons that is 15–40 % of the gesture network's positions.
    /// The pass replaces the zeroing a fresh gradient buffer needs before an accumulating
    /// kernel; `None` when the pattern does not hold (the dx kernel then computes every
    /// element).
    fn fire_support_into(&mut self, conv: &Node) -> Result<Option<Buf<'c>>, LowerError> {
        let g = self.g;
        let Some(s) = conv.inputs.first().map(|v| v.0) else {
            return Ok(None);
        };
        let scan = &g.nodes[s];
        let Op::Scan {
            neuron,
            emit: ScanEmit::Spikes,
        } = &scan.op
        else {
            return Ok(None);
        };
        let readers = g
            .nodes
            .iter()
            .flat_map(|n| &n.inputs)
            .filter(|v| v.0 == s)
            .count();
        let Some(adj) = self.adjoints.get(&s).cloned() else {
            return Ok(None);
        };
        let Some(&states) = self.states.get(&s) else {
            return Ok(None);
        };
        if readers != 1 || g.outputs.iter().any(|o| o.0 == s) || self.grads[s].is_some() {
            return Ok(None);
        }
        let dx = self.grad_of(s)?;
        let root = self.roots.borrow().get(&key(dx.mem)).cloned();
        let Some((root, dims)) = root else {
            return Ok(None);
        };
        if key(root) != key(dx.mem)
            || dims != dx.dims
            || !self.fresh.borrow_mut().remove(&key(root))
        {
            return Ok(None);
        }
        check_program(neuron)?;
        let x = self.saved(scan, 0)?;
        let gate = if scan.inputs.len() > 1 {
            Some(self.saved(scan, 1)?)
        } else {
            None
        };
        let pt = self.position(scan, 0, Axis::T)?;
        let others = remove_at(&x.dims, pt);
        let fx = &self.fx;
        let learns: Vec<V<'c>> = (0..neuron.learns.len())
            .map(|k| {
                self.param(scan, k)
                    .map(|p| fx.load(fx.entry, p, &[fx.cidx(0)]))
            })
            .collect::<Result<_, _>>()?;
        let vec_learns: Vec<V<'c>> = learns.iter().map(|v| fx.splat(fx.entry, *v)).collect();
        let fire = neuron.fire_step;
        let partials = adj
            .steps
            .get(fire)
            .map(|step| step.partials.as_slice())
            .unwrap_or_default();
        let ns = neuron.states.len();
        let r = RefCell::new(Ok(()));
        fx.par_vec(fx.entry, &x.dims, |b, idx, vector| {
            let t = idx[pt];
            let mut rest = idx.to_vec();
            rest.remove(pt);
            let e = linear(fx, b, &rest, &others);
            let zero = fx.cf_w(0.0, vector);
            let io = (&x, gate.as_ref(), states);
            let at = step_inputs(fx, b, io, ns, (t, e), idx, vector, None);
            let learns = if vector { &vec_learns } else { &learns };
            let support = (|| {
                let (before, _) = self.replay_step(b, neuron, &at, learns, fire + 1)?;
                let Some((states, locals)) = before.get(fire) else {
                    return Ok(zero);
                };
                let env = Env {
                    input: at.input,
                    states: states.clone(),
                    learns,
                    locals: locals.clone(),
                };
                let mut any = None;
                for (_, dexpr) in partials {
                    let dv = eval(fx, b, dexpr, &env)?;
                    let nonzero = fx.cmpf(b, fpred::UNE, dv, zero);
                    any = Some(match any {
                        None => nonzero,
                        Some(a) => fx.bin(b, "arith.ori", a, nonzero),
                    });
                }
                Ok::<_, LowerError>(match any {
                    Some(any) => fx.select(b, any, fx.cf_w(1.0, vector), zero),
                    None => zero,
                })
            })();
            match support {
                Ok(v) => fx.store_w(b, v, dx.mem, idx, vector),
                Err(e) => *r.borrow_mut() = Err(e),
            }
        });
        r.into_inner()?;
        Ok(Some(dx))
    }

    /// `x[idx]` with zero padding: out-of-range taps read index 0 and are masked to 0.
    fn conv2d(
        &mut self,
        node: &Node,
        dy: &Buf<'c>,
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<(), LowerError> {
        let x = self.saved(node, 0)?;
        let pc = self.position(node, 0, Axis::C)?;
        let ph = self.position(node, 0, Axis::H)?;
        let pw = self.position(node, 0, Axis::W)?;
        let w = self.param(node, 0)?;
        let wdims = node
            .params
            .first()
            .map(|p| to_i64(&self.g.param(*p).shape))
            .unwrap_or_default();
        let [oc_n, _, kh_n, kw_n] = wdims[..] else {
            return Err(LowerError::new("conv weights must be [out, in, kh, kw]"));
        };
        let (sh, sw) = (stride.0 as i64, stride.1 as i64);
        let (padh, padw) = (padding.0 as i64, padding.1 as i64);
        let rank = x.dims.len();
        // Runtime kernel (CPU JIT): im2col/GEMM for dW, GEMM + col2im for dx, on [N, C, H, W].
        if self.fx.kernels && pc + 3 == rank && ph + 2 == rank && pw + 1 == rank {
            let (dw, db) = (self.dparam(node, 0), self.dparam(node, 1));
            // dx where it is read, when its reader says where (see `fire_support_into`).
            let masked = self.fire_support_into(node)?;
            let dx = match &masked {
                Some(dx) => dx.clone(),
                None => self.input_grad(node, 0)?,
            };
            let fx = &self.fx;
            let n: i64 = x.dims[..pc].iter().product();
            let shape: Vec<V<'c>> = [
                n,
                x.dims[pc],
                x.dims[ph],
                x.dims[pw],
                oc_n,
                kh_n,
                kw_n,
                sh,
                sw,
                padh,
                padw,
                dy.dims[ph],
                dy.dims[pw],
            ]
            .iter()
            .map(|v| fx.cidx(*v))
            .collect();
            if masked.is_some() {
                let mut args = vec![fx.base_ptr(w), fx.base_ptr(dy.mem), fx.base_ptr(dx.mem)];
                args.extend(&shape);
                fx.call_kernel("snn_conv2d_backward_dx_masked_f32", &args);
            }
            if masked.is_some() && dw.is_none() && db.is_none() {
                return Ok(());
            }
            let opt = |p: Option<V<'c>>| p.map_or_else(|| fx.cidx(0), |p| fx.base_ptr(p));
            let mut args = vec![
                fx.base_ptr(x.mem),
                fx.base_ptr(w),
                fx.base_ptr(dy.mem),
                // Null: the masked kernel wrote dx.
                if masked.is_some() {
                    fx.cidx(0)
                } else {
                    fx.base_ptr(dx.mem)
                },
                opt(dw),
                opt(db),
            ];
            args.extend(shape);
            let name = kernel_for(
                self.g.ty(node.inputs[0]),
                "snn_conv2d_backward_f32",
                "snn_conv2d_backward_spike_f32",
            );
            fx.call_kernel(name, &args);
            return Ok(());
        }
        let fx = &self.fx;
        let y_wo_c = remove_at(&dy.dims, pc);
        let gemm_shape = (fx.gemm && ph == pc + 1 && pw == pc + 2)
            .then(|| ConvShape::of(&x.dims, &dy.dims, pc, (kh_n, kw_n), (sh, sw), (padh, padw)))
            .flatten();
        // dW[oc, ic, kh, kw] = Σ dy[.., oc, oh, ow] · x[.., ic, oh·s + kh − p, ow·s + kw − p].
        if let (Some(dw), Some(shape)) = (self.dparam(node, 0), &gemm_shape) {
            fx.conv2d_weight_grad_gemm(&x, dy, dw, shape);
        } else if let Some(dw) = self.dparam(node, 0) {
            let term = |b: &Block<'c>, wi: &[V<'c>], r: &[V<'c>]| {
                let yidx = insert_at(r, pc, wi[0]);
                let d = fx.load(b, dy.mem, &yidx);
                let ih = fx.ilin(b, yidx[ph], sh, Some(wi[2]), -padh);
                let iw = fx.ilin(b, yidx[pw], sw, Some(wi[3]), -padw);
                let mut xidx = yidx.clone();
                xidx[pc] = wi[1];
                xidx[ph] = ih;
                xidx[pw] = iw;
                let xv = if padh == 0 && padw == 0 {
                    fx.load(b, x.mem, &xidx)
                } else {
                    fx.load_padded(b, &x, &mut xidx, [(ph, ih), (pw, iw)])
                };
                vec![fx.mulf(b, d, xv)]
            };
            fx.split_sums(
                &wdims,
                &y_wo_c,
                1,
                pw + 1 == dy.dims.len(),
                &term,
                &|b, wi, s| self.acc(b, s[0], dw, wi),
            );
        }
        if let Some(db) = self.dparam(node, 1) {
            let term = |b: &Block<'c>, oc: &[V<'c>], r: &[V<'c>]| {
                vec![fx.load(b, dy.mem, &insert_at(r, pc, oc[0]))]
            };
            fx.split_sums(
                &[oc_n],
                &y_wo_c,
                1,
                pw + 1 == dy.dims.len(),
                &term,
                &|b, oc, s| self.acc(b, s[0], db, oc),
            );
        }
        // dx as a gather (a transposed conv): each input element sums the output taps that
        // read it, so parallel iterations write disjoint elements.
        let dx = self.input_grad_once(node, 0)?;
        let fx = &self.fx;
        let (oh_n, ow_n) = (dy.dims[ph], dy.dims[pw]);
        // The output pixel (oh, ow) whose tap (kh, kw) reads input pixel xi, and whether
        // there is one.
        let source = |b: &Block<'c>, xi: &[V<'c>], kh: V<'c>, kw: V<'c>| {
            let mut valid: Option<V<'c>> = None;
            let mut outs = Vec::new();
            for (pos, s, pad, k, n_out) in [(ph, sh, padh, kh, oh_n), (pw, sw, padw, kw, ow_n)] {
                let shifted = fx.ilin(b, xi[pos], 1, None, pad);
                let num = fx.bin(b, "arith.subi", shifted, k);
                let o = if s == 1 {
                    num
                } else {
                    fx.bin(b, "arith.divsi", num, fx.cidx(s))
                };
                let mut ok = fx.cmpi(b, ISGE, num, fx.cidx(0));
                let lt = fx.cmpi(b, ISLT, o, fx.cidx(n_out));
                ok = fx.bin(b, "arith.andi", ok, lt);
                if s != 1 {
                    let rem = fx.bin(b, "arith.remsi", num, fx.cidx(s));
                    let exact = fx.cmpi(b, IEQ, rem, fx.cidx(0));
                    ok = fx.bin(b, "arith.andi", ok, exact);
                }
                valid = Some(match valid {
                    Some(v) => fx.bin(b, "arith.andi", v, ok),
                    None => ok,
                });
                outs.push(o);
            }
            let valid = valid.unwrap_or_else(|| fx.cidx(0));
            let c0 = fx.cidx(0);
            let oh = fx.select(b, valid, outs[0], c0);
            let ow = fx.select(b, valid, outs[1], c0);
            (valid, oh, ow)
        };
        if let Some(shape) = &gemm_shape {
            // col2im: each input pixel sums the im2col gradient entries of the taps reading it.
            let dcols = fx.conv2d_cols_grad_gemm(w, dy, shape);
            fx.par(fx.entry, &dx.dims, |b, xi| {
                let acc = fx.acc_nest(b, &[kh_n, kw_n], fx.cf(0.0), &mut |b, r, acc| {
                    let (valid, oh, ow) = source(b, xi, r[0], r[1]);
                    let mut idx = xi[..pc + 1].to_vec();
                    idx.extend([r[0], r[1], oh, ow]);
                    let d = fx.load(b, dcols, &idx);
                    let d = fx.select(b, valid, d, fx.cf(0.0));
                    fx.addf(b, acc, d)
                });
                self.acc(b, acc, dx.mem, xi);
            });
            fx.stmt(fx.entry, "memref.dealloc", &[dcols]);
            return Ok(());
        }
        fx.par(fx.entry, &dx.dims, |b, xi| {
            let acc = fx.acc_nest(b, &[oc_n, kh_n, kw_n], fx.cf(0.0), &mut |b, r, acc| {
                let (valid, oh, ow) = source(b, xi, r[1], r[2]);
                let mut yidx = xi.to_vec();
                yidx[pc] = r[0];
                yidx[ph] = oh;
                yidx[pw] = ow;
                let d = fx.load(b, dy.mem, &yidx);
                let wv = fx.load(b, w, &[r[0], xi[pc], r[1], r[2]]);
                let p = fx.mulf(b, d, wv);
                let p = fx.select(b, valid, p, fx.cf(0.0));
                fx.addf(b, acc, p)
            });
            self.acc(b, acc, dx.mem, xi);
        });
        Ok(())
    }

    fn dense(&mut self, node: &Node, dy: &Buf<'c>, axis: Axis) -> Result<(), LowerError> {
        let x = self.saved(node, 0)?;
        let pa = self.position(node, 0, axis)?;
        let w = self.param(node, 0)?;
        let (n_out, n_in) = (dy.dims[pa], x.dims[pa]);
        let others = remove_at(&x.dims, pa);
        if self.fx.kernels && dy.dims.len() == x.dims.len() {
            let (dw, db) = (self.dparam(node, 0), self.dparam(node, 1));
            let dx = self.input_grad(node, 0)?;
            let fx = &self.fx;
            let opt = |p: Option<V<'c>>| p.map_or_else(|| fx.cidx(0), |p| fx.base_ptr(p));
            let args = [
                fx.base_ptr(x.mem),
                fx.base_ptr(w),
                fx.base_ptr(dy.mem),
                fx.base_ptr(dx.mem),
                opt(dw),
                opt(db),
                fx.cidx(x.dims[..pa].iter().product()),
                fx.cidx(n_in),
                fx.cidx(x.dims[pa + 1..].iter().product()),
                fx.cidx(n_out),
            ];
            let name = kernel_for(
                self.g.ty(node.inputs[0]),
                "snn_dense_backward_f32",
                "snn_dense_backward_spike_f32",
            );
            fx.call_kernel(name, &args);
            return Ok(());
        }
        let fx = &self.fx;
        // The last axis: `dw += dyᵀ·x` and `dx (+)= dy·w` over `[outer, features]` rows.
        let rows = (fx.gemm && pa + 1 == x.dims.len() && dy.dims.len() == x.dims.len())
            .then(|| x.dims[..pa].iter().product::<i64>());
        if let (Some(dw), Some(outer)) = (self.dparam(node, 0), rows) {
            let product = Gemm {
                trans_a: true,
                accumulate: true,
                ..Gemm::single(size(n_out), size(n_in), size(outer))
            };
            fx.gemm(dy.mem, x.mem, dw, product);
        } else if let Some(dw) = self.dparam(node, 0) {
            let term = |b: &Block<'c>, oi: &[V<'c>], r: &[V<'c>]| {
                let d = fx.load(b, dy.mem, &insert_at(r, pa, oi[0]));
                let xv = fx.load(b, x.mem, &insert_at(r, pa, oi[1]));
                vec![fx.mulf(b, d, xv)]
            };
            fx.split_sums(
                &[n_out, n_in],
                &others,
                1,
                pa + 1 != x.dims.len(),
                &term,
                &|b, oi, s| self.acc(b, s[0], dw, oi),
            );
        }
        if let Some(db) = self.dparam(node, 1) {
            let term = |b: &Block<'c>, o: &[V<'c>], r: &[V<'c>]| {
                vec![fx.load(b, dy.mem, &insert_at(r, pa, o[0]))]
            };
            fx.split_sums(
                &[n_out],
                &others,
                1,
                pa + 1 != x.dims.len(),
                &term,
                &|b, o, s| self.acc(b, s[0], db, o),
            );
        }
        let dx = self.input_grad_once(node, 0)?;
        let fx = &self.fx;
        if let Some(outer) = rows {
            let product = Gemm {
                accumulate: !self.storing.borrow().contains(&key(dx.mem)),
                ..Gemm::single(size(outer), size(n_in), size(n_out))
            };
            fx.gemm(dy.mem, w, dx.mem, product);
            return Ok(());
        }
        fx.par(fx.entry, &dx.dims, |b, xi| {
            let acc = fx.acc_nest(b, &[n_out], fx.cf(0.0), &mut |b, r, acc| {
                let mut yidx = xi.to_vec();
                yidx[pa] = r[0];
                let d = fx.load(b, dy.mem, &yidx);
                let wv = fx.load(b, w, &[r[0], xi[pa]]);
                let p = fx.mulf(b, d, wv);
                fx.addf(b, acc, p)
            });
            self.acc(b, acc, dx.mem, xi);
        });
        Ok(())
    }

    /// Runs `body` for every pooling window (its output index): in parallel when windows do
    /// not overlap, else sequentially over the spatial output axes so that scattered
    /// additions into shared input elements never race.
    fn windows(
        &self,
        dims: &[i64],
        ph: usize,
        pw: usize,
        overlap: bool,
        body: &dyn Fn(&Block<'c>, &[V<'c>]),
    ) {
        let fx = &self.fx;
        if !overlap {
            fx.par(fx.entry, dims, |b, o| body(b, o));
            return;
        }
        let rest = remove_at(&remove_at(dims, pw), ph);
        fx.par(fx.entry, &rest, |b, r| {
            fx.acc_nest(b, &[dims[ph], dims[pw]], fx.cf(0.0), &mut |b, hw, acc| {
                let o = insert_at(&insert_at(r, ph, hw[0]), pw, hw[1]);
                body(b, &o);
                acc
            });
        });
    }

    fn pool(
        &mut self,
        node: &Node,
        dy: &Buf<'c>,
        kind: PoolKind,
        k: i64,
        s: i64,
    ) -> Result<(), LowerError> {
        let ph = self.position(node, 0, Axis::H)?;
        let pw = self.position(node, 0, Axis::W)?;
        let x = match kind {
            PoolKind::Max => Some(self.saved(node, 0)?),
            PoolKind::Avg => None,
        };
        let dx = self.operand_grad(node, 0)?;
        // Average windows that tile the input write each element once; max pooling scatters.
        let tiles = s == k && dx.dims[ph] % k == 0 && dx.dims[pw] % k == 0;
        self.claim(&dx, x.is_none() && tiles);
        let fx = &self.fx;
        let tap = |b: &Block<'c>, o: &[V<'c>], kh: V<'c>, kw: V<'c>| {
            let mut idx = o.to_vec();
            idx[ph] = fx.ilin(b, o[ph], s, Some(kh), 0);
            idx[pw] = fx.ilin(b, o[pw], s, Some(kw), 0);
            idx
        };
        let body = |b: &Block<'c>, o: &[V<'c>]| {
            let d = fx.load(b, dy.mem, o);
            match &x {
                None => {
                    let share = fx.divf(b, d, fx.cf((k * k) as f64));
                    fx.acc_nest(b, &[k, k], fx.cf(0.0), &mut |b, r, acc| {
                        self.acc(b, share, dx.mem, &tap(b, o, r[0], r[1]));
                        acc
                    });
                }
                Some(x) => {
                    // First argmax in row-major window order, NaN winning (the kernels' rule).
                    let (best, _) = self.argmax(b, &[k, k], &|b, r| {
                        fx.load(b, x.mem, &tap(b, o, r[0], r[1]))
                    });
                    let kh = fx.bin(b, "arith.divui", best, fx.cidx(k));
                    let kw = fx.bin(b, "arith.remui", best, fx.cidx(k));
                    self.acc(b, d, dx.mem, &tap(b, o, kh, kw));
                }
            }
        };
        if x.is_none() && pairs_in_lanes(fx, k, s, pw, dy.dims.len()) {
            // 2×2 windows at stride 2: each lane's share goes to two neighbouring columns of
            // two rows (the forward's shuffles in reverse); windows do not overlap.
            fx.par_vec(fx.entry, &dy.dims, |b, o, vector| {
                if !vector {
                    return body(b, o);
                }
                let d = fx.vload(b, dy.mem, o);
                let share = fx.divf(b, d, fx.cf_w(4.0, true));
                let lo = fx.shuffle(b, share, share, [0, 0, 1, 1]);
                let hi = fx.shuffle(b, share, share, [2, 2, 3, 3]);
                for kh in 0..2 {
                    let mut idx = o.to_vec();
                    idx[ph] = fx.ilin(b, o[ph], 2, None, kh);
                    idx[pw] = fx.ilin(b, o[pw], 2, None, 0);
                    self.acc_w(b, lo, dx.mem, &idx, true);
                    idx[pw] = fx.ilin(b, o[pw], 2, None, LANES);
                    self.acc_w(b, hi, dx.mem, &idx, true);
                }
            });
            return Ok(());
        }
        self.windows(&dy.dims, ph, pw, s < k, &body);
        Ok(())
    }

    /// Max-reduce gradient for four outputs at once (lanes along a kept last axis): the first
    /// maximum of every lane over `dims` (row-major; a NaN beats any number, as in
    /// [`Self::argmax`]), tracked as a lane vector of linear indices in f32 (exact below 2^24),
    /// then a second pass adds dy where a lane's index matches.
    fn argmax_lanes(
        &self,
        b: &Block<'c>,
        dims: &[i64],
        (x, dy, dx): (&Buf<'c>, &Buf<'c>, &Buf<'c>),
        o: &[V<'c>],
        x_index: &XIndex<'_, 'c>,
    ) {
        let fx = &self.fx;
        let lane_index = |b: &Block<'c>, r: &[V<'c>]| {
            let i = linear(fx, b, r, dims);
            let f = fx.index_to_f32(b, i);
            fx.splat(b, f)
        };
        let inits = [fx.cf_w(f64::NEG_INFINITY, true), fx.cf_w(0.0, true)];
        let best = fx.carry_nest(b, dims, &inits, &[], &mut |b, r, carried| {
            let v = fx.vload(b, x.mem, &x_index(o, r));
            let upd = fx.first_max_wins(b, v, carried[0]);
            let i = lane_index(b, r);
            vec![
                fx.select(b, upd, v, carried[0]),
                fx.select(b, upd, i, carried[1]),
            ]
        });
        let d = fx.vload(b, dy.mem, o);
        let zero = fx.cf_w(0.0, true);
        fx.carry_nest(b, dims, &[], &[], &mut |b, r, _| {
            let hit = fx.cmpf(b, fpred::OEQ, best[1], lane_index(b, r));
            let add = fx.select(b, hit, d, zero);
            self.acc_w(b, add, dx.mem, &x_index(o, r), true);
            vec![]
        });
    }

    /// Index (row-major over `dims`) and value of the first maximum of `value` over `dims`;
    /// a NaN beats any number, as in the runtime kernels' `first_argmax`.
    fn argmax(
        &self,
        b: &Block<'c>,
        dims: &[i64],
        value: &dyn Fn(&Block<'c>, &[V<'c>]) -> V<'c>,
    ) -> (V<'c>, V<'c>) {
        let fx = &self.fx;
        let r = fx.carry_nest(
            b,
            dims,
            &[fx.cidx(0), fx.cf(f64::NEG_INFINITY)],
            &[],
            &mut |b, ivs, carried| {
                let v = value(b, ivs);
                let lin = linear(fx, b, ivs, dims);
                let upd = fx.first_max_wins(b, v, carried[1]);
                vec![
                    fx.select(b, upd, lin, carried[0]),
                    fx.select(b, upd, v, carried[1]),
                ]
            },
        );
        (r[0], r[1])
    }

    /// `dy` is the gradient of the batchnorm's output, or for a [`pooled_batch_norm`] that of
    /// its pool's: each pooled value then stands for its 2×2 window, a quarter each.
    fn batch_norm(
        &mut self,
        i: usize,
        node: &Node,
        dy: &Buf<'c>,
        axis: Axis,
    ) -> Result<(), LowerError> {
        let pooled = self.pooled.contains(&i);
        let x = self.saved(node, 0)?;
        let pa = self.position(node, 0, axis)?;
        let gamma = self.param(node, 0)?;
        let (dgamma, dbeta) = (self.dparam(node, 0), self.dparam(node, 1));
        let dx = self.input_grad_once(node, 0)?;
        let fx = &self.fx;
        let others = remove_at(&x.dims, pa);
        let m = fx.cf(others.iter().product::<i64>() as f64);
        let lanes_ok = pa + 1 != x.dims.len();
        // The forward's batch mean and 1/std (every training forward saves them).
        let stats = self.aux_of(node, Aux::BatchStats).ok_or_else(|| {
            LowerError::new(format!(
                "internal: batchnorm `{}` has no saved batch statistics",
                node.name
            ))
        })?;
        let xhat = |b: &Block<'c>, idx: &[V<'c>], (mean, inv_std): (V<'c>, V<'c>), vector: bool| {
            let w = |s: V<'c>| if vector { fx.splat(b, s) } else { s };
            let v = fx.load_w(b, x.mem, idx, vector);
            let d = fx.subf(b, v, w(mean));
            // As the forward's `bn_apply`: a product with the reciprocal.
            fx.mulf(b, d, w(inv_std))
        };
        let moments = |b: &Block<'c>, c: V<'c>| {
            (
                fx.load(b, stats, &[fx.cidx(0), c]),
                fx.load(b, stats, &[fx.cidx(1), c]),
            )
        };
        // Per channel: mean, 1/std and γ/(σ·M).
        let channel = |b: &Block<'c>, c: V<'c>| {
            let (mean, inv_std) = moments(b, c);
            let g = fx.load(b, gamma, &[c]);
            let g_inv = fx.mulf(b, g, inv_std);
            (mean, inv_std, fx.divf(b, g_inv, m))
        };
        // dx = γ/(σ·M) · (M·dy − Σdy − x̂·Σ(dy·x̂)), `d` the dy at `idx`.
        let apply = |b: &Block<'c>,
                     idx: &[V<'c>],
                     d: V<'c>,
                     (mean, inv_std, scale): (V<'c>, V<'c>, V<'c>),
                     (sum_dy, sum_dy_xhat): (V<'c>, V<'c>),
                     vector: bool| {
            let w = |s: V<'c>| if vector { fx.splat(b, s) } else { s };
            let md = fx.mulf(b, w(m), d);
            let t = fx.subf(b, md, w(sum_dy));
            let xh = xhat(b, idx, (mean, inv_std), vector);
            let u = fx.mulf(b, xh, w(sum_dy_xhat));
            let t = fx.subf(b, t, u);
            let v = fx.mulf(b, w(scale), t);
            self.acc_w(b, v, dx.mem, idx, vector);
        };
        let params = |b: &Block<'c>, c: V<'c>, (sum_dy, sum_dy_xhat): (V<'c>, V<'c>)| {
            if let Some(dg) = dgamma {
                self.acc(b, sum_dy_xhat, dg, &[c]);
            }
            if let Some(dbe) = dbeta {
                self.acc(b, sum_dy, dbe, &[c]);
            }
        };
        if fx.flat {
            // Flat form: Σdy and Σdy·x̂ per channel (split over the leading axes by
            // `split_sums`) into a [2, C] buffer, then one kernel applies dx, as the forward
            // does its statistics. Each element reads its dy: for a pooled dy, a quarter of
            // its window's pooled value.
            let (ph, pw) = (x.dims.len() - 2, x.dims.len() - 1);
            let dy_at = |b: &Block<'c>, idx: &[V<'c>]| {
                if !pooled {
                    return fx.load(b, dy.mem, idx);
                }
                let mut o = idx.to_vec();
                for p in [ph, pw] {
                    o[p] = fx.bin(b, "arith.divui", idx[p], fx.cidx(2));
                }
                let d = fx.load(b, dy.mem, &o);
                fx.mulf(b, d, fx.cf(0.25))
            };
            let sums = self.alloc(&[2, x.dims[pa]]);
            let at = |k: i64, c: V<'c>| [fx.cidx(k), c];
            let terms = |b: &Block<'c>, o: &[V<'c>], r: &[V<'c>]| {
                let idx = insert_at(r, pa, o[0]);
                let d = dy_at(b, &idx);
                let xh = xhat(b, &idx, moments(b, o[0]), false);
                vec![d, fx.mulf(b, d, xh)]
            };
            fx.split_sums(
                &[x.dims[pa]],
                &others,
                2,
                pa + 1 != x.dims.len(),
                &terms,
                &|b, o, s| {
                    params(b, o[0], (s[0], s[1]));
                    fx.store(b, s[0], sums, &at(0, o[0]));
                    fx.store(b, s[1], sums, &at(1, o[0]));
                },
            );
            fx.par(fx.entry, &x.dims, |b, idx| {
                let c = idx[pa];
                let s = (fx.load(b, sums, &at(0, c)), fx.load(b, sums, &at(1, c)));
                let ch = channel(b, c);
                let d = dy_at(b, idx);
                apply(b, idx, d, ch, s, false);
            });
            fx.stmt(fx.entry, "memref.dealloc", &[sums]);
            return Ok(());
        }
        // The dy values of the element(s) that `r` (an index of dy without the channel axis)
        // stands for: that element, or for a pooled dy the 2×2 window of each lane, a quarter
        // of the pooled value at each.
        let ph_pw = (x.dims.len() - 2, x.dims.len() - 1);
        let each_dy_at = |b: &Block<'c>,
                          o: &[V<'c>],
                          vector: bool,
                          f: &mut dyn FnMut(&Block<'c>, &[V<'c>], V<'c>)| {
            let o = o.to_vec();
            let d = self.dy_load(b, dy, &o, vector);
            if !pooled {
                return f(b, &o, d);
            }
            let (ph, pw) = ph_pw;
            let share = fx.mulf(b, d, fx.cf_w(0.25, vector));
            let columns: Vec<(V<'c>, i64)> = if vector {
                vec![
                    (fx.shuffle(b, share, share, [0, 0, 1, 1]), 0),
                    (fx.shuffle(b, share, share, [2, 2, 3, 3]), LANES),
                ]
            } else {
                vec![(share, 0), (share, 1)]
            };
            for kh in 0..2 {
                for &(v, kw) in &columns {
                    let mut idx = o.clone();
                    idx[ph] = fx.ilin(b, o[ph], 2, None, kh);
                    idx[pw] = fx.ilin(b, o[pw], 2, None, kw);
                    f(b, &idx, v);
                }
            }
        };
        let each_dy = |b: &Block<'c>,
                       c: V<'c>,
                       r: &[V<'c>],
                       vector: bool,
                       f: &mut dyn FnMut(&Block<'c>, &[V<'c>], V<'c>)| {
            each_dy_at(b, &insert_at(r, pa, c), vector, f)
        };
        if lanes_ok {
            // Channels before the contiguous axes (feature maps): the sums, then dx, in
            // memory order (`Fx::channel_sums`), through a [2, C] buffer of the sums.
            let sums = self.alloc(&[2, x.dims[pa]]);
            let at = |k: i64, c: V<'c>| [fx.cidx(k), c];
            fx.channel_sums(
                &dy.dims,
                pa,
                2,
                &|b, o, vector| {
                    let ch = moments(b, o[pa]);
                    let mut acc: Option<(V<'c>, V<'c>)> = None;
                    each_dy_at(b, o, vector, &mut |b, idx, d| {
                        let xh = xhat(b, idx, ch, vector);
                        let dxh = fx.mulf(b, d, xh);
                        acc = Some(match acc {
                            None => (d, dxh),
                            Some((s, t)) => (fx.addf(b, s, d), fx.addf(b, t, dxh)),
                        });
                    });
                    let (s, t) =
                        acc.unwrap_or_else(|| (fx.cf_w(0.0, vector), fx.cf_w(0.0, vector)));
                    vec![s, t]
                },
                &|b, c, s| {
                    params(b, c, (s[0], s[1]));
                    fx.store(b, s[0], sums, &at(0, c));
                    fx.store(b, s[1], sums, &at(1, c));
                },
            );
            let (planes, rest) = dy.dims.split_at(pa + 1);
            fx.par(fx.entry, planes, |b, plane| {
                let c = plane[pa];
                let ch = channel(b, c);
                let s = (fx.load(b, sums, &at(0, c)), fx.load(b, sums, &at(1, c)));
                fx.for_vec(b, rest, &|b, r, vector| {
                    each_dy_at(b, &[plane, r].concat(), vector, &mut |b, idx, d| {
                        apply(b, idx, d, ch, s, vector)
                    });
                });
            });
            fx.stmt(fx.entry, "memref.dealloc", &[sums]);
            return Ok(());
        }
        let dy_others = remove_at(&dy.dims, pa);
        fx.par(fx.entry, &[x.dims[pa]], |b, c| {
            let c = c[0];
            let ch = channel(b, c);
            let sums = fx.sum_nest(b, &dy_others, 2, lanes_ok, &mut |b, r, acc, vector| {
                let mut acc = acc.to_vec();
                each_dy(b, c, r, vector, &mut |b, idx, d| {
                    let xh = xhat(b, idx, (ch.0, ch.1), vector);
                    let dxh = fx.mulf(b, d, xh);
                    acc = vec![fx.addf(b, acc[0], d), fx.addf(b, acc[1], dxh)];
                });
                acc
            });
            let sums = (sums[0], sums[1]);
            params(b, c, sums);
            let apply = |b: &Block<'c>, r: &[V<'c>], vector: bool| {
                each_dy(b, c, r, vector, &mut |b, idx, d| {
                    apply(b, idx, d, ch, sums, vector)
                });
            };
            if lanes_ok {
                fx.par_vec(b, &dy_others, apply);
            } else {
                fx.par(b, &dy_others, |b, r| apply(b, r, false));
            }
        });
        Ok(())
    }

    /// dx += dy · mask · 1/(1 − p): the forward's mask and scale (the op is linear).
    fn dropout(&mut self, i: usize, node: &Node, dy: &Buf<'c>, p: f64) -> Result<(), LowerError> {
        let mask = *self.masks.get(&i).ok_or_else(|| {
            LowerError::new(format!("internal: dropout `{}` has no mask", node.name))
        })?;
        let dx = self.input_grad_once(node, 0)?;
        let fx = &self.fx;
        let scale = dropout_scale(p);
        fx.par_vec(fx.entry, &dx.dims, |b, idx, vector| {
            let d = fx.load_w(b, dy.mem, idx, vector);
            let m = fx.load_w(b, mask, idx, vector);
            let v = fx.mulf(b, d, m);
            let v = fx.mulf(b, v, fx.cf_as(scale, v));
            self.acc_w(b, v, dx.mem, idx, vector);
        });
        Ok(())
    }

    fn flatten(&mut self, node: &Node, dy: &Buf<'c>) -> Result<(), LowerError> {
        let xid = node
            .inputs
            .first()
            .ok_or_else(|| LowerError::new("flatten needs an operand"))?;
        let xty = self.g.ty(*xid).clone();
        let pc = self.position(node, 0, Axis::C)?;
        let ph = self.position(node, 0, Axis::H)?;
        let pw = self.position(node, 0, Axis::W)?;
        let pt = xty.position(Axis::T);
        let pb = xty.position(Axis::B);
        if xty.rank() != 3 + usize::from(pt.is_some()) + usize::from(pb.is_some()) {
            return Err(LowerError::new(format!(
                "flatten of {} is not supported",
                xty.shape_string()
            )));
        }
        let dx = self.input_grad_once(node, 0)?;
        let fx = &self.fx;
        let (h, w) = (dx.dims[ph], dx.dims[pw]);
        // Consecutive W are consecutive N: vectors along W when it is the last axis.
        let body = |b: &Block<'c>, xi: &[V<'c>], vector: bool| {
            let chw = fx.ilin(b, xi[pc], h, Some(xi[ph]), 0);
            let n = fx.ilin(b, chw, w, Some(xi[pw]), 0);
            let t = pt.map_or(fx.cidx(0), |p| xi[p]);
            let bb = pb.map_or(fx.cidx(0), |p| xi[p]);
            let d = fx.load_w(b, dy.mem, &[t, bb, n], vector);
            self.acc_w(b, d, dx.mem, xi, vector);
        };
        if pw + 1 == dx.dims.len() {
            fx.par_vec(fx.entry, &dx.dims, body);
        } else {
            fx.par(fx.entry, &dx.dims, |b, xi| body(b, xi, false));
        }
        Ok(())
    }

    fn reduce(
        &mut self,
        node: &Node,
        dy: &Buf<'c>,
        kind: ReduceKind,
        axes: &[Axis],
        keepdim: bool,
    ) -> Result<(), LowerError> {
        let xid = node
            .inputs
            .first()
            .ok_or_else(|| LowerError::new("reduce needs an operand"))?;
        let reduced: Vec<bool> = self
            .g
            .ty(*xid)
            .dims
            .iter()
            .map(|(a, _)| axes.contains(a))
            .collect();
        // A mean or sum's gradient is `dy` broadcast: left to the reader of the operand's
        // gradient ([`LazyGrad`]) when that buffer already holds a contribution and `dy` is a
        // buffer of its own, kept until then.
        if kind != ReduceKind::Max && !self.fx.flat && keepdim && self.stepped.contains(&xid.0) {
            let dx = self.grad_of(xid.0)?;
            let own_dy = self
                .roots
                .borrow()
                .get(&key(dy.mem))
                .is_some_and(|(root, _)| key(*root) == key(dy.mem));
            if own_dy && self.written_allocation(&dx) {
                let count: i64 = dx
                    .dims
                    .iter()
                    .zip(&reduced)
                    .filter(|(_, r)| **r)
                    .map(|(d, _)| *d)
                    .product();
                let scale = match kind {
                    ReduceKind::Mean => 1.0 / count as f64,
                    _ => 1.0,
                };
                self.lazy
                    .entry(xid.0)
                    .or_default()
                    .terms
                    .push((dy.clone(), scale));
                self.keep_dy.set(true);
                return Ok(());
            }
        }
        // A max with a saved argmax never reads its operand: fetching it would recompute a
        // rematerialised product (a full feature map) for nothing.
        let argmax = self.aux_of(node, Aux::Argmax);
        let x = match (kind, argmax) {
            (ReduceKind::Max, None) => Some(self.saved(node, 0)?),
            _ => None,
        };
        let dx = if kind != ReduceKind::Max {
            self.input_grad_once(node, 0)?
        } else {
            self.input_grad(node, 0)?
        };
        let fx = &self.fx;
        let red_dims: Vec<i64> = dx
            .dims
            .iter()
            .zip(&reduced)
            .filter(|(_, r)| **r)
            .map(|(d, _)| *d)
            .collect();
        let count: i64 = red_dims.iter().product();
        let x_index = |o: &[V<'c>], r: &[V<'c>]| reduce_index(&reduced, keepdim, o, r);
        match (x, argmax) {
            (None, None) => {
                let last_reduced = reduced.last() == Some(&true);
                fx.par_vec(fx.entry, &dx.dims, |b, xi, vector| {
                    let mut yidx = Vec::new();
                    for (pos, red) in reduced.iter().enumerate() {
                        if !*red {
                            yidx.push(xi[pos]);
                        } else if keepdim {
                            yidx.push(fx.cidx(0));
                        }
                    }
                    // A reduced last axis: every lane reads the same dy.
                    let d = if vector && last_reduced {
                        let d = fx.load(b, dy.mem, &yidx);
                        fx.splat(b, d)
                    } else {
                        fx.load_w(b, dy.mem, &yidx, vector)
                    };
                    let d = match kind {
                        ReduceKind::Mean => fx.mulf(b, d, fx.cf_as(1.0 / count as f64, d)),
                        _ => d,
                    };
                    self.acc_w(b, d, dx.mem, xi, vector);
                });
            }
            (_, Some(ab)) => {
                // The forward saved where each output's maximum is: one add per output.
                fx.par(fx.entry, &dy.dims, |b, o| {
                    let at = fx.load(b, ab, o);
                    let best = fx.f32_to_index(b, at);
                    let r = delinearise(fx, b, best, &red_dims);
                    let d = fx.load(b, dy.mem, o);
                    self.acc(b, d, dx.mem, &x_index(o, &r));
                });
            }
            (Some(x), None) => {
                let scalar = |b: &Block<'c>, o: &[V<'c>]| {
                    let (best, _) =
                        self.argmax(b, &red_dims, &|b, r| fx.load(b, x.mem, &x_index(o, r)));
                    let r = delinearise(fx, b, best, &red_dims);
                    let d = fx.load(b, dy.mem, o);
                    self.acc(b, d, dx.mem, &x_index(o, &r));
                };
                if reduced.last() == Some(&false) && !fx.flat {
                    // The last axis is kept: each lane is an output of its own, and scans the
                    // reduced axes in the same row-major order under the same rule.
                    fx.par_vec(fx.entry, &dy.dims, |b, o, vector| {
                        if vector {
                            self.argmax_lanes(b, &red_dims, (&x, dy, &dx), o, &x_index);
                        } else {
                            scalar(b, o);
                        }
                    });
                } else {
                    fx.par(fx.entry, &dy.dims, scalar);
                }
            }
        }
        Ok(())
    }

    fn concat(&mut self, node: &Node, dy: &Buf<'c>, axis: Axis) -> Result<(), LowerError> {
        let pa = self.position(node, 0, axis)?;
        let mut offset = 0;
        for k in 0..node.inputs.len() {
            let dx = self.input_grad_once(node, k)?;
            let fx = &self.fx;
            fx.par(fx.entry, &dx.dims, |b, xi| {
                let mut yidx = xi.to_vec();
                yidx[pa] = fx.ilin(b, xi[pa], 1, None, offset);
                let d = fx.load(b, dy.mem, &yidx);
                self.acc(b, d, dx.mem, xi);
            });
            offset += dx.dims[pa];
        }
        Ok(())
    }

    fn unary(&mut self, node: &Node, dy: &Buf<'c>, op: UnaryOp) -> Result<(), LowerError> {
        // relu's derivative reads its output (`autodiff::differentiate` saves that instead).
        let x = if op == UnaryOp::Relu {
            self.own_value(node)?
        } else {
            self.saved(node, 0)?
        };
        let dx = self.input_grad_once(node, 0)?;
        let fx = &self.fx;
        fx.par_vec(fx.entry, &dx.dims, |b, xi, vector| {
            let v = fx.load_w(b, x.mem, xi, vector);
            let deriv = match op {
                UnaryOp::Relu => {
                    let pos = fx.cmpf(b, fpred::OGT, v, fx.cf_as(0.0, v));
                    fx.bool_to_f32(b, pos)
                }
                UnaryOp::Sigmoid => {
                    let s = fx.sigmoid(b, v);
                    let one_minus = fx.subf(b, fx.cf_as(1.0, v), s);
                    fx.mulf(b, s, one_minus)
                }
            };
            let d = fx.load_w(b, dy.mem, xi, vector);
            let p = fx.mulf(b, d, deriv);
            self.acc_w(b, p, dx.mem, xi, vector);
        });
        Ok(())
    }

    /// `dst += sum_to_shape(value)`: `value(b, y_index)` summed over the axes where `dst` has
    /// size 1 and the broadcast result does not.
    /// `value(b, y_index, vector)` loads like [`Fx::load_w`]; vectors run along the last
    /// axis unless it is one of the summed ones.
    fn sum_into(
        &self,
        dst: &Buf<'c>,
        ydims: &[i64],
        value: &dyn Fn(&Block<'c>, &[V<'c>], bool) -> V<'c>,
    ) {
        let fx = &self.fx;
        let red: Vec<usize> = (0..ydims.len())
            .filter(|&k| dst.dims.get(k) == Some(&1) && ydims[k] != 1)
            .collect();
        let red_dims: Vec<i64> = red.iter().map(|&k| ydims[k]).collect();
        if fx.flat {
            // One thread per output, or with few outputs (a gate's gradient), the leading
            // summed axes in parallel too.
            let term = |b: &Block<'c>, di: &[V<'c>], r: &[V<'c>]| {
                let mut yidx = di.to_vec();
                for (j, &k) in red.iter().enumerate() {
                    yidx[k] = r[j];
                }
                vec![value(b, &yidx, false)]
            };
            fx.split_sums(
                &dst.dims,
                &red_dims,
                1,
                red.contains(&(ydims.len() - 1)),
                &term,
                &|b, di, s| self.acc(b, s[0], dst.mem, di),
            );
            return;
        }
        // Kept last axes (spatial attention's gate, summed over T and C): streaming order,
        // adding each element into `dst`'s row as it is read.
        let reduced: Vec<bool> = (0..ydims.len()).map(|k| red.contains(&k)).collect();
        let dst_index = |idx: &[V<'c>]| -> Vec<V<'c>> {
            idx.iter()
                .zip(&reduced)
                .map(|(v, r)| if *r { fx.cidx(0) } else { *v })
                .collect()
        };
        // Streaming adds into each element many times: a buffer this op would store into
        // (see `claim`) gets its rows zeroed first instead.
        let fresh = {
            let mut storing = self.storing.borrow_mut();
            let at = storing.iter().position(|k| *k == key(dst.mem));
            at.map(|i| storing.remove(i)).is_some()
        };
        let init = |b: &Block<'c>, idx: &[V<'c>], vector: bool| {
            if fresh {
                fx.store_w(b, fx.cf_w(0.0, vector), dst.mem, &dst_index(idx), vector);
            }
        };
        let nothing = |_: &Block<'c>, _: &[V<'c>], _: bool| {};
        let add = |b: &Block<'c>, idx: &[V<'c>], _: &[V<'c>], vector: bool| {
            let v = value(b, idx, vector);
            self.acc_w(b, v, dst.mem, &dst_index(idx), vector);
        };
        if fx.stream_reduce(ydims, &reduced, &init, &add, &nothing) {
            return;
        }
        if fresh {
            self.storing.borrow_mut().push(key(dst.mem));
        }
        if let Some(last_kept) = fx.plane_split(ydims, &reduced) {
            // Summed axes around kept ones (channel attention's gate over T, H, W): in memory
            // order, each plane's sum, then per output its planes' in order.
            let rest = &ydims[last_kept + 1..];
            fx.by_planes(
                ydims,
                &reduced,
                last_kept,
                &[fx.cf(0.0)],
                &|b, p| {
                    fx.sum_nest(b, rest, 1, true, &mut |b, r, acc, vector| {
                        let v = value(b, &[p, r].concat(), vector);
                        vec![fx.addf(b, acc[0], v)]
                    })
                },
                &|b, _, _, acc, part| vec![fx.addf(b, acc[0], part[0])],
                &|b, kept, acc| {
                    let mut k = kept.iter();
                    let di: Vec<V<'c>> = reduced
                        .iter()
                        .map(|&r| {
                            if r {
                                fx.cidx(0)
                            } else {
                                k.next().copied().unwrap_or_else(|| fx.cidx(0))
                            }
                        })
                        .collect();
                    self.acc(b, acc[0], dst.mem, &di);
                },
            );
            return;
        }
        let body = |b: &Block<'c>, di: &[V<'c>], vector: bool| {
            let init = fx.cf_w(0.0, vector);
            let acc = fx.acc_nest(b, &red_dims, init, &mut |b, r, acc| {
                let mut yidx = di.to_vec();
                for (j, &k) in red.iter().enumerate() {
                    yidx[k] = r[j];
                }
                let v = value(b, &yidx, vector);
                fx.addf(b, acc, v)
            });
            self.acc_w(b, acc, dst.mem, di, vector);
        };
        let n = ydims.len();
        if red.contains(&(n.saturating_sub(1))) {
            // The last axis is summed (a gate broadcast over H, W, or over T, H, W): each output
            // folds rows of contiguous elements, in vectors.
            fx.par(fx.entry, &dst.dims, |b, di| {
                let sum = fx.sum_nest(b, &red_dims, 1, true, &mut |b, r, acc, vector| {
                    let mut yidx = di.to_vec();
                    for (j, &k) in red.iter().enumerate() {
                        yidx[k] = r[j];
                    }
                    let v = value(b, &yidx, vector);
                    vec![fx.addf(b, acc[0], v)]
                });
                self.acc(b, sum[0], dst.mem, di);
            });
        } else {
            fx.par_vec(fx.entry, &dst.dims, body);
        }
    }

    fn binary(&mut self, node: &Node, dy: &Buf<'c>, op: BinaryOp) -> Result<(), LowerError> {
        let operands = match op {
            BinaryOp::Add => None,
            BinaryOp::Mul => {
                let operand = |k: usize| {
                    let id = node
                        .inputs
                        .get(k)
                        .ok_or_else(|| LowerError::new(format!("operand {k} is missing")))?;
                    self.product_of(id.0)
                };
                Some((operand(0)?, operand(1)?))
            }
        };
        if let Some((a, c)) = &operands
            && let Some(full) = self.broadcast_product(node, &dy.dims)?
        {
            return self.gated_product(node, dy, full, [a, c]);
        }
        for k in 0..2 {
            let dst = self.input_grad_once(node, k)?;
            let fx = &self.fx;
            let other = operands
                .as_ref()
                .map(|(a, c)| if k == 0 { c.clone() } else { a.clone() });
            self.sum_into(&dst, &dy.dims, &|b, yidx, vector| {
                let d = self.dy_load(b, dy, yidx, vector);
                match &other {
                    None => d,
                    Some(o) => {
                        let ov = o.load(fx, b, &dy.dims, yidx, vector);
                        fx.mulf(b, d, ov)
                    }
                }
            });
        }
        Ok(())
    }

    /// For a product of a full-shape operand and a broadcast one (attention's `x · gate`) whose
    /// gradients are different buffers: the full operand's position.
    fn broadcast_product(
        &mut self,
        node: &Node,
        ydims: &[i64],
    ) -> Result<Option<usize>, LowerError> {
        let dims = |k: usize| -> Result<Vec<i64>, LowerError> {
            let id = node
                .inputs
                .get(k)
                .ok_or_else(|| LowerError::new(format!("operand {k} is missing")))?;
            let n = &self.g.nodes[id.0];
            Ok(to_i64(&shape_of(&n.ty, self.batch, &n.name)?))
        };
        let full = match (dims(0)? == ydims, dims(1)? == ydims) {
            (true, false) => 0,
            (false, true) => 1,
            _ => return Ok(None),
        };
        let (a, b) = (self.operand_grad(node, 0)?, self.operand_grad(node, 1)?);
        let root = |buf: &Buf<'c>| {
            self.roots
                .borrow()
                .get(&key(buf.mem))
                .map_or(key(buf.mem), |(r, _)| key(*r))
        };
        Ok((root(&a) != root(&b)).then_some(full))
    }

    /// The gradients of `x · gate` (`x` the operand at `full`, `gate` broadcast) in the gate's
    /// reduction loop: each element of dy is read once, for `dx = dy · gate` and for the
    /// gate's sum of `dy · x` (two passes over dy otherwise).
    fn gated_product(
        &mut self,
        node: &Node,
        dy: &Buf<'c>,
        full: usize,
        operands: [&FwdValue<'c>; 2],
    ) -> Result<(), LowerError> {
        let dx = self.operand_grad(node, full)?;
        let dgate = self.operand_grad(node, 1 - full)?;
        self.claim(&dx, true);
        self.claim_also(&dgate, true);
        let (x, gate) = (operands[full], operands[1 - full]);
        let fx = &self.fx;
        self.sum_into(&dgate, &dy.dims, &|b, yidx, vector| {
            let d = self.dy_load(b, dy, yidx, vector);
            let g = gate.load(fx, b, &dy.dims, yidx, vector);
            let dxv = fx.mulf(b, d, g);
            self.acc_w(b, dxv, dx.mem, yidx, vector);
            let xv = x.load(fx, b, &dy.dims, yidx, vector);
            fx.mulf(b, d, xv)
        });
        Ok(())
    }

    /// Node `v`'s forward value as a buffer, or, for a product the backward recomputes, as the
    /// product of its operands, loaded element by element where it is read (no buffer).
    fn product_of(&self, v: usize) -> Result<FwdValue<'c>, LowerError> {
        if self.fwd[v].is_none() && self.recomputed.contains(&v) {
            let node = &self.g.nodes[v];
            let operand = |k: usize| {
                node.inputs
                    .get(k)
                    .ok_or_else(|| LowerError::new(format!("operand {k} is missing")))
                    .and_then(|id| self.product_of(id.0))
            };
            return Ok(FwdValue::Product(Box::new((operand(0)?, operand(1)?))));
        }
        self.forward_value(v).map(FwdValue::Stored)
    }

    /// BPTT for one neuron layer: every element runs an `scf.for` over T descending that
    /// carries the state adjoints (and its learnable-scalar gradients), recomputes the step
    /// from the saved states and applies the adjoint equations in reverse.
    fn scan(
        &mut self,
        i: usize,
        node: &Node,
        dy: &Buf<'c>,
        neuron: &NeuronProgram,
        emit: ScanEmit,
        adj: &ScanAdjoint,
    ) -> Result<(), LowerError> {
        check_program(neuron)?;
        let x = self.saved(node, 0)?;
        let gate = if node.inputs.len() > 1 {
            Some(self.saved(node, 1)?)
        } else {
            None
        };
        let states = *self
            .states
            .get(&i)
            .ok_or_else(|| LowerError::new("per-step states were not passed"))?;
        let pt = self.position(node, 0, Axis::T)?;
        let steps = x.dims[pt];
        let others = remove_at(&x.dims, pt);
        let n_elems: i64 = others.iter().product();
        let nl = neuron.learns.len();
        let dx = self.input_grad_once(node, 0)?;
        // Loaded once on the host side in loop form; in flat form inside the kernel
        // ([`Self::scan_time_inner`]), since a GPU host never reads device memory.
        let learn_params = (0..nl)
            .map(|k| self.param(node, k))
            .collect::<Result<Vec<_>, _>>()?;
        let learns: Vec<V<'c>> = if self.fx.flat {
            Vec::new()
        } else {
            learn_params
                .iter()
                .map(|p| self.fx.load(self.fx.entry, *p, &[self.fx.cidx(0)]))
                .collect()
        };
        // Per-element partial sums of the learnable gradients and the gate gradient at the
        // input's shape: written once per element, reduced afterwards (no racing adds).
        let dlearn_tmp = (nl > 0).then(|| self.alloc(&[nl as i64, n_elems]));
        let dgate_tmp = gate.as_ref().map(|_| self.alloc(&x.dims));
        let last = x.dims.len() - 1;
        let width = x.dims[last];
        let gate_ok = gate.as_ref().is_none_or(|g| {
            g.dims.len() == x.dims.len() && (g.dims[last] == 1 || g.dims[last] == width)
        });
        let io = ScanIo {
            x: &x,
            gate: gate.as_ref(),
            dy,
            dx: &dx,
            states,
            dgate: dgate_tmp,
            dlearn: dlearn_tmp,
            pt,
            steps,
            others: &others,
        };
        let prog = (neuron, emit, adj);
        if !self.fx.flat && pt != last && width >= LANES && gate_ok {
            self.scan_time_outer(prog, &io, &learns)?;
        } else {
            self.scan_time_inner(prog, &io, &learns, &learn_params)?;
        }
        let fx = &self.fx;
        if let Some(tmp) = dlearn_tmp {
            for l in 0..nl {
                if let Some(dp) = self.dparam(node, l) {
                    // Over the elements' own axes, so that flat form can split the sum; one
                    // output as a one-iteration loop (on a GPU, the host cannot read `tmp`).
                    let term = |b: &Block<'c>, _: &[V<'c>], r: &[V<'c>]| {
                        let e = linear(fx, b, r, &others);
                        vec![fx.load(b, tmp, &[fx.cidx(l as i64), e])]
                    };
                    fx.split_sums(&[1], &others, 1, true, &term, &|b, _, s| {
                        self.acc(b, s[0], dp, &[fx.cidx(0)])
                    });
                }
            }
            fx.stmt(fx.entry, "memref.dealloc", &[tmp]);
        }
        if let Some(tmp) = dgate_tmp {
            let dgate = self.input_grad_once(node, 1)?;
            let fx = &self.fx;
            self.sum_into(&dgate, &x.dims, &|b, yidx, vector| {
                fx.load_w(b, tmp, yidx, vector)
            });
            fx.stmt(fx.entry, "memref.dealloc", &[tmp]);
        }
        Ok(())
    }

    /// The reverse scan with T innermost, one element per iteration, the adjoints carried in
    /// registers (the flat GPU form, and layouts the vector form does not cover). `learns`:
    /// the learnable scalars loaded on entry; in flat form they are loaded per element from
    /// `learn_params` instead.
    fn scan_time_inner(
        &self,
        (neuron, emit, adj): ScanProgram<'_>,
        io: &ScanIo<'_, 'c>,
        learns: &[V<'c>],
        learn_params: &[V<'c>],
    ) -> Result<(), LowerError> {
        let fx = &self.fx;
        let ns = neuron.states.len();
        let zero = fx.cf(0.0);
        fx.par(fx.entry, io.others, |b, o| {
            let loaded: Vec<V<'c>>;
            let learns = if fx.flat {
                loaded = learn_params
                    .iter()
                    .map(|p| fx.load(b, *p, &[fx.cidx(0)]))
                    .collect();
                &loaded
            } else {
                learns
            };
            let inits = vec![zero; ns + neuron.learns.len()];
            let (fin, r) = fx.for_carry(b, io.steps, &inits, |b, rev, carried| {
                let t = fx.bin(b, "arith.subi", fx.cidx(io.steps - 1), rev);
                let idx = insert_at(o, io.pt, t);
                let e = linear(fx, b, o, io.others);
                let at = io.step_values(fx, b, ns, (t, e), &idx, false);
                match self.adjoint_step(b, neuron, emit, adj, at, carried, learns) {
                    Ok((next, adj_input, dgate)) => {
                        io.write(self, b, adj_input, dgate, &idx, false);
                        (next, Ok(()))
                    }
                    Err(e) => (carried.to_vec(), Err(e)),
                }
            });
            if let Some(tmp) = io.dlearn {
                let e = linear(fx, b, o, io.others);
                for (l, v) in fin[ns..].iter().enumerate() {
                    fx.store(b, *v, tmp, &[fx.cidx(l as i64), e]);
                }
            }
            r
        })
    }

    /// The reverse scan with the time loop outermost, the last axis in `vector<4xf32>` groups
    /// (the forward's [`vector_parts`]) and the adjoints in buffers: like the forward scan,
    /// every step streams `x[t]`, `dy[t]`, `dx[t]` and the saved states of step t contiguously
    /// (T innermost strides B·N floats per step, a new page per load).
    fn scan_time_outer(
        &self,
        (neuron, emit, adj): ScanProgram<'_>,
        io: &ScanIo<'_, 'c>,
        learns: &[V<'c>],
    ) -> Result<(), LowerError> {
        let fx = &self.fx;
        let (ns, nl) = (neuron.states.len(), neuron.learns.len());
        let bufs: Vec<V<'c>> = (0..ns + nl).map(|_| self.alloc(io.others)).collect();
        for buf in &bufs {
            self.zero(*buf, io.others);
        }
        let vec_learns: Vec<V<'c>> = learns.iter().map(|v| fx.splat(fx.entry, *v)).collect();
        let outer = &io.others[..io.others.len() - 1];
        let parts = vector_parts(io.others[io.others.len() - 1]);
        let (_, r) = fx.for_carry(fx.entry, io.steps, &[], |b, rev, _| {
            let t = fx.bin(b, "arith.subi", fx.cidx(io.steps - 1), rev);
            let mut r = Ok(());
            for &(start, count, lanes, copies) in &parts {
                let mut dims = outer.to_vec();
                dims.push(count);
                let vector = lanes > 1;
                let learns = if vector { &vec_learns } else { learns };
                r = fx.par(b, &dims, |b, o| {
                    for c in 0..copies {
                        let base = lane_base(fx, b, o, start, (lanes, copies), c);
                        let idx = insert_at(&base, io.pt, t);
                        let e = linear(fx, b, &base, io.others);
                        let at = io.step_values(fx, b, ns, (t, e), &idx, vector);
                        let carried: Vec<V<'c>> = bufs
                            .iter()
                            .map(|m| fx.load_w(b, *m, &base, vector))
                            .collect();
                        let (next, adj_input, dgate) =
                            self.adjoint_step(b, neuron, emit, adj, at, &carried, learns)?;
                        for (v, m) in next.iter().zip(&bufs) {
                            fx.store_w(b, *v, *m, &base, vector);
                        }
                        io.write(self, b, adj_input, dgate, &idx, vector);
                    }
                    Ok(())
                });
                if r.is_err() {
                    break;
                }
            }
            (vec![], r)
        });
        r?;
        if let Some(tmp) = io.dlearn {
            fx.par(fx.entry, io.others, |b, o| {
                let e = linear(fx, b, o, io.others);
                for l in 0..nl {
                    let v = fx.load(b, bufs[ns + l], o);
                    fx.store(b, v, tmp, &[fx.cidx(l as i64), e]);
                }
            });
        }
        for buf in bufs {
            fx.stmt(fx.entry, "memref.dealloc", &[buf]);
        }
        Ok(())
    }

    /// Recomputes the first `upto` equations of a scan's forward step from the values `at`
    /// holds: the environment (states, locals) before each, and the membrane before the gate.
    #[allow(clippy::type_complexity)]
    fn replay_step(
        &self,
        b: &Block<'c>,
        neuron: &NeuronProgram,
        at: &StepValues<'c>,
        learns: &[V<'c>],
        upto: usize,
    ) -> Result<(Vec<(Vec<V<'c>>, Vec<Option<V<'c>>>)>, V<'c>), LowerError> {
        let fx = &self.fx;
        let mut env = Env {
            input: at.input,
            states: at.states.clone(),
            learns,
            locals: vec![None; neuron.locals.len()],
        };
        let mut before = Vec::with_capacity(upto);
        let mut membrane_before_gate = fx.cf_as(0.0, at.input);
        for (j, (target, expr)) in neuron.steps.iter().enumerate().take(upto) {
            if j == neuron.fire_step
                && let Some(g) = at.gate
            {
                membrane_before_gate = env.states[0];
                env.states[0] = fx.mulf(b, env.states[0], g);
            }
            before.push((env.states.clone(), env.locals.clone()));
            let v = eval(fx, b, expr, &env)?;
            match target {
                Target::State(s) => env.states[*s] = v,
                Target::Local(l) => env.locals[*l] = Some(v),
            }
        }
        Ok((before, membrane_before_gate))
    }

    /// One reverse step of a scan: recomputes the forward step from the states saved at its
    /// start, then pushes the adjoints back through its equations, last first. `carried`:
    /// the state adjoints, then the learnables' partial sums. Returns their next values, the
    /// input's adjoint and (with a gate) the gate's. Scalars and `vector<4xf32>` alike.
    #[allow(clippy::too_many_arguments)]
    fn adjoint_step(
        &self,
        b: &Block<'c>,
        neuron: &NeuronProgram,
        emit: ScanEmit,
        adj: &ScanAdjoint,
        at: StepValues<'c>,
        carried: &[V<'c>],
        learns: &[V<'c>],
    ) -> Result<(Vec<V<'c>>, V<'c>, Option<V<'c>>), LowerError> {
        let fx = &self.fx;
        let ns = neuron.states.len();
        let zero = fx.cf_as(0.0, at.input);
        let (before, membrane_before_gate) =
            self.replay_step(b, neuron, &at, learns, neuron.steps.len())?;
        let mut adj_states: Vec<V<'c>> = carried[..ns].to_vec();
        let mut dlearn: Vec<V<'c>> = carried[ns..].to_vec();
        let mut adj_locals = vec![zero; neuron.locals.len()];
        let mut adj_input = zero;
        let mut dgate = None;
        match emit {
            ScanEmit::Spikes => {
                adj_locals[neuron.spike] = fx.addf(b, adj_locals[neuron.spike], at.d)
            }
            ScanEmit::Membrane => adj_states[0] = fx.addf(b, adj_states[0], at.d),
        }
        for (j, step) in adj.steps.iter().enumerate().rev() {
            let g_out = match step.target {
                Target::State(s) => std::mem::replace(&mut adj_states[s], zero),
                Target::Local(l) => std::mem::replace(&mut adj_locals[l], zero),
            };
            if !step.partials.is_empty() {
                // The interpreter skips a zero adjoint: 0 · inf must not become NaN.
                let live = fx.cmpf(b, fpred::UNE, g_out, zero);
                let (s, l) = &before[j];
                let env_j = Env {
                    input: at.input,
                    states: s.clone(),
                    learns,
                    locals: l.clone(),
                };
                for (var, dexpr) in &step.partials {
                    let dv = eval(fx, b, dexpr, &env_j)?;
                    let c = fx.mulf(b, g_out, dv);
                    let c = fx.select(b, live, c, zero);
                    let slot = match var {
                        Var::Input => &mut adj_input,
                        Var::State(s) => &mut adj_states[*s],
                        Var::Local(l) => &mut adj_locals[*l],
                        Var::Learn(l) => &mut dlearn[*l],
                    };
                    *slot = fx.addf(b, *slot, c);
                }
            }
            if j == neuron.fire_step
                && let Some(g) = at.gate
            {
                dgate = Some(fx.mulf(b, adj_states[0], membrane_before_gate));
                adj_states[0] = fx.mulf(b, adj_states[0], g);
            }
        }
        adj_states.extend(dlearn);
        Ok((adj_states, adj_input, dgate))
    }
}
