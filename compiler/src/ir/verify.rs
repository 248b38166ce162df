//! The IR verifier: structural invariants every stage must keep (operands defined before use,
//! types equal to what inference gives, parameters shaped as their ops need, unique names).

use super::graph::*;
use super::infer::{infer_type, param_layout};
use std::collections::HashSet;

/// Checks `g`; returns every violation found (empty when the graph is well formed).
pub fn verify(g: &Graph) -> Vec<String> {
    let mut errors = Vec::new();
    let mut names = HashSet::new();
    for (i, node) in g.nodes.iter().enumerate() {
        let here = format!("%{} (node {i})", node.name);
        if !names.insert(node.name.as_str()) {
            errors.push(format!("{here}: duplicate value name"));
        }
        if let Some(bad) = node.inputs.iter().find(|v| v.0 >= i) {
            errors.push(format!(
                "{here}: operand {} is not defined before use",
                bad.0
            ));
            continue;
        }
        if let Some(bad) = node.params.iter().find(|p| p.0 >= g.params.len()) {
            errors.push(format!("{here}: parameter {} does not exist", bad.0));
            continue;
        }
        if matches!(node.op, Op::Input { .. }) {
            continue;
        }
        let inputs: Vec<_> = node.inputs.iter().map(|v| g.ty(*v)).collect();
        match infer_type(&node.op, &inputs) {
            Ok(ty) if ty == node.ty => {}
            Ok(ty) => errors.push(format!("{here}: type {} but inference gives {ty}", node.ty)),
            Err(e) => errors.push(format!("{here}: {}", e.message)),
        }
        let with_bias = param_layout(&node.op, &inputs, true);
        let without_bias = param_layout(&node.op, &inputs, false);
        let actual: Vec<_> = node
            .params
            .iter()
            .map(|p| (g.param(*p).shape.clone(), g.param(*p).role))
            .collect();
        let fits = |layout: &[(String, Vec<usize>, ParamRole, Init)]| {
            layout.len() == actual.len()
                && layout
                    .iter()
                    .zip(&actual)
                    .all(|(l, a)| l.1 == a.0 && l.2 == a.1)
        };
        if !fits(&with_bias) && !fits(&without_bias) {
            errors.push(format!("{here}: parameters {actual:?} do not match the op"));
        }
    }
    if g.outputs.is_empty() {
        errors.push("graph has no output".into());
    }
    for o in &g.outputs {
        if o.0 >= g.nodes.len() {
            errors.push(format!("output {} does not exist", o.0));
        }
    }
    errors
}
