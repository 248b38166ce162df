//! Tests of the CPU backend (LLVM dialect → Cranelift): the CLIF snapshot, JIT runs against
//! PyTorch's golden values, the f64 interpreter and MLIR's own LLVM-based ExecutionEngine, the
//! C ABI of the AOT shared library, and the errors users see.
//!
//! What is compared, and why. The interpreter computes in f64, the compiled code in f32. Up to
//! the first spiking layer the two differ by rounding only, so those prefixes are compared for
//! every example model at 1e-4 relative. After a spiking layer a membrane that lands within
//! rounding of its threshold fires on one side and not the other, and the flip cascades: whole
//! networks are compared with the interpreter only where the data keep membranes away from the
//! threshold (golden_small on its PyTorch data, N-MNIST and the custom neuron at T = 4 with
//! these seeds, the all-intrinsics neuron). Every example's whole network is instead compared
//! with MLIR's ExecutionEngine running the same LLVM dialect in f32: same operations in the same
//! order, so the results must agree to the last few ulps and spikes cannot flip.

mod common;

use common::{compile, compile_text, random_f32, read_npy_f64};

use melior::ExecutionEngine;
use melior::ir::Module;
use ndarray::{ArrayD, IxDyn};
use snnc::backend::cpu::{
    BackendError, CompiledModel, build_aot, emit_clif, lower_to_llvm, translate_module,
};
use snnc::interp::{Interpreter, Mode, Options, ParamStore};
use snnc::ir::Graph;
use snnc::ir::graph::Op;
use snnc::mlir::LowerOptions;
use snnc::mlir::context::new_context;
use snnc::mlir::lower::{ArgRole, forward_signature, forward_symbol};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Small time axes so that the debug-build interpreter stays fast.
fn example_overrides(rel: &str) -> Vec<(&'static str, &'static str)> {
    if rel.contains("att_resnet18") {
        vec![]
    } else if rel.contains("gesture") {
        // The temporal attention's ratio (5) needs T >= 5.
        vec![("T", "5")]
    } else {
        vec![("T", "4")]
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f64);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(*g) - w).abs() / (1.0 + w.abs());
        if err.is_nan() || err > worst.1 {
            worst = (i, err);
        }
    }
    let (i, err) = worst;
    assert!(
        err <= tol,
        "{what}[{i}]: got {}, want {} (relative error {err:e} > {tol:e})",
        got[i],
        want[i]
    );
}

/// Arguments for `g`'s forward in signature order: inputs uniform in [0, 2), parameters from
/// the interpreter's seeded init (rounded to f32), outputs NaN (every element must be written).
struct Case {
    args: Vec<Vec<f32>>,
    store: ParamStore,
    inputs: Vec<(String, ArrayD<f64>)>,
}

fn case(g: &Graph, batch: usize, seed: u64) -> Case {
    let mut store = ParamStore::init(g, seed);
    for v in &mut store.values {
        v.mapv_inplace(|x| f64::from(x as f32));
    }
    let sig = forward_signature(g, &LowerOptions::with_batch(batch)).expect("signature");
    let mut args = Vec::new();
    let mut inputs = Vec::new();
    let mut p = 0;
    for (k, a) in sig.iter().enumerate() {
        let size: usize = a.shape.iter().product();
        match a.role {
            ArgRole::Input => {
                let data = random_f32(size, seed * 101 + k as u64, 0.0, 2.0);
                let arr = ArrayD::from_shape_vec(
                    IxDyn(&a.shape),
                    data.iter().map(|v| f64::from(*v)).collect(),
                )
                .expect("shape");
                inputs.push((a.name.clone(), arr));
                args.push(data);
            }
            ArgRole::Param | ArgRole::State => {
                args.push(store.values[p].iter().map(|x| *x as f32).collect());
                p += 1;
            }
            ArgRole::Output => args.push(vec![f32::NAN; size]),
        }
    }
    Case {
        args,
        store,
        inputs,
    }
}

