//! Framing (paper Sec. III-A): accumulate events into `[T, 2, H, W]` per-polarity count frames by
//! time window, event count or fixed frame count, with integer downsampling and an optional denoise filter.
//! Owns the reusable `FrameBuffer` and the pieces readers use to frame while decoding (`Accumulator`,
//! `FrameSink`), so that every path computes steps and cells with the same code.

use std::borrow::Cow;
use std::path::Path;

use ndarray::{Array4, ArrayView3, ArrayView4};

use super::error::EventError;
use super::types::{Checks, EventSink, Events, RawEvent, ReadOptions, ReadReport};

/// How events are assigned to the T time steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slicing {
    /// `steps` consecutive windows of `window_us` µs (the paper's dt'), the first starting at
    /// `start` or, if `None`, at the first event. Events outside the T windows are dropped.
    TimeWindow {
        window_us: i64,
        steps: usize,
        start: Option<i64>,
    },
    /// `steps` slices of (as near as possible) equal event count, in file order.
    EventCount { steps: usize },
    /// The recording's span `[t_min, t_max]` cut into `steps` equal time slices (t_max goes to the last).
    FrameCount { steps: usize },
}

/// A complete framing recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameSpec {
    pub slicing: Slicing,
    /// Integer spatial downsampling `f >= 1`: an event lands in pixel `(x / f, y / f)` of a
    /// `ceil(H / f) x ceil(W / f)` frame, as the official code's `x // 4`.
    pub downsample: u16,
    /// Drop events with no event at one of their 8 neighbours within this many µs before them.
    pub denoise_us: Option<i64>,
    /// Sensor size `(width, height)`; defaults to the one the events carry.
    pub sensor: Option<(u16, u16)>,
}

impl FrameSpec {
    /// `steps` windows of `window_us` µs starting at the first event.
    pub fn time_window(window_us: i64, steps: usize) -> Self {
        Self::new(Slicing::TimeWindow {
            window_us,
            steps,
            start: None,
        })
    }

    pub fn event_count(steps: usize) -> Self {
        Self::new(Slicing::EventCount { steps })
    }

    pub fn frame_count(steps: usize) -> Self {
        Self::new(Slicing::FrameCount { steps })
    }

    fn new(slicing: Slicing) -> Self {
        Self {
            slicing,
            downsample: 1,
            denoise_us: None,
            sensor: None,
        }
    }

    pub fn downsample(mut self, factor: u16) -> Self {
        self.downsample = factor;
        self
    }

    pub fn denoise(mut self, window_us: i64) -> Self {
        self.denoise_us = Some(window_us);
        self
    }

    pub fn sensor(mut self, width: u16, height: u16) -> Self {
        self.sensor = Some((width, height));
        self
    }

    pub(crate) fn steps(&self) -> usize {
        match self.slicing {
            Slicing::TimeWindow { steps, .. }
            | Slicing::EventCount { steps }
            | Slicing::FrameCount { steps } => steps,
        }
    }

    /// A stable textual key of every parameter, for caches.
    pub fn cache_key(&self) -> String {
        let s = match self.slicing {
            Slicing::TimeWindow {
                window_us,
                steps,
                start,
            } => format!("tw{window_us}x{steps}@{start:?}"),
            Slicing::EventCount { steps } => format!("ec{steps}"),
            Slicing::FrameCount { steps } => format!("fc{steps}"),
        };
        format!(
            "{s}-ds{}-dn{:?}-s{:?}",
            self.downsample, self.denoise_us, self.sensor
        )
    }
}

/// Frames `events` into a `[T, 2, H, W]` tensor of event counts: channel 0 counts OFF (p = 0)
/// events, channel 1 ON (p = 1). Implements `S_t = Σ q(e)` over the events of step t.
pub fn frame(events: &Events, spec: &FrameSpec) -> Result<Array4<f32>, EventError> {
    let mut out = FrameBuffer::new();
    frame_into(events, spec, &mut out)?;
    Ok(out.into_array())
}

