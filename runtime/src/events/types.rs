//! The structure-of-arrays `Events` container, read options and the per-read report.
//! Also the event `Checks` and the column `Sink` every reader pushes through (or, for the readers
//! that frame while decoding, the `EventSink` trait), so range and order rules live in one place.

use std::path::Path;

use super::error::EventError;

/// Events as four parallel columns, in file order.
///
/// `t` is the timestamp exactly as stored (µs; absolute Unix time for AEDAT 4), `p` is 1 for ON
/// and 0 for OFF, `x`/`y` are raw sensor coordinates with no flip. `width`/`height` are the
/// sensor size when the file (or [`ReadOptions::sensor`]) declares it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    pub t: Vec<i64>,
    pub x: Vec<u16>,
    pub y: Vec<u16>,
    pub p: Vec<u8>,
    pub width: Option<u16>,
    pub height: Option<u16>,
}

/// One event as a tuple `(t, x, y, p)`, the order the golden values use.
pub type Event = (i64, u16, u16, u8);

impl Events {
    /// An empty container for a sensor of the given size, if known.
    pub fn new(sensor: Option<(u16, u16)>) -> Self {
        Self {
            width: sensor.map(|s| s.0),
            height: sensor.map(|s| s.1),
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.t.len()
    }

    pub fn is_empty(&self) -> bool {
        self.t.is_empty()
    }

    pub fn sensor(&self) -> Option<(u16, u16)> {
        Some((self.width?, self.height?))
    }

    pub fn push(&mut self, (t, x, y, p): Event) {
        self.t.push(t);
        self.x.push(x);
        self.y.push(y);
        self.p.push(p);
    }

    pub fn get(&self, i: usize) -> Option<Event> {
        Some((*self.t.get(i)?, self.x[i], self.y[i], self.p[i]))
    }

    pub fn first(&self) -> Option<Event> {
        self.get(0)
    }

    pub fn last(&self) -> Option<Event> {
        self.get(self.len().checked_sub(1)?)
    }

    /// Number of ON events.
    pub fn n_on(&self) -> usize {
        self.p.iter().filter(|&&p| p != 0).count()
    }

    /// `t_last - t_first` in file order (0 when empty).
    pub fn duration(&self) -> i64 {
        match (self.t.first(), self.t.last()) {
            (Some(a), Some(b)) => b.saturating_sub(*a),
            _ => 0,
        }
    }

    /// The events with `start <= t < end`, in file order; the sensor size carries over.
    pub fn time_range(&self, start: i64, end: i64) -> Events {
        let mut out = Events::new(self.sensor());
        for i in 0..self.len() {
            if (start..end).contains(&self.t[i]) {
                out.push((self.t[i], self.x[i], self.y[i], self.p[i]));
            }
        }
        out
    }

    fn reserve(&mut self, n: usize) {
        self.t.reserve(n);
        self.x.reserve(n);
        self.y.reserve(n);
        self.p.reserve(n);
    }
}

/// What to do when a timestamp is smaller than the one before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TimestampPolicy {
    /// Fail with [`EventError::NonMonotonic`] (the default: every real file here is monotone).
    #[default]
    Error,
    /// Keep the events in file order and count the decreases in [`ReadReport::non_monotonic`].
    Allow,
}

/// Options shared by every reader.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    pub timestamps: TimestampPolicy,
    /// Sensor size `(width, height)` that replaces the one the file declares (or supplies one
    /// where the format has none, e.g. `.npy`); coordinates are checked against it.
    pub sensor: Option<(u16, u16)>,
}

