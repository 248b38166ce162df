//! The optimiser step as generated code, for backends that keep training on their device:
//! `@<model>_optimizer` applies one Adam or AdamW update to every trainable parameter in place,
//! from its gradient (what `@<model>_backward` wrote) and its two moment buffers, with the
//! step's scalars read from a small buffer the driver writes before each call
//! (`snn_runtime::train::Optimizer::device_scalars`, whose `DeviceScalar` documents the
//! update). One flat `scf.parallel` per parameter, so the GPU backend maps each to a kernel and
//! parameters, gradients and moments never leave the device (docs/abi.md).

use super::grad::{TrainArg, TrainRole};
use super::lower::LowerError;
use crate::ir::Graph;
use melior::Context;
use melior::ir::{BlockLike, Module, Operation};
use snn_runtime::train::{DEVICE_SCALARS, DeviceScalar};
use std::fmt::Write;

pub fn optimizer_symbol(g: &Graph) -> String {
    format!("{}_optimizer", g.name)
}

/// The name of a trainable parameter's first or second moment buffer (PyTorch's state keys).
pub fn moment_name(param: &str, second: bool) -> String {
    if second {
        format!("exp_avg_sq.{param}")
    } else {
        format!("exp_avg.{param}")
    }
}

/// `@<model>_optimizer`'s arguments: every trainable parameter (`Graph::params` order), then
/// their gradients (named as the backward names them), first moments, second moments, and
/// last the step's scalars.
pub fn optimizer_signature(g: &Graph) -> Vec<TrainArg> {
    let trainable: Vec<_> = g.params.iter().filter(|p| p.role.trainable()).collect();
    let mut args = Vec::with_capacity(4 * trainable.len() + 1);
    let group = |role: TrainRole, name: fn(&str) -> String| {
        trainable.iter().map(move |p| TrainArg {
            name: name(&p.name),
            role,
            shape: p.shape.clone(),
        })
    };
    args.extend(group(TrainRole::Param, |n| n.to_string()));
    args.extend(group(TrainRole::DParam, |n| format!("d{n}")));
    args.extend(group(TrainRole::OptimizerState, |n| moment_name(n, false)));
    args.extend(group(TrainRole::OptimizerState, |n| moment_name(n, true)));
    args.push(TrainArg {
        name: "scalars".into(),
        role: TrainRole::OptimizerScalars,
        shape: vec![DEVICE_SCALARS],
    });
    args
}

fn memref(shape: &[usize]) -> String {
    let dims: String = shape.iter().map(|d| format!("{d}x")).collect();
    format!("memref<{dims}f32>")
}

