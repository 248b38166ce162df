//! Prepares a GPU check bundle on any machine (no GPU needed): PTX, launch manifests, inputs,
//! parameters and reference outputs; `bench/gpu.sh` replays it with the runtime's `gpu_check`.
//!
//! ```text
//! gpu_prepare OUT_DIR [ROOT]   # ROOT: the repository (default .)
//! ```
//! Cases, each for the forward and for training (`forward_train` then `backward`):
//! golden_small vs PyTorch (tests/reference: outputs, running statistics and gradients), each
//! model of every example vs the reference interpreter (T=4 or 5, the ResNet at T=1; B=2), and
//! the gesture MA-SNN timed at T=60, B=16.

use ndarray::{ArrayD, IxDyn};
use snn_runtime::gpu::LaunchManifest;
use snn_runtime::gpu::manifest::ArgSpec;
use snn_runtime::gpu::manifest::{ArgSource, CheckCase, uniform_f32};
use snnc::backend::gpu::{GpuArtifact, GpuOptions, compile, compile_training};
use snnc::interp::{Interpreter, Mode, Options, ParamStore, loss};
use snnc::ir::{Graph, Init};
use snnc::sema::{Compilation, compile_source};
use std::path::Path;
use std::process::ExitCode;

/// |got - want| <= TOL * max(1, |want|), as the CPU backend's interpreter checks.
const TOL: f64 = 1e-4;
/// The same for gradients: sums over up to T·B·H·W terms per weight, in f32 on the GPU, in
/// f64 in the interpreter (the CPU backend's gradient tests allow 1e-3 of the largest value).
const GRAD_TOL: f64 = 1e-3;
/// Reference gradients larger than this many values are stored as an even sample of about
/// this size (every `len / SAMPLED_GRADIENT`-th value, rounded up).
const SAMPLED_GRADIENT: usize = 1 << 16;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first() else {
        eprintln!("usage: gpu_prepare OUT_DIR [ROOT]");
        return ExitCode::from(2);
    };
    let root = args.get(1).map_or(".", String::as_str);
    match prepare(Path::new(out), Path::new(root)) {
        Ok(n) => {
            eprintln!("wrote {n} cases to {out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn prepare(out: &Path, root: &Path) -> Result<usize, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut cases = Vec::new();
    cases.push(golden(out, root)?);
    cases.push(training_golden(out, root)?);
    // Every example; the ResNet's gradients are checked on a sample (`SAMPLED_GRADIENT`).
    for (file, steps) in [
        ("nmnist.snn", "4"),
        ("gesture.snn", "5"),
        ("custom_neuron.snn", "4"),
        ("att_resnet18.snn", "1"),
    ] {
        let sets = [("T".to_string(), steps.to_string())];
        let c = load(&root.join("examples").join(file), &sets)?;
        // At 17 spiking layers some membrane lands within f32 rounding of its threshold and
        // fires on one side only; the flip spreads to everything after it (as the CPU tests
        // found): the ResNet is compared up to its first spiking layer, and by spike counts
        // after it.
        let prefix = file == "att_resnet18.snn";
        for g in &c.graphs {
            cases.push(versus_interpreter(out, g, 2, prefix)?);
            cases.push(training_versus_interpreter(out, g, 2, prefix)?);
        }
    }
    let sets = [("T".to_string(), "60".to_string())];
    let c = load(&root.join("examples/gesture.snn"), &sets)?;
    let g = c
        .graphs
        .iter()
        .find(|g| g.name == "GestureTCSA")
        .ok_or("no GestureTCSA in examples/gesture.snn")?;
    cases.push(timing(out, g, 16, 10)?);
    cases.push(training_timing(out, g, 16, 3)?);
    let text = serde_json::to_string_pretty(&cases).map_err(|e| e.to_string())?;
    write(&out.join("cases.json"), text.as_bytes())?;
    Ok(cases.len())
}

fn load(path: &Path, sets: &[(String, String)]) -> Result<Compilation, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let c = compile_source(path, text, sets);
    if c.diags.has_errors() {
        return Err(c.diags.render_plain(&c.program.sources));
    }
    Ok(c)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn write_f32(out: &Path, rel: &str, data: impl IntoIterator<Item = f32>) -> Result<String, String> {
    let bytes: Vec<u8> = data.into_iter().flat_map(f32::to_le_bytes).collect();
    write(&out.join(rel), &bytes)?;
    Ok(rel.to_string())
}

/// PTX for sm_90 (what the H100/H200 machines run; newer GPUs JIT it too) and its manifest.
fn artifact(out: &Path, g: &Graph, batch: usize, case: &str) -> Result<GpuArtifact, String> {
    let opts = GpuOptions {
        chip: "sm_90".into(),
        batch,
    };
    let art = compile(g, &opts).map_err(|e| format!("{}: {e}", g.name))?;
    write(&out.join(format!("{case}.ptx")), art.ptx.as_bytes())?;
    write(
        &out.join(format!("{case}.launch.json")),
        art.manifest.to_json().as_bytes(),
    )?;
    eprintln!(
        "{case}: {} kernels, {} launches, PTX {} KB",
        art.manifest.kernels.len(),
        art.manifest.launches().count(),
        art.ptx.len() / 1024
    );
    Ok(art)
}

fn case(name: &str, kind: &str, n_args: usize, reference: &str, iters: usize) -> CheckCase {
    CheckCase {
        name: name.into(),
        kind: kind.into(),
        ptx: format!("{name}.ptx"),
        manifest: format!("{name}.launch.json"),
        args: vec![None; n_args],
        expected: vec![None; n_args],
        reference: reference.into(),
        tolerance: TOL,
        iters,
        backward_manifest: None,
        backward_args: Vec::new(),
        backward_expected: Vec::new(),
        backward_stride: Vec::new(),
        grad_tolerance: None,
        optimizer_manifest: None,
        expected_spikes: Vec::new(),
    }
}

/// A training build: the PTX and the manifests of both functions.
struct TrainArtifact {
    ptx: String,
    forward_train: LaunchManifest,
    backward: LaunchManifest,
    optimizer: LaunchManifest,
}

/// Training PTX for sm_90 and the manifests of `forward_train`, `backward` and `optimizer`.
fn train_artifact(
    out: &Path,
    g: &Graph,
    batch: usize,
    case: &str,
) -> Result<TrainArtifact, String> {
    let opts = GpuOptions {
        chip: "sm_90".into(),
        batch,
    };
    let art = compile_training(g, &opts).map_err(|e| format!("{} (training): {e}", g.name))?;
    let art = TrainArtifact {
        backward: art.backward.ok_or("a training build without a backward")?,
        optimizer: art
            .optimizer
            .ok_or("a training build without an optimiser step")?,
        ptx: art.ptx,
        forward_train: art.forward_train,
    };
    write(&out.join(format!("{case}.ptx")), art.ptx.as_bytes())?;
    for (m, which) in [
        (&art.forward_train, "forward_train"),
        (&art.backward, "backward"),
        (&art.optimizer, "optimizer"),
    ] {
        write(
            &out.join(format!("{case}.{which}.launch.json")),
            m.to_json().as_bytes(),
        )?;
    }
    eprintln!(
        "{case}: {} + {} + {} kernels, {} + {} + {} launches, PTX {} KB",
        art.forward_train.kernels.len(),
        art.backward.kernels.len(),
        art.optimizer.kernels.len(),
        art.forward_train.launches().count(),
        art.backward.launches().count(),
        art.optimizer.launches().count(),
        art.ptx.len() / 1024
    );
    Ok(art)
}

/// A training case over `art`: forward_train's arguments and expectations in `args` /
/// `expected`, backward's in `backward_args` / `backward_expected`.
fn training_case(
    name: &str,
    kind: &str,
    art: &TrainArtifact,
    reference: &str,
    iters: usize,
) -> CheckCase {
    let mut k = case(name, kind, art.forward_train.args.len(), reference, iters);
    k.manifest = format!("{name}.forward_train.launch.json");
    k.backward_manifest = Some(format!("{name}.backward.launch.json"));
    k.optimizer_manifest = Some(format!("{name}.optimizer.launch.json"));
    k.backward_args = vec![None; art.backward.args.len()];
    k.backward_expected = vec![None; art.backward.args.len()];
    k.backward_stride = vec![1; art.backward.args.len()];
    k.grad_tolerance = Some(GRAD_TOL);
    k
}

/// Writes `data` as argument or expectation file `what{i}` of case `name`.
fn case_file(
    out: &Path,
    name: &str,
    what: &str,
    i: usize,
    data: impl IntoIterator<Item = f32>,
) -> Result<Option<String>, String> {
    write_f32(out, &format!("{name}.{what}{i}.f32"), data).map(Some)
}

/// golden_small's value of a forward argument: inputs and parameters from PyTorch's files,
/// running statistics at PyTorch's initial values (mean 0, variance 1); `None` for what the
/// forward writes.
fn golden_arg(dir: &Path, a: &ArgSpec) -> Result<Option<Vec<f32>>, String> {
    let n: usize = a.shape.iter().product();
    let file = match a.role.as_str() {
        "input" => dir.join("input.npy"),
        "param" => dir.join(format!("param.{}.npy", a.name)),
        "state" if a.name.ends_with("running_var") => return Ok(Some(vec![1.0; n])),
        "state" => return Ok(Some(vec![0.0; n])),
        _ => return Ok(None),
    };
    let (shape, data) = read_npy(&file)?;
    if shape != a.shape {
        return Err(format!(
            "{}: shape {shape:?}, expected {:?}",
            a.name, a.shape
        ));
    }
    Ok(Some(data.iter().map(|v| *v as f32).collect()))
}

/// PyTorch's forward results for golden_small: outputs and updated running statistics.
fn golden_expected(dir: &Path, a: &ArgSpec) -> Result<Option<Vec<f32>>, String> {
    let file = match a.role.as_str() {
        "output" => dir.join(format!("out.{}.npy", a.name)),
        "state" => dir.join(format!("running.{}.npy", a.name)),
        _ => return Ok(None),
    };
    let (_, want) = read_npy(&file)?;
    Ok(Some(want.iter().map(|v| *v as f32).collect()))
}

fn golden_model(root: &Path) -> Result<(Compilation, std::path::PathBuf, usize), String> {
    let c = load(&root.join("tests/reference/golden_small.snn"), &[])?;
    let dir = root.join("tests/reference/golden_small");
    let (in_shape, _) = read_npy(&dir.join("input.npy"))?;
    let batch = *in_shape.get(1).ok_or("input.npy has no batch axis")?;
    Ok((c, dir, batch))
}

fn golden(out: &Path, root: &Path) -> Result<CheckCase, String> {
    let (c, dir, batch) = golden_model(root)?;
    let g = c.graphs.first().ok_or("no model in golden_small.snn")?;
    let name = "golden_small";
    let art = artifact(out, g, batch, name)?;
    let args = &art.manifest.args;
    let mut k = case(name, "check", args.len(), "PyTorch golden values", 1);
    for (i, a) in args.iter().enumerate() {
        if let Some(data) = golden_arg(&dir, a)? {
            k.args[i] = case_file(out, name, "arg", i, data)?.map(ArgSource::File);
        }
        if let Some(want) = golden_expected(&dir, a)? {
            k.expected[i] = case_file(out, name, "want", i, want)?;
        }
    }
    Ok(k)
}

/// golden_small trained one step: outputs, running statistics and every gradient against
/// PyTorch's; the backward is seeded with the MSE gradient of PyTorch's readout.
fn training_golden(out: &Path, root: &Path) -> Result<CheckCase, String> {
    let (c, dir, batch) = golden_model(root)?;
    let g = c.graphs.first().ok_or("no model in golden_small.snn")?;
    let name = "golden_small_train";
    let art = train_artifact(out, g, batch, name)?;
    let mut k = training_case(
        name,
        "train",
        &art,
        "PyTorch golden values and gradients",
        1,
    );
    for (i, a) in art.forward_train.args.iter().enumerate() {
        if let Some(data) = golden_arg(&dir, a)? {
            k.args[i] = case_file(out, name, "arg", i, data)?.map(ArgSource::File);
        }
        if let Some(want) = golden_expected(&dir, a)? {
            k.expected[i] = case_file(out, name, "want", i, want)?;
        }
    }
    let (_, target) = read_npy(&dir.join("target.npy"))?;
    let (r_shape, readout) = read_npy(&dir.join("out.readout0.npy"))?;
    let classes_n = *r_shape.last().ok_or("readout has no class axis")?;
    let classes: Vec<usize> = target
        .chunks(classes_n)
        .map(|row| row.iter().position(|v| *v == 1.0).unwrap_or(0))
        .collect();
    let r = ArrayD::from_shape_vec(IxDyn(&r_shape), readout).map_err(|e| e.to_string())?;
    let (_, d_out) = loss::mse_one_hot(&r, &classes).map_err(|e| e.to_string())?;
    for (i, a) in art.backward.args.iter().enumerate() {
        let file = match a.role.as_str() {
            "d_output" => {
                k.backward_args[i] =
                    case_file(out, name, "darg", i, d_out.iter().map(|v| *v as f32))?
                        .map(ArgSource::File);
                continue;
            }
            "d_param" => dir.join(format!("grad.{}.npy", &a.name[1..])),
            "d_input" => dir.join("grad.input.npy"),
            _ => continue,
        };
        let (_, want) = read_npy(&file)?;
        k.backward_expected[i] = case_file(out, name, "dwant", i, want.iter().map(|v| *v as f32))?;
    }
    Ok(k)
}

/// Values the GPU machine makes again from `source` (nothing travels), and the source.
fn generated(n: usize, seed: u64, lo: f32, hi: f32) -> (Vec<f32>, Option<ArgSource>) {
    (
        uniform_f32(n, seed, lo, hi),
        Some(ArgSource::Uniform { seed, lo, hi }),
    )
}

/// Parameters and running statistics as both sides make them (PyTorch's ranges: constants, or
/// uniform in ±1/sqrt(fan_in)), in f32 so the f64 interpreter sees what the GPU sees; and
/// each one's source.
fn bundle_params(g: &Graph) -> Result<(ParamStore, Vec<Option<ArgSource>>), String> {
    let mut store = ParamStore::init(g, 7);
    let mut sources = Vec::new();
    for (j, (p, v)) in g.params.iter().zip(&mut store.values).enumerate() {
        let (lo, hi) = match p.init {
            Init::Const(c) => (c as f32, c as f32),
            Init::UniformFanIn { fan_in } => {
                let bound = (1.0 / (fan_in.max(1) as f64).sqrt()) as f32;
                (-bound, bound)
            }
        };
        let (values, source) = generated(v.len(), 7000 + j as u64, lo, hi);
        *v = ArrayD::from_shape_vec(v.raw_dim(), values.iter().map(|x| f64::from(*x)).collect())
            .map_err(|e| e.to_string())?;
        sources.push(source);
    }
    Ok((store, sources))
}

/// Where a `prefix` case's comparison with the interpreter stops being exact.
const PREFIX_REFERENCE: &str =
    "reference interpreter (f64) up to the first spiking layer, spike counts after it";

fn versus_interpreter(
    out: &Path,
    g: &Graph,
    batch: usize,
    prefix: bool,
) -> Result<CheckCase, String> {
    let name = g.name.clone();
    let art = artifact(out, g, batch, &name)?;
    let args = &art.manifest.args;
    let reference = if prefix {
        PREFIX_REFERENCE
    } else {
        "reference interpreter (f64)"
    };
    let mut k = case(&name, "check", args.len(), reference, 1);
    interpreter_forward(out, g, args, &mut k, prefix)?;
    Ok(k)
}

/// Whether parameter `pid` belongs to a node before `g`'s first spiking layer (nodes are in
/// topological order, so nothing it computes depends on a spike).
fn before_first_spike(g: &Graph, pid: usize) -> bool {
    let first = g
        .nodes
        .iter()
        .position(|n| n.emits_spikes())
        .unwrap_or(g.nodes.len());
    g.nodes[..first]
        .iter()
        .any(|n| n.params.iter().any(|p| p.0 == pid))
}

/// Fills `k`'s forward arguments (seeded inputs in [0, 2), parameters from [`bundle_params`]) and
/// expectations (outputs and running statistics from the interpreter in train mode, f64);
/// `args` starts with the forward's arguments in order (inputs, parameters, outputs), as
/// `forward_train`'s do. Returns the parameters and the interpreter's forward.
fn interpreter_forward(
    out: &Path,
    g: &Graph,
    args: &[ArgSpec],
    k: &mut CheckCase,
    prefix: bool,
) -> Result<(ParamStore, snnc::interp::Forward), String> {
    let name = k.name.clone();
    let (store, param_sources) = bundle_params(g)?;
    let mut inputs = Vec::new();
    let mut p = 0;
    for (i, a) in args.iter().enumerate() {
        let n: usize = a.shape.iter().product();
        k.args[i] = match a.role.as_str() {
            "input" => {
                let (data, source) = generated(n, 11 + i as u64, 0.0, 2.0);
                let arr = ArrayD::from_shape_vec(
                    IxDyn(&a.shape),
                    data.iter().map(|v| f64::from(*v)).collect(),
                )
                .map_err(|e| e.to_string())?;
                inputs.push((a.name.clone(), arr));
                source
            }
            "param" | "state" => {
                p += 1;
                param_sources.get(p - 1).ok_or("parameter count")?.clone()
            }
            _ => continue,
        };
    }
    let interp = train_interpreter(g);
    let named: Vec<(&str, ArrayD<f64>)> = inputs
        .iter()
        .map(|(n, a)| (n.as_str(), a.clone()))
        .collect();
    let fwd = interp.forward(&store, &named).map_err(|e| e.to_string())?;
    let first_out = inputs.len() + g.params.len();
    if !prefix {
        for (j, want) in fwd.outputs.iter().enumerate() {
            let i = first_out + j;
            k.expected[i] = case_file(out, &name, "want", i, want.iter().map(|v| *v as f32))?;
        }
    }
    for (pid, want) in &fwd.running_updates {
        if prefix && !before_first_spike(g, pid.0) {
            continue;
        }
        let i = inputs.len() + pid.0;
        k.expected[i] = case_file(out, &name, "want", i, want.iter().map(|v| *v as f32))?;
    }
    if prefix {
        // The interpreter's spike count of every spiking layer, by its saved spike train.
        k.expected_spikes = args
            .iter()
            .map(|a| {
                (a.role == "saved")
                    .then(|| {
                        fwd.spike_counts
                            .iter()
                            .find(|(v, _, _)| g.nodes[v.0].name == a.name)
                            .map(|(_, count, _)| *count)
                    })
                    .flatten()
            })
            .collect();
    }
    Ok((store, fwd))
}

fn train_interpreter(g: &Graph) -> Interpreter<'_> {
    Interpreter::new(
        g,
        Options {
            mode: Mode::Train,
            ..Options::default()
        },
    )
}

/// One training step against the interpreter: the forward as in [`versus_interpreter`], then
/// the backward seeded with deterministic output gradients in [-1, 1); every parameter and
/// input gradient is compared.
fn training_versus_interpreter(
    out: &Path,
    g: &Graph,
    batch: usize,
    prefix: bool,
) -> Result<CheckCase, String> {
    let name = format!("{}_train", g.name);
    let art = train_artifact(out, g, batch, &name)?;
    let reference = if prefix {
        PREFIX_REFERENCE
    } else {
        "reference interpreter (f64)"
    };
    let mut k = training_case(&name, "train", &art, reference, 1);
    let (store, fwd) = interpreter_forward(out, g, &art.forward_train.args, &mut k, prefix)?;
    let mut d_sources = Vec::new();
    let d_outputs: Vec<ArrayD<f64>> = fwd
        .outputs
        .iter()
        .enumerate()
        .map(|(j, o)| {
            let (data, source) = generated(o.len(), 1000 + j as u64, -1.0, 1.0);
            d_sources.push(source);
            ArrayD::from_shape_vec(o.raw_dim(), data.iter().map(|v| f64::from(*v)).collect())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let grads = train_interpreter(g)
        .backward(&store, &fwd, &d_outputs)
        .map_err(|e| e.to_string())?;
    let (mut d, mut dp) = (0, 0);
    let trainable: Vec<&ArrayD<f64>> = grads.params.iter().flatten().collect();
    for (i, a) in art.backward.args.iter().enumerate() {
        let want = match a.role.as_str() {
            "d_output" => {
                d += 1;
                k.backward_args[i] = d_sources.get(d - 1).ok_or("output gradient count")?.clone();
                continue;
            }
            "d_param" => {
                dp += 1;
                *trainable.get(dp - 1).ok_or("gradient count")?
            }
            "d_input" => grads
                .inputs
                .get(&a.name[1..])
                .ok_or_else(|| format!("no interpreter gradient for `{}`", a.name))?,
            _ => continue,
        };
        // Every gradient flows back through the spiking layers: only checked to be finite.
        if prefix {
            continue;
        }
        // Large gradients are checked on an even sample, so that a ResNet's fit the bundle.
        let stride = want.len().div_ceil(SAMPLED_GRADIENT).max(1);
        k.backward_stride[i] = stride;
        let sample = want.iter().step_by(stride).map(|v| *v as f32);
        k.backward_expected[i] = case_file(out, &name, "dwant", i, sample)?;
    }
    Ok(k)
}

fn timing(out: &Path, g: &Graph, batch: usize, iters: usize) -> Result<CheckCase, String> {
    let name = format!("{}_T60_B{batch}", g.name);
    let art = artifact(out, g, batch, &name)?;
    let args = &art.manifest.args;
    let mut k = case(&name, "time", args.len(), "none (timing)", iters);
    set_param_sources(g, args, &mut k.args)?;
    Ok(k)
}

/// Points the parameter and running-statistic arguments of `args` at [`bundle_params`].
fn set_param_sources(
    g: &Graph,
    args: &[ArgSpec],
    sources: &mut [Option<ArgSource>],
) -> Result<(), String> {
    let (_, params) = bundle_params(g)?;
    let mut params = params.into_iter();
    for (a, s) in args.iter().zip(sources) {
        if a.role == "param" || a.role == "state" {
            *s = params.next().ok_or("parameter count")?;
        }
    }
    Ok(())
}

/// The gesture training step (forward_train + backward) timed; random event frames in, the
/// parameters the other cases use, output gradients of ones / batch.
fn training_timing(out: &Path, g: &Graph, batch: usize, iters: usize) -> Result<CheckCase, String> {
    let name = format!("{}_T60_B{batch}_train", g.name);
    let art = train_artifact(out, g, batch, &name)?;
    let mut k = training_case(&name, "train_time", &art, "none (timing)", iters);
    set_param_sources(g, &art.forward_train.args, &mut k.args)?;
    let ones = 1.0 / batch as f32;
    for (i, a) in art.backward.args.iter().enumerate() {
        if a.role == "d_output" {
            k.backward_args[i] = Some(ArgSource::Uniform {
                seed: 0,
                lo: ones,
                hi: ones,
            });
        }
    }
    Ok(k)
}

/// Reads a little-endian float64 C-order `.npy` file.
fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f64>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = || format!("{}: not a float64 C-order .npy", path.display());
    if bytes.len() < 12 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad());
    }
    let (len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )
    };
    let header = bytes
        .get(start..start + len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(bad)?;
    if !header.contains("'<f8'") || !header.contains("'fortran_order': False") {
        return Err(bad());
    }
    let shape: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(bad)?
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let data: Vec<f64> = bytes[start + len..]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    if data.len() != shape.iter().product::<usize>() {
        return Err(bad());
    }
    Ok((shape, data))
}
