//! Times the CPU backend's JIT-compiled forward pass of one model (driven by bench/cpu/run.sh)
//! and prints one JSON line: compile time and median/min/max of RUNS forward calls.
//!
//! usage: bench_cpu FILE MODEL BATCH RUNS [--fwd-bwd] [NAME=VALUE ...]   (NAME=VALUE: model overrides)
//!
//! `--fwd-bwd` times `forward_train` + `backward` instead (the peers' "fwd_bwd": BPTT down to the
//! input, loss = the sum of the outputs, so every output's gradient is 1; a rate readout's
//! output is the spike sum / T, so its gradient T makes the loss the sum of all spikes, as in
//! the peers' `s.sum().backward()`).
//!
//! `--step` times one whole training step the way `snnc train --backend cpu` runs it
//! (`CpuExecutor::train_step`: forward_train, MSE loss on the rate against one-hot labels,
//! backward, then Adam from snn_runtime, running statistics written back), like the peer
//! script masnn_gesture_step.py; the first step (JIT compilation) is reported separately.
//! Inputs: `image` inputs ~ U(0, 1) (the peers' `torch.rand`); `events` inputs are event counts
//! of a 4x4 sum-pool over binary events of density 0.05 (the gesture peer's preprocessing).
//! Parameters: the interpreter's seeded init. The forward runs with inference semantics
//! (`LowerOptions::eval`: batchnorm on the running statistics), like the peers' eval forward.

