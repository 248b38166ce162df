//! `snnc build --emit clif` (CLIF text to stdout or `-o`) and `snnc build --target cpu -o DIR`
//! (per model: `<model>.o`, `lib<model>.so`, `<model>.h`, `<model>.json`).

use super::{build_aot, emit_clif};
use crate::ir::Graph;
use crate::mlir::LowerOptions;
use crate::sema::Compilation;
use std::path::Path;
use std::process::ExitCode;

/// The selected models (all by default), or an error naming the available ones.
fn select<'c>(
    c: &'c Compilation,
    file: &Path,
    model: Option<&str>,
) -> Result<Vec<&'c Graph>, ExitCode> {
    let graphs: Vec<_> = c
        .graphs
        .iter()
        .filter(|g| model.is_none_or(|m| m == g.name))
        .collect();
    if graphs.is_empty() {
        let names: Vec<&str> = c.graphs.iter().map(|g| g.name.as_str()).collect();
        eprintln!(
            "error: no model {} in {} (models: {})",
            model.map_or(String::new(), |m| format!("`{m}`")),
            file.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
        return Err(ExitCode::FAILURE);
    }
    Ok(graphs)
}

/// The CLIF of the selected models' forward functions.
pub fn clif(
    c: &Compilation,
    file: &Path,
    model: Option<&str>,
    opts: &LowerOptions,
) -> Result<String, ExitCode> {
    let graphs = select(c, file, model)?;
    emit_clif(&graphs, opts).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

/// Ahead-of-time compilation of the selected models into `output` (a directory).
pub fn build(
    c: &Compilation,
    file: &Path,
    model: Option<&str>,
    output: Option<&Path>,
    opts: &LowerOptions,
) -> ExitCode {
    let Some(dir) = output else {
        eprintln!(
            "error: --target cpu writes a directory of artifacts: give it with -o DIR (or use --emit clif)"
        );
        return ExitCode::FAILURE;
    };
    let graphs = match select(c, file, model) {
        Ok(g) => g,
        Err(code) => return code,
    };
    for g in graphs {
        match build_aot(g, opts, dir) {
            Ok(art) => {
                let mut wrote = vec![art.object.display().to_string()];
                wrote.extend(art.shared_library.iter().map(|p| p.display().to_string()));
                wrote.push(art.header.display().to_string());
                wrote.push(art.manifest.display().to_string());
                eprintln!("{}: wrote {}", g.name, wrote.join(", "));
                if let Some(note) = art.link_note {
                    eprintln!("warning: {}: {note}", g.name);
                }
            }
            Err(e) => {
                eprintln!("error: {}: {e}", g.name);
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
