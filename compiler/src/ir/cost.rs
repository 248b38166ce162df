//! Static operation counts per layer, for the paper's energy estimate: synaptic layers fed by
//! binary spikes cost accumulates (SOPs = input firing rate × their MACs), the encoding layer
//! and attention modules cost multiply-accumulates.

use super::graph::*;
use super::types::{Axis, Elem};

/// How a layer's operations are charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charge {
    /// Real-valued input (the encoding layer, or inputs after average pooling): MACs.
    Mac,
    /// Binary spike input: only the spikes that arrive cost an accumulate each.
    Sop,
    /// Part of an attention module: MACs (the paper counts attention as MACs).
    Attention,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerCost {
    pub node: ValueId,
    pub name: String,
    pub charge: Charge,
    /// Multiply-accumulates per sample over all time steps, were every input non-zero.
    pub macs_per_sample: u64,
}

/// Attention nodes are the ones the elaborator expands from `attend(...)`; it names them with
/// these prefixes.
pub fn is_attention(node: &Node) -> bool {
    ["ta", "ca", "sa", "gated", "gate"].iter().any(|p| {
        node.name
            .strip_prefix(p)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit() || c == '_'))
    })
}

fn per_sample(ty: &super::TensorType) -> u64 {
    ty.numel_per_sample() as u64
}

/// Costs of every layer that does arithmetic worth counting (weights, attention).
pub fn layer_costs(g: &Graph) -> Vec<LayerCost> {
    let mut out = Vec::new();
    for (i, node) in g.nodes.iter().enumerate() {
        let Some(x) = node.inputs.first() else {
            continue;
        };
        let xt = g.ty(*x);
        let macs = match &node.op {
            Op::Conv2d { kernel, .. } => {
                per_sample(&node.ty) * (xt.size(Axis::C).unwrap_or(1) * kernel.0 * kernel.1) as u64
            }
            Op::Dense { axis, .. } => per_sample(&node.ty) * xt.size(*axis).unwrap_or(1) as u64,
            Op::Binary(BinaryOp::Mul) | Op::Reduce { .. } | Op::Unary(UnaryOp::Sigmoid)
                if is_attention(node) =>
            {
                per_sample(&node.ty)
            }
            _ => continue,
        };
        let charge = if is_attention(node) {
            Charge::Attention
        } else if xt.elem == Elem::Spike {
            Charge::Sop
        } else {
            Charge::Mac
        };
        out.push(LayerCost {
            node: ValueId(i),
            name: node.name.clone(),
            charge,
            macs_per_sample: macs,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_layer_costs_macs_and_spike_fed_layers_sops() {
        let src = "import std.neurons.{LIF}\nimport std.attention.{CA}\nmodel M(T: int = 2) {\n input x: image(channels = 2, height = 4, width = 4, T = T)\n x -> conv(3, 3) -> bn -> attend(CA(r_c = 1)) -> LIF -> flatten -> linear(5) -> LIF -> readout.rate\n}\n";
        let c = crate::sema::compile_source(std::path::Path::new("m.snn"), src.into(), &[]);
        let g = c.graphs.first().expect("compiles");
        let costs = layer_costs(g);
        let conv = costs.iter().find(|c| c.name == "conv0").expect("conv");
        assert_eq!(conv.charge, Charge::Mac);
        assert_eq!(conv.macs_per_sample, 2 * 3 * 4 * 4 * 2 * 9);
        let linear = costs.iter().find(|c| c.name == "linear0").expect("linear");
        assert_eq!(linear.charge, Charge::Sop);
        assert_eq!(linear.macs_per_sample, 2 * 5 * 48);
        assert!(costs.iter().any(|c| c.charge == Charge::Attention));
    }
}
