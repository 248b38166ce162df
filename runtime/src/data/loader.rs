//! The threaded, prefetching batch loader: a fixed epoch order, worker threads that read, frame and
//! augment whole batches, a bounded window of batches in flight and in-order delivery with errors.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use ndarray::{Array4, Array5};

use super::augment::{Augment, Shift, write_shifted};
use super::seed::epoch_order;
use crate::events::{
    EventError, EventReader, Events, FrameBuffer, FrameCache, FrameSpec, ReadOptions, Sample,
    Slicing, frame,
};

/// How a [`Loader`] batches, shuffles, augments and parallelises.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Samples per batch (the last batch may be smaller unless `drop_last`).
    pub batch_size: usize,
    /// Worker threads; 0 builds each batch in the thread that asks for it (handy when debugging).
    pub workers: usize,
    /// Batches that may be built or waiting ahead of the consumer (at least 1).
    pub prefetch: usize,
    /// Shuffle the order every epoch (`false`: dataset order, e.g. for evaluation).
    pub shuffle: bool,
    /// Seed of the shuffle and of every augmentation draw.
    pub seed: u64,
    /// Drop the last batch when it would be smaller than `batch_size`.
    pub drop_last: bool,
    pub augment: Augment,
    pub read: ReadOptions,
    /// Serve un-augmented frames from a [`FrameCache`] in this directory (created if needed).
    pub cache_dir: Option<PathBuf>,
}

impl LoaderConfig {
    /// Shuffled, no augmentation, no cache, up to 4 workers with two batches in flight each.
    pub fn new(batch_size: usize) -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        Self {
            batch_size,
            workers,
            prefetch: 2 * workers,
            shuffle: true,
            seed: 0,
            drop_last: false,
            augment: Augment::default(),
            read: ReadOptions::default(),
            cache_dir: None,
        }
    }
}

/// One batch, time-major as the compiler's IR: `frames` is `[T, B, 2, H, W]` event counts,
/// `labels[b]` and `indices[b]` (position in the loader's sample list) belong to `frames[:, b]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub frames: Array5<f32>,
    pub labels: Vec<u32>,
    pub indices: Vec<usize>,
}

/// Reads one sample's `[T, 2, H, W]` frames, before spatial augmentation. A plain function
/// pointer so the unit tests can substitute a failing or panicking one.
type LoadFn = fn(&Inner, usize, &Shift) -> Result<Array4<f32>, EventError>;

struct Inner {
    samples: Vec<Sample>,
    spec: FrameSpec,
    config: LoaderConfig,
    cache: Option<FrameCache>,
    load: LoadFn,
}

/// Turns a sample list into batches, one [`Epoch`] at a time. Cheap to share: epochs hold an
/// `Arc` of it, so several may run at once (e.g. a training and an evaluation pass).
#[derive(Clone)]
pub struct Loader {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("samples", &self.inner.samples.len())
            .field("spec", &self.inner.spec)
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Loader {
    /// Checks the configuration and framing recipe (a bad one is an error here, not in every
    /// batch) and opens the cache directory if one is configured.
    pub fn new(
        samples: Vec<Sample>,
        spec: FrameSpec,
        config: LoaderConfig,
    ) -> Result<Self, EventError> {
        let bad = |what: &str| Err(EventError::Spec(what.to_string()));
        if config.batch_size == 0 {
            return bad("batch size must be at least 1");
        }
        if config.augment.time_jitter_us > 0 {
            if !matches!(spec.slicing, Slicing::TimeWindow { .. }) {
                return bad(
                    "time jitter needs TimeWindow slicing (shifting every timestamp does not change count or span slicing)",
                );
            }
            if config.cache_dir.is_some() {
                return bad(
                    "time jitter reframes every sample each epoch, so a frame cache cannot serve it; drop cache_dir or time_jitter_us",
                );
            }
        }
        // Framing one in-range event validates the steps, downsampling and window of `spec`
        // with the same rules `frame` applies to every sample.
        let mut probe = Events::new(Some((1, 1)));
        probe.push((0, 0, 0, 1));
        frame(&probe, &spec)?;
        let cache = match &config.cache_dir {
            Some(dir) => Some(FrameCache::new(dir)?),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                samples,
                spec,
                config,
                cache,
                load: load_frames,
            }),
        })
    }

    pub fn samples(&self) -> &[Sample] {
        &self.inner.samples
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.inner.config
    }

    /// Sample indices in the order `epoch` visits them; depends only on the seed and `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let c = &self.inner.config;
        epoch_order(self.inner.samples.len(), c.seed, epoch, c.shuffle)
    }

    /// Number of batches one epoch yields.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.inner.samples.len(), self.inner.config.batch_size);
        if self.inner.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Starts epoch `epoch`: its workers begin reading at once. Iterate it for the batches in
    /// order; the first error ends the epoch. Dropping it early stops and joins the workers.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let order = self.order(epoch);
        let batches: Vec<Vec<usize>> = order
            .chunks(self.inner.config.batch_size)
            .filter(|c| !self.inner.config.drop_last || c.len() == self.inner.config.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        let batches: Arc<[Vec<usize>]> = batches.into();
        let shared = Arc::new(Shared {
            window: Mutex::new(Window::default()),
            wake: Condvar::new(),
        });
        let (tx, rx) = mpsc::channel();
        let handles = (0..self.inner.config.workers)
            .map(|_| {
                let job = WorkerJob {
                    inner: Arc::clone(&self.inner),
                    batches: Arc::clone(&batches),
                    shared: Arc::clone(&shared),
                    tx: tx.clone(),
                    epoch,
                };
                std::thread::spawn(move || job.run())
            })
            .collect();
        Epoch {
            inner: Arc::clone(&self.inner),
            epoch,
            batches,
            next: 0,
            done: false,
            shared,
            rx,
            pending: BTreeMap::new(),
            handles,
        }
    }
}

