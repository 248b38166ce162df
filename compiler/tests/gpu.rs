//! GPU backend tests that need no GPU: PTX snapshots of every example, the PTX's target and
//! entries, the launch manifest's consistency, and `snnc build --target gpu`.

mod common;

use snn_runtime::gpu::manifest::{BufferKind, LaunchManifest, Step};
use snnc::backend::gpu::{GpuOptions, GpuTrainingArtifact, compile, compile_training};
use snnc::ir::Graph;
use snnc::mlir::LowerOptions;
use snnc::mlir::grad::{backward_signature, forward_train_signature};
use snnc::mlir::optim::optimizer_signature;
use snnc::sema::{Compilation, compile_source};
use std::process::Command;

/// PTX above this is not snapshotted (ResNet-18 is ~530 KB at batch 1): too big to review.
const MAX_SNAPSHOT_BYTES: usize = 400_000;

fn compile_file(rel: &str) -> Compilation {
    let path = common::workspace().join(rel);
    let text = std::fs::read_to_string(&path).expect("readable");
    let c = compile_source(&path, text, &[]);
    assert!(
        !c.diags.has_errors(),
        "{rel} failed:\n{}",
        c.diags.render_plain(&c.program.sources)
    );
    c
}

fn gpu(g: &Graph, chip: &str, batch: usize) -> snnc::backend::gpu::GpuArtifact {
    let opts = GpuOptions {
        chip: chip.into(),
        batch,
    };
    compile(g, &opts).unwrap_or_else(|e| panic!("{}: {e}", g.name))
}

/// Snapshots `ptx` as `<kind>__<file>__<model>` unless it is over [`MAX_SNAPSHOT_BYTES`]
/// (then noted in `skipped`).
fn snapshot_ptx(kind: &str, rel: &str, g: &Graph, ptx: &str, skipped: &mut Vec<String>) {
    if ptx.len() > MAX_SNAPSHOT_BYTES {
        skipped.push(format!("{}:{} ({} bytes)", rel, g.name, ptx.len()));
        return;
    }
    insta::assert_snapshot!(
        format!("{kind}__{}__{}", rel.replace(['/', '.'], "_"), g.name),
        ptx
    );
}

fn entries(ptx: &str) -> usize {
    ptx.matches(".visible .entry ").count()
}

#[test]
fn ptx_of_every_example() {
    let mut skipped = Vec::new();
    for (rel, _) in common::snn_files("examples") {
        let c = compile_file(&rel);
        for g in &c.graphs {
            let art = gpu(g, "sm_90", 1);
            assert!(art.ptx.contains(".target sm_90"), "{}", g.name);
            assert!(entries(&art.ptx) >= 1, "{}: no .entry", g.name);
            assert!(!art.ptx.contains(".extern"), "{}: unresolved call", g.name);
            assert_eq!(
                entries(&art.ptx),
                art.manifest.kernels.len(),
                "{}: every entry is launched",
                g.name
            );
            snapshot_ptx("ptx", &rel, g, &art.ptx, &mut skipped);
        }
    }
    eprintln!("PTX snapshots skipped (over {MAX_SNAPSHOT_BYTES} bytes): {skipped:?}");
}

/// Every stored PTX snapshot targets sm_90 and declares an entry (guards hand-edited or
/// stale snapshot files too).
#[test]
fn every_ptx_snapshot_targets_sm_90_with_an_entry() {
    let dir = common::workspace().join("compiler/tests/snapshots");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).expect("snapshot dir") {
        let path = e.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.starts_with("gpu__ptx__") || !name.ends_with(".snap") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        assert!(text.contains(".target sm_90"), "{name}");
        assert!(text.contains(".entry "), "{name}");
        seen += 1;
    }
    assert!(seen >= 4, "only {seen} PTX snapshots");
}

