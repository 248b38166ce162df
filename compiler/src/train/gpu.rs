//! The GPU executor: `forward_train`, `backward` and the Adam step as PTX kernels on CUDA
//! device 0 (the GPU backend's [`GpuTraining`]) in the same [`CompiledExecutor`] as the CPU
//! backend's code, so `snnc train --device gpu` runs the same loop. With Adam or AdamW the
//! update runs on the device and parameters stay there between steps
//! (`Executor::train_step_on_device`); loss, logs, evaluation and checkpoints stay on the host.

use super::executor::{CompiledBackend, CompiledCode, CompiledExecutor};
use super::{RunError, run_err};
use crate::backend::gpu::train::GpuTraining;
use crate::ir::Graph;
use crate::mlir::grad::TrainArg;
use snn_runtime::gpu::GpuDevice;
use std::path::Path;

/// The GPU backend's executor.
pub type GpuExecutor<'g> = CompiledExecutor<'g, GpuBackend>;

/// [`CompiledBackend`] on one GPU.
pub struct GpuBackend {
    device: GpuDevice,
    /// Matrix products on the tensor cores in TF32 ([`super::Backend::GpuTf32`]).
    tf32: bool,
}

impl<'g> GpuExecutor<'g> {
    /// Opens GPU 0; without a driver or a device, an error that says how to run instead.
    /// `seed`: the run's seed, which with the step gives the dropout masks. `tf32`: matrix
    /// products on the tensor cores in TF32 rather than in full f32.
    pub fn new(g: &'g Graph, seed: u64, run_dir: &Path, tf32: bool) -> Result<Self, RunError> {
        let device = GpuDevice::open(0).map_err(|e| {
            run_err!(
                "cannot run `{}` on the GPU: {e}\n  = help: run it on the CPU with `--device cpu`",
                g.name
            )
        })?;
        Ok(CompiledExecutor::with_backend(
            g,
            GpuBackend { device, tf32 },
            seed,
            run_dir,
        ))
    }
}

impl CompiledBackend for GpuBackend {
    type Code = GpuTraining;

    fn compile(&mut self, g: &Graph, batch: usize, eval: bool) -> Result<GpuTraining, RunError> {
        let code = GpuTraining::compile(&self.device, g, batch, eval).map_err(|e| {
            run_err!(
                "the GPU backend cannot compile `{}`: {e}\n  = help: train with `--device cpu`",
                g.name
            )
        })?;
        code.set_tf32(self.tf32);
        Ok(code)
    }
}

impl CompiledCode for GpuTraining {
    fn forward_signature(&self) -> &[TrainArg] {
        self.signatures().0
    }

    fn set_mask(&mut self, name: &str, mask: &[f32]) -> Result<(), String> {
        GpuTraining::set_mask(self, name, mask)
    }

    fn forward_train(
        &mut self,
        inputs: &[&[f32]],
        params: &mut [Vec<f32>],
    ) -> Result<Vec<Vec<f32>>, String> {
        GpuTraining::forward_train(self, inputs, params)
    }

    /// The inputs and parameters are already on the device, where the forward left them.
    fn backward(
        &mut self,
        _inputs: &[&[f32]],
        _params: &[Vec<f32>],
        d_outputs: &[&[f32]],
    ) -> Result<Vec<Vec<f32>>, String> {
        GpuTraining::backward(self, d_outputs)
    }

    fn spike_count(&self, name: &str) -> Result<(f64, usize), String> {
        self.saved_sum(name)
    }

    fn device_optimizer(&self) -> bool {
        GpuTraining::device_optimizer(self)
    }

    fn upload_state(
        &mut self,
        params: &[Vec<f32>],
        moments: &[(Vec<f32>, Vec<f32>)],
    ) -> Result<(), String> {
        GpuTraining::upload_state(self, params, moments)
    }

    fn download_state(
        &self,
        params: &mut [Vec<f32>],
        moments: &mut Vec<(Vec<f32>, Vec<f32>)>,
    ) -> Result<(), String> {
        GpuTraining::download_state(self, params, moments)
    }

    fn copy_state_from(&mut self, other: &Self) -> Result<(), String> {
        GpuTraining::copy_state_from(self, other)
    }

    fn forward_resident(&mut self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, String> {
        GpuTraining::forward_resident(self, inputs)
    }

    fn backward_and_update(&mut self, d_outputs: &[&[f32]], scalars: &[f32]) -> Result<(), String> {
        GpuTraining::backward_and_update(self, d_outputs, scalars)
    }
}
