//! The reference interpreter: executes a graph's forward pass (train or eval mode) and its
//! backward program in f64 with the runtime's reference kernels. It is the semantic reference
//! every backend is tested against, so it favours clarity; BPTT memory is explicit: after the
//! forward only the values the backward program lists (plus per-step neuron states) are kept.

mod scan;

use crate::autodiff::{GradGraph, differentiate};
use crate::ir::*;
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use snn_runtime::kernels::KernelError;
use snn_runtime::kernels::reference as k;
use std::collections::HashMap;
use std::fmt;

/// Why a run failed: the tensor or layer it concerns and what went wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct InterpError {
    pub tensor: String,
    pub message: String,
}

impl fmt::Display for InterpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.tensor, self.message)
    }
}

impl std::error::Error for InterpError {}

fn err(tensor: &str, message: impl Into<String>) -> InterpError {
    InterpError {
        tensor: tensor.to_string(),
        message: message.into(),
    }
}

fn kernel(tensor: &str) -> impl Fn(KernelError) -> InterpError + '_ {
    move |e| err(tensor, e.to_string())
}

/// Reports the first non-finite element of `a`, naming the tensor.
pub fn check_finite(name: &str, a: &ArrayViewD<f64>) -> Result<(), InterpError> {
    match a.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => {
            let v = a.iter().nth(i).copied().unwrap_or(f64::NAN);
            Err(err(
                name,
                format!(
                    "holds {v} at flat index {i} (shape {:?}); check the data and the learning rate",
                    a.shape()
                ),
            ))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics in batchnorm, dropout active, running statistics updated.
    Train,
    /// Running statistics, no dropout.
    Eval,
}

/// Parameter values, indexed like [`Graph::params`].
#[derive(Clone, Debug, PartialEq)]
pub struct ParamStore {
    pub values: Vec<ArrayD<f64>>,
}

impl ParamStore {
    /// Initialises every parameter as its declaration says, from a seeded generator.
    pub fn init(g: &Graph, seed: u64) -> ParamStore {
        let mut rng = SplitMix(seed);
        let values = g
            .params
            .iter()
            .map(|p| match p.init {
                Init::Const(c) => ArrayD::from_elem(IxDyn(&p.shape), c),
                Init::UniformFanIn { fan_in } => {
                    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                    ArrayD::from_shape_fn(IxDyn(&p.shape), |_| (rng.unit() * 2.0 - 1.0) * bound)
                }
            })
            .collect();
        ParamStore { values }
    }

    pub fn get(&self, g: &Graph, name: &str) -> Option<&ArrayD<f64>> {
        g.params
            .iter()
            .position(|p| p.name == name)
            .and_then(|i| self.values.get(i))
    }

    /// Replaces a parameter by name, checking its shape.
    pub fn set(&mut self, g: &Graph, name: &str, value: ArrayD<f64>) -> Result<(), InterpError> {
        let i = g
            .params
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| err(name, "no such parameter"))?;
        if value.shape() != g.params[i].shape.as_slice() {
            return Err(err(
                name,
                format!(
                    "shape {:?} given, {:?} expected",
                    value.shape(),
                    g.params[i].shape
                ),
            ));
        }
        self.values[i] = value;
        Ok(())
    }
}

/// A small seeded generator (SplitMix64) for parameter init and dropout masks.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The dropout seed of training step `step` of a run seeded with `seed`: masks depend on
/// (seed, step) alone, so a resumed run draws the same ones, on every backend.
pub fn dropout_seed(seed: u64, step: u64) -> u64 {
    seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The keep mask (1 kept, 0 dropped, row-major) of dropout node `node` for `dropout_seed`:
/// what the interpreter applies, and what the compiled backends are given.
pub fn dropout_mask(dropout_seed: u64, node: usize, shape: &[usize], p: f64) -> ArrayD<f64> {
    let mut rng = SplitMix(dropout_seed ^ (node as u64).wrapping_mul(0x9E37_79B9));
    ArrayD::from_shape_fn(IxDyn(shape), |_| f64::from(rng.unit() >= p))
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    pub mode: Mode,
    /// Replace the Heaviside `fire` by sigmoid(k·x) in the forward and use its exact derivative
    /// backward: makes whole networks smooth so finite differences can check BPTT.
    pub smooth_fire: Option<f64>,
    pub dropout_seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: Mode::Train,
            smooth_fire: None,
            dropout_seed: 0,
        }
    }
}