/// Runs the JIT and the interpreter (f64) on the same data in training semantics (batch
/// statistics); compares outputs and updated running statistics.
fn jit_agrees_with_interpreter(what: &str, g: &Graph, batch: usize, tol: f64) {
    jit_agrees_with_interpreter_in(what, g, batch, tol, Mode::Train);
}

/// [`jit_agrees_with_interpreter`] in `mode`: `Mode::Eval` compiles with
/// `LowerOptions::eval` (batchnorm on the running statistics, which must stay unchanged).
fn jit_agrees_with_interpreter_in(what: &str, g: &Graph, batch: usize, tol: f64, mode: Mode) {
    common::split_every_parallel_loop();
    let mut c = case(g, batch, 7);
    let eval = mode == Mode::Eval;
    if eval {
        // Running statistics away from 0 / 1, so that batch statistics would not pass.
        let n_inputs = c.inputs.len();
        for (k, p) in g.params.iter().enumerate() {
            let (scale, offset) = match p.role {
                snnc::ir::ParamRole::RunningMean => (0.3, -0.1),
                snnc::ir::ParamRole::RunningVar => (2.0, 0.2),
                _ => continue,
            };
            for (i, v) in c.store.values[k].iter_mut().enumerate() {
                *v = offset + scale * ((i % 5) as f64 / 5.0);
            }
            let values: Vec<f32> = c.store.values[k].iter().map(|x| *x as f32).collect();
            c.args[n_inputs + k] = values;
        }
    }
    let opts = LowerOptions {
        eval,
        ..LowerOptions::with_batch(batch)
    };
    let model = CompiledModel::compile(g, &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
    let params_before: Vec<Vec<f32>> =
        c.args[c.inputs.len()..c.inputs.len() + g.params.len()].to_vec();
    model.forward_args(&mut c.args).expect("forward");
    if eval {
        let after = &c.args[c.inputs.len()..c.inputs.len() + g.params.len()];
        assert_eq!(
            after,
            &params_before[..],
            "{what}: eval changed the parameters"
        );
    }
    let interp = Interpreter::new(
        g,
        Options {
            mode,
            ..Options::default()
        },
    );
    let named: Vec<(&str, ArrayD<f64>)> = c
        .inputs
        .iter()
        .map(|(n, a)| (n.as_str(), a.clone()))
        .collect();
    let fwd = interp.forward(&c.store, &named).expect("interpreter runs");
    let n_inputs = c.inputs.len();
    let first_out = n_inputs + g.params.len();
    for (k, want) in fwd.outputs.iter().enumerate() {
        let want: Vec<f64> = want.iter().copied().collect();
        assert_close(
            &format!("{what} output {k}"),
            &c.args[first_out + k],
            &want,
            tol,
        );
    }
    for (p, want) in &fwd.running_updates {
        let want: Vec<f64> = want.iter().copied().collect();
        assert_close(
            &format!("{what} {}", g.params[p.0].name),
            &c.args[n_inputs + p.0],
            &want,
            tol,
        );
    }
}

/// `g` cut just before its first spiking layer: the output is the current fed into it.
fn before_first_scan(g: &Graph) -> Option<Graph> {
    let scan = g
        .nodes
        .iter()
        .position(|n| matches!(n.op, Op::Scan { .. }))?;
    let feed = *g.nodes[scan].inputs.first()?;
    let mut cut = g.clone();
    cut.nodes.truncate(scan);
    cut.outputs = vec![feed];
    Some(cut)
}

// ---- CLIF -----------------------------------------------------------------------------------

#[test]
fn clif_of_golden_small() {
    let c = compile("tests/reference/golden_small.snn", &[]);
    let text = emit_clif(&[&c.graphs[0]], &LowerOptions::with_batch(1)).expect("clif");
    // Spike selects must stay branch-free: floats are selected as their bit patterns.
    assert!(text.contains("bitcast.i32"), "no branch-free select");
    insta::assert_snapshot!("clif__golden_small", text);
}

#[test]
fn cli_emits_clif_and_builds_artifacts() {
    let bin = env!("CARGO_BIN_EXE_snnc");
    let file = common::workspace().join("tests/reference/golden_small.snn");
    let out = common::snnc_ok(|c| {
        c.args(["build", "--emit", "clif", "--batch", "2"])
            .arg(&file)
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("; @GoldenSmall_forward\nfunction"), "{text}");

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cpu_cli_aot");
    let _ = std::fs::remove_dir_all(&dir);
    common::snnc_ok(|c| {
        c.args(["build", "--target", "cpu", "--batch", "2", "-o"])
            .arg(&dir)
            .arg(&file)
    });
    for f in ["GoldenSmall.o", "GoldenSmall.h", "GoldenSmall.json"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("GoldenSmall.json")).expect("json"))
            .expect("valid json");
    assert_eq!(manifest["batch"], 2);
    assert_eq!(manifest["buffers"][0]["role"], "input");
    assert_eq!(manifest["buffers"][5]["name"], "bn0.running_mean");
    assert_eq!(manifest["buffers"][5]["role"], "state");
    assert_eq!(manifest["buffers"][14]["shape"], serde_json::json!([2, 3]));

    // `--target cpu` writes a directory: without `-o` it says so.
    let out = Command::new(bin)
        .args(["build", "--target", "cpu"])
        .arg(&file)
        .output()
        .expect("snnc runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-o DIR"));
}

