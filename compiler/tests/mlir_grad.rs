//! Tests of the backward lowering: `@<model>_forward_train` + `@<model>_backward` JIT-run
//! through MLIR's ExecutionEngine against PyTorch's golden gradients and the interpreter.

mod common;

use common::{compile, compile_text, mlir_opt, random_f32, read_npy, run_mlir_opt};

use melior::ExecutionEngine;
use melior::ir::Module;
use ndarray::{ArrayD, IxDyn};
use snnc::interp::{Interpreter, Mode, Options, ParamStore, dropout_mask, loss};
use snnc::ir::{Graph, Op};
use snnc::mlir::context::new_context;
use snnc::mlir::grad::{
    TrainArg, TrainRole, backward_signature, backward_symbol, dropout_mask_name, dropout_nodes,
    forward_train_signature, forward_train_symbol, lower_training_module_with,
};
use snnc::mlir::lower::LoopForm;
use snnc::mlir::optim::{lower_optimizer, optimizer_signature, optimizer_symbol};
use snnc::mlir::pipeline::{check_llvm_only, run_pipeline, verify};
use snnc::mlir::{LLVM_PIPELINE, LowerOptions, Stage, emit};
use std::path::Path;

/// A packed entry point `@<symbol>_packed(ptr)` taking one array of `n` buffer pointers, so
/// the Rust side does not depend on the argument count.
fn packed_wrapper(symbol: &str, n: usize) -> String {
    let mut w = format!("  llvm.func @{symbol}_packed(%args: !llvm.ptr) {{\n");
    for i in 0..n {
        w += &format!(
            "    %a{i} = llvm.getelementptr %args[{i}] : (!llvm.ptr) -> !llvm.ptr, !llvm.ptr\n    %p{i} = llvm.load %a{i} : !llvm.ptr -> !llvm.ptr\n"
        );
    }
    let ps: Vec<String> = (0..n).map(|i| format!("%p{i}")).collect();
    let tys = vec!["!llvm.ptr"; n].join(", ");
    w += &format!(
        "    llvm.call @{symbol}({}) : ({tys}) -> ()\n    llvm.return\n  }}\n",
        ps.join(", ")
    );
    w
}

/// Both CPU loop forms, and the flat one-dimension-per-loop forms the GPU backend compiles
/// (with convolutions and dense layers as `snn_gemm_f32` products, bound here to the runtime's
/// CPU kernel): running them here checks their index arithmetic without a GPU.
const FORMS: [LoopForm; 3] = [LoopForm::Nested, LoopForm::Flat, LoopForm::FlatGemm];