/// A `[T, 2, H, W]` `f32` frame tensor that [`frame_into`] refills, for framing many recordings
/// without allocating and zeroing a tensor for each one.
///
/// The buffer remembers what the last framing wrote: when the events were few compared with
/// the tensor (a 10 ms-window DAVIS recording fills 170 MB of counts with ~80 k events), only
/// the cells they touched are reset before the next framing, instead of all of them. That is
/// why the tensor is only handed out read-only ([`FrameBuffer::view`], [`FrameBuffer::as_slice`]):
/// a write from outside would break that bookkeeping. [`FrameBuffer::into_array`] gives up the
/// buffer for an owned, writable tensor.
#[derive(Debug, Clone, Default)]
pub struct FrameBuffer {
    data: Vec<f32>,
    shape: (usize, usize, usize, usize),
    dirty: Dirty,
}

/// Which cells of a [`FrameBuffer`] may be non-zero.
#[derive(Debug, Clone, Default)]
enum Dirty {
    /// None: the buffer is all zeros.
    #[default]
    Clean,
    /// Only these flat indices (repeats allowed).
    Cells(Vec<u32>),
    /// Any cell.
    All,
}

/// Sparse reset is chosen when the events number fewer than 1/16 of the cells: resetting a
/// touched cell costs about as much as zeroing one 64-byte line (16 `f32`s) of a dense fill.
const SPARSE_RATIO: usize = 16;

impl FrameBuffer {
    /// An empty buffer; the first [`frame_into`] allocates it.
    pub fn new() -> Self {
        Self::default()
    }

    /// `(T, 2, H, W)` of the last framing (all zeros before the first).
    pub fn dim(&self) -> (usize, usize, usize, usize) {
        self.shape
    }

    /// The counts, `[T, 2, H, W]` in row-major order.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The counts as a 4-d view.
    pub fn view(&self) -> ArrayView4<'_, f32> {
        // The length always equals the product of `shape` (both are set together in `prepare`).
        ArrayView4::from_shape(self.shape, &self.data).unwrap_or_else(|_| {
            unreachable!(
                "frame buffer length {} != {:?}",
                self.data.len(),
                self.shape
            )
        })
    }

    /// The counts as an owned tensor (no copy).
    pub fn into_array(self) -> Array4<f32> {
        let shape = self.shape;
        let len = self.data.len();
        Array4::from_shape_vec(shape, self.data)
            .unwrap_or_else(|_| unreachable!("frame buffer length {len} != {shape:?}"))
    }

    /// Makes the buffer an all-zero tensor of `shape`, undoing only what the last framing wrote.
    fn prepare(&mut self, shape: (usize, usize, usize, usize)) {
        let len = shape.0 * shape.1 * shape.2 * shape.3;
        if self.data.len() != len {
            // A fresh zeroed allocation: large ones come from the OS as untouched zero pages,
            // so cells never written never cost a page fault or a memset.
            self.data = vec![0.0; len];
        } else {
            match std::mem::take(&mut self.dirty) {
                Dirty::Clean => {}
                Dirty::Cells(cells) => {
                    for &i in &cells {
                        self.data[i as usize] = 0.0;
                    }
                    // Keep the list's allocation for the next framing.
                    self.dirty = Dirty::Cells(cells);
                }
                Dirty::All => self.data.fill(0.0),
            }
        }
        self.shape = shape;
    }
}