/// `@<model>_optimizer` as MLIR text (func, arith, math, memref, scf).
fn optimizer_text(g: &Graph) -> String {
    let sig = optimizer_signature(g);
    let n = (sig.len() - 1) / 4;
    let mut t = String::new();
    let args: Vec<String> = sig
        .iter()
        .enumerate()
        .map(|(i, a)| {
            format!(
                "%a{i}: {} {{snnc.name = \"{}\", snnc.role = \"{}\"}}",
                memref(&a.shape),
                a.name.replace('\\', "\\\\").replace('"', "\\\""),
                a.role.as_str()
            )
        })
        .collect();
    let _ = writeln!(
        t,
        "func.func @{}({}) {{",
        optimizer_symbol(g),
        args.join(", ")
    );
    for k in 0..DEVICE_SCALARS {
        let _ = writeln!(t, "  %k{k} = arith.constant {k} : index");
    }
    let _ = writeln!(t, "  %c1 = arith.constant 1 : index");
    let scalars = format!("%a{}", sig.len() - 1);
    let scalars_ty = memref(&[DEVICE_SCALARS]);
    for (j, param) in sig[..n].iter().enumerate() {
        let shape = &param.shape;
        let len: usize = shape.iter().product();
        let flat_ty = memref(&[len]);
        // Parameter, gradient, first and second moment, each as a 1-D view.
        let mut views = Vec::with_capacity(4);
        for (b, arg) in [j, n + j, 2 * n + j, 3 * n + j].into_iter().enumerate() {
            if shape.len() == 1 {
                views.push(format!("%a{arg}"));
                continue;
            }
            let dims: Vec<String> = (0..shape.len()).map(|d| d.to_string()).collect();
            let _ = writeln!(
                t,
                "  %v{j}_{b} = memref.collapse_shape %a{arg} [[{}]] : {} into {flat_ty}",
                dims.join(", "),
                memref(shape)
            );
            views.push(format!("%v{j}_{b}"));
        }
        let _ = writeln!(t, "  %n{j} = arith.constant {len} : index");
        let _ = writeln!(t, "  scf.parallel (%i) = (%k0) to (%n{j}) step (%c1) {{");
        let scalar = |t: &mut String, name: &str, s: DeviceScalar| {
            let _ = writeln!(
                t,
                "    %{name} = memref.load {scalars}[%k{}] : {scalars_ty}",
                s as usize
            );
        };
        scalar(&mut t, "decay", DeviceScalar::DecayMul);
        scalar(&mut t, "l2", DeviceScalar::L2);
        scalar(&mut t, "w1", DeviceScalar::OneMinusBeta1);
        scalar(&mut t, "b2", DeviceScalar::Beta2);
        scalar(&mut t, "w2", DeviceScalar::OneMinusBeta2);
        scalar(&mut t, "step", DeviceScalar::StepSize);
        scalar(&mut t, "ib2", DeviceScalar::InvSqrtBiasCorrection2);
        scalar(&mut t, "eps", DeviceScalar::Eps);
        for (name, view) in ["p", "g", "m", "v"].iter().zip(&views) {
            let _ = writeln!(t, "    %{name} = memref.load {view}[%i] : {flat_ty}");
        }
        // The update of `DeviceScalar`'s doc, term by term.
        t.push_str(
            "    %p1 = arith.mulf %p, %decay : f32
    %l2p = arith.mulf %l2, %p1 : f32
    %g1 = arith.addf %g, %l2p : f32
    %gm = arith.subf %g1, %m : f32
    %dm = arith.mulf %w1, %gm : f32
    %m1 = arith.addf %m, %dm : f32
    %vb = arith.mulf %b2, %v : f32
    %gg = arith.mulf %g1, %g1 : f32
    %dv = arith.mulf %w2, %gg : f32
    %v1 = arith.addf %vb, %dv : f32
    %sq = math.sqrt %v1 : f32
    %sc = arith.mulf %sq, %ib2 : f32
    %den = arith.addf %sc, %eps : f32
    %q = arith.divf %m1, %den : f32
    %dp = arith.mulf %step, %q : f32
    %p2 = arith.subf %p1, %dp : f32
",
        );
        for (name, view) in ["p2", "m1", "v1"]
            .iter()
            .zip([&views[0], &views[2], &views[3]])
        {
            let _ = writeln!(t, "    memref.store %{name}, {view}[%i] : {flat_ty}");
        }
        t.push_str("    scf.reduce\n  }\n");
    }
    t.push_str("  return\n}\n");
    t
}

/// Appends `@<model>_optimizer` to `module`. A model without trainable parameters gets none.
pub fn lower_optimizer(context: &Context, module: &Module, g: &Graph) -> Result<(), LowerError> {
    if !has_optimizer(g) {
        return Ok(());
    }
    // Parameters have rank 1 or more (a learnable neuron scalar is `[1]`): the views below
    // assume it.
    if let Some(p) = g.params.iter().find(|p| p.shape.is_empty()) {
        return Err(LowerError::new(format!(
            "internal: parameter `{}` has rank 0",
            p.name
        )));
    }
    let text = optimizer_text(g);
    let parsed = Module::parse(context, &text).ok_or_else(|| {
        LowerError::new(format!(
            "internal: the optimiser of `{}` does not parse:\n{text}",
            g.name
        ))
    })?;
    let func = parsed
        .body()
        .first_operation()
        .ok_or_else(|| LowerError::new("internal: empty optimiser module"))?;
    // SAFETY: a clone of a live operation of the same context, owned by the new `Operation`
    // until the module's block takes it.
    let owned = unsafe { Operation::from_raw(mlir_sys::mlirOperationClone(func.to_raw())) };
    module.body().append_operation(owned);
    Ok(())
}

/// Whether `g` gets an optimiser function (it has something to train).
pub fn has_optimizer(g: &Graph) -> bool {
    g.params.iter().any(|p| p.role.trainable())
}
