//! `snnc train`, `eval`, `compare` and `plot`: the command-line face of the training driver.

use crate::interp::ParamStore;
use crate::ir::Graph;
use crate::sema::Override;
use crate::train::{RunConfig, RunError, RunOverrides, evaluate, train};
use clap::Args;
use snn_runtime::metrics::compare_table;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Clone)]
pub struct Budget {
    /// Epochs (default: the model's `train { epochs }`).
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch: Option<usize>,
    /// Base learning rate (default: the optimizer's `lr`).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Dataset directory (overrides the `dataset` setting's path).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Train on this many samples of the training split (chosen with the seed).
    #[arg(long)]
    limit_train: Option<usize>,
    /// Evaluate on the first this many samples of the test split.
    #[arg(long)]
    limit_test: Option<usize>,
    /// Loader worker threads.
    #[arg(long)]
    workers: Option<usize>,
    /// Execution backend: `interp` (reference interpreter, f64), `cpu` (forward_train and
    /// backward JIT-compiled by Cranelift, f32), `gpu` (the same functions as PTX kernels on
    /// CUDA device 0, f32; convolutions and dense layers through cuBLAS) or `gpu-tf32` (those
    /// matrix products on the tensor cores in TF32, as PyTorch runs convolutions by default).
    #[arg(long, default_value = "interp", value_parser = ["interp", "cpu", "gpu", "gpu-tf32"])]
    backend: String,
    /// Where the compiled code runs: `cpu`, `gpu` or `gpu-tf32` (the same as `--backend`).
    #[arg(long, value_parser = ["cpu", "gpu", "gpu-tf32"], conflicts_with = "backend")]
    device: Option<String>,
    #[arg(long = "set", value_name = "NAME=EXPR", value_parser = super::parse_override)]
    overrides: Vec<Override>,
}