/// Frames `events` into `out`, replacing what it held: the same tensor [`frame`] returns, but
/// the buffer (and its zeroing) is reused across calls. On error `out` is left as it was.
pub fn frame_into(
    events: &Events,
    spec: &FrameSpec,
    out: &mut FrameBuffer,
) -> Result<(), EventError> {
    let g = Geometry::new(spec, events.sensor())?;
    let (w, h) = (g.w, g.h);
    // Maxima first: a branch-free pass the compiler vectorises; the exact offender is only
    // searched for when there is one.
    let max_x = events.x.iter().copied().max().unwrap_or(0);
    let max_y = events.y.iter().copied().max().unwrap_or(0);
    if (max_x >= w || max_y >= h)
        && let Some(i) = (0..events.len()).find(|&i| events.x[i] >= w || events.y[i] >= h)
    {
        return Err(EventError::Spec(format!(
            "event {i} at ({}, {}) lies outside the {w}x{h} sensor",
            events.x[i], events.y[i]
        )));
    }
    let events = match spec.denoise_us {
        Some(window) if window < 0 => {
            return Err(EventError::Spec("denoise window must be >= 0".into()));
        }
        Some(window) => Cow::Owned(denoise_in(events, window, w, h)),
        None => Cow::Borrowed(events),
    };
    if let Slicing::TimeWindow { window_us, .. } = spec.slicing
        && window_us <= 0
        && !events.is_empty()
    {
        return Err(EventError::Spec("time window must be at least 1 µs".into()));
    }
    let n = events.len();
    let mut acc = Accumulator::new(out, &g, n);
    if n == 0 {
        acc.finish();
        return Ok(());
    }
    let steps = g.steps;
    let t = &events.t;
    let bins = match spec.slicing {
        Slicing::EventCount { .. } => None,
        Slicing::TimeWindow {
            window_us, start, ..
        } => Some(Bins::TimeWindow {
            t0: start.unwrap_or(t[0]),
            window: window_us,
        }),
        Slicing::FrameCount { .. } => {
            let (lo, hi) = t
                .iter()
                .fold((i64::MAX, i64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            Some(Bins::Span { lo, hi })
        }
    };
    match bins {
        None => {
            for b in 0..steps {
                acc.add_run(b, &events, event_count_range(b, n, steps));
            }
        }
        Some(bins) => {
            // Runs of consecutive events in one step (or all outside the steps) are found with
            // a compare per event against the step's time interval; the division that names
            // the step happens once per run — once per step for time-ordered events.
            let mut i = 0;
            while i < n {
                let (step, lo, hi) = bins.locate(t[i], steps);
                let run = t[i..]
                    .iter()
                    .position(|&v| v < lo || v > hi)
                    .unwrap_or(n - i);
                if let Some(b) = step {
                    acc.add_run(b, &events, i..i + run);
                }
                i += run;
            }
        }
    }
    acc.finish();
    Ok(())
}

/// Event-count slicing: event i goes to step ⌊i·T/n⌋, so step b holds events
/// `[⌈b·n/T⌉, ⌈(b+1)·n/T⌉)`.
pub(crate) fn event_count_range(b: usize, n: usize, steps: usize) -> std::ops::Range<usize> {
    (b * n).div_ceil(steps)..((b + 1) * n).div_ceil(steps).min(n)
}

/// The output geometry of a spec, after the checks that need no events.
pub(crate) struct Geometry {
    /// Sensor size that coordinates must lie within.
    pub(crate) w: u16,
    pub(crate) h: u16,
    f: usize,
    pub(crate) steps: usize,
    fw: usize,
    fh: usize,
}

impl Geometry {
    /// `sensor` is the events' own size, used when the spec names none.
    pub(crate) fn new(spec: &FrameSpec, sensor: Option<(u16, u16)>) -> Result<Self, EventError> {
        let (w, h) = spec
            .sensor
            .or(sensor)
            .ok_or_else(|| EventError::Spec("sensor size unknown: set FrameSpec::sensor".into()))?;
        let f = spec.downsample;
        if f == 0 {
            return Err(EventError::Spec(
                "downsample factor must be at least 1".into(),
            ));
        }
        let steps = spec.steps();
        if steps == 0 {
            return Err(EventError::Spec(
                "number of time steps must be at least 1".into(),
            ));
        }
        let (fw, fh) = (usize::from(w.div_ceil(f)), usize::from(h.div_ceil(f)));
        steps
            .checked_mul(2 * fw * fh)
            .filter(|&n| n <= 1 << 32)
            .ok_or_else(|| {
                EventError::Spec(format!("a {steps}x2x{fh}x{fw} tensor is too large"))
            })?;
        Ok(Self {
            w,
            h,
            f: usize::from(f),
            steps,
            fw,
            fh,
        })
    }
}

/// Adds events to a [`FrameBuffer`] made ready for one framing.
pub(crate) struct Accumulator<'a> {
    out: &'a mut FrameBuffer,
    /// Per-coordinate offsets, so the per-event work is three table loads and no division.
    cols: Vec<u32>,
    rows: Vec<u32>,
    plane: usize,
    /// Flat indices written, when the buffer resets sparsely.
    cells: Option<Vec<u32>>,
    /// Longest cell list worth keeping; past it a full reset is cheaper (see [`SPARSE_RATIO`]).
    cap: usize,
}

impl<'a> Accumulator<'a> {
    /// Zeroes `out` as a `[T, 2, H', W']` tensor for `n` events (0 when not known: the cell
    /// list is then dropped once it reaches its cap). Until [`Self::finish`],
    /// `out` counts as entirely dirty, so a framing abandoned halfway (a reader that meets
    /// a bad event) leaves no stale counts behind: the next framing clears it all.
    pub(crate) fn new(out: &'a mut FrameBuffer, g: &Geometry, n: usize) -> Self {
        out.prepare((g.steps, 2, g.fh, g.fw));
        let plane = g.fh * g.fw;
        // Sparse bookkeeping only pays when the events are few next to the cells.
        let cap = g.steps * 2 * plane / SPARSE_RATIO;
        let cells = match std::mem::replace(&mut out.dirty, Dirty::All) {
            _ if n >= cap => None,
            Dirty::Cells(mut cells) => {
                cells.clear();
                Some(cells)
            }
            _ => Some(Vec::with_capacity(n)),
        };
        Self {
            out,
            cols: (0..usize::from(g.w)).map(|x| (x / g.f) as u32).collect(),
            rows: (0..usize::from(g.h))
                .map(|y| ((y / g.f) * g.fw) as u32)
                .collect(),
            plane,
            cells,
            cap,
        }
    }

    /// Counts one event at `(x, y)` (within the sensor: else this panics) into step `b`.
    #[inline(always)]
    pub(crate) fn add(&mut self, b: usize, x: usize, y: usize, on: bool) {
        let i =
            (b * 2 + usize::from(on)) * self.plane + self.rows[y] as usize + self.cols[x] as usize;
        self.out.data[i] += 1.0;
        if let Some(cells) = &mut self.cells {
            if cells.len() < self.cap {
                // Exact: tensors are limited to 2^32 cells.
                cells.push(i as u32);
            } else {
                self.cells = None;
            }
        }
    }

    /// The flat index of event `(x, y, on)` of step `b` (`x`, `y` within the sensor: else
    /// this panics).
    #[inline(always)]
    pub(crate) fn index(&self, b: usize, x: usize, y: usize, on: bool) -> u32 {
        // Exact: tensors are limited to 2^32 cells.
        ((b * 2 + usize::from(on)) * self.plane + self.rows[y] as usize + self.cols[x] as usize)
            as u32
    }

    /// Counts one event per flat index. A loop of nothing but increments keeps many cache
    /// misses in flight; in a 170 MB tensor nearly every event's cell is one.
    pub(crate) fn add_indices(&mut self, cells: &[u32]) {
        for &i in cells {
            self.out.data[i as usize] += 1.0;
        }
        if let Some(list) = &mut self.cells {
            if list.len() + cells.len() <= self.cap {
                list.extend_from_slice(cells);
            } else {
                self.cells = None;
            }
        }
    }

    /// The inputs of a dense counting loop when no cell list is kept (else `None`: use
    /// [`Self::add`]). A caller's own loop over these slices keeps them in registers, where
    /// `add` reloads them through `self`.
    pub(crate) fn dense_parts(&mut self) -> Option<DenseParts<'_>> {
        match self.cells {
            Some(_) => None,
            None => Some(DenseParts {
                counts: &mut self.out.data,
                rows: &self.rows,
                cols: &self.cols,
                plane: self.plane,
            }),
        }
    }

    /// Counts events `range` (coordinates already checked against the sensor) into step `b`.
    fn add_run(&mut self, b: usize, ev: &Events, range: std::ops::Range<usize>) {
        let base = b * 2 * self.plane;
        let chan = [base, base + self.plane];
        let (x, y, p) = (&ev.x[range.clone()], &ev.y[range.clone()], &ev.p[range]);
        let events = x.iter().zip(y).zip(p);
        let counts = &mut self.out.data;
        match &mut self.cells {
            None => {
                for ((&x, &y), &p) in events {
                    let i = chan[usize::from(p != 0)]
                        + self.rows[usize::from(y)] as usize
                        + self.cols[usize::from(x)] as usize;
                    counts[i] += 1.0;
                }
            }
            Some(cells) => {
                for ((&x, &y), &p) in events {
                    let i = chan[usize::from(p != 0)]
                        + self.rows[usize::from(y)] as usize
                        + self.cols[usize::from(x)] as usize;
                    counts[i] += 1.0;
                    cells.push(i as u32);
                }
            }
        }
    }

    /// Records which cells the framing wrote, for the next reset.
    pub(crate) fn finish(self) {
        self.out.dirty = match self.cells {
            Some(cells) => Dirty::Cells(cells),
            None => Dirty::All,
        };
    }
}

