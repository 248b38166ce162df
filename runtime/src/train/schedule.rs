//! Per-epoch learning-rate schedules (constant, cosine, step, reduce-on-plateau) in PyTorch's
//! closed forms, with a small serialisable state so a resumed run continues the same curve.

use serde::{Deserialize, Serialize};

use super::TrainError;

fn default_threshold() -> f64 {
    1e-4
}
fn default_factor() -> f64 {
    0.1
}
fn default_patience() -> usize {
    10
}

/// How the learning rate moves over epochs. JSON: `{"kind": "cosine", "total_epochs": 300}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    #[default]
    Constant,
    /// torch CosineAnnealingLR closed form:
    /// `min_lr + (base − min_lr)·(1 + cos(π·epoch/total_epochs))/2`. Like torch it is periodic
    /// past `total_epochs` (the rate rises again); train for `total_epochs` to end at `min_lr`.
    Cosine {
        total_epochs: usize,
        #[serde(default)]
        min_lr: f64,
    },
    /// torch StepLR: `base·gamma^(epoch div step_size)`.
    Step { step_size: usize, gamma: f64 },
    /// torch ReduceLROnPlateau, mode "min", threshold_mode "rel": after more than `patience`
    /// observations without a relative improvement of `threshold`, lr ← max(lr·factor, min_lr).
    Plateau {
        #[serde(default = "default_factor")]
        factor: f64,
        #[serde(default = "default_patience")]
        patience: usize,
        #[serde(default = "default_threshold")]
        threshold: f64,
        #[serde(default)]
        cooldown: usize,
        #[serde(default)]
        min_lr: f64,
    },
}

/// What a schedule carries between epochs (only Plateau uses it); saved in checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// Best monitored value so far; `None` = +∞ (JSON has no infinity).
    #[serde(default, with = "exact_f64")]
    pub best: Option<f64>,
    #[serde(default)]
    pub num_bad_epochs: usize,
    #[serde(default)]
    pub cooldown_counter: usize,
    /// Current plateau learning rate; `None` = not reduced yet (the base rate). Kept as the
    /// value itself, not a count of reductions, because torch multiplies step by step.
    #[serde(default, with = "exact_f64")]
    pub lr: Option<f64>,
    /// How many times the plateau rule reduced the rate.
    #[serde(default)]
    pub reductions: u32,
}

/// `Option<f64>` as a JSON string in Rust's shortest round-trip form (`"0.0001"`): Rust's
/// parser is correctly rounded while serde_json's default one may be 1 ulp off, and a resumed
/// run must use the very same learning rate.
mod exact_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&format!("{v:?}")),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        use serde::de::Error;
        Option::<String>::deserialize(d)?
            .map(|t| {
                t.parse::<f64>()
                    .map_err(|e| D::Error::custom(format!("{t:?} is not a number: {e}")))
            })
            .transpose()
    }
}

/// torch's `eps`: a reduction smaller than this is skipped.
const PLATEAU_EPS: f64 = 1e-8;