#[test]
fn golden_small_manifest_is_consistent() {
    let c = compile_file("tests/reference/golden_small.snn");
    let g = &c.graphs[0];
    let art = gpu(g, "sm_90", 2);
    let m = &art.manifest;
    m.check().expect("consistent");
    assert_eq!(m.format, "snnc-launch-v2");
    assert_eq!((m.batch, m.chip.as_str()), (2, "sm_90"));
    assert_eq!(m.args[0].role, "input");
    assert_eq!(m.args[0].shape[1], 2, "batch axis");
    assert!(
        m.args.iter().any(|a| a.role == "state"),
        "batchnorm running stats"
    );
    // Each launch is a 1-D grid of 256-thread blocks covering its loop.
    for s in m.launches() {
        let Step::Launch { grid, block, .. } = s else {
            unreachable!()
        };
        assert_eq!(block, &[256, 1, 1]);
        assert_eq!((grid[1], grid[2]), (1, 1));
    }
    // Every temporary is freed.
    let allocs = m
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Alloc { .. }))
        .count();
    let frees = m
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Free { .. }))
        .count();
    assert_eq!(allocs, frees);
    let temps = m
        .buffers
        .iter()
        .filter(|b| b.kind == BufferKind::Temp)
        .count();
    assert_eq!(temps, allocs);
    let text = m.to_json();
    assert_eq!(LaunchManifest::from_json(&text).expect("parses"), *m);
    insta::assert_snapshot!("launch__golden_small_b2", text);
}

#[test]
fn sm_80_and_bad_chips() {
    let c = compile_file("tests/reference/golden_small.snn");
    let art = gpu(&c.graphs[0], "sm_80", 1);
    assert!(art.ptx.contains(".target sm_80"));
    let err = compile(
        &c.graphs[0],
        &GpuOptions {
            chip: "sm_1".into(),
            batch: 1,
        },
    )
    .expect_err("unknown chip");
    assert!(err.message.contains("sm_90"), "{err}");
}

#[test]
fn cli_emits_ptx_and_writes_a_directory() {
    let bin = env!("CARGO_BIN_EXE_snnc");
    let file = common::workspace().join("tests/reference/golden_small.snn");
    let out = common::snnc_ok(|c| {
        c.args(["build", "--target", "gpu", "--emit", "ptx", "--batch", "2"])
            .arg(&file)
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(".target sm_90") && text.contains(".entry "));

    let dir = std::env::temp_dir().join(format!("snnc-gpu-test-{}", std::process::id()));
    // `snnc build ARGS -o dir file`, which must succeed.
    let build_into = |args: &[&str]| {
        common::snnc_ok(|c| c.arg("build").args(args).arg("-o").arg(&dir).arg(&file));
    };
    build_into(&["--target", "gpu"]);
    let ptx = std::fs::read_to_string(dir.join("GoldenSmall.ptx")).expect("ptx written");
    let json = std::fs::read_to_string(dir.join("GoldenSmall.launch.json")).expect("manifest");
    let m = LaunchManifest::from_json(&json).expect("valid manifest");
    assert_eq!(m.ptx, "GoldenSmall.ptx");
    for k in &m.kernels {
        assert!(ptx.contains(&format!(".entry {}(", k.name)), "{}", k.name);
    }

    // --train: the training PTX beside the forward's, one manifest per function.
    build_into(&["--target", "gpu", "--train", "--batch", "2"]);
    let ptx = std::fs::read_to_string(dir.join("GoldenSmall.train.ptx")).expect("ptx written");
    let mut roles = Vec::new();
    for which in ["forward_train", "backward", "optimizer"] {
        let json = std::fs::read_to_string(dir.join(format!("GoldenSmall.{which}.launch.json")))
            .expect("manifest");
        let m = LaunchManifest::from_json(&json).expect("valid manifest");
        assert_eq!((m.ptx.as_str(), m.batch), ("GoldenSmall.train.ptx", 2));
        for k in &m.kernels {
            assert!(ptx.contains(&format!(".entry {}(", k.name)), "{}", k.name);
        }
        roles.extend(m.args.iter().map(|a| a.role.clone()));
    }
    for role in [
        "saved",
        "scan_states",
        "d_output",
        "d_param",
        "d_input",
        "optimizer_state",
        "optimizer_scalars",
    ] {
        assert!(roles.iter().any(|r| r == role), "no `{role}` argument");
    }
    assert!(
        dir.join("GoldenSmall.ptx").exists(),
        "the forward's files stay"
    );
    let _ = std::fs::remove_dir_all(&dir);

    let out = Command::new(bin)
        .args(["build", "--emit", "ptx"])
        .arg(&file)
        .output()
        .expect("snnc runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--target gpu"));
}

fn gpu_training(g: &Graph, batch: usize) -> GpuTrainingArtifact {
    let opts = GpuOptions {
        chip: "sm_90".into(),
        batch,
    };
    compile_training(g, &opts).unwrap_or_else(|e| panic!("{} (training): {e}", g.name))
}

