//! Reverse-mode autodiff over the graph IR: builds the backward program (`snnc build --emit
//! grad`): one gradient step per forward node in reverse order, the forward values each step
//! needs (the saved set, i.e. BPTT memory), and for neuron scans the generated adjoint equations
//! of a reverse scan over T, obtained by differentiating the user's step equations.

pub mod symbolic;

use crate::ir::scalar::{NeuronProgram, Scalar, ScalarPrinter, Target, Var};
use crate::ir::*;
use std::fmt::Write as _;

/// ∂(assignment j's expression)/∂var for every variable it reads; zero partials are dropped.
#[derive(Clone, Debug, PartialEq)]
pub struct StepAdjoint {
    pub target: Target,
    pub partials: Vec<(Var, Scalar)>,
}

/// The generated reverse scan of one neuron layer.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanAdjoint {
    /// One entry per forward equation, in forward order (the backward walks them in reverse).
    pub steps: Vec<StepAdjoint>,
}

/// The backward of one forward node.
#[derive(Clone, Debug, PartialEq)]
pub struct GradStep {
    pub node: ValueId,
    /// Forward values this step reads (beyond parameters): they must be kept after the forward.
    pub needs: Vec<ValueId>,
    /// Whether the step keeps per-step neuron states of its scan (BPTT memory O(T × neurons)).
    pub saves_scan_states: bool,
    /// Whether the step needs the dropout mask of the forward.
    pub saves_mask: bool,
    pub scan: Option<ScanAdjoint>,
}

/// The backward program of a graph.
#[derive(Clone, Debug, PartialEq)]
pub struct GradGraph {
    /// Reverse topological order.
    pub steps: Vec<GradStep>,
    /// Every forward value some step reads, sorted.
    pub saved: Vec<ValueId>,
}

/// The adjoint equations of a neuron's step program.
pub fn scan_adjoint(neuron: &NeuronProgram) -> ScanAdjoint {
    let steps = neuron
        .steps
        .iter()
        .map(|(target, expr)| {
            let partials = symbolic::reads(expr)
                .into_iter()
                .map(|v| (v, symbolic::diff(expr, v, &neuron.surrogates)))
                .filter(|(_, d)| *d != Scalar::Const(0.0))
                .collect();
            StepAdjoint {
                target: *target,
                partials,
            }
        })
        .collect();
    ScanAdjoint { steps }
}

/// Builds the backward program of `g` (gradients flow from every output to every parameter and
/// input).
pub fn differentiate(g: &Graph) -> GradGraph {
    let mut steps = Vec::new();
    for (i, node) in g.nodes.iter().enumerate().rev() {
        let id = ValueId(i);
        let input = |k: usize| node.inputs.get(k).copied();
        let (needs, scan): (Vec<ValueId>, Option<ScanAdjoint>) = match &node.op {
            Op::Input { .. } => continue,
            Op::Conv2d { .. } | Op::Dense { .. } | Op::BatchNorm { .. } => {
                (input(0).into_iter().collect(), None)
            }
            Op::Pool {
                kind: PoolKind::Max,
                ..
            }
            | Op::Reduce {
                kind: ReduceKind::Max,
                ..
            } => (input(0).into_iter().collect(), None),
            // relu'(x) = [x > 0] = [relu(x) > 0]: the output, which the next layer usually
            // saves anyway (a neuron scan's input current), serves instead of a second tensor.
            Op::Unary(UnaryOp::Relu) => (vec![id], None),
            Op::Unary(_) => (input(0).into_iter().collect(), None),
            Op::Binary(BinaryOp::Mul) => (node.inputs.clone(), None),
            Op::Pool { .. }
            | Op::Reduce { .. }
            | Op::Concat { .. }
            | Op::Flatten
            | Op::Dropout { .. } => (Vec::new(), None),
            Op::Binary(BinaryOp::Add) => (Vec::new(), None),
            Op::Scan { neuron, .. } => (node.inputs.clone(), Some(scan_adjoint(neuron))),
        };
        steps.push(GradStep {
            node: id,
            needs,
            saves_scan_states: matches!(node.op, Op::Scan { .. }),
            saves_mask: matches!(node.op, Op::Dropout { .. }),
            scan,
        });
    }
    let mut saved: Vec<ValueId> = steps.iter().flat_map(|s| s.needs.iter().copied()).collect();
    saved.sort();
    saved.dedup();
    GradGraph { steps, saved }
}