impl Schedule {
    /// Rejects parameters that would produce NaN or a growing rate by mistake.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: &str| Err(TrainError::Invalid(format!("schedule {self:?}: {what}")));
        match *self {
            Schedule::Constant => {}
            Schedule::Cosine {
                total_epochs,
                min_lr,
            } => {
                if total_epochs == 0 {
                    return bad("total_epochs must be ≥ 1");
                }
                if !(min_lr.is_finite() && min_lr >= 0.0) {
                    return bad("min_lr must be finite and ≥ 0");
                }
            }
            Schedule::Step { step_size, gamma } => {
                if step_size == 0 {
                    return bad("step_size must be ≥ 1");
                }
                if !(gamma.is_finite() && gamma >= 0.0) {
                    return bad("gamma must be finite and ≥ 0");
                }
            }
            Schedule::Plateau {
                factor,
                threshold,
                min_lr,
                ..
            } => {
                if !(0.0..1.0).contains(&factor) {
                    return bad("factor must be in [0, 1)");
                }
                if !(threshold.is_finite() && threshold >= 0.0) {
                    return bad("threshold must be finite and ≥ 0");
                }
                if !(min_lr.is_finite() && min_lr >= 0.0) {
                    return bad("min_lr must be finite and ≥ 0");
                }
            }
        }
        Ok(())
    }

    /// The learning rate for 0-based `epoch`.
    pub fn lr_for_epoch(&self, base_lr: f64, epoch: usize, state: &ScheduleState) -> f64 {
        match *self {
            Schedule::Constant => base_lr,
            Schedule::Cosine {
                total_epochs,
                min_lr,
            } => {
                let phase = std::f64::consts::PI * epoch as f64 / total_epochs.max(1) as f64;
                min_lr + (base_lr - min_lr) * (1.0 + phase.cos()) / 2.0
            }
            // Python's float ** int is C pow(), which `powf` calls.
            Schedule::Step { step_size, gamma } => {
                base_lr * gamma.powf((epoch / step_size.max(1)) as f64)
            }
            Schedule::Plateau { .. } => state.lr.unwrap_or(base_lr),
        }
    }

    /// Feeds the monitored value (e.g. the epoch's training loss) to a Plateau schedule; returns
    /// whether the rate was reduced. Other schedules ignore it. A NaN never counts as better.
    pub fn observe(&self, state: &mut ScheduleState, base_lr: f64, metric: f64) -> bool {
        let Schedule::Plateau {
            factor,
            patience,
            threshold,
            cooldown,
            min_lr,
        } = *self
        else {
            return false;
        };
        let better = match state.best {
            None => !metric.is_nan(),
            Some(best) => metric < best * (1.0 - threshold),
        };
        if better {
            state.best = Some(metric);
            state.num_bad_epochs = 0;
        } else {
            state.num_bad_epochs += 1;
        }
        if state.cooldown_counter > 0 {
            state.cooldown_counter -= 1;
            state.num_bad_epochs = 0;
        }
        if state.num_bad_epochs > patience {
            let old = state.lr.unwrap_or(base_lr);
            let new = (old * factor).max(min_lr);
            state.cooldown_counter = cooldown;
            state.num_bad_epochs = 0;
            if old - new > PLATEAU_EPS {
                state.lr = Some(new);
                state.reductions += 1;
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-15 * b.abs().max(1.0), "{a} vs {b}");
    }

    #[test]
    fn cosine_matches_torch_closed_form() {
        let s = Schedule::Cosine {
            total_epochs: 10,
            min_lr: 0.0,
        };
        let st = ScheduleState::default();
        close(s.lr_for_epoch(0.1, 0, &st), 0.1);
        close(s.lr_for_epoch(0.1, 5, &st), 0.05);
        close(s.lr_for_epoch(0.1, 10, &st), 0.0);
        // cos(π/5) = (1 + √5)/4
        close(
            s.lr_for_epoch(0.1, 2, &st),
            0.1 * (1.0 + (1.0 + 5f64.sqrt()) / 4.0) / 2.0,
        );
        let s = Schedule::Cosine {
            total_epochs: 4,
            min_lr: 0.01,
        };
        close(s.lr_for_epoch(0.1, 2, &st), 0.055);
        close(s.lr_for_epoch(0.1, 4, &st), 0.01);
    }

    #[test]
    fn step_decays_every_step_size_epochs() {
        let s = Schedule::Step {
            step_size: 3,
            gamma: 0.5,
        };
        let st = ScheduleState::default();
        let lrs: Vec<f64> = (0..7).map(|e| s.lr_for_epoch(1.0, e, &st)).collect();
        assert_eq!(lrs, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]);
    }

    #[test]
    fn plateau_follows_torch_reduce_lr_on_plateau() {
        let s = Schedule::Plateau {
            factor: 0.1,
            patience: 2,
            threshold: 1e-4,
            cooldown: 0,
            min_lr: 0.0,
        };
        let mut st = ScheduleState::default();
        // 1.0 best; 0.99995 is within the relative threshold (needs < 0.9999), so it is "bad".
        let losses = [1.0, 0.99995, 1.0, 1.0, 0.5, 0.6, 0.6, 0.6];
        let reduced: Vec<bool> = losses
            .iter()
            .map(|&l| s.observe(&mut st, 1e-3, l))
            .collect();
        // bad epochs: 1, 2, 3 > patience → reduce at index 3; then 0.5 better; 3 bad → index 7
        assert_eq!(
            reduced,
            [false, false, false, true, false, false, false, true]
        );
        close(s.lr_for_epoch(1e-3, 8, &st), 1e-5);
        assert_eq!(st.reductions, 2);
        assert_eq!(st.best, Some(0.5));
        // State survives JSON bit-exactly (best = None when fresh, since JSON has no +∞).
        let json = serde_json::to_string(&st).expect("ser");
        assert!(json.contains(r#""best":"0.5""#), "{json}");
        let back: ScheduleState = serde_json::from_str(&json).expect("de");
        assert_eq!(back.lr.map(f64::to_bits), st.lr.map(f64::to_bits));
        assert_eq!(back, st);
        let fresh: ScheduleState = serde_json::from_str("{}").expect("defaults");
        assert_eq!(fresh, ScheduleState::default());
    }

    #[test]
    fn plateau_respects_min_lr_cooldown_and_nan() {
        let s = Schedule::Plateau {
            factor: 0.5,
            patience: 0,
            threshold: 0.0,
            cooldown: 1,
            min_lr: 0.3,
        };
        let mut st = ScheduleState::default();
        // NaN is never "better": 1 bad epoch > patience 0 reduces 1.0 → 0.5.
        assert!(s.observe(&mut st, 1.0, f64::NAN));
        close(s.lr_for_epoch(1.0, 0, &st), 0.5);
        assert!(!s.observe(&mut st, 1.0, 2.0)); // better (first finite), cooldown clears
        assert!(s.observe(&mut st, 1.0, 2.0)); // bad → max(0.25, 0.3) = 0.3
        close(s.lr_for_epoch(1.0, 0, &st), 0.3);
        assert!(!s.observe(&mut st, 1.0, 2.0)); // cooldown
        assert!(!s.observe(&mut st, 1.0, 2.0)); // at min_lr: no reduction reported
        close(s.lr_for_epoch(1.0, 0, &st), 0.3);
    }

    #[test]
    fn schedules_parse_from_json_with_defaults() {
        let s: Schedule =
            serde_json::from_str(r#"{"kind": "plateau", "patience": 5}"#).expect("json");
        assert_eq!(
            s,
            Schedule::Plateau {
                factor: 0.1,
                patience: 5,
                threshold: 1e-4,
                cooldown: 0,
                min_lr: 0.0
            }
        );
        let s: Schedule = serde_json::from_str(r#"{"kind": "constant"}"#).expect("json");
        assert_eq!(s, Schedule::Constant);
        assert!(
            Schedule::Step {
                step_size: 0,
                gamma: 0.1
            }
            .validate()
            .is_err()
        );
    }
}
