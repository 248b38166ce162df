//! snn-runtime: everything generated code links against or is driven by — event-camera
//! readers and framing, datasets and loaders, kernels, training and metrics.

pub mod allocator;
pub mod data;
pub mod events;
pub mod gpu;
pub mod kernels;
pub mod metrics;
pub mod train;
