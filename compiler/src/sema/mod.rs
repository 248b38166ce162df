//! Semantic analysis: loads files and imports, resolves names, checks every definition, and
//! elaborates models into the typed graph IR (block expansion, shapes, units, attention dims).

pub mod elaborate;
pub mod loader;
pub mod neuron;
pub mod train;
pub mod value;

use crate::diag::{Diagnostic, Diagnostics, ErrorCode};
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
    compile_path_model(path, overrides, None)
}

/// Like [`compile_path`], but elaborates only the model named `only` (when given): overrides
/// and errors of the file's other models do not concern a command aimed at one model.
pub fn compile_path_model(path: &Path, overrides: &[Override], only: Option<&str>) -> Compilation {
    match std::fs::read_to_string(path) {
        Ok(text) => compile_source_model(path, text, overrides, only),
        Err(e) => {
            let mut diags = Diagnostics::default();
            diags.push(
                Diagnostic::error(
                    ErrorCode::Io,
                    format!("cannot read `{}`: {e}", path.display()),
                )
                .help("check the path; `snnc check` takes `.snn` files"),
            );
            Compilation {
                program: loader::load(path, String::new()).0,
                graphs: vec![],
                diags,
            }
        }
    }
}

/// Compiles source text as if it were the file `path`.
pub fn compile_source(path: &Path, text: String, overrides: &[Override]) -> Compilation {
    compile_source_model(path, text, overrides, None)
}