/// The textual form of the backward program.
pub fn print_grad(g: &Graph, grad: &GradGraph) -> String {
    let mut out = String::new();
    let name = |v: ValueId| g.node(v).name.clone();
    let _ = writeln!(out, "backward @{} {{", g.name);
    let saved: Vec<String> = grad
        .saved
        .iter()
        .map(|v| format!("%{}", name(*v)))
        .collect();
    let _ = writeln!(out, "  saved {}", saved.join(", "));
    let scans: Vec<String> = grad
        .steps
        .iter()
        .filter(|s| s.saves_scan_states)
        .map(|s| format!("%{}.states", name(s.node)))
        .collect();
    if !scans.is_empty() {
        let _ = writeln!(out, "  saved per step {}", scans.join(", "));
    }
    let outs: Vec<String> = g
        .outputs
        .iter()
        .map(|o| format!("d%{}", name(*o)))
        .collect();
    let _ = writeln!(out, "  seed {}", outs.join(", "));
    for step in &grad.steps {
        let node = g.node(step.node);
        let mut results: Vec<String> = node
            .inputs
            .iter()
            .map(|v| format!("d%{}", name(*v)))
            .collect();
        results.extend(
            node.params
                .iter()
                .filter(|p| g.param(**p).role.trainable())
                .map(|p| format!("d${}", g.param(*p).name)),
        );
        let mut reads = vec![format!("d%{}", node.name)];
        reads.extend(step.needs.iter().map(|v| format!("%{}", name(*v))));
        if step.saves_scan_states {
            reads.push(format!("%{}.states", node.name));
        }
        if step.saves_mask {
            reads.push(format!("%{}.mask", node.name));
        }
        let _ = write!(
            out,
            "  {} += {}_grad({})",
            results.join(", "),
            node.op.mnemonic(),
            reads.join(", ")
        );
        match (&node.op, &step.scan) {
            (Op::Scan { neuron, emit }, Some(adj)) => {
                let emitted = match emit {
                    ScanEmit::Spikes => neuron.locals[neuron.spike].clone(),
                    ScanEmit::Membrane => neuron.states[0].0.clone(),
                };
                let _ = writeln!(out, " reverse over T {{");
                let _ = writeln!(out, "      d{emitted} += d%{}[t]", node.name);
                for (j, step_adj) in adj.steps.iter().enumerate().rev() {
                    let target = match step_adj.target {
                        Target::State(i) => neuron.states[i].0.clone(),
                        Target::Local(i) => neuron.locals[i].clone(),
                    };
                    let terms: Vec<String> = step_adj
                        .partials
                        .iter()
                        .map(|(v, d)| {
                            let var = match v {
                                Var::Input => "input".to_string(),
                                Var::State(i) => neuron.states[*i].0.clone(),
                                Var::Learn(i) => neuron.learns[*i].0.clone(),
                                Var::Local(i) => neuron.locals[*i].clone(),
                            };
                            format!(
                                "d{var} += d{target}' * ({})",
                                ScalarPrinter {
                                    program: Some(neuron),
                                    expr: d
                                }
                            )
                        })
                        .collect();
                    let _ = writeln!(
                        out,
                        "      [{target}'] {}",
                        if terms.is_empty() {
                            "no inputs".into()
                        } else {
                            terms.join("; ")
                        }
                    );
                    // The membrane gate is applied just before the fire equation in the forward,
                    // so its adjoint comes right after that equation's in the reverse walk.
                    if node.inputs.len() > 1 && j == neuron.fire_step {
                        let m = &neuron.states[0].0;
                        let _ = writeln!(out, "      [gate] dgate += d{m} * {m}; d{m} *= gate");
                    }
                }
                let _ = writeln!(out, "      d%{}[t] = dinput", g.node(node.inputs[0]).name);
                let _ = writeln!(out, "    }}");
            }
            _ => {
                let _ = writeln!(out);
            }
        }
    }
    let _ = writeln!(out, "}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_forward_node_but_inputs_gets_a_step() {
        let src = "import std.neurons.{LIF}\nmodel M(T: int = 2) {\n input x: image(channels = 1, height = 4, width = 4, T = T)\n x -> conv(2, 3) -> bn -> LIF -> flatten -> linear(2) -> LIF -> readout.rate\n}\n";
        let c = crate::sema::compile_source(std::path::Path::new("m.snn"), src.into(), &[]);
        let g = c.graphs.first().expect("model compiles");
        let grad = differentiate(g);
        assert_eq!(grad.steps.len(), g.nodes.len() - 1);
        assert!(
            grad.steps.windows(2).all(|w| w[0].node > w[1].node),
            "reverse order"
        );
    }
}