/// Progress shared by the consumer and the workers.
#[derive(Default)]
struct Window {
    /// Batches handed to a worker so far (claims are made in order).
    claimed: usize,
    /// Batches the consumer has taken.
    consumed: usize,
    /// No further claims: the epoch failed or the consumer went away.
    stop: bool,
}

struct Shared {
    window: Mutex<Window>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Window> {
        // Nothing panics while holding the lock, but a poisoned window is still consistent.
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_all();
    }
}

type Delivery = (usize, Result<Batch, EventError>);

struct WorkerJob {
    inner: Arc<Inner>,
    batches: Arc<[Vec<usize>]>,
    shared: Arc<Shared>,
    tx: Sender<Delivery>,
    epoch: u64,
}

impl WorkerJob {
    fn run(self) {
        let prefetch = self.inner.config.prefetch.max(1);
        loop {
            let k = {
                let mut w = self.shared.lock();
                while !w.stop
                    && w.claimed < self.batches.len()
                    && w.claimed >= w.consumed + prefetch
                {
                    w = self.shared.wake.wait(w).unwrap_or_else(|e| e.into_inner());
                }
                if w.stop || w.claimed >= self.batches.len() {
                    return;
                }
                w.claimed += 1;
                w.claimed - 1
            };
            let result = build_guarded(&self.inner, self.epoch, &self.batches[k]);
            let failed = result.is_err();
            if self.tx.send((k, result)).is_err() {
                return; // the consumer is gone
            }
            if failed {
                // Later batches would be thrown away: claim none.
                self.shared.stop();
                return;
            }
        }
    }
}

/// The batches of one epoch, in order. Yields `Err` once (for the first failing batch, naming
/// its file) and then ends; a worker panic is reported the same way, never propagated or hung on.
pub struct Epoch {
    inner: Arc<Inner>,
    epoch: u64,
    batches: Arc<[Vec<usize>]>,
    next: usize,
    done: bool,
    shared: Arc<Shared>,
    rx: Receiver<Delivery>,
    pending: BTreeMap<usize, Result<Batch, EventError>>,
    handles: Vec<JoinHandle<()>>,
}

impl Epoch {
    /// Number of batches this epoch yields in all.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    fn receive(&mut self, k: usize) -> Result<Batch, EventError> {
        if self.handles.is_empty() {
            return build_guarded(&self.inner, self.epoch, &self.batches[k]);
        }
        loop {
            if let Some(r) = self.pending.remove(&k) {
                return r;
            }
            match self.rx.recv() {
                Ok((j, r)) => {
                    self.pending.insert(j, r);
                }
                // Every worker has exited without delivering batch k; only reachable if a
                // worker died outside `catch_unwind`, but it must end the epoch, not hang it.
                Err(_) => {
                    let file = self.batches[k]
                        .first()
                        .map_or_else(PathBuf::new, |&i| self.inner.samples[i].path.clone());
                    return Err(EventError::Invalid {
                        file,
                        what: format!("loader workers stopped before building batch {k}"),
                    });
                }
            }
        }
    }
}