/// Frames events as a reader decodes them, with the reader's [`Checks`]: what
/// `frame_into(&decode(bytes)?.events, spec, out)` computes, without event columns. Only
/// time-window slicing, whose steps need neither the event count nor the span of the whole
/// recording, and only specs that `frame_into` would accept for every event that passes the
/// checks (so a framing error can never come after a reading one).
pub(crate) struct FrameSink<'a> {
    acc: Accumulator<'a>,
    checks: Checks<'a>,
    window: i64,
    start: Option<i64>,
    steps: usize,
    /// Set from the first event when the spec has no start.
    bins: Option<Bins>,
    /// The previous event's step and the time interval it covers (empty at first).
    step: (Option<usize>, i64, i64),
    previous: Option<i64>,
    events: usize,
    report: ReadReport,
    /// Flat indices of one run of events, counted after the run (see `add_indices`).
    pending: Vec<u32>,
}

impl<'a> FrameSink<'a> {
    /// `None` when the spec is not one this sink takes: not time windows, denoising, a
    /// non-positive window, no sensor size, an invalid geometry, or a spec sensor smaller
    /// than the reading one (`opts.sensor`, else `declared`).
    pub(crate) fn new(
        file: &'a Path,
        opts: &ReadOptions,
        declared: Option<(u16, u16)>,
        spec: &FrameSpec,
        out: &'a mut FrameBuffer,
    ) -> Option<Self> {
        let Slicing::TimeWindow {
            window_us, start, ..
        } = spec.slicing
        else {
            return None;
        };
        let sensor = opts.sensor.or(declared)?;
        if window_us <= 0 || spec.denoise_us.is_some() {
            return None;
        }
        let g = Geometry::new(spec, Some(sensor)).ok()?;
        if g.w < sensor.0 || g.h < sensor.1 {
            return None;
        }
        Some(Self {
            // The event count is unknown until the end: start with a cell list, capped.
            acc: Accumulator::new(out, &g, 0),
            checks: Checks::new(file, opts, Some(sensor)),
            window: window_us,
            start,
            steps: g.steps,
            bins: None,
            step: (None, 1, 0),
            previous: None,
            events: 0,
            report: ReadReport::default(),
            pending: Vec::new(),
        })
    }