/// JIT-compiles the training functions of `g` (loops in `form`) and hands `body` a caller: `call(symbol, args)`
/// runs one function over `args` (one buffer per argument, in signature order).
fn with_training_jit(
    g: &Graph,
    batch: usize,
    form: LoopForm,
    body: impl FnOnce(&dyn Fn(&str, &mut [Vec<f32>])),
) {
    // Intermediate gradients start as NaN: one read before its first write would show.
    let opts = LowerOptions {
        poison_gradients: true,
        ..LowerOptions::with_batch(batch)
    };
    let context = new_context();
    let mut module = lower_training_module_with(&context, &[g], &opts, form).expect("lowers");
    verify(&context, &module).expect("verifies");
    run_pipeline(&context, &mut module, LLVM_PIPELINE).expect("pipeline");
    check_llvm_only(&module).expect("llvm only");
    let fsig = forward_train_signature(g, &opts).expect("signature");
    let bsig = backward_signature(g, &opts).expect("signature");
    let mut text = module.as_operation().to_string();
    let end = text.rfind('}').expect("module end");
    text.insert_str(end, &packed_wrapper(&backward_symbol(g), bsig.len()));
    text.insert_str(end, &packed_wrapper(&forward_train_symbol(g), fsig.len()));
    let module = Module::parse(&context, &text).expect("wrapped module parses");
    let engine = ExecutionEngine::new(&module, 2, &[], false, false);
    for (name, f) in snnc::backend::cpu::jit::runtime_kernels() {
        // SAFETY: each pointer is the `extern "C"` function the module declares under `name`.
        unsafe { engine.register_symbol(name, f.cast_mut().cast()) };
    }
    let sizes =
        |sig: &[TrainArg]| -> Vec<usize> { sig.iter().map(|a| a.shape.iter().product()).collect() };
    let (fsizes, bsizes) = (sizes(&fsig), sizes(&bsig));
    let call = |symbol: &str, args: &mut [Vec<f32>]| {
        let expected = if symbol == forward_train_symbol(g) {
            &fsizes
        } else {
            &bsizes
        };
        let got: Vec<usize> = args.iter().map(Vec::len).collect();
        assert_eq!(&got, expected, "{symbol}: buffer sizes");
        let f = engine.lookup(&format!("{symbol}_packed"));
        assert!(!f.is_null(), "JIT lookup of {symbol} failed");
        let mut ptrs: Vec<*mut f32> = args.iter_mut().map(|a| a.as_mut_ptr()).collect();
        // SAFETY: the wrapper takes one pointer to `n` buffer pointers; every buffer was
        // checked above against the signature the lowering used, so accesses stay in bounds.
        unsafe {
            let f: unsafe extern "C" fn(*mut *mut f32) = std::mem::transmute(f);
            f(ptrs.as_mut_ptr());
        }
    };
    body(&call);
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// Relative tolerance `rel` with an absolute floor of `rel` × the tensor's largest magnitude.
/// `zero_floor` is the absolute tolerance of a tensor that is zero by construction (a conv bias
/// feeding batchnorm: batchnorm's dx sums to zero per channel): in f32 that sum is pure
/// cancellation noise (1e-9 .. 1e-3 here, against 1e-18 in f64), so it is only checked to be
/// small against the model's largest gradient.
fn assert_close_floor(what: &str, got: &[f32], want: &[f64], rel: f64, zero_floor: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = max_abs(want);
    let by_construction_zero = scale < 1e-9 * zero_floor;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = if by_construction_zero {
            zero_floor
        } else {
            (rel * w.abs().max(scale)).max(1e-12)
        };
        let err = (f64::from(*g) - w).abs();
        assert!(
            err <= tol,
            "{what}[{i}]: got {g:e}, want {w:e} (error {err:e}, tolerance {tol:e})"
        );
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f64], rel: f64) {
    assert_close_floor(what, got, want, rel, 0.0);
}

fn to_f32(a: &ArrayD<f64>) -> Vec<f32> {
    a.iter().map(|v| *v as f32).collect()
}

/// The interpreter's dropout seed in these tests; the compiled functions get its masks.
const DROPOUT_SEED: u64 = 0x5eed;

/// The interpreter's dropout mask for mask argument `name` of `g`, as f32.
fn interpreter_mask(g: &Graph, name: &str, shape: &[usize]) -> Vec<f32> {
    let (i, p) = dropout_nodes(g)
        .into_iter()
        .find(|(i, _)| dropout_mask_name(&g.nodes[*i]) == name)
        .unwrap_or_else(|| panic!("no dropout node for `{name}`"));
    to_f32(&dropout_mask(DROPOUT_SEED, i, shape, p))
}

/// Buffers for `@<model>_forward_train`: inputs, parameters and dropout masks from the
/// callbacks, running variance 1 (PyTorch's start), everything written by the function
/// NaN-poisoned.
fn forward_args(
    sig: &[TrainArg],
    input: &dyn Fn(&str) -> Vec<f32>,
    param: &dyn Fn(&str) -> Vec<f32>,
    mask: &dyn Fn(&str, &[usize]) -> Vec<f32>,
) -> Vec<Vec<f32>> {
    sig.iter()
        .map(|a| {
            let size = a.shape.iter().product();
            match a.role {
                TrainRole::Input => input(&a.name),
                TrainRole::Param => param(&a.name),
                TrainRole::DropoutMask => mask(&a.name, &a.shape),
                TrainRole::State if a.name.ends_with("running_var") => vec![1.0; size],
                TrainRole::State => vec![0.0; size],
                _ => vec![f32::NAN; size],
            }
        })
        .collect()
}

/// Buffers for `@<model>_backward` from the forward_train buffers (matched by role and name)
/// and the output gradients; results NaN-poisoned so that unwritten elements show.
fn backward_args(
    fsig: &[TrainArg],
    fargs: &[Vec<f32>],
    bsig: &[TrainArg],
    d_outputs: &[Vec<f32>],
) -> Vec<Vec<f32>> {
    let mut outs = d_outputs.iter();
    bsig.iter()
        .map(|a| match a.role {
            TrainRole::DOutput => outs.next().expect("one gradient per output").clone(),
            TrainRole::DParam | TrainRole::DInput => {
                vec![f32::NAN; a.shape.iter().product()]
            }
            role => {
                let k = fsig
                    .iter()
                    .position(|f| f.role == role && f.name == a.name)
                    .unwrap_or_else(|| panic!("{} has no forward buffer", a.name));
                fargs[k].clone()
            }
        })
        .collect()
}

