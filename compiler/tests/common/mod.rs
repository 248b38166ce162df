//! Helpers shared by the compiler's integration tests.

use std::path::{Path, PathBuf};

/// The workspace root (parent of `compiler/`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("compiler/ has a parent")
        .to_path_buf()
}

/// Every `.snn` file in `dir` (relative to the workspace), sorted, as (relative path, text).
pub fn snn_files(dir: &str) -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(workspace().join(dir))
        .expect("directory exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "snn"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = format!(
                "{dir}/{}",
                p.file_name().and_then(|n| n.to_str()).unwrap_or_default()
            );
            let text = std::fs::read_to_string(&p).expect("readable");
            (rel, text)
        })
        .collect()
}
