//! Crash-safe training checkpoints: `RUN_DIR/checkpoint/params.safetensors` (F64, exact bits,
//! named by parameter) and `RUN_DIR/checkpoint/state.json` (everything else needed to resume).
//!
//! # Atomicity and the recovery rule
//! `save` writes a complete new directory `RUN_DIR/checkpoint.tmp-<pid>/` (each file fsynced,
//! then the directory), then swaps it in with renames:
//! 1. if `checkpoint/` exists: delete a stale `checkpoint.old/`, rename `checkpoint/` → `checkpoint.old/`;
//! 2. rename `checkpoint.tmp-<pid>/` → `checkpoint/`, fsync `RUN_DIR`;
//! 3. delete `checkpoint.old/`.
//!
//! `checkpoint/` only ever comes into being by the rename of a finished directory, so whenever it
//! exists it is complete; between steps 1 and 2 only `checkpoint.old/` holds the previous one.
//! Hence the rule `load` applies: **use `checkpoint/` if it exists, else `checkpoint.old/`**;
//! `checkpoint.tmp-*` directories are never read (a crash may have left them half-written) and
//! the next `save` by the same process id replaces its own; others can be deleted by hand.
//! If step 1 finds no `checkpoint/` but a `checkpoint.old/` (a crash between 1 and 2 earlier),
//! the old one is kept until the new `checkpoint/` is in place.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::log::LogRecord;
use super::optim::OptimizerState;
use super::schedule::ScheduleState;
use crate::events::write_atomic;

pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const CHECKPOINT_OLD_DIR: &str = "checkpoint.old";
pub const PARAMS_FILE: &str = "params.safetensors";
pub const STATE_FILE: &str = "state.json";
/// Version of the `state.json` layout; bumped on incompatible changes.
pub const STATE_FORMAT: u32 = 1;
/// safetensors metadata key holding the parameter order (a JSON array of names), because the
/// format itself stores tensors sorted, and parameters are addressed by position.
const ORDER_KEY: &str = "snnc.param_order";

/// Parameters with their names, in positional order.
pub type NamedParams = Vec<(String, ArrayD<f64>)>;

/// Everything besides the parameters that a resumed run needs to continue identically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Layout version of this file ([`STATE_FORMAT`]).
    #[serde(default = "default_format")]
    pub format: u32,
    pub model_name: String,
    /// Hash of the model's IR text (e.g. [`hash_ir`]); compared on resume by [`TrainState::check_ir_hash`].
    pub ir_hash: String,
    /// Epochs completed: a resumed run starts at this (0-based) epoch.
    pub epoch: usize,
    /// Optimiser steps taken.
    pub global_step: u64,
    pub optimizer: OptimizerState,
    #[serde(default)]
    pub schedule: ScheduleState,
    /// State words of the training RNG(s) (dropout, augmentation…), in the caller's order.
    #[serde(default)]
    pub rng_state: Vec<u64>,
    /// Seed of the data-order shuffle (the order of epoch e derives from it and e).
    pub data_order_seed: u64,
    /// The log records so far, so metric curves survive a lost or truncated log.
    #[serde(default)]
    pub history: Vec<LogRecord>,
    /// Free-form entries for the driver (e.g. its run configuration).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn default_format() -> u32 {
    STATE_FORMAT
}

impl TrainState {
    /// Refuses to resume a checkpoint written for another model.
    pub fn check_ir_hash(&self, run_dir: &Path, expected: &str) -> Result<(), TrainError> {
        if self.ir_hash == expected {
            Ok(())
        } else {
            Err(TrainError::IrHashMismatch {
                run_dir: run_dir.to_path_buf(),
                expected: expected.to_string(),
                found: self.ir_hash.clone(),
            })
        }
    }
}

/// A stable hash of IR text for [`TrainState::ir_hash`]: xxh3-128 as 32 hex digits.
pub fn hash_ir(ir_text: &str) -> String {
    format!(
        "{:032x}",
        twox_hash::XxHash3_128::oneshot(ir_text.as_bytes())
    )
}