fn buffer<'a>(sig: &[TrainArg], args: &'a [Vec<f32>], role: TrainRole, name: &str) -> &'a [f32] {
    let k = sig
        .iter()
        .position(|a| a.role == role && a.name == name)
        .unwrap_or_else(|| panic!("no {role:?} argument `{name}`"));
    &args[k]
}

#[test]
fn golden_small_gradients_match_pytorch() {
    let c = compile("tests/reference/golden_small.snn", &[]);
    let g = &c.graphs[0];
    let dir = common::workspace().join("tests/reference/golden_small");
    let batch = 2;
    let opts = LowerOptions::with_batch(batch);
    let fsig = forward_train_signature(g, &opts).expect("signature");
    let bsig = backward_signature(g, &opts).expect("signature");
    let x = read_npy(&dir.join("input.npy"));
    let target = read_npy(&dir.join("target.npy"));
    let classes: Vec<usize> = target
        .outer_iter()
        .map(|row| row.iter().position(|v| *v == 1.0).expect("one-hot"))
        .collect();
    for form in FORMS {
        let mut fargs = forward_args(
            &fsig,
            &|_| to_f32(&x),
            &|name| to_f32(&read_npy(&dir.join(format!("param.{name}.npy")))),
            &|name, _| panic!("golden_small has no dropout, yet `{name}`"),
        );
        with_training_jit(g, batch, form, |call| {
            call(&forward_train_symbol(g), &mut fargs);
            let readout = buffer(&fsig, &fargs, TrainRole::Output, "readout0");
            assert_close(
                "readout0",
                readout,
                read_npy(&dir.join("out.readout0.npy"))
                    .as_slice()
                    .expect("contiguous"),
                1e-5,
            );
            // The seed is the MSE gradient of our own (f32) readout, as in training.
            let r = ArrayD::from_shape_vec(
                IxDyn(&[batch, 3]),
                readout.iter().map(|v| f64::from(*v)).collect(),
            )
            .expect("shape");
            let (_, d_out) = loss::mse_one_hot(&r, &classes).expect("loss");
            let mut bargs = backward_args(&fsig, &fargs, &bsig, &[to_f32(&d_out)]);
            call(&backward_symbol(g), &mut bargs);
            let wanted: Vec<(usize, Vec<f64>)> = bsig
                .iter()
                .enumerate()
                .filter_map(|(k, a)| {
                    let file = match a.role {
                        TrainRole::DParam => dir.join(format!("grad.{}.npy", &a.name[1..])),
                        TrainRole::DInput => dir.join("grad.input.npy"),
                        _ => return None,
                    };
                    Some((k, read_npy(&file).iter().copied().collect()))
                })
                .collect();
            assert_eq!(wanted.len(), 12, "11 trainable parameters and the input");
            let largest = wanted.iter().map(|(_, w)| max_abs(w)).fold(0.0, f64::max);
            for (k, want) in &wanted {
                let what = format!("{form:?} {}", bsig[*k].name);
                assert_close_floor(&what, &bargs[*k], want, 1e-4, 1e-3 * largest);
            }
        });
    }
}

/// Runs forward_train + backward through the JIT and the interpreter (f64, train mode) on the
/// same f32-representable data; compares outputs, then every parameter and input gradient
/// within `rel` (see the callers for why it differs per model).
fn gradients_agree_with_interpreter(what: &str, g: &Graph, batch: usize, seed: u64, rel: f64) {
    gradients_agree_with_interpreter_on(what, g, batch, seed, rel, Inputs::Uniform);
}

/// The model inputs of [`gradients_agree_with_interpreter_on`].
#[derive(Clone, Copy)]
enum Inputs {
    /// Uniform in [0, 2).
    Uniform,
    /// Rounded to 0, 1 or 2, so that maxima are tied all over (the first in row-major order
    /// must win on both sides).
    Integers,
    /// Uniform in [offset, offset + 2): feature maps whose mean dwarfs their spread, where
    /// one-pass batchnorm statistics would cancel.
    Offset(f32),
}