/// What a forward pass leaves for the backward, and its outputs.
pub struct Forward {
    /// Forward values kept (by node); others were freed as soon as their consumers ran.
    pub values: HashMap<ValueId, ArrayD<f64>>,
    /// Neuron states at the start of every step, per scan node: [T, states, elements].
    pub scan_states: HashMap<ValueId, ArrayD<f64>>,
    pub dropout_masks: HashMap<ValueId, ArrayD<f64>>,
    /// Updated batchnorm running statistics (train mode), to write back into the store.
    pub running_updates: Vec<(ParamId, ArrayD<f64>)>,
    pub outputs: Vec<ArrayD<f64>>,
    /// Spikes per scan node (for firing rates and energy): (node, total spikes, neuron-steps).
    pub spike_counts: Vec<(ValueId, f64, usize)>,
}

impl Forward {
    /// Bytes held for the backward: the saved values, neuron states and masks.
    pub fn saved_bytes(&self) -> usize {
        let n: usize = self
            .values
            .values()
            .chain(self.scan_states.values())
            .chain(self.dropout_masks.values())
            .map(|a| a.len())
            .sum();
        n * std::mem::size_of::<f64>()
    }
}

/// Gradients of one backward pass.
pub struct Gradients {
    /// By parameter index; `None` for non-trainable parameters.
    pub params: Vec<Option<ArrayD<f64>>>,
    /// By input name.
    pub inputs: HashMap<String, ArrayD<f64>>,
}

pub struct Interpreter<'g> {
    pub graph: &'g Graph,
    pub grad: GradGraph,
    pub options: Options,
    /// Values the backward needs, so the forward can free the rest.
    keep: Vec<bool>,
}

impl<'g> Interpreter<'g> {
    pub fn new(graph: &'g Graph, options: Options) -> Self {
        let grad = differentiate(graph);
        let mut keep = vec![false; graph.nodes.len()];
        for v in &grad.saved {
            keep[v.0] = true;
        }
        Interpreter {
            graph,
            grad,
            options,
            keep,
        }
    }

    /// Keeps every forward value (for visualisation), not only what the backward needs.
    pub fn keep_all(mut self) -> Self {
        self.keep.iter_mut().for_each(|k| *k = true);
        self
    }

    fn axis(&self, v: ValueId, axis: Axis) -> Result<usize, InterpError> {
        self.graph.ty(v).position(axis).ok_or_else(|| {
            err(
                &self.graph.node(v).name,
                format!("has no axis {}", axis.letter()),
            )
        })
    }