/// What a reader skipped or tolerated besides the polarity events it returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// IMU data: AEDAT 2.0 counts 32-bit IMU words (7 per IMU6 sample), AEDAT 3.1 and 4 count samples.
    pub imu: u64,
    /// APS (frame readout) words in AEDAT 2.0.
    pub aps: u64,
    /// Special / timestamp-reset events (AEDAT 2.0 and 3.1).
    pub special: u64,
    /// APS frames (AEDAT 3.1 frame events, AEDAT 4 `FRME` packets).
    pub frames: u64,
    /// Trigger events (AEDAT 4 `TRIG`).
    pub triggers: u64,
    /// Polarity events whose valid bit was cleared (AEDAT 3.1).
    pub invalid: u64,
    /// Events or packets of any other type.
    pub other: u64,
    /// Timestamp decreases seen under [`TimestampPolicy::Allow`].
    pub non_monotonic: u64,
}

/// The result of reading one file.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    pub events: Events,
    pub report: ReadReport,
}

/// One decoded event before any check: `(file offset, t, x, y, on)`, as [`Sink::push`] takes it.
pub(crate) type RawEvent = (u64, i64, i64, i64, bool);

/// The rules every decoded event must pass, in this order: coordinates within the sensor,
/// then a timestamp no smaller than the previous event's (or only counted, under
/// [`TimestampPolicy::Allow`]). Shared by the column sink and the framing sink, so both fail
/// on the same event with the same error.
#[derive(Clone, Copy)]
pub(crate) struct Checks<'a> {
    file: &'a Path,
    policy: TimestampPolicy,
    sensor: Option<(u16, u16)>,
    /// Exclusive coordinate bounds as `i64`, computed once instead of per event.
    bounds: (i64, i64),
}

impl<'a> Checks<'a> {
    pub(crate) fn new(file: &'a Path, opts: &ReadOptions, sensor: Option<(u16, u16)>) -> Self {
        let bounds = (
            sensor.map_or(u16::MAX as i64 + 1, |s| i64::from(s.0)),
            sensor.map_or(u16::MAX as i64 + 1, |s| i64::from(s.1)),
        );
        Self {
            file,
            policy: opts.timestamps,
            sensor,
            bounds,
        }
    }

    /// Checks one event read at file offset `offset` after an event at time `previous`.
    /// `Ok(true)`: a tolerated timestamp decrease, to be counted.
    #[inline]
    pub(crate) fn event(
        &self,
        offset: u64,
        t: i64,
        x: i64,
        y: i64,
        previous: Option<i64>,
    ) -> Result<bool, EventError> {
        let (w, h) = self.bounds;
        if !(0..w).contains(&x) || !(0..h).contains(&y) {
            return Err(EventError::OutOfRange {
                file: self.file.to_path_buf(),
                offset,
                x,
                y,
                width: self.sensor.map_or(u16::MAX, |s| s.0),
                height: self.sensor.map_or(u16::MAX, |s| s.1),
            });
        }
        match previous {
            Some(previous) if t < previous => match self.policy {
                TimestampPolicy::Error => Err(EventError::NonMonotonic {
                    file: self.file.to_path_buf(),
                    offset,
                    previous,
                    t,
                }),
                TimestampPolicy::Allow => Ok(true),
            },
            _ => Ok(false),
        }
    }
}

/// Where a reader hands its decoded events: the checked columns of a [`Sink`], or (for the
/// readers that can) a framing sink that counts them straight into frames.
pub(crate) trait EventSink {
    /// Checks and takes a run of events, failing on the first bad one.
    fn extend<I>(&mut self, events: I) -> Result<(), EventError>
    where
        I: ExactSizeIterator<Item = RawEvent> + Clone;

    /// The counts of what the reader skipped.
    fn report(&mut self) -> &mut ReadReport;
}

/// Where readers push decoded events: applies the sensor bounds and the timestamp policy once
/// for every format, so no reader can forget either.
pub(crate) struct Sink<'a> {
    rec: &'a mut Recording,
    checks: Checks<'a>,
}

