//! Resolves a run's configuration: the model's checked `train { }` settings, overridden by
//! command-line flags, into optimiser, schedule, loss, data source and loader settings.

use super::{Backend, RunError, run_err};
use crate::ir::{Framing, Graph, InputSource, Op, TrainValue};
use snn_runtime::data::{Loader, LoaderConfig};
use snn_runtime::events::{FrameSpec, Sample, Split, dataset};
use snn_runtime::train::{OptimizerConfig, Schedule};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    CrossEntropy,
    /// Mean squared error between the output firing rate and the one-hot target (official MA-SNN).
    MseRate,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// N-MNIST: label lists (`train*.txt` / `test*.txt`) beside `.bs2` files, or `Train/` and
    /// `Test/` folders per class.
    Nmnist(PathBuf),
    /// DVS128 Gesture: `trials_to_train.txt` / `trials_to_test.txt` and the `.aedat` files.
    DvsGesture(PathBuf),
    /// `train/<class>/...` and `test/<class>/...`.
    Folder(PathBuf),
}

/// Flags that override the model's `train { }` section.
#[derive(Clone, Debug, Default)]
pub struct RunOverrides {
    pub epochs: Option<usize>,
    pub batch: Option<usize>,
    pub lr: Option<f64>,
    pub seed: Option<u64>,
    pub data: Option<PathBuf>,
    pub limit_train: Option<usize>,
    pub limit_test: Option<usize>,
    pub workers: Option<usize>,
    pub backend: Option<Backend>,
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub run_dir: PathBuf,
    pub epochs: usize,
    pub batch: usize,
    pub optimizer: OptimizerConfig,
    pub schedule: Schedule,
    pub loss: LossKind,
    pub seed: u64,
    pub data: DataSource,
    pub limit_train: Option<usize>,
    pub limit_test: Option<usize>,
    pub workers: usize,
    /// Which executor runs the passes (`--backend`); parameters stay f64 either way.
    pub backend: Backend,
    pub progress: bool,
    /// Stop (as if killed) after this many epochs of this invocation; used to test resume.
    pub stop_after_epochs: Option<usize>,
}

fn setting<'g>(g: &'g Graph, name: &str) -> Option<&'g TrainValue> {
    g.train.iter().find(|s| s.name == name).map(|s| &s.typed)
}

fn spec_name(v: &TrainValue) -> Option<&str> {
    match v {
        TrainValue::Spec { name, .. } => Some(name),
        _ => None,
    }
}

fn num(v: Option<&TrainValue>) -> Option<f64> {
    v.and_then(TrainValue::as_f64)
}

