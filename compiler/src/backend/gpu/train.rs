//! Training on the GPU: one model's `forward_train` and `backward` compiled to one PTX module
//! and loaded as the runtime's [`TrainingPair`], with every buffer of the training ABI
//! (docs/abi.md) resident on the device. Only the batch, the parameters and the output
//! gradients go up; only the outputs, the updated running statistics, the spikes the driver
//! counts and the gradients come down. The optimiser runs on the host, as on the CPU.

use super::{GpuOptions, GpuTimings, compile_training_with};
use crate::ir::Graph;
use crate::mlir::LowerOptions;
use crate::mlir::grad::{TrainArg, TrainRole, backward_signature, forward_train_signature};
use snn_runtime::gpu::{GpuDevice, RunStats, TrainingFunctions};

/// A model's training functions loaded on a GPU, with their device buffers.
pub struct GpuTraining {
    model: String,
    batch: usize,
    pair: TrainingFunctions,
    forward_sig: Vec<TrainArg>,
    backward_sig: Vec<TrainArg>,
    pub timings: GpuTimings,
    /// The last `forward_train` and `backward` replays.
    pub last_forward: RunStats,
    pub last_backward: RunStats,
}

fn elements(a: &TrainArg) -> usize {
    a.shape.iter().product()
}

/// The PTX target for a device: its own when we emit it, else the highest one below it (PTX
/// is forward compatible: the driver JITs it for newer GPUs).
fn chip_for(dev: &GpuDevice) -> String {
    let own = dev.info().chip();
    if super::CHIPS.contains(&own.as_str()) {
        own
    } else if dev.info().compute_capability.0 >= 9 {
        "sm_90".into()
    } else {
        "sm_80".into()
    }
}

impl GpuTraining {
    /// Compiles `g` for `dev` at batch `batch` (`eval`: batchnorm on running statistics, for
    /// evaluation passes that still want the saved spikes) and loads it.
    pub fn compile(
        dev: &GpuDevice,
        g: &Graph,
        batch: usize,
        eval: bool,
    ) -> Result<GpuTraining, String> {
        let opts = GpuOptions {
            chip: chip_for(dev),
            batch,
        };
        let art = compile_training_with(g, &opts, eval).map_err(|e| format!("{}: {e}", g.name))?;
        let lower = LowerOptions {
            eval,
            ..LowerOptions::with_batch(batch)
        };
        let forward_sig =
            forward_train_signature(g, &lower).map_err(|e| format!("{}: {e}", g.name))?;
        let backward_sig = backward_signature(g, &lower).map_err(|e| format!("{}: {e}", g.name))?;
        let pair = TrainingFunctions::load(dev, &art.ptx, art.forward_train, art.backward, None)
            .map_err(|e| e.to_string())?;
        Ok(GpuTraining {
            model: g.name.clone(),
            batch,
            pair,
            forward_sig,
            backward_sig,
            timings: art.timings,
            last_forward: RunStats::default(),
            last_backward: RunStats::default(),
        })
    }

