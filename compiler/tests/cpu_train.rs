//! Training on the CPU backend: one JIT-compiled step (f32) against the interpreter (f64) on
//! N-MNIST data, and `snnc train/eval --backend cpu` end to end (checkpoint, log, resume).

mod common;

use snnc::backend::cpu::CompiledTraining;
use snnc::interp::ParamStore;
use snnc::ir::Graph;
use snnc::mlir::LowerOptions;
use snnc::sema::compile_source;
use snnc::train::{Backend, CpuExecutor, Executor, InterpExecutor, RunConfig, RunOverrides, Step};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MODEL: &str = "examples/nmnist.snn:NMNISTTCSA";

fn nmnist(t: usize) -> Graph {
    let path = common::workspace().join("examples/nmnist.snn");
    let text = std::fs::read_to_string(&path).expect("readable");
    let c = compile_source(&path, text, &[("T".to_string(), t.to_string())]);
    assert!(
        !c.diags.has_errors(),
        "{}",
        c.diags.render_plain(&c.program.sources)
    );
    c.graphs
        .into_iter()
        .find(|g| g.name == "NMNISTTCSA")
        .expect("model")
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// One step on each executor from the same parameters and batch.
fn one_step(g: &Graph, batch_size: usize) -> (Step, Step) {
    common::split_every_parallel_loop();
    let run_dir = std::env::temp_dir().join("snnc-cpu-train-unused");
    let mut interp = InterpExecutor::new(g, 0, &run_dir).expect("interp");
    let want = common::one_training_step(&mut interp, g, batch_size);
    let mut cpu = CpuExecutor::new(g, 0, &run_dir).expect("cpu");
    let got = common::one_training_step(&mut cpu, g, batch_size);
    (got, want)
}

#[test]
fn one_cpu_step_matches_the_interpreter_on_nmnist() {
    let g = nmnist(4);
    let (got, want) = one_step(&g, 2);
    steps_agree(&g, &got, &want);
}

/// A model with dropout on both kinds of value: the CPU executor draws the interpreter's masks
/// for the same run seed and step.
#[test]
fn one_cpu_step_with_dropout_matches_the_interpreter() {
    let text = "import std.neurons.{MALIF}\nmodel Drop(T: int = 4) {\n    input x: events(channels = 2, height = 34, width = 34, T = T, framing = frames)\n    x -> conv(8, 3, stride = 2) -> dropout(0.2) -> bn -> MALIF -> pool.avg(2) -> flatten -> dropout(0.5) -> linear(10) -> bn -> MALIF -> readout.rate\n    train {\n        dataset = nmnist(\"examples/data/nmnist\")\n        loss = cross_entropy\n    }\n}\n";
    let path = common::workspace().join("drop.snn");
    let c = compile_source(&path, text.to_string(), &[]);
    assert!(
        !c.diags.has_errors(),
        "{}",
        c.diags.render_plain(&c.program.sources)
    );
    let g = &c.graphs[0];
    let (got, want) = one_step(g, 2);
    steps_agree(g, &got, &want);
}

/// One CPU step against the interpreter's: loss, readout, spike counts, every gradient and the
/// running statistics.
fn steps_agree(g: &Graph, got: &Step, want: &Step) {
    assert!(
        (got.loss - want.loss).abs() <= 1e-5 * want.loss.abs().max(1.0),
        "loss: cpu {} interp {}",
        got.loss,
        want.loss
    );
    let (r, w) = (
        got.readout.as_slice().expect("contiguous"),
        want.readout.as_slice().expect("contiguous"),
    );
    assert_eq!(r.len(), w.len());
    for (a, b) in r.iter().zip(w) {
        assert!((a - b).abs() <= 1e-5, "readout: {a} vs {b}");
    }
    // Spikes are counted from the buffers the forward saves; f32 and f64 membranes agree at
    // every threshold on this data, so the counts are equal.
    assert_eq!(got.spike_counts.len(), want.spike_counts.len());
    for ((id, s, n), (wid, ws, wn)) in got.spike_counts.iter().zip(&want.spike_counts) {
        assert_eq!((id, n), (wid, wn));
        assert!((s - ws).abs() < 0.5, "spikes of {id:?}: {s} vs {ws}");
    }
    assert!(
        want.spike_counts.iter().any(|(_, s, _)| *s > 0.0),
        "no spikes: the comparison would be vacuous"
    );

    // Gradients: relative 1e-3 with an absolute floor of 1e-3 × the tensor's largest magnitude.
    // A tensor that is zero by construction (conv/linear bias feeding batchnorm, whose dx sums
    // to zero per channel) is pure cancellation noise in f32 and is checked against the model's
    // largest gradient instead.
    let global = want
        .grads
        .iter()
        .flatten()
        .map(|a| max_abs(a.as_slice().expect("contiguous")))
        .fold(0.0, f64::max);
    assert!(global > 0.0, "all gradients are zero");
    let mut compared = 0;
    for (p, (a, b)) in g.params.iter().zip(got.grads.iter().zip(&want.grads)) {
        match (a, b) {
            (None, None) => continue,
            (Some(a), Some(b)) => {
                assert_eq!(a.shape(), b.shape(), "{}", p.name);
                let (a, b) = (
                    a.as_slice().expect("contiguous"),
                    b.as_slice().expect("contiguous"),
                );
                let scale = max_abs(b);
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    let tol = if scale < 1e-9 * global {
                        1e-4 * global
                    } else {
                        1e-3 * y.abs().max(scale)
                    };
                    assert!(
                        (x - y).abs() <= tol,
                        "d{}[{i}]: cpu {x:e}, interp {y:e} (tolerance {tol:e})",
                        p.name
                    );
                }
                compared += 1;
            }
            _ => panic!("{}: one backend has a gradient, the other none", p.name),
        }
    }
    let trainable = g.params.iter().filter(|p| p.role.trainable()).count();
    assert_eq!(
        compared, trainable,
        "every trainable parameter's gradient is compared"
    );

    // Running statistics: the same update in f32.
    assert_eq!(got.running_updates.len(), want.running_updates.len());
    for ((k, a), (wk, b)) in got.running_updates.iter().zip(&want.running_updates) {
        assert_eq!(k, wk);
        let scale = max_abs(b.as_slice().expect("contiguous")).max(1e-6);
        for (x, y) in a.iter().zip(b.iter()) {
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{}: {x} vs {y}",
                g.params[*k].name
            );
        }
    }
}