// ---- JIT against references ------------------------------------------------------------------

/// golden_small's inputs and parameters from the PyTorch reference, in signature order, with
/// running statistics at PyTorch's initial values and outputs NaN.
fn golden_small_args(g: &Graph, batch: usize) -> Vec<Vec<f32>> {
    let dir = common::workspace().join("tests/reference/golden_small");
    let sig = forward_signature(g, &LowerOptions::with_batch(batch)).expect("signature");
    sig.iter()
        .map(|a| {
            let size: usize = a.shape.iter().product();
            let file = match a.role {
                ArgRole::Input => Some(dir.join("input.npy")),
                ArgRole::Param => Some(dir.join(format!("param.{}.npy", a.name))),
                ArgRole::State | ArgRole::Output => None,
            };
            match file {
                Some(file) => {
                    let (shape, data) = read_npy_f64(&file);
                    assert_eq!(shape, a.shape, "{}", a.name);
                    data.iter().map(|v| *v as f32).collect()
                }
                None if a.role == ArgRole::Output => vec![f32::NAN; size],
                None if a.name.ends_with("running_var") => vec![1.0; size],
                None => vec![0.0; size],
            }
        })
        .collect()
}

#[test]
fn golden_small_runs_like_pytorch() {
    common::split_every_parallel_loop();
    let c = compile("tests/reference/golden_small.snn", &[]);
    let g = &c.graphs[0];
    let batch = 2;
    let model = CompiledModel::compile(g, &LowerOptions::with_batch(batch)).expect("compiles");
    let t = model.timings();
    eprintln!(
        "golden_small: MLIR {:.1} ms, Cranelift {:.1} ms",
        t.mlir.as_secs_f64() * 1e3,
        t.cranelift.as_secs_f64() * 1e3
    );
    let mut args = golden_small_args(g, batch);
    model.forward_args(&mut args).expect("forward");
    let dir = common::workspace().join("tests/reference/golden_small");
    for (b, buf) in model.manifest().buffers.iter().zip(&args) {
        let want = match b.role.as_str() {
            "output" => dir.join(format!("out.{}.npy", b.name)),
            "state" => dir.join(format!("running.{}.npy", b.name)),
            _ => continue,
        };
        let (_, want) = read_npy_f64(&want);
        assert_close(&b.name, buf, &want, 1e-5);
    }

    // The typed entry point agrees with the packed one and checks shapes.
    let mut params: Vec<Vec<f32>> = golden_small_args(g, batch)[1..14].to_vec();
    let input = golden_small_args(g, batch)[0].clone();
    let mut outputs = vec![Vec::new()];
    model
        .forward(&[&input], &mut params, &mut outputs)
        .expect("forward");
    assert_eq!(outputs[0], args[14]);
    assert_eq!(params[4], args[5], "running mean updated in place");
    let err = model
        .forward(&[&input[1..]], &mut params, &mut outputs)
        .expect_err("short input");
    assert!(
        err.message.contains("`x`") && err.message.contains("1024"),
        "{err}"
    );
    let err = model
        .forward(&[], &mut params, &mut outputs)
        .expect_err("missing input");
    assert!(err.message.contains("expected 1 inputs"), "{err}");
}

