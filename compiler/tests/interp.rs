//! The reference interpreter and the generated backward programs: whole networks are checked
//! against central finite differences in f64 with a smooth `fire` (so the forward is
//! differentiable and BPTT through user-written neuron equations is tested exactly), plus
//! explicit-memory and NaN-reporting behaviour.

use ndarray::{ArrayD, IxDyn};
use snnc::interp::{Interpreter, Mode, Options, ParamStore, loss};
use snnc::ir::{Axis, Graph, Op};
use snnc::sema::compile_source;
use std::path::Path;

fn compile(src: &str) -> Graph {
    let c = compile_source(Path::new("net.snn"), src.to_string(), &[]);
    assert!(
        !c.diags.has_errors(),
        "{}",
        c.diags.render_plain(&c.program.sources)
    );
    c.graphs.into_iter().next().expect("one model")
}

/// Deterministic inputs in [lo, hi).
fn random(shape: &[usize], seed: u64, lo: f64, hi: f64) -> ArrayD<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
    })
}

fn input_shape(g: &Graph, batch: usize) -> (String, Vec<usize>) {
    let (_, node) = g.inputs().next().expect("an input");
    let Op::Input { name, .. } = &node.op else {
        unreachable!()
    };
    (
        name.clone(),
        node.ty
            .dims
            .iter()
            .map(|(a, s)| if *a == Axis::B { batch } else { *s })
            .collect(),
    )
}

fn loss_of(
    interp: &Interpreter,
    params: &ParamStore,
    name: &str,
    x: &ArrayD<f64>,
    targets: &[usize],
) -> f64 {
    let fwd = interp
        .forward(params, &[(name, x.clone())])
        .expect("forward");
    loss::mse_one_hot(&fwd.outputs[0], targets).expect("loss").0
}

