//! Tests of the MLIR lowering: snapshots, `mlir-opt-22` cross-checks, the LLVM-only invariant,
//! and JIT runs of the lowered code against PyTorch's golden values and the interpreter.

mod common;

use common::{compile, mlir_opt, random_f32, read_npy_f64, run_mlir_opt};

use melior::ExecutionEngine;
use melior::ir::Module;
use ndarray::{ArrayD, IxDyn};
use snnc::interp::{Interpreter, Mode, Options, ParamStore};
use snnc::ir::Graph;
use snnc::mlir::context::new_context;
use snnc::mlir::lower::{ArgRole, forward_signature, forward_symbol};
use snnc::mlir::pipeline::{check_llvm_only, non_llvm_ops, run_pipeline, verify};
use snnc::mlir::{LLVM_PIPELINE, LowerOptions, Stage, emit, lower_graphs};
use snnc::sema::Compilation;
use std::process::Command;

/// Snapshots above this size are skipped: they would dwarf the rest of the repository and
/// review badly (the ResNet-18 example is the one near it at batch 1).
const MAX_SNAPSHOT_BYTES: usize = 300_000;

fn examples() -> Vec<(String, Compilation)> {
    common::snn_files("examples")
        .into_iter()
        .map(|(rel, _)| {
            let c = compile(&rel, &[]);
            (rel, c)
        })
        .collect()
}

fn snapshot_name(rel: &str) -> String {
    rel.replace(['/', '.'], "_")
}

fn emit_one(g: &Graph, batch: usize, stage: Stage) -> String {
    match emit(&[g], &LowerOptions::with_batch(batch), stage) {
        Ok((text, _)) => text,
        Err(e) => panic!("{}: {e}", g.name),
    }
}

#[test]
fn mlir_of_every_example_model() {
    for (rel, c) in examples() {
        for g in &c.graphs {
            let text = emit_one(g, 1, Stage::Mlir);
            if text.len() > MAX_SNAPSHOT_BYTES {
                eprintln!(
                    "skipping the snapshot of {} ({} bytes of MLIR)",
                    g.name,
                    text.len()
                );
                continue;
            }
            insta::assert_snapshot!(format!("mlir__{}__{}", snapshot_name(&rel), g.name), text);
        }
    }
}

/// The forward alone: `--emit llvm-mlir` also carries the training functions, which
/// tests/mlir_grad.rs covers (with them the snapshot would be 370 kB).
#[test]
fn llvm_mlir_of_golden_small() {
    let c = compile("tests/reference/golden_small.snn", &[]);
    let context = new_context();
    let mut module =
        lower_graphs(&context, &[&c.graphs[0]], &LowerOptions::with_batch(1)).expect("lowers");
    verify(&context, &module).expect("verifies");
    run_pipeline(&context, &mut module, LLVM_PIPELINE).expect("pipeline");
    check_llvm_only(&module).expect("llvm only");
    let text = format!("{}\n", module.as_operation());
    insta::assert_snapshot!("llvm_mlir__golden_small", text);
}

/// The op names of MLIR text in the generic or custom form (`%x = dialect.op ...`, `dialect.op`).
fn op_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = match line.split_once(" = ") {
                Some((lhs, rhs)) if lhs.starts_with('%') => rhs,
                _ => line,
            };
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            name.contains('.').then_some(name)
        })
        .collect()
}

#[test]
fn mlir_opt_accepts_every_example_and_runs_the_pipeline() {
    let Some(tool) = mlir_opt() else {
        eprintln!("skipping: mlir-opt-22 is neither on PATH nor at /usr/lib/llvm-22/bin/mlir-opt");
        return;
    };
    let pipeline = format!("--pass-pipeline={LLVM_PIPELINE}");
    for (rel, c) in examples() {
        for g in &c.graphs {
            let what = format!("{rel}:{}", g.name);
            let text = emit_one(g, 2, Stage::Mlir);
            run_mlir_opt(&tool, &["--verify-each"], &text, &what);
            let lowered = run_mlir_opt(&tool, &["--verify-each", &pipeline], &text, &what);
            for op in op_names(&lowered) {
                assert!(
                    op.starts_with("llvm."),
                    "{what}: `{op}` survives mlir-opt's run of the pipeline"
                );
            }
        }
    }
}