#[test]
fn every_example_agrees_with_the_interpreter_before_the_first_spiking_layer() {
    for (rel, _) in common::snn_files("examples") {
        let c = compile(&rel, &example_overrides(&rel));
        for g in &c.graphs {
            let Some(cut) = before_first_scan(g) else {
                continue;
            };
            jit_agrees_with_interpreter(&format!("{rel}:{} (prefix)", g.name), &cut, 2, 1e-4);
        }
    }
}

#[test]
fn nmnist_and_custom_neuron_agree_with_the_interpreter_whole_network() {
    for rel in ["examples/nmnist.snn", "examples/custom_neuron.snn"] {
        let c = compile(rel, &[("T", "4")]);
        for g in &c.graphs {
            jit_agrees_with_interpreter(&format!("{rel}:{}", g.name), g, 2, 1e-4);
        }
    }
}

#[test]
fn every_example_agrees_with_the_interpreter_in_eval_mode() {
    for (rel, _) in common::snn_files("examples") {
        let c = compile(&rel, &example_overrides(&rel));
        for g in &c.graphs {
            let Some(cut) = before_first_scan(g) else {
                continue;
            };
            let what = format!("{rel}:{} (prefix, eval)", g.name);
            jit_agrees_with_interpreter_in(&what, &cut, 2, 1e-4, Mode::Eval);
        }
    }
    let c = compile("examples/nmnist.snn", &[("T", "4")]);
    for g in &c.graphs {
        let what = format!("examples/nmnist.snn:{} (eval)", g.name);
        jit_agrees_with_interpreter_in(&what, g, 2, 1e-4, Mode::Eval);
    }
}

/// A neuron using every intrinsic the pipeline leaves (tanh, exp, log, sqrt, fabs, pow, atan,
/// maxnum, minnum), so that each libm import and native mapping meets the interpreter.
const MATH_OPS: &str = r#"import std.surrogates.{atan}

neuron Weird(v_th: float = 1.0) {
    state v = 0.0
    state w = 0.5
    v = v * 0.5 + tanh(input) + exp(-abs(input)) + log(1.0 + abs(input)) + sqrt(abs(input)) + (abs(input) + 1.0) ^ 0.5 + sigmoid(input) + max(w, -1.0) * min(v, 1.0) + atan(input)
    spike = fire(v - v_th, surrogate = atan())
    v = v * (1.0 - spike)
    w = w + 0.1 * spike
}

model MathOps(T: int = 3) {
    input x: image(channels = 2, height = 4, width = 4, T = T)
    x -> flatten -> linear(8) -> Weird -> readout.rate
}
"#;

#[test]
fn every_intrinsic_agrees_with_the_interpreter() {
    let c = compile_text(Path::new("mathops.snn"), MATH_OPS.to_string(), &[]);
    let g = &c.graphs[0];
    // The object file names its imports: each transcendental is a libm call.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cpu_mathops");
    let art = build_aot(g, &LowerOptions::with_batch(2), &dir).expect("AOT build");
    let object = std::fs::read(&art.object).expect("object");
    for f in ["tanhf", "expf", "logf", "powf", "atanf"] {
        assert!(
            object
                .windows(f.len() + 1)
                .any(|w| w[..f.len()] == *f.as_bytes() && w[f.len()] == 0),
            "{f} not imported"
        );
    }
    jit_agrees_with_interpreter("mathops", g, 2, 1e-4);
    // The membrane readout exposes the neuron's values directly, not only spike rates.
    let text = MATH_OPS.replace(
        "readout.rate",
        "readout.membrane(cell = Weird(v_th = 1000.0))",
    );
    let c = compile_text(Path::new("mathops_membrane.snn"), text, &[]);
    jit_agrees_with_interpreter("mathops (membrane)", &c.graphs[0], 2, 1e-4);
}

