//! DVS128 Gesture label files (`class,startTime_usec,endTime_usec`) and splitting a recording
//! into labelled samples by those time ranges.

use std::path::Path;

use super::error::EventError;
use super::io::map_file;
use super::types::Events;

const HEADER: &str = "class,startTime_usec,endTime_usec";

/// One labelled time range; `line` is its 1-based line in the CSV, kept for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    pub class: u32,
    pub start: i64,
    pub end: i64,
    pub line: usize,
}

/// A labelled slice of a recording: the events with `start <= t < end`.
#[derive(Debug, Clone)]
pub struct LabelledSample {
    pub class: u32,
    pub start: i64,
    pub end: i64,
    pub events: Events,
}

/// Reads a DVS128 Gesture `*_labels.csv` file.
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<Label>, EventError> {
    let path = path.as_ref();
    let bytes = map_file(path)?;
    parse(&bytes, path)
}

/// Parses label CSV bytes held in memory; errors name the file as `<memory>`.
pub fn from_bytes(bytes: &[u8]) -> Result<Vec<Label>, EventError> {
    parse(bytes, Path::new("<memory>"))
}

pub(crate) fn parse(bytes: &[u8], file: &Path) -> Result<Vec<Label>, EventError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        EventError::bad_line(file, line, "not UTF-8 text")
    })?;
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    match lines.next() {
        Some((_, h)) if h.eq_ignore_ascii_case(HEADER) => {}
        Some((n, h)) => {
            return Err(EventError::bad_line(
                file,
                n,
                format!("header is {h:?}, expected {HEADER:?}"),
            ));
        }
        None => return Err(EventError::bad_line(file, 1, "empty label file")),
    }
    let mut out = Vec::new();
    for (n, line) in lines.filter(|(_, l)| !l.is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [class, start, end] = fields.as_slice() else {
            return Err(EventError::bad_line(
                file,
                n,
                format!("{} fields, expected 3", fields.len()),
            ));
        };
        let num = |s: &str, what| {
            s.parse::<i64>().map_err(|_| {
                EventError::bad_line(file, n, format!("{what} {s:?} is not an integer"))
            })
        };
        let class = u32::try_from(num(class, "class")?)
            .map_err(|_| EventError::bad_line(file, n, "class is negative or too large"))?;
        let (start, end) = (num(start, "start time")?, num(end, "end time")?);
        if start >= end {
            return Err(EventError::bad_line(
                file,
                n,
                format!("start {start} is not before end {end}"),
            ));
        }
        out.push(Label {
            class,
            start,
            end,
            line: n,
        });
    }
    Ok(out)
}

/// Cuts `events` into one sample per label (`start <= t < end`). A label that ends after the last
/// event is an error: the labels then belong to another or a truncated recording.
pub fn split_by_labels(
    events: &Events,
    labels: &[Label],
    labels_file: impl AsRef<Path>,
) -> Result<Vec<LabelledSample>, EventError> {
    let file = labels_file.as_ref();
    let recording_end = events.t.iter().copied().max().unwrap_or(i64::MIN);
    labels
        .iter()
        .map(|l| {
            if l.end > recording_end {
                return Err(EventError::LabelPastEnd {
                    file: file.to_path_buf(),
                    line: l.line,
                    end: l.end,
                    recording_end,
                });
            }
            Ok(LabelledSample {
                class: l.class,
                start: l.start,
                end: l.end,
                events: events.time_range(l.start, l.end),
            })
        })
        .collect()
}
