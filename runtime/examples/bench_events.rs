//! Read + frame throughput of the event layer on the bundled data, for `bench/events/run.sh`:
//! prints one JSON line per case with the median of several timed passes (events/s).
//!
//! Usage: `bench_events [RUNS]` from the repository root (default 7 timed runs after one warm-up).

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use snn_runtime::data::{Loader, LoaderConfig};
use snn_runtime::events::dataset::nmnist_list;
use snn_runtime::events::{
    EventReader, FrameBuffer, FrameSpec, ReadOptions, Sample, frame, read_events,
};

/// AEDAT 4 window: 10 ms, as the Python peers use.
const WINDOW_US: i64 = 10_000;

fn main() -> Result<(), Box<dyn Error>> {
    let runs: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|_| format!("RUNS must be a number, got {a:?}"))?,
        None => 7,
    };
    let data = Path::new("examples/data");
    let mut samples = nmnist_list(data.join("nmnist/train1K.txt"))?;
    samples.extend(nmnist_list(data.join("nmnist/test100.txt"))?);
    let files: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let aedat = vec![data.join("aedat4/aedat_crate_test_data.aedat4")];
    let opts = ReadOptions::default();

    // The AEDAT 4 frame count covers the whole recording, as tonic's `time_window` does.
    let rec = read_events(&aedat[0], &opts)?.events;
    let steps = usize::try_from(rec.duration() / WINDOW_US + 1)?;

    let cases: [(&str, &[PathBuf], FrameSpec); 3] = [
        ("nmnist-count-T8", &files, FrameSpec::event_count(8)),
        ("nmnist-time-T8", &files, FrameSpec::frame_count(8)),
        (
            "aedat4-time-10ms",
            &aedat,
            FrameSpec::time_window(WINDOW_US, steps),
        ),
    ];
    for (case, files, spec) in cases {
        // `snnc`: one reader and one tensor kept for every file, as a training loop holds them
        // (EventReader::read_frames: N-MNIST decoded straight into the frames, other formats
        // through the reader's kept columns and frame_into). `snnc-alloc`: read_events and
        // frame, which allocate the columns and a fresh tensor per file.
        let mut reader = EventReader::new(opts);
        let mut frames = FrameBuffer::new();
        let reused = |check: bool| -> Result<(u64, f64), Box<dyn Error>> {
            let (mut events, mut framed) = (0u64, 0f64);
            for f in files {
                events += reader.read_frames(f, &spec, &mut frames)?.events as u64;
                if check {
                    framed += f64::from(frames.view().sum());
                }
                std::hint::black_box(frames.as_slice());
            }
            Ok((events, framed))
        };
        report(case, "snnc", runs, reused)?;
        let fresh = |check: bool| -> Result<(u64, f64), Box<dyn Error>> {
            let (mut events, mut framed) = (0u64, 0f64);
            for f in files {
                let ev = read_events(f, &opts)?.events;
                events += ev.len() as u64;
                let frames = frame(&ev, &spec)?;
                if check {
                    framed += f64::from(frames.sum());
                }
                std::hint::black_box(frames);
            }
            Ok((events, framed))
        };
        report(case, "snnc-alloc", runs, fresh)?;
    }

    // The same N-MNIST read + frame through the loader (2 workers, batches of 64, no shuffle),
    // to show what the threaded path adds on top of one core.
    for (case, spec) in [
        ("nmnist-count-T8", FrameSpec::event_count(8)),
        ("nmnist-time-T8", FrameSpec::frame_count(8)),
    ] {
        let config = LoaderConfig {
            workers: 2,
            prefetch: 4,
            shuffle: false,
            ..LoaderConfig::new(64)
        };
        let loader = Loader::new(samples.clone(), spec, config)?;
        let events = count_events(&samples, &opts)?;
        let pass = |check: bool| -> Result<(u64, f64), Box<dyn Error>> {
            let mut framed = 0f64;
            for batch in loader.epoch(0) {
                let batch = batch?;
                if check {
                    framed += f64::from(batch.frames.sum());
                }
                std::hint::black_box(batch);
            }
            Ok((events, framed))
        };
        report(case, "snnc-loader-2w", runs, pass)?;
    }
    Ok(())
}

fn count_events(samples: &[Sample], opts: &ReadOptions) -> Result<u64, Box<dyn Error>> {
    let mut n = 0;
    for s in samples {
        n += s.load(opts)?.len() as u64;
    }
    Ok(n)
}

/// Runs `pass` once to warm the page cache and count what was framed (the check the Python
/// peers print too), then `runs` timed times without the check; prints the median.
fn report(
    case: &str,
    tool: &str,
    runs: usize,
    mut pass: impl FnMut(bool) -> Result<(u64, f64), Box<dyn Error>>,
) -> Result<(), Box<dyn Error>> {
    let (events, framed) = pass(true)?;
    let mut secs = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        pass(false)?;
        secs.push(start.elapsed().as_secs_f64());
    }
    secs.sort_by(f64::total_cmp);
    let median = secs[secs.len() / 2];
    println!(
        "{{\"case\": \"{case}\", \"tool\": \"{tool}\", \"events\": {events}, \"framed\": {framed}, \"median_s\": {median:.6}, \"events_per_s\": {:.1}, \"runs\": {}}}",
        events as f64 / median,
        secs.len()
    );
    Ok(())
}