// ---- JIT against MLIR's own ExecutionEngine ---------------------------------------------------

/// Runs `g`'s forward through MLIR's ExecutionEngine (LLVM's JIT) over `args` (signature order).
fn execute_with_mlir(g: &Graph, batch: usize, args: &mut [Vec<f32>]) {
    let context = new_context();
    let module = lower_to_llvm(&context, &[g], &LowerOptions::with_batch(batch)).expect("lowers");
    // A packed entry point (one array of pointers) keeps the Rust side independent of the
    // argument count.
    let n = args.len();
    let mut wrapper = String::from("  llvm.func @snnc_test_packed(%args: !llvm.ptr) {\n");
    for i in 0..n {
        wrapper += &format!(
            "    %a{i} = llvm.getelementptr %args[{i}] : (!llvm.ptr) -> !llvm.ptr, !llvm.ptr\n    %p{i} = llvm.load %a{i} : !llvm.ptr -> !llvm.ptr\n"
        );
    }
    let ps: Vec<String> = (0..n).map(|i| format!("%p{i}")).collect();
    let tys = vec!["!llvm.ptr"; n].join(", ");
    wrapper += &format!(
        "    llvm.call @{}({}) : ({tys}) -> ()\n    llvm.return\n  }}\n",
        forward_symbol(g),
        ps.join(", ")
    );
    let mut text = module.as_operation().to_string();
    let end = text.rfind('}').expect("module end");
    text.insert_str(end, &wrapper);
    let module = Module::parse(&context, &text).expect("wrapped module parses");
    let engine = ExecutionEngine::new(&module, 2, &[], false, false);
    // `lower_to_llvm` calls the runtime's conv/dense kernels: bind them as the JIT does.
    for (name, f) in snnc::backend::cpu::jit::runtime_kernels() {
        // SAFETY: each pointer is the `extern "C"` function the module declares under `name`.
        unsafe { engine.register_symbol(name, f.cast_mut().cast()) };
    }
    let f = engine.lookup("snnc_test_packed");
    assert!(!f.is_null(), "JIT lookup failed");
    let mut ptrs: Vec<*mut f32> = args.iter_mut().map(|a| a.as_mut_ptr()).collect();
    // SAFETY: the wrapper takes one pointer to `n` buffer pointers, each sized from the
    // forward signature the lowering used.
    unsafe {
        let f: unsafe extern "C" fn(*mut *mut f32) = std::mem::transmute(f);
        f(ptrs.as_mut_ptr());
    }
}

#[test]
fn every_example_agrees_with_mlirs_execution_engine_whole_network() {
    for (rel, _) in common::snn_files("examples") {
        // ~30 s of scalar f32 work at 224x224 in both engines: on demand (below).
        if !rel.contains("att_resnet18") {
            agrees_with_mlir(&rel);
        }
    }
}

#[test]
#[ignore]
fn att_resnet18_agrees_with_mlirs_execution_engine_whole_network() {
    agrees_with_mlir("examples/att_resnet18.snn");
}

