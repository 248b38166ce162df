//! Training on the GPU executor. Without a GPU (CI, most machines) `--device gpu` must be a
//! clear error that leaves no run directory behind; with one, a step on the GPU must agree
//! with the same step on the CPU backend.

mod common;

use snn_runtime::gpu::GpuDevice;
use snnc::ir::Graph;
use snnc::sema::compile_source;
use snnc::train::{Backend, Step, executor};
use std::process::Command;

fn nmnist(model: &str) -> Graph {
    let path = common::workspace().join("examples/nmnist.snn");
    let text = std::fs::read_to_string(&path).expect("readable");
    let c = compile_source(&path, text, &[("T".to_string(), "4".to_string())]);
    assert!(
        !c.diags.has_errors(),
        "{}",
        c.diags.render_plain(&c.program.sources)
    );
    c.graphs
        .into_iter()
        .find(|g| g.name == model)
        .expect("model")
}

fn gpu_present() -> bool {
    match GpuDevice::open(0) {
        Ok(d) => {
            eprintln!("GPU present: {} ({})", d.info().name, d.info().chip());
            true
        }
        Err(e) => {
            eprintln!("skipping GPU execution: {e}");
            false
        }
    }
}

#[test]
fn device_gpu_without_a_gpu_is_a_clear_error() {
    if gpu_present() {
        eprintln!("skipping: this machine has a GPU (see one_gpu_step_matches_the_cpu_step)");
        return;
    }
    let run = std::env::temp_dir().join(format!("snnc-gpu-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    for device in ["gpu", "gpu-tf32"] {
        let out = Command::new(env!("CARGO_BIN_EXE_snnc"))
            .current_dir(common::workspace())
            .args([
                "train",
                "examples/nmnist.snn:NMNISTVanilla",
                "--device",
                device,
                "--set",
                "T=4",
                "--limit-train",
                "4",
                "--run-dir",
            ])
            .arg(&run)
            .output()
            .expect("snnc runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{device}: an error, not a panic:\n{stderr}"
        );
        assert!(
            stderr.contains("cannot run `NMNISTVanilla` on the GPU")
                && stderr.contains("--device cpu"),
            "{device}: {stderr}"
        );
        assert!(
            !run.exists(),
            "{device}: a failed start must not create the run directory"
        );
    }
    // `--device` and `--backend` name the same choice: both at once is a usage error.
    let both = Command::new(env!("CARGO_BIN_EXE_snnc"))
        .current_dir(common::workspace())
        .args([
            "train",
            "examples/nmnist.snn:NMNISTVanilla",
            "--device",
            "gpu",
            "--backend",
            "cpu",
        ])
        .output()
        .expect("snnc runs");
    assert_eq!(both.status.code(), Some(2));
}

/// One step of `backend`'s executor (see `common::one_training_step`).
fn step_on(backend: Backend, g: &Graph) -> Step {
    let run_dir = std::env::temp_dir().join("snnc-gpu-train-unused");
    let mut exec = executor(backend, g, 0, &run_dir).expect("executor");
    common::one_training_step(exec.as_mut(), g, 2)
}

/// Runs where a GPU is present (bench/gpu.sh covers the same ground from a prepared bundle
/// on machines without a Rust toolchain).
#[test]
fn one_gpu_step_matches_the_cpu_step() {
    if !gpu_present() {
        return;
    }
    for model in ["NMNISTVanilla", "NMNISTTCSA"] {
        let g = nmnist(model);
        let (gpu, cpu) = (step_on(Backend::Gpu, &g), step_on(Backend::Cpu, &g));
        assert!(
            (gpu.loss - cpu.loss).abs() <= 1e-4 * cpu.loss.abs().max(1.0),
            "{model} loss: gpu {} cpu {}",
            gpu.loss,
            cpu.loss
        );
        for ((p, a), b) in g.params.iter().zip(&gpu.grads).zip(&cpu.grads) {
            let (Some(a), Some(b)) = (a, b) else {
                assert_eq!(a.is_some(), b.is_some(), "{}", p.name);
                continue;
            };
            let largest = b.iter().fold(0f64, |m, x| m.max(x.abs()));
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-3 * largest.max(1e-6),
                    "{model} d{}: gpu {x} cpu {y}",
                    p.name
                );
            }
        }
        assert_eq!(gpu.spike_counts.len(), cpu.spike_counts.len());
        for (a, b) in gpu.spike_counts.iter().zip(&cpu.spike_counts) {
            assert_eq!((a.0, a.2), (b.0, b.2));
            assert!((a.1 - b.1).abs() <= 1e-3 * b.1.max(1.0), "{model} spikes");
        }
    }
}