/// The directory `load` would read under the recovery rule, if any.
pub fn checkpoint_dir(run_dir: &Path) -> Option<PathBuf> {
    [CHECKPOINT_DIR, CHECKPOINT_OLD_DIR]
        .iter()
        .map(|d| run_dir.join(d))
        .find(|d| d.is_dir())
}

/// Whether `run_dir` holds a checkpoint to resume from.
pub fn exists(run_dir: &Path) -> bool {
    checkpoint_dir(run_dir).is_some()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::io(path, e)
}

/// fsync a directory so the renames and creations inside it are durable.
fn sync_dir(dir: &Path) -> Result<(), TrainError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Encodes parameters as a safetensors file image (F64, little-endian, row-major).
fn encode_params(params: &[(String, &ArrayD<f64>)]) -> Result<Vec<u8>, TrainError> {
    let mut seen = HashSet::new();
    for (name, _) in params {
        if name.is_empty() {
            return Err(TrainError::Invalid(
                "checkpoint save: a parameter has an empty name".into(),
            ));
        }
        if !seen.insert(name.as_str()) {
            return Err(TrainError::Invalid(format!(
                "checkpoint save: parameter name {name:?} appears twice; names must be unique"
            )));
        }
    }
    let bytes: Vec<Vec<u8>> = params
        .iter()
        .map(|(_, a)| a.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(params.len());
    for ((name, a), b) in params.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F64, a.shape().to_vec(), b).map_err(|e| {
            TrainError::Invalid(format!("checkpoint save: parameter {name:?}: {e}"))
        })?;
        views.push((name.as_str(), view));
    }
    let order: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    let order = serde_json::to_string(&order)
        .map_err(|e| TrainError::Invalid(format!("checkpoint save: {e}")))?;
    let metadata = HashMap::from([(ORDER_KEY.to_string(), order)]);
    safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| TrainError::Invalid(format!("checkpoint save: {e}")))
}

