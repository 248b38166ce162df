//! Optimisers (SGD with momentum/Nesterov, Adam, AdamW) over positional f64 parameters, following
//! PyTorch's single-tensor update formulas term by term, with serialisable state for exact resume.

use ndarray::{ArrayD, Zip};
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::exact::ExactArray;
use crate::kernels::ffi::for_blocks;

fn default_momentum() -> f64 {
    0.0
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_adamw_decay() -> f64 {
    1e-2
}

/// Which optimiser and its hyper-parameters; omitted fields take PyTorch's defaults.
///
/// JSON form: `{"kind": "adam", "lr": 1e-4}`, `{"kind": "sgd", "lr": 0.1, "momentum": 0.9}`.
/// `lr` is the base learning rate that schedules scale; `step` takes the current one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// torch.optim.SGD with dampening 0.
    Sgd {
        lr: f64,
        #[serde(default = "default_momentum")]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
        #[serde(default)]
        weight_decay: f64,
    },
    /// torch.optim.Adam (amsgrad off): weight decay is L2, added to the gradient.
    Adam {
        lr: f64,
        #[serde(default = "default_beta1")]
        beta1: f64,
        #[serde(default = "default_beta2")]
        beta2: f64,
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    /// torch.optim.AdamW: decoupled decay, `p ← p·(1 − lr·wd)` before the Adam step.
    #[serde(rename = "adamw")]
    AdamW {
        lr: f64,
        #[serde(default = "default_beta1")]
        beta1: f64,
        #[serde(default = "default_beta2")]
        beta2: f64,
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default = "default_adamw_decay")]
        weight_decay: f64,
    },
}

impl OptimizerConfig {
    /// Adam with PyTorch's defaults (betas 0.9/0.999, eps 1e-8, no decay).
    pub fn adam(lr: f64) -> Self {
        OptimizerConfig::Adam {
            lr,
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: 0.0,
        }
    }

    /// AdamW with PyTorch's defaults (weight decay 1e-2).
    pub fn adamw(lr: f64) -> Self {
        OptimizerConfig::AdamW {
            lr,
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: default_adamw_decay(),
        }
    }

    /// Plain SGD (no momentum, no decay).
    pub fn sgd(lr: f64) -> Self {
        OptimizerConfig::Sgd {
            lr,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }

    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match *self {
            OptimizerConfig::Sgd { lr, .. }
            | OptimizerConfig::Adam { lr, .. }
            | OptimizerConfig::AdamW { lr, .. } => lr,
        }
    }

