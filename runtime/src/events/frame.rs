//! Framing (paper Sec. III-A): accumulate events into `[T, 2, H, W]` per-polarity count frames by
//! time window, event count or fixed frame count, with integer downsampling and an optional denoise filter.

use std::borrow::Cow;

use ndarray::{Array4, ArrayView3};

use super::error::EventError;
use super::types::Events;

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

    fn steps(&self) -> usize {
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
    let (w, h) = spec
        .sensor
        .or(events.sensor())
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
        .ok_or_else(|| EventError::Spec(format!("a {steps}x2x{fh}x{fw} tensor is too large")))?;
    if let Some(i) = (0..events.len()).find(|&i| events.x[i] >= w || events.y[i] >= h) {
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
    let n = events.len();
    let mut out = Array4::<f32>::zeros((steps, 2, fh, fw));
    if n == 0 {
        return Ok(out);
    }
    let t = &events.t;
    let (p, x, y) = (&events.p, &events.x, &events.y);
    let plane = fh * fw;
    let Some(counts) = out.as_slice_mut() else {
        return Err(EventError::Spec("frame tensor is not contiguous".into()));
    };
    let f = usize::from(f);
    // One monomorphic loop per slicing mode: the per-event bin computation inlines, and the
    // flat index needs no 4-d bounds checks (coordinates were checked against the sensor above).
    let mut accumulate = |bin: &dyn Fn(usize) -> Option<usize>| {
        for i in 0..n {
            if let Some(b) = bin(i) {
                let c = usize::from(p[i] != 0);
                let idx =
                    (b * 2 + c) * plane + (usize::from(y[i]) / f) * fw + usize::from(x[i]) / f;
                counts[idx] += 1.0;
            }
        }
    };
    match spec.slicing {
        Slicing::TimeWindow {
            window_us, start, ..
        } => {
            if window_us <= 0 {
                return Err(EventError::Spec("time window must be at least 1 µs".into()));
            }
            let t0 = start.unwrap_or(t[0]);
            accumulate(&|i| {
                let d = t[i].checked_sub(t0)?;
                usize::try_from(d / window_us)
                    .ok()
                    .filter(|&b| d >= 0 && b < steps)
            });
        }
        Slicing::EventCount { .. } => {
            // Event i goes to step ⌊i·T/n⌋, so step b holds events [⌈b·n/T⌉, ⌈(b+1)·n/T⌉).
            for b in 0..steps {
                let (lo, hi) = (
                    (b * n).div_ceil(steps),
                    ((b + 1) * n).div_ceil(steps).min(n),
                );
                for i in lo..hi {
                    let c = usize::from(p[i] != 0);
                    let idx =
                        (b * 2 + c) * plane + (usize::from(y[i]) / f) * fw + usize::from(x[i]) / f;
                    counts[idx] += 1.0;
                }
            }
        }
        Slicing::FrameCount { .. } => {
            let (lo, hi) = t
                .iter()
                .fold((i64::MAX, i64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let span = i128::from(hi) - i128::from(lo);
            accumulate(&|i| {
                if span == 0 {
                    return Some(0);
                }
                let b = (i128::from(t[i]) - i128::from(lo)) * steps as i128 / span;
                Some((b as usize).min(steps - 1))
            });
        }
    }
    Ok(out)
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
