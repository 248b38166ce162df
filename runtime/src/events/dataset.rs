//! Dataset layouts as sample lists — N-MNIST label lists, folder-per-class trees, DVS128 Gesture
//! trials — plus a disk cache of framed tensors keyed by source-file content and framing parameters.

use std::fs;
use std::path::{Path, PathBuf};

use ndarray::Array4;

use super::detect::read_events;
use super::error::EventError;
use super::frame::{FrameSpec, frame};
use super::io::map_file;
use super::labels::{read_labels, split_by_labels};
use super::npy::{load_frames_npy, save_frames_npy};
use super::types::{Events, ReadOptions};

/// Extensions treated as event files when scanning folders.
const EVENT_EXTENSIONS: &[&str] = &["aedat", "aedat4", "bin", "bs2", "npy", "npz"];

/// One labelled sample: a file, optionally only its events with `start <= t < end`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sample {
    pub path: PathBuf,
    pub label: u32,
    pub range: Option<(i64, i64)>,
}

impl Sample {
    /// Reads the sample's events (the whole file, cut to `range` if any).
    pub fn load(&self, opts: &ReadOptions) -> Result<Events, EventError> {
        let events = read_events(&self.path, opts)?.events;
        Ok(match self.range {
            Some((start, end)) => events.time_range(start, end),
            None => events,
        })
    }
}