impl Iterator for Epoch {
    type Item = Result<Batch, EventError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.next >= self.batches.len() {
            self.done = true;
            return None;
        }
        let k = self.next;
        let result = self.receive(k);
        self.next += 1;
        self.shared.lock().consumed = self.next;
        self.shared.wake.notify_all();
        if result.is_err() {
            self.done = true;
            self.shared.stop();
        }
        Some(result)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.done {
            0
        } else {
            self.batches.len() - self.next
        };
        (0, Some(left))
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.shared.stop();
        for h in self.handles.drain(..) {
            // Workers catch their own panics; a join error would mean one escaped, and there
            // is nobody left to report it to.
            let _ = h.join();
        }
    }
}

/// Builds one batch with panics turned into an error naming the sample being read.
fn build_guarded(inner: &Inner, epoch: u64, indices: &[usize]) -> Result<Batch, EventError> {
    let mut current = None;
    match catch_unwind(AssertUnwindSafe(|| {
        build_batch(inner, epoch, indices, &mut current)
    })) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            let file = current.map_or_else(PathBuf::new, |i: usize| inner.samples[i].path.clone());
            Err(EventError::Invalid {
                file,
                what: format!("loader worker panicked while reading this sample: {msg}"),
            })
        }
    }
}

fn build_batch(
    inner: &Inner,
    epoch: u64,
    indices: &[usize],
    current: &mut Option<usize>,
) -> Result<Batch, EventError> {
    let b_len = indices.len();
    let mut frames: Option<Array5<f32>> = None;
    let mut labels = Vec::with_capacity(b_len);
    for (b, &i) in indices.iter().enumerate() {
        *current = Some(i);
        let sample = &inner.samples[i];
        let shift = inner.config.augment.draw(inner.config.seed, epoch, i);
        let f = (inner.load)(inner, i, &shift)?;
        let (t, c, h, w) = f.dim();
        // The batch shape comes from its first sample; every other must agree.
        let out = frames.get_or_insert_with(|| Array5::zeros((t, b_len, c, h, w)));
        let (bt, _, bc, bh, bw) = out.dim();
        if (t, c, h, w) != (bt, bc, bh, bw) || c != 2 {
            return Err(EventError::Invalid {
                file: sample.path.clone(),
                what: format!(
                    "framed to [{t}, {c}, {h}, {w}] but the batch holds [{bt}, 2, {bh}, {bw}] — samples from different sensors need FrameSpec::sensor"
                ),
            });
        }
        let src = f.as_standard_layout();
        let (Some(src), Some(dst)) = (src.as_slice(), out.as_slice_mut()) else {
            unreachable!("standard-layout arrays are contiguous");
        };
        write_shifted(src, dst, (t * 2, b_len, b), (h, w), &shift);
        labels.push(sample.label);
    }
    *current = None;
    Ok(Batch {
        frames: frames.unwrap_or_else(|| Array5::zeros((0, 0, 2, 0, 0))),
        labels,
        indices: indices.to_vec(),
    })
}

/// The default [`LoadFn`]: the frame cache when configured, else read and frame (with the
/// window start jittered by `shift.dt_us`).
fn load_frames(inner: &Inner, i: usize, shift: &Shift) -> Result<Array4<f32>, EventError> {
    let sample = &inner.samples[i];
    let named = |e| name_file(e, &sample.path);
    if let Some(cache) = &inner.cache {
        return cache
            .frames(sample, &inner.spec, &inner.config.read)
            .map_err(named);
    }
    if sample.range.is_none() && shift.dt_us == 0 {
        // The whole file with the spec as given: EventReader::read_frames gives the same
        // tensor and errors, and frames N-MNIST without building event columns.
        let mut out = FrameBuffer::new();
        EventReader::new(inner.config.read)
            .read_frames(&sample.path, &inner.spec, &mut out)
            .map_err(named)?;
        return Ok(out.into_array());
    }
    let events = sample.load(&inner.config.read)?;
    let spec = jittered(inner.spec, &events, shift.dt_us);
    frame(&events, &spec).map_err(named)
}

/// `spec` with its first window moved by `dt_us` (TimeWindow only; start = first event if unset).
fn jittered(mut spec: FrameSpec, events: &Events, dt_us: i64) -> FrameSpec {
    if let Slicing::TimeWindow { start, .. } = &mut spec.slicing
        && dt_us != 0
        && let Some(t0) = start.or(events.t.first().copied())
    {
        *start = Some(t0.saturating_add(dt_us));
    }
    spec
}

