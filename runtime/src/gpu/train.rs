//! A model's training functions on one GPU: `forward_train`, `backward` and the optimiser step
//! `optimizer` (docs/abi.md), kernels from one PTX module, over one pool of device buffers. An
//! argument two functions share (same name and role: the backward's inputs, parameters, saved
//! values and scan states are the forward's; the optimiser's parameters are the forward's and
//! its gradients the backward's) is one buffer, so nothing passes between the functions over
//! the bus, and with the optimiser on the device parameters never leave it.

use super::GpuError;
use super::cuda::{DeviceBuffer, GpuDevice, GpuModel, GpuModule, RunStats};
use super::manifest::{ArgSpec, LaunchManifest};

/// Roles of the backward's results: zeroed before every run (the backward adds into them).
const RESULT_ROLES: &[&str] = &["d_param", "d_input"];

/// Per argument of `args`, the argument of `earlier` it shares (same name and role, which
/// must then have the same shape).
fn shared_args(
    earlier: &[ArgSpec],
    args: &[ArgSpec],
    what: &str,
) -> Result<Vec<Option<usize>>, GpuError> {
    args.iter()
        .map(|a| {
            match earlier
                .iter()
                .position(|f| f.role == a.role && f.name == a.name)
            {
                Some(k) if earlier[k].shape == a.shape => Ok(Some(k)),
                Some(_) => Err(GpuError::Manifest(format!(
                    "`{}` has different shapes in the {what}",
                    a.name
                ))),
                None => Ok(None),
            }
        })
        .collect()
}

/// One function of the set: its kernels and, per argument, its buffer in the pool.
struct Function {
    model: GpuModel,
    slots: Vec<usize>,
}

impl Function {
    fn args(&self) -> &[ArgSpec] {
        &self.model.manifest().args
    }
}

/// `forward_train`, `backward` and `optimizer` loaded, with their device buffers.
pub struct TrainingFunctions {
    forward: Function,
    /// `None` in an evaluation build, which has no backward.
    backward: Option<Function>,
    /// `None` where the optimiser runs on the host.
    optimizer: Option<Function>,
    pool: Vec<DeviceBuffer>,
}

fn elements(a: &ArgSpec) -> usize {
    a.shape.iter().product()
}

impl TrainingFunctions {
    /// Loads `ptx` once and resolves the manifests' kernels in it (`backward`: `None` for an
    /// evaluation build; `optimizer`: `None` to run the optimiser elsewhere); allocates zeroed
    /// buffers.
    pub fn load(
        dev: &GpuDevice,
        ptx: &str,
        forward: LaunchManifest,
        backward: Option<LaunchManifest>,
        optimizer: Option<LaunchManifest>,
    ) -> Result<Self, GpuError> {
        if optimizer.is_some() && backward.is_none() {
            return Err(GpuError::Usage(
                "an optimiser step needs the backward's gradients".into(),
            ));
        }
        let module = GpuModule::load(dev, ptx)?;
        let forward = GpuModel::in_module(&module, forward)?;
        let mut pool = forward
            .manifest()
            .args
            .iter()
            .map(|a| dev.alloc(elements(a)))
            .collect::<Result<Vec<_>, _>>()?;
        let forward = Function {
            slots: (0..pool.len()).collect(),
            model: forward,
        };
        // Per argument: a buffer of an earlier function, or a new one in the pool.
        let place = |args: &[ArgSpec],
                     shared: Vec<Option<usize>>,
                     pool: &mut Vec<DeviceBuffer>|
         -> Result<Vec<usize>, GpuError> {
            args.iter()
                .zip(shared)
                .map(|(a, s)| match s {
                    Some(slot) => Ok(slot),
                    None => {
                        pool.push(dev.alloc(elements(a))?);
                        Ok(pool.len() - 1)
                    }
                })
                .collect()
        };
        let backward = match backward {
            Some(m) => {
                let model = GpuModel::in_module(&module, m)?;
                let shared = shared_args(
                    forward.args(),
                    &model.manifest().args,
                    "forward and the backward",
                )?;
                let shared = shared
                    .into_iter()
                    .map(|s| s.map(|k| forward.slots[k]))
                    .collect();
                let slots = place(&model.manifest().args, shared, &mut pool)?;
                Some(Function { model, slots })
            }
            None => None,
        };
        let optimizer = match (optimizer, &backward) {
            (Some(m), Some(b)) => {
                let model = GpuModel::in_module(&module, m)?;
                let args = &model.manifest().args;
                let from_forward =
                    shared_args(forward.args(), args, "forward and the optimiser step")?;
                let from_backward = shared_args(b.args(), args, "backward and the optimiser step")?;
                let shared = from_forward
                    .into_iter()
                    .zip(from_backward)
                    .map(|(f, b_)| f.map(|k| forward.slots[k]).or(b_.map(|k| b.slots[k])))
                    .collect();
                let slots = place(args, shared, &mut pool)?;
                Some(Function { model, slots })
            }
            _ => None,
        };
        Ok(TrainingFunctions {
            forward,
            backward,
            optimizer,
            pool,
        })
    }

    /// `forward_train`'s arguments, in order.
    pub fn forward_args(&self) -> &[ArgSpec] {
        self.forward.args()
    }

    /// `backward`'s arguments, in order (none in an evaluation build).
    pub fn backward_args(&self) -> &[ArgSpec] {
        self.backward.as_ref().map_or(&[], Function::args)
    }

