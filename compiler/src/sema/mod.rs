//! Semantic analysis: loads files and imports, resolves names, checks every definition, and
//! elaborates models into the typed graph IR (block expansion, shapes, units, attention dims).

pub mod elaborate;
pub mod loader;
pub mod neuron;
pub mod train;
pub mod value;

use crate::diag::{Diagnostic, Diagnostics, ErrorCode, Span};
use crate::ir::{Graph, verify::verify};
use loader::{DefId, Program};
use std::path::Path;
use value::Value;

/// The result of compiling one file: its sources (for rendering), graphs and diagnostics.
pub struct Compilation {
    pub program: Program,
    pub graphs: Vec<Graph>,
    pub diags: Diagnostics,
}

/// A command-line override of a model parameter: `name=expression`.
pub type Override = (String, String);

/// Reads and compiles `path`; every model in it is elaborated with its defaults and `overrides`.
pub fn compile_path(path: &Path, overrides: &[Override]) -> Compilation {
    match std::fs::read_to_string(path) {
        Ok(text) => compile_source(path, text, overrides),
        Err(e) => {
            let mut diags = Diagnostics::default();
            diags.push(
                Diagnostic::error(ErrorCode::Io, format!("cannot read `{}`: {e}", path.display()))
                    .help("check the path; `snnc check` takes `.snn` files"),
            );
            Compilation { program: loader::load(path, String::new()).0, graphs: vec![], diags }
        }
    }
}

/// Compiles source text as if it were the file `path`.
pub fn compile_source(path: &Path, text: String, overrides: &[Override]) -> Compilation {
    let (mut program, mut diags) = loader::load(path, text);
    let mut graphs = Vec::new();
    if let Some(root) = program.root {
        let overrides = evaluate_overrides(&mut program, root, overrides, &mut diags);
        let overrides = &overrides[..];
        let items = program.files.get(&root).map(|f| f.ast.items.len()).unwrap_or(0);
        check_definitions(&program, root, &mut diags);
        for index in 0..items {
            let def = DefId { file: root, index };
            if let Some(crate::syntax::ast::Item::Model(_)) = program.item(def) {
                let (graph, ds) = elaborate::Elaborator::new(&program).model(def, overrides);
                diags.extend(ds);
                if let Some(g) = graph {
                    let problems = verify(&g);
                    if !problems.is_empty() {
                        diags.push(
                            Diagnostic::error(ErrorCode::Model, format!("internal error: the IR of `{}` failed verification", g.name))
                                .note(problems.join("\n"))
                                .help("this is a compiler bug; please report it with the input file"),
                        );
                    } else {
                        graphs.push(g);
                    }
                }
            }
        }
    }
    Compilation { program, graphs, diags }
}

fn evaluate_overrides(program: &mut Program, root: crate::diag::FileId, overrides: &[Override], diags: &mut Diagnostics) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (name, source) in overrides {
        let file = program.sources.add(format!("<--set {name}>"), source.clone());
        let parsed = crate::syntax::parse_expr(file, source);
        let empty = Default::default();
        let env = value::ConstEnv { program, file: root, locals: &empty };
        match parsed.and_then(|e| env.eval(&e)) {
            Ok(v) => out.push((name.clone(), v)),
            Err(d) => diags.push(d),
        }
    }
    out
}

/// Checks definitions that no model instantiates, using their defaults where they have them,
/// so a library file reports errors without a model using it.
fn check_definitions(program: &Program, file: crate::diag::FileId, diags: &mut Diagnostics) {
    use crate::syntax::ast::Item;
    let Some(loaded) = program.files.get(&file) else { return };
    for (index, item) in loaded.ast.items.iter().enumerate() {
        let def = DefId { file, index };
        let all_defaults = item.params().iter().all(|p| p.default.is_some());
        if !all_defaults {
            continue;
        }
        let empty = Default::default();
        let env = value::ConstEnv { program, file, locals: &empty };
        let span = item.name().span;
        let call = crate::syntax::ast::Expr {
            kind: crate::syntax::ast::ExprKind::Name(crate::syntax::ast::Path { segments: vec![item.name().clone()], span }),
            span,
        };
        let result = match item {
            Item::Neuron(_) => env.eval(&call).and_then(|v| match v {
                Value::Neuron(b) => neuron::instantiate_neuron(program, &b, span).map(|_| ()),
                _ => Ok(()),
            }),
            Item::Surrogate(_) => env.eval(&call).and_then(|v| match v {
                Value::Surrogate(b) => neuron::instantiate_surrogate(program, &b, span).map(|_| ()),
                _ => Ok(()),
            }),
            Item::Attention(_) => env.eval(&call).map(|_| ()),
            Item::Block(_) | Item::Model(_) => Ok(()),
        };
        if let Err(d) = result {
            diags.push(d);
        }
        let _ = def;
    }
}

/// A span covering nothing, for diagnostics about whole files.
pub fn no_span(file: crate::diag::FileId) -> Span {
    Span::new(file, 0, 0)
}
