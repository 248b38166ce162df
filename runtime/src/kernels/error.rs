//! The one error type every kernel returns instead of panicking on caller input.
//! Messages always name the op and the offending shapes or arguments.

use std::fmt;

/// Why a kernel refused its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// Operand ranks or extents do not fit the op.
    Shape { op: &'static str, message: String },
    /// A non-shape argument (axis, stride, kernel size, probability, ...) is out of range.
    Argument { op: &'static str, message: String },
}

impl KernelError {
    pub fn shape(op: &'static str, message: impl Into<String>) -> Self {
        Self::Shape {
            op,
            message: message.into(),
        }
    }

    pub fn argument(op: &'static str, message: impl Into<String>) -> Self {
        Self::Argument {
            op,
            message: message.into(),
        }
    }

    /// The op that rejected its inputs.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Shape { op, .. } | Self::Argument { op, .. } => op,
        }
    }
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shape { op, message } => write!(f, "{op}: shape error: {message}"),
            Self::Argument { op, message } => write!(f, "{op}: invalid argument: {message}"),
        }
    }
}

impl std::error::Error for KernelError {}

/// Result alias used throughout the kernels.
pub type KernelResult<T> = Result<T, KernelError>;
