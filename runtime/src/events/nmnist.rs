//! N-MNIST `.bin` / `.bs2` reader: headerless 5-byte events on the 34 x 34 ATIS crop.
//! `x = b0, y = b1, p = b2 >> 7, t = (b2 & 0x7F) << 16 | b3 << 8 | b4` (µs, 23 bits).
//! Also frames those records directly, without event columns, for `EventReader::read_frames`.

use std::path::Path;

use super::cursor::Cursor;
use super::error::EventError;
use super::frame::{
    Accumulator, Bins, DenseParts, FrameBuffer, FrameSpec, Geometry, Slicing, event_count_range,
};
use super::io::map_file;
use super::types::{ReadOptions, ReadReport, Recording, Sink, TimestampPolicy};

/// N-MNIST's saccade recordings are cropped to 34 x 34 pixels.
pub const SENSOR: (u16, u16) = (34, 34);

/// Reads an N-MNIST binary file through a memory map.
pub fn read(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Recording, EventError> {
    let path = path.as_ref();
    let bytes = map_file(path)?;
    decode(&bytes, path, opts)
}

/// Decodes N-MNIST bytes held in memory; errors name the file as `<memory>`.
pub fn from_bytes(bytes: &[u8], opts: &ReadOptions) -> Result<Recording, EventError> {
    decode(bytes, Path::new("<memory>"), opts)
}

pub(crate) fn decode(
    bytes: &[u8],
    file: &Path,
    opts: &ReadOptions,
) -> Result<Recording, EventError> {
    let mut rec = Recording::default();
    decode_into(bytes, file, opts, &mut rec)?;
    Ok(rec)
}

/// [`decode`] into `out`, reusing its columns.
pub(crate) fn decode_into(
    bytes: &[u8],
    file: &Path,
    opts: &ReadOptions,
    out: &mut Recording,
) -> Result<(), EventError> {
    let whole = bytes.len() / 5 * 5;
    if whole != bytes.len() {
        return Err(Cursor::with_base(&bytes[whole..], file, whole as u64)
            .truncated(5, "N-MNIST event (5 bytes)"));
    }
    let mut sink = Sink::new(out, file, opts, Some(SENSOR));
    sink.extend(bytes.chunks_exact(5).enumerate().map(|(i, b)| {
        (
            (i * 5) as u64,
            time(b),
            b[0].into(),
            b[1].into(),
            b[2] >> 7 == 1,
        )
    }))
}

/// Reads and frames N-MNIST bytes in one pass with no event columns: each event is decoded,
/// checked and counted straight into `out` (what `frame_into(decode(bytes))` computes, minus
/// writing and re-reading 13 bytes per event). Returns the event count and report, or `None`
/// when this path does not apply — denoising, a spec the general path would reject, a spec
/// sensor smaller than the reading one — or the data breaks a rule. The caller then takes the
/// general path, which gives the result or the exact error; `out` is left fully dirty, so the
/// counts of an abandoned pass never survive.
pub(crate) fn frame_bytes(
    bytes: &[u8],
    opts: &ReadOptions,
    spec: &FrameSpec,
    out: &mut FrameBuffer,
) -> Option<(usize, ReadReport)> {
    if !bytes.len().is_multiple_of(5) || spec.denoise_us.is_some() {
        return None;
    }
    let sensor = opts.sensor.unwrap_or(SENSOR);
    let g = Geometry::new(spec, Some(sensor)).ok()?;
    // Events are checked against the reading sensor; framing must then accept every one.
    if g.w < sensor.0 || g.h < sensor.1 {
        return None;
    }
    let n = bytes.len() / 5;
    let bins = match spec.slicing {
        _ if n == 0 => None,
        Slicing::EventCount { .. } => None,
        Slicing::TimeWindow {
            window_us, start, ..
        } => {
            if window_us <= 0 {
                return None;
            }
            Some(Bins::TimeWindow {
                t0: start.unwrap_or(time(bytes)),
                window: window_us,
            })
        }
        // For time-ordered events the span is first..last; a decrease sends the file to the
        // general path (below), which takes the true minimum and maximum.
        Slicing::FrameCount { .. } => Some(Bins::Span {
            lo: time(bytes),
            hi: time(&bytes[bytes.len() - 5..]),
        }),
    };
    let sensor = (usize::from(sensor.0), usize::from(sensor.1));
    let allow = opts.timestamps == TimestampPolicy::Allow && bins_allow_disorder(&spec.slicing);
    let mut acc = Accumulator::new(out, &g, n);
    let walk = Walk {
        bytes,
        sensor,
        allow,
        steps: g.steps,
        bins,
    };
    let decreases = match acc.dense_parts() {
        Some(DenseParts {
            counts,
            rows,
            cols,
            plane,
        }) => walk.run(|step, x, y, on| {
            counts[(step * 2 + usize::from(on)) * plane + rows[y] as usize + cols[x] as usize] +=
                1.0;
        })?,
        None => walk.run(|step, x, y, on| acc.add(step, x, y, on))?,
    };
    acc.finish();
    let report = ReadReport {
        non_monotonic: decreases,
        ..ReadReport::default()
    };
    Some((n, report))
}

/// One checked pass over N-MNIST records, handing each event's step and coordinates to a
/// counting function (monomorphised per caller, so the loop holds its state in registers).
struct Walk<'a> {
    bytes: &'a [u8],
    /// Coordinates must lie below this `(width, height)`.
    sensor: (usize, usize),
    /// Timestamp decreases are counted rather than a reason to leave.
    allow: bool,
    steps: usize,
    /// Step by time; `None` for event-count slicing.
    bins: Option<Bins>,
}