    /// `"sgd"`, `"adam"` or `"adamw"`: the tag also stored in [`OptimizerState`].
    pub fn kind(&self) -> &'static str {
        match self {
            OptimizerConfig::Sgd { .. } => "sgd",
            OptimizerConfig::Adam { .. } => "adam",
            OptimizerConfig::AdamW { .. } => "adamw",
        }
    }

    /// Rejects what PyTorch rejects (negative rates, betas outside [0, 1), Nesterov without
    /// momentum), so a bad config fails before the first epoch instead of producing NaNs.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: String| Err(TrainError::Invalid(format!("optimizer config: {what}")));
        let nonneg = |name: &str, v: f64| -> Result<(), TrainError> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                bad(format!("{name} must be finite and ≥ 0, got {v}"))
            }
        };
        match *self {
            OptimizerConfig::Sgd {
                lr,
                momentum,
                nesterov,
                weight_decay,
            } => {
                nonneg("lr", lr)?;
                nonneg("momentum", momentum)?;
                nonneg("weight_decay", weight_decay)?;
                if nesterov && momentum <= 0.0 {
                    return bad("nesterov needs momentum > 0".into());
                }
            }
            OptimizerConfig::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            }
            | OptimizerConfig::AdamW {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                nonneg("lr", lr)?;
                nonneg("eps", eps)?;
                nonneg("weight_decay", weight_decay)?;
                for (name, b) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(0.0..1.0).contains(&b) {
                        return bad(format!("{name} must be in [0, 1), got {b}"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The scalars of one Adam or AdamW step run on a device ([`Optimizer::device_scalars`]), by
/// position. The update they drive, per element, in f32 (PyTorch's, term by term):
///
/// ```text
/// p ← p · decay_mul                      (AdamW's decoupled decay; 1 for Adam)
/// g ← g + l2 · p                         (Adam's L2 decay; 0 for AdamW)
/// m ← m + (1 − β1) · (g − m)
/// v ← β2 · v + (1 − β2) · g²
/// p ← p − step_size · m / (√v · inv_sqrt_bias_correction2 + eps)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceScalar {
    DecayMul,
    L2,
    OneMinusBeta1,
    Beta2,
    OneMinusBeta2,
    /// lr / (1 − β1^t).
    StepSize,
    /// 1 / √(1 − β2^t).
    InvSqrtBiasCorrection2,
    Eps,
}

/// How many [`DeviceScalar`]s a step has.
pub const DEVICE_SCALARS: usize = 8;

/// Per-parameter optimiser state, as PyTorch keeps it in `optimizer.state[p]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamState {
    /// Shape of the parameter, checked on every step and on resume.
    pub shape: Vec<usize>,
    /// Updates this parameter received (frozen steps do not count): Adam's bias correction
    /// uses it, exactly as torch keeps `state["step"]` per parameter.
    pub step: u64,
    /// SGD momentum buffer; absent until the first step with momentum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum_buffer: Option<ExactArray>,
    /// Adam first moment; absent until the first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp_avg: Option<ExactArray>,
    /// Adam second moment; absent until the first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp_avg_sq: Option<ExactArray>,
}

/// Everything needed to continue optimisation bit-exactly: counts and moment buffers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerState {
    /// `"sgd"`, `"adam"` or `"adamw"`; resuming with another kind is refused.
    pub kind: String,
    /// Calls to [`Optimizer::step`].
    pub step: u64,
    /// One entry per parameter, by position.
    pub params: Vec<ParamState>,
}

/// An optimiser over a fixed list of parameters (by position).
#[derive(Debug, Clone)]
pub struct Optimizer {
    config: OptimizerConfig,
    step: u64,
    params: Vec<Slot>,
}

#[derive(Debug, Clone)]
struct Slot {
    shape: Vec<usize>,
    step: u64,
    momentum_buffer: Option<ArrayD<f64>>,
    exp_avg: Option<ArrayD<f64>>,
    exp_avg_sq: Option<ArrayD<f64>>,
}

/// torch.lerp's formula (`weight < 0.5 ? a + w·(b − a) : b − (b − a)·(1 − w)`); Adam's first
/// moment uses it (`exp_avg.lerp_(grad, 1 − beta1)`), which rounds differently from β·m + (1−β)·g.
#[inline]
fn lerp(a: f64, b: f64, w: f64) -> f64 {
    if w.abs() < 0.5 {
        a + w * (b - a)
    } else {
        b - (b - a) * (1.0 - w)
    }
}

impl Optimizer {
    /// A fresh optimiser for parameters of the given shapes.
    pub fn new(config: OptimizerConfig, shapes: &[Vec<usize>]) -> Result<Self, TrainError> {
        config.validate()?;
        Ok(Optimizer {
            config,
            step: 0,
            params: shapes
                .iter()
                .map(|s| Slot {
                    shape: s.clone(),
                    step: 0,
                    momentum_buffer: None,
                    exp_avg: None,
                    exp_avg_sq: None,
                })
                .collect(),
        })
    }

    /// Continues from a saved state. The config may differ in hyper-parameters (e.g. a new lr)
    /// but not in kind, and every buffer must match its parameter's shape.
    pub fn from_state(config: OptimizerConfig, state: OptimizerState) -> Result<Self, TrainError> {
        config.validate()?;
        if state.kind != config.kind() {
            return Err(TrainError::Invalid(format!(
                "optimizer state is for {:?} but the config asks for {:?} — resume with the same optimizer kind",
                state.kind,
                config.kind()
            )));
        }
        let mut params = Vec::with_capacity(state.params.len());
        for (i, p) in state.params.into_iter().enumerate() {
            let check = |name: &str, a: &Option<ExactArray>| match a {
                Some(ExactArray(a)) if a.shape() != p.shape.as_slice() => {
                    Err(TrainError::Invalid(format!(
                        "optimizer state, parameter {i}: {name} has shape {:?} but the parameter has {:?}",
                        a.shape(),
                        p.shape
                    )))
                }
                _ => Ok(()),
            };
            check("momentum_buffer", &p.momentum_buffer)?;
            check("exp_avg", &p.exp_avg)?;
            check("exp_avg_sq", &p.exp_avg_sq)?;
            if p.exp_avg.is_some() != p.exp_avg_sq.is_some() {
                return Err(TrainError::Invalid(format!(
                    "optimizer state, parameter {i}: exp_avg and exp_avg_sq must both be present or both absent"
                )));
            }
            params.push(Slot {
                shape: p.shape,
                step: p.step,
                momentum_buffer: p.momentum_buffer.map(|a| a.0),
                exp_avg: p.exp_avg.map(|a| a.0),
                exp_avg_sq: p.exp_avg_sq.map(|a| a.0),
            });
        }
        Ok(Optimizer {
            config,
            step: state.step,
            params,
        })
    }

    /// A snapshot of the state (copies the buffers).
    pub fn state(&self) -> OptimizerState {
        OptimizerState {
            kind: self.config.kind().to_string(),
            step: self.step,
            params: self
                .params
                .iter()
                .map(|s| ParamState {
                    shape: s.shape.clone(),
                    step: s.step,
                    momentum_buffer: s.momentum_buffer.clone().map(ExactArray),
                    exp_avg: s.exp_avg.clone().map(ExactArray),
                    exp_avg_sq: s.exp_avg_sq.clone().map(ExactArray),
                })
                .collect(),
        }
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// The scalars of the next Adam or AdamW step at learning rate `lr`, for a device that
    /// runs the update itself (the GPU backend's generated `@<model>_optimizer`, which reads
    /// them in [`DeviceScalar`] order). One set serves every parameter, so every `trainable`
    /// one must have taken the same number of steps. `None` for SGD, which stays on the host.
    pub fn device_scalars(
        &self,
        lr: f64,
        trainable: &[bool],
    ) -> Result<Option<[f32; DEVICE_SCALARS]>, TrainError> {
        let (beta1, beta2, eps, weight_decay, decoupled) = match self.config {
            OptimizerConfig::Sgd { .. } => return Ok(None),
            OptimizerConfig::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => (beta1, beta2, eps, weight_decay, false),
            OptimizerConfig::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => (beta1, beta2, eps, weight_decay, true),
        };
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(TrainError::Invalid(format!(
                "optimizer step: lr must be finite and ≥ 0, got {lr}"
            )));
        }
        let step = self.shared_step(trainable)? + 1;
        // As `adam_step` computes them, in f64, rounded once to f32.
        let t = step as f64;
        let bias_correction1 = 1.0 - beta1.powf(t);
        let bias_correction2 = 1.0 - beta2.powf(t);
        let mut s = [0f32; DEVICE_SCALARS];
        s[DeviceScalar::DecayMul as usize] = if decoupled {
            (1.0 - lr * weight_decay) as f32
        } else {
            1.0
        };
        s[DeviceScalar::L2 as usize] = if decoupled { 0.0 } else { weight_decay as f32 };
        s[DeviceScalar::OneMinusBeta1 as usize] = (1.0 - beta1) as f32;
        s[DeviceScalar::Beta2 as usize] = beta2 as f32;
        s[DeviceScalar::OneMinusBeta2 as usize] = (1.0 - beta2) as f32;
        s[DeviceScalar::StepSize as usize] = (lr / bias_correction1) as f32;
        s[DeviceScalar::InvSqrtBiasCorrection2 as usize] = (1.0 / bias_correction2.sqrt()) as f32;
        s[DeviceScalar::Eps as usize] = eps as f32;
        Ok(Some(s))
    }

    /// The step count every `trainable` parameter shares.
    fn shared_step(&self, trainable: &[bool]) -> Result<u64, TrainError> {
        if trainable.len() != self.params.len() {
            return Err(TrainError::Invalid(format!(
                "optimizer: built for {} parameters, {} flags given",
                self.params.len(),
                trainable.len()
            )));
        }
        let mut steps = self
            .params
            .iter()
            .zip(trainable)
            .filter(|(_, t)| **t)
            .map(|(s, _)| s.step);
        let first = steps.next().unwrap_or(self.step);
        if steps.any(|s| s != first) {
            return Err(TrainError::Invalid(
                "optimizer: the trainable parameters have taken different numbers of steps, so one device update cannot serve them all".into(),
            ));
        }
        Ok(first)
    }

    /// Counts one update a device applied to every `trainable` parameter (see
    /// [`Self::device_scalars`]); its moments come back through [`Self::set_moments`].
    pub fn record_device_step(&mut self, trainable: &[bool]) -> Result<(), TrainError> {
        self.shared_step(trainable)?;
        self.step += 1;
        for (slot, _) in self.params.iter_mut().zip(trainable).filter(|(_, t)| **t) {
            slot.step += 1;
        }
        Ok(())
    }

    /// Adam's first and second moments of parameter `k` (`None` before its first step, and
    /// for SGD).
    pub fn moments(&self, k: usize) -> Option<(&ArrayD<f64>, &ArrayD<f64>)> {
        let slot = self.params.get(k)?;
        Some((slot.exp_avg.as_ref()?, slot.exp_avg_sq.as_ref()?))
    }

    /// Replaces parameter `k`'s Adam moments (from a device that ran the update).
    pub fn set_moments(
        &mut self,
        k: usize,
        exp_avg: ArrayD<f64>,
        exp_avg_sq: ArrayD<f64>,
    ) -> Result<(), TrainError> {
        let n = self.params.len();
        let slot = self
            .params
            .get_mut(k)
            .ok_or_else(|| TrainError::Invalid(format!("optimizer: no parameter {k} (of {n})")))?;
        for (name, a) in [("exp_avg", &exp_avg), ("exp_avg_sq", &exp_avg_sq)] {
            if a.shape() != slot.shape.as_slice() {
                return Err(TrainError::Invalid(format!(
                    "optimizer: {name} of parameter {k} has shape {:?}, expected {:?}",
                    a.shape(),
                    slot.shape
                )));
            }
        }
        slot.exp_avg = Some(exp_avg);
        slot.exp_avg_sq = Some(exp_avg_sq);
        Ok(())
    }

    /// Calls to `step` so far (including those before a resume).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update of every parameter whose gradient is `Some`, at learning rate `lr` (the
    /// schedule's current value; the config's `lr` is only the base). `None` = frozen: neither
    /// the parameter nor its state changes. Nothing is modified if any length or shape is wrong.
    pub fn step(
        &mut self,
        params: &mut [ArrayD<f64>],
        grads: &[Option<ArrayD<f64>>],
        lr: f64,
    ) -> Result<(), TrainError> {
        if params.len() != self.params.len() || grads.len() != self.params.len() {
            return Err(TrainError::Invalid(format!(
                "optimizer step: built for {} parameters but got {} parameters and {} gradients",
                self.params.len(),
                params.len(),
                grads.len()
            )));
        }
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(TrainError::Invalid(format!(
                "optimizer step: lr must be finite and ≥ 0, got {lr}"
            )));
        }
        // Check every shape first so a mismatch cannot leave a half-applied update.
        for (i, (slot, (p, g))) in self.params.iter().zip(params.iter().zip(grads)).enumerate() {
            if p.shape() != slot.shape.as_slice() {
                return Err(TrainError::Invalid(format!(
                    "optimizer step: parameter {i} has shape {:?}, expected {:?}",
                    p.shape(),
                    slot.shape
                )));
            }
            if let Some(g) = g
                && g.shape() != slot.shape.as_slice()
            {
                return Err(TrainError::Invalid(format!(
                    "optimizer step: gradient {i} has shape {:?}, expected {:?}",
                    g.shape(),
                    slot.shape
                )));
            }
        }
        self.step += 1;
        let config = self.config;
        for ((slot, p), g) in self.params.iter_mut().zip(params.iter_mut()).zip(grads) {
            let Some(g) = g else { continue };
            slot.step += 1;
            match config {
                OptimizerConfig::Sgd {
                    momentum,
                    nesterov,
                    weight_decay,
                    ..
                } => sgd_step(slot, p, g, lr, momentum, nesterov, weight_decay),
                OptimizerConfig::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ..
                } => adam_step(slot, p, g, lr, beta1, beta2, eps, weight_decay, false),
                OptimizerConfig::AdamW {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ..
                } => adam_step(slot, p, g, lr, beta1, beta2, eps, weight_decay, true),
            }
        }
        Ok(())
    }
}