    /// The number of events framed and the report; records the written cells in the buffer.
    pub(crate) fn finish(self) -> (usize, ReadReport) {
        self.acc.finish();
        (self.events, self.report)
    }
}

impl EventSink for FrameSink<'_> {
    fn extend<I>(&mut self, events: I) -> Result<(), EventError>
    where
        I: ExactSizeIterator<Item = RawEvent> + Clone,
    {
        for (offset, t, x, y, on) in events {
            if self.checks.event(offset, t, x, y, self.previous)? {
                self.report.non_monotonic += 1;
            }
            self.previous = Some(t);
            let (start, window) = (self.start, self.window);
            let bins = *self.bins.get_or_insert_with(|| Bins::TimeWindow {
                t0: start.unwrap_or(t),
                window,
            });
            if t < self.step.1 || t > self.step.2 {
                self.step = bins.locate(t, self.steps);
            }
            if let Some(b) = self.step.0 {
                // Exact casts: the checks put x and y inside the sensor, which the frame covers.
                self.pending
                    .push(self.acc.index(b, x as usize, y as usize, on));
            }
            self.events += 1;
        }
        self.acc.add_indices(&self.pending);
        self.pending.clear();
        Ok(())
    }

    fn report(&mut self) -> &mut ReadReport {
        &mut self.report
    }
}

/// See [`Accumulator::dense_parts`]: event `(x, y, on)` of step `b` adds 1 to
/// `counts[(2b + on) * plane + rows[y] + cols[x]]`.
pub(crate) struct DenseParts<'a> {
    pub(crate) counts: &'a mut [f32],
    pub(crate) rows: &'a [u32],
    pub(crate) cols: &'a [u32],
    pub(crate) plane: usize,
}