impl Walk<'_> {
    /// The number of timestamp decreases, or `None` at the first event the fast path cannot take.
    fn run(&self, mut count: impl FnMut(usize, usize, usize, bool)) -> Option<u64> {
        let (w, h) = self.sensor;
        let (mut previous, mut decreases) = (i64::MIN, 0u64);
        // One event: checks (any failure leaves the fast path) and its coordinates.
        let mut check = |b: &[u8]| -> Option<(i64, usize, usize, bool)> {
            let (t, x, y) = (time(b), usize::from(b[0]), usize::from(b[1]));
            if x >= w || y >= h {
                return None;
            }
            if t < previous {
                if !self.allow {
                    return None;
                }
                decreases += 1;
            }
            previous = t;
            Some((t, x, y, b[2] >> 7 == 1))
        };
        let n = self.bytes.len() / 5;
        match self.bins {
            None => {
                for step in 0..self.steps {
                    let range = event_count_range(step, n, self.steps);
                    for b in self.bytes[range.start * 5..range.end * 5].chunks_exact(5) {
                        let (_, x, y, on) = check(b)?;
                        count(step, x, y, on);
                    }
                }
            }
            Some(bins) => {
                // The step of the previous event and the time interval it covers (empty at first).
                let (mut step, mut lo, mut hi) = (None, 1, 0);
                for b in self.bytes.chunks_exact(5) {
                    let (t, x, y, on) = check(b)?;
                    if t < lo || t > hi {
                        (step, lo, hi) = bins.locate(t, self.steps);
                    }
                    if let Some(step) = step {
                        count(step, x, y, on);
                    }
                }
            }
        }
        Some(decreases)
    }
}

/// Whether a slicing gives the same steps for unordered timestamps here as in `frame_into`:
/// frame-count slicing needs the true minimum and maximum, which only ordered data gives as
/// the first and last event.
fn bins_allow_disorder(slicing: &Slicing) -> bool {
    !matches!(slicing, Slicing::FrameCount { .. })
}

/// The timestamp of the 5-byte record at the start of `b`.
fn time(b: &[u8]) -> i64 {
    (i64::from(b[2] & 0x7F) << 16) | (i64::from(b[3]) << 8) | i64::from(b[4])
}