    /// Runs the forward pass. `inputs` are by input name, shaped like the input's type with the
    /// real batch size.
    pub fn forward(
        &self,
        params: &ParamStore,
        inputs: &[(&str, ArrayD<f64>)],
    ) -> Result<Forward, InterpError> {
        let g = self.graph;
        for (p, v) in g.params.iter().zip(&params.values) {
            check_finite(&p.name, &v.view())?;
        }
        let mut last_use = vec![0usize; g.nodes.len()];
        for (i, n) in g.nodes.iter().enumerate() {
            for v in &n.inputs {
                last_use[v.0] = i;
            }
        }
        let mut values: Vec<Option<ArrayD<f64>>> = vec![None; g.nodes.len()];
        let mut fwd = Forward {
            values: HashMap::new(),
            scan_states: HashMap::new(),
            dropout_masks: HashMap::new(),
            running_updates: Vec::new(),
            outputs: Vec::new(),
            spike_counts: Vec::new(),
        };
        let mut batch = None;
        for (i, node) in g.nodes.iter().enumerate() {
            let id = ValueId(i);
            let arg = |k: usize| -> Result<ArrayViewD<f64>, InterpError> {
                node.inputs
                    .get(k)
                    .and_then(|v| values[v.0].as_ref())
                    .map(|a| a.view())
                    .ok_or_else(|| err(&node.name, format!("operand {k} is missing")))
            };
            let param = |k: usize| -> Result<ArrayViewD<f64>, InterpError> {
                node.params
                    .get(k)
                    .and_then(|p| params.values.get(p.0))
                    .map(|a| a.view())
                    .ok_or_else(|| err(&node.name, format!("parameter {k} is missing")))
            };
            let name = node.name.as_str();
            let out: ArrayD<f64> = match &node.op {
                Op::Input {
                    name: input_name, ..
                } => {
                    let (_, a) = inputs
                        .iter()
                        .find(|(n, _)| n == input_name)
                        .ok_or_else(|| err(input_name, "no value given for this input"))?;
                    let expected: Vec<usize> = node
                        .ty
                        .dims
                        .iter()
                        .map(|(ax, s)| {
                            if *ax == Axis::B {
                                a.shape().get(1).copied().unwrap_or(0)
                            } else {
                                *s
                            }
                        })
                        .collect();
                    if a.shape() != expected.as_slice() {
                        return Err(err(
                            input_name,
                            format!(
                                "has shape {:?}, the model expects {} = {:?}",
                                a.shape(),
                                node.ty.shape_string(),
                                expected
                            ),
                        ));
                    }
                    let b = expected.get(1).copied().unwrap_or(0);
                    if *batch.get_or_insert(b) != b || b == 0 {
                        return Err(err(
                            input_name,
                            "inputs disagree on the batch size (or it is 0)",
                        ));
                    }
                    check_finite(input_name, &a.view())?;
                    a.clone()
                }
                Op::Conv2d {
                    stride, padding, ..
                } => {
                    let x = arg(0)?;
                    let (merged, lead) = merge_leading(&x);
                    let bias = if node.params.len() > 1 {
                        Some(param(1)?)
                    } else {
                        None
                    };
                    let y = k::conv2d(
                        merged.view(),
                        param(0)?,
                        bias,
                        k::Conv2dParams {
                            stride: *stride,
                            padding: *padding,
                        },
                    )
                    .map_err(kernel(name))?;
                    split_leading(y, &lead)
                }
                Op::Dense { axis, .. } => {
                    let bias = if node.params.len() > 1 {
                        Some(param(1)?)
                    } else {
                        None
                    };
                    k::dense(arg(0)?, param(0)?, bias, self.axis(node.inputs[0], *axis)?)
                        .map_err(kernel(name))?
                }
                Op::Pool {
                    kind,
                    kernel: kk,
                    stride,
                } => {
                    let x = arg(0)?;
                    let (merged, lead) = merge_leading(&x);
                    let p = k::Pool2dParams {
                        kernel: (*kk, *kk),
                        stride: (*stride, *stride),
                    };
                    let y = match kind {
                        PoolKind::Avg => k::avg_pool2d(merged.view(), p),
                        PoolKind::Max => k::max_pool2d(merged.view(), p),
                    }
                    .map_err(kernel(name))?;
                    split_leading(y, &lead)
                }
                Op::BatchNorm {
                    axis,
                    eps,
                    momentum,
                } => {
                    let p = k::BatchNormParams {
                        axis: self.axis(node.inputs[0], *axis)?,
                        eps: *eps,
                        momentum: *momentum,
                    };
                    match self.options.mode {
                        Mode::Train => {
                            let o = k::batch_norm_train(
                                arg(0)?,
                                param(0)?,
                                param(1)?,
                                param(2)?,
                                param(3)?,
                                p,
                            )
                            .map_err(kernel(name))?;
                            fwd.running_updates.push((node.params[2], o.running_mean));
                            fwd.running_updates.push((node.params[3], o.running_var));
                            o.y
                        }
                        Mode::Eval => k::batch_norm_eval(
                            arg(0)?,
                            param(0)?,
                            param(1)?,
                            param(2)?,
                            param(3)?,
                            p,
                        )
                        .map_err(kernel(name))?,
                    }
                }
                Op::Dropout { p } => match self.options.mode {
                    Mode::Eval => arg(0)?.to_owned(),
                    Mode::Train => {
                        let x = arg(0)?;
                        let mask = dropout_mask(self.options.dropout_seed, i, x.shape(), *p);
                        let y = k::dropout(x, mask.view(), *p).map_err(kernel(name))?;
                        fwd.dropout_masks.insert(id, mask);
                        y
                    }
                },
                Op::Flatten => {
                    let x = arg(0)?;
                    let shape: Vec<usize> = x.shape().to_vec();
                    let n: usize = shape[2..].iter().product();
                    reshape(x.to_owned(), &[shape[0], shape[1], n])
                }
                Op::Reduce {
                    kind,
                    axes,
                    keepdim,
                } => {
                    let idx: Vec<usize> = axes
                        .iter()
                        .map(|a| self.axis(node.inputs[0], *a))
                        .collect::<Result<_, _>>()?;
                    k::reduce(arg(0)?, reduce_kind(*kind), &idx, *keepdim).map_err(kernel(name))?
                }
                Op::Concat { axis } => {
                    let parts: Vec<ArrayViewD<f64>> =
                        (0..node.inputs.len()).map(&arg).collect::<Result<_, _>>()?;
                    k::concat(&parts, self.axis(node.inputs[0], *axis)?).map_err(kernel(name))?
                }
                Op::Unary(u) => k::unary(unary_op(*u), arg(0)?),
                Op::Binary(b) => {
                    k::binary(binary_op(*b), arg(0)?, arg(1)?).map_err(kernel(name))?
                }
                Op::Scan { neuron, emit } => {
                    let learns: Vec<f64> = (0..node.params.len())
                        .map(|k| param(k).map(|a| a.iter().next().copied().unwrap_or(0.0)))
                        .collect::<Result<_, _>>()?;
                    let gate = if node.inputs.len() > 1 {
                        Some(arg(1)?)
                    } else {
                        None
                    };
                    let program = scan::prepare(neuron, self.options.smooth_fire);
                    let (y, states) = scan::forward(
                        &program,
                        *emit,
                        arg(0)?,
                        gate,
                        &learns,
                        self.options.smooth_fire,
                    );
                    if *emit == ScanEmit::Spikes {
                        fwd.spike_counts.push((id, y.sum(), y.len()));
                    }
                    fwd.scan_states.insert(id, states);
                    y
                }
            };
            check_finite(name, &out.view())
                .map_err(|e| err(name, format!("produced a non-finite value: {}", e.message)))?;
            values[i] = Some(out);
            // Free operands nothing later reads and the backward does not need.
            for v in &node.inputs {
                if last_use[v.0] == i && !self.keep[v.0] && !g.outputs.contains(v) {
                    values[v.0] = None;
                }
            }
        }
        for o in &g.outputs {
            let v = values[o.0]
                .clone()
                .ok_or_else(|| err(&g.node(*o).name, "output was not computed"))?;
            fwd.outputs.push(v);
        }
        for (i, v) in values.into_iter().enumerate() {
            if let Some(v) = v.filter(|_| self.keep[i]) {
                fwd.values.insert(ValueId(i), v);
            }
        }
        Ok(fwd)
    }

