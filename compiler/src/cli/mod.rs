//! The `snnc` command line: `check`, `build --emit ...`, `explain`, `frames`. Each command returns an exit
//! code; diagnostics go to stderr, requested output to stdout or `-o`.

mod frames;
mod train;
mod viz;

use crate::diag::explain;
use crate::ir::printer::print_graph;
use crate::sema::{Compilation, Override, compile_path};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "snnc",
    version,
    about = "Compiler for attention spiking neural networks (.snn)"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check files; report every error found. Exit code 1 on errors.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Override a model parameter, e.g. `--set T=8 --set att=TCSA()`.
        #[arg(long = "set", value_name = "NAME=EXPR", value_parser = parse_override)]
        overrides: Vec<Override>,
    },
    /// Compile a file and emit a stage of the pipeline.
    Build {
        file: PathBuf,
        /// Which stage to print.
        #[arg(long, value_enum, default_value = "ir")]
        emit: Emit,
        /// Only this model (default: every model in the file).
        #[arg(long)]
        model: Option<String>,
        #[arg(long = "set", value_name = "NAME=EXPR", value_parser = parse_override)]
        overrides: Vec<Override>,
        /// Write to this file instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Batch size baked into the static shapes of `--emit mlir|llvm-mlir`.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
        /// Inference semantics for the forward (`--emit mlir|llvm-mlir|clif`, `--target cpu`):
        /// batchnorm normalises with the running statistics and leaves them unchanged.
        /// Without it the forward uses the batch's statistics and updates the running ones,
        /// as the training forward does.
        #[arg(long)]
        eval: bool,
        /// `cpu` with `-o DIR`: write DIR/<model>.o, DIR/lib<model>.so, DIR/<model>.h and
        /// DIR/<model>.json. `gpu`: emit PTX (`--emit ptx`), or with `-o DIR` write
        /// DIR/<model>.ptx and DIR/<model>.launch.json.
        #[arg(long, value_enum)]
        target: Option<Target>,
        /// PTX target architecture for `--target gpu` (sm_90 or sm_80).
        #[arg(long, default_value = "sm_90")]
        chip: String,
        /// `--target gpu`: the training functions (forward_train, backward and the Adam
        /// optimiser step) instead of the forward; with `-o DIR`: DIR/<model>.train.ptx,
        /// DIR/<model>.forward_train.launch.json, DIR/<model>.backward.launch.json and
        /// DIR/<model>.optimizer.launch.json.
        #[arg(long)]
        train: bool,
    },
    /// Explain an error code, e.g. `snnc explain E0006`.
    Explain { code: String },
    /// Frame an event recording into [T, 2, H, W] (paper Sec. III-A); write .npy and/or PNG.
    Frames(frames::FramesArgs),
    /// Train a model on event data (BPTT with surrogate gradients); checkpoints and a log.
    Train(train::TrainArgs),
    /// Evaluate a checkpoint: accuracy, firing rates, spikes and energy per layer.
    Eval(train::EvalArgs),
    /// Train two models under the same budget and print the paper-style comparison table.
    Compare(train::CompareArgs),
    /// Plot a run's loss, accuracy and firing-rate curves as PNG files.
    Plot(train::PlotArgs),
    /// Spiking-response visualisation of one sample: firing, membrane and attention maps (PNG).
    Viz(viz::VizArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// The syntax tree (JSON).
    Ast,
    /// The typed graph IR.
    Ir,
    /// The generated backward program (BPTT with surrogate gradients).
    Grad,
    /// The forward pass lowered to MLIR (func/scf/memref/arith/math), verified.
    Mlir,
    /// The training functions (`_forward_train`, `_backward`) lowered to MLIR, verified.
    MlirGrad,
    /// The MLIR after the pass pipeline to the LLVM dialect (forward, forward_train, backward).
    LlvmMlir,
    /// PTX of every kernel (with `--target gpu`).
    Ptx,
    /// Cranelift IR of the forward functions (the CPU backend's input to Cranelift).
    Clif,
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    Cpu,
    Gpu,
}