#[test]
fn the_pipeline_leaves_only_llvm_ops_for_every_example() {
    for (rel, c) in examples() {
        let context = new_context();
        let graphs: Vec<&Graph> = c.graphs.iter().collect();
        let mut module =
            lower_graphs(&context, &graphs, &LowerOptions::with_batch(2)).expect("lowers");
        verify(&context, &module).expect("verifies");
        let before = non_llvm_ops(&module);
        assert!(before.contains("scf.parallel") && before.contains("func.func"));
        run_pipeline(&context, &mut module, LLVM_PIPELINE).expect("pipeline runs");
        assert!(
            non_llvm_ops(&module).is_empty(),
            "{rel}: {:?} left after the pipeline",
            non_llvm_ops(&module)
        );
        check_llvm_only(&module).expect("llvm only");
    }
}

#[test]
fn batch_size_is_baked_into_static_shapes() {
    let c = compile("tests/reference/golden_small.snn", &[]);
    let text = emit_one(&c.graphs[0], 5, Stage::Mlir);
    assert!(text.contains("memref<4x5x2x8x8xf32>"), "{text}");
    assert!(text.contains("memref<5x3xf32> {snnc.name = \"readout0\", snnc.role = \"output\"}"));
    let err = emit(&[&c.graphs[0]], &LowerOptions::with_batch(0), Stage::Mlir)
        .expect_err("batch 0 is refused");
    assert!(err.message.contains("batch"), "{err}");
}

#[test]
fn cli_emits_mlir_and_reports_errors() {
    let bin = env!("CARGO_BIN_EXE_snnc");
    let file = common::workspace().join("tests/reference/golden_small.snn");
    let out = common::snnc_ok(|c| {
        c.args(["build", "--emit", "llvm-mlir", "--batch", "2"])
            .arg(&file)
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("llvm.func @GoldenSmall_forward("), "{text}");
    assert!(!text.contains("func.func"));

    let out = Command::new(bin)
        .args(["build", "--emit", "mlir", "--model", "Nope"])
        .arg(&file)
        .output()
        .expect("snnc runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model `Nope`"));

    let out = Command::new(bin)
        .args(["build", "--emit", "mlir", "--batch", "0"])
        .arg(&file)
        .output()
        .expect("snnc runs");
    assert!(!out.status.success());
}

// ---- execution ------------------------------------------------------------------------------

/// Lowers `g` to the LLVM dialect, JIT-compiles it with MLIR's execution engine and runs the
/// forward once over `args` (one buffer per argument, in signature order).
fn execute(g: &Graph, batch: usize, args: &mut [Vec<f32>]) {
    let context = new_context();
    let mut module =
        lower_graphs(&context, &[g], &LowerOptions::with_batch(batch)).expect("lowers");
    verify(&context, &module).expect("verifies");
    run_pipeline(&context, &mut module, LLVM_PIPELINE).expect("pipeline");
    check_llvm_only(&module).expect("llvm only");
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
    let f = engine.lookup("snnc_test_packed");
    assert!(!f.is_null(), "JIT lookup failed");
    let mut ptrs: Vec<*mut f32> = args.iter_mut().map(|a| a.as_mut_ptr()).collect();
    // SAFETY: the wrapper takes one pointer to `n` buffer pointers; every buffer was sized
    // from the forward signature the lowering used, so all accesses stay in bounds.
    unsafe {
        let f: unsafe extern "C" fn(*mut *mut f32) = std::mem::transmute(f);
        f(ptrs.as_mut_ptr());
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(*g) - w).abs();
        assert!(
            err <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w} (error {err:e})"
        );
    }
}