    /// Runs the backward program from `d_outputs` (one per output).
    pub fn backward(
        &self,
        params: &ParamStore,
        fwd: &Forward,
        d_outputs: &[ArrayD<f64>],
    ) -> Result<Gradients, InterpError> {
        let g = self.graph;
        let mut grads: Vec<Option<ArrayD<f64>>> = vec![None; g.nodes.len()];
        let mut pgrads: Vec<Option<ArrayD<f64>>> = vec![None; g.params.len()];
        for (o, d) in g.outputs.iter().zip(d_outputs) {
            accumulate(&mut grads[o.0], d.clone());
        }
        let saved = |v: ValueId| saved_value(fwd, g, v);
        for step in &self.grad.steps {
            let node = g.node(step.node);
            let name = node.name.as_str();
            let Some(dy) = grads[step.node.0].take() else {
                continue;
            };
            let param = |k: usize| -> Result<ArrayViewD<f64>, InterpError> {
                node.params
                    .get(k)
                    .and_then(|p| params.values.get(p.0))
                    .map(|a| a.view())
                    .ok_or_else(|| err(name, format!("parameter {k} is missing")))
            };
            let input = |k: usize| {
                node.inputs
                    .get(k)
                    .copied()
                    .ok_or_else(|| err(name, format!("operand {k} is missing")))
            };
            let shape_of = |v: ValueId, batch: usize| -> Vec<usize> {
                g.ty(v)
                    .dims
                    .iter()
                    .map(|(a, s)| if *a == Axis::B { batch } else { *s })
                    .collect()
            };
            let batch = g
                .ty(step.node)
                .position(Axis::B)
                .and_then(|p| dy.shape().get(p).copied())
                .unwrap_or(1);
            let mut to_input: Vec<(ValueId, ArrayD<f64>)> = Vec::new();
            let to_param = |k: usize, d: ArrayD<f64>, pg: &mut Vec<Option<ArrayD<f64>>>| {
                if let Some(p) = node.params.get(k)
                    && g.param(*p).role.trainable()
                {
                    accumulate(&mut pg[p.0], d);
                }
            };
            match &node.op {
                Op::Input { .. } => {}
                Op::Conv2d {
                    stride, padding, ..
                } => {
                    let x = saved(input(0)?)?;
                    let (xm, lead) = merge_leading(&x);
                    let (dym, _) = merge_leading(&dy.view());
                    let r = k::conv2d_backward(
                        xm.view(),
                        param(0)?,
                        dym.view(),
                        k::Conv2dParams {
                            stride: *stride,
                            padding: *padding,
                        },
                    )
                    .map_err(kernel(name))?;
                    to_param(0, r.dw, &mut pgrads);
                    to_param(1, r.db, &mut pgrads);
                    to_input.push((input(0)?, split_leading(r.dx, &lead)));
                }
                Op::Dense { axis, .. } => {
                    let r = k::dense_backward(
                        saved(input(0)?)?,
                        param(0)?,
                        dy.view(),
                        self.axis(input(0)?, *axis)?,
                    )
                    .map_err(kernel(name))?;
                    to_param(0, r.dw, &mut pgrads);
                    to_param(1, r.db, &mut pgrads);
                    to_input.push((input(0)?, r.dx));
                }
                Op::Pool {
                    kind,
                    kernel: kk,
                    stride,
                } => {
                    let p = k::Pool2dParams {
                        kernel: (*kk, *kk),
                        stride: (*stride, *stride),
                    };
                    let (dym, _) = merge_leading(&dy.view());
                    let in_shape = shape_of(input(0)?, batch);
                    let lead = in_shape[..in_shape.len() - 3].to_vec();
                    let dx = match kind {
                        PoolKind::Avg => {
                            let merged_shape = [
                                lead.iter().product(),
                                in_shape[in_shape.len() - 3],
                                in_shape[in_shape.len() - 2],
                                in_shape[in_shape.len() - 1],
                            ];
                            k::avg_pool2d_backward(&merged_shape, dym.view(), p)
                        }
                        PoolKind::Max => {
                            let x = saved(input(0)?)?;
                            let (xm, _) = merge_leading(&x);
                            k::max_pool2d_backward(xm.view(), dym.view(), p)
                        }
                    }
                    .map_err(kernel(name))?;
                    to_input.push((input(0)?, split_leading(dx, &lead)));
                }
                Op::BatchNorm {
                    axis,
                    eps,
                    momentum,
                } => {
                    let p = k::BatchNormParams {
                        axis: self.axis(input(0)?, *axis)?,
                        eps: *eps,
                        momentum: *momentum,
                    };
                    let x = saved(input(0)?)?;
                    let r = match self.options.mode {
                        Mode::Train => k::batch_norm_train_backward(x, param(0)?, dy.view(), p),
                        Mode::Eval => k::batch_norm_eval_backward(
                            x,
                            param(0)?,
                            param(2)?,
                            param(3)?,
                            dy.view(),
                            p,
                        ),
                    }
                    .map_err(kernel(name))?;
                    to_param(0, r.dgamma, &mut pgrads);
                    to_param(1, r.dbeta, &mut pgrads);
                    to_input.push((input(0)?, r.dx));
                }
                Op::Dropout { p } => {
                    let dx = match fwd.dropout_masks.get(&step.node) {
                        Some(mask) => {
                            k::dropout_backward(dy.view(), mask.view(), *p).map_err(kernel(name))?
                        }
                        None => dy.clone(),
                    };
                    to_input.push((input(0)?, dx));
                }
                Op::Flatten => {
                    let shape = shape_of(input(0)?, batch);
                    to_input.push((input(0)?, reshape(dy.clone(), &shape)));
                }
                Op::Reduce {
                    kind,
                    axes,
                    keepdim,
                } => {
                    let idx: Vec<usize> = axes
                        .iter()
                        .map(|a| self.axis(input(0)?, *a))
                        .collect::<Result<_, _>>()?;
                    // Mean and sum need only the input's shape; max needs its values.
                    let zeros = ArrayD::zeros(IxDyn(&shape_of(input(0)?, batch)));
                    let x = match kind {
                        ReduceKind::Max => saved_value(fwd, g, input(0)?)?,
                        _ => zeros.view(),
                    };
                    to_input.push((
                        input(0)?,
                        k::reduce_backward(x, reduce_kind(*kind), &idx, *keepdim, dy.view())
                            .map_err(kernel(name))?,
                    ));
                }
                Op::Concat { axis } => {
                    let ax = self.axis(input(0)?, *axis)?;
                    let sizes: Vec<usize> = node
                        .inputs
                        .iter()
                        .map(|v| g.ty(*v).size(*axis).unwrap_or(0))
                        .collect();
                    let parts = k::concat_backward(dy.view(), &sizes, ax).map_err(kernel(name))?;
                    for (v, d) in node.inputs.iter().zip(parts) {
                        to_input.push((*v, d));
                    }
                }
                Op::Unary(u) => {
                    // relu's derivative from its output (see `autodiff::differentiate`).
                    let at = if *u == UnaryOp::Relu {
                        step.node
                    } else {
                        input(0)?
                    };
                    to_input.push((
                        input(0)?,
                        k::unary_backward(unary_op(*u), saved(at)?, dy.view())
                            .map_err(kernel(name))?,
                    ));
                }
                Op::Binary(b) => {
                    let (a_id, b_id) = (input(0)?, input(1)?);
                    let (da, db) = match b {
                        BinaryOp::Add => {
                            let sa = shape_of(a_id, batch);
                            let sb = shape_of(b_id, batch);
                            (
                                k::sum_to_shape(dy.view(), &sa).map_err(kernel(name))?,
                                k::sum_to_shape(dy.view(), &sb).map_err(kernel(name))?,
                            )
                        }
                        BinaryOp::Mul => {
                            let r = k::binary_backward(
                                k::BinaryOp::Mul,
                                saved(a_id)?,
                                saved(b_id)?,
                                dy.view(),
                            )
                            .map_err(kernel(name))?;
                            (r.da, r.db)
                        }
                    };
                    to_input.push((a_id, da));
                    to_input.push((b_id, db));
                }
                Op::Scan { neuron, emit } => {
                    let learns: Vec<f64> = (0..node.params.len())
                        .map(|k| param(k).map(|a| a.iter().next().copied().unwrap_or(0.0)))
                        .collect::<Result<_, _>>()?;
                    let gate = if node.inputs.len() > 1 {
                        Some(saved(input(1)?)?)
                    } else {
                        None
                    };
                    let states = fwd
                        .scan_states
                        .get(&step.node)
                        .ok_or_else(|| err(name, "per-step states were not saved"))?;
                    let program = scan::prepare(neuron, self.options.smooth_fire);
                    let adjoint = crate::autodiff::scan_adjoint(&program);
                    let r = scan::backward(
                        &program,
                        &adjoint,
                        *emit,
                        saved(input(0)?)?,
                        gate,
                        &learns,
                        states.view(),
                        dy.view(),
                        self.options.smooth_fire,
                    );
                    for (k, d) in r.learns.into_iter().enumerate() {
                        to_param(k, ArrayD::from_elem(IxDyn(&[1]), d), &mut pgrads);
                    }
                    to_input.push((input(0)?, r.input));
                    if let (Some(dg), Some(gid)) = (r.gate, node.inputs.get(1)) {
                        let gshape = shape_of(*gid, batch);
                        to_input.push((
                            *gid,
                            k::sum_to_shape(dg.view(), &gshape).map_err(kernel(name))?,
                        ));
                    }
                }
            }
            for (v, d) in to_input {
                check_finite(&format!("d{}", g.node(v).name), &d.view())?;
                accumulate(&mut grads[v.0], d);
            }
        }
        let mut inputs = HashMap::new();
        for (id, node) in g.inputs() {
            if let (Op::Input { name, .. }, Some(d)) = (&node.op, grads[id.0].take()) {
                inputs.insert(name.clone(), d);
            }
        }
        for (p, d) in g.params.iter().zip(&pgrads) {
            if let Some(d) = d {
                check_finite(&format!("d{}", p.name), &d.view())?;
            }
        }
        Ok(Gradients {
            params: pgrads,
            inputs,
        })
    }
}

