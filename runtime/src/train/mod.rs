//! Training components that the `snnc train` driver calls: optimisers, learning-rate schedules,
//! crash-safe checkpoints, the JSON-lines run log and its plots (parameters are f64 by position).

pub mod checkpoint;
mod error;
mod exact;
pub mod log;
pub mod optim;
pub mod plot;
pub mod schedule;

pub use checkpoint::{TrainState, hash_ir, load, match_params, save};
pub use error::TrainError;
pub use exact::ExactArray;
pub use log::{LogContents, LogRecord, RunLog, read_log};
pub use optim::{
    DEVICE_SCALARS, DeviceScalar, Optimizer, OptimizerConfig, OptimizerState, ParamState,
};
pub use plot::plot_run;
pub use schedule::{Schedule, ScheduleState};