/// torch `_single_tensor_sgd` with dampening 0.
fn sgd_step(
    slot: &mut Slot,
    p: &mut ArrayD<f64>,
    g: &ArrayD<f64>,
    lr: f64,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
) {
    // grad = grad.add(param, alpha=weight_decay), only when decay is on (as torch skips it).
    let mut d = g.clone();
    if weight_decay != 0.0 {
        Zip::from(&mut d)
            .and(&*p)
            .for_each(|d, &p| *d += weight_decay * p);
    }
    if momentum != 0.0 {
        match &mut slot.momentum_buffer {
            // torch initialises the buffer to the first gradient itself, not to (1−dampening)·g.
            None => slot.momentum_buffer = Some(d.clone()),
            Some(buf) => Zip::from(buf)
                .and(&d)
                .for_each(|b, &d| *b = *b * momentum + d),
        }
        let Some(buf) = &slot.momentum_buffer else {
            return;
        };
        if nesterov {
            Zip::from(&mut d)
                .and(buf)
                .for_each(|d, &b| *d += momentum * b);
        } else {
            d.assign(buf);
        }
    }
    Zip::from(p).and(&d).for_each(|p, &d| *p += -lr * d);
}

/// torch `_single_tensor_adam` (amsgrad off, not capturable); `decoupled` = AdamW.
#[allow(clippy::too_many_arguments)]
fn adam_step(
    slot: &mut Slot,
    p: &mut ArrayD<f64>,
    g: &ArrayD<f64>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
) {
    if decoupled {
        // AdamW: param.mul_(1 - lr * weight_decay).
        let f = 1.0 - lr * weight_decay;
        p.mapv_inplace(|v| v * f);
    }
    let shape = slot.shape.clone();
    let m = slot
        .exp_avg
        .get_or_insert_with(|| ArrayD::zeros(shape.clone()));
    let v = slot.exp_avg_sq.get_or_insert_with(|| ArrayD::zeros(shape));
    // Python's float ** int is C pow(), which `powf` calls; `powi` may round differently.
    let t = slot.step as f64;
    let bias_correction1 = 1.0 - beta1.powf(t);
    let bias_correction2 = 1.0 - beta2.powf(t);
    let step_size = lr / bias_correction1;
    let bias_correction2_sqrt = bias_correction2.sqrt();
    let l2 = !decoupled && weight_decay != 0.0;
    let update = |p: &mut f64, g: f64, m: &mut f64, v: &mut f64| {
        let g = if l2 { g + weight_decay * *p } else { g };
        *m = lerp(*m, g, 1.0 - beta1);
        // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1-beta2)
        *v = *v * beta2 + (1.0 - beta2) * g * g;
        let denom = v.sqrt() / bias_correction2_sqrt + eps;
        // param.addcdiv_(exp_avg, denom, value=-step_size)
        *p += -step_size * (*m / denom);
    };
    // Large contiguous tensors (a dense layer's weights: millions of elements, the bulk of a
    // step's optimiser time) in blocks on the kernels' threads; every element's update is the
    // same arithmetic either way.
    if let (Some(ps), Some(gs), Some(ms), Some(vs)) = (
        p.as_slice_mut(),
        g.as_slice(),
        m.as_slice_mut(),
        v.as_slice_mut(),
    ) && ps.len() >= PARALLEL_UPDATE_MIN
    {
        let n = ps.len();
        let cells = Cells {
            pmv: [ps.as_mut_ptr(), ms.as_mut_ptr(), vs.as_mut_ptr()],
            g: gs.as_ptr(),
        };
        for_blocks(n, PARALLEL_UPDATE_MIN / 2, |start, end| {
            let cells = &cells;
            // SAFETY: blocks are disjoint ranges of 0..n, and each of the four slices holds n
            // elements. As slices (not per-element pointers) the loop runs in vector lanes.
            let ([p, m, v], g) = unsafe {
                (
                    cells
                        .pmv
                        .map(|c| std::slice::from_raw_parts_mut(c.add(start), end - start)),
                    std::slice::from_raw_parts(cells.g.add(start), end - start),
                )
            };
            for (((p, m), v), g) in p.iter_mut().zip(m).zip(v).zip(g) {
                update(p, *g, m, v);
            }
        });
        return;
    }
    Zip::from(p)
        .and(g)
        .and(m)
        .and(v)
        .for_each(|p, &g, m, v| update(p, g, m, v));
}