#[test]
fn golden_small_runs_like_pytorch() {
    let c = compile("tests/reference/golden_small.snn", &[]);
    let g = &c.graphs[0];
    let dir = common::workspace().join("tests/reference/golden_small");
    let batch = 2;
    let sig = forward_signature(g, &LowerOptions::with_batch(batch)).expect("signature");
    let mut args: Vec<Vec<f32>> = Vec::new();
    for a in &sig {
        let size: usize = a.shape.iter().product();
        let file = match a.role {
            ArgRole::Input => Some(dir.join("input.npy")),
            ArgRole::Param => Some(dir.join(format!("param.{}.npy", a.name))),
            ArgRole::State | ArgRole::Output => None,
        };
        let buf = match file {
            Some(file) => {
                let (shape, data) = read_npy_f64(&file);
                assert_eq!(shape, a.shape, "{}", a.name);
                data.iter().map(|v| *v as f32).collect()
            }
            // Running statistics start as PyTorch's do: mean 0, variance 1.
            None if a.name.ends_with("running_var") => vec![1.0; size],
            None => vec![0.0; size],
        };
        args.push(buf);
    }
    execute(g, batch, &mut args);
    for (a, buf) in sig.iter().zip(&args) {
        let want = match a.role {
            ArgRole::Output => dir.join(format!("out.{}.npy", a.name)),
            ArgRole::State => dir.join(format!("running.{}.npy", a.name)),
            _ => continue,
        };
        let (_, want) = read_npy_f64(&want);
        assert_close(&a.name, buf, &want, 1e-5);
    }
}

/// Runs the lowered code and the reference interpreter (f64, train mode) on the same data and
/// compares outputs and updated running statistics.
fn agrees_with_interpreter(rel: &str, overrides: &[(&str, &str)], batch: usize) {
    let c = compile(rel, overrides);
    for g in &c.graphs {
        graph_agrees_with_interpreter(rel, g, batch);
    }
}

fn graph_agrees_with_interpreter(rel: &str, g: &Graph, batch: usize) {
    {
        let mut store = ParamStore::init(g, 7);
        for v in &mut store.values {
            v.mapv_inplace(|x| f64::from(x as f32));
        }
        let sig = forward_signature(g, &LowerOptions::with_batch(batch)).expect("signature");
        let mut args = Vec::new();
        let mut inputs = Vec::new();
        let mut n_params = 0;
        for (k, a) in sig.iter().enumerate() {
            let size: usize = a.shape.iter().product();
            match a.role {
                ArgRole::Input => {
                    let data = random_f32(size, 11 + k as u64, 0.0, 2.0);
                    let arr = ArrayD::from_shape_vec(
                        IxDyn(&a.shape),
                        data.iter().map(|v| f64::from(*v)).collect(),
                    )
                    .expect("shape");
                    inputs.push((a.name.clone(), arr));
                    args.push(data);
                }
                ArgRole::Param | ArgRole::State => {
                    let v = &store.values[n_params];
                    n_params += 1;
                    args.push(v.iter().map(|x| *x as f32).collect());
                }
                ArgRole::Output => args.push(vec![f32::NAN; size]),
            }
        }
        execute(g, batch, &mut args);
        let interp = Interpreter::new(
            g,
            Options {
                mode: Mode::Train,
                ..Options::default()
            },
        );
        let named: Vec<(&str, ArrayD<f64>)> = inputs
            .iter()
            .map(|(n, a)| (n.as_str(), a.clone()))
            .collect();
        let fwd = interp.forward(&store, &named).expect("interpreter runs");
        let n_inputs = inputs.len();
        let first_out = n_inputs + g.params.len();
        for (k, want) in fwd.outputs.iter().enumerate() {
            let want: Vec<f64> = want.iter().copied().collect();
            assert_close(
                &format!("{}:{} output {k}", rel, g.name),
                &args[first_out + k],
                &want,
                1e-4,
            );
        }
        for (p, want) in &fwd.running_updates {
            let want: Vec<f64> = want.iter().copied().collect();
            assert_close(
                &format!("{}:{} {}", rel, g.name, g.params[p.0].name),
                &args[n_inputs + p.0],
                &want,
                1e-4,
            );
        }
    }
}

