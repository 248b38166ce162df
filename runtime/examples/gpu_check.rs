//! Replays a GPU check bundle (see snnc's `examples/gpu_prepare.rs`) on the first GPU:
//! differential checks of the forward and of training steps (forward_train + backward against
//! the bundled references, the optimiser step against the host's Adam), and timings of both.
//!
//! `gpu_check BUNDLE_DIR` — exit 0 all pass, 1 a failure, 2 usage, 3 no GPU (skipped).

use ndarray::{ArrayD, IxDyn};
use snn_runtime::gpu::manifest::ArgSpec;
use snn_runtime::gpu::manifest::{
    ArgSource, CheckCase, LaunchManifest, SPIKE_COUNT_TOLERANCE, uniform_f32,
};
use snn_runtime::gpu::{GpuDevice, GpuError, GpuModel, RunStats, TrainingFunctions};
use snn_runtime::train::{Optimizer, OptimizerConfig};
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    // As `snnc` does: the timed steps allocate the same host buffers every time.
    snn_runtime::allocator::keep_freed_memory();
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: gpu_check BUNDLE_DIR");
        return ExitCode::from(2);
    };
    let dev = match GpuDevice::open(0) {
        Ok(d) => d,
        Err(e @ (GpuError::NoDriver | GpuError::NoDevice)) => {
            println!("SKIP: {e}");
            return ExitCode::from(3);
        }
        Err(e) => {
            println!("FAIL: {e}");
            return ExitCode::FAILURE;
        }
    };
    let info = dev.info();
    println!(
        "device: {} ({}, {:.1} GiB, driver API {})",
        info.name,
        info.chip(),
        info.total_bytes as f64 / (1u64 << 30) as f64,
        info.driver_version
    );
    let dir = Path::new(&dir);
    let cases: Vec<CheckCase> = match std::fs::read_to_string(dir.join("cases.json"))
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            println!("FAIL: {}: {e}", dir.join("cases.json").display());
            return ExitCode::FAILURE;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    match copies_round_trip(&dev) {
        Ok(line) => {
            passed += 1;
            println!("PASS copies: {line}");
        }
        Err(e) => {
            failed += 1;
            println!("FAIL copies: {e}");
        }
    }
    for case in &cases {
        match run_case(&dev, dir, case) {
            Ok(line) => {
                passed += 1;
                println!("PASS {}: {line}", case.name);
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {}: {e}", case.name);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Uploads and downloads of every size class (direct, one staged chunk, many alternating
/// halves) come back bit for bit, and how fast the large ones go.
fn copies_round_trip(dev: &GpuDevice) -> Result<String, String> {
    let mut report = Vec::new();
    for n in [1000usize, 300_000, 5_000_011] {
        let host: Vec<f32> = (0..n).map(|i| (i as f32).sqrt() - 7.0).collect();
        let mut buf = dev.alloc(n).map_err(|e| e.to_string())?;
        let mut back = vec![0f32; n];
        // Warm: the first staged copy pins the block.
        buf.upload(&host).map_err(|e| e.to_string())?;
        let t = std::time::Instant::now();
        buf.upload(&host).map_err(|e| e.to_string())?;
        let up = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        buf.download_into(&mut back).map_err(|e| e.to_string())?;
        let down = t.elapsed().as_secs_f64();
        if let Some(i) = (0..n).find(|&i| back[i].to_bits() != host[i].to_bits()) {
            return Err(format!(
                "{n} values: {} came back at {i} instead of {}",
                back[i], host[i]
            ));
        }
        let gbs = |s: f64| n as f64 * 4.0 / s / 1e9;
        report.push(format!(
            "{n} values up {:.1} GB/s, down {:.1} GB/s",
            gbs(up),
            gbs(down)
        ));
    }
    Ok(format!("bit-exact round trips: {}", report.join("; ")))
}

fn read_f32(path: &Path) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !bytes.len().is_multiple_of(4) {
        return Err(format!("{}: not a whole number of f32", path.display()));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Event frames with about 10 % of pixels active, deterministic.
fn random_spikes(n: usize, seed: u64) -> Vec<f32> {
    uniform_f32(n, seed, 0.0, 1.0)
        .into_iter()
        .map(|u| if u < 0.1 { 1.0 } else { 0.0 })
        .collect()
}

fn read_manifest(dir: &Path, rel: &str) -> Result<LaunchManifest, String> {
    let text = std::fs::read_to_string(dir.join(rel)).map_err(|e| format!("{rel}: {e}"))?;
    LaunchManifest::from_json(&text)
}

/// Host values of `args` from the case's files or generators: random event frames for inputs without one,
/// NaN (poison: the function must write it) for the rest.
fn host_args(
    dir: &Path,
    args: &[ArgSpec],
    files: &[Option<ArgSource>],
) -> Result<Vec<Vec<f32>>, String> {
    if files.len() != args.len() {
        return Err("case and manifest disagree on the arguments".into());
    }
    let mut host = Vec::new();
    for (i, (a, file)) in args.iter().zip(files).enumerate() {
        let n: usize = a.shape.iter().product();
        let data = match file {
            Some(ArgSource::File(f)) => read_f32(&dir.join(f))?,
            Some(ArgSource::Uniform { seed, lo, hi }) => uniform_f32(n, *seed, *lo, *hi),
            None if a.role == "input" => random_spikes(n, 11 + i as u64),
            None => vec![f32::NAN; n],
        };
        if data.len() != n {
            return Err(format!(
                "{}: {} values, shape {:?}",
                a.name,
                data.len(),
                a.shape
            ));
        }
        host.push(data);
    }
    Ok(host)
}

fn run_case(dev: &GpuDevice, dir: &Path, case: &CheckCase) -> Result<String, String> {
    let ptx =
        std::fs::read_to_string(dir.join(&case.ptx)).map_err(|e| format!("{}: {e}", case.ptx))?;
    let manifest = read_manifest(dir, &case.manifest)?;
    if matches!(case.kind.as_str(), "train" | "train_time") {
        let backward = case
            .backward_manifest
            .as_deref()
            .ok_or("a training case without a backward manifest")?;
        let backward = read_manifest(dir, backward)?;
        let optimizer = case
            .optimizer_manifest
            .as_deref()
            .map(|m| read_manifest(dir, m))
            .transpose()?;
        let pair = TrainingFunctions::load(dev, &ptx, manifest, Some(backward), optimizer)
            .map_err(|e| e.to_string())?;
        // Checks start every temporary as NaN: a read before the first write shows.
        pair.module().set_poison_temporaries(case.kind == "train");
        return run_training_case(dev, dir, case, pair);
    }
    let model = GpuModel::load(dev, &ptx, manifest).map_err(|e| e.to_string())?;
    model.module().set_poison_temporaries(case.kind == "check");
    let m = model.manifest();
    let mut host = host_args(dir, &m.args, &case.args)?;
    match case.kind.as_str() {
        "check" => {
            let stats = model.forward(&mut host).map_err(|e| e.to_string())?;
            let mut worst = 0f64;
            for ((a, got), want) in m.args.iter().zip(&host).zip(&case.expected) {
                let Some(want) = want else { continue };
                let want = read_f32(&dir.join(want))?;
                worst = worst.max(compare(&a.name, got, &want, case.tolerance)?);
            }
            Ok(format!(
                "vs {}: batch {}, {} launches, {:.3} ms device, max rel err {worst:.2e} (tol {:.0e})",
                case.reference, m.batch, stats.launches, stats.device_ms, case.tolerance
            ))
        }
        "time" => {
            let mut bufs = model.alloc_args().map_err(|e| e.to_string())?;
            for (b, h) in bufs.iter_mut().zip(&host) {
                b.upload(h).map_err(|e| e.to_string())?;
            }
            let (free0, total) = dev.mem_info().map_err(|e| e.to_string())?;
            // The first replay pays for lazy loading of the module's kernels.
            let first = model
                .run(&bufs.iter().collect::<Vec<_>>())
                .map_err(|e| e.to_string())?;
            let (mut dev_ms, mut wall_ms, mut peak) = (Vec::new(), Vec::new(), first.peak_bytes);
            for _ in 0..case.iters.max(1) {
                let s = model
                    .run(&bufs.iter().collect::<Vec<_>>())
                    .map_err(|e| e.to_string())?;
                dev_ms.push(s.device_ms);
                wall_ms.push(s.wall_ms);
                peak = peak.max(s.peak_bytes);
            }
            let (free1, _) = dev.mem_info().map_err(|e| e.to_string())?;
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let min = dev_ms.iter().copied().fold(f64::INFINITY, f64::min);
            let out = host_output_check(&model, &bufs)?;
            Ok(format!(
                "forward batch {}: {:.2} ms mean, {:.2} ms min device; {:.2} ms mean wall; {} launches x {} iters (first {:.2} ms); peak {:.1} MiB in snnc buffers, device used {:.0}/{:.0} MiB (before {:.0}); {out}",
                m.batch,
                mean(&dev_ms),
                min,
                mean(&wall_ms),
                first.launches,
                dev_ms.len(),
                first.wall_ms,
                peak as f64 / 1048576.0,
                (total - free1) as f64 / 1048576.0,
                total as f64 / 1048576.0,
                (total - free0) as f64 / 1048576.0
            ))
        }
        other => Err(format!("unknown case kind `{other}`")),
    }
}

/// The case's host values of every forward and backward argument (see [`host_args`]).
type TrainingHost = (Vec<Vec<f32>>, Vec<Vec<f32>>);

fn training_host(
    dir: &Path,
    case: &CheckCase,
    pair: &TrainingFunctions,
) -> Result<TrainingHost, String> {
    Ok((
        host_args(dir, pair.forward_args(), &case.args)?,
        host_args(dir, pair.backward_args(), &case.backward_args)?,
    ))
}

/// Uploads the forward arguments of `roles` and the backward's output gradients.
fn upload(
    pair: &mut TrainingFunctions,
    (fwd, bwd): &TrainingHost,
    roles: &[&str],
) -> Result<(), String> {
    let forward: Vec<String> = pair.forward_args().iter().map(|a| a.role.clone()).collect();
    for (k, (h, role)) in fwd.iter().zip(&forward).enumerate() {
        if roles.contains(&role.as_str()) {
            let b = pair.forward_buffer_mut(k).ok_or("forward buffer")?;
            b.upload(h).map_err(|e| e.to_string())?;
        }
    }
    let backward: Vec<String> = pair
        .backward_args()
        .iter()
        .map(|a| a.role.clone())
        .collect();
    for (k, (h, role)) in bwd.iter().zip(&backward).enumerate() {
        if role == "d_output" {
            let b = pair.backward_buffer_mut(k).ok_or("backward buffer")?;
            b.upload(h).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// What stays on the device between steps: parameters and running statistics.
const RESIDENT: &[&str] = &["param", "state"];
/// What a step sends: the batch (the output gradients go with it).
const BATCH: &[&str] = &["input"];

/// The backward's results: (index, name, values) of every parameter and input gradient.
fn download_gradients(pair: &TrainingFunctions) -> Result<Vec<(usize, String, Vec<f32>)>, String> {
    let mut out = Vec::new();
    for (k, a) in pair.backward_args().iter().enumerate() {
        if matches!(a.role.as_str(), "d_param" | "d_input") {
            let b = pair.backward_buffer(k).ok_or("backward buffer")?;
            out.push((k, a.name.clone(), b.download().map_err(|e| e.to_string())?));
        }
    }
    Ok(out)
}

/// The model outputs (the driver computes the loss from them on the host).
fn download_outputs(pair: &TrainingFunctions) -> Result<usize, String> {
    let mut n = 0;
    for (k, a) in pair.forward_args().iter().enumerate() {
        if a.role == "output" {
            let v = pair
                .forward_buffer(k)
                .ok_or("forward buffer")?
                .download()
                .map_err(|e| e.to_string())?;
            if v.iter().any(|x| !x.is_finite()) {
                return Err(format!("output `{}` is not finite", a.name));
            }
            n += v.len();
        }
    }
    Ok(n)
}

/// One training step as `snnc train --device gpu` runs it with Adam on the device, timed.
struct TimedStep {
    forward: RunStats,
    backward: RunStats,
    optimizer: RunStats,
    wall_ms: f64,
    /// Wall ms of the batch upload, forward, backward (with zeroing the gradients),
    /// optimiser step (with its scalars' upload) and the outputs' download.
    phases: [f64; 5],
}

/// Uploads the batch and output gradients, runs forward_train, backward and the optimiser
/// step with `adam`'s next scalars, and downloads the outputs. Parameters, gradients and
/// moments stay on the device.
fn training_step(
    pair: &mut TrainingFunctions,
    host: &TrainingHost,
    adam: &mut Optimizer,
) -> Result<TimedStep, String> {
    let start = std::time::Instant::now();
    let mut t = start;
    let mut lap = || {
        let ms = t.elapsed().as_secs_f64() * 1e3;
        t = std::time::Instant::now();
        ms
    };
    upload(pair, host, BATCH)?;
    let upload_ms = lap();
    let forward = pair.run_forward().map_err(|e| e.to_string())?;
    let forward_ms = lap();
    let backward = pair.run_backward().map_err(|e| e.to_string())?;
    let backward_ms = lap();
    let optimizer = adam_step(pair, adam)?;
    let optimizer_ms = lap();
    download_outputs(pair)?;
    let download_ms = lap();
    Ok(TimedStep {
        forward,
        backward,
        optimizer,
        wall_ms: start.elapsed().as_secs_f64() * 1e3,
        phases: [
            upload_ms,
            forward_ms,
            backward_ms,
            optimizer_ms,
            download_ms,
        ],
    })
}

/// Puts the parameters back to the case's and Adam's moments to zero.
fn reset_state(pair: &mut TrainingFunctions, host: &TrainingHost) -> Result<(), String> {
    upload(pair, host, RESIDENT)?;
    let moments: Vec<usize> = (0..pair.optimizer_args().len())
        .filter(|&k| pair.optimizer_args()[k].role == "optimizer_state")
        .collect();
    for k in moments {
        let b = pair.optimizer_buffer_mut(k).ok_or("optimizer buffer")?;
        b.zero().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One step with Adam from the case's state, launch by launch or as graphs: every gradient
/// and updated parameter, in argument order.
fn step_values(
    pair: &mut TrainingFunctions,
    host: &TrainingHost,
    graphs: bool,
) -> Result<Vec<Vec<f32>>, String> {
    reset_state(pair, host)?;
    pair.module().set_graphs(graphs);
    let mut adam = adam_for(pair)?;
    training_step(pair, host, &mut adam)?;
    let mut values: Vec<Vec<f32>> = download_gradients(pair)?
        .into_iter()
        .map(|(_, _, v)| v)
        .collect();
    for p in optimizer_values(pair, "param")? {
        values.push(p.iter().map(|v| *v as f32).collect());
    }
    Ok(values)
}

/// The step replayed as CUDA graphs computes what it does launch by launch: gradients and
/// updated parameters to f32 rounding (cuBLAS may pick other kernels under capture), checked
/// from the same state. Leaves the state reset and graphs on (unless capturing failed).
fn graphs_match_launches(
    pair: &mut TrainingFunctions,
    host: &TrainingHost,
) -> Result<String, String> {
    let initial = pair.module().graphs();
    let direct = step_values(pair, host, false)?;
    let graph = step_values(pair, host, true)?;
    reset_state(pair, host)?;
    // Timed as the environment asks (`SNNC_GPU_GRAPHS=0`: launch by launch).
    pair.module()
        .set_graphs(initial && pair.module().graph_error().is_none());
    if let Some(e) = pair.module().graph_error() {
        return Ok(format!("launch by launch: capturing a graph failed ({e})"));
    }
    let (mut worst, mut identical) = (0f64, true);
    for (d, g) in direct.iter().zip(&graph) {
        let scale = d.iter().fold(0f64, |m, x| m.max(f64::from(x.abs())));
        for (a, b) in d.iter().zip(g) {
            identical &= a.to_bits() == b.to_bits();
            let err = f64::from((a - b).abs()) / scale.max(1e-30);
            worst = worst.max(if err.is_nan() { f64::INFINITY } else { err });
        }
    }
    if worst > 1e-5 {
        return Err(format!(
            "the step as CUDA graphs differs from launch by launch: max error {worst:e} of a tensor's largest value"
        ));
    }
    Ok(format!(
        "{} (graphs: {}, checked against launch by launch)",
        if initial {
            "replayed as CUDA graphs"
        } else {
            "launch by launch (SNNC_GPU_GRAPHS=0)"
        },
        if identical {
            "bit-identical gradients and parameters".to_string()
        } else {
            format!("gradients and parameters within {worst:.1e}")
        }
    ))
}

/// `adam`'s next step on the device, counted.
fn adam_step(pair: &mut TrainingFunctions, adam: &mut Optimizer) -> Result<RunStats, String> {
    let all = vec![true; pair.optimizer_args().len().saturating_sub(1) / 4];
    let scalars = adam
        .device_scalars(ADAM_LR, &all)
        .map_err(|e| e.to_string())?
        .ok_or("Adam's update runs on the device")?;
    let stats = pair.run_optimizer(&scalars).map_err(|e| e.to_string())?;
    adam.record_device_step(&all).map_err(|e| e.to_string())?;
    Ok(stats)
}

/// The learning rate of the steps here (the gesture network's, docs/gpu.md).
const ADAM_LR: f64 = 1e-3;

/// A fresh Adam over the optimiser step's parameters.
fn adam_for(pair: &TrainingFunctions) -> Result<Optimizer, String> {
    let shapes: Vec<Vec<usize>> = pair
        .optimizer_args()
        .iter()
        .filter(|a| a.role == "param")
        .map(|a| a.shape.clone())
        .collect();
    if shapes.is_empty() {
        return Err("the case has no optimiser step".into());
    }
    Optimizer::new(OptimizerConfig::adam(ADAM_LR), &shapes).map_err(|e| e.to_string())
}

/// Downloads the optimiser arguments of `role` as f64 arrays.
fn optimizer_values(pair: &TrainingFunctions, role: &str) -> Result<Vec<ArrayD<f64>>, String> {
    pair.optimizer_args()
        .iter()
        .enumerate()
        .filter(|(_, a)| a.role == role)
        .map(|(k, a)| {
            let v = pair
                .optimizer_buffer(k)
                .ok_or("optimizer buffer")?
                .download()
                .map_err(|e| e.to_string())?;
            ArrayD::from_shape_vec(IxDyn(&a.shape), v.into_iter().map(f64::from).collect())
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// Two optimiser steps on the device against the host's Adam (f64) from the same parameters
/// and gradients: parameters and both moments after each. Returns the worst relative error.
fn check_optimizer(pair: &mut TrainingFunctions, host: &TrainingHost) -> Result<f64, String> {
    let mut adam = adam_for(pair)?;
    let mut params = optimizer_values(pair, "param")?;
    let all = vec![true; params.len()];
    let mut worst = 0f64;
    for step in 0..2 {
        if step > 0 {
            upload(pair, host, BATCH)?;
            pair.run_forward().map_err(|e| e.to_string())?;
            pair.run_backward().map_err(|e| e.to_string())?;
        }
        let grads: Vec<Option<ArrayD<f64>>> = optimizer_values(pair, "d_param")?
            .into_iter()
            .map(Some)
            .collect();
        let scalars = adam
            .device_scalars(ADAM_LR, &all)
            .map_err(|e| e.to_string())?
            .ok_or("Adam runs on the device")?;
        pair.run_optimizer(&scalars).map_err(|e| e.to_string())?;
        adam.step(&mut params, &grads, ADAM_LR)
            .map_err(|e| e.to_string())?;
        let got_params = optimizer_values(pair, "param")?;
        let moments = optimizer_values(pair, "optimizer_state")?;
        let (m, v) = moments.split_at(params.len());
        for (k, p) in params.iter().enumerate() {
            let (hm, hv) = adam.moments(k).ok_or("host moments")?;
            for (what, got, want) in [
                ("parameter", &got_params[k], p),
                ("exp_avg", &m[k], hm),
                ("exp_avg_sq", &v[k], hv),
            ] {
                // Relative to the value, or to a hundredth of the tensor's largest where the
                // update cancels the value to near zero (f32 keeps the ulps of the operands,
                // not of the result) or the tensor is the noise of a gradient that is zero by
                // construction.
                let scale = want.iter().fold(0f64, |a, x| a.max(x.abs()));
                for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                    let err = (g - w).abs() / w.abs().max(1e-2 * scale).max(1e-30);
                    let err = if err.is_nan() { f64::INFINITY } else { err };
                    if err > 1e-5 {
                        return Err(format!(
                            "optimiser step {}: {what} {k} at {i}: device {g}, host {w} (rel err {err:e})",
                            step + 1
                        ));
                    }
                    worst = worst.max(err);
                }
            }
        }
        // The host's parameters continue from the device's, so that each step compares one
        // update, not f32 drift.
        params = got_params;
    }
    Ok(worst)
}

/// `train`: one forward_train + backward, outputs, running statistics and gradients checked,
/// then two optimiser steps against the host's Adam; `train_time`: the step timed over
/// `iters` runs after a warm-up, as the executor runs it with Adam on the device (parameters
/// uploaded once; each step uploads the batch and output gradients and downloads the
/// outputs), gradients finite.
fn run_training_case(
    dev: &GpuDevice,
    dir: &Path,
    case: &CheckCase,
    mut pair: TrainingFunctions,
) -> Result<String, String> {
    let host = training_host(dir, case, &pair)?;
    upload(&mut pair, &host, RESIDENT)?;
    if case.kind == "train" {
        check_training(dir, case, &mut pair, &host)
    } else {
        time_training(dev, case, &mut pair, &host)
    }
}

fn check_training(
    dir: &Path,
    case: &CheckCase,
    pair: &mut TrainingFunctions,
    host: &TrainingHost,
) -> Result<String, String> {
    let grad_tol = case.grad_tolerance.unwrap_or(case.tolerance);
    upload(pair, host, BATCH)?;
    let f = pair.run_forward().map_err(|e| e.to_string())?;
    let b = pair.run_backward().map_err(|e| e.to_string())?;
    let grads = download_gradients(pair)?;
    let mut worst = (0f64, 0f64);
    let (mut checked, mut failures) = (0, Vec::new());
    for (k, (a, want)) in pair.forward_args().iter().zip(&case.expected).enumerate() {
        let Some(want) = want else { continue };
        let got = pair
            .forward_buffer(k)
            .ok_or("buffer")?
            .download()
            .map_err(|e| e.to_string())?;
        let want = read_f32(&dir.join(want))?;
        match compare(&a.name, &got, &want, case.tolerance) {
            Ok(w) => worst.0 = worst.0.max(w),
            Err(e) => failures.push(e),
        }
        checked += 1;
    }
    let mut wanted = Vec::new();
    for (k, name, got) in &grads {
        if let Some(want) = case.backward_expected.get(*k).and_then(Option::as_ref) {
            let stride = case.backward_stride.get(*k).copied().unwrap_or(1).max(1);
            let got: Vec<f32> = got.iter().step_by(stride).copied().collect();
            wanted.push((name, got, read_f32(&dir.join(want))?));
        } else if got.iter().any(|x| !x.is_finite()) {
            failures.push(format!("gradient `{name}` is not finite"));
        }
    }
    // A gradient that is zero by construction (a conv bias feeding batchnorm, whose dx sums to
    // zero per channel) is pure f32 cancellation noise: it is only checked to be small against
    // the model's largest gradient, as the CPU backend's gradient tests do.
    let largest = wanted
        .iter()
        .flat_map(|(_, _, w)| w.iter())
        .fold(0f64, |m, x| m.max(f64::from(x.abs())));
    for (name, got, want) in &wanted {
        let scale = want.iter().fold(0f64, |m, x| m.max(f64::from(x.abs())));
        let result = if scale < 1e-9 * largest {
            compare_absolute(name, got, 1e-3 * largest)
        } else {
            compare(name, got, want, grad_tol)
        };
        match result {
            Ok(w) => worst.1 = worst.1.max(w),
            Err(e) => failures.push(e),
        }
        checked += 1;
    }
    // The executor counts spikes on the device (`GpuModule::sum_abs`): each saved value's sum
    // must match the host's, exactly for 0/1 values.
    let (mut sums, mut exact) = (0, 0);
    // Layers compared with the reference's spike counts, the largest relative difference, and
    // the spikes that differ in all.
    let mut spikes = (0usize, 0f64, 0f64);
    for (k, a) in pair.forward_args().iter().enumerate() {
        if a.role != "saved" {
            continue;
        }
        let buf = pair.forward_buffer(k).ok_or("buffer")?;
        let device = pair.module().sum_abs(buf).map_err(|e| e.to_string())?;
        let values = buf.download().map_err(|e| e.to_string())?;
        let host: f64 = values.iter().map(|v| f64::from(v.abs())).sum();
        let binary = values.iter().all(|v| *v == 0.0 || *v == 1.0);
        let ok = if binary {
            device == host
        } else {
            (device - host).abs() <= 1e-5 * host.max(1.0)
        };
        if !ok {
            failures.push(format!(
                "Σ|{}| on the device {device} vs {host} on the host",
                a.name
            ));
        }
        sums += 1;
        exact += usize::from(binary);
        if let Some(want) = case.expected_spikes.get(k).copied().flatten() {
            let diff = (device - want).abs();
            spikes.0 += 1;
            spikes.1 = spikes.1.max(diff / want.max(1.0));
            spikes.2 += diff;
            if diff > SPIKE_COUNT_TOLERANCE * want.max(1.0) {
                failures.push(format!(
                    "`{}` fired {device} spikes, the reference {want}",
                    a.name
                ));
            }
        }
    }
    let spike_report = if spikes.0 == 0 {
        String::new()
    } else {
        format!(
            "; spike counts of {} layers within {:.2}% of the reference ({} spikes differ in all, f32 rounding at thresholds; tolerance {}%)",
            spikes.0,
            100.0 * spikes.1,
            spikes.2,
            100.0 * SPIKE_COUNT_TOLERANCE
        )
    };
    let optimizer = if pair.optimizer_args().is_empty() {
        "no optimiser step".to_string()
    } else {
        match check_optimizer(pair, host) {
            Ok(w) => format!("2 Adam steps on the device match the host's (max rel err {w:.1e})"),
            Err(e) => {
                failures.push(e);
                String::new()
            }
        }
    };
    if !failures.is_empty() {
        // Every tensor that is off, not only the first: one GPU run has to tell all.
        return Err(format!(
            "{} of {checked} tensors off: {}",
            failures.len(),
            failures.join("; ")
        ));
    }
    Ok(format!(
        "vs {}: forward_train {} + backward {} launches, {:.3} + {:.3} ms device; {checked} tensors checked; max rel err {:.2e} values (tol {:.0e}), {:.2e} gradients (tol {:.0e}); {sums} saved sums on the device match ({exact} spike counts exactly){spike_report}; {optimizer}",
        case.reference,
        f.launches,
        b.launches,
        f.device_ms,
        b.device_ms,
        worst.0,
        case.tolerance,
        worst.1,
        grad_tol
    ))
}

fn time_training(
    dev: &GpuDevice,
    case: &CheckCase,
    pair: &mut TrainingFunctions,
    host: &TrainingHost,
) -> Result<String, String> {
    let (free0, total) = dev.mem_info().map_err(|e| e.to_string())?;
    let graphs = graphs_match_launches(pair, host)?;
    let mut adam = adam_for(pair)?;
    // The first step pays for lazy loading of the kernels (and capturing the graphs); the
    // rest are timed.
    let steps = case.iters.max(1) + 1;
    let mut runs = Vec::new();
    for _ in 0..steps {
        runs.push(training_step(pair, host, &mut adam)?);
    }
    let (free1, _) = dev.mem_info().map_err(|e| e.to_string())?;
    let grads = download_gradients(pair)?;
    if let Some((_, name, _)) = grads
        .iter()
        .find(|(_, _, g)| g.iter().any(|x| !x.is_finite()))
    {
        return Err(format!("gradient `{name}` is not finite"));
    }
    let first_wall = runs[0].wall_ms;
    let timed = &runs[1..];
    let mean = |f: &dyn Fn(&TimedStep) -> f64| {
        timed.iter().map(f).sum::<f64>() / timed.len().max(1) as f64
    };
    print_profile(&case.name, pair, &mut adam)?;
    let phase = |i: usize| mean(&|s: &TimedStep| s.phases[i]);
    println!(
        "wall phases {}: batch upload {:.2} ms, forward_train {:.2} ms, backward {:.2} ms (with zeroing the gradients), Adam {:.2} ms, output download {:.2} ms",
        case.name,
        phase(0),
        phase(1),
        phase(2),
        phase(3),
        phase(4)
    );
    // The same step with the matrix products on the tensor cores (TF32), as PyTorch runs
    // convolutions by default.
    pair.module().set_tf32(true);
    let mut tf32 = Vec::new();
    for _ in 0..steps {
        tf32.push(training_step(pair, host, &mut adam)?);
    }
    pair.module().set_tf32(false);
    let tf = &tf32[1..];
    let tmean = |f: &dyn Fn(&TimedStep) -> f64| tf.iter().map(f).sum::<f64>() / tf.len() as f64;
    println!(
        "tf32 {}: forward_train {:.2} ms + backward {:.2} ms + Adam {:.2} ms device; step {:.2} ms wall, {:.2} ms without the batch upload (mean of {})",
        case.name,
        tmean(&|s| s.forward.device_ms),
        tmean(&|s| s.backward.device_ms),
        tmean(&|s| s.optimizer.device_ms),
        tmean(&|s| s.wall_ms),
        tmean(&|s| s.wall_ms - s.phases[0]),
        tf.len()
    );
    let peak = timed
        .iter()
        .map(|s| s.forward.peak_bytes.max(s.backward.peak_bytes))
        .max()
        .unwrap_or(0);
    let args_bytes: usize = pair
        .forward_args()
        .iter()
        .chain(
            pair.backward_args()
                .iter()
                .filter(|a| a.role.starts_with("d_")),
        )
        .chain(
            pair.optimizer_args()
                .iter()
                .filter(|a| a.role == "optimizer_state"),
        )
        .map(|a| a.shape.iter().product::<usize>() * 4)
        .sum();
    Ok(format!(
        "training step: forward_train {:.2} ms + backward {:.2} ms + Adam {:.2} ms device (mean of {}); step {:.2} ms wall, {:.2} ms without the batch upload (parameters and Adam's state stay on the device); {graphs}; {} + {} + {} launches (first step {first_wall:.2} ms wall); {} gradients finite; peak {:.1} MiB in one function's buffers (all arguments {:.1} MiB), device used {:.0}/{:.0} MiB (before {:.0})",
        mean(&|s| s.forward.device_ms),
        mean(&|s| s.backward.device_ms),
        mean(&|s| s.optimizer.device_ms),
        timed.len(),
        mean(&|s| s.wall_ms),
        mean(&|s| s.wall_ms - s.phases[0]),
        timed[0].forward.launches,
        timed[0].backward.launches,
        timed[0].optimizer.launches,
        grads.len(),
        peak as f64 / 1048576.0,
        args_bytes as f64 / 1048576.0,
        (total - free1) as f64 / 1048576.0,
        total as f64 / 1048576.0,
        (total - free0) as f64 / 1048576.0
    ))
}

/// One more step with every launch timed: the slowest kernels on stdout, every launch in the
/// CSV file named by `GPU_PROFILE_CSV` when set.
fn print_profile(
    case: &str,
    pair: &mut TrainingFunctions,
    adam: &mut Optimizer,
) -> Result<(), String> {
    pair.set_profiling(true);
    let f = pair.run_forward().map_err(|e| e.to_string())?;
    let b = pair.run_backward().map_err(|e| e.to_string())?;
    let o = adam_step(pair, adam)?;
    pair.set_profiling(false);
    let mut rows: Vec<(&str, &snn_runtime::gpu::KernelTime)> = f
        .kernels
        .iter()
        .map(|k| ("forward_train", k))
        .chain(b.kernels.iter().map(|k| ("backward", k)))
        .chain(o.kernels.iter().map(|k| ("optimizer", k)))
        .collect();
    let total: f64 = rows.iter().map(|(_, k)| k.ms).sum();
    if let Ok(path) = std::env::var("GPU_PROFILE_CSV") {
        let mut csv = String::from("function,kernel,grid,ms,shapes\n");
        for (func, k) in &rows {
            csv.push_str(&format!(
                "{func},{},{},{:.4},{:?}\n",
                k.kernel,
                k.grid[0] as u64 * k.grid[1] as u64 * k.grid[2] as u64,
                k.ms,
                k.shapes
            ));
        }
        std::fs::write(&path, csv).map_err(|e| format!("{path}: {e}"))?;
    }
    rows.sort_by(|a, b| b.1.ms.total_cmp(&a.1.ms));
    println!(
        "profile {case}: {:.2} ms in {} launches (forward_train {:.2}, backward {:.2}, optimizer {:.2}; timed one by one)",
        total,
        rows.len(),
        f.kernels.iter().map(|k| k.ms).sum::<f64>(),
        b.kernels.iter().map(|k| k.ms).sum::<f64>(),
        o.kernels.iter().map(|k| k.ms).sum::<f64>()
    );
    for (func, k) in rows.iter().take(25) {
        println!(
            "  {:7.3} ms {:5.1}%  {func} {} grid {} {:?}",
            k.ms,
            100.0 * k.ms / total.max(1e-9),
            k.kernel,
            k.grid[0],
            k.shapes
        );
    }
    Ok(())
}

/// A timing run still has to produce finite outputs.
fn host_output_check(
    model: &GpuModel,
    bufs: &[snn_runtime::gpu::DeviceBuffer],
) -> Result<String, String> {
    let mut n = 0;
    for (a, b) in model.manifest().args.iter().zip(bufs) {
        if a.role == "output" {
            let v = b.download().map_err(|e| e.to_string())?;
            if v.iter().any(|x| !x.is_finite()) {
                return Err(format!("output `{}` is not finite", a.name));
            }
            n += v.len();
        }
    }
    Ok(format!("{n} output values finite"))
}

/// Largest error relative to max(1, |want|); `Err` past `tol`.
/// A tensor that should be zero: every value within `floor` of it. Ok(0): no relative error
/// to report.
fn compare_absolute(what: &str, got: &[f32], floor: f64) -> Result<f64, String> {
    let worst = got.iter().fold(0f64, |m, x| {
        let x = f64::from(x.abs());
        if x.is_nan() { f64::INFINITY } else { m.max(x) }
    });
    if worst > floor {
        return Err(format!(
            "{what}: zero by construction, but a value is {worst:e} (floor {floor:e}, 1e-3 of the largest gradient)"
        ));
    }
    Ok(0.0)
}

fn compare(what: &str, got: &[f32], want: &[f32], tol: f64) -> Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let (mut worst, mut at, mut bad) = (0f64, 0usize, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (f64::from(*g), f64::from(*w));
        let err = (g - w).abs() / w.abs().max(1.0);
        let err = if err.is_nan() { f64::INFINITY } else { err };
        if err > tol {
            bad += 1;
        }
        if err > worst {
            worst = err;
            at = i;
        }
    }
    if bad > 0 {
        return Err(format!(
            "{what}: {bad} of {} values off by more than {tol:e} (worst {worst:e} at {at}: got {}, want {})",
            got.len(),
            got[at],
            want[at]
        ));
    }
    Ok(worst)
}
