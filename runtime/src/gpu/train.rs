//! A model's two training functions on one GPU: `forward_train` and `backward` (docs/abi.md),
//! kernels from one PTX module, with one device buffer per argument. The backward's arguments
//! that the forward also takes (inputs, parameters, saved values, scan states: same name and
//! role) are the forward's buffers, so nothing the backward reads crosses the bus.

use super::GpuError;
use super::cuda::{DeviceBuffer, GpuDevice, GpuModel, GpuModule, RunStats};
use super::manifest::{ArgSpec, LaunchManifest};

/// Roles of the backward's results: zeroed before every run (the backward adds into them).
const RESULT_ROLES: &[&str] = &["d_param", "d_input"];

/// Per backward argument, the forward argument it shares (same name, role and shape).
fn shared_args(forward: &[ArgSpec], backward: &[ArgSpec]) -> Result<Vec<Option<usize>>, GpuError> {
    backward
        .iter()
        .map(|a| {
            match forward
                .iter()
                .position(|f| f.role == a.role && f.name == a.name)
            {
                Some(k) if forward[k].shape == a.shape => Ok(Some(k)),
                Some(_) => Err(GpuError::Manifest(format!(
                    "`{}` has different shapes in the forward and the backward",
                    a.name
                ))),
                None => Ok(None),
            }
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Forward(usize),
    Own(usize),
}

/// `forward_train` and `backward` loaded, with their device buffers.
pub struct TrainingPair {
    forward: GpuModel,
    /// `None` for an evaluation build, which has no backward.
    backward: Option<GpuModel>,
    forward_bufs: Vec<DeviceBuffer>,
    /// Per backward argument: a forward buffer or one of `backward_only`.
    slots: Vec<Slot>,
    backward_only: Vec<DeviceBuffer>,
}

impl TrainingPair {
    /// Loads `ptx` once and resolves both manifests' kernels in it (`backward`: `None` for an
    /// evaluation build); allocates zeroed buffers.
    pub fn load(
        dev: &GpuDevice,
        ptx: &str,
        forward: LaunchManifest,
        backward: Option<LaunchManifest>,
    ) -> Result<Self, GpuError> {
        let module = GpuModule::load(dev, ptx)?;
        let forward = GpuModel::in_module(&module, forward)?;
        let backward = backward
            .map(|m| GpuModel::in_module(&module, m))
            .transpose()?;
        let elements = |a: &ArgSpec| a.shape.iter().product::<usize>();
        let forward_bufs = forward
            .manifest()
            .args
            .iter()
            .map(|a| dev.alloc(elements(a)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut backward_only = Vec::new();
        let mut slots = Vec::new();
        let backward_args: &[ArgSpec] = backward.as_ref().map_or(&[], |b| &b.manifest().args);
        for (a, shared) in backward_args
            .iter()
            .zip(shared_args(&forward.manifest().args, backward_args)?)
        {
            slots.push(match shared {
                Some(k) => Slot::Forward(k),
                None => {
                    backward_only.push(dev.alloc(elements(a))?);
                    Slot::Own(backward_only.len() - 1)
                }
            });
        }
        Ok(TrainingPair {
            forward,
            backward,
            forward_bufs,
            slots,
            backward_only,
        })
    }

    /// `forward_train`'s arguments, in order.
    pub fn forward_args(&self) -> &[ArgSpec] {
        &self.forward.manifest().args
    }

    /// `backward`'s arguments, in order (none in an evaluation build).
    pub fn backward_args(&self) -> &[ArgSpec] {
        self.backward.as_ref().map_or(&[], |b| &b.manifest().args)
    }

    pub fn forward_buffer(&self, k: usize) -> Option<&DeviceBuffer> {
        self.forward_bufs.get(k)
    }

    pub fn forward_buffer_mut(&mut self, k: usize) -> Option<&mut DeviceBuffer> {
        self.forward_bufs.get_mut(k)
    }

    /// The buffer of backward argument `k` (a forward buffer when they share it).
    pub fn backward_buffer(&self, k: usize) -> Option<&DeviceBuffer> {
        match *self.slots.get(k)? {
            Slot::Forward(f) => self.forward_bufs.get(f),
            Slot::Own(o) => self.backward_only.get(o),
        }
    }

    /// Backward argument `k`'s own buffer; `None` for one it shares with the forward (write
    /// that through [`Self::forward_buffer_mut`]).
    pub fn backward_buffer_mut(&mut self, k: usize) -> Option<&mut DeviceBuffer> {
        match *self.slots.get(k)? {
            Slot::Forward(_) => None,
            Slot::Own(o) => self.backward_only.get_mut(o),
        }
    }

    /// The module both functions' kernels live in (profiling, poisoning).
    pub fn module(&self) -> &std::rc::Rc<super::GpuModule> {
        self.forward.module()
    }

    /// Makes later runs of both functions time each kernel launch (`RunStats::kernels`).
    pub fn set_profiling(&self, on: bool) {
        self.forward.module().set_profiling(on);
    }

    /// Runs `forward_train` over its buffers.
    pub fn run_forward(&self) -> Result<RunStats, GpuError> {
        self.forward
            .run(&self.forward_bufs.iter().collect::<Vec<_>>())
    }

    /// Zeroes the backward's results, then runs it over what the last forward left.
    pub fn run_backward(&mut self) -> Result<RunStats, GpuError> {
        let backward = self.backward.as_ref().ok_or_else(|| {
            GpuError::Usage("compiled for evaluation, which has no backward".into())
        })?;
        for (a, slot) in backward.manifest().args.iter().zip(&self.slots) {
            if let Slot::Own(o) = *slot
                && RESULT_ROLES.contains(&a.role.as_str())
            {
                self.backward_only[o].zero()?;
            }
        }
        let bufs: Vec<&DeviceBuffer> = self
            .slots
            .iter()
            .map(|s| match *s {
                Slot::Forward(f) => &self.forward_bufs[f],
                Slot::Own(o) => &self.backward_only[o],
            })
            .collect();
        backward.run(&bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(name: &str, role: &str, shape: &[usize]) -> ArgSpec {
        ArgSpec {
            name: name.into(),
            role: role.into(),
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn the_backward_reads_the_forwards_buffers_by_name_and_role() {
        let forward = [
            arg("x", "input", &[2, 3]),
            arg("w", "param", &[3]),
            arg("y", "output", &[2]),
            arg("s", "saved", &[4]),
        ];
        let backward = [
            arg("x", "input", &[2, 3]),
            arg("w", "param", &[3]),
            arg("s", "saved", &[4]),
            arg("dy", "d_output", &[2]),
            arg("dw", "d_param", &[3]),
            // Same name as a forward argument, another role: its own buffer.
            arg("y", "d_input", &[2]),
        ];
        let shared = shared_args(&forward, &backward).expect("consistent");
        assert_eq!(shared, vec![Some(0), Some(1), Some(3), None, None, None]);
        let mut bad = backward.clone();
        bad[2].shape = vec![5];
        assert!(shared_args(&forward, &bad).is_err_and(|e| e.to_string().contains("`s`")));
    }
}
