//! Shape and type inference for every IR op, shared by the builder in sema (which reports
//! errors with spans) and the verifier (which re-checks a finished graph).

use super::graph::*;
use super::types::{Axis, Elem, TensorType};

/// Why an op does not accept its input types; sema attaches the span.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeError {
    pub message: String,
    pub help: Option<String>,
}

impl ShapeError {
    fn new(message: impl Into<String>) -> Self {
        ShapeError {
            message: message.into(),
            help: None,
        }
    }

    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

fn need_spatial(op: &str, x: &TensorType) -> Result<(usize, usize, usize), ShapeError> {
    match (x.size(Axis::C), x.size(Axis::H), x.size(Axis::W)) {
        (Some(c), Some(h), Some(w)) => Ok((c, h, w)),
        _ => Err(ShapeError::new(format!(
            "`{op}` needs a [T, B, C, H, W] tensor, found {}",
            x.shape_string()
        ))
        .help(format!(
            "`{op}` works on feature maps: move it before `flatten`"
        ))),
    }
}

fn out_size(
    op: &str,
    size: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
) -> Result<usize, ShapeError> {
    if kernel == 0 || stride == 0 {
        return Err(ShapeError::new(format!(
            "`{op}` needs a kernel and stride of at least 1"
        )));
    }
    let padded = size + 2 * pad;
    if padded < kernel {
        return Err(ShapeError::new(format!(
            "`{op}` window {kernel} is larger than the feature map ({size}, padded {padded})"
        ))
        .help("use a smaller kernel, more padding, or less pooling before this layer"));
    }
    Ok((padded - kernel) / stride + 1)
}

/// The result type of `op` applied to `inputs`.
pub fn infer_type(op: &Op, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let first = || {
        inputs
            .first()
            .copied()
            .ok_or_else(|| ShapeError::new(format!("`{}` has no input", op.mnemonic())))
    };
    match op {
        Op::Input { source, .. } => Err(ShapeError::new(format!(
            "input type is given by its source: {source:?}"
        ))),
        Op::Conv2d {
            out_channels,
            kernel,
            stride,
            padding,
        } => {
            let x = first()?;
            let (_, h, w) = need_spatial("conv", x)?;
            let oh = out_size("conv", h, kernel.0, stride.0, padding.0)?;
            let ow = out_size("conv", w, kernel.1, stride.1, padding.1)?;
            Ok(x.with_size(Axis::C, *out_channels)
                .with_size(Axis::H, oh)
                .with_size(Axis::W, ow)
                .with_elem(Elem::Real))
        }
        Op::Dense { axis, out } => {
            let x = first()?;
            if !x.has(*axis) {
                let help = if *axis == Axis::N {
                    "insert `flatten` before `linear`"
                } else {
                    ""
                };
                let e = ShapeError::new(format!(
                    "a dense contraction over {} needs that axis, found {}",
                    axis.letter(),
                    x.shape_string()
                ));
                return Err(if help.is_empty() { e } else { e.help(help) });
            }
            Ok(x.with_size(*axis, *out).with_elem(Elem::Real))
        }
        Op::Pool {
            kernel,
            stride,
            kind,
        } => {
            let x = first()?;
            let name = if *kind == PoolKind::Avg {
                "pool.avg"
            } else {
                "pool.max"
            };
            let (_, h, w) = need_spatial(name, x)?;
            let oh = out_size(name, h, *kernel, *stride, 0)?;
            let ow = out_size(name, w, *kernel, *stride, 0)?;
            // Max of spikes is a spike; an average is not.
            let elem = if *kind == PoolKind::Max {
                x.elem
            } else {
                Elem::Real
            };
            Ok(x.with_size(Axis::H, oh)
                .with_size(Axis::W, ow)
                .with_elem(elem))
        }
        Op::BatchNorm { axis, .. } => {
            let x = first()?;
            if !x.has(*axis) {
                return Err(ShapeError::new(format!(
                    "`bn` needs a feature axis, found {}",
                    x.shape_string()
                )));
            }
            Ok(x.with_elem(Elem::Real))
        }
        Op::Dropout { .. } => Ok(first()?.with_elem(Elem::Real)),
        Op::Flatten => {
            let x = first()?;
            let (c, h, w) = need_spatial("flatten", x)?;
            let t = x.size(Axis::T).unwrap_or(1);
            Ok(TensorType::flat(t, c * h * w, x.elem))
        }
        Op::Reduce { axes, keepdim, .. } => {
            let x = first()?;
            for a in axes {
                if !x.has(*a) {
                    return Err(ShapeError::new(format!(
                        "cannot reduce over {}: {}",
                        a.letter(),
                        x.shape_string()
                    )));
                }
            }
            let dims = x
                .dims
                .iter()
                .filter_map(|(a, s)| match (axes.contains(a), keepdim) {
                    (false, _) => Some((*a, *s)),
                    (true, true) => Some((*a, 1)),
                    (true, false) => None,
                })
                .collect();
            Ok(TensorType::new(dims, Elem::Real))
        }
        Op::Concat { axis } => {
            let x = first()?;
            let mut total = 0;
            for y in inputs {
                let same_other = x.dims.len() == y.dims.len()
                    && x.dims
                        .iter()
                        .zip(&y.dims)
                        .all(|((a, s), (b, t))| a == b && (a == axis || s == t));
                if !same_other {
                    return Err(ShapeError::new(format!(
                        "cannot concatenate {} and {} along {}",
                        x.shape_string(),
                        y.shape_string(),
                        axis.letter()
                    )));
                }
                total += y.size(*axis).unwrap_or(0);
            }
            Ok(x.with_size(*axis, total).with_elem(Elem::Real))
        }
        Op::Unary(UnaryOp::Relu) => Ok(first()?.clone()),
        Op::Unary(UnaryOp::Sigmoid) => Ok(first()?.with_elem(Elem::Real)),
        Op::Binary(bin) => {
            let (a, b) = match inputs {
                [a, b] => (*a, *b),
                _ => return Err(ShapeError::new("a binary op takes two inputs")),
            };
            let broadcastable = a.dims.len() == b.dims.len()
                && a.dims
                    .iter()
                    .zip(&b.dims)
                    .all(|((x, s), (y, t))| x == y && (s == t || *s == 1 || *t == 1));
            if !broadcastable {
                let verb = if *bin == BinaryOp::Add {
                    "add"
                } else {
                    "multiply"
                };
                return Err(ShapeError::new(format!(
                    "cannot {verb} tensors of shapes {} and {}",
                    a.shape_string(),
                    b.shape_string()
                ))
                .help("both branches of a residual sum must produce the same shape; project the shortcut with `conv(c, 1, stride = s) -> bn`"));
            }
            let dims = a
                .dims
                .iter()
                .zip(&b.dims)
                .map(|((x, s), (_, t))| (*x, (*s).max(*t)))
                .collect();
            let elem = if *bin == BinaryOp::Mul && a.elem == Elem::Spike && b.elem == Elem::Spike {
                Elem::Spike
            } else {
                Elem::Real
            };
            Ok(TensorType::new(dims, elem))
        }
        Op::Scan { emit, .. } => {
            let x = first()?;
            if !x.has(Axis::T) {
                return Err(ShapeError::new(format!(
                    "a neuron needs a time axis, found {}",
                    x.shape_string()
                )));
            }
            if let Some(gate) = inputs.get(1) {
                let fits = gate.dims.len() == x.dims.len()
                    && gate
                        .dims
                        .iter()
                        .zip(&x.dims)
                        .all(|((a, s), (b, t))| a == b && (s == t || *s == 1));
                if !fits {
                    return Err(ShapeError::new(format!(
                        "membrane gate {} does not broadcast to {}",
                        gate.shape_string(),
                        x.shape_string()
                    )));
                }
            }
            Ok(x.with_elem(if *emit == ScanEmit::Spikes {
                Elem::Spike
            } else {
                Elem::Real
            }))
        }
    }
}

/// The parameters an op owns, as (suffix, shape, role, init), given its input types.
pub fn param_layout(
    op: &Op,
    inputs: &[&TensorType],
    bias: bool,
) -> Vec<(String, Vec<usize>, ParamRole, Init)> {
    let Some(x) = inputs.first() else {
        return Vec::new();
    };
    match op {
        Op::Conv2d {
            out_channels,
            kernel,
            ..
        } => {
            let c = x.size(Axis::C).unwrap_or(0);
            let fan_in = c * kernel.0 * kernel.1;
            let mut v = vec![(
                "weight".into(),
                vec![*out_channels, c, kernel.0, kernel.1],
                ParamRole::Weight,
                Init::UniformFanIn { fan_in },
            )];
            if bias {
                v.push((
                    "bias".into(),
                    vec![*out_channels],
                    ParamRole::Bias,
                    Init::UniformFanIn { fan_in },
                ));
            }
            v
        }
        Op::Dense { axis, out } => {
            let fan_in = x.size(*axis).unwrap_or(0);
            let mut v = vec![(
                "weight".into(),
                vec![*out, fan_in],
                ParamRole::Weight,
                Init::UniformFanIn { fan_in },
            )];
            if bias {
                v.push((
                    "bias".into(),
                    vec![*out],
                    ParamRole::Bias,
                    Init::UniformFanIn { fan_in },
                ));
            }
            v
        }
        Op::BatchNorm { axis, .. } => {
            let c = x.size(*axis).unwrap_or(0);
            vec![
                ("gamma".into(), vec![c], ParamRole::Gamma, Init::Const(1.0)),
                ("beta".into(), vec![c], ParamRole::Beta, Init::Const(0.0)),
                (
                    "running_mean".into(),
                    vec![c],
                    ParamRole::RunningMean,
                    Init::Const(0.0),
                ),
                (
                    "running_var".into(),
                    vec![c],
                    ParamRole::RunningVar,
                    Init::Const(1.0),
                ),
            ]
        }
        Op::Scan { neuron, .. } => neuron
            .learns
            .iter()
            .map(|(name, init)| {
                (
                    name.clone(),
                    vec![1],
                    ParamRole::NeuronScalar,
                    Init::Const(*init),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}
