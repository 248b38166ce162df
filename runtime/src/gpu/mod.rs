//! GPU execution of snnc's PTX: the launch manifest format (always built), and with feature
//! `gpu` the CUDA driver API through cudarc, loaded at run time so no toolkit is needed to build.

pub mod manifest;

#[cfg(feature = "gpu")]
mod blas;
#[cfg(feature = "gpu")]
mod cuda;
#[cfg(feature = "gpu")]
mod train;
#[cfg(feature = "gpu")]
pub use cuda::{DeviceBuffer, DeviceInfo, GpuDevice, GpuModel, GpuModule, KernelTime, RunStats};
#[cfg(feature = "gpu")]
pub use train::TrainingFunctions;

pub use manifest::LaunchManifest;

/// The message for a machine without the NVIDIA driver.
pub const NO_DRIVER: &str =
    "no CUDA driver found (libcuda.so): install the NVIDIA driver or run without --device gpu";

/// Why GPU execution is unavailable or failed. Never a panic: CI machines have no GPU.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("{NO_DRIVER}")]
    NoDriver,
    #[error("the CUDA driver reports no GPU: run without --device gpu")]
    NoDevice,
    #[error("snn-runtime was built without its `gpu` feature")]
    NotBuilt,
    #[error(
        "cuBLAS not found (tried {0}): install the CUDA toolkit's cuBLAS, or set SNNC_CUBLAS to its libcublas.so"
    )]
    NoBlas(String),
    #[error("CUDA {call} failed: {message}")]
    Driver { call: &'static str, message: String },
    #[error("{0}")]
    Manifest(String),
    #[error("{0}")]
    Usage(String),
}

/// Whether GPU support was compiled in (feature `gpu`).
pub const BUILT: bool = cfg!(feature = "gpu");