/// [`gradients_agree_with_interpreter`] on the given kind of inputs.
fn gradients_agree_with_interpreter_on(
    what: &str,
    g: &Graph,
    batch: usize,
    seed: u64,
    rel: f64,
    kind: Inputs,
) {
    let opts = LowerOptions::with_batch(batch);
    let fsig = forward_train_signature(g, &opts).expect("signature");
    let bsig = backward_signature(g, &opts).expect("signature");
    let mut store = ParamStore::init(g, seed);
    for v in &mut store.values {
        v.mapv_inplace(|x| f64::from(x as f32));
    }
    let inputs: Vec<(String, ArrayD<f64>)> = fsig
        .iter()
        .enumerate()
        .filter(|(_, a)| a.role == TrainRole::Input)
        .map(|(k, a)| {
            let size = a.shape.iter().product();
            let data = random_f32(size, seed * 31 + k as u64, 0.0, 2.0);
            let value = |v: f32| match kind {
                Inputs::Uniform => v,
                Inputs::Integers => v.round(),
                Inputs::Offset(offset) => v + offset,
            };
            let arr = ArrayD::from_shape_vec(
                IxDyn(&a.shape),
                data.iter().map(|v| f64::from(value(*v))).collect(),
            )
            .expect("shape");
            (a.name.clone(), arr)
        })
        .collect();
    let interp = Interpreter::new(
        g,
        Options {
            mode: Mode::Train,
            dropout_seed: DROPOUT_SEED,
            ..Options::default()
        },
    );
    let named: Vec<(&str, ArrayD<f64>)> = inputs
        .iter()
        .map(|(n, a)| (n.as_str(), a.clone()))
        .collect();
    let fwd = interp.forward(&store, &named).expect("interpreter forward");
    let d_outputs: Vec<ArrayD<f64>> = fwd
        .outputs
        .iter()
        .enumerate()
        .map(|(k, o)| {
            let data = random_f32(o.len(), seed * 7 + 1000 + k as u64, -1.0, 1.0);
            ArrayD::from_shape_vec(o.raw_dim(), data.iter().map(|v| f64::from(*v)).collect())
                .expect("shape")
        })
        .collect();
    let grads = interp
        .backward(&store, &fwd, &d_outputs)
        .expect("interpreter backward");
    for form in FORMS {
        let what = format!("{what} ({form:?})");
        let mut fargs = forward_args(
            &fsig,
            &|name| {
                let (_, a) = inputs.iter().find(|(n, _)| n == name).expect("input");
                to_f32(a)
            },
            &|name| to_f32(store.get(g, name).expect("param")),
            &|name, shape| interpreter_mask(g, name, shape),
        );
        with_training_jit(g, batch, form, |call| {
            call(&forward_train_symbol(g), &mut fargs);
            let outs: Vec<&Vec<f32>> = fsig
                .iter()
                .zip(&fargs)
                .filter(|(a, _)| a.role == TrainRole::Output)
                .map(|(_, b)| b)
                .collect();
            for (k, want) in fwd.outputs.iter().enumerate() {
                let want: Vec<f64> = want.iter().copied().collect();
                assert_close(&format!("{what} output {k}"), outs[k], &want, 1e-4);
            }
            // Batchnorm's running statistics, updated in place from the batch's.
            for (p, want) in &fwd.running_updates {
                let name = &g.params[p.0].name;
                let got = buffer(&fsig, &fargs, TrainRole::State, name);
                let want: Vec<f64> = want.iter().copied().collect();
                assert_close(&format!("{what} {name}"), got, &want, 1e-4);
            }
            let d_out: Vec<Vec<f32>> = d_outputs.iter().map(to_f32).collect();
            let mut bargs = backward_args(&fsig, &fargs, &bsig, &d_out);
            call(&backward_symbol(g), &mut bargs);
            let mut pairs: Vec<(String, &[f32], Vec<f64>)> = Vec::new();
            for (p, want) in g.params.iter().zip(&grads.params) {
                let Some(want) = want else {
                    assert!(!p.role.trainable(), "{}: no interpreter gradient", p.name);
                    continue;
                };
                let name = format!("d{}", p.name);
                let got = buffer(&bsig, &bargs, TrainRole::DParam, &name);
                pairs.push((name, got, want.iter().copied().collect()));
            }
            let trainable = g.params.iter().filter(|p| p.role.trainable()).count();
            assert_eq!(pairs.len(), trainable);
            for (name, want) in &grads.inputs {
                let name = format!("d{name}");
                let got = buffer(&bsig, &bargs, TrainRole::DInput, &name);
                pairs.push((name, got, want.iter().copied().collect()));
            }
            let largest = pairs.iter().map(|(_, _, w)| max_abs(w)).fold(0.0, f64::max);
            for (name, got, want) in &pairs {
                assert_close_floor(&format!("{what} {name}"), got, want, rel, 1e-3 * largest);
            }
        });
    }
}