    /// Matrix products on the tensor cores in TF32 (`true`) or in full f32 (the default).
    pub fn set_tf32(&self, on: bool) {
        self.pair.module().set_tf32(on);
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The arguments of `@<M>_forward_train` and `@<M>_backward`, in order.
    pub fn signatures(&self) -> (&[TrainArg], &[TrainArg]) {
        (&self.forward_sig, &self.backward_sig)
    }

    fn mismatch(&self, a: &TrainArg, len: usize) -> String {
        format!(
            "{} (batch {}): {} `{}` {:?} needs {} values, got {len}",
            self.model,
            self.batch,
            a.role.as_str(),
            a.name,
            a.shape,
            elements(a)
        )
    }

    /// Runs `forward_train`: uploads `inputs` (declaration order) and `params` (every
    /// parameter and running statistic in `Graph::params` order), downloads the updated running
    /// statistics into `params`, and returns the model outputs.
    pub fn forward_train(
        &mut self,
        inputs: &[&[f32]],
        params: &mut [Vec<f32>],
    ) -> Result<Vec<Vec<f32>>, String> {
        let n = |r: &[TrainRole]| {
            self.forward_sig
                .iter()
                .filter(|a| r.contains(&a.role))
                .count()
        };
        let (n_in, n_par) = (
            n(&[TrainRole::Input]),
            n(&[TrainRole::Param, TrainRole::State]),
        );
        if inputs.len() != n_in || params.len() != n_par {
            return Err(format!(
                "{}: {} inputs and {} parameters given, {n_in} and {n_par} expected",
                self.model,
                inputs.len(),
                params.len()
            ));
        }
        let (mut i, mut p) = (0, 0);
        for (k, a) in self.forward_sig.iter().enumerate() {
            let host: &[f32] = match a.role {
                TrainRole::Input => {
                    i += 1;
                    inputs[i - 1]
                }
                TrainRole::Param | TrainRole::State => {
                    p += 1;
                    &params[p - 1]
                }
                _ => continue,
            };
            if host.len() != elements(a) {
                return Err(self.mismatch(a, host.len()));
            }
            let buf = self
                .pair
                .forward_buffer_mut(k)
                .ok_or_else(|| format!("internal: no buffer for `{}`", a.name))?;
            buf.upload(host).map_err(|e| e.to_string())?;
        }
        self.last_forward = self.pair.run_forward().map_err(|e| e.to_string())?;
        let mut outputs = Vec::new();
        let mut p = 0;
        for (k, a) in self.forward_sig.iter().enumerate() {
            let buf = self
                .pair
                .forward_buffer(k)
                .ok_or_else(|| format!("internal: no buffer for `{}`", a.name))?;
            match a.role {
                TrainRole::Param => p += 1,
                TrainRole::State => {
                    p += 1;
                    buf.download_into(&mut params[p - 1])
                        .map_err(|e| e.to_string())?;
                }
                TrainRole::Output => outputs.push(buf.download().map_err(|e| e.to_string())?),
                _ => {}
            }
        }
        Ok(outputs)
    }

    /// Uploads dropout mask `name` (a `dropout_mask` argument) for the next `forward_train`.
    pub fn set_mask(&mut self, name: &str, mask: &[f32]) -> Result<(), String> {
        let k = self
            .forward_sig
            .iter()
            .position(|a| a.role == TrainRole::DropoutMask && a.name == name)
            .ok_or_else(|| format!("{}: no dropout mask `{name}`", self.model))?;
        if mask.len() != elements(&self.forward_sig[k]) {
            return Err(self.mismatch(&self.forward_sig[k], mask.len()));
        }
        self.pair
            .forward_buffer_mut(k)
            .ok_or_else(|| format!("internal: no buffer for `{name}`"))?
            .upload(mask)
            .map_err(|e| e.to_string())
    }

    /// The sum and element count of a saved value of the last `forward_train` (by its name
    /// in the signature): for a spike train, its spike count, exact. Summed on the device:
    /// downloading the gesture network's spike trains (410 MB at T = 60, B = 16) to count
    /// them on the host would cost several times the step.
    pub fn saved_sum(&self, name: &str) -> Result<(f64, usize), String> {
        let k = self
            .forward_sig
            .iter()
            .position(|a| a.role == TrainRole::Saved && a.name == name)
            .ok_or_else(|| format!("{}: no saved value `{name}`", self.model))?;
        let buf = self
            .pair
            .forward_buffer(k)
            .ok_or_else(|| format!("internal: no buffer for `{name}`"))?;
        let sum = self.pair.module().sum_abs(buf).map_err(|e| e.to_string())?;
        Ok((sum, buf.len()))
    }

    /// Runs `backward` over what the last `forward_train` left on the device (parameters as
    /// uploaded then; only running statistics changed, which the backward does not read).
    /// `d_outputs`: the loss gradient of each output. Returns the trainable parameters'
    /// gradients in `Graph::params` order.
    pub fn backward(&mut self, d_outputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, String> {
        let want = self
            .backward_sig
            .iter()
            .filter(|a| a.role == TrainRole::DOutput)
            .count();
        if d_outputs.len() != want {
            return Err(format!(
                "{}: {} output gradients given, {want} expected",
                self.model,
                d_outputs.len()
            ));
        }
        let mut d = 0;
        for (k, a) in self.backward_sig.iter().enumerate() {
            if a.role != TrainRole::DOutput {
                continue;
            }
            d += 1;
            let host = d_outputs[d - 1];
            if host.len() != elements(a) {
                return Err(self.mismatch(a, host.len()));
            }
            let buf = self
                .pair
                .backward_buffer_mut(k)
                .ok_or_else(|| format!("internal: no buffer for `{}`", a.name))?;
            buf.upload(host).map_err(|e| e.to_string())?;
        }
        self.last_backward = self.pair.run_backward().map_err(|e| e.to_string())?;
        let mut grads = Vec::new();
        for (k, a) in self.backward_sig.iter().enumerate() {
            if a.role == TrainRole::DParam {
                let buf = self
                    .pair
                    .backward_buffer(k)
                    .ok_or_else(|| format!("internal: no buffer for `{}`", a.name))?;
                grads.push(buf.download().map_err(|e| e.to_string())?);
            }
        }
        Ok(grads)
    }
}
