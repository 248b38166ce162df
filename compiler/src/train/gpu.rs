//! The GPU executor: `forward_train` and `backward` as PTX kernels on CUDA device 0 (the GPU
//! backend's [`GpuTraining`]), behind the same [`Executor`] trait as the CPU backend, so
//! `snnc train --device gpu` runs the same loop: loss, optimiser, logs and checkpoints stay on
//! the host.

use super::executor::{
    EvalOutput, Executor, LossFn, Step, compiled_step_results, dropout_masks, eval_differs,
    params_to_f32, readout_array, spike_scans, spike_sum,
};
use super::{RunError, run_err};
use crate::backend::gpu::train::GpuTraining;
use crate::interp::ParamStore;
use crate::ir::{Graph, ValueId};
use ndarray::ArrayD;
use snn_runtime::data::Batch;
use snn_runtime::gpu::GpuDevice;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct GpuExecutor<'g> {
    g: &'g Graph,
    device: GpuDevice,
    /// Compiled and loaded code by (batch size, eval).
    variants: HashMap<(usize, bool), GpuTraining>,
    spike_scans: Vec<(ValueId, String)>,
    params32: Vec<Vec<f32>>,
    eval_differs: bool,
    seed: u64,
    run_dir: PathBuf,
}

impl<'g> GpuExecutor<'g> {
    /// Opens GPU 0; without a driver or a device, an error that says how to train instead.
    /// `seed`: the run's seed, which with the step gives the dropout masks.
    pub fn new(g: &'g Graph, seed: u64, run_dir: &Path) -> Result<Self, RunError> {
        let device = GpuDevice::open(0).map_err(|e| {
            run_err!(
                "cannot run `{}` on the GPU: {e}\n  = help: run it on the CPU with `--device cpu`",
                g.name
            )
        })?;
        Ok(GpuExecutor {
            g,
            device,
            variants: HashMap::new(),
            spike_scans: spike_scans(g),
            params32: Vec::new(),
            eval_differs: eval_differs(g),
            seed,
            run_dir: run_dir.to_path_buf(),
        })
    }

    fn variant(&mut self, b: usize, eval: bool) -> Result<&mut GpuTraining, RunError> {
        let key = (b, eval);
        if !self.variants.contains_key(&key) {
            let code = GpuTraining::compile(&self.device, self.g, b, eval).map_err(|e| {
                run_err!(
                    "the GPU backend cannot compile `{}`: {e}\n  = help: train with `--device cpu`",
                    self.g.name
                )
            })?;
            self.variants.insert(key, code);
        }
        self.variants
            .get_mut(&key)
            .ok_or_else(|| run_err!("internal: batch {b} was not compiled"))
    }

    /// Runs `forward_train`: training step `step`, or with eval semantics when `None`.
    /// Returns the batch size and the readout.
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
        let mut params32 = std::mem::take(&mut self.params32);
        let g: &Graph = self.g;
        let v = self.variant(b, eval)?;
        if let Some(step) = step {
            for (name, mask) in dropout_masks(g, v.signatures().0, seed, step)? {
                v.set_mask(&name, &mask).map_err(|e| run_err!("{e}"))?;
            }
        }
        let outputs = v
            .forward_train(&[x], &mut params32)
            .map_err(|e| run_err!("{e}"))?;
        let readout = readout_array(g, v.signatures().0, outputs)?;
        self.params32 = params32;
        Ok((b, readout))
    }

    fn spike_counts(&self, key: (usize, bool)) -> Result<Vec<(ValueId, f64, usize)>, RunError> {
        let v = self
            .variants
            .get(&key)
            .ok_or_else(|| run_err!("internal: batch {} was not compiled", key.0))?;
        self.spike_scans
            .iter()
            .map(|(id, name)| {
                let y = v.saved(name).map_err(|e| run_err!("{e}"))?;
                Ok((*id, spike_sum(&y), y.len()))
            })
            .collect()
    }
}

impl Executor for GpuExecutor<'_> {
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
        let v = self
            .variants
            .get_mut(&(b, false))
            .ok_or_else(|| run_err!("internal: batch {b} was not compiled"))?;
        let grads = v.backward(&[&d_out]).map_err(|e| run_err!("{e}"))?;
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

    fn eval_batch(&mut self, params: &ParamStore, batch: &Batch) -> Result<EvalOutput, RunError> {
        // Without batchnorm and dropout both variants are the same code: reuse the training
        // one.
        let eval = self.eval_differs;
        let (b, readout) = self.forward(params, batch, None)?;
        Ok(EvalOutput {
            spike_counts: self.spike_counts((b, eval))?,
            readout,
        })
    }
}