/// Evaluation on the CPU backend (batchnorm on the running statistics) against the
/// interpreter's eval mode, with running statistics far from their initial 0 / 1 so that using
/// the batch's statistics instead would show.
#[test]
fn cpu_eval_uses_the_running_statistics_like_the_interpreter() {
    let g = nmnist(4);
    let dir = common::workspace();
    let overrides = RunOverrides {
        batch: Some(2),
        limit_train: Some(2),
        workers: Some(0),
        ..Default::default()
    };
    let run_dir = std::env::temp_dir().join("snnc-cpu-eval-unused");
    let cfg = RunConfig::resolve(&g, run_dir.clone(), &dir, &overrides).expect("config");
    let (train, _) = cfg.loaders(&g).expect("loaders");
    let batch = train
        .epoch(0)
        .next()
        .expect("one batch")
        .expect("readable batch");
    let mut params = ParamStore::init(&g, 7);
    let mut stats = 0;
    for (k, p) in g.params.iter().enumerate() {
        let (scale, offset) = match p.role {
            snnc::ir::ParamRole::RunningMean => (0.3, -0.1),
            snnc::ir::ParamRole::RunningVar => (2.0, 0.2),
            _ => continue,
        };
        stats += 1;
        for (i, v) in params.values[k].iter_mut().enumerate() {
            *v = offset + scale * ((i % 7) as f64 / 7.0);
        }
    }
    assert!(stats >= 2, "NMNISTTCSA should have batchnorm");
    let before = params.values.clone();
    let want = InterpExecutor::new(&g, 0, &run_dir)
        .expect("interp")
        .eval_batch(&params, &batch)
        .expect("interpreter eval");
    let got = CpuExecutor::new(&g, 0, &run_dir)
        .expect("cpu")
        .eval_batch(&params, &batch)
        .expect("cpu eval");
    assert_eq!(params.values, before, "evaluation changed the parameters");
    let (r, w) = (
        got.readout.as_slice().expect("contiguous"),
        want.readout.as_slice().expect("contiguous"),
    );
    assert_eq!(r.len(), w.len());
    for (a, b) in r.iter().zip(w) {
        assert!((a - b).abs() <= 1e-5, "readout: cpu {a} vs interp {b}");
    }
    for ((id, s, _), (_, ws, _)) in got.spike_counts.iter().zip(&want.spike_counts) {
        assert!(
            (s - ws).abs() < 0.5,
            "spikes of {id:?}: cpu {s} vs interp {ws}"
        );
    }
    assert!(want.spike_counts.iter().any(|(_, s, _)| *s > 0.0));
}