/// Compares every parameter and input gradient entry with central differences.
fn gradcheck(src: &str, batch: usize, smooth: f64, tol: f64) {
    let g = compile(src);
    let interp = Interpreter::new(
        &g,
        Options {
            mode: Mode::Train,
            smooth_fire: Some(smooth),
            dropout_seed: 7,
        },
    );
    let mut params = ParamStore::init(&g, 3);
    // Scale weights up a little so neurons sit in the sensitive range of the smooth fire.
    for (p, v) in g.params.iter().zip(params.values.iter_mut()) {
        if p.name.ends_with("weight") {
            v.mapv_inplace(|w| w * 2.0);
        }
    }
    let (name, shape) = input_shape(&g, batch);
    let x = random(&shape, 11, 0.0, 1.5);
    let classes = g.ty(g.outputs[0]).size(Axis::N).unwrap_or(1);
    let targets: Vec<usize> = (0..batch).map(|b| b % classes).collect();
    let fwd = interp
        .forward(&params, &[(&name, x.clone())])
        .expect("forward");
    let (_, d_out) = loss::mse_one_hot(&fwd.outputs[0], &targets).expect("loss");
    let grads = interp.backward(&params, &fwd, &[d_out]).expect("backward");
    let eps = 1e-6;
    let mut worst = (0.0f64, String::new());
    let mut check = |label: String, analytic: f64, numeric: f64| {
        let rel = (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(1e-3);
        if rel > worst.0 {
            worst = (
                rel,
                format!("{label}: analytic {analytic:e} numeric {numeric:e}"),
            );
        }
    };
    for (pi, decl) in g.params.iter().enumerate() {
        if !decl.role.trainable() {
            continue;
        }
        let analytic = grads.params[pi]
            .clone()
            .unwrap_or_else(|| ArrayD::zeros(IxDyn(&decl.shape)));
        for i in 0..params.values[pi].len() {
            let mut plus = params.clone();
            let mut minus = params.clone();
            plus.values[pi].as_slice_mut().expect("contiguous")[i] += eps;
            minus.values[pi].as_slice_mut().expect("contiguous")[i] -= eps;
            let numeric = (loss_of(&interp, &plus, &name, &x, &targets)
                - loss_of(&interp, &minus, &name, &x, &targets))
                / (2.0 * eps);
            check(
                format!("{}[{i}]", decl.name),
                analytic.as_slice().expect("contiguous")[i],
                numeric,
            );
        }
    }
    let dx = grads.inputs.get(&name).expect("input gradient");
    for i in (0..x.len()).step_by(7) {
        let mut plus = x.clone();
        let mut minus = x.clone();
        plus.as_slice_mut().expect("contiguous")[i] += eps;
        minus.as_slice_mut().expect("contiguous")[i] -= eps;
        let numeric = (loss_of(&interp, &params, &name, &plus, &targets)
            - loss_of(&interp, &params, &name, &minus, &targets))
            / (2.0 * eps);
        check(
            format!("input[{i}]"),
            dx.as_slice().expect("contiguous")[i],
            numeric,
        );
    }
    assert!(
        worst.0 < tol,
        "worst relative error {:.3e} at {}",
        worst.0,
        worst.1
    );
}

#[test]
fn gradcheck_conv_bn_tcsa_lif_network() {
    gradcheck(
        "import std.neurons.{LIF}\nimport std.attention.{TCSA}\nmodel M(T: int = 4) {\n  input x: image(channels = 2, height = 6, width = 6, T = T)\n  x -> conv(3, 3) -> bn -> attend(TCSA(r_t = 2, r_c = 1, k = 3)) -> LIF(v_th = 0.5)\n    -> pool.avg(2) -> flatten -> linear(3) -> LIF(v_th = 0.5) -> readout.rate\n}\n",
        2,
        4.0,
        1e-5,
    );
}

#[test]
fn gradcheck_user_neurons_membrane_attention_residual_and_membrane_readout() {
    gradcheck(
        "import std.neurons.{PLIF, MALIF}\nimport std.attention.{TCA}\nimport std.surrogates.{sigmoid}\n\
         neuron Adaptive(tau: float = 2.0, tau_a: float = 4.0, beta: float = 0.3, surrogate: surrogate = sigmoid()) {\n\
           state v = 0.0\n  state a = 0.0\n  v = v + (input - v) / tau\n  spike = fire(v - 0.6 - beta * a)\n\
           v = v * (1.0 - spike)\n  a = a + (spike - a) / tau_a\n}\n\
         model M(T: int = 4) {\n  input x: image(channels = 2, height = 4, width = 4, T = T)\n\
           let h = x -> conv(4, 3) -> bn\n\
           let branch = h -> Adaptive -> conv(4, 3) -> bn\n\
           h + branch -> attend(TCA(r_t = 2, r_c = 2), on = membrane, cell = PLIF()) -> pool.max(2)\n\
             -> flatten -> linear(3) -> MALIF -> linear(2) -> readout.membrane(cell = PLIF(v_th = 100.0))\n}\n",
        2,
        4.0,
        1e-5,
    );
}

#[test]
fn forward_keeps_only_what_the_backward_needs() {
    let g = compile(
        "import std.neurons.{LIF}\nmodel M(T: int = 3) {\n input x: image(channels = 1, height = 4, width = 4, T = T)\n x -> conv(2, 3) -> bn -> LIF -> pool.avg(2) -> flatten -> linear(2) -> LIF -> readout.rate\n}\n",
    );
    let interp = Interpreter::new(&g, Options::default());
    let params = ParamStore::init(&g, 1);
    let fwd = interp
        .forward(&params, &[("x", random(&[3, 2, 1, 4, 4], 5, 0.0, 2.0))])
        .expect("forward");
    let mut kept: Vec<_> = fwd.values.keys().copied().collect();
    kept.sort();
    assert_eq!(
        kept, interp.grad.saved,
        "exactly the saved set survives the forward"
    );
    // avg-pool, flatten and the readout need no saved input: their producers' outputs are freed.
    assert!(kept.len() < g.nodes.len() - 3);
    assert_eq!(
        fwd.scan_states.len(),
        2,
        "one per-step state record per neuron layer"
    );
    assert!(fwd.saved_bytes() > 0);
}

#[test]
fn non_finite_inputs_and_parameters_are_named() {
    let g = compile(
        "import std.neurons.{LIF}\nmodel M(T: int = 2) {\n input frames: image(channels = 1, height = 2, width = 2, T = T)\n frames -> flatten -> linear(2) -> LIF -> readout.rate\n}\n",
    );
    let interp = Interpreter::new(&g, Options::default());
    let mut params = ParamStore::init(&g, 1);
    let mut x = random(&[2, 1, 1, 2, 2], 2, 0.0, 1.0);
    x[[1, 0, 0, 1, 0]] = f64::NAN;
    let e = interp
        .forward(&params, &[("frames", x)])
        .err()
        .expect("NaN input is an error");
    assert_eq!(e.tensor, "frames");
    let w = params
        .get(&g, "linear0.weight")
        .expect("weight")
        .mapv(|_| f64::INFINITY);
    params.set(&g, "linear0.weight", w).expect("same shape");
    let e = interp
        .forward(
            &params,
            &[("frames", random(&[2, 1, 1, 2, 2], 2, 0.0, 1.0))],
        )
        .err()
        .expect("inf weight is an error");
    assert_eq!(e.tensor, "linear0.weight");
    assert!(e.to_string().contains("inf"), "{e}");
}

#[test]
fn wrong_input_shape_is_an_error_not_a_panic() {
    let g = compile(
        "import std.neurons.{LIF}\nmodel M(T: int = 2) {\n input x: image(channels = 1, height = 2, width = 2, T = T)\n x -> flatten -> linear(2) -> LIF -> readout.rate\n}\n",
    );
    let interp = Interpreter::new(&g, Options::default());
    let params = ParamStore::init(&g, 1);
    let e = interp
        .forward(&params, &[("x", random(&[3, 1, 1, 2, 2], 1, 0.0, 1.0))])
        .err()
        .expect("T mismatch");
    assert!(e.message.contains("[T=2, B, C=1, H=2, W=2]"), "{e}");
}