/// Saves a checkpoint into `run_dir` atomically (see the module docs); returns the directory
/// written (`RUN_DIR/checkpoint`). `params` are (name, value) in the model's positional order.
pub fn save(
    run_dir: &Path,
    params: &[(String, &ArrayD<f64>)],
    state: &TrainState,
) -> Result<PathBuf, TrainError> {
    let image = encode_params(params)?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| TrainError::Json {
        path: run_dir.join(STATE_FILE),
        line: None,
        source: e,
    })?;
    fs::create_dir_all(run_dir).map_err(io(run_dir))?;

    let tmp = run_dir.join(format!("{CHECKPOINT_DIR}.tmp-{}", std::process::id()));
    if tmp.exists() {
        // Our own leftover from an earlier failed save in this process: never read, safe to drop.
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir(&tmp).map_err(io(&tmp))?;
    // write_atomic fsyncs each file before its rename, so the files are durable before the swap.
    write_atomic(&tmp.join(PARAMS_FILE), |w| w.write_all(&image))?;
    write_atomic(&tmp.join(STATE_FILE), |w| w.write_all(&json))?;
    sync_dir(&tmp)?;

    let current = run_dir.join(CHECKPOINT_DIR);
    let old = run_dir.join(CHECKPOINT_OLD_DIR);
    if current.is_dir() {
        if old.exists() {
            // `checkpoint/` is complete, so a leftover `.old` is redundant.
            fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        fs::rename(&current, &old).map_err(io(&current))?;
    }
    fs::rename(&tmp, &current).map_err(io(&tmp))?;
    sync_dir(run_dir)?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(current)
}

/// Loads the checkpoint of `run_dir` (recovery rule in the module docs): the parameters in the
/// order they were saved, and the training state. Check the IR hash with
/// [`TrainState::check_ir_hash`] and the shapes with [`match_params`].
pub fn load(run_dir: &Path) -> Result<(NamedParams, TrainState), TrainError> {
    let dir = checkpoint_dir(run_dir).ok_or_else(|| TrainError::NoCheckpoint {
        run_dir: run_dir.to_path_buf(),
    })?;
    let state_path = dir.join(STATE_FILE);
    let text = fs::read(&state_path).map_err(io(&state_path))?;
    let state: TrainState = serde_json::from_slice(&text).map_err(|e| TrainError::Json {
        path: state_path.clone(),
        line: None,
        source: e,
    })?;
    if state.format > STATE_FORMAT {
        return Err(TrainError::Invalid(format!(
            "{}: state format {} is newer than this runtime understands ({STATE_FORMAT}) — use a newer snnc",
            state_path.display(),
            state.format
        )));
    }
    let params = read_params(&dir.join(PARAMS_FILE))?;
    Ok((params, state))
}

/// Reads a safetensors file of F64 tensors, in the saved order (name order if the file has no
/// order record, e.g. one written by other tools).
pub fn read_params(path: &Path) -> Result<NamedParams, TrainError> {
    let bytes = fs::read(path).map_err(io(path))?;
    let corrupt = |what: String| TrainError::Safetensors {
        path: path.to_path_buf(),
        what,
    };
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
    names.sort();
    if let Some(order) = metadata.metadata().as_ref().and_then(|m| m.get(ORDER_KEY)) {
        let order: Vec<String> = serde_json::from_str(order).map_err(|e| {
            corrupt(format!(
                "metadata {ORDER_KEY:?} is not a list of names: {e}"
            ))
        })?;
        let mut sorted = order.clone();
        sorted.sort();
        if sorted != names {
            return Err(corrupt(format!(
                "metadata {ORDER_KEY:?} lists {} names that do not match the {} tensors",
                order.len(),
                names.len()
            )));
        }
        names = order;
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let view = file.tensor(&name).map_err(|e| corrupt(e.to_string()))?;
        if view.dtype() != Dtype::F64 {
            return Err(TrainError::Tensor {
                path: path.to_path_buf(),
                name,
                what: format!(
                    "dtype is {:?}, expected F64 — checkpoints hold f64 parameters; convert the file",
                    view.dtype()
                ),
            });
        }
        let data = view
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let array =
            ArrayD::from_shape_vec(IxDyn(view.shape()), data).map_err(|e| TrainError::Tensor {
                path: path.to_path_buf(),
                name: name.clone(),
                what: format!("shape {:?} does not fit its data: {e}", view.shape()),
            })?;
        out.push((name, array));
    }
    Ok(out)
}

/// Puts loaded parameters into the model's order (`expected`: name and shape per position),
/// reporting every missing, unexpected or mis-shaped parameter at once.
pub fn match_params(
    run_dir: &Path,
    loaded: Vec<(String, ArrayD<f64>)>,
    expected: &[(String, Vec<usize>)],
) -> Result<Vec<ArrayD<f64>>, TrainError> {
    let mut by_name: HashMap<String, ArrayD<f64>> = loaded.into_iter().collect();
    let mut problems = Vec::new();
    let mut out = Vec::with_capacity(expected.len());
    for (name, shape) in expected {
        match by_name.remove(name) {
            None => problems.push(format!("{name:?} is missing")),
            Some(a) if a.shape() != shape.as_slice() => problems.push(format!(
                "{name:?} has shape {:?}, the model expects {shape:?}",
                a.shape()
            )),
            Some(a) => out.push(a),
        }
    }
    let mut extra: Vec<_> = by_name.into_keys().collect();
    extra.sort();
    for name in extra {
        problems.push(format!("{name:?} is not a parameter of the model"));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(TrainError::Invalid(format!(
            "{}: checkpoint does not fit the model: {} — was it written for another model?",
            run_dir.join(CHECKPOINT_DIR).join(PARAMS_FILE).display(),
            problems.join("; ")
        )))
    }
}