/// The examples at T = 4 compare within 1e-3, not 1e-4: their batchnorm and conv weight
/// gradients are f32 sums over up to T·B·H·W = 9,248 terms per channel (the interpreter sums in
/// f64), which leaves up to 4e-4 of the tensor's largest magnitude. Spikes do not flip on these
/// inputs: the outputs are compared first and agree to 1e-4 (exactly, for spike counts).
#[test]
fn custom_neuron_gradients_agree_with_the_interpreter() {
    let c = compile("examples/custom_neuron.snn", &[("T", "4")]);
    for g in &c.graphs {
        gradients_agree_with_interpreter("custom_neuron", g, 2, 7, 1e-3);
    }
}

#[test]
fn nmnist_gradients_agree_with_the_interpreter() {
    let c = compile("examples/nmnist.snn", &[("T", "4")]);
    for g in &c.graphs {
        gradients_agree_with_interpreter(&format!("nmnist:{}", g.name), g, 2, 7, 1e-3);
    }
}

/// A model small enough to read whole, with one op of each common kind and a learnable neuron
/// scalar (PLIF's `w`).
const TINY: &str = "import std.neurons.{LIF, PLIF}\nmodel Tiny(T: int = 2) {\n    input x: image(channels = 1, height = 4, width = 4, T = T)\n    x -> conv(2, 3) -> bn -> LIF -> pool.max(2) -> flatten -> linear(2) -> PLIF -> readout.rate\n}\n";

fn tiny() -> Graph {
    let c = compile_text(Path::new("tiny.snn"), TINY.to_string(), &[]);
    c.graphs.into_iter().next().expect("one model")
}

#[test]
fn tiny_model_gradients_agree_with_the_interpreter() {
    gradients_agree_with_interpreter("tiny", &tiny(), 3, 5, 1e-4);
}

/// Attention straight on integer-valued inputs: the temporal, channel and spatial max poolings
/// see ties everywhere, in each of the forward's argmax forms (vector lanes within a row for
/// widths that are a multiple of four, lanes as outputs along a kept last axis with a scalar
/// tail, one element at a time otherwise), and the backward must route every gradient to the
/// first maximum as the interpreter does.
const TIES: &str = "import std.neurons.{LIF}\nimport std.attention.{TCSA}\nmodel Ties8(T: int = 4) {\n    input x: image(channels = 3, height = 5, width = 8, T = T)\n    x -> attend(TCSA(r_t = 2, r_c = 3, k = 3)) -> LIF(v_th = 0.5) -> flatten -> linear(3) -> readout.rate\n}\nmodel Ties6(T: int = 4) {\n    input x: image(channels = 3, height = 5, width = 6, T = T)\n    x -> attend(TCSA(r_t = 2, r_c = 3, k = 3)) -> LIF(v_th = 0.5) -> flatten -> linear(3) -> readout.rate\n}\n";

#[test]
fn tied_maxima_route_gradients_like_the_interpreter() {
    let c = compile_text(Path::new("ties.snn"), TIES.to_string(), &[]);
    assert_eq!(c.graphs.len(), 2);
    for g in &c.graphs {
        gradients_agree_with_interpreter_on(
            &format!("ties:{}", g.name),
            g,
            2,
            11,
            1e-4,
            Inputs::Integers,
        );
    }
}

/// Batchnorm straight on inputs whose mean (about 100) dwarfs their spread (0.58), plain and
/// left to its 2×2 average pool: the one-pass statistics, shifted by each channel's first
/// value, must agree with the interpreter's two-pass f64 ones (outputs, running statistics and
/// gradients) as closely as on centred inputs.
const OFFSET: &str = "import std.neurons.{LIF}\nmodel OffsetPlain(T: int = 3) {\n    input x: image(channels = 2, height = 8, width = 8, T = T)\n    x -> bn -> LIF(v_th = 0.5) -> flatten -> linear(3) -> readout.rate\n}\nmodel OffsetPooled(T: int = 3) {\n    input x: image(channels = 2, height = 8, width = 8, T = T)\n    x -> bn -> pool.avg(2) -> LIF(v_th = 0.5) -> flatten -> linear(3) -> readout.rate\n}\n";

