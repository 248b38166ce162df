//! Training end to end through the CLI on the bundled real N-MNIST subset: a run killed with
//! SIGKILL and resumed ends with exactly the parameters of an uninterrupted run; eval and plot
//! read what train wrote.

use snnc_e2e::{snnc, snnc_binary, workspace};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BUDGET: &[&str] = &[
    "--epochs",
    "2",
    "--batch",
    "8",
    "--limit-train",
    "24",
    "--limit-test",
    "8",
    "--seed",
    "5",
    "--workers",
    "1",
];
const MODEL: &str = "examples/nmnist.snn:NMNISTTCSA";

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("snnc-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn params_bytes(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("checkpoint/params.safetensors")).expect("checkpoint written")
}

fn train_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", MODEL];
    args.extend_from_slice(BUDGET);
    args.extend_from_slice(extra);
    args
}

#[test]
fn kill_then_resume_gives_the_parameters_of_an_uninterrupted_run() {
    let straight = temp("straight");
    let out = snnc(&train_args(&[
        "--run-dir",
        straight.to_str().unwrap_or_default(),
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Start the same run, SIGKILL it once the first epoch's checkpoint exists (mid-epoch 2).
    let killed = temp("killed");
    let mut child = Command::new(snnc_binary())
        .current_dir(workspace())
        .args(train_args(&[
            "--run-dir",
            killed.to_str().unwrap_or_default(),
        ]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("snnc starts");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !killed.join("checkpoint/state.json").exists() {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        if child.try_wait().expect("poll").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill(); // SIGKILL on Unix
    let _ = child.wait();
    let state = std::fs::read_to_string(killed.join("checkpoint/state.json")).expect("state");
    let resumed = snnc(&train_args(&[
        "--resume",
        killed.to_str().unwrap_or_default(),
    ]));
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(state.contains("\"epoch\""), "{state}");
    assert_eq!(
        params_bytes(&straight),
        params_bytes(&killed),
        "resumed parameters differ from the uninterrupted run"
    );

    // Resuming a finished run trains nothing more and keeps the parameters.
    let again = snnc(&train_args(&[
        "--resume",
        killed.to_str().unwrap_or_default(),
    ]));
    assert!(again.status.success());
    assert_eq!(params_bytes(&straight), params_bytes(&killed));

    // A new run into a directory holding a checkpoint is refused, not overwritten.
    let clash = snnc(&train_args(&[
        "--run-dir",
        straight.to_str().unwrap_or_default(),
    ]));
    assert_eq!(clash.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&clash.stderr).contains("--resume"));

    // eval and plot read the run.
    let eval = snnc(&[
        "eval",
        MODEL,
        "--checkpoint",
        straight.to_str().unwrap_or_default(),
        "--limit-test",
        "8",
        "--workers",
        "1",
    ]);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let report = String::from_utf8_lossy(&eval.stdout);
    assert!(
        report.contains("accuracy") && report.contains("lif0") && report.contains("energy"),
        "{report}"
    );
    let plot = snnc(&["plot", straight.to_str().unwrap_or_default()]);
    assert!(
        plot.status.success(),
        "{}",
        String::from_utf8_lossy(&plot.stderr)
    );
    assert!(String::from_utf8_lossy(&plot.stdout).contains(".png"));
    let _ = std::fs::remove_dir_all(&straight);
    let _ = std::fs::remove_dir_all(&killed);
}

#[test]
fn missing_data_is_a_clear_error() {
    let run = temp("nodata");
    let out = snnc(&train_args(&[
        "--run-dir",
        run.to_str().unwrap_or_default(),
        "--data",
        "no/such/dir",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no/such/dir") && err.contains("--data"),
        "{err}"
    );
    assert!(!run.join("checkpoint").exists());
}