#[test]
fn custom_neuron_with_membrane_attention_agrees_with_the_interpreter() {
    agrees_with_interpreter("examples/custom_neuron.snn", &[("T", "4")], 2);
}

#[test]
fn nmnist_models_agree_with_the_interpreter() {
    agrees_with_interpreter("examples/nmnist.snn", &[("T", "4")], 2);
}

/// The gesture networks up to their second batchnorm (conv 2->64, bn, MALIF, conv 64->128,
/// bn). Further on, f32 rounding flips the odd spike against the f64 interpreter (one in
/// 164k at the second MALIF with random weights) and the flips cascade, so whole-network
/// outputs cannot be compared exactly. Seconds in the debug interpreter: on demand only
/// (`cargo test --test mlir -- --ignored`).
#[test]
#[ignore]
fn gesture_models_agree_with_the_interpreter_up_to_bn1() {
    let c = compile("examples/gesture.snn", &[("T", "5")]);
    for g in &c.graphs {
        let cut = g
            .nodes
            .iter()
            .position(|n| n.name == "bn1")
            .expect("a second batchnorm");
        let mut g = g.clone();
        g.nodes.truncate(cut + 1);
        g.outputs = vec![snnc::ir::ValueId(cut)];
        graph_agrees_with_interpreter("examples/gesture.snn", &g, 1);
    }
}

/// Prints how long lowering, verification and the LLVM pipeline take for the largest
/// everyday model (run with `--nocapture` to see it).
#[test]
fn gesture_lowering_timings() {
    let c = compile("examples/gesture.snn", &[]);
    for g in &c.graphs {
        let (text, t) = emit(&[g], &LowerOptions::with_batch(16), Stage::LlvmMlir).expect("emits");
        eprintln!(
            "{}: lower {:.1} ms, verify {:.1} ms, pipeline {:.1} ms ({} bytes of LLVM dialect)",
            g.name,
            t.lower.as_secs_f64() * 1e3,
            t.verify.as_secs_f64() * 1e3,
            t.pipeline.as_secs_f64() * 1e3,
            text.len()
        );
    }
}

mod handmade {
    //! A graph built by hand to reach what the examples do not: every scalar op of a neuron
    //! program, a learnable neuron scalar, dropout, sum and max reductions, both flatten paths,
    //! concat, broadcasting over T, a membrane gate, a membrane emit, and outputs that are views.

    use snnc::ir::graph::*;
    use snnc::ir::infer::infer_type;
    use snnc::ir::scalar::{
        NeuronProgram, Scalar, ScalarBinary as B, ScalarUnary as U, Target, Var,
    };
    use snnc::ir::{Axis, Elem, TensorType};
    use snnc::sema::compile_source;
    use std::path::Path;

    fn c(v: f64) -> Scalar {
        Scalar::Const(v)
    }
    fn var(v: Var) -> Scalar {
        Scalar::Var(v)
    }
    fn un(op: U, x: Scalar) -> Scalar {
        Scalar::Unary(op, Box::new(x))
    }
    fn bin(op: B, x: Scalar, y: Scalar) -> Scalar {
        Scalar::Binary(op, Box::new(x), Box::new(y))
    }