fn agrees_with_mlir(rel: &str) {
    common::split_every_parallel_loop();
    {
        let c = compile(rel, &example_overrides(rel));
        for g in &c.graphs {
            let what = format!("{rel}:{}", g.name);
            let mut ours = case(g, 2, 3).args;
            let mut theirs = ours.clone();
            let start = std::time::Instant::now();
            let model = CompiledModel::compile(g, &LowerOptions::with_batch(2))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let compiled = start.elapsed();
            model.forward_args(&mut ours).expect("forward");
            let ran = start.elapsed() - compiled;
            let start = std::time::Instant::now();
            execute_with_mlir(g, 2, &mut theirs);
            eprintln!(
                "{what}: Cranelift compile {:.0} ms + run {:.0} ms; MLIR ExecutionEngine compile + run {:.0} ms",
                compiled.as_secs_f64() * 1e3,
                ran.as_secs_f64() * 1e3,
                start.elapsed().as_secs_f64() * 1e3
            );
            for (b, (o, t)) in model
                .manifest()
                .buffers
                .iter()
                .zip(ours.iter().zip(&theirs))
            {
                if b.role == "output" || b.role == "state" {
                    let t: Vec<f64> = t.iter().map(|v| f64::from(*v)).collect();
                    assert_close(&format!("{what} {}", b.name), o, &t, 1e-6);
                }
            }
        }
    }
}

// ---- the C ABI --------------------------------------------------------------------------------

