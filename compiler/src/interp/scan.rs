//! Neuron scans in the interpreter: the forward runs each element's step program over T and
//! saves the states at the start of every step; the backward walks T in reverse, recomputing
//! each step from its saved states and applying the generated adjoint equations (BPTT).

use crate::autodiff::ScanAdjoint;
use crate::ir::ScanEmit;
use crate::ir::scalar::*;
use ndarray::{ArrayD, ArrayViewD, IxDyn};

/// The program actually run: with `smooth`, every surrogate's derivative becomes the exact
/// derivative of the sigmoid(k·x) that replaces the step function in the forward.
pub fn prepare(neuron: &NeuronProgram, smooth: Option<f64>) -> NeuronProgram {
    let mut p = neuron.clone();
    if let Some(k) = smooth {
        for s in &mut p.surrogates {
            let sig = Scalar::unary(
                ScalarUnary::Sigmoid,
                Scalar::binary(ScalarBinary::Mul, Scalar::Const(k), Scalar::Var(Var::Input)),
            );
            s.derivative = Scalar::binary(
                ScalarBinary::Mul,
                Scalar::binary(ScalarBinary::Mul, Scalar::Const(k), sig.clone()),
                Scalar::binary(ScalarBinary::Sub, Scalar::Const(1.0), sig),
            );
        }
    }
    p
}

/// Values of one element during one step (borrowed, so evaluation allocates nothing).
struct Env<'a> {
    input: f64,
    states: &'a [f64],
    locals: &'a [f64],
    learns: &'a [f64],
    smooth: Option<f64>,
}

fn eval(e: &Scalar, env: &Env) -> f64 {
    match e {
        Scalar::Const(c) => *c,
        Scalar::Var(Var::Input) => env.input,
        Scalar::Var(Var::State(i)) => env.states[*i],
        Scalar::Var(Var::Learn(i)) => env.learns.get(*i).copied().unwrap_or(0.0),
        Scalar::Var(Var::Local(i)) => env.locals[*i],
        Scalar::Unary(op, x) => op.eval(eval(x, env)),
        Scalar::Binary(op, a, b) => op.eval(eval(a, env), eval(b, env)),
        Scalar::Select(c, a, b) => {
            if eval(c, env) != 0.0 {
                eval(a, env)
            } else {
                eval(b, env)
            }
        }
        Scalar::Fire { arg, .. } => {
            let x = eval(arg, env);
            match env.smooth {
                Some(k) => 1.0 / (1.0 + (-k * x).exp()),
                None => f64::from(x >= 0.0),
            }
        }
    }
}

fn assign(states: &mut [f64], locals: &mut [f64], target: Target, v: f64) {
    match target {
        Target::State(i) => states[i] = v,
        Target::Local(i) => locals[i] = v,
    }
}

/// Runs one step's equations in place; `before`, when given, receives the states and locals
/// just before each equation (row j = equation j). Returns the membrane before the gate.
#[allow(clippy::too_many_arguments)]
fn step(
    p: &NeuronProgram,
    input: f64,
    gate: Option<f64>,
    states: &mut [f64],
    locals: &mut [f64],
    learns: &[f64],
    smooth: Option<f64>,
    mut before: Option<&mut [f64]>,
) -> f64 {
    let width = states.len() + locals.len();
    let mut membrane_before_gate = 0.0;
    for (j, (target, expr)) in p.steps.iter().enumerate() {
        if j == p.fire_step
            && let Some(g) = gate
        {
            membrane_before_gate = states[0];
            states[0] *= g;
        }
        if let Some(b) = before.as_deref_mut() {
            let row = &mut b[j * width..(j + 1) * width];
            row[..states.len()].copy_from_slice(states);
            row[states.len()..].copy_from_slice(locals);
        }
        let v = eval(
            expr,
            &Env {
                input,
                states,
                locals,
                learns,
                smooth,
            },
        );
        assign(states, locals, *target, v);
    }
    membrane_before_gate
}

/// Flat views of input [T, ...] and a gate broadcast to it.
fn flat(x: &ArrayViewD<f64>) -> Vec<f64> {
    x.iter().copied().collect()
}

fn broadcast_gate(gate: Option<ArrayViewD<f64>>, shape: &[usize]) -> Option<Vec<f64>> {
    gate.and_then(|g| {
        g.broadcast(IxDyn(shape))
            .map(|b| b.iter().copied().collect())
    })
}