    fn neuron() -> NeuronProgram {
        let x = || var(Var::Input);
        let v = || var(Var::State(0));
        let w = || var(Var::State(1));
        let mut a = Scalar::Select(
            Box::new(bin(B::Gt, x(), c(0.5))),
            Box::new(un(U::Tanh, x())),
            Box::new(un(U::Atan, x())),
        );
        let terms = [
            bin(B::Mul, bin(B::Min, v(), c(1.0)), bin(B::Max, w(), c(-1.0))),
            un(U::Sqrt, un(U::Abs, x())),
            un(U::Exp, un(U::Neg, x())),
            un(U::Log, bin(B::Add, c(1.0), un(U::Abs, x()))),
            un(U::Sigmoid, x()),
            un(U::Relu, bin(B::Sub, x(), c(1.0))),
            bin(B::Pow, bin(B::Add, un(U::Abs, x()), c(1.0)), c(0.5)),
            un(U::Not, x()),
            bin(B::Lt, x(), c(1.0)),
            bin(B::Le, x(), c(1.0)),
            bin(B::Ge, x(), c(1.0)),
            bin(B::Eq, x(), c(0.0)),
            bin(B::Ne, x(), c(0.0)),
            bin(B::And, x(), v()),
            bin(B::Or, v(), w()),
            un(U::Neg, un(U::Detach, w())),
        ];
        for t in terms {
            a = bin(B::Add, a, t);
        }
        NeuronProgram {
            name: "Everything".into(),
            args: vec![],
            states: vec![("v".into(), 0.0), ("w".into(), 0.5)],
            learns: vec![("k".into(), 0.7)],
            locals: vec!["a".into(), "spike".into()],
            steps: vec![
                (Target::Local(0), a),
                (
                    Target::State(0),
                    bin(
                        B::Add,
                        bin(B::Mul, v(), var(Var::Learn(0))),
                        bin(B::Div, var(Var::Local(0)), c(4.0)),
                    ),
                ),
                (
                    Target::Local(1),
                    Scalar::Fire {
                        arg: Box::new(bin(B::Sub, v(), c(1.0))),
                        surrogate: 0,
                    },
                ),
                (
                    Target::State(0),
                    bin(B::Mul, v(), bin(B::Sub, c(1.0), var(Var::Local(1)))),
                ),
                (
                    Target::State(1),
                    bin(B::Add, w(), bin(B::Mul, c(0.1), var(Var::Local(1)))),
                ),
            ],
            spike: 1,
            surrogates: vec![],
            fire_step: 2,
        }
    }

    fn push(
        g: &mut Graph,
        op: Op,
        inputs: Vec<ValueId>,
        params: Vec<ParamId>,
        name: &str,
    ) -> ValueId {
        let tys: Vec<&TensorType> = inputs.iter().map(|i| g.ty(*i)).collect();
        let ty = infer_type(&op, &tys).unwrap_or_else(|e| panic!("{name}: {}", e.message));
        let node = like_input(g, op, inputs, params, ty, name);
        g.add_node(node)
    }

    /// A node made from the graph's input node, so that bookkeeping fields added to `Node`
    /// later (spans, groups, ...) need no change here.
    fn like_input(
        g: &Graph,
        op: Op,
        inputs: Vec<ValueId>,
        params: Vec<ParamId>,
        ty: TensorType,
        name: &str,
    ) -> Node {
        let mut node = g.nodes[0].clone();
        node.op = op;
        node.inputs = inputs;
        node.params = params;
        node.ty = ty;
        node.name = name.into();
        node
    }