impl Budget {
    fn overrides(&self) -> RunOverrides {
        RunOverrides {
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
            seed: self.seed,
            data: self.data.clone(),
            limit_train: self.limit_train,
            limit_test: self.limit_test,
            workers: self.workers,
            // The value parsers admit only names `Backend` knows.
            backend: self.device.as_deref().unwrap_or(&self.backend).parse().ok(),
        }
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// The model: `FILE.snn` (its only model) or `FILE.snn:MODEL`.
    model: String,
    /// Where checkpoints, the log and plots go (default: runs/<model>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Continue the run in this directory from its checkpoint.
    #[arg(long, conflicts_with = "run_dir")]
    resume: Option<PathBuf>,
    /// Stop after this many epochs of this invocation, as an interrupted run would (for tests).
    #[arg(long, hide = true)]
    stop_after_epochs: Option<usize>,
    #[command(flatten)]
    budget: Budget,
}

#[derive(Args)]
pub struct EvalArgs {
    model: String,
    /// A run directory holding a checkpoint.
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    budget: Budget,
}

#[derive(Args)]
pub struct CompareArgs {
    /// Candidate (e.g. the attention model): `FILE.snn:MODEL`.
    a: String,
    /// Baseline (e.g. the vanilla model).
    b: String,
    /// Parent of both run directories (default: runs/compare).
    #[arg(long, default_value = "runs/compare")]
    out: PathBuf,
    #[command(flatten)]
    budget: Budget,
}

#[derive(Args)]
pub struct PlotArgs {
    run_dir: PathBuf,
}

/// Compiles `FILE[:MODEL]` and returns the chosen graph and the file's directory.
pub(crate) fn load_model(spec: &str, overrides: &[Override]) -> Result<(Graph, PathBuf), ExitCode> {
    let (file, model) = match spec.rsplit_once(':') {
        Some((f, m)) if f.ends_with(".snn") => (f, Some(m)),
        _ => (spec, None),
    };
    let c = crate::sema::compile_path_model(Path::new(file), overrides, model);
    if !c.diags.items.is_empty() {
        eprint!("{}", c.diags.render_plain(&c.program.sources));
    }
    if c.diags.has_errors() {
        return Err(ExitCode::FAILURE);
    }
    let names: Vec<String> = c.graphs.iter().map(|g| g.name.clone()).collect();
    let chosen = match model {
        Some(m) => c.graphs.into_iter().find(|g| g.name == m),
        None if names.len() == 1 => c.graphs.into_iter().next(),
        None => None,
    };
    match chosen {
        Some(g) => Ok((
            g,
            Path::new(file)
                .parent()
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        )),
        None => {
            eprintln!(
                "error: {} in {file}\n  = help: name one as `{file}:MODEL`; models: {}",
                model.map_or("several models".to_string(), |m| format!("no model `{m}`")),
                names.join(", ")
            );
            Err(ExitCode::FAILURE)
        }
    }
}

fn fail(e: RunError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

pub fn run_train(args: TrainArgs) -> ExitCode {
    let (g, dir) = match load_model(&args.model, &args.budget.overrides) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let resume = args.resume.is_some();
    let run_dir = args
        .resume
        .or(args.run_dir)
        .unwrap_or_else(|| PathBuf::from("runs").join(&g.name));
    let mut cfg = match RunConfig::resolve(&g, run_dir, &dir, &args.budget.overrides()) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    cfg.stop_after_epochs = args.stop_after_epochs;
    match train(&g, &cfg, resume) {
        Ok(r) => {
            eprintln!(
                "trained {} for {} epoch(s); checkpoint and log in {}",
                g.name,
                r.epochs_done,
                r.run_dir.display()
            );
            if let Some(report) = r.test.as_ref().and_then(|t| t.energy.as_ref()) {
                println!("{}", report.to_table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

pub fn run_eval(args: EvalArgs) -> ExitCode {
    let (g, dir) = match load_model(&args.model, &args.budget.overrides) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let cfg = match RunConfig::resolve(&g, args.checkpoint.clone(), &dir, &args.budget.overrides())
    {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let loaded = snn_runtime::train::checkpoint::load(&args.checkpoint)
        .map_err(|e| RunError(format!("{e}")))
        .and_then(|(params, _)| {
            let expected: Vec<(String, Vec<usize>)> = g
                .params
                .iter()
                .map(|p| (p.name.clone(), p.shape.clone()))
                .collect();
            snn_runtime::train::checkpoint::match_params(&args.checkpoint, params, &expected)
                .map_err(|e| RunError(format!("{e}")))
        });
    let params = match loaded {
        Ok(values) => ParamStore { values },
        Err(e) => return fail(e),
    };
    let (_, test) = match cfg.loaders(&g) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let Some(test) = test else {
        return fail(RunError(
            "the dataset has no test split to evaluate on".into(),
        ));
    };
    match evaluate(&g, &cfg, &params, &test, true) {
        Ok(m) => {
            println!(
                "{}: test loss {:.4}, accuracy {:.2}% on {} samples",
                g.name,
                m.loss,
                100.0 * m.accuracy,
                m.samples
            );
            if let Some(e) = &m.energy {
                println!("{}", e.to_table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

pub fn run_compare(args: CompareArgs) -> ExitCode {
    let mut summaries = Vec::new();
    for spec in [&args.a, &args.b] {
        let (g, dir) = match load_model(spec, &args.budget.overrides) {
            Ok(x) => x,
            Err(code) => return code,
        };
        let run_dir = args.out.join(&g.name);
        if snn_runtime::train::checkpoint::exists(&run_dir) {
            return fail(RunError(format!(
                "{} already holds a run\n  = help: choose another `--out` directory (compare trains both models from scratch)",
                run_dir.display()
            )));
        }
        let cfg = match RunConfig::resolve(&g, run_dir, &dir, &args.budget.overrides()) {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        eprintln!("== {} ==", g.name);
        let result = match train(&g, &cfg, false) {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        let Some(test) = result.test else {
            return fail(RunError(format!(
                "{}: the dataset has no test split to compare on",
                g.name
            )));
        };
        if let Some(e) = &test.energy {
            println!("{} (test set, per layer):\n{}", g.name, e.to_table());
        }
        match test.summary(&g.name) {
            Some(s) => summaries.push(s),
            None => {
                return fail(RunError(format!(
                    "{}: no energy report (no spiking layer?)",
                    g.name
                )));
            }
        }
    }
    let table = compare_table(&summaries[0], &summaries[1]);
    println!("{table}");
    let _ = std::fs::write(args.out.join("compare.txt"), &table);
    ExitCode::SUCCESS
}

pub fn run_plot(args: PlotArgs) -> ExitCode {
    match snn_runtime::train::plot_run(&args.run_dir) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
