//! Plots from a run log: the expected PNG files appear, decode, and are not blank.

use std::collections::BTreeMap;

use snn_runtime::train::{LogRecord, RunLog, plot_run};

#[test]
fn plot_run_writes_readable_pngs() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut log = RunLog::open(dir.path()).expect("open");
    for epoch in 0..12 {
        let e = epoch as f64;
        for (split, off) in [("train", 0.0), ("test", 0.08)] {
            log.append(&LogRecord {
                epoch,
                step: epoch as u64 * 37,
                split: split.into(),
                loss: Some(1.0 / (1.0 + e) + off),
                accuracy: Some((0.3 + 0.05 * e - off).min(1.0)),
                firing_rates: BTreeMap::from([
                    ("L0".into(), 0.2 - 0.01 * e),
                    ("L1".into(), 0.1 + 0.002 * e),
                    ("FC0".into(), 0.05),
                ]),
                lr: Some(1e-3),
                ..Default::default()
            })
            .expect("append");
        }
    }
    drop(log);
    let paths = plot_run(dir.path()).expect("plot");
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["loss.png", "accuracy.png", "firing_rates.png"]);
    for p in &paths {
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(p).expect("open"),
        ));
        let mut reader = decoder.read_info().expect("png header");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("png data");
        assert_eq!((info.width, info.height), (900, 560));
        let data = &buf[..info.buffer_size()];
        // Not blank: a good share of non-white pixels (axes, curves, text).
        let ink = data
            .chunks(3)
            .filter(|px| px.iter().any(|&c| c < 200))
            .count();
        assert!(ink > 2000, "{}: only {ink} dark pixels", p.display());
    }
    if let Ok(keep) = std::env::var("SNN_KEEP_PLOTS") {
        for p in &paths {
            std::fs::copy(
                p,
                std::path::Path::new(&keep).join(p.file_name().expect("name")),
            )
            .expect("copy");
        }
    }
}

#[test]
fn plot_run_skips_missing_metrics_and_errors_without_log() {
    let dir = tempfile::tempdir().expect("tmp");
    assert!(
        plot_run(dir.path())
            .expect_err("must fail")
            .to_string()
            .contains("log.jsonl")
    );
    let mut log = RunLog::open(dir.path()).expect("open");
    log.append(&LogRecord {
        epoch: 0,
        step: 1,
        split: "train".into(),
        loss: Some(2.0),
        ..Default::default()
    })
    .expect("append");
    let paths = plot_run(dir.path()).expect("plot");
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert!(paths[0].ends_with("plots/loss.png"));
}
