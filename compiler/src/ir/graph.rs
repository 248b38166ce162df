//! The typed graph IR: an arena of SSA nodes (one tensor value each) over a small set of
//! primitive ops, a parameter table, model inputs and outputs. Attention and blocks are already
//! expanded into these primitives; neurons are `Scan` nodes carrying their scalar program.

use super::scalar::NeuronProgram;
use super::types::{Axis, TensorType};
use crate::diag::Span;
use serde::Serialize;

/// Index of a node (and of the one value it defines).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ValueId(pub usize);

/// Index into [`Graph::params`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ParamId(pub usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum PoolKind {
    Avg,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ReduceKind {
    Mean,
    Max,
    Sum,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum UnaryOp {
    Relu,
    Sigmoid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BinaryOp {
    /// Elementwise add with broadcasting over size-1 axes.
    Add,
    /// Elementwise multiply with broadcasting over size-1 axes.
    Mul,
}

/// What a scan emits: spikes for the next layer, or the membrane (first state) for readouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ScanEmit {
    Spikes,
    Membrane,
}

/// How an input tensor is produced from the data.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum InputSource {
    /// Event stream framed into T frames of `channels` polarities.
    Events {
        channels: usize,
        height: usize,
        width: usize,
        framing: Framing,
        downsample: usize,
    },
    /// A static image fed at every time step.
    Image {
        channels: usize,
        height: usize,
        width: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Framing {
    /// Fixed time windows of this many microseconds.
    Time { window_us: f64 },
    /// T slices with equal event counts.
    Count,
    /// The recording split into T equal time slices.
    Frames,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Op {
    Input {
        name: String,
        source: InputSource,
    },
    /// 2-d convolution over H, W of each (T, B) slice; params: weight `[O, C, kh, kw]`, bias `[O]`?
    Conv2d {
        out_channels: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    },
    /// Contraction of `axis` with a weight [out, in]; params: weight, bias?
    Dense {
        axis: Axis,
        out: usize,
    },
    Pool {
        kind: PoolKind,
        kernel: usize,
        stride: usize,
    },
    /// Normalises over every axis but `axis`; params: gamma, beta, running mean, running var.
    BatchNorm {
        axis: Axis,
        eps: f64,
        momentum: f64,
    },
    Dropout {
        p: f64,
    },
    /// [T, B, C, H, W] → [T, B, N].
    Flatten,
    Reduce {
        kind: ReduceKind,
        axes: Vec<Axis>,
        keepdim: bool,
    },
    Concat {
        axis: Axis,
    },
    Unary(UnaryOp),
    Binary(BinaryOp),
    /// A neuron layer: runs `neuron` over T for every element. Inputs: current, and optionally a
    /// membrane gate (attention placed on the membrane). Params: the neuron's learnable scalars.
    Scan {
        neuron: Box<NeuronProgram>,
        emit: ScanEmit,
    },
}

impl Op {
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Conv2d { .. } => "conv2d",
            Op::Dense { .. } => "dense",
            Op::Pool {
                kind: PoolKind::Avg,
                ..
            } => "avg_pool",
            Op::Pool {
                kind: PoolKind::Max,
                ..
            } => "max_pool",
            Op::BatchNorm { .. } => "batch_norm",
            Op::Dropout { .. } => "dropout",
            Op::Flatten => "flatten",
            Op::Reduce {
                kind: ReduceKind::Mean,
                ..
            } => "reduce_mean",
            Op::Reduce {
                kind: ReduceKind::Max,
                ..
            } => "reduce_max",
            Op::Reduce {
                kind: ReduceKind::Sum,
                ..
            } => "reduce_sum",
            Op::Concat { .. } => "concat",
            Op::Unary(UnaryOp::Relu) => "relu",
            Op::Unary(UnaryOp::Sigmoid) => "sigmoid",
            Op::Binary(BinaryOp::Add) => "add",
            Op::Binary(BinaryOp::Mul) => "mul",
            Op::Scan { .. } => "scan",
        }
    }
}

/// What a parameter is for: decides initialisation, optimisation and the manifest role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ParamRole {
    Weight,
    Bias,
    /// Batchnorm scale / shift.
    Gamma,
    Beta,
    /// Batchnorm running statistics: state, not trained by gradients.
    RunningMean,
    RunningVar,
    /// A neuron's learnable scalar (e.g. PLIF's time constant).
    NeuronScalar,
}