use snnc::backend::cpu::CompiledModel;
use snnc::interp::ParamStore;
use snnc::mlir::LowerOptions;
use snnc::sema::compile_path;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    // As `snnc` does (the step it times is `snnc train`'s).
    snn_runtime::allocator::keep_freed_memory();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        return Err(
            "usage: bench_cpu FILE MODEL BATCH RUNS [--fwd-bwd | --step] [NAME=VALUE ...]".into(),
        );
    }
    let file = PathBuf::from(&args[0]);
    let model = &args[1];
    let batch: usize = args[2].parse().map_err(|e| format!("BATCH: {e}"))?;
    let runs: usize = args[3].parse().map_err(|e| format!("RUNS: {e}"))?;
    let fwd_bwd = args.iter().any(|a| a == "--fwd-bwd");
    let step = args.iter().any(|a| a == "--step");
    let rest: Vec<&String> = args[4..].iter().filter(|a| !a.starts_with("--")).collect();
    let overrides: Vec<(String, String)> = rest
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("expected NAME=VALUE, found `{s}`"))
        })
        .collect::<Result<_, _>>()?;
    let c = compile_path(&file, &overrides);
    if c.diags.has_errors() {
        return Err(c.diags.render_plain(&c.program.sources));
    }
    let g = c
        .graphs
        .iter()
        .find(|g| g.name == *model)
        .ok_or_else(|| format!("no model `{model}` in {}", file.display()))?;
    if fwd_bwd {
        return time_fwd_bwd(g, batch, runs, &rest);
    }
    if step {
        return time_step(g, batch, runs);
    }

    let start = Instant::now();
    // Inference semantics, like the peers' eval-mode forward.
    let opts = LowerOptions {
        eval: true,
        ..LowerOptions::with_batch(batch)
    };
    let compiled = CompiledModel::compile(g, &opts).map_err(|e| e.to_string())?;
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    let m = compiled.manifest().clone();

    let mut rng = Rng(0x5eed);
    let store = ParamStore::init(g, 0);
    let mut p = 0;
    let mut bufs: Vec<Vec<f32>> = Vec::new();
    for b in &m.buffers {
        bufs.push(match b.role.as_str() {
            "input" => input_values(g, &b.name, b.elements, &mut rng),
            "output" => vec![0.0; b.elements],
            _ => {
                p += 1;
                store.values[p - 1].iter().map(|v| *v as f32).collect()
            }
        });
    }
    let initial = bufs.clone();
    let mut times = Vec::with_capacity(runs);
    for k in 0..runs + 1 {
        for (b, (buf, init)) in m.buffers.iter().zip(bufs.iter_mut().zip(&initial)) {
            if b.role == "state" {
                buf.copy_from_slice(init);
            }
        }
        let t0 = Instant::now();
        compiled
            .forward_args(&mut bufs)
            .map_err(|e| e.to_string())?;
        // The first call is a warm-up (page faults of fresh heap memory).
        if k > 0 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let out: Vec<f64> = m
        .buffers
        .iter()
        .zip(&bufs)
        .filter(|(b, _)| b.role == "output")
        .flat_map(|(_, v)| v.iter().map(|x| f64::from(*x)))
        .collect();
    let mean = out.iter().sum::<f64>() / out.len().max(1) as f64;
    let ov: Vec<&str> = rest.iter().map(|s| s.as_str()).collect();
    println!(
        "{{\"bench\": \"cpu_forward\", \"framework\": \"snnc-cranelift\", \"model\": \"{model}\", \"batch\": {batch}, \"overrides\": \"{}\", \"threads\": {}, \"runs\": {runs}, \"compile_ms\": {compile_ms:.1}, \"median_ms\": {:.3}, \"min_ms\": {:.3}, \"max_ms\": {:.3}, \"output_mean\": {mean:.6}}}",
        ov.join(" "),
        // The generated code itself is one thread; the conv/dense kernels it calls use these.
        snn_runtime::kernels::ffi::kernel_threads(),
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    Ok(())
}

/// Times `forward_train` + `backward` (see the module docs) and prints one JSON line.
fn time_fwd_bwd(
    g: &snnc::ir::Graph,
    batch: usize,
    runs: usize,
    ov: &[&String],
) -> Result<(), String> {
    use snnc::backend::cpu::CompiledTraining;
    let start = Instant::now();
    let compiled = CompiledTraining::compile(g, &LowerOptions::with_batch(batch))
        .map_err(|e| e.to_string())?;
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    let (fsig, bsig) = compiled.signatures();
    let mut rng = Rng(0x5eed);
    let inputs: Vec<Vec<f32>> = fsig
        .iter()
        .filter(|a| a.role == snnc::mlir::grad::TrainRole::Input)
        .map(|a| input_values(g, &a.name, a.shape.iter().product(), &mut rng))
        .collect();
    let store = ParamStore::init(g, 0);
    let mut params: Vec<Vec<f32>> = store
        .values
        .iter()
        .map(|v| v.iter().map(|x| *x as f32).collect())
        .collect();
    let steps = g
        .nodes
        .iter()
        .find_map(|n| n.ty.size(snnc::ir::Axis::T))
        .map_or(1.0, |t| t as f32);
    let d_outputs: Vec<Vec<f32>> = bsig
        .iter()
        .filter(|a| a.role == snnc::mlir::grad::TrainRole::DOutput)
        .map(|a| vec![steps; a.shape.iter().product()])
        .collect();
    let input_refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let d_refs: Vec<&[f32]> = d_outputs.iter().map(Vec::as_slice).collect();
    let mut scratch = compiled.scratch();
    let mut times = Vec::with_capacity(runs);
    let mut grad_sum = 0.0f64;
    let mut out_mean = 0.0f64;
    for k in 0..runs + 1 {
        let t0 = Instant::now();
        let out = compiled
            .forward_train(&input_refs, &mut params, &mut scratch)
            .map_err(|e| e.to_string())?;
        let grads = compiled
            .backward(&input_refs, &params, &scratch, &d_refs)
            .map_err(|e| e.to_string())?;
        if k > 0 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        grad_sum = grads.inputs.iter().flatten().map(|x| f64::from(*x)).sum();
        let flat: Vec<f32> = out.into_iter().flatten().collect();
        out_mean = flat.iter().map(|x| f64::from(*x)).sum::<f64>() / flat.len().max(1) as f64;
    }
    times.sort_by(f64::total_cmp);
    let ov: Vec<&str> = ov.iter().map(|s| s.as_str()).collect();
    // Firing rate of every spike layer the forward saved (what the spike kernels see).
    let rates: Vec<String> = g
        .nodes
        .iter()
        .filter(|n| n.ty.elem == snnc::ir::Elem::Spike)
        .filter_map(|n| {
            let v = scratch.get(&n.name)?;
            let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / v.len().max(1) as f64;
            Some(format!("\"{}\": {mean:.4}", n.name))
        })
        .collect();
    println!(
        "{{\"bench\": \"cpu_fwd_bwd\", \"framework\": \"snnc-cranelift\", \"model\": \"{}\", \"batch\": {batch}, \"overrides\": \"{}\", \"threads\": {}, \"runs\": {runs}, \"compile_ms\": {compile_ms:.1}, \"median_ms\": {:.3}, \"min_ms\": {:.3}, \"max_ms\": {:.3}, \"output_mean\": {out_mean:.6}, \"input_grad_sum\": {grad_sum:.4}, \"saved_bytes\": {}, \"firing_rates\": {{{}}}}}",
        g.name,
        ov.join(" "),
        snn_runtime::kernels::ffi::kernel_threads(),
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        scratch.bytes(),
        rates.join(", ")
    );
    Ok(())
}

/// Times `CpuExecutor::train_step` + Adam (see the module docs) and prints one JSON line.
fn time_step(g: &snnc::ir::Graph, batch: usize, runs: usize) -> Result<(), String> {
    use snn_runtime::train::{Optimizer, OptimizerConfig};
    use snnc::train::{CpuExecutor, Executor, RunError};
    let (name, shape) = g
        .inputs()
        .next()
        .map(|(_, n)| (n.name.clone(), n.ty.clone()))
        .ok_or("the model has no input")?;
    let dims: Vec<usize> = shape
        .dims
        .iter()
        .map(|(a, d)| if *a == snnc::ir::Axis::B { batch } else { *d })
        .collect();
    let [t, b, c, h, w] = dims[..] else {
        return Err(format!(
            "--step wants a [T, B, C, H, W] input, `{name}` is {dims:?}"
        ));
    };
    let mut rng = Rng(0x5eed);
    let values = input_values(g, &name, t * b * c * h * w, &mut rng);
    let frames =
        ndarray::Array5::from_shape_vec((t, b, c, h, w), values).map_err(|e| e.to_string())?;
    let classes = g
        .outputs
        .first()
        .and_then(|o| g.ty(*o).dims.last().map(|d| d.1))
        .unwrap_or(1)
        .max(1);
    let batch_data = snn_runtime::data::Batch {
        frames,
        labels: (0..b as u32).map(|i| i % classes as u32).collect(),
        indices: (0..b).collect(),
    };
    let targets: Vec<usize> = batch_data.labels.iter().map(|l| *l as usize).collect();
    let mut params = ParamStore::init(g, 0);
    let shapes: Vec<Vec<usize>> = g.params.iter().map(|p| p.shape.clone()).collect();
    let mut adam =
        Optimizer::new(OptimizerConfig::adam(1e-4), &shapes).map_err(|e| e.to_string())?;
    let run_dir = std::env::temp_dir().join("snnc-bench-cpu-step-unused");
    let mut cpu = CpuExecutor::new(g, 0, &run_dir).map_err(|e| e.to_string())?;
    let mut loss = |r: &ndarray::ArrayD<f64>| {
        snnc::interp::loss::mse_one_hot(r, &targets).map_err(|e| RunError(e.to_string()))
    };
    let mut times = Vec::with_capacity(runs + 1);
    let mut spikes = 0.0;
    for i in 0..=runs {
        let started = Instant::now();
        let step = cpu
            .train_step(&params, &batch_data, i as u64, &mut loss)
            .map_err(|e| e.to_string())?;
        adam.step(&mut params.values, &step.grads, 1e-4)
            .map_err(|e| e.to_string())?;
        for (k, v) in step.running_updates {
            params.values[k] = v;
        }
        times.push(started.elapsed().as_secs_f64() * 1e3);
        spikes = step.spike_counts.iter().map(|s| s.1).sum::<f64>() / b as f64;
    }
    let first = times.remove(0);
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"bench\": \"cpu_train_step\", \"framework\": \"snnc-cranelift\", \"model\": \"{}\", \"T\": {t}, \"batch\": {b}, \"threads\": {}, \"runs\": {runs}, \"median_ms\": {:.1}, \"min_ms\": {:.1}, \"max_ms\": {:.1}, \"first_step_ms_incl_compile\": {first:.1}, \"compile_s\": {:.2}, \"spikes_per_sample\": {spikes:.0}}}",
        g.name,
        snn_runtime::kernels::ffi::kernel_threads(),
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        cpu.compile_seconds
    );
    Ok(())
}

/// `n` values for the input named `name` (see the module docs).
fn input_values(g: &snnc::ir::Graph, name: &str, n: usize, rng: &mut Rng) -> Vec<f32> {
    if is_events(g, name) {
        (0..n)
            .map(|_| (0..16).filter(|_| rng.unit() < 0.05).count() as f32)
            .collect()
    } else {
        (0..n).map(|_| rng.unit()).collect()
    }
}

/// Whether the input named `name` is an `events(...)` input (counts rather than intensities).
fn is_events(g: &snnc::ir::Graph, name: &str) -> bool {
    use snnc::ir::graph::{InputSource, Op};
    g.nodes.iter().any(|n| {
        matches!(&n.op, Op::Input { name: n2, source: InputSource::Events { .. } } if n2 == name)
    })
}
