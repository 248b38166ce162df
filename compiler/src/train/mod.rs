//! The training driver behind `snnc train / eval / compare`: resolves a model's `train { }`
//! section and command-line overrides into a run, feeds batches from the runtime's loader
//! through an execution backend (`executor`: the interpreter, the CPU backend's JIT or the GPU
//! backend's kernels), steps
//! the optimiser, logs, evaluates spikes and energy, and checkpoints atomically so `--resume`
//! continues exactly.

mod config;
mod executor;
#[cfg(feature = "gpu")]
mod gpu;

pub use config::{DataSource, RunConfig, RunOverrides};
pub use executor::{
    Backend, CpuExecutor, EvalOutput, Executor, InterpExecutor, LossFn, Step, executor,
};

use crate::interp::{ParamStore, loss};
use crate::ir::cost::layer_counts;
use crate::ir::printer::print_graph;
use crate::ir::{Graph, InputSource, Op, ValueId};
use ndarray::ArrayD;
use snn_runtime::data::{Batch, Loader};
use snn_runtime::metrics::{EnergyReport, LayerStats, Summary, energy_report};
use snn_runtime::train::{
    LogRecord, Optimizer, RunLog, ScheduleState, TrainState, checkpoint, hash_ir,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// A failed run: what went wrong, in words that say what to do.
#[derive(Debug)]
pub struct RunError(pub String);

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RunError {}

macro_rules! run_err {
    ($($t:tt)*) => { RunError(format!($($t)*)) };
}
pub(crate) use run_err;

/// Metrics of one pass over a split.
#[derive(Clone, Debug)]
pub struct EpochMetrics {
    pub loss: f64,
    pub accuracy: f64,
    pub samples: usize,
    pub samples_per_s: f64,
    pub stats: Vec<LayerStats>,
    pub energy: Option<EnergyReport>,
}

impl EpochMetrics {
    pub fn firing_rates(&self) -> BTreeMap<String, f64> {
        self.stats
            .iter()
            .map(|s| (s.name.clone(), s.firing_rate()))
            .collect()
    }

    pub fn spikes_per_sample(&self) -> f64 {
        self.stats.iter().map(|s| s.spikes as f64).sum::<f64>() / self.samples.max(1) as f64
    }

    pub fn summary(&self, name: &str) -> Option<Summary> {
        self.energy
            .as_ref()
            .map(|e| Summary::from_report(name, self.accuracy, e))
    }
}

fn labels(batch: &Batch) -> Vec<usize> {
    batch.labels.iter().map(|l| *l as usize).collect()
}

/// The name of the model's (single) input.
fn input_name(g: &Graph) -> Result<String, RunError> {
    let mut inputs = g.inputs().filter_map(|(_, n)| match &n.op {
        Op::Input {
            name,
            source: InputSource::Events { .. },
        } => Some(name.clone()),
        _ => None,
    });
    let name = inputs.next().ok_or_else(|| {
        run_err!(
            "model `{}` has no event input; `snnc train` trains on event data",
            g.name
        )
    })?;
    if inputs.next().is_some() {
        return Err(run_err!(
            "model `{}` has several inputs; training supports one event input",
            g.name
        ));
    }
    Ok(name)
}

fn scan_stats(g: &Graph, spike_counts: &[(ValueId, f64, usize)], stats: &mut Vec<LayerStats>) {
    for (id, spikes, steps) in spike_counts {
        let name = &g.node(*id).name;
        let entry = match stats.iter_mut().position(|s| &s.name == name) {
            Some(i) => &mut stats[i],
            None => {
                stats.push(LayerStats::new(name.clone()));
                stats.last_mut().expect("just pushed")
            }
        };
        entry.add(spikes.round() as u64, *steps as u64);
    }
}

fn loss_and_grad(
    cfg: &RunConfig,
    readout: &ArrayD<f64>,
    targets: &[usize],
) -> Result<(f64, ArrayD<f64>), RunError> {
    let r = match cfg.loss {
        config::LossKind::CrossEntropy => loss::cross_entropy(readout, targets),
        config::LossKind::MseRate => loss::mse_one_hot(readout, targets),
    };
    r.map_err(|e| run_err!("loss: {e}"))
}

/// Evaluates `params` on `loader` (eval mode) on `cfg.backend`: loss, accuracy, spikes and
/// energy.
pub fn evaluate(
    g: &Graph,
    cfg: &RunConfig,
    params: &ParamStore,
    loader: &Loader,
    progress: bool,
) -> Result<EpochMetrics, RunError> {
    let mut exec = executor(cfg.backend, g, cfg.seed, &cfg.run_dir)?;
    evaluate_with(exec.as_mut(), g, cfg, params, loader, progress)
}

/// [`evaluate`] on an existing executor (training reuses its compiled code).
pub fn evaluate_with(
    exec: &mut dyn Executor,
    g: &Graph,
    cfg: &RunConfig,
    params: &ParamStore,
    loader: &Loader,
    progress: bool,
) -> Result<EpochMetrics, RunError> {
    let started = Instant::now();
    let (mut loss_sum, mut correct, mut samples) = (0.0, 0usize, 0usize);
    let mut stats = Vec::new();
    let bar = progress_bar(progress, loader.batches_per_epoch() as u64, "eval");
    for batch in loader.epoch(0) {
        let batch = batch.map_err(|e| run_err!("{e}"))?;
        let targets = labels(&batch);
        let out = exec.eval_batch(params, &batch)?;
        let (l, _) = loss_and_grad(cfg, &out.readout, &targets)?;
        loss_sum += l * targets.len() as f64;
        correct += snn_runtime::metrics::correct(out.readout.view(), &targets)
            .map_err(|e| run_err!("{e}"))?;
        samples += targets.len();
        scan_stats(g, &out.spike_counts, &mut stats);
        if let Some(b) = &bar {
            b.inc(1);
            b.set_message(format!(
                "acc {:.1}%",
                100.0 * correct as f64 / samples.max(1) as f64
            ));
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let energy = energy_report(&layer_counts(g), &stats, samples as u64).ok();
    Ok(EpochMetrics {
        loss: loss_sum / samples.max(1) as f64,
        accuracy: correct as f64 / samples.max(1) as f64,
        samples,
        samples_per_s: samples as f64 / started.elapsed().as_secs_f64().max(1e-9),
        stats,
        energy,
    })
}

fn progress_bar(enabled: bool, len: u64, prefix: &str) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>8} [{bar:30}] {pos}/{len} {msg} eta {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix.to_string());
    Some(bar)
}

/// The outcome of a training run.
pub struct RunResult {
    pub run_dir: PathBuf,
    pub params: ParamStore,
    pub test: Option<EpochMetrics>,
    pub epochs_done: usize,
}

fn record(epoch: usize, step: u64, split: &str, m: &EpochMetrics, lr: Option<f64>) -> LogRecord {
    LogRecord {
        epoch,
        step,
        split: split.into(),
        loss: Some(m.loss),
        accuracy: Some(m.accuracy),
        spikes_per_sample: Some(m.spikes_per_sample()),
        firing_rates: m.firing_rates(),
        samples_per_s: Some(m.samples_per_s),
        lr,
        energy_uj: m.energy.as_ref().map(|e| e.total_energy_uj),
    }
}

/// Trains `g` as `cfg` says, in `cfg.run_dir`; resumes from its checkpoint when `resume`.
pub fn train(g: &Graph, cfg: &RunConfig, resume: bool) -> Result<RunResult, RunError> {
    input_name(g)?;
    let (train_loader, test_loader) = cfg.loaders(g)?;
    let ir_hash = hash_ir(&print_graph(g));
    let shapes: Vec<Vec<usize>> = g.params.iter().map(|p| p.shape.clone()).collect();
    let (mut params, mut optimizer, mut state) = if resume {
        let (loaded, state) =
            checkpoint::load(&cfg.run_dir).map_err(|e| run_err!("cannot resume: {e}"))?;
        state.check_ir_hash(&cfg.run_dir, &ir_hash).map_err(|e| run_err!("cannot resume: {e}\n  = help: the model changed since the checkpoint was written; start a new run directory"))?;
        let expected: Vec<(String, Vec<usize>)> = g
            .params
            .iter()
            .map(|p| (p.name.clone(), p.shape.clone()))
            .collect();
        let values = checkpoint::match_params(&cfg.run_dir, loaded, &expected)
            .map_err(|e| run_err!("cannot resume: {e}"))?;
        let optimizer = Optimizer::from_state(cfg.optimizer, state.optimizer.clone())
            .map_err(|e| run_err!("cannot resume: {e}"))?;
        (ParamStore { values }, optimizer, state)
    } else {
        if checkpoint::exists(&cfg.run_dir) {
            return Err(run_err!(
                "{} already holds a checkpoint\n  = help: pass `--resume {}` to continue it, or choose another `--run-dir`",
                cfg.run_dir.display(),
                cfg.run_dir.display()
            ));
        }
        let optimizer = Optimizer::new(cfg.optimizer, &shapes).map_err(|e| run_err!("{e}"))?;
        let state = TrainState {
            format: 1,
            model_name: g.name.clone(),
            ir_hash: ir_hash.clone(),
            epoch: 0,
            global_step: 0,
            optimizer: optimizer.state(),
            schedule: ScheduleState::default(),
            rng_state: vec![cfg.seed],
            data_order_seed: cfg.seed,
            history: Vec::new(),
            extra: BTreeMap::new(),
        };
        (ParamStore::init(g, cfg.seed), optimizer, state)
    };
    // The executor first: a backend that cannot start (no GPU) leaves the run directory as it
    // was.
    let mut exec = executor(cfg.backend, g, cfg.seed, &cfg.run_dir)?;
    let mut log = RunLog::open(&cfg.run_dir).map_err(|e| run_err!("{e}"))?;
    let mut last_test = None;
    for epoch in state.epoch..cfg.epochs {
        let lr = cfg
            .schedule
            .lr_for_epoch(cfg.optimizer.lr(), epoch, &state.schedule);
        let started = Instant::now();
        let (mut loss_sum, mut correct, mut samples) = (0.0, 0usize, 0usize);
        let mut stats = Vec::new();
        let bar = progress_bar(
            cfg.progress,
            train_loader.batches_per_epoch() as u64,
            &format!("epoch {}", epoch + 1),
        );
        for batch in train_loader.epoch(epoch as u64) {
            let batch = batch.map_err(|e| run_err!("{e}"))?;
            let targets = labels(&batch);
            let step_no = state.global_step;
            let mut loss_fn = |readout: &ArrayD<f64>| {
                let (l, d_out) = loss_and_grad(cfg, readout, &targets)?;
                if !l.is_finite() {
                    return Err(run_err!(
                        "the loss became {l} at epoch {}, step {step_no}; training stopped and the last good checkpoint in {} is kept\n  = help: lower the learning rate",
                        epoch + 1,
                        cfg.run_dir.display()
                    ));
                }
                Ok((l, d_out))
            };
            let on_device = exec.train_step_on_device(
                &params,
                &mut optimizer,
                lr,
                &batch,
                step_no,
                &mut loss_fn,
            )?;
            let step = match on_device {
                Some(step) => step,
                None => {
                    let mut step = exec.train_step(&params, &batch, step_no, &mut loss_fn)?;
                    optimizer
                        .step(&mut params.values, &step.grads, lr)
                        .map_err(|e| run_err!("{e}"))?;
                    for (k, v) in std::mem::take(&mut step.running_updates) {
                        params.values[k] = v;
                    }
                    step
                }
            };
            state.global_step += 1;
            let l = step.loss;
            loss_sum += l * targets.len() as f64;
            correct += snn_runtime::metrics::correct(step.readout.view(), &targets)
                .map_err(|e| run_err!("{e}"))?;
            samples += targets.len();
            scan_stats(g, &step.spike_counts, &mut stats);
            if let Some(b) = &bar {
                b.inc(1);
                let spikes: f64 =
                    stats.iter().map(|s| s.spikes as f64).sum::<f64>() / samples.max(1) as f64;
                b.set_message(format!(
                    "loss {:.4} acc {:.1}% spikes/sample {:.0} {:.1} samples/s",
                    loss_sum / samples.max(1) as f64,
                    100.0 * correct as f64 / samples.max(1) as f64,
                    spikes,
                    samples as f64 / started.elapsed().as_secs_f64().max(1e-9)
                ));
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let train_metrics = EpochMetrics {
            loss: loss_sum / samples.max(1) as f64,
            accuracy: correct as f64 / samples.max(1) as f64,
            samples,
            samples_per_s: samples as f64 / started.elapsed().as_secs_f64().max(1e-9),
            energy: energy_report(&layer_counts(g), &stats, samples as u64).ok(),
            stats,
        };
        // Steps on a device leave the parameters there: evaluation and the checkpoint read
        // them here.
        exec.sync_to_host(&mut params, &mut optimizer)?;
        cfg.schedule
            .observe(&mut state.schedule, cfg.optimizer.lr(), train_metrics.loss);
        let test = match &test_loader {
            Some(l) => Some(evaluate_with(
                exec.as_mut(),
                g,
                cfg,
                &params,
                l,
                cfg.progress,
            )?),
            None => None,
        };
        let train_rec = record(epoch, state.global_step, "train", &train_metrics, Some(lr));
        log.append(&train_rec).map_err(|e| run_err!("{e}"))?;
        state.history.push(train_rec);
        if let Some(t) = &test {
            let rec = record(epoch, state.global_step, "test", t, None);
            log.append(&rec).map_err(|e| run_err!("{e}"))?;
            state.history.push(rec);
        }
        if cfg.progress {
            eprintln!(
                "epoch {:>3}/{}: train loss {:.4} acc {:.1}% | {} | {:.1} samples/s",
                epoch + 1,
                cfg.epochs,
                train_metrics.loss,
                100.0 * train_metrics.accuracy,
                test.as_ref()
                    .map_or("no test split".to_string(), |t| format!(
                        "test loss {:.4} acc {:.1}% spikes/sample {:.0}",
                        t.loss,
                        100.0 * t.accuracy,
                        t.spikes_per_sample()
                    )),
                train_metrics.samples_per_s
            );
        }
        state.epoch = epoch + 1;
        state.optimizer = optimizer.state();
        let named: Vec<(String, &ArrayD<f64>)> = g
            .params
            .iter()
            .map(|p| p.name.clone())
            .zip(params.values.iter())
            .collect();
        checkpoint::save(&cfg.run_dir, &named, &state).map_err(|e| run_err!("{e}"))?;
        if cfg.stop_after_epochs.is_some_and(|n| epoch + 1 >= n) {
            return Ok(RunResult {
                run_dir: cfg.run_dir.clone(),
                params,
                test,
                epochs_done: epoch + 1,
            });
        }
        last_test = test;
    }
    Ok(RunResult {
        run_dir: cfg.run_dir.clone(),
        params,
        test: last_test,
        epochs_done: state.epoch,
    })
}