pub(crate) fn parse_override(s: &str) -> Result<Override, String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=EXPR, found `{s}`"))?;
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return Err(format!("`{name}` is not a parameter name"));
    }
    Ok((name.to_string(), value.trim().to_string()))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { files, overrides } => {
            let mut failed = false;
            for file in &files {
                let c = compile_path(file, &overrides);
                report(&c);
                if c.diags.has_errors() {
                    failed = true;
                } else {
                    let models: Vec<String> = c.graphs.iter().map(|g| g.name.clone()).collect();
                    eprintln!(
                        "{}: ok ({} model{}{})",
                        file.display(),
                        models.len(),
                        if models.len() == 1 { "" } else { "s" },
                        if models.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", models.join(", "))
                        }
                    );
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Build {
            file,
            emit,
            model,
            overrides,
            output,
            batch,
            eval,
            target,
            chip,
            train,
        } => {
            let lower = crate::mlir::LowerOptions {
                eval,
                ..crate::mlir::LowerOptions::with_batch(batch as usize)
            };
            let c = crate::sema::compile_path_model(&file, &overrides, model.as_deref());
            report(&c);
            if c.diags.has_errors() {
                return ExitCode::FAILURE;
            }
            // PTX is the GPU target's product: its default emit (`ir`) means PTX too.
            if matches!(target, Some(Target::Gpu)) && matches!(emit, Emit::Ptx | Emit::Ir) {
                let opts = crate::backend::gpu::GpuOptions {
                    chip,
                    batch: batch as usize,
                };
                return crate::backend::gpu::cli::build(
                    &c,
                    &file,
                    model.as_deref(),
                    output.as_deref(),
                    &opts,
                    train,
                );
            }
            // Object code is the CPU target's product, like PTX for the GPU.
            if matches!(target, Some(Target::Cpu)) && matches!(emit, Emit::Ir) {
                return crate::backend::cpu::cli::build(
                    &c,
                    &file,
                    model.as_deref(),
                    output.as_deref(),
                    &lower,
                );
            }
            let text = match emit {
                Emit::Clif => {
                    match crate::backend::cpu::cli::clif(&c, &file, model.as_deref(), &lower) {
                        Ok(text) => text,
                        Err(code) => return code,
                    }
                }
                Emit::Ptx => {
                    eprintln!("error: --emit ptx needs --target gpu");
                    return ExitCode::FAILURE;
                }
                Emit::Ast => {
                    let ast = c
                        .program
                        .root
                        .and_then(|r| c.program.files.get(&r))
                        .map(|f| &f.ast);
                    match serde_json::to_string_pretty(&ast) {
                        Ok(s) => s + "\n",
                        Err(e) => {
                            eprintln!("error: cannot serialise the AST: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                Emit::Ir | Emit::Grad => {
                    let graphs: Vec<_> = c
                        .graphs
                        .iter()
                        .filter(|g| model.as_ref().is_none_or(|m| *m == g.name))
                        .collect();
                    if graphs.is_empty() {
                        let names: Vec<&str> = c.graphs.iter().map(|g| g.name.as_str()).collect();
                        eprintln!(
                            "error: no model {} in {} (models: {})",
                            model.as_deref().map_or(String::new(), |m| format!("`{m}`")),
                            file.display(),
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        );
                        return ExitCode::FAILURE;
                    }
                    let print = |g: &crate::ir::Graph| match emit {
                        Emit::Grad => {
                            crate::autodiff::print_grad(g, &crate::autodiff::differentiate(g))
                        }
                        _ => print_graph(g),
                    };
                    graphs
                        .iter()
                        .map(|g| print(g))
                        .collect::<Vec<_>>()
                        .join("\n")
                }
                Emit::Mlir | Emit::MlirGrad | Emit::LlvmMlir => {
                    let stage = match emit {
                        Emit::Mlir => crate::mlir::Stage::Mlir,
                        Emit::MlirGrad => crate::mlir::Stage::MlirGrad,
                        _ => crate::mlir::Stage::LlvmMlir,
                    };
                    match emit_mlir(&c, &file, model.as_deref(), &lower, stage) {
                        Ok(text) => text,
                        Err(code) => return code,
                    }
                }
            };
            write_output(output.as_deref(), &text)
        }
        Command::Frames(args) => frames::run(args),
        Command::Train(args) => train::run_train(args),
        Command::Eval(args) => train::run_eval(args),
        Command::Compare(args) => train::run_compare(args),
        Command::Plot(args) => train::run_plot(args),
        Command::Viz(args) => viz::run_viz(args),
        Command::Explain { code } => match explain(&code) {
            Some(c) => {
                println!("{}: {}\n\n{}", c.as_str(), c.title(), c.explanation());
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("error: unknown error code `{code}` (codes look like E0006)");
                ExitCode::FAILURE
            }
        },
    }
}

/// Lowers the selected models (all by default) into one MLIR module.
fn emit_mlir(
    c: &Compilation,
    file: &std::path::Path,
    model: Option<&str>,
    opts: &crate::mlir::LowerOptions,
    stage: crate::mlir::Stage,
) -> Result<String, ExitCode> {
    let graphs: Vec<_> = c
        .graphs
        .iter()
        .filter(|g| model.is_none_or(|m| m == g.name))
        .collect();
    if graphs.is_empty() {
        let names: Vec<&str> = c.graphs.iter().map(|g| g.name.as_str()).collect();
        eprintln!(
            "error: no model {} in {} (models: {})",
            model.map_or(String::new(), |m| format!("`{m}`")),
            file.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
        return Err(ExitCode::FAILURE);
    }
    crate::mlir::emit(&graphs, opts, stage)
        .map(|(text, _)| text)
        .map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        })
}

fn report(c: &Compilation) {
    if !c.diags.items.is_empty() {
        eprint!("{}", c.diags.render_plain(&c.program.sources));
    }
}

/// Writes atomically (temp file + rename) so an interrupted run never leaves half a file.
fn write_output(path: Option<&std::path::Path>, text: &str) -> ExitCode {
    let Some(path) = path else {
        use std::io::Write as _;
        // A closed pipe (`snnc build ... | head`) is the reader's choice, not an error.
        return match std::io::stdout().lock().write_all(text.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                eprintln!("error: cannot write to stdout: {e}");
                ExitCode::FAILURE
            }
            _ => ExitCode::SUCCESS,
        };
    };
    let tmp = path.with_extension("tmp-snnc");
    let result = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            eprintln!("error: cannot write `{}`: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
