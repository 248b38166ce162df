//! Snapshot tests of every emitted stage (AST, IR; the backward program for the examples) for
//! every example and stdlib file, in the naga style: one glance at a snapshot diff shows what a
//! change did to every model.

mod common;

use snnc::autodiff::{differentiate, print_grad};
use snnc::ir::printer::print_graph;
use snnc::sema::compile_source;
use std::path::Path;

fn compile_ok(rel: &str, text: &str) -> snnc::sema::Compilation {
    // Compile as the real path so relative imports resolve, but name it by its relative path.
    let c = compile_source(&common::workspace().join(rel), text.to_string(), &[]);
    assert!(
        !c.diags.has_errors(),
        "{rel} failed:\n{}",
        c.diags.render_plain(&c.program.sources)
    );
    c
}

fn snapshot_name(rel: &str) -> String {
    rel.replace(['/', '.'], "_")
}

#[test]
fn ir_of_every_example_and_stdlib_model() {
    for dir in ["examples", "stdlib"] {
        for (rel, text) in common::snn_files(dir) {
            let c = compile_ok(&rel, &text);
            for g in &c.graphs {
                insta::assert_snapshot!(
                    format!("ir__{}__{}", snapshot_name(&rel), g.name),
                    print_graph(g)
                );
            }
        }
    }
}

/// `--emit grad`: the steps, what the forward saves for them (BPTT memory) and the neuron
/// adjoints.
#[test]
fn grad_of_every_example_model() {
    for (rel, text) in common::snn_files("examples") {
        let c = compile_ok(&rel, &text);
        for g in &c.graphs {
            insta::assert_snapshot!(
                format!("grad__{}__{}", snapshot_name(&rel), g.name),
                print_grad(g, &differentiate(g))
            );
        }
    }
}

#[test]
fn ast_of_every_example_and_stdlib_file() {
    for dir in ["examples", "stdlib"] {
        for (rel, text) in common::snn_files(dir) {
            let c = compile_ok(&rel, &text);
            let root = c
                .program
                .root
                .and_then(|r| c.program.files.get(&r))
                .expect("root parsed");
            let json = serde_json::to_string_pretty(&root.ast).expect("AST serialises");
            insta::assert_snapshot!(format!("ast__{}", snapshot_name(&rel)), json);
        }
    }
}

#[test]
fn gesture_parameter_counts_match_the_official_code() {
    // Official MA-SNN DVS128 Gesture logs: 2,324,065 (vanilla) and 2,340,535 (TCSA, T = 60).
    let c = compile_ok(
        "stdlib/networks.snn",
        &std::fs::read_to_string(common::workspace().join("stdlib/networks.snn")).expect("read"),
    );
    let count = |name: &str| {
        c.graphs
            .iter()
            .find(|g| g.name == name)
            .map(|g| g.trainable_parameter_count())
    };
    assert_eq!(count("MASNNGesture"), Some(2_324_065));
    assert_eq!(count("MASNNGestureTCSA"), Some(2_340_535));
}

#[test]
fn overrides_change_the_model() {
    let path = common::workspace().join("stdlib/networks.snn");
    let text = std::fs::read_to_string(&path).expect("read");
    let c = compile_source(
        Path::new(&path),
        text,
        &[("T".into(), "20".into()), ("att".into(), "TCSA()".into())],
    );
    assert!(
        !c.diags.has_errors(),
        "{}",
        c.diags.render_plain(&c.program.sources)
    );
    let g = c
        .graphs
        .iter()
        .find(|g| g.name == "MASNNGesture")
        .expect("model");
    assert!(g.model_args.iter().any(|(k, v)| k == "T" && v == "20"));
    assert!(
        g.nodes.iter().any(|n| n.name.starts_with("ca_")),
        "TCSA adds channel attention nodes"
    );
}
