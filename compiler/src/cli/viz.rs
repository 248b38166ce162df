//! `snnc viz`: the spiking-response visualisation of one sample (paper Sec. IV): per-layer
//! average firing and membrane maps over time, and the attention weights, as PNG grids.

use crate::interp::{Interpreter, Mode, Options, ParamStore};
use crate::ir::{Axis, Graph, Op, ScanEmit, UnaryOp, ValueId};
use crate::train::{RunConfig, RunOverrides};
use clap::Args;
use ndarray::{Array2, ArrayD, Axis as Nd};
use snn_runtime::metrics::{HeatmapRow, render_heatmaps};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct VizArgs {
    /// `FILE.snn` or `FILE.snn:MODEL`.
    model: String,
    /// A run directory holding a checkpoint.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Index of the test sample to show.
    #[arg(long, default_value_t = 0)]
    sample: usize,
    /// Output directory (default: CHECKPOINT/viz).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long = "set", value_name = "NAME=EXPR", value_parser = super::parse_override)]
    overrides: Vec<crate::sema::Override>,
}

/// Mean over channels of a [T, 1, C, H, W] (or [T, 1, N]) tensor: one map per time step.
fn maps_over_time(a: &ArrayD<f64>) -> Vec<Array2<f64>> {
    let t = a.shape().first().copied().unwrap_or(0);
    (0..t)
        .map(|s| {
            let step = a.index_axis(Nd(0), s);
            let step = step.index_axis(Nd(0), 0); // batch 1
            match step.ndim() {
                3 => step
                    .mean_axis(Nd(0))
                    .and_then(|m| m.into_dimensionality().ok())
                    .unwrap_or_else(|| Array2::zeros((1, 1))),
                _ => Array2::from_shape_vec((1, step.len()), step.iter().copied().collect())
                    .unwrap_or_else(|_| Array2::zeros((1, 1))),
            }
        })
        .collect()
}

fn as_map(a: &ArrayD<f64>) -> Array2<f64> {
    let dims: Vec<usize> = a.shape().iter().copied().filter(|d| *d > 1).collect();
    match dims.as_slice() {
        [h, w] => Array2::from_shape_vec((*h, *w), a.iter().copied().collect())
            .unwrap_or_else(|_| Array2::zeros((1, 1))),
        _ => Array2::from_shape_vec((1, a.len()), a.iter().copied().collect())
            .unwrap_or_else(|_| Array2::zeros((1, 1))),
    }
}

fn render(
    rows: Vec<HeatmapRow>,
    dir: &std::path::Path,
    name: &str,
    legend: &mut Vec<serde_json::Value>,
) -> Result<(), String> {
    if rows.is_empty() {
        return Ok(());
    }
    let path = dir.join(format!("{name}.png"));
    let scales = render_heatmaps(&rows, &path).map_err(|e| e.to_string())?;
    for (r, s) in rows.iter().zip(scales) {
        legend.push(serde_json::json!({ "image": format!("{name}.png"), "row": r.label, "tiles": r.maps.len(), "full_scale": s }));
    }
    println!("{}", path.display());
    Ok(())
}

pub fn run_viz(args: VizArgs) -> ExitCode {
    let (g, dir) = match super::train::load_model(&args.model, &args.overrides) {
        Ok(x) => x,
        Err(code) => return code,
    };
    match viz(&g, &dir, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn viz(g: &Graph, model_dir: &std::path::Path, args: &VizArgs) -> Result<(), String> {
    let overrides = RunOverrides {
        batch: Some(1),
        data: args.data.clone(),
        workers: Some(0),
        ..Default::default()
    };
    let cfg = RunConfig::resolve(g, args.checkpoint.clone(), model_dir, &overrides)
        .map_err(|e| e.to_string())?;
    let (loaded, _) =
        snn_runtime::train::checkpoint::load(&args.checkpoint).map_err(|e| e.to_string())?;
    let expected: Vec<(String, Vec<usize>)> = g
        .params
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    let values = snn_runtime::train::checkpoint::match_params(&args.checkpoint, loaded, &expected)
        .map_err(|e| e.to_string())?;
    let params = ParamStore { values };
    let (train, test) = cfg.loaders(g).map_err(|e| e.to_string())?;
    let loader = test.unwrap_or(train);
    let n = loader.samples().len();
    let batch = loader
        .epoch(0)
        .nth(args.sample)
        .ok_or_else(|| {
            format!(
                "sample {} does not exist: the split has {n} samples",
                args.sample
            )
        })?
        .map_err(|e| e.to_string())?;
    let (input, _) = g.inputs().next().ok_or("the model has no input")?;
    let Op::Input { name, .. } = &g.node(input).op else {
        return Err("the model has no input".into());
    };
    let interp = Interpreter::new(
        g,
        Options {
            mode: Mode::Eval,
            smooth_fire: None,
            dropout_seed: 0,
        },
    )
    .keep_all();
    let fwd = interp
        .forward(&params, &[(name, batch.frames.mapv(f64::from).into_dyn())])
        .map_err(|e| e.to_string())?;
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| args.checkpoint.join("viz"));
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;

    let mut spikes = Vec::new();
    let mut membrane = Vec::new();
    let mut attention = Vec::new();
    for (i, node) in g.nodes.iter().enumerate() {
        let id = ValueId(i);
        let Some(value) = fwd.values.get(&id) else {
            continue;
        };
        match &node.op {
            Op::Scan {
                emit: ScanEmit::Spikes,
                ..
            } => {
                spikes.push(HeatmapRow {
                    label: format!("{} firing (mean over channels)", node.name),
                    maps: maps_over_time(value),
                });
                if let Some(states) = fwd.scan_states.get(&id) {
                    // States at the start of each step, first state = membrane, back in the layer's shape.
                    let mut shape = node
                        .ty
                        .dims
                        .iter()
                        .map(|(a, s)| if *a == Axis::B { 1 } else { *s })
                        .collect::<Vec<_>>();
                    shape[0] = states.shape()[0];
                    let v: Vec<f64> = states.index_axis(Nd(1), 0).iter().copied().collect();
                    if let Ok(m) = ArrayD::from_shape_vec(shape, v) {
                        membrane.push(HeatmapRow {
                            label: format!("{} membrane at step start", node.name),
                            maps: maps_over_time(&m),
                        });
                    }
                }
            }
            Op::Unary(UnaryOp::Sigmoid) if node.group.is_some() => {
                attention.push(HeatmapRow {
                    label: format!(
                        "{} {} weights {}",
                        node.group.as_deref().unwrap_or(""),
                        node.name,
                        node.ty.shape_string()
                    ),
                    maps: vec![as_map(value)],
                });
            }
            _ => {}
        }
    }
    let mut legend = Vec::new();
    render(spikes, &out_dir, "spikes", &mut legend)?;
    render(membrane, &out_dir, "membrane", &mut legend)?;
    render(attention, &out_dir, "attention", &mut legend)?;
    let legend_path = out_dir.join("legend.json");
    let text = serde_json::to_string_pretty(&serde_json::json!({ "model": g.name, "sample": args.sample, "label": batch.labels.first(), "rows": legend }))
        .map_err(|e| e.to_string())?;
    std::fs::write(&legend_path, text).map_err(|e| format!("{}: {e}", legend_path.display()))?;
    println!("{}", legend_path.display());
    Ok(())
}
