//! Golden values: the reference interpreter against an independent PyTorch implementation of a
//! small MA-SNN (conv + batchnorm + TCSA + LIF, T = 4, batch 2). Forward values, the loss, every
//! parameter gradient, the input gradient and the updated running statistics must agree within
//! 1e-5 relative (with an absolute floor of 1e-5 × the tensor's largest magnitude, since some
//! gradients are zero by construction, e.g. a conv bias before batchnorm). Regenerate the files
//! with tests/reference/golden_small.py (see tests/reference/README.md).

mod common;

use common::read_npy;

use ndarray::ArrayD;
use snnc::interp::{Interpreter, Mode, Options, ParamStore, loss};
use snnc::sema::compile_path;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference")
}

fn assert_close(what: &str, ours: &ArrayD<f64>, theirs: &ArrayD<f64>) {
    assert_eq!(ours.shape(), theirs.shape(), "{what}: shape");
    let scale = theirs.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in ours.iter().zip(theirs.iter()).enumerate() {
        // 1e-12 absorbs float64 rounding noise in tensors that are zero by construction.
        let tol = (1e-5 * b.abs().max(scale)).max(1e-12);
        assert!(
            (a - b).abs() <= tol,
            "{what}[{i}]: ours {a:e}, PyTorch {b:e} (tolerance {tol:e})"
        );
    }
}

#[test]
fn interpreter_matches_pytorch_reference() {
    let golden = dir().join("golden_small");
    let c = compile_path(&dir().join("golden_small.snn"), &[]);
    assert!(
        !c.diags.has_errors(),
        "{}",
        c.diags.render_plain(&c.program.sources)
    );
    let g = c.graphs.first().expect("GoldenSmall");
    let mut params = ParamStore::init(g, 0);
    for p in &g.params {
        let file = golden.join(format!("param.{}.npy", p.name));
        if file.exists() {
            params
                .set(g, &p.name, read_npy(&file))
                .expect("parameter shape");
        }
    }
    let interp = Interpreter::new(
        g,
        Options {
            mode: Mode::Train,
            smooth_fire: None,
            dropout_seed: 0,
        },
    );
    let x = read_npy(&golden.join("input.npy"));
    let fwd = interp.forward(&params, &[("x", x)]).expect("forward");

    // Intermediate values: re-run keeping everything is not needed; compare the readout and the
    // values the backward saved (which include most layers).
    assert_close(
        "readout0",
        &fwd.outputs[0],
        &read_npy(&golden.join("out.readout0.npy")),
    );
    for (id, value) in &fwd.values {
        let name = &g.node(*id).name;
        let file = golden.join(format!("out.{name}.npy"));
        if file.exists() {
            assert_close(name, value, &read_npy(&file));
        }
    }

    let target = read_npy(&golden.join("target.npy"));
    let classes: Vec<usize> = target
        .outer_iter()
        .map(|row| row.iter().position(|v| *v == 1.0).expect("one-hot"))
        .collect();
    let (l, d_out) = loss::mse_one_hot(&fwd.outputs[0], &classes).expect("loss");
    let their_loss = read_npy(&golden.join("loss.npy"));
    assert!(
        (l - their_loss.iter().next().copied().unwrap_or(f64::NAN)).abs() < 1e-12,
        "loss {l}"
    );

    let grads = interp.backward(&params, &fwd, &[d_out]).expect("backward");
    let mut compared = 0;
    for (i, p) in g.params.iter().enumerate() {
        let file = golden.join(format!("grad.{}.npy", p.name));
        if let (Some(ours), true) = (&grads.params[i], file.exists()) {
            assert_close(&format!("d{}", p.name), ours, &read_npy(&file));
            compared += 1;
        }
    }
    assert_eq!(
        compared, 11,
        "every trainable parameter has a golden gradient"
    );
    assert_close(
        "dinput",
        grads.inputs.get("x").expect("input grad"),
        &read_npy(&golden.join("grad.input.npy")),
    );
    for (pid, value) in &fwd.running_updates {
        let name = &g.param(*pid).name;
        assert_close(
            name,
            value,
            &read_npy(&golden.join(format!("running.{name}.npy"))),
        );
    }
    assert_eq!(fwd.running_updates.len(), 2);
}