/// Elements from which [`adam_step`] splits a tensor over threads.
const PARALLEL_UPDATE_MIN: usize = 1 << 16;

/// The parameter, first- and second-moment pointers of one tensor and its gradient's, shared
/// by the blocks of [`adam_step`] (each writes its own range).
struct Cells {
    pmv: [*mut f64; 3],
    g: *const f64,
}
// SAFETY: the blocks touch disjoint index ranges.
unsafe impl Sync for Cells {}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Dimension, IxDyn, arr1};

    fn scalar(v: f64) -> ArrayD<f64> {
        arr1(&[v]).into_dyn()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-13 * b.abs().max(1.0), "{a} vs {b}");
    }

    /// f(p) = p²/2, so the gradient is p itself.
    fn run_quadratic(config: OptimizerConfig, lr: f64, steps: usize) -> Vec<f64> {
        let mut opt = Optimizer::new(config, &[vec![1]]).expect("config");
        let mut params = vec![scalar(1.0)];
        let mut seen = Vec::new();
        for _ in 0..steps {
            let g = params[0].clone();
            opt.step(&mut params, &[Some(g)], lr).expect("step");
            seen.push(params[0][0]);
        }
        seen
    }

    #[test]
    fn sgd_momentum_matches_hand_computed_torch_sequence() {
        // buf₁ = g₁ (torch copies the first gradient), then buf = 0.9·buf + g:
        // p: 1 → 0.9 → 0.72 (buf 1.8) → 0.486 (buf 2.34)
        let cfg = OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        };
        let seen = run_quadratic(cfg, 0.1, 3);
        for (a, b) in seen.iter().zip([0.9, 0.72, 0.486]) {
            close(*a, b);
        }
    }

    #[test]
    fn sgd_nesterov_matches_hand_computed_torch_sequence() {
        // step 1: buf 1, d = 1 + 0.9·1 = 1.9, p = 0.81
        // step 2: g 0.81, buf = 0.9 + 0.81 = 1.71, d = 0.81 + 0.9·1.71 = 2.349, p = 0.5751
        let cfg = OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.0,
        };
        let seen = run_quadratic(cfg, 0.1, 2);
        close(seen[0], 0.81);
        close(seen[1], 0.5751);
    }

    #[test]
    fn sgd_is_bit_exact_on_dyadic_values_and_applies_weight_decay() {
        // All values are powers of two, so every operation is exact.
        let cfg = OptimizerConfig::Sgd {
            lr: 0.5,
            momentum: 0.5,
            nesterov: false,
            weight_decay: 0.25,
        };
        let mut opt = Optimizer::new(cfg, &[vec![2]]).expect("config");
        let mut p = vec![arr1(&[1.0, -2.0]).into_dyn()];
        // g' = g + 0.25·p = [0.25, -0.5] + [0.25, -0.5] = [0.5, -1]; buf = g'; p -= 0.5·buf
        opt.step(&mut p, &[Some(arr1(&[0.25, -0.5]).into_dyn())], 0.5)
            .expect("step");
        assert_eq!(p[0], arr1(&[0.75, -1.5]).into_dyn());
        // g' = 0 + 0.25·p = [0.1875, -0.375]; buf = 0.5·[0.5, -1] + g' = [0.4375, -0.875]
        opt.step(&mut p, &[Some(arr1(&[0.0, 0.0]).into_dyn())], 0.5)
            .expect("step");
        assert_eq!(p[0], arr1(&[0.53125, -1.0625]).into_dyn());
    }

    #[test]
    fn adam_on_a_tensor_split_over_threads_equals_it_in_small_pieces() {
        // 70 000 elements (split over the kernels' threads) against the same values as two
        // tensors of 35 000 (updated in one pass each): the same bits after three steps, with
        // L2 decay on.
        let n = 70_000;
        let values = |seed: u64| -> Vec<f64> {
            (0..n as u64)
                .map(|i| ((i * 2_654_435_761 + seed) % 1000) as f64 / 500.0 - 1.0)
                .collect()
        };
        let cfg = OptimizerConfig::Adam {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let halves = |v: &[f64]| {
            vec![
                ArrayD::from_shape_vec(IxDyn(&[n / 2]), v[..n / 2].to_vec()).expect("shape"),
                ArrayD::from_shape_vec(IxDyn(&[n / 2]), v[n / 2..].to_vec()).expect("shape"),
            ]
        };
        let mut whole = vec![ArrayD::from_shape_vec(IxDyn(&[n]), values(1)).expect("shape")];
        let mut parts = halves(&values(1));
        let mut one = Optimizer::new(cfg, &[vec![n]]).expect("config");
        let mut two = Optimizer::new(cfg, &[vec![n / 2], vec![n / 2]]).expect("config");
        for step in 0..3 {
            let g = values(7 + step);
            let gw = vec![Some(
                ArrayD::from_shape_vec(IxDyn(&[n]), g.clone()).expect("shape"),
            )];
            let gp: Vec<_> = halves(&g).into_iter().map(Some).collect();
            one.step(&mut whole, &gw, 1e-2).expect("step");
            two.step(&mut parts, &gp, 1e-2).expect("step");
        }
        let joined: Vec<f64> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        assert!(
            whole[0]
                .iter()
                .zip(&joined)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "the split update differs"
        );
    }

    #[test]
    fn adam_matches_hand_computed_torch_values() {
        // lr 0.1, p₀ = 1, g = +1 then −1.
        // t=1: m = 0.1, v = 1e-3, step_size = 0.1/0.1 = 1, denom = 1 + 1e-8 → p = 1 − 0.1/(1+1e-8)
        // t=2: m = −0.01, v = 1.999e-3, bc1 = 0.19, bc2 = 1.999e-3 → denom = 1 + 1e-8,
        //      p += (0.1/0.19)·0.01/(1+1e-8)
        let mut opt = Optimizer::new(OptimizerConfig::adam(0.1), &[vec![1]]).expect("config");
        let mut p = vec![scalar(1.0)];
        opt.step(&mut p, &[Some(scalar(1.0))], 0.1).expect("step");
        let p1 = 1.0 - 0.1 / (1.0 + 1e-8);
        close(p[0][0], p1);
        close(p[0][0], 0.900_000_001);
        opt.step(&mut p, &[Some(scalar(-1.0))], 0.1).expect("step");
        close(p[0][0], p1 + (0.1 / 0.19) * 0.01 / (1.0 + 1e-8));
        close(p[0][0], 0.905_263_158_842_1);
        let st = opt.state();
        close(st.params[0].exp_avg.as_ref().expect("m").0[[0]], -0.01);
        close(
            st.params[0].exp_avg_sq.as_ref().expect("v").0[[0]],
            1.999e-3,
        );
    }

    #[test]
    fn adam_l2_and_adamw_decoupled_decay_differ_as_in_torch() {
        // Adam, wd 0.1: g' = 1 + 0.1·1 = 1.1, first step moves lr·1.1/(1.1 + 1e-8).
        let cfg = OptimizerConfig::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = Optimizer::new(cfg, &[vec![1]]).expect("config");
        let mut p = vec![scalar(1.0)];
        opt.step(&mut p, &[Some(scalar(1.0))], 0.1).expect("step");
        close(p[0][0], 1.0 - 0.1 * 1.1 / (1.1 + 1e-8));
        // AdamW, wd 0.1: p ← 1·(1 − 0.1·0.1) = 0.99, then the plain Adam step (0.1/(1+1e-8)).
        let cfg = OptimizerConfig::AdamW {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = Optimizer::new(cfg, &[vec![1]]).expect("config");
        let mut p = vec![scalar(1.0)];
        opt.step(&mut p, &[Some(scalar(1.0))], 0.1).expect("step");
        close(p[0][0], 0.99 - 0.1 / (1.0 + 1e-8));
        close(p[0][0], 0.890_000_001);
    }

    #[test]
    fn frozen_parameters_and_their_state_are_untouched() {
        let mut opt = Optimizer::new(OptimizerConfig::adam(0.1), &[vec![1], vec![1]]).expect("cfg");
        let mut p = vec![scalar(1.0), scalar(2.0)];
        opt.step(&mut p, &[Some(scalar(1.0)), None], 0.1)
            .expect("step");
        assert_eq!(p[1][0], 2.0);
        let st = opt.state();
        assert_eq!(st.step, 1);
        assert_eq!((st.params[0].step, st.params[1].step), (1, 0));
        assert!(st.params[1].exp_avg.is_none());
        // Unfreezing later starts its bias correction at t = 1, as torch's per-parameter step does.
        opt.step(&mut p, &[None, Some(scalar(1.0))], 0.1)
            .expect("step");
        close(p[1][0], 2.0 - 0.1 / (1.0 + 1e-8));
        assert_eq!(opt.state().params[0].step, 1);
    }

    #[test]
    fn resume_from_serialised_state_is_bit_exact() {
        for cfg in [
            OptimizerConfig::adam(0.01),
            OptimizerConfig::adamw(0.01),
            OptimizerConfig::Sgd {
                lr: 0.01,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 1e-3,
            },
        ] {
            let shapes = vec![vec![2, 3], vec![4]];
            let grad = |k: usize, i: usize| {
                ArrayD::from_shape_fn(shapes[i].clone(), |ix| {
                    ((k * 7 + ix.as_array_view().sum() * 3 + i) as f64).sin()
                })
            };
            let init = || {
                vec![
                    ArrayD::from_elem(vec![2, 3], 0.5),
                    ArrayD::from_elem(vec![4], -0.25),
                ]
            };
            let mut straight = init();
            let mut opt = Optimizer::new(cfg, &shapes).expect("cfg");
            for k in 0..5 {
                opt.step(&mut straight, &[Some(grad(k, 0)), Some(grad(k, 1))], 0.01)
                    .expect("step");
            }
            let mut resumed = init();
            let mut opt = Optimizer::new(cfg, &shapes).expect("cfg");
            for k in 0..3 {
                opt.step(&mut resumed, &[Some(grad(k, 0)), Some(grad(k, 1))], 0.01)
                    .expect("step");
            }
            let json = serde_json::to_string(&opt.state()).expect("ser");
            let state: OptimizerState = serde_json::from_str(&json).expect("de");
            let mut opt = Optimizer::from_state(cfg, state).expect("resume");
            for k in 3..5 {
                opt.step(&mut resumed, &[Some(grad(k, 0)), Some(grad(k, 1))], 0.01)
                    .expect("step");
            }
            assert_eq!(opt.step_count(), 5);
            for (a, b) in straight.iter().zip(&resumed) {
                let bits = |x: &ArrayD<f64>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(a), bits(b), "{cfg:?}");
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors_and_change_nothing() {
        let mut opt = Optimizer::new(OptimizerConfig::sgd(0.1), &[vec![2]]).expect("cfg");
        let mut p = vec![scalar(1.0)];
        let err = opt
            .step(&mut p, &[Some(scalar(1.0))], 0.1)
            .expect_err("must fail");
        assert!(
            err.to_string().contains("parameter 0 has shape [1]"),
            "{err}"
        );
        assert_eq!(opt.step_count(), 0);
        let err = opt.step(&mut p, &[], 0.1).expect_err("must fail");
        assert!(
            err.to_string().contains("1 parameters and 0 gradients"),
            "{err}"
        );
        let nesterov = OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.0,
            nesterov: true,
            weight_decay: 0.0,
        };
        assert!(Optimizer::new(nesterov, &[]).is_err());
        let state = Optimizer::new(OptimizerConfig::adam(0.1), &[vec![1]])
            .expect("cfg")
            .state();
        let err = Optimizer::from_state(OptimizerConfig::sgd(0.1), state).expect_err("must fail");
        assert!(err.to_string().contains("same optimizer kind"), "{err}");
    }

    #[test]
    fn config_json_takes_torch_defaults() {
        let c: OptimizerConfig =
            serde_json::from_str(r#"{"kind": "adam", "lr": 1e-4}"#).expect("json");
        assert_eq!(c, OptimizerConfig::adam(1e-4));
        let c: OptimizerConfig =
            serde_json::from_str(r#"{"kind": "adamw", "lr": 1e-3}"#).expect("json");
        assert_eq!(c, OptimizerConfig::adamw(1e-3));
        let c: OptimizerConfig =
            serde_json::from_str(r#"{"kind": "sgd", "lr": 0.1, "momentum": 0.9}"#).expect("json");
        assert_eq!(c.lr(), 0.1);
        assert!(
            serde_json::from_str::<OptimizerConfig>(r#"{"kind": "adam", "lr": 1, "betas": 1}"#)
                .is_err()
        );
    }

    /// The device update of [`DeviceScalar`]'s doc, in f64, over the scalars
    /// [`Optimizer::device_scalars`] gives.
    fn device_update(s: &[f32; DEVICE_SCALARS], p: &mut f64, g: f64, m: &mut f64, v: &mut f64) {
        let at = |k: DeviceScalar| f64::from(s[k as usize]);
        *p *= at(DeviceScalar::DecayMul);
        let g = g + at(DeviceScalar::L2) * *p;
        *m += at(DeviceScalar::OneMinusBeta1) * (g - *m);
        *v = at(DeviceScalar::Beta2) * *v + at(DeviceScalar::OneMinusBeta2) * g * g;
        *p -= at(DeviceScalar::StepSize) * *m
            / (v.sqrt() * at(DeviceScalar::InvSqrtBiasCorrection2) + at(DeviceScalar::Eps));
    }

    #[test]
    fn device_scalars_drive_the_same_adam_and_adamw_steps() {
        let adam_l2 = OptimizerConfig::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        for config in [
            OptimizerConfig::adam(0.01),
            adam_l2,
            OptimizerConfig::adamw(0.01),
        ] {
            // Parameter 1 is frozen (a running statistic): the device skips it.
            let shapes = [vec![3], vec![2]];
            let trainable = [true, false];
            let mut host = Optimizer::new(config, &shapes).expect("config");
            let mut device = host.clone();
            let mut params = vec![
                arr1(&[0.5, -1.0, 2.0]).into_dyn(),
                arr1(&[1.0, 1.0]).into_dyn(),
            ];
            let mut dev_p = params[0].clone();
            let (mut m, mut v) = (ArrayD::zeros(IxDyn(&[3])), ArrayD::zeros(IxDyn(&[3])));
            for step in 0..4 {
                let lr = 0.01 * (1.0 + f64::from(step));
                let g = params[0].mapv(|p| p * p + 0.5);
                let dev_g = dev_p.mapv(|p: f64| p * p + 0.5);
                host.step(&mut params, &[Some(g), None], lr)
                    .expect("host step");
                let s = device
                    .device_scalars(lr, &trainable)
                    .expect("scalars")
                    .expect("adam runs on the device");
                for i in 0..3 {
                    device_update(&s, &mut dev_p[i], dev_g[i], &mut m[i], &mut v[i]);
                }
                device.record_device_step(&trainable).expect("record");
            }
            device.set_moments(0, m, v).expect("moments");
            for i in 0..3 {
                // The scalars are f32: agreement to f32 rounding, not bit for bit.
                let (a, b) = (dev_p[i], params[0][i]);
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{config:?}: {a} vs {b}"
                );
            }
            let (hs, ds) = (host.state(), device.state());
            assert_eq!((hs.step, hs.params[0].step, hs.params[1].step), (4, 4, 0));
            assert_eq!((ds.step, ds.params[0].step, ds.params[1].step), (4, 4, 0));
            let (hm, dm) = (
                host.moments(0).expect("host"),
                device.moments(0).expect("device"),
            );
            for (a, b) in dm.0.iter().zip(hm.0).chain(dm.1.iter().zip(hm.1)) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
                    "{config:?}: {a} vs {b}"
                );
            }
        }
        let sgd = Optimizer::new(OptimizerConfig::sgd(0.1), &[vec![1]]).expect("sgd");
        assert_eq!(sgd.device_scalars(0.1, &[true]).expect("sgd"), None);
        let mut uneven = Optimizer::new(OptimizerConfig::adam(0.1), &[vec![1], vec![1]]).expect("");
        uneven
            .step(
                &mut [scalar(1.0), scalar(1.0)],
                &[Some(scalar(1.0)), None],
                0.1,
            )
            .expect("step");
        let err = uneven
            .device_scalars(0.1, &[true, true])
            .expect_err("uneven");
        assert!(
            err.to_string().contains("different numbers of steps"),
            "{err}"
        );
        assert!(uneven.device_scalars(0.1, &[true]).is_err());
        assert!(
            uneven
                .set_moments(0, ArrayD::zeros(IxDyn(&[2])), ArrayD::zeros(IxDyn(&[1])))
                .is_err()
        );
    }
}
