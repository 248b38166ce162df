//! Execution backends of the training driver behind one trait: the reference interpreter (f64)
//! and compiled `forward_train` / `backward` (f32, docs/abi.md) in one [`CompiledExecutor`],
//! from the CPU JIT here or the GPU (`train::gpu`).

use super::{RunError, input_name, run_err};
use crate::backend::cpu::{CompiledTraining, TrainScratch};
use crate::interp::{Interpreter, Mode, Options, ParamStore};
use crate::ir::{Graph, ParamRole, ValueId};
use crate::mlir::LowerOptions;
use crate::mlir::grad::{TrainArg, TrainRole};
use ndarray::{ArrayD, IxDyn};
use snn_runtime::data::Batch;
use snn_runtime::train::Optimizer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Which executor runs the forward and backward passes (`--backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// The reference interpreter, in f64.
    #[default]
    Interp,
    /// The CPU backend: forward_train and backward JIT-compiled by Cranelift, in f32.
    Cpu,
    /// The GPU backend: forward_train and backward as PTX kernels on CUDA device 0, in f32.
    Gpu,
    /// [`Backend::Gpu`] with the matrix products (convolutions, dense layers) on the tensor
    /// cores in TF32: operands rounded to a 10-bit mantissa, sums in f32, as PyTorch runs
    /// convolutions by default.
    GpuTf32,
}

impl std::str::FromStr for Backend {
    type Err = RunError;
    fn from_str(s: &str) -> Result<Self, RunError> {
        match s {
            "interp" => Ok(Backend::Interp),
            "cpu" => Ok(Backend::Cpu),
            "gpu" => Ok(Backend::Gpu),
            "gpu-tf32" => Ok(Backend::GpuTf32),
            _ => Err(run_err!(
                "unknown backend `{s}` (interp, cpu, gpu, gpu-tf32)"
            )),
        }
    }
}

/// The loss of a readout and its gradient, computed by the driver (f64, both backends).
pub type LossFn<'a> = dyn FnMut(&ArrayD<f64>) -> Result<(f64, ArrayD<f64>), RunError> + 'a;

/// What one training step produced; the driver applies the optimiser and the updates.
pub struct Step {
    pub loss: f64,
    pub readout: ArrayD<f64>,
    /// By parameter index; `None` for non-trainable parameters.
    pub grads: Vec<Option<ArrayD<f64>>>,
    /// New batchnorm running statistics, by parameter index.
    pub running_updates: Vec<(usize, ArrayD<f64>)>,
    /// Per spike-emitting scan, in node order: (node, total spikes, neuron-steps).
    pub spike_counts: Vec<(ValueId, f64, usize)>,
}

/// One evaluated batch (eval mode: batchnorm on running statistics, no dropout).
pub struct EvalOutput {
    pub readout: ArrayD<f64>,
    pub spike_counts: Vec<(ValueId, f64, usize)>,
}

/// Runs training steps and evaluation batches of one graph.
pub trait Executor {
    /// Forward in train mode, `loss` on the readout, backward. `step` is the global step (it
    /// seeds dropout, so that a resumed run draws the same masks).
    fn train_step(
        &mut self,
        params: &ParamStore,
        batch: &Batch,
        step: u64,
        loss: &mut LossFn,
    ) -> Result<Step, RunError>;

    fn eval_batch(&mut self, params: &ParamStore, batch: &Batch) -> Result<EvalOutput, RunError>;

    /// A training step with the optimiser on the executor's device, where it has one that can
    /// run `optimizer` (the GPU with Adam or AdamW): forward, `loss`, backward and the update
    /// at learning rate `lr`, with parameters, running statistics and moments kept on the
    /// device (the step is counted in `optimizer`; `params` is stale until
    /// [`Self::sync_to_host`]). `Ok(None)`: not here, run [`Self::train_step`] and the host's
    /// optimiser instead.
    fn train_step_on_device(
        &mut self,
        _params: &ParamStore,
        _optimizer: &mut Optimizer,
        _lr: f64,
        _batch: &Batch,
        _step: u64,
        _loss: &mut LossFn,
    ) -> Result<Option<Step>, RunError> {
        Ok(None)
    }

    /// Brings what device steps changed (parameters, running statistics, the optimiser's
    /// moments) into `params` and `optimizer`, before the driver evaluates or checkpoints.
    fn sync_to_host(
        &mut self,
        _params: &mut ParamStore,
        _optimizer: &mut Optimizer,
    ) -> Result<(), RunError> {
        Ok(())
    }
}

/// The executor `backend` names, for `g` (`run_dir`: where the error messages point).
pub fn executor<'g>(
    backend: Backend,
    g: &'g Graph,
    seed: u64,
    run_dir: &Path,
) -> Result<Box<dyn Executor + 'g>, RunError> {
    Ok(match backend {
        Backend::Interp => Box::new(InterpExecutor::new(g, seed, run_dir)?),
        Backend::Cpu => Box::new(CpuExecutor::new(g, seed, run_dir)?),
        Backend::Gpu => gpu_executor(g, seed, run_dir, false)?,
        Backend::GpuTf32 => gpu_executor(g, seed, run_dir, true)?,
    })
}

#[cfg(feature = "gpu")]
fn gpu_executor<'g>(
    g: &'g Graph,
    seed: u64,
    run_dir: &Path,
    tf32: bool,
) -> Result<Box<dyn Executor + 'g>, RunError> {
    Ok(Box::new(super::gpu::GpuExecutor::new(
        g, seed, run_dir, tf32,
    )?))
}

#[cfg(not(feature = "gpu"))]
fn gpu_executor<'g>(
    g: &'g Graph,
    _seed: u64,
    _run_dir: &Path,
    _tf32: bool,
) -> Result<Box<dyn Executor + 'g>, RunError> {
    Err(run_err!(
        "cannot run `{}` on the GPU: this snnc was built without its `gpu` feature\n  = help: rebuild with `cargo build --release --features gpu`, or run it on the CPU with `--device cpu`",
        g.name
    ))
}

/// The batch as the interpreter takes it: f64, [T, B, C, H, W].
fn batch_input(batch: &Batch) -> ArrayD<f64> {
    batch.frames.mapv(f64::from).into_dyn()
}

fn nan_error(e: impl std::fmt::Display, run_dir: &Path) -> RunError {
    run_err!(
        "training stopped: {e}\n  = note: the last good checkpoint in {} is kept\n  = help: lower the learning rate or check the input data",
        run_dir.display()
    )
}

/// The reference interpreter (f64): exact, slow.
pub struct InterpExecutor<'g> {
    train: Interpreter<'g>,
    eval: Interpreter<'g>,
    input: String,
    seed: u64,
    run_dir: PathBuf,
}

impl<'g> InterpExecutor<'g> {
    pub fn new(g: &'g Graph, seed: u64, run_dir: &Path) -> Result<Self, RunError> {
        let options = |mode| Options {
            mode,
            smooth_fire: None,
            dropout_seed: 0,
        };
        Ok(InterpExecutor {
            // Built once: `Interpreter::new` differentiates the graph; only the dropout seed
            // changes per step.
            train: Interpreter::new(g, options(Mode::Train)),
            eval: Interpreter::new(g, options(Mode::Eval)),
            input: input_name(g)?,
            seed,
            run_dir: run_dir.to_path_buf(),
        })
    }
}

impl Executor for InterpExecutor<'_> {
    fn train_step(
        &mut self,
        params: &ParamStore,
        batch: &Batch,
        step: u64,
        loss: &mut LossFn,
    ) -> Result<Step, RunError> {
        // Dropout masks derive from (seed, step) alone, so a resumed run draws the same ones.
        self.train.options.dropout_seed = crate::interp::dropout_seed(self.seed, step);
        let fwd = self
            .train
            .forward(params, &[(&self.input, batch_input(batch))])
            .map_err(|e| nan_error(e, &self.run_dir))?;
        let (l, d_out) = loss(&fwd.outputs[0])?;
        let grads = self
            .train
            .backward(params, &fwd, &[d_out])
            .map_err(|e| nan_error(e, &self.run_dir))?;
        let g = self.train.graph;
        let grads = grads
            .params
            .into_iter()
            .zip(&g.params)
            .map(|(grad, p)| grad.filter(|_| p.role.trainable()))
            .collect();
        Ok(Step {
            loss: l,
            running_updates: fwd
                .running_updates
                .iter()
                .map(|(p, v)| (p.0, v.clone()))
                .collect(),
            spike_counts: fwd.spike_counts.clone(),
            readout: fwd.outputs.into_iter().next().unwrap_or_default(),
            grads,
        })
    }

    fn eval_batch(&mut self, params: &ParamStore, batch: &Batch) -> Result<EvalOutput, RunError> {
        let fwd = self
            .eval
            .forward(params, &[(&self.input, batch_input(batch))])
            .map_err(|e| run_err!("evaluation: {e}"))?;
        Ok(EvalOutput {
            spike_counts: fwd.spike_counts,
            readout: fwd.outputs.into_iter().next().unwrap_or_default(),
        })
    }
}

/// A compiled backend's training functions for one batch size, as [`CompiledExecutor`] drives
/// them (f32; docs/abi.md).
pub trait CompiledCode {
    /// The arguments of `forward_train`, in order.
    fn forward_signature(&self) -> &[TrainArg];
    /// Sets dropout mask `name` for the next `forward_train`.
    fn set_mask(&mut self, name: &str, mask: &[f32]) -> Result<(), String>;
    /// `forward_train` on `inputs` and `params` (every parameter and running statistic in
    /// `Graph::params` order; the running statistics are updated in place): the model outputs.
    fn forward_train(
        &mut self,
        inputs: &[&[f32]],
        params: &mut [Vec<f32>],
    ) -> Result<Vec<Vec<f32>>, String>;
    /// `backward` over what the last `forward_train` saw (the same `inputs` and `params`):
    /// the trainable parameters' gradients in `Graph::params` order.
    fn backward(
        &mut self,
        inputs: &[&[f32]],
        params: &[Vec<f32>],
        d_outputs: &[&[f32]],
    ) -> Result<Vec<Vec<f32>>, String>;
    /// The spike count and element count of saved spike train `name`.
    fn spike_count(&self, name: &str) -> Result<(f64, usize), String>;

    /// Whether this code runs the optimiser step on its device; the methods below are then
    /// available (they fail elsewhere).
    fn device_optimizer(&self) -> bool {
        false
    }

    /// Uploads every parameter and running statistic (`Graph::params` order) and Adam's
    /// moments (per trainable parameter), to stay on the device.
    fn upload_state(
        &mut self,
        _params: &[Vec<f32>],
        _moments: &[(Vec<f32>, Vec<f32>)],
    ) -> Result<(), String> {
        Err(NO_DEVICE_OPTIMIZER.into())
    }

    /// Downloads what `upload_state` uploads, as the device has it now.
    fn download_state(
        &self,
        _params: &mut [Vec<f32>],
        _moments: &mut Vec<(Vec<f32>, Vec<f32>)>,
    ) -> Result<(), String> {
        Err(NO_DEVICE_OPTIMIZER.into())
    }

    /// Takes over the device state of the same model compiled for another batch size.
    fn copy_state_from(&mut self, _other: &Self) -> Result<(), String>
    where
        Self: Sized,
    {
        Err(NO_DEVICE_OPTIMIZER.into())
    }

    /// `forward_train` on the parameters on the device: the model outputs.
    fn forward_resident(&mut self, _inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, String> {
        Err(NO_DEVICE_OPTIMIZER.into())
    }

    /// `backward`, then the optimiser step with `scalars` (`Optimizer::device_scalars`).
    fn backward_and_update(
        &mut self,
        _d_outputs: &[&[f32]],
        _scalars: &[f32],
    ) -> Result<(), String> {
        Err(NO_DEVICE_OPTIMIZER.into())
    }
}

const NO_DEVICE_OPTIMIZER: &str = "internal: this backend runs the optimiser on the host";

/// Where compiled training functions come from: the CPU JIT or a GPU.
pub trait CompiledBackend {
    type Code: CompiledCode;
    /// `g`'s training functions at batch `batch` (`eval`: evaluation semantics, no backward).
    fn compile(&mut self, g: &Graph, batch: usize, eval: bool) -> Result<Self::Code, RunError>;
}

/// A compiled backend behind the [`Executor`] trait: `forward_train` + `backward` compiled per
/// batch size (the full batch, and lazily the smaller last batch of an epoch), run in f32 on
/// f64 parameters converted per step. Evaluation runs `forward_train` compiled with
/// [`LowerOptions::eval`] (batchnorm on the running statistics, which it leaves unchanged; no
/// dropout; the saved spikes give the counts) when the graph has batchnorm or dropout, and the
/// training variant otherwise (the same code then). Dropout masks are drawn on the host per
/// step, as the interpreter draws them.
pub struct CompiledExecutor<'g, B: CompiledBackend> {
    g: &'g Graph,
    backend: B,
    /// Compiled code by (batch size, eval).
    variants: HashMap<(usize, bool), B::Code>,
    /// Spike-emitting scans in node order: (node, name of its `saved` buffer).
    spike_scans: Vec<(ValueId, String)>,
    /// The parameters in f32, rewritten from the store every step.
    params32: Vec<Vec<f32>>,
    /// The variant holding the training state when steps run on the device
    /// (`train_step_on_device`); `None` while the host's store is the state.
    resident: Option<(usize, bool)>,
    eval_differs: bool,
    seed: u64,
    run_dir: PathBuf,
    /// Compile time of every variant so far (reported once by the driver).
    pub compile_seconds: f64,
}

/// The CPU backend's executor (Cranelift JIT).
pub type CpuExecutor<'g> = CompiledExecutor<'g, CpuBackend>;

/// [`CompiledBackend`] of the CPU JIT.
pub struct CpuBackend;

/// The CPU JIT's functions with the buffers that pass between them.
pub struct CpuCode {
    code: CompiledTraining,
    scratch: TrainScratch,
}

impl CompiledBackend for CpuBackend {
    type Code = CpuCode;

    fn compile(&mut self, g: &Graph, batch: usize, eval: bool) -> Result<CpuCode, RunError> {
        let opts = LowerOptions {
            eval,
            ..LowerOptions::with_batch(batch)
        };
        let code = CompiledTraining::compile(g, &opts).map_err(|e| {
            run_err!(
                "the CPU backend cannot compile `{}`: {e}\n  = help: train with `--backend interp`",
                g.name
            )
        })?;
        let scratch = code.scratch();
        Ok(CpuCode { code, scratch })
    }
}

impl CompiledCode for CpuCode {
    fn forward_signature(&self) -> &[TrainArg] {
        self.code.signatures().0
    }

    fn set_mask(&mut self, name: &str, mask: &[f32]) -> Result<(), String> {
        let dst = self
            .scratch
            .get_mut(name)
            .ok_or_else(|| format!("internal: no buffer for `{name}`"))?;
        if dst.len() != mask.len() {
            return Err(format!("internal: mask `{name}` has the wrong size"));
        }
        dst.copy_from_slice(mask);
        Ok(())
    }

    fn forward_train(
        &mut self,
        inputs: &[&[f32]],
        params: &mut [Vec<f32>],
    ) -> Result<Vec<Vec<f32>>, String> {
        self.code
            .forward_train(inputs, params, &mut self.scratch)
            .map_err(|e| e.to_string())
    }

    fn backward(
        &mut self,
        inputs: &[&[f32]],
        params: &[Vec<f32>],
        d_outputs: &[&[f32]],
    ) -> Result<Vec<Vec<f32>>, String> {
        self.code
            .backward(inputs, params, &self.scratch, d_outputs)
            .map(|g| g.params)
            .map_err(|e| e.to_string())
    }

    fn spike_count(&self, name: &str) -> Result<(f64, usize), String> {
        let y = self
            .scratch
            .get(name)
            .ok_or_else(|| format!("internal: spikes of `{name}` are not saved"))?;
        Ok((spike_sum(y), y.len()))
    }
}

impl<'g> CpuExecutor<'g> {
    /// `seed`: the run's seed, which with the step gives the dropout masks.
    pub fn new(g: &'g Graph, seed: u64, run_dir: &Path) -> Result<Self, RunError> {
        Ok(CompiledExecutor::with_backend(g, CpuBackend, seed, run_dir))
    }
}

impl<'g, B: CompiledBackend> CompiledExecutor<'g, B> {
    /// An executor of `g` on `backend`; `seed`: the run's seed (with the step, the dropout
    /// masks); `run_dir`: where error messages point.
    pub fn with_backend(g: &'g Graph, backend: B, seed: u64, run_dir: &Path) -> Self {
        CompiledExecutor {
            g,
            backend,
            variants: HashMap::new(),
            spike_scans: spike_scans(g),
            params32: Vec::new(),
            resident: None,
            eval_differs: eval_differs(g),
            seed,
            run_dir: run_dir.to_path_buf(),
            compile_seconds: 0.0,
        }
    }

    /// The compiled functions for batch size `b` (eval semantics when `eval`), compiled on
    /// first use.
    fn variant(&mut self, b: usize, eval: bool) -> Result<&mut B::Code, RunError> {
        let key = (b, eval);
        if !self.variants.contains_key(&key) {
            let started = std::time::Instant::now();
            let code = self.backend.compile(self.g, b, eval)?;
            self.compile_seconds += started.elapsed().as_secs_f64();
            self.variants.insert(key, code);
        }
        self.variants
            .get_mut(&key)
            .ok_or_else(|| run_err!("internal: batch {b} was not compiled"))
    }

    /// Puts the training state into variant `key` (compiled): from the host's store and
    /// optimiser the first time, else from the variant that holds it now, on the device.
    fn make_resident(
        &mut self,
        key: (usize, bool),
        params: &ParamStore,
        optimizer: &Optimizer,
    ) -> Result<(), RunError> {
        match self.resident {
            Some(k) if k == key => return Ok(()),
            Some(k) => {
                let from = self
                    .variants
                    .remove(&k)
                    .ok_or_else(|| run_err!("internal: batch {} was not compiled", k.0))?;
                let copied = self
                    .variants
                    .get_mut(&key)
                    .ok_or_else(|| run_err!("internal: batch {} was not compiled", key.0))
                    .and_then(|to| to.copy_state_from(&from).map_err(|e| run_err!("{e}")));
                self.variants.insert(k, from);
                copied?;
            }
            None => {
                params_to_f32(self.g, params, &mut self.params32)?;
                let moments: Vec<(Vec<f32>, Vec<f32>)> = self
                    .g
                    .params
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.role.trainable())
                    .map(|(k, p)| match optimizer.moments(k) {
                        Some((m, v)) => (
                            m.iter().map(|x| *x as f32).collect(),
                            v.iter().map(|x| *x as f32).collect(),
                        ),
                        None => {
                            let n = p.shape.iter().product();
                            (vec![0.0; n], vec![0.0; n])
                        }
                    })
                    .collect();
                let params32 = std::mem::take(&mut self.params32);
                let uploaded = self
                    .variants
                    .get_mut(&key)
                    .ok_or_else(|| run_err!("internal: batch {} was not compiled", key.0))
                    .and_then(|v| {
                        v.upload_state(&params32, &moments)
                            .map_err(|e| run_err!("{e}"))
                    });
                self.params32 = params32;
                uploaded?;
            }
        }
        self.resident = Some(key);
        Ok(())
    }

    fn spike_counts(&self, key: (usize, bool)) -> Result<Vec<(ValueId, f64, usize)>, RunError> {
        let v = self
            .variants
            .get(&key)
            .ok_or_else(|| run_err!("internal: batch {} was not compiled", key.0))?;
        self.spike_scans
            .iter()
            .map(|(id, name)| {
                let (sum, n) = v.spike_count(name).map_err(|e| run_err!("{e}"))?;
                Ok((*id, sum, n))
            })
            .collect()
    }

    /// Runs `forward_train` on `batch`: training step `step`, or with eval semantics when
    /// `None`. Returns the batch size and the readout.
    fn forward(
        &mut self,
        params: &ParamStore,
        batch: &Batch,
        step: Option<u64>,
    ) -> Result<(usize, ArrayD<f64>), RunError> {
        let eval = step.is_none() && self.eval_differs;
        let seed = self.seed;
        params_to_f32(self.g, params, &mut self.params32)?;
        let b = batch.labels.len();
        let frames = batch.frames.as_standard_layout();
        let x = frames
            .as_slice()
            .ok_or_else(|| run_err!("internal: the batch is not contiguous"))?;
        let g: &Graph = self.g;
        // Taken out so that the variant (a borrow of `self`) and the parameters can be used
        // together; `params_to_f32` refills it on the next step if an error leaves it empty.
        let mut params32 = std::mem::take(&mut self.params32);
        let v = self.variant(b, eval)?;
        if let Some(step) = step {
            for (name, mask) in dropout_masks(g, v.forward_signature(), seed, step)? {
                v.set_mask(&name, &mask).map_err(|e| run_err!("{e}"))?;
            }
        }
        let outputs = v
            .forward_train(&[x], &mut params32)
            .map_err(|e| run_err!("{e}"))?;
        let readout = readout_array(g, v.forward_signature(), outputs)?;
        self.params32 = params32;
        Ok((b, readout))
    }
}

impl<B: CompiledBackend> Executor for CompiledExecutor<'_, B> {
    fn train_step(
        &mut self,
        params: &ParamStore,
        batch: &Batch,
        step: u64,
        loss: &mut LossFn,
    ) -> Result<Step, RunError> {
        let (b, readout) = self.forward(params, batch, Some(step))?;
        let (l, d_out) = loss(&readout)?;
        let d_out: Vec<f32> = d_out.iter().map(|v| *v as f32).collect();
        // The backward reads the parameters the forward saw: the running statistics the forward
        // updated in `params32` are not read by it (docs/abi.md), so no copy is needed.
        let frames = batch.frames.as_standard_layout();
        let x = frames
            .as_slice()
            .ok_or_else(|| run_err!("internal: the batch is not contiguous"))?;
        let v = self
            .variants
            .get_mut(&(b, false))
            .ok_or_else(|| run_err!("internal: batch {b} was not compiled"))?;
        let grads = v
            .backward(&[x], &self.params32, &[&d_out])
            .map_err(|e| run_err!("{e}"))?;
        let spike_counts = self.spike_counts((b, false))?;
        let (grads, running_updates) =
            compiled_step_results(self.g, grads, &self.params32, &self.run_dir)?;
        Ok(Step {
            loss: l,
            readout,
            grads,
            running_updates,
            spike_counts,
        })
    }

    fn train_step_on_device(
        &mut self,
        params: &ParamStore,
        optimizer: &mut Optimizer,
        lr: f64,
        batch: &Batch,
        step: u64,
        loss: &mut LossFn,
    ) -> Result<Option<Step>, RunError> {
        let g: &Graph = self.g;
        let trainable: Vec<bool> = g.params.iter().map(|p| p.role.trainable()).collect();
        let Some(scalars) = optimizer
            .device_scalars(lr, &trainable)
            .map_err(|e| run_err!("{e}"))?
        else {
            return Ok(None);
        };
        let b = batch.labels.len();
        let key = (b, false);
        if !self.variant(b, false)?.device_optimizer() {
            return Ok(None);
        }
        self.make_resident(key, params, optimizer)?;
        let frames = batch.frames.as_standard_layout();
        let x = frames
            .as_slice()
            .ok_or_else(|| run_err!("internal: the batch is not contiguous"))?;
        let seed = self.seed;
        let v = self.variant(b, false)?;
        for (name, mask) in dropout_masks(g, v.forward_signature(), seed, step)? {
            v.set_mask(&name, &mask).map_err(|e| run_err!("{e}"))?;
        }
        let outputs = v.forward_resident(&[x]).map_err(|e| run_err!("{e}"))?;
        let readout = readout_array(g, v.forward_signature(), outputs)?;
        let (l, d_out) = loss(&readout)?;
        let d_out: Vec<f32> = d_out.iter().map(|v| *v as f32).collect();
        v.backward_and_update(&[&d_out], &scalars)
            .map_err(|e| run_err!("{e}"))?;
        optimizer
            .record_device_step(&trainable)
            .map_err(|e| run_err!("{e}"))?;
        Ok(Some(Step {
            loss: l,
            readout,
            grads: vec![None; g.params.len()],
            running_updates: Vec::new(),
            spike_counts: self.spike_counts(key)?,
        }))
    }

    fn sync_to_host(
        &mut self,
        params: &mut ParamStore,
        optimizer: &mut Optimizer,
    ) -> Result<(), RunError> {
        let Some(key) = self.resident else {
            return Ok(());
        };
        let v = self
            .variants
            .get(&key)
            .ok_or_else(|| run_err!("internal: batch {} was not compiled", key.0))?;
        let mut params32 = std::mem::take(&mut self.params32);
        params32.resize_with(self.g.params.len(), Vec::new);
        let mut moments = Vec::new();
        v.download_state(&mut params32, &mut moments)
            .map_err(|e| run_err!("{e}"))?;
        // The device has no NaN check of its own between syncs: a non-finite value stops the
        // run here (or at the next loss), before it reaches a checkpoint.
        let mut trainable = 0;
        let mut values = Vec::with_capacity(params32.len());
        for (p, v) in self.g.params.iter().zip(&params32) {
            all_finite(&p.name, v).map_err(|e| nan_error(e, &self.run_dir))?;
            values.push(
                ArrayD::from_shape_vec(IxDyn(&p.shape), v.iter().map(|x| f64::from(*x)).collect())
                    .map_err(|e| run_err!("internal: shape of `{}`: {e}", p.name))?,
            );
        }
        for (k, p) in self.g.params.iter().enumerate() {
            if !p.role.trainable() {
                continue;
            }
            let (m, v) = moments
                .get(trainable)
                .ok_or_else(|| run_err!("internal: no moments of `{}`", p.name))?;
            trainable += 1;
            let widen = |a: &[f32]| {
                ArrayD::from_shape_vec(IxDyn(&p.shape), a.iter().map(|x| f64::from(*x)).collect())
                    .map_err(|e| run_err!("internal: moment shape of `{}`: {e}", p.name))
            };
            optimizer
                .set_moments(k, widen(m)?, widen(v)?)
                .map_err(|e| run_err!("{e}"))?;
        }
        params.values = values;
        self.params32 = params32;
        Ok(())
    }

    fn eval_batch(&mut self, params: &ParamStore, batch: &Batch) -> Result<EvalOutput, RunError> {
        let (b, readout) = self.forward(params, batch, None)?;
        // Without batchnorm and dropout both variants are the same code: the training one.
        Ok(EvalOutput {
            spike_counts: self.spike_counts((b, self.eval_differs))?,
            readout,
        })
    }
}

/// Spike-emitting scans in node order: (node, name of its `saved` buffer).
fn spike_scans(g: &Graph) -> Vec<(ValueId, String)> {
    g.nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.emits_spikes())
        .map(|(i, n)| (ValueId(i), n.name.clone()))
        .collect()
}

/// Whether evaluation differs from training: batchnorm on running statistics, no dropout.
fn eval_differs(g: &Graph) -> bool {
    !crate::mlir::grad::dropout_nodes(g).is_empty()
        || g.params
            .iter()
            .any(|p| matches!(p.role, ParamRole::RunningMean | ParamRole::RunningVar))
}

/// Training step `step`'s dropout masks as f32, by argument name (`fsig`'s `dropout_mask`
/// arguments): the interpreter's masks for the same run seed and step.
fn dropout_masks(
    g: &Graph,
    fsig: &[TrainArg],
    seed: u64,
    step: u64,
) -> Result<Vec<(String, Vec<f32>)>, RunError> {
    let dropout_seed = crate::interp::dropout_seed(seed, step);
    crate::mlir::grad::dropout_nodes(g)
        .into_iter()
        .map(|(i, p)| {
            let name = crate::mlir::grad::dropout_mask_name(&g.nodes[i]);
            let arg = fsig
                .iter()
                .find(|a| a.role == TrainRole::DropoutMask && a.name == name)
                .ok_or_else(|| run_err!("internal: no mask argument `{name}`"))?;
            let mask = crate::interp::dropout_mask(dropout_seed, i, &arg.shape, p);
            Ok((name, mask.iter().map(|v| *v as f32).collect()))
        })
        .collect()
}

/// Converts the store to f32 in place of the last step's values.
///
/// The store, the optimiser and the checkpoints stay f64 for every backend (one checkpoint
/// format; runs can switch backends on resume); f32 exists only for the compiled code.
fn params_to_f32(
    g: &Graph,
    params: &ParamStore,
    params32: &mut Vec<Vec<f32>>,
) -> Result<(), RunError> {
    if params.values.len() != g.params.len() {
        return Err(run_err!(
            "{} parameters for the {} of `{}`",
            params.values.len(),
            g.params.len(),
            g.name
        ));
    }
    params32.resize_with(params.values.len(), Vec::new);
    for (dst, src) in params32.iter_mut().zip(&params.values) {
        dst.clear();
        // A contiguous slice converts in vector lanes; ndarray's element iterator does not.
        match src.as_slice() {
            Some(s) => dst.extend(s.iter().map(|v| *v as f32)),
            None => dst.extend(src.iter().map(|v| *v as f32)),
        }
    }
    Ok(())
}

/// The first model output of the compiled forward (`fsig`'s first `output`) as f64.
fn readout_array(
    g: &Graph,
    fsig: &[TrainArg],
    outputs: Vec<Vec<f32>>,
) -> Result<ArrayD<f64>, RunError> {
    let shape = fsig
        .iter()
        .find(|a| a.role == TrainRole::Output)
        .map(|a| a.shape.clone())
        .ok_or_else(|| run_err!("`{}` has no output", g.name))?;
    let first = outputs.into_iter().next().unwrap_or_default();
    ArrayD::from_shape_vec(IxDyn(&shape), first.iter().map(|v| f64::from(*v)).collect())
        .map_err(|e| run_err!("internal: readout shape: {e}"))
}

/// Per parameter its gradient (`None`: not trainable), and the new running statistics.
type StepResults = (Vec<Option<ArrayD<f64>>>, Vec<(usize, ArrayD<f64>)>);

/// The driver's view of a compiled backward: trainable gradients (`grads`, `Graph::params`
/// order) checked for non-finite values and widened to f64, and the running statistics the
/// forward left in `params32`.
fn compiled_step_results(
    g: &Graph,
    grads: Vec<Vec<f32>>,
    params32: &[Vec<f32>],
    run_dir: &Path,
) -> Result<StepResults, RunError> {
    let mut trainable = grads.into_iter();
    let mut out = Vec::with_capacity(g.params.len());
    let mut running_updates = Vec::new();
    for (k, p) in g.params.iter().enumerate() {
        let shape = IxDyn(&p.shape);
        if p.role.trainable() {
            let grad = trainable
                .next()
                .ok_or_else(|| run_err!("internal: missing gradient of `{}`", p.name))?;
            // The interpreter stops on non-finite values; the compiled code cannot, so the
            // gradients are checked before the optimiser would spread a NaN.
            all_finite(&format!("d{}", p.name), &grad).map_err(|e| nan_error(e, run_dir))?;
            let grad = ArrayD::from_shape_vec(shape, grad.iter().map(|v| f64::from(*v)).collect())
                .map_err(|e| run_err!("internal: gradient shape of `{}`: {e}", p.name))?;
            out.push(Some(grad));
        } else {
            out.push(None);
            if matches!(p.role, ParamRole::RunningMean | ParamRole::RunningVar) {
                let v = &params32[k];
                let stat = ArrayD::from_shape_vec(shape, v.iter().map(|x| f64::from(*x)).collect())
                    .map_err(|e| run_err!("internal: shape of `{}`: {e}", p.name))?;
                running_updates.push((k, stat));
            }
        }
    }
    Ok((out, running_updates))
}

/// The sum of a spike buffer: f32 partial sums in eight lanes (the loop vectorises; a single
/// f64 chain was an add latency per element), exact for 0/1 values since each chunk's sums stay
/// below 2^24, combined in f64.
pub(super) fn spike_sum(y: &[f32]) -> f64 {
    y.chunks(1 << 20)
        .map(|chunk| {
            let mut lanes = [0f32; 8];
            let mut groups = chunk.chunks_exact(8);
            for g in &mut groups {
                for (l, v) in lanes.iter_mut().zip(g) {
                    *l += v;
                }
            }
            let tail: f64 = groups.remainder().iter().map(|v| f64::from(*v)).sum();
            lanes.iter().map(|v| f64::from(*v)).sum::<f64>() + tail
        })
        .sum()
}

fn all_finite(what: &str, v: &[f32]) -> Result<(), String> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(format!("`{what}` has a non-finite value ({}) at {i}", v[i])),
    }
}

#[cfg(test)]
mod tests {
    use super::spike_sum;

    #[test]
    fn spike_sums_are_exact_counts() {
        // Over several chunks and with a tail: 0/1 values in a fixed irregular pattern.
        let n: u64 = 3 * (1 << 20) + 13;
        let y: Vec<f32> = (0..n)
            .map(|i| if (i * 7919) % 13 < 4 { 1.0 } else { 0.0 })
            .collect();
        let want = y.iter().filter(|v| **v == 1.0).count() as f64;
        assert_eq!(spike_sum(&y), want);
        assert_eq!(spike_sum(&[]), 0.0);
        assert_eq!(spike_sum(&[1.0, 0.0, 1.0]), 2.0);
    }
}

/// The driver's side of training on a device (`train_step_on_device`, `sync_to_host`, the
/// state moving between batch sizes), run on the CPU backend with the device's state and
/// optimiser step emulated on the host: its steps must match the host optimiser's.
#[cfg(test)]
mod device_steps {
    use super::*;
    use snn_runtime::train::{DeviceScalar, OptimizerConfig};

    /// The CPU's functions, with "device" parameters and moments kept here and Adam applied
    /// as the generated `@<model>_optimizer` does (docs/abi.md), in f32.
    struct EmulatedCode {
        cpu: CpuCode,
        trainable: Vec<bool>,
        params: Vec<Vec<f32>>,
        moments: Vec<(Vec<f32>, Vec<f32>)>,
        last_input: Vec<f32>,
    }

    struct EmulatedBackend;

    impl CompiledBackend for EmulatedBackend {
        type Code = EmulatedCode;
        fn compile(
            &mut self,
            g: &Graph,
            batch: usize,
            eval: bool,
        ) -> Result<EmulatedCode, RunError> {
            Ok(EmulatedCode {
                cpu: CpuBackend.compile(g, batch, eval)?,
                trainable: g.params.iter().map(|p| p.role.trainable()).collect(),
                params: Vec::new(),
                moments: Vec::new(),
                last_input: Vec::new(),
            })
        }
    }

    impl CompiledCode for EmulatedCode {
        fn forward_signature(&self) -> &[TrainArg] {
            self.cpu.forward_signature()
        }
        fn set_mask(&mut self, name: &str, mask: &[f32]) -> Result<(), String> {
            self.cpu.set_mask(name, mask)
        }
        fn forward_train(
            &mut self,
            inputs: &[&[f32]],
            params: &mut [Vec<f32>],
        ) -> Result<Vec<Vec<f32>>, String> {
            self.cpu.forward_train(inputs, params)
        }
        fn backward(
            &mut self,
            inputs: &[&[f32]],
            params: &[Vec<f32>],
            d_outputs: &[&[f32]],
        ) -> Result<Vec<Vec<f32>>, String> {
            self.cpu.backward(inputs, params, d_outputs)
        }
        fn spike_count(&self, name: &str) -> Result<(f64, usize), String> {
            self.cpu.spike_count(name)
        }
        fn device_optimizer(&self) -> bool {
            true
        }
        fn upload_state(
            &mut self,
            params: &[Vec<f32>],
            moments: &[(Vec<f32>, Vec<f32>)],
        ) -> Result<(), String> {
            self.params = params.to_vec();
            self.moments = moments.to_vec();
            Ok(())
        }
        fn download_state(
            &self,
            params: &mut [Vec<f32>],
            moments: &mut Vec<(Vec<f32>, Vec<f32>)>,
        ) -> Result<(), String> {
            params.clone_from_slice(&self.params);
            moments.clone_from(&self.moments);
            Ok(())
        }
        fn copy_state_from(&mut self, other: &Self) -> Result<(), String> {
            self.params.clone_from(&other.params);
            self.moments.clone_from(&other.moments);
            Ok(())
        }
        fn forward_resident(&mut self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, String> {
            self.last_input = inputs[0].to_vec();
            let mut params = std::mem::take(&mut self.params);
            let outputs = self.cpu.forward_train(inputs, &mut params);
            self.params = params;
            outputs
        }
        fn backward_and_update(&mut self, d_outputs: &[&[f32]], s: &[f32]) -> Result<(), String> {
            let grads = self
                .cpu
                .backward(&[&self.last_input], &self.params, d_outputs)?;
            let at = |k: DeviceScalar| s[k as usize];
            let trained = self
                .params
                .iter_mut()
                .zip(&self.trainable)
                .filter(|(_, t)| **t);
            for (((p, _), g), (m, v)) in trained.zip(grads).zip(&mut self.moments) {
                for i in 0..p.len() {
                    let x = p[i] * at(DeviceScalar::DecayMul);
                    let g = g[i] + at(DeviceScalar::L2) * x;
                    m[i] += at(DeviceScalar::OneMinusBeta1) * (g - m[i]);
                    v[i] = at(DeviceScalar::Beta2) * v[i] + at(DeviceScalar::OneMinusBeta2) * g * g;
                    let denom = v[i].sqrt() * at(DeviceScalar::InvSqrtBiasCorrection2)
                        + at(DeviceScalar::Eps);
                    p[i] = x - at(DeviceScalar::StepSize) * m[i] / denom;
                }
            }
            Ok(())
        }
    }

    /// Batchnorm (running statistics), a learnable neuron scalar, a conv and a dense layer. The
    /// conv has no bias: before a batchnorm its gradient is zero up to rounding, and Adam's
    /// update of rounding noise is its sign, which f32 and f64 parameters need not share.
    const TINY: &str = "import std.neurons.{LIF, PLIF}\nmodel Tiny(T: int = 2) {\n    input x: image(channels = 1, height = 4, width = 4, T = T)\n    x -> conv(2, 3, bias = false) -> bn -> LIF -> pool.max(2) -> flatten -> linear(3) -> PLIF -> readout.rate\n}\n";

    fn batch(b: usize, seed: u64) -> Batch {
        let frames = snn_runtime::gpu::manifest::uniform_f32(2 * b * 16, seed, 0.0, 2.0);
        Batch {
            frames: ndarray::Array5::from_shape_vec((2, b, 1, 4, 4), frames).expect("shape"),
            labels: (0..b as u32).map(|l| l % 3).collect(),
            indices: (0..b).collect(),
        }
    }

    fn close(what: &str, got: &ArrayD<f64>, want: &ArrayD<f64>) {
        for (a, b) in got.iter().zip(want) {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{what}: device {a} vs host {b}"
            );
        }
    }

    #[test]
    fn device_steps_match_host_steps_across_batch_sizes() {
        let c = crate::sema::compile_source(Path::new("tiny.snn"), TINY.to_string(), &[]);
        let g = c.graphs.into_iter().next().expect("one model");
        let run_dir = std::env::temp_dir().join("snnc-device-steps-unused");
        let shapes: Vec<Vec<usize>> = g.params.iter().map(|p| p.shape.clone()).collect();
        let adam_l2 = OptimizerConfig::Adam {
            lr: 0.05,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        for config in [adam_l2, OptimizerConfig::adamw(0.05)] {
            let mut host = CompiledExecutor::with_backend(&g, CpuBackend, 0, &run_dir);
            let mut device = CompiledExecutor::with_backend(&g, EmulatedBackend, 0, &run_dir);
            let mut host_opt = Optimizer::new(config, &shapes).expect("config");
            let mut device_opt = host_opt.clone();
            let mut host_params = ParamStore::init(&g, 3);
            let mut device_params = host_params.clone();
            // 3 → 2 → 3 images: the state moves to the smaller batch's code and back.
            for (step, b) in [3usize, 3, 2, 3, 3].into_iter().enumerate() {
                let batch = batch(b, 40 + step as u64);
                let targets: Vec<usize> = batch.labels.iter().map(|l| *l as usize).collect();
                let mut loss = |r: &ArrayD<f64>| {
                    crate::interp::loss::cross_entropy(r, &targets)
                        .map_err(|e| RunError(e.to_string()))
                };
                let lr = 0.05 / (1.0 + step as f64);
                let mut s = host
                    .train_step(&host_params, &batch, step as u64, &mut loss)
                    .expect("host step");
                host_opt
                    .step(&mut host_params.values, &s.grads, lr)
                    .expect("host update");
                for (k, v) in std::mem::take(&mut s.running_updates) {
                    host_params.values[k] = v;
                }
                let d = device
                    .train_step_on_device(
                        &device_params,
                        &mut device_opt,
                        lr,
                        &batch,
                        step as u64,
                        &mut loss,
                    )
                    .expect("device step")
                    .expect("Adam runs on the device");
                assert!(
                    (d.loss - s.loss).abs() <= 1e-4 * s.loss.abs().max(1.0),
                    "step {step}: loss {} vs {}",
                    d.loss,
                    s.loss
                );
                assert_eq!(d.spike_counts, s.spike_counts, "step {step}");
                if step == 1 {
                    // A sync in the middle (an evaluation) leaves the run where it was.
                    device
                        .sync_to_host(&mut device_params, &mut device_opt)
                        .expect("sync");
                }
            }
            device
                .sync_to_host(&mut device_params, &mut device_opt)
                .expect("sync");
            for (p, (a, b)) in g
                .params
                .iter()
                .zip(device_params.values.iter().zip(&host_params.values))
            {
                close(&p.name, a, b);
            }
            let (hs, ds) = (host_opt.state(), device_opt.state());
            assert_eq!(hs.step, ds.step);
            for (k, (h, d)) in hs.params.iter().zip(&ds.params).enumerate() {
                assert_eq!(h.step, d.step, "parameter {k}");
                if !g.params[k].role.trainable() {
                    continue;
                }
                let (hm, hv) = host_opt.moments(k).expect("host moments");
                let (dm, dv) = device_opt
                    .moments(k)
                    .expect("moments synced from the device");
                close("exp_avg", dm, hm);
                close("exp_avg_sq", dv, hv);
            }
            // A non-finite parameter on the device stops the run at the sync.
            if let Some(v) = device.variants.get_mut(&(3, false)) {
                v.params[0][0] = f32::NAN;
            }
            let err = device
                .sync_to_host(&mut device_params, &mut device_opt)
                .expect_err("NaN");
            assert!(err.to_string().contains("training stopped"), "{err}");
        }
        // SGD's update stays on the host.
        let mut device = CompiledExecutor::with_backend(&g, EmulatedBackend, 0, &run_dir);
        let mut sgd = Optimizer::new(OptimizerConfig::sgd(0.1), &shapes).expect("sgd");
        let batch = batch(3, 1);
        let mut loss = |r: &ArrayD<f64>| {
            crate::interp::loss::cross_entropy(r, &[0, 1, 2]).map_err(|e| RunError(e.to_string()))
        };
        let params = ParamStore::init(&g, 3);
        assert!(
            device
                .train_step_on_device(&params, &mut sgd, 0.1, &batch, 0, &mut loss)
                .expect("no error")
                .is_none()
        );
    }
}