/// The training PTX holds the kernels of both functions, each launched by its own manifest;
/// the manifests follow the training ABI (docs/abi.md).
fn check_training(g: &Graph, art: &GpuTrainingArtifact, batch: usize) {
    let opts = LowerOptions::with_batch(batch);
    let optimizer = art.optimizer.as_ref().expect("an optimiser step");
    for (manifest, sig) in [
        (&art.forward_train, forward_train_signature(g, &opts)),
        (
            art.backward.as_ref().expect("a backward"),
            backward_signature(g, &opts),
        ),
        (optimizer, Ok(optimizer_signature(g))),
    ] {
        let sig = sig.expect("signature");
        assert_eq!(manifest.args.len(), sig.len(), "{}", g.name);
        for (a, s) in manifest.args.iter().zip(&sig) {
            assert_eq!(
                (&a.name, a.role.as_str(), &a.shape),
                (&s.name, s.role.as_str(), &s.shape)
            );
        }
        manifest.check().expect("consistent manifest");
        assert!(manifest.launches().count() >= 1, "{}", g.name);
    }
    let fwd: Vec<&str> = art
        .forward_train
        .kernels
        .iter()
        .map(|k| k.name.as_str())
        .collect();
    let bwd: Vec<&str> = art
        .backward
        .as_ref()
        .expect("a backward")
        .kernels
        .iter()
        .map(|k| k.name.as_str())
        .collect();
    let opt: Vec<&str> = optimizer.kernels.iter().map(|k| k.name.as_str()).collect();
    assert!(
        fwd.iter().all(|k| !bwd.contains(k) && !opt.contains(k))
            && bwd.iter().all(|k| !opt.contains(k)),
        "{}: a kernel in two functions",
        g.name
    );
    // One update kernel per trainable parameter.
    let trainable = g.params.iter().filter(|p| p.role.trainable()).count();
    assert_eq!(optimizer.launches().count(), trainable, "{}", g.name);
    assert_eq!(
        entries(&art.ptx),
        fwd.len() + bwd.len() + opt.len(),
        "{}: every entry is launched",
        g.name
    );
    assert!(art.ptx.contains(".target sm_90"), "{}", g.name);
    assert!(!art.ptx.contains(".extern"), "{}: unresolved call", g.name);
}

/// `forward_train` and `backward` of every example map to GPU kernels; the PTX of those under
/// the size limit is snapshotted (at batch 1, as the forward's).
#[test]
fn training_ptx_of_every_example() {
    let mut skipped = Vec::new();
    for (rel, _) in common::snn_files("examples") {
        let c = compile_file(&rel);
        for g in &c.graphs {
            let art = gpu_training(g, 1);
            check_training(g, &art, 1);
            snapshot_ptx("train_ptx", &rel, g, &art.ptx, &mut skipped);
        }
    }
    eprintln!("training PTX snapshots skipped (over {MAX_SNAPSHOT_BYTES} bytes): {skipped:?}");
}

/// An evaluation build has no backward and no dropout masks.
#[test]
fn evaluation_builds_have_only_the_forward() {
    let c = compile_file("examples/nmnist.snn");
    let g = &c.graphs[0];
    let opts = GpuOptions {
        chip: "sm_90".into(),
        batch: 2,
    };
    let art = snnc::backend::gpu::compile_training_with(g, &opts, true).expect("compiles");
    assert!(art.backward.is_none() && art.optimizer.is_none());
    assert_eq!(entries(&art.ptx), art.forward_train.kernels.len());
}

/// A learnable neuron scalar (PLIF's `w`) is read inside the kernels and its gradient summed
/// there, and a dropout mask is one more argument: the host program never touches device
/// memory.
#[test]
fn learnable_neuron_scalars_train_on_the_gpu() {
    let text = "import std.neurons.{PLIF}\nmodel P(T: int = 3) {\n    input x: image(channels = 1, height = 4, width = 4, T = T)\n    x -> conv(2, 3) -> bn -> PLIF -> flatten -> dropout(0.5) -> linear(2) -> readout.rate\n}\n";
    let c = compile_source(std::path::Path::new("p.snn"), text.to_string(), &[]);
    assert!(
        !c.diags.has_errors(),
        "{}",
        c.diags.render_plain(&c.program.sources)
    );
    let g = &c.graphs[0];
    let art = gpu_training(g, 2);
    check_training(g, &art, 2);
    for m in [
        &art.forward_train,
        art.backward.as_ref().expect("a backward"),
    ] {
        assert!(m.args.iter().any(|a| a.role == "dropout_mask"));
    }
}