    /// With `flatten_copy`, the T-broadcast operand comes from flattening a tensor without a
    /// time axis (the gather path of flatten); the reference interpreter does not support that
    /// shape yet, so the numeric comparison uses a keepdim reduction instead.
    pub fn graph(flatten_copy: bool) -> Graph {
        let mut g = Graph {
            name: "Handmade".into(),
            ..Graph::default()
        };
        // The input node comes from a one-line model: it is the template of every other node.
        let source = "model M(T: int = 3) {\n    input x: image(channels = 2, height = 4, width = 4, T = T)\n    x -> flatten -> readout.rate\n}\n";
        let c = compile_source(Path::new("handmade.snn"), source.to_string(), &[]);
        assert!(
            !c.diags.has_errors(),
            "{}",
            c.diags.render_plain(&c.program.sources)
        );
        let input = c.graphs[0].nodes[0].clone();
        assert!(matches!(input.op, Op::Input { .. }));
        assert_eq!(input.ty, TensorType::image(3, 2, 4, 4, Elem::Real));
        let x = g.add_node(input);
        let d = push(&mut g, Op::Dropout { p: 0.0 }, vec![x], vec![], "drop");
        let mp = push(
            &mut g,
            Op::Pool {
                kind: PoolKind::Max,
                kernel: 2,
                stride: 2,
            },
            vec![d],
            vec![],
            "maxpool",
        );
        let s = push(
            &mut g,
            Op::Reduce {
                kind: ReduceKind::Sum,
                axes: vec![Axis::T],
                keepdim: false,
            },
            vec![mp],
            vec![],
            "sum",
        );
        let f1 = push(&mut g, Op::Flatten, vec![s], vec![], "flat_copy");
        let fl = push(&mut g, Op::Flatten, vec![d], vec![], "flat_view");
        let cat = push(
            &mut g,
            Op::Concat { axis: Axis::N },
            vec![fl, fl],
            vec![],
            "cat",
        );
        let gm = push(
            &mut g,
            Op::Reduce {
                kind: ReduceKind::Mean,
                axes: vec![Axis::N],
                keepdim: true,
            },
            vec![cat],
            vec![],
            "gate_mean",
        );
        let gs = push(
            &mut g,
            Op::Unary(UnaryOp::Sigmoid),
            vec![gm],
            vec![],
            "gate",
        );
        let w = g.add_param(ParamDecl {
            name: "dense.weight".into(),
            shape: vec![8, 64],
            role: ParamRole::Weight,
            init: Init::UniformFanIn { fan_in: 64 },
        });
        let dn = push(
            &mut g,
            Op::Dense {
                axis: Axis::N,
                out: 8,
            },
            vec![cat],
            vec![w],
            "dense",
        );
        let over_t = if flatten_copy {
            f1
        } else {
            push(
                &mut g,
                Op::Reduce {
                    kind: ReduceKind::Sum,
                    axes: vec![Axis::T],
                    keepdim: true,
                },
                vec![dn],
                vec![],
                "dense_sum",
            )
        };
        let add = push(
            &mut g,
            Op::Binary(BinaryOp::Add),
            vec![dn, over_t],
            vec![],
            "sum_t",
        );
        let k1 = g.add_param(ParamDecl {
            name: "n1.k".into(),
            shape: vec![1],
            role: ParamRole::NeuronScalar,
            init: Init::Const(0.7),
        });
        let k2 = g.add_param(ParamDecl {
            name: "n2.k".into(),
            shape: vec![1],
            role: ParamRole::NeuronScalar,
            init: Init::Const(0.7),
        });
        let spikes = push(
            &mut g,
            Op::Scan {
                neuron: Box::new(neuron()),
                emit: ScanEmit::Spikes,
            },
            vec![add, gs],
            vec![k1],
            "spikes",
        );
        let membrane = push(
            &mut g,
            Op::Scan {
                neuron: Box::new(neuron()),
                emit: ScanEmit::Membrane,
            },
            vec![add],
            vec![k2],
            "membrane",
        );
        g.outputs = vec![spikes, membrane, d, fl, spikes];
        g
    }
}

#[test]
fn handmade_graph_covers_every_op_and_agrees_with_the_interpreter() {
    let g = handmade::graph(true);
    let problems = snnc::ir::verify::verify(&g);
    assert!(problems.is_empty(), "{problems:?}");
    let text = emit_one(&g, 2, Stage::Mlir);
    for op in [
        "math.tanh",
        "math.atan",
        "math.powf",
        "math.log",
        "arith.minnumf",
        "arith.ori",
        "memref.collapse_shape",
        "arith.divui",
    ] {
        assert!(text.contains(op), "{op} missing:\n{text}");
    }
    emit_one(&g, 2, Stage::LlvmMlir);
    graph_agrees_with_interpreter("handmade", &handmade::graph(false), 2);
}
