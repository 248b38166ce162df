//! Static operation counts for the paper's energy estimate, as the runtime's `LayerCounts`
//! rows: each spiking layer with the MACs of the layers its spikes drive (charged as SOPs at its
//! firing rate), encoding layers fed by real values (MACs), and attention modules (MACs).

use super::graph::*;
use super::types::{Axis, Elem};
use snn_runtime::metrics::{CountKind, LayerCounts};

fn is_attention(node: &Node) -> bool {
    node.group.is_some()
}

/// MACs of a weight layer or attention op per sample over all its time steps.
fn macs(g: &Graph, node: &Node) -> Option<u64> {
    let x = g.ty(*node.inputs.first()?);
    let out = node.ty.numel_per_sample() as u64;
    Some(match &node.op {
        Op::Conv2d { kernel, .. } => {
            out * (x.size(Axis::C).unwrap_or(1) * kernel.0 * kernel.1) as u64
        }
        Op::Dense { axis, .. } => out * x.size(*axis).unwrap_or(1) as u64,
        Op::Binary(BinaryOp::Mul) | Op::Reduce { .. } | Op::Unary(UnaryOp::Sigmoid)
            if is_attention(node) =>
        {
            out
        }
        _ => return None,
    })
}

/// The scan whose spikes reach `v` through shape-only ops (flatten, max pooling), if any.
fn spike_source(g: &Graph, mut v: ValueId) -> Option<ValueId> {
    loop {
        let node = g.node(v);
        match &node.op {
            Op::Scan {
                emit: ScanEmit::Spikes,
                ..
            } => return Some(v),
            Op::Flatten
            | Op::Pool {
                kind: PoolKind::Max,
                ..
            } if g.ty(v).elem == Elem::Spike => v = *node.inputs.first()?,
            _ => return None,
        }
    }
}

fn steps(ty: &super::TensorType) -> u64 {
    ty.size(Axis::T).unwrap_or(1).max(1) as u64
}

/// The energy model's rows for `g`.
pub fn layer_counts(g: &Graph) -> Vec<LayerCounts> {
    let mut spiking: Vec<(ValueId, f64)> = g
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.emits_spikes())
        .map(|(i, _)| (ValueId(i), 0.0))
        .collect();
    let mut rows = Vec::new();
    for node in &g.nodes {
        let Some(m) = macs(g, node) else { continue };
        let per_step = m as f64 / steps(&node.ty) as f64;
        if let Some(group) = &node.group {
            // One row per attention module, summing the ops it expanded into.
            match rows
                .iter_mut()
                .find(|r: &&mut LayerCounts| &r.name == group)
            {
                Some(row) => row.synaptic_ops_per_sample += m as f64,
                None => rows.push(LayerCounts {
                    name: group.clone(),
                    neurons_per_sample: 0,
                    synaptic_ops_per_sample: m as f64,
                    kind: CountKind::Attention,
                }),
            }
        } else if let Some(src) = node.inputs.first().and_then(|x| spike_source(g, *x)) {
            if let Some(entry) = spiking.iter_mut().find(|(id, _)| *id == src) {
                entry.1 += per_step;
            }
        } else {
            rows.push(LayerCounts {
                name: node.name.clone(),
                neurons_per_sample: 0,
                synaptic_ops_per_sample: per_step,
                kind: CountKind::Encoding,
            });
        }
    }
    for (id, ops) in spiking {
        let ty = g.ty(id);
        rows.push(LayerCounts {
            name: g.node(id).name.clone(),
            neurons_per_sample: ty.numel_per_sample() as u64 / steps(ty),
            synaptic_ops_per_sample: ops,
            kind: CountKind::Spiking,
        });
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_layer_costs_macs_and_spikes_drive_sops() {
        let src = "import std.neurons.{LIF}\nimport std.attention.{CA}\nmodel M(T: int = 2) {\n input x: image(channels = 2, height = 4, width = 4, T = T)\n x -> conv(3, 3) -> bn -> attend(CA(r_c = 1)) -> LIF -> flatten -> linear(5) -> LIF -> readout.rate\n}\n";
        let c = crate::sema::compile_source(std::path::Path::new("m.snn"), src.into(), &[]);
        let g = c.graphs.first().expect("compiles");
        let rows = layer_counts(g);
        let row = |n: &str| {
            rows.iter()
                .find(|r| r.name == n)
                .unwrap_or_else(|| panic!("no row {n}: {rows:?}"))
        };
        assert_eq!(row("conv0").kind, CountKind::Encoding);
        assert_eq!(
            row("conv0").synaptic_ops_per_sample,
            (3 * 4 * 4 * 2 * 9) as f64
        );
        assert_eq!(row("lif0").kind, CountKind::Spiking);
        assert_eq!(row("lif0").neurons_per_sample, 48);
        assert_eq!(
            row("lif0").synaptic_ops_per_sample,
            (5 * 48) as f64,
            "lif0 drives linear0"
        );
        assert_eq!(
            row("lif1").synaptic_ops_per_sample,
            0.0,
            "the output layer drives nothing"
        );
        assert!(rows.iter().any(|r| r.kind == CountKind::Attention));
    }
}
