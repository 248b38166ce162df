//! Training on the GPU: one model's `forward_train`, `backward` and Adam step compiled to one
//! PTX module and loaded as the runtime's [`TrainingFunctions`], with every buffer of the
//! training ABI (docs/abi.md) resident on the device. With Adam or AdamW on the device
//! ([`GpuTraining::forward_resident`], [`GpuTraining::backward_and_update`]) only the batch and
//! the output gradients go up and only the outputs and the spike counts come down; parameters,
//! running statistics and moments cross the bus when the driver evaluates or checkpoints.
//! Otherwise (SGD) parameters go up and gradients come down every step and the optimiser runs
//! on the host, as on the CPU.

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
        let pair = TrainingFunctions::load(
            dev,
            &art.ptx,
            art.forward_train,
            art.backward,
            art.optimizer,
        )
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
        self.upload_params(params)?;
        let outputs = self.forward_resident(inputs)?;
        self.download_params(params, &[TrainRole::State])?;
        Ok(outputs)
    }

    /// The forward's buffers of `roles`, in order, with their indices.
    fn forward_of(&self, roles: &[TrainRole]) -> Vec<(usize, &TrainArg)> {
        self.forward_sig
            .iter()
            .enumerate()
            .filter(|(_, a)| roles.contains(&a.role))
            .collect()
    }

    /// Uploads every parameter and running statistic (`Graph::params` order).
    fn upload_params(&mut self, params: &[Vec<f32>]) -> Result<(), String> {
        let host: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
        self.upload_forward(&[TrainRole::Param, TrainRole::State], "parameters", &host)
    }

    /// Uploads `host` into the forward's arguments of `roles`, in order (`what` names them in
    /// errors).
    fn upload_forward(
        &mut self,
        roles: &[TrainRole],
        what: &str,
        host: &[&[f32]],
    ) -> Result<(), String> {
        let slots: Vec<(usize, TrainArg)> = self
            .forward_of(roles)
            .into_iter()
            .map(|(k, a)| (k, a.clone()))
            .collect();
        if host.len() != slots.len() {
            return Err(format!(
                "{}: {} {what} given, {} expected",
                self.model,
                host.len(),
                slots.len()
            ));
        }
        for ((k, a), host) in slots.iter().zip(host) {
            if host.len() != elements(a) {
                return Err(self.mismatch(a, host.len()));
            }
            self.pair
                .forward_buffer_mut(*k)
                .ok_or_else(|| format!("internal: no buffer for `{}`", a.name))?
                .upload(host)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Downloads the parameters and running statistics whose role is in `roles` into their
    /// places in `params` (`Graph::params` order, every one present).
    fn download_params(&self, params: &mut [Vec<f32>], roles: &[TrainRole]) -> Result<(), String> {
        let slots = self.forward_of(&[TrainRole::Param, TrainRole::State]);
        if params.len() != slots.len() {
            return Err(format!(
                "{}: {} parameters given, {} expected",
                self.model,
                params.len(),
                slots.len()
            ));
        }
        for ((k, a), host) in slots.into_iter().zip(params) {
            if !roles.contains(&a.role) {
                continue;
            }
            host.resize(elements(a), 0.0);
            self.pair
                .forward_buffer(k)
                .ok_or_else(|| format!("internal: no buffer for `{}`", a.name))?
                .download_into(host)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Runs `forward_train` on the parameters already on the device: uploads `inputs`
    /// (declaration order) and returns the model outputs; the running statistics stay there.
    pub fn forward_resident(&mut self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, String> {
        self.upload_forward(&[TrainRole::Input], "inputs", inputs)?;
        self.last_forward = self.pair.run_forward().map_err(|e| e.to_string())?;
        self.forward_of(&[TrainRole::Output])
            .into_iter()
            .map(|(k, a)| {
                self.pair
                    .forward_buffer(k)
                    .ok_or_else(|| format!("internal: no buffer for `{}`", a.name))?
                    .download()
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    /// Whether the optimiser step (Adam/AdamW) runs on the device.
    pub fn device_optimizer(&self) -> bool {
        !self.pair.optimizer_args().is_empty()
    }

    /// The optimiser step's buffers of Adam's moments: (first, second) per trainable
    /// parameter, `Graph::params` order.
    fn moment_slots(&self) -> Vec<(usize, usize)> {
        let states: Vec<usize> = self
            .pair
            .optimizer_args()
            .iter()
            .enumerate()
            .filter(|(_, a)| a.role == TrainRole::OptimizerState.as_str())
            .map(|(k, _)| k)
            .collect();
        let (first, second) = states.split_at(states.len() / 2);
        first.iter().copied().zip(second.iter().copied()).collect()
    }

    /// Uploads every parameter and running statistic (`Graph::params` order) and Adam's
    /// moments (per trainable parameter), which then stay on the device.
    pub fn upload_state(
        &mut self,
        params: &[Vec<f32>],
        moments: &[(Vec<f32>, Vec<f32>)],
    ) -> Result<(), String> {
        self.upload_params(params)?;
        let slots = self.moment_slots();
        if moments.len() != slots.len() {
            return Err(format!(
                "{}: moments of {} parameters given, {} trainable",
                self.model,
                moments.len(),
                slots.len()
            ));
        }
        for ((m, v), (km, kv)) in moments.iter().zip(slots) {
            for (host, k) in [(m, km), (v, kv)] {
                self.pair
                    .optimizer_buffer_mut(k)
                    .ok_or("internal: no moment buffer")?
                    .upload(host)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Downloads what [`Self::upload_state`] uploads, as the device has it now.
    pub fn download_state(
        &self,
        params: &mut [Vec<f32>],
        moments: &mut Vec<(Vec<f32>, Vec<f32>)>,
    ) -> Result<(), String> {
        self.download_params(params, &[TrainRole::Param, TrainRole::State])?;
        let slots = self.moment_slots();
        moments.resize_with(slots.len(), Default::default);
        for ((m, v), (km, kv)) in moments.iter_mut().zip(slots) {
            for (host, k) in [(m, km), (v, kv)] {
                let buf = self
                    .pair
                    .optimizer_buffer(k)
                    .ok_or("internal: no moment buffer")?;
                host.resize(buf.len(), 0.0);
                buf.download_into(host).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Takes over the device state of the same model built for another batch size.
    pub fn copy_state_from(&mut self, other: &GpuTraining) -> Result<(), String> {
        self.pair
            .copy_state_from(&other.pair)
            .map_err(|e| e.to_string())
    }

    /// Runs `backward` over what the last `forward_train` left (`d_outputs`: the loss
    /// gradient of each output), then the optimiser step with `scalars`
    /// (`Optimizer::device_scalars`): the parameters on the device are updated in place and
    /// no gradient leaves it.
    pub fn backward_and_update(
        &mut self,
        d_outputs: &[&[f32]],
        scalars: &[f32],
    ) -> Result<(), String> {
        self.run_backward(d_outputs)?;
        self.pair
            .run_optimizer(scalars)
            .map_err(|e| e.to_string())?;
        Ok(())
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
        self.run_backward(d_outputs)?;
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

    /// Uploads the output gradients and runs `backward`.
    fn run_backward(&mut self, d_outputs: &[&[f32]]) -> Result<(), String> {
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
        Ok(())
    }
}
