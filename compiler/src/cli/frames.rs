//! `snnc frames`: reads an event recording (any supported format), frames it into `[T, 2, H, W]`
//! as in the paper (Sec. III-A) and writes `.npy` and/or a PNG grid of the frames.

use clap::{Args, ValueEnum};
use snn_runtime::events::{
    FrameSpec, ReadOptions, frame, read_events, render_frames_png, save_frames_npy,
};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct FramesArgs {
    /// The recording: AEDAT 2/3.1/4, N-MNIST .bin/.bs2, or .npy/.npz event arrays.
    file: PathBuf,
    /// Number of frames (time steps).
    #[arg(long = "T", short = 'T', default_value_t = 16)]
    steps: usize,
    /// How to cut the recording into frames.
    #[arg(long, value_enum, default_value = "frames")]
    by: By,
    /// Window per frame in microseconds (`--by time`), e.g. 25000 for the paper's 25 ms.
    #[arg(long, default_value_t = 25_000)]
    window_us: i64,
    /// Spatial downsampling factor (x / f, y / f).
    #[arg(long, default_value_t = 1)]
    downsample: u16,
    /// Downsample so the larger side is at most this many pixels (overrides --downsample).
    #[arg(long)]
    size: Option<u16>,
    /// Drop events without a neighbour event within this many microseconds.
    #[arg(long)]
    denoise_us: Option<i64>,
    /// Write the frames as a float32 `.npy` of shape [T, 2, H, W].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write a PNG grid of the frames (ON red, OFF blue).
    #[arg(long)]
    png: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum By {
    /// Fixed time windows of --window-us.
    Time,
    /// Equal event counts per frame.
    Count,
    /// The recording split into T equal time slices.
    Frames,
}

pub fn run(args: FramesArgs) -> ExitCode {
    if args.out.is_none() && args.png.is_none() {
        eprintln!(
            "error: nothing to write\n  = help: give `--out frames.npy` and/or `--png frames.png`"
        );
        return ExitCode::FAILURE;
    }
    if args.steps == 0 {
        eprintln!("error: --T must be at least 1");
        return ExitCode::FAILURE;
    }
    let recording = match read_events(&args.file, &ReadOptions::default()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut spec = match args.by {
        By::Time => FrameSpec::time_window(args.window_us, args.steps),
        By::Count => FrameSpec::event_count(args.steps),
        By::Frames => FrameSpec::frame_count(args.steps),
    };
    let side = recording
        .events
        .width
        .max(recording.events.height)
        .unwrap_or(0);
    let factor = match args.size {
        Some(0) => {
            eprintln!("error: --size must be at least 1");
            return ExitCode::FAILURE;
        }
        Some(size) if side > 0 => side.div_ceil(size).max(1),
        _ => args.downsample.max(1),
    };
    spec = spec.downsample(factor);
    if let Some(w) = args.denoise_us {
        spec = spec.denoise(w);
    }
    let frames = match frame(&recording.events, &spec) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shape = frames.shape().to_vec();
    let total: f32 = frames.sum();
    for (path, result) in [
        (
            args.out.as_ref(),
            args.out.as_ref().map(|p| save_frames_npy(&frames, p)),
        ),
        (
            args.png.as_ref(),
            args.png.as_ref().map(|p| render_frames_png(&frames, p)),
        ),
    ] {
        if let (Some(path), Some(Err(e))) = (path, result) {
            eprintln!("error: cannot write `{}`: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    eprintln!(
        "{}: {} events -> frames {:?} ({} events framed, downsample {factor})",
        args.file.display(),
        recording.events.len(),
        shape,
        total as u64
    );
    ExitCode::SUCCESS
}