impl ParamRole {
    pub fn trainable(self) -> bool {
        !matches!(self, ParamRole::RunningMean | ParamRole::RunningVar)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Init {
    Const(f64),
    /// Uniform in ±1/sqrt(fan_in) (PyTorch's default for conv and linear).
    UniformFanIn {
        fan_in: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParamDecl {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: ParamRole,
    pub init: Init,
}

#[derive(Clone, Debug, Serialize)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub params: Vec<ParamId>,
    pub ty: TensorType,
    /// Unique, readable name of the value (`conv0`, `lif3`, ...), also the layer name in reports.
    pub name: String,
    /// Where in the source this node came from (the stage that created it).
    #[serde(skip)]
    pub span: Option<Span>,
    /// The attention module this node was expanded from (`att0`, ...), for per-module reports.
    #[serde(skip)]
    pub group: Option<String>,
}

impl Node {
    /// Whether this is a neuron scan that emits spikes (the values firing rates count).
    pub fn emits_spikes(&self) -> bool {
        matches!(
            self.op,
            Op::Scan {
                emit: ScanEmit::Spikes,
                ..
            }
        )
    }
}

/// Training configuration from a model's `train { }` section, values already checked.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainSetting {
    pub name: String,
    /// As written back by the printer.
    pub value: String,
    pub typed: TrainValue,
}

/// A checked training setting value: numbers, strings and builtin specs like `adam(lr = 1e-3)`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum TrainValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Tuple(Vec<TrainValue>),
    Spec {
        name: String,
        args: Vec<(String, TrainValue)>,
    },
}

impl TrainValue {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            TrainValue::Int(i) => Some(*i as f64),
            TrainValue::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// A named argument of a spec (`adam(lr = 1e-3)` → `arg("lr")`), or its n-th positional one.
    pub fn arg(&self, name: &str, position: usize) -> Option<&TrainValue> {
        let TrainValue::Spec { args, .. } = self else {
            return None;
        };
        args.iter()
            .find(|(k, _)| k == name)
            .or_else(|| args.get(position).filter(|(k, _)| k.starts_with('_')))
            .map(|(_, v)| v)
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Graph {
    pub name: String,
    /// Model parameters after defaults and overrides, as written (`T = 20`).
    pub model_args: Vec<(String, String)>,
    pub nodes: Vec<Node>,
    pub params: Vec<ParamDecl>,
    pub outputs: Vec<ValueId>,
    pub train: Vec<TrainSetting>,
}

impl Graph {
    pub fn node(&self, id: ValueId) -> &Node {
        &self.nodes[id.0]
    }

    pub fn ty(&self, id: ValueId) -> &TensorType {
        &self.nodes[id.0].ty
    }

    pub fn param(&self, id: ParamId) -> &ParamDecl {
        &self.params[id.0]
    }

    pub fn inputs(&self) -> impl Iterator<Item = (ValueId, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.op, Op::Input { .. }))
            .map(|(i, n)| (ValueId(i), n))
    }

    pub fn add_param(&mut self, decl: ParamDecl) -> ParamId {
        self.params.push(decl);
        ParamId(self.params.len() - 1)
    }

    pub fn add_node(&mut self, node: Node) -> ValueId {
        self.nodes.push(node);
        ValueId(self.nodes.len() - 1)
    }

    /// Number of trainable scalars.
    pub fn trainable_parameter_count(&self) -> usize {
        self.params
            .iter()
            .filter(|p| p.role.trainable())
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }
}
