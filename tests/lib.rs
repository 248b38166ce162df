//! End-to-end test support: locating the `snnc` binary and the shared data, and running the CLI.
//! The tests themselves live in `tests/tests/*.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The `snnc` binary of the profile this test was built with, built first if it is missing
/// (e.g. when only this crate's tests are run).
pub fn snnc_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-binary> → target/<profile>/snnc
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let bin = profile_dir.join("snnc");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace())
            .args(["build", "-p", "snnc", "--bin", "snnc"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building snnc failed");
    }
    bin
}

/// Runs `snnc` with `args` from the workspace root.
pub fn snnc(args: &[&str]) -> Output {
    Command::new(snnc_binary())
        .current_dir(workspace())
        .args(args)
        .output()
        .expect("snnc runs")
}
