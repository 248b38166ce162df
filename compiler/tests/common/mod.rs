//! Helpers shared by the compiler's integration tests (each test crate uses a subset of them).
#![allow(dead_code)]

use ndarray::{ArrayD, IxDyn};
use snnc::sema::{Compilation, compile_source};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs every parallel loop of JIT-compiled code split over all the runtime's threads, however
/// short (normally only loops measured to be worth it are): the differential tests then also
/// check that the generated parallel loops are free of races.
pub fn split_every_parallel_loop() {
    snn_runtime::kernels::ffi::set_min_parallel_ns(0);
}

/// One training step of `exec` on the first batch of `batch_size` samples of `g`'s own dataset
/// (seeded loader, no workers), from parameters seeded 7, with cross-entropy on the readout:
/// every executor given the same graph sees the same batch and parameters.
pub fn one_training_step(
    exec: &mut dyn snnc::train::Executor,
    g: &snnc::ir::Graph,
    batch_size: usize,
) -> snnc::train::Step {
    use snnc::train::{RunConfig, RunError, RunOverrides};
    let overrides = RunOverrides {
        batch: Some(batch_size),
        limit_train: Some(batch_size),
        workers: Some(0),
        ..Default::default()
    };
    // The model's `dataset` path is relative to the workspace; tests run in compiler/.
    let run_dir = std::env::temp_dir().join("snnc-test-step-unused");
    let cfg = RunConfig::resolve(g, run_dir, &workspace(), &overrides).expect("config");
    let (train, _) = cfg.loaders(g).expect("loaders");
    let batch = train
        .epoch(0)
        .next()
        .expect("one batch")
        .expect("readable batch");
    assert_eq!(batch.labels.len(), batch_size);
    let params = snnc::interp::ParamStore::init(g, 7);
    let targets: Vec<usize> = batch.labels.iter().map(|l| *l as usize).collect();
    let mut loss = |r: &ArrayD<f64>| {
        snnc::interp::loss::cross_entropy(r, &targets).map_err(|e| RunError(e.to_string()))
    };
    exec.train_step(&params, &batch, 0, &mut loss)
        .expect("training step")
}

/// The workspace root (parent of `compiler/`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("compiler/ has a parent")
        .to_path_buf()
}

/// Every `.snn` file in `dir` (relative to the workspace), sorted, as (relative path, text).
pub fn snn_files(dir: &str) -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(workspace().join(dir))
        .expect("directory exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "snn"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = format!(
                "{dir}/{}",
                p.file_name().and_then(|n| n.to_str()).unwrap_or_default()
            );
            let text = std::fs::read_to_string(&p).expect("readable");
            (rel, text)
        })
        .collect()
}

/// Compiles a workspace file (relative path) with overrides; panics with the diagnostics on error.
pub fn compile(rel: &str, overrides: &[(&str, &str)]) -> Compilation {
    let path = workspace().join(rel);
    let text = std::fs::read_to_string(&path).expect("readable");
    compile_text(&path, text, overrides)
}

/// Compiles source text as the file `path`; panics with the diagnostics on error.
pub fn compile_text(path: &Path, text: String, overrides: &[(&str, &str)]) -> Compilation {
    let overrides: Vec<(String, String)> = overrides
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let c = compile_source(path, text, &overrides);
    assert!(
        !c.diags.has_errors(),
        "{} failed:\n{}",
        path.display(),
        c.diags.render_plain(&c.program.sources)
    );
    c
}

/// Reads a little-endian float64 C-order `.npy` (what tests/reference/golden_small.py writes).
pub fn read_npy(path: &Path) -> ArrayD<f64> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}", path.display());
    let (len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&bytes[start..start + len]).expect("ascii header");
    assert!(
        header.contains("'<f8'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("shape");
    let shape: Vec<usize> = shape_text
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data: Vec<f64> = bytes[start + len..]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    ArrayD::from_shape_vec(IxDyn(&shape), data).expect("shape matches data")
}

/// [`read_npy`] as (shape, row-major data).
pub fn read_npy_f64(path: &Path) -> (Vec<usize>, Vec<f64>) {
    let a = read_npy(path);
    (a.shape().to_vec(), a.iter().copied().collect())
}

/// Deterministic f32 values in [lo, hi) from a 64-bit LCG, so failures reproduce from the seed
/// (the GPU check bundle's generator).
pub fn random_f32(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f32> {
    snn_runtime::gpu::manifest::uniform_f32(n, seed, lo as f32, hi as f32)
}

/// Runs the `snnc` binary with the arguments `args` adds and returns its output, failing the
/// test with snnc's stderr unless it succeeded.
pub fn snnc_ok(args: impl FnOnce(&mut Command) -> &mut Command) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snnc"));
    let out = args(&mut cmd).output().expect("snnc runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `mlir-opt-22` on PATH or in the Debian LLVM 22 prefix, if installed.
pub fn mlir_opt() -> Option<PathBuf> {
    let on_path = Command::new("mlir-opt-22")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if on_path {
        return Some(PathBuf::from("mlir-opt-22"));
    }
    let fixed = Path::new("/usr/lib/llvm-22/bin/mlir-opt");
    fixed.exists().then(|| fixed.to_path_buf())
}

/// Pipes `input` through `mlir-opt` with `args`; returns stdout or panics with stderr.
pub fn run_mlir_opt(tool: &Path, args: &[&str], input: &str, what: &str) -> String {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mlir-opt starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_string();
    // Write from another thread: mlir-opt may fill its stdout pipe before reading all input.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("mlir-opt runs");
    writer.join().expect("writer").expect("write to mlir-opt");
    assert!(
        out.status.success(),
        "mlir-opt {args:?} rejected {what}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