fn have_cc() -> bool {
    Command::new("cc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds golden_small ahead of time, compiles tests/c_abi/run_forward.c against its header and
/// links it with `-lGoldenSmall`, runs it on the PyTorch reference data and compares what it
/// prints with the interpreter.
#[test]
fn c_program_calls_the_shared_library_like_the_interpreter() {
    if !have_cc() {
        eprintln!("skipping: no C compiler (`cc`) on PATH");
        return;
    }
    let c = compile("tests/reference/golden_small.snn", &[]);
    let g = &c.graphs[0];
    let batch = 2;
    let tmp: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cpu_c_abi");
    let _ = std::fs::remove_dir_all(&tmp);
    let art = build_aot(g, &LowerOptions::with_batch(batch), &tmp).expect("AOT build");
    let lib = art
        .shared_library
        .unwrap_or_else(|| panic!("no shared library: {}", art.link_note.unwrap_or_default()));
    assert!(lib.ends_with("libGoldenSmall.so"));

    // Inputs, parameters and state in argument order, as raw little-endian f32.
    let args = golden_small_args(g, batch);
    let m = snnc::backend::cpu::Manifest::new(g, &LowerOptions::with_batch(batch), "")
        .expect("manifest");
    let mut blob = Vec::new();
    for (b, a) in m.buffers.iter().zip(&args) {
        if b.role != "output" {
            for v in a {
                blob.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    let data = tmp.join("args.bin");
    std::fs::write(&data, blob).expect("write args");

    let src = common::workspace().join("tests/c_abi/run_forward.c");
    let exe = tmp.join("run_forward");
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1"])
        .arg("-I")
        .arg(&tmp)
        .arg("-DSNNC_HEADER=\"GoldenSmall.h\"")
        .arg("-DSNNC_MODEL=GoldenSmall")
        .arg(&src)
        .arg("-L")
        .arg(&tmp)
        .arg("-lGoldenSmall")
        .arg(format!("-Wl,-rpath,{}", tmp.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("cc runs");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe)
        .arg(&data)
        .output()
        .expect("program runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);

    // The interpreter on the same data (f32 values widened to f64).
    let mut store = ParamStore::init(g, 0);
    for (b, a) in m.buffers.iter().zip(&args) {
        if b.role == "param" || b.role == "state" {
            let arr =
                ArrayD::from_shape_vec(IxDyn(&b.shape), a.iter().map(|v| f64::from(*v)).collect())
                    .expect("shape");
            store.set(g, &b.name, arr).expect("set");
        }
    }
    let input = ArrayD::from_shape_vec(
        IxDyn(&m.buffers[0].shape),
        args[0].iter().map(|v| f64::from(*v)).collect(),
    )
    .expect("shape");
    let interp = Interpreter::new(g, Options::default());
    let fwd = interp
        .forward(&store, &[("x", input)])
        .expect("interpreter");

    let mut seen = 0;
    for line in printed.lines() {
        let mut fields = line.split_whitespace();
        let k: usize = fields.next().expect("index").parse().expect("index");
        let got: Vec<f32> = fields.map(|v| v.parse().expect("float")).collect();
        let b = &m.buffers[k];
        let want: Vec<f64> = if b.role == "output" {
            fwd.outputs[0].iter().copied().collect()
        } else {
            let (_, v) = fwd
                .running_updates
                .iter()
                .find(|(p, _)| g.params[p.0].name == b.name)
                .expect("running update");
            v.iter().copied().collect()
        };
        assert_close(&format!("C: {}", b.name), &got, &want, 1e-4);
        seen += 1;
    }
    assert_eq!(seen, 3, "two running statistics and one output:\n{printed}");
}

// ---- errors -----------------------------------------------------------------------------------

fn translate_text(text: &str) -> Result<(), BackendError> {
    let context = new_context();
    let module = Module::parse(&context, text).expect("parses");
    let isa = snnc::backend::cpu::host_isa(false)?;
    let builder =
        cranelift_object::ObjectBuilder::new(isa, "t", cranelift_module::default_libcall_names())
            .expect("builder");
    let mut object = cranelift_object::ObjectModule::new(builder);
    translate_module(&module, &mut object, false).map(|_| ())
}

#[test]
fn unsupported_ops_are_named_in_the_error() {
    let err = translate_text(
        "llvm.func @f(%x: i32) -> i32 {\n  %0 = llvm.intr.ctpop(%x) : (i32) -> i32\n  llvm.return %0 : i32\n}\n",
    )
    .expect_err("ctpop is not supported");
    assert!(
        err.message.contains("llvm.intr.ctpop") && err.message.contains("@f"),
        "{err}"
    );

    let err = translate_text(
        "llvm.func @g(%x: i32) -> i32 {\n  llvm.switch %x : i32, ^bb1 [\n    1: ^bb1\n  ]\n^bb1:\n  llvm.return %x : i32\n}\n",
    )
    .expect_err("switch is not supported");
    assert!(err.message.contains("llvm.switch"), "{err}");

    let err = translate_text("llvm.mlir.global internal @k(1.0 : f32) : f32\n")
        .expect_err("globals are not supported");
    assert!(err.message.contains("llvm.mlir.global"), "{err}");

    let err = translate_text("llvm.func @h(%x: f16) -> f16 {\n  llvm.return %x : f16\n}\n")
        .expect_err("f16 is not supported");
    assert!(err.message.contains("f16"), "{err}");
}

#[test]
fn aggregates_integers_and_calls_translate_and_run() {
    // insertvalue/extractvalue, i1 arithmetic, sext of i1, select on aggregates, GEP into a
    // struct, alloca, a call between defined functions: none appear in today's pipeline output
    // but all are valid LLVM dialect the translator claims to handle.
    let text = r#"
llvm.func @helper(%a: f32, %b: f32) -> f32 {
  %0 = llvm.intr.maxnum(%a, %b) : (f32, f32) -> f32
  llvm.return %0 : f32
}
llvm.func @f(%out: !llvm.ptr, %x: f32) {
  %c0 = llvm.mlir.constant(0 : i32) : i32
  %c1 = llvm.mlir.constant(1 : i64) : i64
  %t = llvm.mlir.constant(true) : i1
  %p = llvm.mlir.poison : !llvm.struct<(f32, array<2 x i64>)>
  %s0 = llvm.insertvalue %x, %p[0] : !llvm.struct<(f32, array<2 x i64>)>
  %s1 = llvm.insertvalue %c1, %s0[1, 1] : !llvm.struct<(f32, array<2 x i64>)>
  %e = llvm.extractvalue %s1[1, 1] : !llvm.struct<(f32, array<2 x i64>)>
  %neg = llvm.sext %t : i1 to i64
  %sum = llvm.add %e, %neg : i64
  %f = llvm.sitofp %sum : i64 to f32
  %nan = llvm.mlir.constant(0x7FC00000 : f32) : f32
  %m = llvm.call @helper(%nan, %x) : (f32, f32) -> f32
  %slot = llvm.alloca %c1 x !llvm.struct<(f32, f32)> : (i64) -> !llvm.ptr
  %q = llvm.getelementptr %slot[0, 1] : (!llvm.ptr) -> !llvm.ptr, !llvm.struct<(f32, f32)>
  llvm.store %m, %q : f32, !llvm.ptr
  %r = llvm.load %q : !llvm.ptr -> f32
  %o1 = llvm.getelementptr %out[1] : (!llvm.ptr) -> !llvm.ptr, f32
  llvm.store %f, %out : f32, !llvm.ptr
  llvm.store %r, %o1 : f32, !llvm.ptr
  %b = llvm.xor %t, %t : i1
  %sel = llvm.select %b, %s0, %s1 : i1, !llvm.struct<(f32, array<2 x i64>)>
  %y = llvm.extractvalue %sel[0] : !llvm.struct<(f32, array<2 x i64>)>
  %o2 = llvm.getelementptr %out[2] : (!llvm.ptr) -> !llvm.ptr, f32
  llvm.store %y, %o2 : f32, !llvm.ptr
  %z = llvm.zext %c0 : i32 to i64
  %zf = llvm.uitofp %z : i64 to f32
  %o3 = llvm.getelementptr %out[3] : (!llvm.ptr) -> !llvm.ptr, f32
  llvm.store %zf, %o3 : f32, !llvm.ptr
  llvm.return
}
"#;
    let context = new_context();
    let module = Module::parse(&context, text).expect("parses");
    let isa = snnc::backend::cpu::host_isa(false).expect("isa");
    let mut module_jit = cranelift_jit::JITModule::new(cranelift_jit::JITBuilder::with_isa(
        isa,
        cranelift_module::default_libcall_names(),
    ));
    let t = translate_module(&module, &mut module_jit, true).expect("translates");
    module_jit.finalize_definitions().expect("links");
    let id = t
        .defined
        .iter()
        .find(|(n, _)| n == "f")
        .map(|(_, id)| *id)
        .expect("f");
    let code = module_jit.get_finalized_function(id);
    let mut out = [f32::NAN; 4];
    // SAFETY: `f` takes a pointer to 4 floats and an f32 under the C calling convention.
    unsafe {
        let f: unsafe extern "C" fn(*mut f32, f32) = std::mem::transmute(code);
        f(out.as_mut_ptr(), 2.5);
    }
    // 1 + sext(true) = 0; maxnum(NaN, 2.5) = 2.5; the select picks %s1 (xor true true = false)
    // whose field 0 is %x.
    assert_eq!(out, [0.0, 2.5, 2.5, 0.0]);
}

/// The training functions (`@<model>_forward_train`, `@<model>_backward`, lowered by
/// `mlir::grad`) translate and compile for every example: the op set they leave is covered.
/// Running them against the interpreter's gradients is left to the runtime that drives them.
#[test]
fn training_functions_of_every_example_translate() {
    use snnc::mlir::grad::lower_training_module;
    use snnc::mlir::pipeline::{LLVM_PIPELINE, check_llvm_only, run_pipeline};
    for (rel, _) in common::snn_files("examples") {
        let c = compile(&rel, &example_overrides(&rel));
        let context = new_context();
        let graphs: Vec<&Graph> = c.graphs.iter().collect();
        let mut module = lower_training_module(&context, &graphs, &LowerOptions::with_batch(2))
            .unwrap_or_else(|e| panic!("{rel}: {e}"));
        run_pipeline(&context, &mut module, LLVM_PIPELINE).expect("pipeline");
        check_llvm_only(&module).expect("llvm only");
        let isa = snnc::backend::cpu::host_isa(false).expect("isa");
        let builder = cranelift_object::ObjectBuilder::new(
            isa,
            "t",
            cranelift_module::default_libcall_names(),
        )
        .expect("builder");
        let mut object = cranelift_object::ObjectModule::new(builder);
        let t =
            translate_module(&module, &mut object, false).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(t.defined.len(), 2 * c.graphs.len(), "{rel}");
    }
}