/// A forward value kept for the backward; a free function so each use gets its own lifetime.
fn saved_value<'a>(
    fwd: &'a Forward,
    g: &Graph,
    v: ValueId,
) -> Result<ArrayViewD<'a, f64>, InterpError> {
    fwd.values
        .get(&v)
        .map(|a| a.view())
        .ok_or_else(|| err(&g.node(v).name, "was not saved by the forward"))
}

fn accumulate(slot: &mut Option<ArrayD<f64>>, d: ArrayD<f64>) {
    match slot {
        Some(acc) => *acc += &d,
        None => *slot = Some(d),
    }
}

/// Reshapes without copying when the array is already contiguous (the usual case).
fn reshape(a: ArrayD<f64>, shape: &[usize]) -> ArrayD<f64> {
    let a = if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    };
    let len = a.len();
    // Shapes come from type inference, so element counts always agree.
    a.into_shape_with_order(IxDyn(shape))
        .unwrap_or_else(|_| unreachable!("reshape of {len} elements to {shape:?}"))
}

/// [..., C, H, W] → [N, C, H, W] (the leading axes merged), and the leading shape to undo it.
fn merge_leading(x: &ArrayViewD<f64>) -> (ArrayD<f64>, Vec<usize>) {
    let s = x.shape();
    let split = s.len().saturating_sub(3);
    let lead = s[..split].to_vec();
    let mut shape = vec![lead.iter().product()];
    shape.extend_from_slice(&s[split..]);
    (reshape(x.to_owned(), &shape), lead)
}

