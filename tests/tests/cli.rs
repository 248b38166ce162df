//! The command line as a user meets it: examples check clean, broken files fail with
//! `file:line:col` and a non-zero exit, and nothing panics.

use snnc_e2e::{snnc, workspace};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_example_checks_clean() {
    let mut examples: Vec<String> = std::fs::read_dir(workspace().join("examples"))
        .expect("examples/")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "snn"))
        .map(|p| p.display().to_string())
        .collect();
    examples.sort();
    assert!(examples.len() >= 3);
    let mut args = vec!["check"];
    args.extend(examples.iter().map(String::as_str));
    let out = snnc(&args);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn gesture_example_prints_typed_ir() {
    let out = snnc(&[
        "build",
        "examples/gesture.snn",
        "--emit",
        "ir",
        "--model",
        "GestureTCSA",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ir = String::from_utf8_lossy(&out.stdout);
    assert!(ir.contains("model @GestureTCSA(T = 60)"), "{ir}");
    assert!(ir.contains("f32<T60 B C2 H32 W32> = input()"), "{ir}");
    assert!(ir.contains("spike<T60 B N11>"), "{ir}");
    assert!(ir.contains("reduce_mean"), "{ir}");
}

/// `--eval` reaches the lowering: the inference forward normalises with the running
/// statistics in one pass, so it has no loops computing batch statistics.
#[test]
fn build_eval_lowers_inference_batchnorm() {
    let mlir = |eval: bool| {
        let mut args = vec![
            "build",
            "examples/nmnist.snn",
            "--model",
            "NMNISTVanilla",
            "--emit",
            "mlir",
        ];
        if eval {
            args.push("--eval");
        }
        let out = snnc(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (train, eval) = (mlir(false), mlir(true));
    let loops = |text: &str| text.matches("scf.for").count();
    assert!(
        loops(&eval) < loops(&train),
        "eval {} loops, train {}",
        loops(&eval),
        loops(&train)
    );
    assert!(eval.contains("func.func @NMNISTVanilla"), "{eval}");
}

#[test]
fn malformed_files_fail_with_location_and_no_panic() {
    let dir = std::env::temp_dir().join(format!("snnc-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cases = [
        (
            "truncated.snn",
            "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> conv(4,",
        ),
        ("binary.snn", "\u{0}\u{1}\u{2}garbage\u{7f}"),
        ("empty_model.snn", "model M() {\n}\n"),
        (
            "bad_shape.snn",
            "import std.neurons.{LIF}\nmodel M(T: int = 4) {\n  input x: events(height = 4, width = 4, T = T)\n  x -> pool.max(8) -> LIF -> flatten -> readout.rate\n}\n",
        ),
        ("nested_junk.snn", "block B(((((((((((((((("),
    ];
    for (name, text) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write case");
        let out = snnc(&["check", path.to_str().unwrap_or_default()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(&format!("{name}:")),
            "{name}: no file:line:col in\n{err}"
        );
        assert!(!err.contains("panicked"), "{name} panicked: {err}");
    }
    let missing = snnc(&["check", "does/not/exist.snn"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("does/not/exist.snn"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn explain_describes_error_codes() {
    let out = snnc(&["explain", "E0008"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("attention"));
    assert_eq!(snnc(&["explain", "E9999"]).status.code(), Some(1));
}

#[test]
fn frames_writes_npy_and_png_from_bundled_nmnist() {
    let dir = std::env::temp_dir().join(format!("snnc-frames-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let npy = dir.join("f.npy");
    let png = dir.join("f.png");
    let out = snnc(&[
        "frames",
        "examples/data/nmnist/1.bs2",
        "--T",
        "8",
        "--out",
        npy.to_str().unwrap_or_default(),
        "--png",
        png.to_str().unwrap_or_default(),
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // 1.bs2 holds 4,681 events (shared/data golden values); framing by T slices keeps them all.
    assert!(
        err.contains("4681 events -> frames [8, 2, 34, 34] (4681 events framed"),
        "{err}"
    );
    let npy_bytes = std::fs::read(&npy).expect("npy written");
    assert!(npy_bytes.starts_with(b"\x93NUMPY"));
    assert_eq!(npy_bytes.len() % 4, 0);
    assert!(
        std::fs::read(&png)
            .expect("png written")
            .starts_with(b"\x89PNG")
    );
    let bad = snnc(&[
        "frames",
        "Cargo.toml",
        "--out",
        npy.to_str().unwrap_or_default(),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("Cargo.toml"), "{}", stderr(&bad));
    let _ = std::fs::remove_dir_all(&dir);
}