#[test]
fn compiled_training_checks_buffer_sizes() {
    let g = nmnist(2);
    let code = CompiledTraining::compile(&g, &LowerOptions::with_batch(1)).expect("compiles");
    let mut scratch = code.scratch();
    let mut params: Vec<Vec<f32>> = g
        .params
        .iter()
        .map(|p| vec![0.0; p.shape.iter().product()])
        .collect();
    let short = vec![0.0f32; 3];
    let e = code
        .forward_train(&[&short], &mut params, &mut scratch)
        .expect_err("a short input is refused");
    assert!(e.message.contains("`x`"), "{e}");
    let e = code
        .forward_train(&[], &mut params, &mut scratch)
        .expect_err("a missing input is refused");
    assert!(e.message.contains("inputs"), "{e}");
    params.pop();
    let (fsig, _) = code.signatures();
    let x = vec![0.0f32; fsig[0].shape.iter().product()];
    assert!(
        code.forward_train(&[&x], &mut params, &mut scratch)
            .is_err()
    );
    assert_eq!("cpu".parse::<Backend>().ok(), Some(Backend::Cpu));
    assert_eq!("gpu".parse::<Backend>().ok(), Some(Backend::Gpu));
    assert_eq!("gpu-tf32".parse::<Backend>().ok(), Some(Backend::GpuTf32));
    assert!("tpu".parse::<Backend>().is_err());
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("snnc-cpu-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn snnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snnc"))
        .current_dir(common::workspace())
        .args(args)
        .output()
        .expect("snnc runs")
}

fn train(run: &Path, flag: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        MODEL,
        "--backend",
        "cpu",
        "--set",
        "T=4",
        "--batch",
        "8",
        "--limit-train",
        "16",
        "--limit-test",
        "8",
        "--seed",
        "3",
        "--workers",
        "1",
        flag,
        run.to_str().unwrap_or_default(),
    ];
    args.extend_from_slice(extra);
    snnc(&args)
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cli_train_eval_and_resume_on_the_cpu_backend() {
    // One epoch: a checkpoint and a log with a train and a test record.
    let one = temp("one");
    ok(&train(&one, "--run-dir", &["--epochs", "1"]));
    assert!(one.join("checkpoint/params.safetensors").exists());
    let log = std::fs::read_to_string(one.join("log.jsonl")).expect("log written");
    assert!(
        log.contains("\"train\"") && log.contains("\"test\""),
        "{log}"
    );
    assert!(log.contains("lif") || log.contains("malif"), "{log}");
    let eval = snnc(&[
        "eval",
        MODEL,
        "--backend",
        "cpu",
        "--set",
        "T=4",
        "--checkpoint",
        one.to_str().unwrap_or_default(),
        "--limit-test",
        "8",
        "--workers",
        "1",
    ]);
    ok(&eval);
    assert!(String::from_utf8_lossy(&eval.stdout).contains("accuracy"));

    // Two epochs straight vs. one epoch, stopped, then resumed: the same parameters.
    let straight = temp("straight");
    ok(&train(&straight, "--run-dir", &["--epochs", "2"]));
    let stopped = temp("stopped");
    ok(&train(
        &stopped,
        "--run-dir",
        &["--epochs", "2", "--stop-after-epochs", "1"],
    ));
    ok(&train(&stopped, "--resume", &["--epochs", "2"]));
    let params = |run: &Path| {
        std::fs::read(run.join("checkpoint/params.safetensors")).expect("checkpoint written")
    };
    assert_eq!(
        params(&straight),
        params(&stopped),
        "resumed parameters differ from the uninterrupted run"
    );
    for d in [one, straight, stopped] {
        let _ = std::fs::remove_dir_all(d);
    }
}