/// Compiles source text, elaborating only the model `only` when given.
pub fn compile_source_model(
    path: &Path,
    text: String,
    overrides: &[Override],
    only: Option<&str>,
) -> Compilation {
    let (mut program, mut diags) = loader::load(path, text);
    let mut graphs = Vec::new();
    if let Some(root) = program.root {
        let overrides = evaluate_overrides(&mut program, root, overrides, &mut diags);
        let overrides = &overrides[..];
        let items = program
            .files
            .get(&root)
            .map(|f| f.ast.items.len())
            .unwrap_or(0);
        check_definitions(&program, root, &mut diags);
        for index in 0..items {
            let def = DefId { file: root, index };
            if let Some(crate::syntax::ast::Item::Model(m)) = program.item(def)
                && only.is_none_or(|o| o == m.name.name)
            {
                // An override applies to the models that declare it (a file may hold several).
                let mine: Vec<(String, Value)> = overrides
                    .iter()
                    .filter(|(n, _)| m.params.iter().any(|p| p.name.name == *n))
                    .cloned()
                    .collect();
                let (graph, ds) = elaborate::Elaborator::new(&program).model(def, &mine);
                diags.extend(ds);
                if let Some(g) = graph {
                    let problems = verify(&g);
                    if !problems.is_empty() {
                        diags.push(
                            Diagnostic::error(
                                ErrorCode::Model,
                                format!(
                                    "internal error: the IR of `{}` failed verification",
                                    g.name
                                ),
                            )
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
    Compilation {
        program,
        graphs,
        diags,
    }
}

/// Models in `file` and whether any declares the parameter `name`.
fn any_model_declares(program: &Program, file: crate::diag::FileId, name: &str) -> bool {
    program.files.get(&file).is_some_and(|f| {
        f.ast.items.iter().any(|i| matches!(i, crate::syntax::ast::Item::Model(m) if m.params.iter().any(|p| p.name.name == name)))
    })
}

fn evaluate_overrides(
    program: &mut Program,
    root: crate::diag::FileId,
    overrides: &[Override],
    diags: &mut Diagnostics,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (name, source) in overrides {
        let file = program
            .sources
            .add(format!("<--set {name}>"), source.clone());
        let parsed = crate::syntax::parse_expr(file, source);
        let empty = Default::default();
        if !any_model_declares(program, root, name) {
            diags.push(
                Diagnostic::error(ErrorCode::Arity, format!("no model in `{}` has a parameter `{name}`", program.sources.path(root).display()))
                    .help("`--set` overrides a model parameter such as `T` or `att`; see the model's header"),
            );
            continue;
        }
        let env = value::ConstEnv {
            program,
            file: root,
            locals: &empty,
        };
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
    let Some(loaded) = program.files.get(&file) else {
        return;
    };
    for item in &loaded.ast.items {
        if let Item::Block(b) = item {
            check_block_names(program, file, b, diags);
        }
        // Parameter types and defaults are checked for every definition, used or not.
        let specs = match value::user_specs(item.params()) {
            Ok(specs) => specs,
            Err(d) => {
                diags.push(d);
                continue;
            }
        };
        let mut locals = std::collections::HashMap::new();
        let mut defaults_ok = true;
        for spec in &specs {
            let value::DefaultValue::Expr(e) = spec.default else {
                break;
            };
            let env = value::ConstEnv {
                program,
                file,
                locals: &locals,
            };
            match env.eval(e).and_then(|v| {
                spec.ty
                    .coerce(v, e.span, &format!("the default of `{}`", spec.name))
            }) {
                Ok(v) => {
                    locals.insert(spec.name.to_string(), v);
                }
                Err(d) => {
                    diags.push(d);
                    defaults_ok = false;
                    break;
                }
            }
        }
        if !defaults_ok || locals.len() != specs.len() {
            continue;
        }
        let span = item.name().span;
        let bound = |def: DefId| value::Bound {
            def,
            name: item.name().name.clone(),
            args: specs
                .iter()
                .filter_map(|s| locals.get(s.name).map(|v| (s.name.to_string(), v.clone())))
                .collect(),
        };
        let def = loaded.scope.get(&item.name().name).copied();
        let result = match (item, def) {
            (Item::Neuron(_), Some(def)) => {
                neuron::instantiate_neuron(program, &bound(def), span).map(|_| ())
            }
            (Item::Surrogate(_), Some(def)) => {
                neuron::instantiate_surrogate(program, &bound(def), span).map(|_| ())
            }
            _ => Ok(()),
        };
        if let Err(d) = result {
            diags.push(d);
        }
    }
}

/// Resolves the names a block's dataflow uses, so a block no model instantiates still reports
/// unknown layers and values.
fn check_block_names(
    program: &Program,
    file: crate::diag::FileId,
    block: &crate::syntax::ast::BlockDef,
    diags: &mut Diagnostics,
) {
    use crate::syntax::ast::{BodyStmt, Flow, FlowTerm, Stage};
    let scope = program.scope(file);
    let params: Vec<&str> = block.params.iter().map(|p| p.name.name.as_str()).collect();
    let mut values: Vec<&str> = vec!["input"];
    let known_stage = |name: &str| {
        elaborate::LAYERS.contains(&name)
            || params.contains(&name)
            || scope.is_some_and(|s| s.contains_key(name))
    };
    fn walk<'a>(flow: &'a Flow, out: &mut Vec<(&'a crate::syntax::ast::Ident, bool)>) {
        for t in &flow.sources {
            match t {
                FlowTerm::Value(v) => out.push((v, false)),
                FlowTerm::Nested(inner) => walk(inner, out),
            }
        }
        for st in &flow.stages {
            let calls: Vec<&crate::syntax::ast::Call> = match st {
                Stage::Call(c) => vec![c],
                Stage::Repeat { body, .. } => body.iter().collect(),
            };
            for c in calls {
                if let [only] = c.callee.segments.as_slice() {
                    out.push((only, true));
                } else if !elaborate::LAYERS.contains(&c.callee.dotted().as_str())
                    && let Some(first) = c.callee.segments.first()
                {
                    out.push((first, true));
                }
            }
        }
    }
    for stmt in &block.body {
        let flow = match stmt {
            BodyStmt::Let { flow, .. } | BodyStmt::Flow(flow) => flow,
            BodyStmt::Require(_) => continue,
        };
        let mut names = Vec::new();
        walk(flow, &mut names);
        for (ident, is_stage) in names {
            let ok = if is_stage {
                known_stage(&ident.name)
            } else {
                values.contains(&ident.name.as_str())
            };
            if !ok {
                let mut candidates: Vec<&str> = if is_stage {
                    elaborate::LAYERS.to_vec()
                } else {
                    values.clone()
                };
                if is_stage {
                    candidates.extend(params.iter().copied());
                    if let Some(s) = scope {
                        candidates.extend(s.keys().map(String::as_str));
                    }
                }
                diags.push(value::unknown_name(&ident.name, ident.span, candidates));
            }
        }
        if let BodyStmt::Let { name, .. } = stmt {
            values.push(name.name.as_str());
        }
    }
}