impl RunConfig {
    /// Builds the configuration of `g`'s run in `run_dir`; `model_dir` resolves relative paths
    /// of the `dataset` setting that do not exist relative to the working directory.
    pub fn resolve(
        g: &Graph,
        run_dir: PathBuf,
        model_dir: &Path,
        o: &RunOverrides,
    ) -> Result<RunConfig, RunError> {
        let epochs = o
            .epochs
            .or(num(setting(g, "epochs")).map(|v| v as usize))
            .unwrap_or(10);
        let batch = o
            .batch
            .or(num(setting(g, "batch")).map(|v| v as usize))
            .unwrap_or(16);
        let seed = o
            .seed
            .or(num(setting(g, "seed")).map(|v| v as u64))
            .unwrap_or(0);
        if epochs == 0 || batch == 0 {
            return Err(run_err!("epochs and batch must be at least 1"));
        }
        let opt = setting(g, "optimizer");
        let arg = |name: &str, pos: usize| num(opt.and_then(|o| o.arg(name, pos)));
        let lr =
            o.lr.or(arg("lr", 0))
                .or(num(setting(g, "lr")))
                .unwrap_or(1e-3);
        let weight_decay = arg("weight_decay", 99).or(num(setting(g, "weight_decay")));
        let betas = match opt.and_then(|o| o.arg("betas", 99)) {
            Some(TrainValue::Tuple(b)) => (
                b.first().and_then(TrainValue::as_f64),
                b.get(1).and_then(TrainValue::as_f64),
            ),
            _ => (None, None),
        };
        let optimizer = match opt.and_then(spec_name).unwrap_or("adam") {
            "sgd" => OptimizerConfig::Sgd {
                lr,
                momentum: arg("momentum", 99)
                    .or(num(setting(g, "momentum")))
                    .unwrap_or(0.9),
                nesterov: matches!(
                    opt.and_then(|o| o.arg("nesterov", 99)),
                    Some(TrainValue::Bool(true))
                ),
                weight_decay: weight_decay.unwrap_or(0.0),
            },
            kind => {
                let mut c = if kind == "adamw" {
                    OptimizerConfig::adamw(lr)
                } else {
                    OptimizerConfig::adam(lr)
                };
                if let OptimizerConfig::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay: wd,
                    ..
                }
                | OptimizerConfig::AdamW {
                    beta1,
                    beta2,
                    eps,
                    weight_decay: wd,
                    ..
                } = &mut c
                {
                    *beta1 = betas.0.unwrap_or(*beta1);
                    *beta2 = betas.1.unwrap_or(*beta2);
                    *eps = arg("eps", 99).unwrap_or(*eps);
                    *wd = weight_decay.unwrap_or(*wd);
                }
                c
            }
        };
        optimizer
            .validate()
            .map_err(|e| run_err!("optimizer: {e}"))?;
        let sched = setting(g, "schedule");
        let sarg = |name: &str, pos: usize| num(sched.and_then(|s| s.arg(name, pos)));
        let schedule = match sched.and_then(spec_name).unwrap_or("constant") {
            "cosine" => Schedule::Cosine {
                total_epochs: epochs,
                min_lr: sarg("min_lr", 99).unwrap_or(0.0),
            },
            "step" => Schedule::Step {
                step_size: sarg("step_size", 0).unwrap_or(30.0) as usize,
                gamma: sarg("gamma", 1).unwrap_or(0.1),
            },
            "plateau" => Schedule::Plateau {
                factor: sarg("factor", 0).unwrap_or(0.1),
                patience: sarg("patience", 1).unwrap_or(10.0) as usize,
                threshold: sarg("threshold", 99).unwrap_or(1e-4),
                cooldown: 0,
                min_lr: sarg("min_lr", 99).unwrap_or(0.0),
            },
            _ => Schedule::Constant,
        };
        schedule.validate().map_err(|e| run_err!("schedule: {e}"))?;
        let loss = match setting(g, "loss").and_then(spec_name) {
            Some("mse_rate") => LossKind::MseRate,
            _ => LossKind::CrossEntropy,
        };
        let data = resolve_data(g, model_dir, o.data.as_deref())?;
        Ok(RunConfig {
            run_dir,
            epochs,
            batch,
            optimizer,
            schedule,
            loss,
            seed,
            data,
            limit_train: o.limit_train,
            limit_test: o.limit_test,
            workers: o.workers.unwrap_or(2),
            backend: o.backend.unwrap_or_default(),
            progress: true,
            stop_after_epochs: None,
        })
    }

    /// The framing recipe of the model's event input.
    pub fn frame_spec(g: &Graph) -> Result<FrameSpec, RunError> {
        let (_, node) = g
            .inputs()
            .next()
            .ok_or_else(|| run_err!("model `{}` has no input", g.name))?;
        let Op::Input {
            source:
                InputSource::Events {
                    height,
                    width,
                    framing,
                    downsample,
                    ..
                },
            ..
        } = &node.op
        else {
            return Err(run_err!("model `{}` has no event input", g.name));
        };
        let t = node.ty.size(crate::ir::Axis::T).unwrap_or(1);
        let spec = match framing {
            Framing::Time { window_us } => FrameSpec::time_window(*window_us as i64, t),
            Framing::Count => FrameSpec::event_count(t),
            Framing::Frames => FrameSpec::frame_count(t),
        };
        let ds = u16::try_from(*downsample)
            .map_err(|_| run_err!("downsample {downsample} is too large"))?;
        let (w, h) = (u16::try_from(*width), u16::try_from(*height));
        let (Ok(w), Ok(h)) = (w, h) else {
            return Err(run_err!("sensor {width}x{height} is too large"));
        };
        Ok(spec.downsample(ds).sensor(w, h))
    }

    /// Training and (when the data has one) test loaders.
    pub fn loaders(&self, g: &Graph) -> Result<(Loader, Option<Loader>), RunError> {
        let spec = Self::frame_spec(g)?;
        let (mut train, mut test) = samples(&self.data)?;
        if let Some(n) = self.limit_train {
            train = subset(train, n, self.seed);
        }
        if let Some(n) = self.limit_test {
            test.truncate(n);
        }
        if train.is_empty() {
            return Err(run_err!("the training split of {:?} is empty", self.data));
        }
        let mut cfg = LoaderConfig::new(self.batch);
        cfg.seed = self.seed;
        cfg.workers = self.workers;
        cfg.prefetch = 2 * self.workers.max(1);
        let train = Loader::new(train, spec, cfg.clone()).map_err(|e| run_err!("{e}"))?;
        let test = if test.is_empty() {
            None
        } else {
            cfg.shuffle = false;
            Some(Loader::new(test, spec, cfg).map_err(|e| run_err!("{e}"))?)
        };
        Ok((train, test))
    }
}