/// Step assignment by time, for the modes that need it.
#[derive(Clone, Copy)]
pub(crate) enum Bins {
    /// Step ⌊(t − t0) / window⌋ for 0 <= t − t0 (the difference must fit an i64); others dropped.
    TimeWindow { t0: i64, window: i64 },
    /// The span `[lo, hi]` cut into equal steps, `hi` in the last.
    Span { lo: i64, hi: i64 },
}

impl Bins {
    /// The step of `t` (or `None`: dropped) and the inclusive interval `[lo, hi]` around `t`
    /// in which every timestamp gets that same answer. Exact integer arithmetic in i128.
    pub(crate) fn locate(self, t: i64, steps: usize) -> (Option<usize>, i64, i64) {
        // Every bound below lies between `t` and i64::MIN or i64::MAX, so the clamp is exact.
        let fit = |v: i128| v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        let s = steps as i128;
        match self {
            Bins::TimeWindow { t0, window } => {
                let (t0, w) = (i128::from(t0), i128::from(window));
                let d = i128::from(t) - t0;
                // Past either end of the steps or beyond an i64 difference: dropped.
                let past = t0 + (s * w).min(i128::from(i64::MAX) + 1);
                if d < 0 {
                    return (None, i64::MIN, fit(t0 - 1));
                }
                if t0 + d >= past {
                    return (None, fit(past), i64::MAX);
                }
                let b = d / w;
                (
                    Some(b as usize),
                    fit(t0 + b * w),
                    fit((t0 + (b + 1) * w).min(past) - 1),
                )
            }
            Bins::Span { lo, hi } => {
                let span = i128::from(hi) - i128::from(lo);
                if span == 0 {
                    return (Some(0), lo, hi);
                }
                let d = i128::from(t) - i128::from(lo);
                let b = (d * s / span).min(s - 1);
                // ⌊d·T/span⌋ = b  ⟺  ⌈b·span/T⌉ <= d < ⌈(b+1)·span/T⌉.
                let ceil = |k: i128| (k * span + s - 1) / s;
                let first = i128::from(lo) + ceil(b);
                let last = if b == s - 1 {
                    i128::from(hi)
                } else {
                    i128::from(lo) + ceil(b + 1) - 1
                };
                (Some(b as usize), fit(first), fit(last))
            }
        }
    }
}

/// Background-activity filter: keeps an event only if one of its 8 neighbours fired within
/// `window_us` µs before it (in file order). Needs the sensor size on `events`.
pub fn denoise(events: &Events, window_us: i64) -> Result<Events, EventError> {
    let (w, h) = events
        .sensor()
        .ok_or_else(|| EventError::Spec("denoise needs the sensor size on the events".into()))?;
    if let Some(i) = (0..events.len()).find(|&i| events.x[i] >= w || events.y[i] >= h) {
        return Err(EventError::Spec(format!(
            "event {i} lies outside the {w}x{h} sensor"
        )));
    }
    Ok(denoise_in(events, window_us, w, h))
}

/// `denoise` with coordinates already checked against `w x h`.
fn denoise_in(events: &Events, window_us: i64, w: u16, h: u16) -> Events {
    // A one-pixel border of never-set cells removes edge special cases.
    let stride = usize::from(w) + 2;
    let mut last = vec![i64::MIN; stride * (usize::from(h) + 2)];
    let mut out = Events::new(events.sensor());
    for i in 0..events.len() {
        let (t, x, y) = (
            events.t[i],
            usize::from(events.x[i]) + 1,
            usize::from(events.y[i]) + 1,
        );
        let centre = y * stride + x;
        let keep = [
            centre - stride - 1,
            centre - stride,
            centre - stride + 1,
            centre - 1,
            centre + 1,
            centre + stride - 1,
            centre + stride,
            centre + stride + 1,
        ]
        .iter()
        .any(|&n| last[n] != i64::MIN && t.saturating_sub(last[n]) <= window_us);
        // Every event, kept or not, is activity its neighbours can lean on.
        last[centre] = t;
        if keep {
            out.push((t, events.x[i], events.y[i], events.p[i]));
        }
    }
    out
}

/// Feeds a static image to every time step (`S_1 = … = S_T`): `[C, H, W]` → `[T, C, H, W]`.
pub fn repeat_static(image: ArrayView3<f32>, steps: usize) -> Array4<f32> {
    let (c, h, w) = image.dim();
    Array4::from_shape_fn((steps, c, h, w), |(_, c, y, x)| image[[c, y, x]])
}
