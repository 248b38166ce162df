//! Tensor types of the graph IR: named axes over [T, B, C, H, W] (or [T, B, N] once flattened,
//! [B, N] after a readout), a dynamic batch, and whether values are binary spikes.

use serde::Serialize;
use std::fmt;

/// The meaning of an axis. Every IR tensor's axes appear in this order, each at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Axis {
    /// Time steps.
    T,
    /// Batch (sized at run time).
    B,
    /// Channels.
    C,
    /// Height.
    H,
    /// Width.
    W,
    /// Features of a flattened tensor.
    N,
}

impl Axis {
    pub fn letter(self) -> char {
        match self {
            Axis::T => 'T',
            Axis::B => 'B',
            Axis::C => 'C',
            Axis::H => 'H',
            Axis::W => 'W',
            Axis::N => 'N',
        }
    }
}

/// What the elements of a tensor are: binary spikes make downstream layers accumulate-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Elem {
    /// Real-valued f32 (currents, potentials, frames).
    Real,
    /// Binary {0, 1} stored as f32.
    Spike,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TensorType {
    /// Axes and their sizes; the size of `B` is ignored (dynamic).
    pub dims: Vec<(Axis, usize)>,
    pub elem: Elem,
}

impl TensorType {
    pub fn new(dims: Vec<(Axis, usize)>, elem: Elem) -> Self {
        TensorType { dims, elem }
    }

    /// `[T, B, C, H, W]`.
    pub fn image(t: usize, c: usize, h: usize, w: usize, elem: Elem) -> Self {
        Self::new(
            vec![
                (Axis::T, t),
                (Axis::B, 0),
                (Axis::C, c),
                (Axis::H, h),
                (Axis::W, w),
            ],
            elem,
        )
    }

    /// `[T, B, N]`.
    pub fn flat(t: usize, n: usize, elem: Elem) -> Self {
        Self::new(vec![(Axis::T, t), (Axis::B, 0), (Axis::N, n)], elem)
    }

    pub fn size(&self, axis: Axis) -> Option<usize> {
        self.dims.iter().find(|(a, _)| *a == axis).map(|(_, s)| *s)
    }

    pub fn has(&self, axis: Axis) -> bool {
        self.size(axis).is_some()
    }

    pub fn position(&self, axis: Axis) -> Option<usize> {
        self.dims.iter().position(|(a, _)| *a == axis)
    }

    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    pub fn is_spatial(&self) -> bool {
        self.has(Axis::H) && self.has(Axis::W)
    }

    /// The feature axis that per-channel ops (batchnorm, linear) act on: C, else N.
    pub fn feature_axis(&self) -> Option<Axis> {
        [Axis::C, Axis::N].into_iter().find(|a| self.has(*a))
    }

    pub fn with_elem(&self, elem: Elem) -> Self {
        TensorType {
            dims: self.dims.clone(),
            elem,
        }
    }

    pub fn with_size(&self, axis: Axis, size: usize) -> Self {
        let mut t = self.clone();
        for (a, s) in &mut t.dims {
            if *a == axis {
                *s = size;
            }
        }
        t
    }

    /// Elements per sample (all axes but B).
    pub fn numel_per_sample(&self) -> usize {
        self.dims
            .iter()
            .filter(|(a, _)| *a != Axis::B)
            .map(|(_, s)| *s)
            .product()
    }

    /// Same axes and sizes, ignoring the element kind.
    pub fn same_shape(&self, other: &TensorType) -> bool {
        self.dims == other.dims
    }

    /// Shape as the user reads it, e.g. `[T=4, B, C=64, H=32, W=32]`.
    pub fn shape_string(&self) -> String {
        let parts: Vec<String> = self
            .dims
            .iter()
            .map(|(a, s)| {
                if *a == Axis::B {
                    "B".to_string()
                } else {
                    format!("{}={s}", a.letter())
                }
            })
            .collect();
        format!("[{}]", parts.join(", "))
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let elem = match self.elem {
            Elem::Real => "f32",
            Elem::Spike => "spike",
        };
        let parts: Vec<String> = self
            .dims
            .iter()
            .map(|(a, s)| {
                if *a == Axis::B {
                    "B".to_string()
                } else {
                    format!("{}{s}", a.letter())
                }
            })
            .collect();
        write!(f, "{elem}<{}>", parts.join(" "))
    }
}