/// Which half of a dataset's standard split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// An N-MNIST-style label list (`train1K.txt`, `test100.txt`): `#` comment lines, then
/// `id<TAB>label` (any whitespace, LF or CRLF); sample `id` is `<list dir>/<id>.bs2`.
pub fn nmnist_list(list_file: impl AsRef<Path>) -> Result<Vec<Sample>, EventError> {
    let file = list_file.as_ref();
    let dir = file.parent().unwrap_or(Path::new("."));
    let text = fs::read_to_string(file).map_err(|e| EventError::io(file, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: String| EventError::bad_line(file, i + 1, what);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [id, label] = fields.as_slice() else {
            return Err(bad(format!(
                "{} fields, expected `id<TAB>label`",
                fields.len()
            )));
        };
        let id: u64 = id
            .parse()
            .map_err(|_| bad(format!("sample id {id:?} is not a number")))?;
        let label: u32 = label
            .parse()
            .map_err(|_| bad(format!("label {label:?} is not a number")))?;
        let path = dir.join(format!("{id}.bs2"));
        if !path.is_file() {
            return Err(bad(format!(
                "sample file {} does not exist",
                path.display()
            )));
        }
        out.push(Sample {
            path,
            label,
            range: None,
        });
    }
    Ok(out)
}

/// A `root/<class>/<file>` tree: classes are the sub-directories in name order (label = index),
/// samples the event files inside, in name order. Returns the class names and the samples.
pub fn folder_per_class(root: impl AsRef<Path>) -> Result<(Vec<String>, Vec<Sample>), EventError> {
    let root = root.as_ref();
    let classes: Vec<PathBuf> = sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    let mut names = Vec::with_capacity(classes.len());
    let mut samples = Vec::new();
    for (label, dir) in classes.iter().enumerate() {
        let label =
            u32::try_from(label).map_err(|_| EventError::invalid(root, "too many classes"))?;
        names.push(
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        for path in sorted_entries(dir)? {
            let is_event = path.extension().is_some_and(|e| {
                EVENT_EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str())
            });
            if path.is_file() && is_event {
                samples.push(Sample {
                    path,
                    label,
                    range: None,
                });
            }
        }
    }
    Ok((names, samples))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, EventError> {
    let mut out = fs::read_dir(dir)
        .map_err(|e| EventError::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| EventError::io(dir, e)))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    Ok(out)
}

/// The DVS128 Gesture layout: `trials_to_train.txt` / `trials_to_test.txt` list recordings such
/// as `user01_fluorescent.aedat`, each with `user01_fluorescent_labels.csv` beside it. One sample
/// per CSV row; label = CSV class − 1 (so 0..=10).
pub fn dvs_gesture(root: impl AsRef<Path>, split: Split) -> Result<Vec<Sample>, EventError> {
    let root = root.as_ref();
    let list = root.join(match split {
        Split::Train => "trials_to_train.txt",
        Split::Test => "trials_to_test.txt",
    });
    let text = fs::read_to_string(&list).map_err(|e| EventError::io(&list, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let name = line.trim();
        if name.is_empty() {
            continue;
        }
        let Some(stem) = name.strip_suffix(".aedat") else {
            return Err(EventError::bad_line(
                &list,
                i + 1,
                format!("{name:?} is not an .aedat file name"),
            ));
        };
        let path = root.join(name);
        if !path.is_file() {
            return Err(EventError::bad_line(
                &list,
                i + 1,
                format!("recording {} does not exist", path.display()),
            ));
        }
        let csv = root.join(format!("{stem}_labels.csv"));
        for l in read_labels(&csv)? {
            let label = l.class.checked_sub(1).ok_or_else(|| {
                EventError::bad_line(&csv, l.line, "class 0; DVS128 Gesture classes start at 1")
            })?;
            out.push(Sample {
                path: path.clone(),
                label,
                range: Some((l.start, l.end)),
            });
        }
    }
    Ok(out)
}

/// Splits every recording of a DVS128 Gesture split into its labelled event slices, reading each
/// recording once and checking that no label runs past its recording.
pub fn load_dvs_gesture(
    root: impl AsRef<Path>,
    split: Split,
    opts: &ReadOptions,
) -> Result<Vec<(Sample, Events)>, EventError> {
    let samples = dvs_gesture(root, split)?;
    let mut out = Vec::with_capacity(samples.len());
    let mut i = 0;
    while i < samples.len() {
        let path = &samples[i].path;
        let n = samples[i..].iter().take_while(|s| &s.path == path).count();
        let events = read_events(path, opts)?.events;
        let stem = path.with_extension("");
        let csv = PathBuf::from(format!("{}_labels.csv", stem.display()));
        let labels = read_labels(&csv)?;
        for (s, cut) in samples[i..i + n]
            .iter()
            .zip(split_by_labels(&events, &labels, &csv)?)
        {
            out.push((s.clone(), cut.events));
        }
        i += n;
    }
    Ok(out)
}

/// A directory of framed tensors, one `.npy` per (source content, sample range, framing, read
/// options). Keys hash the file's bytes, so edited or replaced recordings never hit stale entries.
#[derive(Debug, Clone)]
pub struct FrameCache {
    dir: PathBuf,
}

/// Bump when the framing code changes meaning, to orphan older entries.
const CACHE_VERSION: u32 = 1;

impl FrameCache {
    /// Opens (creating if needed) a cache directory.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self, EventError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| EventError::io(&dir, e))?;
        Ok(Self { dir })
    }

    /// The cache file a sample framed with `spec` maps to.
    pub fn entry(
        &self,
        sample: &Sample,
        spec: &FrameSpec,
        opts: &ReadOptions,
    ) -> Result<PathBuf, EventError> {
        let content = twox_hash::XxHash3_128::oneshot(&map_file(&sample.path)?);
        let params = format!(
            "v{CACHE_VERSION}|{:?}|{}|{:?}|{:?}",
            sample.range,
            spec.cache_key(),
            opts.sensor,
            opts.timestamps
        );
        let params = twox_hash::XxHash3_128::oneshot(params.as_bytes()) as u64;
        Ok(self.dir.join(format!("{content:032x}-{params:016x}.npy")))
    }

    /// The sample's frames: from the cache when present, else computed and stored atomically.
    pub fn frames(
        &self,
        sample: &Sample,
        spec: &FrameSpec,
        opts: &ReadOptions,
    ) -> Result<Array4<f32>, EventError> {
        let entry = self.entry(sample, spec, opts)?;
        if entry.is_file() {
            // An unreadable entry (e.g. written by an incompatible version) is recomputed.
            if let Ok(frames) = load_frames_npy(&entry) {
                return Ok(frames);
            }
        }
        let frames = frame(&sample.load(opts)?, spec)?;
        save_frames_npy(&frames, &entry)?;
        Ok(frames)
    }
}