#[test]
fn batchnorm_statistics_hold_on_offset_inputs() {
    let c = compile_text(Path::new("offset.snn"), OFFSET.to_string(), &[]);
    assert_eq!(c.graphs.len(), 2);
    for g in &c.graphs {
        let what = format!("offset:{}", g.name);
        gradients_agree_with_interpreter_on(&what, g, 2, 13, 1e-4, Inputs::Offset(100.0));
    }
}

/// What the other models miss: overlapping max and average windows (scattered adds done
/// sequentially), a strided padded conv, a membrane-shortcut residual (add), dropout (p = 0:
/// the interpreter's mask is all ones, so both sides are the identity) and a membrane readout.
const MIXED: &str = "import std.neurons.{LIF}\nimport std.blocks.{MSRes}\nmodel Mixed(T: int = 3) {\n    input x: image(channels = 2, height = 9, width = 9, T = T)\n    x -> conv(4, 3, stride = 2) -> bn -> LIF -> pool.max(3, stride = 1) -> MSRes(4)\n      -> pool.avg(2, stride = 1) -> flatten -> dropout(0.0) -> linear(3)\n      -> readout.membrane(cell = LIF(v_th = 1000.0))\n}\n";

/// Dropout that drops (p > 0): on a [T, B, C, H, W] value before batchnorm and on a [T, B, N]
/// one before a dense layer. The compiled functions get the interpreter's masks for the same
/// seed, so outputs and gradients must agree.
const DROPOUT: &str = "import std.neurons.{LIF}\nmodel Drop(T: int = 3) {\n    input x: image(channels = 2, height = 6, width = 6, T = T)\n    x -> conv(4, 3) -> dropout(0.25) -> bn -> LIF -> flatten -> dropout(0.5) -> linear(3) -> readout.rate\n}\n";

#[test]
fn dropout_gradients_agree_with_the_interpreter() {
    let c = compile_text(Path::new("drop.snn"), DROPOUT.to_string(), &[]);
    let g = &c.graphs[0];
    assert_eq!(dropout_nodes(g).len(), 2);
    gradients_agree_with_interpreter("dropout", g, 2, 9, 1e-4);
}

#[test]
fn mixed_model_gradients_agree_with_the_interpreter() {
    let c = compile_text(Path::new("mixed.snn"), MIXED.to_string(), &[]);
    gradients_agree_with_interpreter("mixed", &c.graphs[0], 2, 3, 1e-4);
}

/// Temporal attention on 64 dense features: its pooling sums a contiguous axis of 64, which
/// the flat forms split into warp-wide rows (`Fx::split_fold`).
const WIDE: &str = "import std.neurons.{LIF}\nimport std.attention.{TA}\nmodel Wide(T: int = 4) {\n    input x: image(channels = 2, height = 4, width = 4, T = T)\n    x -> flatten -> linear(64) -> bn -> attend(TA(r_t = 2)) -> LIF -> linear(3) -> readout.rate\n}\n";

#[test]
fn wide_attention_gradients_agree_with_the_interpreter() {
    let c = compile_text(Path::new("wide.snn"), WIDE.to_string(), &[]);
    gradients_agree_with_interpreter("wide", &c.graphs[0], 2, 5, 1e-4);
}

#[test]
fn mlir_grad_snapshot_of_a_tiny_model() {
    let (text, _) = emit(&[&tiny()], &LowerOptions::with_batch(1), Stage::MlirGrad).expect("emits");
    insta::assert_snapshot!("mlir_grad__tiny", text);
}