/// Runs the scan; returns the emitted tensor (shape of `x`) and the states at the start of each
/// step, shaped [T, states, elements].
pub fn forward(
    p: &NeuronProgram,
    emit: ScanEmit,
    x: ArrayViewD<f64>,
    gate: Option<ArrayViewD<f64>>,
    learns: &[f64],
    smooth: Option<f64>,
) -> (ArrayD<f64>, ArrayD<f64>) {
    let shape = x.shape().to_vec();
    let t_len = shape.first().copied().unwrap_or(0);
    let n = x.len() / t_len.max(1);
    let xs = flat(&x);
    let gs = broadcast_gate(gate, &shape);
    let mut out = vec![0.0; xs.len()];
    let ns = p.states.len();
    let mut saved = vec![0.0; t_len * ns * n];
    let mut states = vec![0.0; ns];
    let mut locals = vec![0.0; p.locals.len()];
    for e in 0..n {
        for (s, init) in states.iter_mut().zip(&p.states) {
            *s = init.1;
        }
        for t in 0..t_len {
            for s in 0..ns {
                saved[(t * ns + s) * n + e] = states[s];
            }
            let gate = gs.as_ref().map(|g| g[t * n + e]);
            step(
                p,
                xs[t * n + e],
                gate,
                &mut states,
                &mut locals,
                learns,
                smooth,
                None,
            );
            out[t * n + e] = match emit {
                ScanEmit::Spikes => locals[p.spike],
                ScanEmit::Membrane => states[0],
            };
        }
    }
    let y =
        ArrayD::from_shape_vec(IxDyn(&shape), out).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&shape)));
    let states = ArrayD::from_shape_vec(IxDyn(&[t_len, ns, n]), saved)
        .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[t_len, ns, n])));
    (y, states)
}

pub struct ScanGrads {
    pub input: ArrayD<f64>,
    /// Gradient w.r.t. the gate broadcast to the input's shape (reduce with sum_to_shape).
    pub gate: Option<ArrayD<f64>>,
    pub learns: Vec<f64>,
}

/// Reverse scan over T (BPTT) with the generated adjoint equations.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    p: &NeuronProgram,
    adj: &ScanAdjoint,
    emit: ScanEmit,
    x: ArrayViewD<f64>,
    gate: Option<ArrayViewD<f64>>,
    learns: &[f64],
    states: ArrayViewD<f64>,
    dy: ArrayViewD<f64>,
    smooth: Option<f64>,
) -> ScanGrads {
    let shape = x.shape().to_vec();
    let t_len = shape.first().copied().unwrap_or(0);
    let n = x.len() / t_len.max(1);
    let xs = flat(&x);
    let dys = flat(&dy);
    let saved = flat(&states);
    let gs = broadcast_gate(gate, &shape);
    let ns = p.states.len();
    let mut dx = vec![0.0; xs.len()];
    let mut dgate = gs.as_ref().map(|g| vec![0.0; g.len()]);
    let mut dlearn = vec![0.0; p.learns.len()];
    let nl = p.locals.len();
    let width = ns + nl;
    let mut before = vec![0.0; p.steps.len() * width];
    let mut states = vec![0.0; ns];
    let mut locals = vec![0.0; nl];
    let mut adj_states = vec![0.0; ns];
    let mut adj_locals = vec![0.0; nl];
    for e in 0..n {
        adj_states.fill(0.0);
        for t in (0..t_len).rev() {
            // Recompute the step from its saved start, remembering the values before each equation.
            let input = xs[t * n + e];
            for (s, slot) in states.iter_mut().enumerate() {
                *slot = saved[(t * ns + s) * n + e];
            }
            let gate = gs.as_ref().map(|g| g[t * n + e]);
            let membrane_before_gate = step(
                p,
                input,
                gate,
                &mut states,
                &mut locals,
                learns,
                smooth,
                Some(&mut before),
            );
            adj_locals.fill(0.0);
            let mut adj_input = 0.0;
            match emit {
                ScanEmit::Spikes => adj_locals[p.spike] += dys[t * n + e],
                ScanEmit::Membrane => adj_states[0] += dys[t * n + e],
            }
            for (j, step_adj) in adj.steps.iter().enumerate().rev() {
                let g_out = match step_adj.target {
                    Target::State(i) => std::mem::take(&mut adj_states[i]),
                    Target::Local(i) => std::mem::take(&mut adj_locals[i]),
                };
                if g_out != 0.0 {
                    let row = &before[j * width..(j + 1) * width];
                    let env_j = Env {
                        input,
                        states: &row[..ns],
                        locals: &row[ns..],
                        learns,
                        smooth,
                    };
                    for (var, d) in &step_adj.partials {
                        let contribution = g_out * eval(d, &env_j);
                        match var {
                            Var::Input => adj_input += contribution,
                            Var::State(i) => adj_states[*i] += contribution,
                            Var::Local(i) => adj_locals[*i] += contribution,
                            Var::Learn(i) => dlearn[*i] += contribution,
                        }
                    }
                }
                if j == p.fire_step
                    && let (Some(g), Some(dg)) = (gate, dgate.as_mut())
                {
                    dg[t * n + e] += adj_states[0] * membrane_before_gate;
                    adj_states[0] *= g;
                }
            }
            dx[t * n + e] = adj_input;
        }
    }
    let to_array = |v: Vec<f64>| {
        ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&shape)))
    };
    ScanGrads {
        input: to_array(dx),
        gate: dgate.map(to_array),
        learns: dlearn,
    }
}