/// `n` samples chosen evenly over the (label-sorted or not) list, deterministic in the seed.
fn subset(mut all: Vec<Sample>, n: usize, seed: u64) -> Vec<Sample> {
    if n >= all.len() {
        return all;
    }
    let order = snn_runtime::data::epoch_order(all.len(), seed, u64::MAX, true);
    let mut keep: Vec<usize> = order.into_iter().take(n).collect();
    keep.sort_unstable();
    let mut i = 0;
    all.retain(|_| {
        let k = keep.binary_search(&i).is_ok();
        i += 1;
        k
    });
    all
}

fn resolve_data(g: &Graph, model_dir: &Path, flag: Option<&Path>) -> Result<DataSource, RunError> {
    let spec = setting(g, "dataset");
    let kind = match spec {
        Some(TrainValue::Spec { name, .. }) => name.as_str(),
        Some(TrainValue::Str(_)) | None => "folder",
        Some(_) => {
            return Err(run_err!(
                "the `dataset` setting must be nmnist(\"dir\"), dvs_gesture(\"dir\") or folder(\"dir\")"
            ));
        }
    };
    let written = match spec {
        Some(TrainValue::Str(s)) => Some(PathBuf::from(s)),
        Some(s) => match s.arg("path", 0) {
            Some(TrainValue::Str(p)) => Some(PathBuf::from(p)),
            _ => None,
        },
        None => None,
    };
    let dir = match (flag, written) {
        (Some(f), _) => f.to_path_buf(),
        (None, Some(w)) if w.exists() || w.is_absolute() => w,
        (None, Some(w)) => model_dir.join(w),
        (None, None) => {
            return Err(run_err!(
                "model `{}` names no dataset\n  = help: add `dataset = nmnist(\"dir\")` to its `train {{ }}` section or pass `--data DIR`",
                g.name
            ));
        }
    };
    if !dir.is_dir() {
        return Err(run_err!(
            "data directory `{}` does not exist\n  = help: pass `--data DIR` pointing at the dataset (for DVS128 Gesture: the folder holding trials_to_train.txt and the .aedat files)",
            dir.display()
        ));
    }
    Ok(match kind {
        "nmnist" => DataSource::Nmnist(dir),
        "dvs_gesture" => DataSource::DvsGesture(dir),
        _ => DataSource::Folder(dir),
    })
}

fn list_with_prefix(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.to_lowercase().starts_with(prefix) && n.ends_with(".txt"))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// (train, test) samples of a data source.
fn samples(data: &DataSource) -> Result<(Vec<Sample>, Vec<Sample>), RunError> {
    let e = |e: snn_runtime::events::EventError| run_err!("{e}");
    match data {
        DataSource::Nmnist(dir) => match (
            list_with_prefix(dir, "train"),
            list_with_prefix(dir, "test"),
        ) {
            (Some(train), test) => Ok((
                dataset::nmnist_list(&train).map_err(e)?,
                match test {
                    Some(t) => dataset::nmnist_list(&t).map_err(e)?,
                    None => Vec::new(),
                },
            )),
            (None, _) => folders(dir, "Train", "Test"),
        },
        DataSource::DvsGesture(dir) => Ok((
            dataset::dvs_gesture(dir, Split::Train).map_err(e)?,
            dataset::dvs_gesture(dir, Split::Test).map_err(e)?,
        )),
        DataSource::Folder(dir) => folders(dir, "train", "test"),
    }
}

fn folders(dir: &Path, train: &str, test: &str) -> Result<(Vec<Sample>, Vec<Sample>), RunError> {
    let read = |sub: &str| -> Result<Vec<Sample>, RunError> {
        let d = dir.join(sub);
        if !d.is_dir() {
            return Err(run_err!(
                "`{}` has neither label lists (train*.txt) nor a `{sub}/` folder with one sub-folder per class",
                dir.display()
            ));
        }
        dataset::folder_per_class(&d)
            .map(|(_, s)| s)
            .map_err(|e| run_err!("{e}"))
    };
    let test_samples = if dir.join(test).is_dir() {
        read(test)?
    } else {
        Vec::new()
    };
    Ok((read(train)?, test_samples))
}