#[test]
fn signatures_follow_the_documented_abi() {
    let c = compile("tests/reference/golden_small.snn", &[]);
    let g = &c.graphs[0];
    let opts = LowerOptions::with_batch(2);
    let fsig = forward_train_signature(g, &opts).expect("signature");
    let bsig = backward_signature(g, &opts).expect("signature");
    let fwd = snnc::mlir::forward_signature(g, &opts).expect("signature");
    // forward_train extends the forward's arguments.
    assert!(fwd.iter().zip(&fsig).all(|(f, t)| f.name == t.name
        && f.shape == t.shape
        && f.role.as_str() == t.role.as_str()));
    let roles: Vec<TrainRole> = bsig.iter().map(|a| a.role).collect();
    let mut sorted = roles.clone();
    let rank = |r: &TrainRole| match r {
        TrainRole::Input => 0,
        TrainRole::Param | TrainRole::State => 1,
        TrainRole::Saved => 2,
        TrainRole::ScanStates => 3,
        TrainRole::DropoutMask => 4,
        TrainRole::DOutput => 5,
        TrainRole::DParam => 6,
        TrainRole::DInput => 7,
        TrainRole::Output => 8,
        TrainRole::OptimizerState | TrainRole::OptimizerScalars => 9,
    };
    sorted.sort_by_key(rank);
    assert_eq!(roles, sorted, "backward arguments are grouped in ABI order");
    assert!(!roles.contains(&TrainRole::Output));
    let dparams: Vec<&str> = bsig
        .iter()
        .filter(|a| a.role == TrainRole::DParam)
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(dparams.len(), 11);
    assert!(!dparams.iter().any(|n| n.contains("running")));
    // Saved values skip model inputs (passed as inputs already) and keep GradGraph order.
    let saved: Vec<&str> = bsig
        .iter()
        .filter(|a| a.role == TrainRole::Saved)
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(saved.first(), Some(&"conv0"));
    assert!(!saved.contains(&"x"));
    let states: Vec<(&str, &[usize])> = bsig
        .iter()
        .filter(|a| a.role == TrainRole::ScanStates)
        .map(|a| (a.name.as_str(), a.shape.as_slice()))
        .collect();
    // LIF over [T=4, B=2, C=4, 8, 8] (same padding) and [T, B, 3]: one state (v), elements = the rest.
    assert_eq!(
        states,
        [
            ("lif0.states", &[4, 1, 2 * 4 * 8 * 8][..]),
            ("lif1.states", &[4, 1, 6][..])
        ]
    );
    let scans = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Scan { .. }))
        .count();
    assert_eq!(states.len(), scans);
}

#[test]
fn mlir_opt_accepts_the_training_functions_of_every_example() {
    let Some(tool) = mlir_opt() else {
        eprintln!("skipping: mlir-opt-22 is neither on PATH nor at /usr/lib/llvm-22/bin/mlir-opt");
        return;
    };
    let pipeline = format!("--pass-pipeline={LLVM_PIPELINE}");
    let mut files: Vec<String> = common::snn_files("examples")
        .into_iter()
        .map(|(rel, _)| rel)
        .collect();
    files.push("tests/reference/golden_small.snn".into());
    for rel in files {
        let c = compile(&rel, &[]);
        for g in &c.graphs {
            let what = format!("{rel}:{}", g.name);
            let (text, _) = emit(&[g], &LowerOptions::with_batch(2), Stage::MlirGrad)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(text.contains(&format!("func.func @{}(", backward_symbol(g))));
            run_mlir_opt(&tool, &["--verify-each"], &text, &what);
            let lowered = run_mlir_opt(&tool, &["--verify-each", &pipeline], &text, &what);
            assert!(
                !lowered.contains("func.func") && !lowered.contains("memref."),
                "{what}"
            );
        }
    }
}

