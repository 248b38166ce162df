//! The one error type of the training components: optimiser, schedule, checkpoint, log and plots.
//! Each message names the file or parameter at fault and what to do about it.

use std::path::PathBuf;

use crate::events::EventError;

/// Everything that can go wrong in `train::*`.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An atomic write (through `events::write_atomic`) failed.
    #[error("writing failed: {0}")]
    Write(#[from] EventError),

    #[error("{}{}: invalid JSON: {source}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Json {
        path: PathBuf,
        line: Option<usize>,
        #[source]
        source: serde_json::Error,
    },

    #[error("{}: not a valid safetensors file: {what} — the checkpoint is damaged; restore it or start the run afresh", path.display())]
    Safetensors { path: PathBuf, what: String },

    #[error("{}: tensor {name:?}: {what}", path.display())]
    Tensor {
        path: PathBuf,
        name: String,
        what: String,
    },

    #[error("{}: no checkpoint (neither checkpoint/ nor checkpoint.old/ holds one) — start the run without resuming", run_dir.display())]
    NoCheckpoint { run_dir: PathBuf },

    #[error("{}: checkpoint was written for a different model (IR hash {found}, this model's is {expected}) — resume with the model that wrote it or use a fresh run directory", run_dir.display())]
    IrHashMismatch {
        run_dir: PathBuf,
        expected: String,
        found: String,
    },

    /// A caller-side inconsistency: bad configuration, mismatched lengths or shapes.
    #[error("{0}")]
    Invalid(String),

    #[error("{}: plotting failed: {what}", path.display())]
    Plot { path: PathBuf, what: String },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}
