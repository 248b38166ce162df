//! The buffer manifest of a compiled forward function (name, role, shape, dtype, argument index
//! of every buffer) shared by the JIT's shape checks, the C header and `<model>.json`.

use super::BackendError;
use crate::ir::Graph;
use crate::mlir::LowerOptions;
use crate::mlir::lower::{ArgRole, forward_signature, forward_symbol};
use serde::{Deserialize, Serialize};

/// One argument of the forward function: a dense row-major f32 buffer owned by the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferSpec {
    pub name: String,
    /// `input`, `param`, `state` (running statistics, updated in place) or `output`.
    pub role: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    /// Position in the forward function's argument list.
    pub index: usize,
    /// Number of f32 elements (the product of `shape`).
    pub elements: usize,
}

/// Everything a caller needs to drive `<symbol>` without the compiler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub model: String,
    /// The forward function: `void <symbol>(float *arg0, ...)`, one pointer per buffer.
    pub symbol: String,
    /// `void <packed_symbol>(float *const *args)`: the same, arguments in one array.
    pub packed_symbol: String,
    pub batch: usize,
    /// The Cranelift target the code was generated for (the host's ISA and features).
    pub target: String,
    pub buffers: Vec<BufferSpec>,
}

impl Manifest {
    pub fn new(g: &Graph, opts: &LowerOptions, target: &str) -> Result<Manifest, BackendError> {
        let sig = forward_signature(g, opts)?;
        let symbol = forward_symbol(g);
        Ok(Manifest {
            model: g.name.clone(),
            packed_symbol: format!("{symbol}_packed"),
            symbol,
            batch: opts.batch,
            target: target.to_string(),
            buffers: sig
                .into_iter()
                .enumerate()
                .map(|(index, a)| BufferSpec {
                    role: a.role.as_str().to_string(),
                    elements: a.shape.iter().product(),
                    name: a.name,
                    shape: a.shape,
                    dtype: "f32".into(),
                    index,
                })
                .collect(),
        })
    }

    /// The buffers with role `role` ("input", "output"; "param" and "state" together are the
    /// graph's parameters, see [`Manifest::params`]).
    pub fn with_role<'m>(&'m self, role: &'m str) -> impl Iterator<Item = &'m BufferSpec> + 'm {
        self.buffers.iter().filter(move |b| b.role == role)
    }

    /// Parameters and running statistics, in `Graph::params` order (the order of the arguments).
    pub fn params(&self) -> impl Iterator<Item = &BufferSpec> {
        self.buffers
            .iter()
            .filter(|b| b.role == ArgRole::Param.as_str() || b.role == ArgRole::State.as_str())
    }

    pub fn to_json(&self) -> String {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}
