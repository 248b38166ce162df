//! Times one training step (forward + backward) of a model in the reference interpreter:
//! `cargo run --release -p snnc --example interp_step -- examples/nmnist.snn NMNISTVanilla 16`.

use ndarray::{ArrayD, IxDyn};
use snnc::interp::{Interpreter, Options, ParamStore, loss};
use snnc::ir::Axis;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (file, model, batch) = match args.as_slice() {
        [_, f, m, b] => (f.clone(), m.clone(), b.parse().unwrap_or(16)),
        _ => {
            eprintln!("usage: interp_step FILE MODEL BATCH");
            std::process::exit(2);
        }
    };
    let c = snnc::sema::compile_path(std::path::Path::new(&file), &[]);
    if c.diags.has_errors() {
        eprint!("{}", c.diags.render_plain(&c.program.sources));
        std::process::exit(1);
    }
    let Some(g) = c.graphs.iter().find(|g| g.name == model) else {
        eprintln!("no model {model}");
        std::process::exit(1);
    };
    let params = ParamStore::init(g, 1);
    let interp = Interpreter::new(g, Options::default());
    let Some((_, node)) = g.inputs().next() else {
        eprintln!("{model} has no input");
        std::process::exit(1);
    };
    let snnc::ir::graph::Op::Input { name, .. } = &node.op else {
        unreachable!("inputs() yields input nodes")
    };
    let shape: Vec<usize> = node
        .ty
        .dims
        .iter()
        .map(|(a, s)| if *a == Axis::B { batch } else { *s })
        .collect();
    let x = ArrayD::from_shape_fn(IxDyn(&shape), |i| {
        ((i[0] * 7 + i[3] * 3 + i[4]) % 5) as f64 * 0.5
    });
    let targets: Vec<usize> = (0..batch).map(|b| b % 10).collect();
    for _ in 0..3 {
        let t0 = Instant::now();
        let step = || -> Result<_, String> {
            let fwd = interp
                .forward(&params, &[(name.as_str(), x.clone())])
                .map_err(|e| format!("forward: {e}"))?;
            let t1 = Instant::now();
            let (_, d) =
                loss::cross_entropy(&fwd.outputs[0], &targets).map_err(|e| format!("loss: {e}"))?;
            interp
                .backward(&params, &fwd, &[d])
                .map_err(|e| format!("backward: {e}"))?;
            Ok((fwd, t1))
        };
        let (fwd, t1) = match step() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{model}: {e}");
                std::process::exit(1);
            }
        };
        let t2 = Instant::now();
        println!(
            "forward {:?} backward {:?} saved {} MB",
            t1 - t0,
            t2 - t1,
            fwd.saved_bytes() / 1_000_000
        );
    }
}