/// Framing errors (`EventError::Spec`) do not know the file; in a loader they come from one
/// sample's data (e.g. events outside the sensor), so name it.
fn name_file(e: EventError, file: &Path) -> EventError {
    match e {
        EventError::Spec(what) => EventError::Invalid {
            file: file.to_path_buf(),
            what: format!("invalid framing: {what}"),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(n: usize) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                path: PathBuf::from(format!("synthetic/{i}.bs2")),
                label: (i % 10) as u32,
                range: None,
            })
            .collect()
    }

    /// Frames whose every value is the sample index, so batches show where each sample went.
    fn fake(_: &Inner, i: usize, _: &Shift) -> Result<Array4<f32>, EventError> {
        Ok(Array4::from_elem((3, 2, 4, 5), i as f32))
    }

    fn panics_on_7(inner: &Inner, i: usize, s: &Shift) -> Result<Array4<f32>, EventError> {
        if i == 7 {
            panic!("boom on sample 7");
        }
        fake(inner, i, s)
    }

    /// Odd samples frame one column wider than even ones, as two sensors would.
    fn mixed_sizes(_: &Inner, i: usize, _: &Shift) -> Result<Array4<f32>, EventError> {
        Ok(Array4::zeros((3, 2, 4, 5 + i % 2)))
    }

    fn loader(n: usize, workers: usize, load: LoadFn) -> Loader {
        let config = LoaderConfig {
            workers,
            prefetch: 2,
            seed: 11,
            ..LoaderConfig::new(4)
        };
        let mut l = Loader::new(synthetic(n), FrameSpec::event_count(3), config).expect("loader");
        if let Some(inner) = Arc::get_mut(&mut l.inner) {
            inner.load = load;
        }
        l
    }

    #[test]
    fn batches_carry_their_samples_in_order() {
        let l = loader(10, 3, fake);
        let batches: Vec<Batch> = l.epoch(0).collect::<Result<_, _>>().expect("epoch");
        assert_eq!(batches.len(), 3);
        let order: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(order, l.order(0));
        for b in &batches {
            for (slot, &i) in b.indices.iter().enumerate() {
                let view = b.frames.index_axis(ndarray::Axis(1), slot);
                assert!(view.iter().all(|&v| v == i as f32));
            }
        }
        assert_eq!(batches[2].frames.dim(), (3, 2, 2, 4, 5));
    }

    #[test]
    fn a_worker_panic_ends_the_epoch_with_an_error_naming_the_file() {
        for workers in [0, 1, 4] {
            let l = loader(20, workers, panics_on_7);
            let position = l
                .order(0)
                .iter()
                .position(|&i| i == 7)
                .expect("7 is visited");
            let results: Vec<_> = l.epoch(0).collect();
            assert_eq!(results.len(), position / 4 + 1, "ends at the failing batch");
            let e = results
                .last()
                .expect("one")
                .as_ref()
                .expect_err("the last is the error");
            let msg = e.to_string();
            assert!(
                msg.contains("synthetic/7.bs2") && msg.contains("boom"),
                "{msg}"
            );
            assert!(results[..results.len() - 1].iter().all(Result::is_ok));
        }
    }

    #[test]
    fn differing_frame_shapes_are_an_error_naming_the_file() {
        let l = loader(8, 2, mixed_sizes);
        let e = l.epoch(0).find_map(Result::err).expect("mismatch");
        let msg = e.to_string();
        assert!(
            msg.contains("FrameSpec::sensor") && msg.contains("synthetic/"),
            "{msg}"
        );
    }

    #[test]
    fn dropping_an_epoch_early_joins_its_workers() {
        let l = loader(400, 4, fake);
        let mut epoch = l.epoch(0);
        assert!(epoch.next().is_some());
        drop(epoch);
        // Only the loader's own reference remains once every worker has exited.
        assert_eq!(Arc::strong_count(&l.inner), 1);
    }

    #[test]
    fn time_jitter_moves_the_window_start() {
        let mut ev = Events::new(Some((2, 2)));
        ev.push((1000, 0, 0, 1));
        let spec = FrameSpec::time_window(10, 2);
        let moved = jittered(spec, &ev, -5);
        assert!(matches!(
            moved.slicing,
            Slicing::TimeWindow {
                start: Some(995),
                ..
            }
        ));
        assert_eq!(jittered(spec, &ev, 0), spec);
        assert_eq!(jittered(spec, &Events::default(), 5), spec);
    }
}
