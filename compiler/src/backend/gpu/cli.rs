//! `snnc build --target gpu`: PTX to stdout, or `-o DIR` with `<model>.ptx` and
//! `<model>.launch.json` per model (with `--train`: `<model>.train.ptx` and the launch
//! manifests of `forward_train` and `backward`).

use super::{GpuOptions, compile, compile_training};
use crate::sema::Compilation;
use snn_runtime::gpu::LaunchManifest;
use std::path::Path;
use std::process::ExitCode;

/// Compiles the selected models (all by default) for the GPU and prints or writes them.
pub fn build(
    c: &Compilation,
    file: &Path,
    model: Option<&str>,
    output: Option<&Path>,
    opts: &GpuOptions,
    train: bool,
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
        // (PTX, its file name, [(manifest, its file name)]).
        let built = if train {
            compile_training(g, opts).map(|a| {
                let json = |which| format!("{}.{which}.launch.json", a.model);
                let ptx_name = a.forward_train.ptx.clone();
                let mut manifests = vec![(a.forward_train, json("forward_train"))];
                manifests.extend(a.backward.map(|m| (m, json("backward"))));
                manifests.extend(a.optimizer.map(|m| (m, json("optimizer"))));
                (a.ptx, ptx_name, manifests)
            })
        } else {
            compile(g, opts).map(|a| {
                let json = format!("{}.launch.json", a.model);
                (a.ptx, a.manifest.ptx.clone(), vec![(a.manifest, json)])
            })
        };
        let (ptx, ptx_name, manifests): (String, String, Vec<(LaunchManifest, String)>) =
            match built {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: {}: {e}", g.name);
                    return ExitCode::FAILURE;
                }
            };
        let kernels: usize = manifests.iter().map(|(m, _)| m.kernels.len()).sum();
        match output {
            Some(dir) => {
                let ptx_path = dir.join(&ptx_name);
                let mut files = vec![(ptx_path, ptx)];
                for (m, json) in &manifests {
                    files.push((dir.join(json), m.to_json() + "\n"));
                }
                for (path, text) in &files {
                    if let Err(e) = write_atomic(path, text) {
                        eprintln!("error: cannot write {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                }
                let launches: usize = manifests.iter().map(|(m, _)| m.launches().count()).sum();
                let gemms: usize = manifests.iter().map(|(m, _)| m.gemms().count()).sum();
                let names: Vec<String> =
                    files.iter().map(|(p, _)| p.display().to_string()).collect();
                eprintln!(
                    "{}: {kernels} kernels, {launches} launches, {gemms} cuBLAS products -> {}",
                    g.name,
                    names.join(", ")
                );
            }
            None => {
                stdout.push_str(&format!(
                    "// snnc: model {}{}, {kernels} kernels, batch {}\n",
                    g.name,
                    if train { " (training)" } else { "" },
                    opts.batch
                ));
                stdout.push_str(&ptx);
                if !ptx.ends_with('\n') {
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
