//! Evaluation metrics: accuracy, spike counts and firing rates, and the paper's 45 nm energy
//! estimate (MACs and SOPs per layer), with text tables for reports and model comparisons.

mod accuracy;
mod compare;
mod energy;
mod format;
mod heatmap;

pub use accuracy::{AccuracyCounter, accuracy, argmax_rows, correct};
pub use compare::{Comparison, Summary, compare, compare_table};
pub use energy::{
    CountKind, EnergyModel, EnergyReport, EnergyRow, LayerCounts, LayerStats, energy_report,
    energy_report_with,
};
pub use heatmap::{HeatmapRow, render_heatmaps};

/// Everything that can go wrong computing metrics: inputs that do not fit together.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("readout has shape {shape:?}; expected [batch, classes] with classes ≥ 1")]
    ReadoutShape { shape: Vec<usize> },
    #[error("readout has {batch} rows but {targets} targets were given")]
    BatchMismatch { batch: usize, targets: usize },
    #[error("target {target} at row {row} is out of range for {classes} classes")]
    TargetRange {
        row: usize,
        target: usize,
        classes: usize,
    },
    #[error("energy report: {0}")]
    Energy(String),
}