#[test]
fn cli_emits_mlir_grad_and_llvm_mlir_includes_the_backward() {
    let file = common::workspace().join("tests/reference/golden_small.snn");
    let out = common::snnc_ok(|c| {
        c.args(["build", "--emit", "mlir-grad", "--batch", "2"])
            .arg(&file)
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("func.func @GoldenSmall_forward_train("),
        "{text}"
    );
    assert!(text.contains("func.func @GoldenSmall_backward("));
    assert!(text.contains("snnc.role = \"d_param\""));
    let out = common::snnc_ok(|c| c.args(["build", "--emit", "llvm-mlir"]).arg(&file));
    let text = String::from_utf8_lossy(&out.stdout);
    for f in ["forward", "forward_train", "backward"] {
        assert!(
            text.contains(&format!("llvm.func @GoldenSmall_{f}(")),
            "{f}"
        );
    }
}

/// `@<model>_optimizer`, run here through MLIR's ExecutionEngine (its loops sequential), takes
/// the steps of the driver's f64 optimiser for Adam with L2 decay and AdamW, on every trainable
/// parameter of a model with parameters of rank 1, 2 and 4 (and running statistics, which it
/// leaves alone). The GPU backend maps the same loops to kernels.
#[test]
fn generated_optimizer_steps_match_the_host_optimizer() {
    use snn_runtime::train::{Optimizer, OptimizerConfig};
    let g = tiny();
    let ranks: Vec<usize> = g.params.iter().map(|p| p.shape.len()).collect();
    assert!([1, 2, 4].iter().all(|r| ranks.contains(r)), "{ranks:?}");
    let context = new_context();
    let mut module = Module::new(melior::ir::Location::unknown(&context));
    lower_optimizer(&context, &module, &g).expect("lowers");
    verify(&context, &module).expect("verifies");
    run_pipeline(&context, &mut module, LLVM_PIPELINE).expect("pipeline");
    check_llvm_only(&module).expect("llvm only");
    let sig = optimizer_signature(&g);
    let mut text = module.as_operation().to_string();
    let end = text.rfind('}').expect("module end");
    text.insert_str(end, &packed_wrapper(&optimizer_symbol(&g), sig.len()));
    let module = Module::parse(&context, &text).expect("wrapped module parses");
    let engine = ExecutionEngine::new(&module, 2, &[], false, false);
    let f = engine.lookup(&format!("{}_packed", optimizer_symbol(&g)));
    assert!(!f.is_null());
    // SAFETY: the wrapper takes one pointer to `sig.len()` buffer pointers.
    let f: unsafe extern "C" fn(*mut *mut f32) = unsafe { std::mem::transmute(f) };

    let trainable: Vec<bool> = g.params.iter().map(|p| p.role.trainable()).collect();
    let shapes: Vec<Vec<usize>> = g.params.iter().map(|p| p.shape.clone()).collect();
    let adam_l2 = OptimizerConfig::Adam {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.05,
    };
    for config in [adam_l2, OptimizerConfig::adamw(0.01)] {
        let mut host = Optimizer::new(config, &shapes).expect("config");
        let mut params: Vec<ArrayD<f64>> = shapes
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let n = s.iter().product();
                let v = random_f32(n, 100 + k as u64, -1.0, 1.0);
                ArrayD::from_shape_vec(IxDyn(s), v.iter().map(|x| f64::from(*x)).collect())
                    .expect("shape")
            })
            .collect();
        // The device's buffers, in the signature's order.
        let mut bufs: Vec<Vec<f32>> = sig
            .iter()
            .map(|a| vec![0f32; a.shape.iter().product()])
            .collect();
        let trainable_ids: Vec<usize> = (0..shapes.len()).filter(|k| trainable[*k]).collect();
        let n = trainable_ids.len();
        for (j, &k) in trainable_ids.iter().enumerate() {
            bufs[j] = params[k].iter().map(|v| *v as f32).collect();
        }
        for step in 0..3u64 {
            let lr = 0.01 / (1.0 + step as f64);
            let mut grads = vec![None; shapes.len()];
            for (j, &k) in trainable_ids.iter().enumerate() {
                // Away from zero, where Adam's update is a sign and f32 rounding could flip it.
                let gv: Vec<f32> = random_f32(bufs[j].len(), 7 * step + k as u64, 0.2, 1.0);
                grads[k] = Some(
                    ArrayD::from_shape_vec(
                        IxDyn(&shapes[k]),
                        gv.iter().map(|x| f64::from(*x)).collect(),
                    )
                    .expect("shape"),
                );
                bufs[n + j] = gv;
            }
            let scalars = host
                .device_scalars(lr, &trainable)
                .expect("scalars")
                .expect("adam");
            bufs[4 * n] = scalars.to_vec();
            let mut ptrs: Vec<*mut f32> = bufs.iter_mut().map(|b| b.as_mut_ptr()).collect();
            // SAFETY: one buffer per argument, each of its signature's size.
            unsafe { f(ptrs.as_mut_ptr()) };
            host.step(&mut params, &grads, lr).expect("host step");
        }
        for (j, &k) in trainable_ids.iter().enumerate() {
            let name = &g.params[k].name;
            let (m, v) = host.moments(k).expect("moments");
            for (what, got, want) in [
                ("parameter", &bufs[j], &params[k]),
                ("exp_avg", &bufs[2 * n + j], m),
                ("exp_avg_sq", &bufs[3 * n + j], v),
            ] {
                for (a, b) in got.iter().zip(want.iter()) {
                    let (a, b) = (f64::from(*a), *b);
                    assert!(
                        (a - b).abs() <= 2e-6 * b.abs().max(0.1),
                        "{config:?}: {what} of `{name}`: {a} vs {b}"
                    );
                }
            }
        }
    }
}