impl<'a> Sink<'a> {
    /// Empties `out` (keeping its column allocations) for the events of `file`. `declared` is
    /// the sensor size from the file header; `opts.sensor` overrides it.
    pub(crate) fn new(
        out: &'a mut Recording,
        file: &'a Path,
        opts: &ReadOptions,
        declared: Option<(u16, u16)>,
    ) -> Self {
        let sensor = opts.sensor.or(declared);
        let ev = &mut out.events;
        ev.t.clear();
        ev.x.clear();
        ev.y.clear();
        ev.p.clear();
        (ev.width, ev.height) = (sensor.map(|s| s.0), sensor.map(|s| s.1));
        out.report = ReadReport::default();
        Self {
            rec: out,
            checks: Checks::new(file, opts, sensor),
        }
    }

    pub(crate) fn reserve(&mut self, n: usize) {
        self.rec.events.reserve(n);
    }

    pub(crate) fn report(&mut self) -> &mut ReadReport {
        &mut self.rec.report
    }

    /// Checks and stores one event read at file offset `offset`.
    pub(crate) fn push(
        &mut self,
        offset: u64,
        t: i64,
        x: i64,
        y: i64,
        on: bool,
    ) -> Result<(), EventError> {
        let previous = self.rec.events.t.last().copied();
        if self.checks.event(offset, t, x, y, previous)? {
            self.rec.report.non_monotonic += 1;
        }
        // Both casts are exact: x and y were just checked against 0..=u16::MAX.
        self.rec.events.push((t, x as u16, y as u16, u8::from(on)));
        Ok(())
    }

    /// Checks and stores a run of events: the same rules, results and errors as `push` on each
    /// in turn. The columns grow once and are filled by one loop that only accumulates
    /// "something is wrong" flags, because per-event `Vec::push` on four columns plus early
    /// returns cost more than decoding (profiled at ~25 % of an N-MNIST read). If a flag is
    /// set, the run is taken back and replayed through `push`, which finds the first
    /// offending event and builds exactly its error.
    pub(crate) fn extend<I>(&mut self, events: I) -> Result<(), EventError>
    where
        I: ExactSizeIterator<Item = RawEvent> + Clone,
    {
        let (w, h) = self.checks.bounds;
        let ev = &mut self.rec.events;
        let start = ev.len();
        let end = start + events.len();
        ev.t.resize(end, 0);
        ev.x.resize(end, 0);
        ev.y.resize(end, 0);
        ev.p.resize(end, 0);
        let mut previous = ev.t[..start].last().copied().unwrap_or(i64::MIN);
        let (mut outside, mut decreases) = (false, 0u64);
        let slots = ev.t[start..]
            .iter_mut()
            .zip(&mut ev.x[start..])
            .zip(&mut ev.y[start..])
            .zip(&mut ev.p[start..]);
        for ((((t, x), y), p), (_, te, xe, ye, on)) in slots.zip(events.clone()) {
            // Unsigned compares also catch negative coordinates; w and h are at most 65536.
            outside |= (xe as u64 >= w as u64) | (ye as u64 >= h as u64);
            decreases += u64::from(te < previous);
            previous = te;
            // Truncating casts are harmless: a run with any coordinate outside is replayed.
            (*t, *x, *y, *p) = (te, xe as u16, ye as u16, u8::from(on));
        }
        if outside || (decreases > 0 && self.checks.policy == TimestampPolicy::Error) {
            ev.t.truncate(start);
            ev.x.truncate(start);
            ev.y.truncate(start);
            ev.p.truncate(start);
            for (offset, t, x, y, on) in events {
                self.push(offset, t, x, y, on)?;
            }
            return Ok(());
        }
        self.rec.report.non_monotonic += decreases;
        Ok(())
    }
}

impl EventSink for Sink<'_> {
    fn extend<I>(&mut self, events: I) -> Result<(), EventError>
    where
        I: ExactSizeIterator<Item = RawEvent> + Clone,
    {
        Sink::extend(self, events)
    }

    fn report(&mut self) -> &mut ReadReport {
        Sink::report(self)
    }
}
