//! The textual form of the graph IR (`snnc build --emit ir`): one line per node with its type,
//! attributes and parameters; neuron scans print their step equations as a region.

use super::graph::*;
use super::scalar::{ScalarPrinter, Target, fmt_f64};
use std::fmt::Write as _;

pub fn print_graph(g: &Graph) -> String {
    let mut out = String::new();
    let args: Vec<String> = g
        .model_args
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    let _ = writeln!(out, "model @{}({}) {{", g.name, args.join(", "));
    for p in &g.params {
        let shape: Vec<String> = p.shape.iter().map(ToString::to_string).collect();
        let init = match &p.init {
            Init::Const(c) => format!("const({})", fmt_f64(*c)),
            Init::UniformFanIn { fan_in } => format!("uniform_fan_in({fan_in})"),
        };
        let _ = writeln!(
            out,
            "  param ${}: [{}] {:?} init {init}",
            p.name,
            shape.join(", "),
            p.role
        );
    }
    for node in &g.nodes {
        print_node(g, node, &mut out);
    }
    let outs: Vec<String> = g
        .outputs
        .iter()
        .map(|o| format!("%{}", g.node(*o).name))
        .collect();
    let _ = writeln!(out, "  output {}", outs.join(", "));
    if !g.train.is_empty() {
        let _ = writeln!(out, "  train {{");
        for s in &g.train {
            let _ = writeln!(out, "    {} = {}", s.name, s.value);
        }
        let _ = writeln!(out, "  }}");
    }
    let _ = writeln!(out, "}}");
    out
}

fn attrs(op: &Op) -> String {
    match op {
        Op::Input { name, source } => match source {
            InputSource::Events {
                channels,
                height,
                width,
                framing,
                downsample,
            } => {
                let framing = match framing {
                    Framing::Time { window_us } => format!("time({}us)", fmt_f64(*window_us)),
                    Framing::Count => "count".into(),
                    Framing::Frames => "frames".into(),
                };
                format!(
                    "{{name = \"{name}\", events = {channels}x{height}x{width}, framing = {framing}, downsample = {downsample}}}"
                )
            }
            InputSource::Image {
                channels,
                height,
                width,
            } => {
                format!("{{name = \"{name}\", image = {channels}x{height}x{width}}}")
            }
        },
        Op::Conv2d {
            out_channels,
            kernel,
            stride,
            padding,
        } => format!(
            "{{out = {out_channels}, kernel = {}x{}, stride = {}x{}, pad = {}x{}}}",
            kernel.0, kernel.1, stride.0, stride.1, padding.0, padding.1
        ),
        Op::Dense { axis, out } => format!("{{axis = {}, out = {out}}}", axis.letter()),
        Op::Pool { kernel, stride, .. } => format!("{{kernel = {kernel}, stride = {stride}}}"),
        Op::BatchNorm {
            axis,
            eps,
            momentum,
        } => {
            format!(
                "{{axis = {}, eps = {}, momentum = {}}}",
                axis.letter(),
                fmt_f64(*eps),
                fmt_f64(*momentum)
            )
        }
        Op::Dropout { p } => format!("{{p = {}}}", fmt_f64(*p)),
        Op::Reduce { axes, keepdim, .. } => {
            let axes: String = axes.iter().map(|a| a.letter()).collect();
            format!("{{axes = {axes}, keepdim = {keepdim}}}")
        }
        Op::Concat { axis } => format!("{{axis = {}}}", axis.letter()),
        Op::Scan { emit, .. } => format!(
            "{{emit = {}}}",
            if *emit == ScanEmit::Spikes {
                "spikes"
            } else {
                "membrane"
            }
        ),
        Op::Flatten | Op::Unary(_) | Op::Binary(_) => String::new(),
    }
}

fn print_node(g: &Graph, node: &Node, out: &mut String) {
    let inputs: Vec<String> = node
        .inputs
        .iter()
        .map(|v| format!("%{}", g.node(*v).name))
        .collect();
    let params: Vec<String> = node
        .params
        .iter()
        .map(|p| format!("${}", g.param(*p).name))
        .collect();
    let params = if params.is_empty() {
        String::new()
    } else {
        format!(" [{}]", params.join(", "))
    };
    let attrs = attrs(&node.op);
    let attrs = if attrs.is_empty() {
        attrs
    } else {
        format!(" {attrs}")
    };
    let _ = write!(
        out,
        "  %{}: {} = {}({}){params}{attrs}",
        node.name,
        node.ty,
        node.op.mnemonic(),
        inputs.join(", ")
    );
    if let Op::Scan { neuron, .. } = &node.op {
        let args: Vec<String> = neuron
            .args
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        let _ = writeln!(out, " neuron {}({}) {{", neuron.name, args.join(", "));
        for (name, init) in &neuron.learns {
            let _ = writeln!(out, "      learn {name} = {}", fmt_f64(*init));
        }
        for (name, init) in &neuron.states {
            let _ = writeln!(out, "      state {name} = {}", fmt_f64(*init));
        }
        for (target, expr) in &neuron.steps {
            let name = match target {
                Target::State(i) => neuron.states[*i].0.as_str(),
                Target::Local(i) => neuron.locals[*i].as_str(),
            };
            let _ = writeln!(
                out,
                "      {name} = {}",
                ScalarPrinter {
                    program: Some(neuron),
                    expr
                }
            );
        }
        let emitted = match node.op {
            Op::Scan {
                emit: ScanEmit::Membrane,
                ..
            } => neuron.states[0].0.as_str(),
            _ => neuron.locals[neuron.spike].as_str(),
        };
        let _ = writeln!(out, "      emit {emitted}");
        for s in &neuron.surrogates {
            let args: Vec<String> = s
                .args
                .iter()
                .map(|(k, v)| format!("{k} = {}", fmt_f64(*v)))
                .collect();
            let _ = writeln!(
                out,
                "      surrogate {}({}): d/dx = {}",
                s.name,
                args.join(", "),
                ScalarPrinter {
                    program: None,
                    expr: &s.derivative
                }
            );
        }
        let _ = writeln!(out, "    }}");
    } else {
        let _ = writeln!(out);
    }
}
