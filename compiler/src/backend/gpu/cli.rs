//! `snnc build --target gpu`: PTX to stdout, or `-o DIR` with `<model>.ptx` and
//! `<model>.launch.json` per model.

use super::{GpuOptions, compile};
use crate::sema::Compilation;
use std::path::Path;
use std::process::ExitCode;

/// Compiles the selected models (all by default) for the GPU and prints or writes them.
pub fn build(
    c: &Compilation,
    file: &Path,
    model: Option<&str>,
    output: Option<&Path>,
    opts: &GpuOptions,
) -> ExitCode {
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
        return ExitCode::FAILURE;
    }
    if let Some(dir) = output
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("error: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let mut stdout = String::new();
    for g in graphs {
        let art = match compile(g, opts) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: {}: {e}", g.name);
                return ExitCode::FAILURE;
            }
        };
        match output {
            Some(dir) => {
                let ptx = dir.join(&art.manifest.ptx);
                let json = dir.join(format!("{}.launch.json", art.model));
                for (path, text) in [(&ptx, &art.ptx), (&json, &(art.manifest.to_json() + "\n"))] {
                    if let Err(e) = write_atomic(path, text) {
                        eprintln!("error: cannot write {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                }
                eprintln!(
                    "{}: {} kernels, {} launches -> {}, {}",
                    art.model,
                    art.manifest.kernels.len(),
                    art.manifest.launches().count(),
                    ptx.display(),
                    json.display()
                );
            }
            None => {
                stdout.push_str(&format!(
                    "// snnc: model {}, {} kernels, batch {}\n",
                    art.model,
                    art.manifest.kernels.len(),
                    opts.batch
                ));
                stdout.push_str(&art.ptx);
                if !art.ptx.ends_with('\n') {
                    stdout.push('\n');
                }
            }
        }
    }
    if output.is_none() {
        use std::io::Write as _;
        if let Err(e) = std::io::stdout().lock().write_all(stdout.as_bytes())
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            eprintln!("error: cannot write to stdout: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Temp file + rename: an interrupted run never leaves half a PTX file.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp-snnc");
    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path))
}