    /// The optimiser step's arguments, in order (none without one).
    pub fn optimizer_args(&self) -> &[ArgSpec] {
        self.optimizer.as_ref().map_or(&[], Function::args)
    }

    pub fn forward_buffer(&self, k: usize) -> Option<&DeviceBuffer> {
        self.pool.get(*self.forward.slots.get(k)?)
    }

    pub fn forward_buffer_mut(&mut self, k: usize) -> Option<&mut DeviceBuffer> {
        self.pool.get_mut(*self.forward.slots.get(k)?)
    }

    /// The buffer of backward argument `k` (a forward buffer when they share it).
    pub fn backward_buffer(&self, k: usize) -> Option<&DeviceBuffer> {
        self.pool.get(*self.backward.as_ref()?.slots.get(k)?)
    }

    /// Backward argument `k`'s buffer, to write (the forward's too when they share it).
    pub fn backward_buffer_mut(&mut self, k: usize) -> Option<&mut DeviceBuffer> {
        self.pool.get_mut(*self.backward.as_ref()?.slots.get(k)?)
    }

    /// The buffer of optimiser argument `k` (a parameter is the forward's, a gradient the
    /// backward's).
    pub fn optimizer_buffer(&self, k: usize) -> Option<&DeviceBuffer> {
        self.pool.get(*self.optimizer.as_ref()?.slots.get(k)?)
    }

    pub fn optimizer_buffer_mut(&mut self, k: usize) -> Option<&mut DeviceBuffer> {
        self.pool.get_mut(*self.optimizer.as_ref()?.slots.get(k)?)
    }

    /// The module every function's kernels live in (profiling, poisoning).
    pub fn module(&self) -> &std::rc::Rc<super::GpuModule> {
        self.forward.model.module()
    }

    /// Makes later runs time each kernel launch (`RunStats::kernels`).
    pub fn set_profiling(&self, on: bool) {
        self.module().set_profiling(on);
    }

    fn run(&self, f: &Function) -> Result<RunStats, GpuError> {
        f.model
            .run(&f.slots.iter().map(|&s| &self.pool[s]).collect::<Vec<_>>())
    }

    /// Runs `forward_train` over its buffers.
    pub fn run_forward(&self) -> Result<RunStats, GpuError> {
        self.run(&self.forward)
    }

    /// Zeroes the backward's results, then runs it over what the last forward left.
    pub fn run_backward(&mut self) -> Result<RunStats, GpuError> {
        let backward = self.backward.as_ref().ok_or_else(|| {
            GpuError::Usage("compiled for evaluation, which has no backward".into())
        })?;
        let module = backward.model.module();
        for (a, &slot) in backward.args().iter().zip(&backward.slots) {
            if RESULT_ROLES.contains(&a.role.as_str()) {
                module.zero_queued(&mut self.pool[slot])?;
            }
        }
        self.run(backward)
    }

    /// One optimiser step over the last backward's gradients: `scalars` go to its
    /// `optimizer_scalars` argument (`snn_runtime::train::Optimizer::device_scalars`), then
    /// every parameter and moment is updated in place.
    pub fn run_optimizer(&mut self, scalars: &[f32]) -> Result<RunStats, GpuError> {
        let optimizer = self
            .optimizer
            .as_ref()
            .ok_or_else(|| GpuError::Usage("this build runs the optimiser on the host".into()))?;
        let k = optimizer
            .args()
            .iter()
            .position(|a| a.role == "optimizer_scalars")
            .ok_or_else(|| GpuError::Manifest("the optimiser step takes no scalars".into()))?;
        self.pool[optimizer.slots[k]].upload(scalars)?;
        self.run(optimizer)
    }

    /// Copies every parameter, running statistic and optimiser moment from `other` (the same
    /// model built for another batch size), on the device.
    pub fn copy_state_from(&mut self, other: &TrainingFunctions) -> Result<(), GpuError> {
        let mut copy = |mine: &Function, theirs: &Function, roles: &[&str]| {
            for (a, &slot) in mine.args().iter().zip(&mine.slots) {
                if !roles.contains(&a.role.as_str()) {
                    continue;
                }
                let k = theirs
                    .args()
                    .iter()
                    .position(|b| b.role == a.role && b.name == a.name)
                    .ok_or_else(|| {
                        GpuError::Usage(format!("the other build has no `{}`", a.name))
                    })?;
                self.pool[slot].copy_from(&other.pool[theirs.slots[k]])?;
            }
            Ok::<(), GpuError>(())
        };
        copy(&self.forward, &other.forward, &["param", "state"])?;
        if let (Some(mine), Some(theirs)) = (&self.optimizer, &other.optimizer) {
            copy(mine, theirs, &["optimizer_state"])?;
        }
        Ok(())
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
    fn functions_share_buffers_by_name_and_role() {
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
        let shared = shared_args(&forward, &backward, "f").expect("consistent");
        assert_eq!(shared, vec![Some(0), Some(1), Some(3), None, None, None]);
        let mut bad = backward.clone();
        bad[2].shape = vec![5];
        assert!(shared_args(&forward, &bad, "f").is_err_and(|e| e.to_string().contains("`s`")));
        let optimizer = [
            arg("w", "param", &[3]),
            arg("dw", "d_param", &[3]),
            arg("exp_avg.w", "optimizer_state", &[3]),
        ];
        assert_eq!(
            shared_args(&forward, &optimizer, "f").expect("consistent"),
            vec![Some(1), None, None]
        );
        assert_eq!(
            shared_args(&backward, &optimizer, "b").expect("consistent"),
            vec![Some(1), Some(4), None]
        );
    }
}