fn split_leading(y: ArrayD<f64>, lead: &[usize]) -> ArrayD<f64> {
    let mut shape = lead.to_vec();
    shape.extend_from_slice(&y.shape()[1..]);
    reshape(y, &shape)
}

fn reduce_kind(k: ReduceKind) -> k::ReduceKind {
    match k {
        ReduceKind::Mean => k::ReduceKind::Mean,
        ReduceKind::Max => k::ReduceKind::Max,
        ReduceKind::Sum => k::ReduceKind::Sum,
    }
}

fn unary_op(u: UnaryOp) -> k::UnaryOp {
    match u {
        UnaryOp::Relu => k::UnaryOp::Relu,
        UnaryOp::Sigmoid => k::UnaryOp::Sigmoid,
    }
}

fn binary_op(b: BinaryOp) -> k::BinaryOp {
    match b {
        BinaryOp::Add => k::BinaryOp::Add,
        BinaryOp::Mul => k::BinaryOp::Mul,
    }
}

/// Losses over a readout [B, classes] and integer class targets.
pub mod loss {
    use super::InterpError;
    use ndarray::{Array2, ArrayD, Axis};

    fn as2(readout: &ArrayD<f64>) -> Result<Array2<f64>, InterpError> {
        readout.clone().into_dimensionality().map_err(|_| {
            super::err(
                "readout",
                format!("expected [B, classes], found {:?}", readout.shape()),
            )
        })
    }

    fn check_targets(targets: &[usize], b: usize, classes: usize) -> Result<(), InterpError> {
        if targets.len() != b {
            return Err(super::err(
                "targets",
                format!("{} targets for a batch of {b}", targets.len()),
            ));
        }
        if let Some(bad) = targets.iter().find(|t| **t >= classes) {
            return Err(super::err(
                "targets",
                format!("class {bad} out of range for {classes} classes"),
            ));
        }
        Ok(())
    }

    /// Mean squared error against one-hot targets (the MA-SNN official loss), and its gradient.
    pub fn mse_one_hot(
        readout: &ArrayD<f64>,
        targets: &[usize],
    ) -> Result<(f64, ArrayD<f64>), InterpError> {
        let r = as2(readout)?;
        let (b, c) = r.dim();
        check_targets(targets, b, c)?;
        let mut diff = r.clone();
        for (i, t) in targets.iter().enumerate() {
            diff[[i, *t]] -= 1.0;
        }
        let n = (b * c) as f64;
        let loss = diff.iter().map(|d| d * d).sum::<f64>() / n;
        Ok((loss, (diff * (2.0 / n)).into_dyn()))
    }

    /// Softmax cross-entropy (mean over the batch), and its gradient.
    pub fn cross_entropy(
        readout: &ArrayD<f64>,
        targets: &[usize],
    ) -> Result<(f64, ArrayD<f64>), InterpError> {
        let r = as2(readout)?;
        let (b, c) = r.dim();
        check_targets(targets, b, c)?;
        let mut grad = Array2::<f64>::zeros((b, c));
        let mut loss = 0.0;
        for (i, row) in r.axis_iter(Axis(0)).enumerate() {
            let m = row.fold(f64::NEG_INFINITY, |a, &v| a.max(v));
            let z: f64 = row.iter().map(|v| (v - m).exp()).sum();
            loss += -(row[targets[i]] - m - z.ln());
            for j in 0..c {
                grad[[i, j]] = ((row[j] - m).exp() / z - f64::from(j == targets[i])) / b as f64;
            }
        }
        Ok((loss / b as f64, grad.into_dyn()))
    }
}
