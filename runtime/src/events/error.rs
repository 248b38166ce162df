//! The one error type of the event-data layer: every reader, framer and writer returns it.
//! Each message names the file, where in it (byte offset or CSV line) and what to do next.

use std::path::{Path, PathBuf};

/// Everything that can go wrong reading, framing or writing event data.
///
/// `offset` fields are byte offsets from the start of the file; for AEDAT 4 packets they point at
/// the packet header, and `what` says where inside the decompressed payload the fault lies.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("{}: {source} — check that the path exists and is readable", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{}: truncated at byte offset {offset}: {what} needs {needed} bytes but only {available} remain — the file is incomplete; re-download or re-export it",
        file.display()
    )]
    Truncated {
        file: PathBuf,
        offset: u64,
        needed: u64,
        available: u64,
        what: &'static str,
    },

    #[error(
        "{}: corrupt data at byte offset {offset}: {what} — the file is damaged or not in the format its name suggests",
        file.display()
    )]
    Corrupt {
        file: PathBuf,
        offset: u64,
        what: String,
    },

    #[error(
        "{}: unsupported {format} version {found:?} at byte offset {offset}; supported: {supported} — convert the file (e.g. with dv-processing or jAER) to a supported version",
        file.display()
    )]
    UnsupportedVersion {
        file: PathBuf,
        offset: u64,
        format: &'static str,
        found: String,
        supported: &'static str,
    },

    #[error(
        "{}: cannot tell the event format (magic bytes {magic:02x?}) — use one of .aedat/.aedat4/.raw (EVT 3)/.bin/.bs2/.npy/.npz or call the format's reader directly",
        file.display()
    )]
    UnknownFormat { file: PathBuf, magic: Vec<u8> },

    #[error(
        "{}: event at byte offset {offset} has (x, y) = ({x}, {y}) outside the declared {width}x{height} sensor — the header's sensor size is wrong or the data is corrupt; override it with ReadOptions::sensor",
        file.display()
    )]
    OutOfRange {
        file: PathBuf,
        offset: u64,
        x: i64,
        y: i64,
        width: u16,
        height: u16,
    },

    #[error(
        "{}: timestamp goes backwards at byte offset {offset} ({t} after {previous}) — set ReadOptions::timestamps to TimestampPolicy::Allow to read it anyway",
        file.display()
    )]
    NonMonotonic {
        file: PathBuf,
        offset: u64,
        previous: i64,
        t: i64,
    },

    #[error(
        "{}:{line}: {what} — fix that line (expected `class,startTime_usec,endTime_usec` or `id<TAB>label`)",
        file.display()
    )]
    BadLine {
        file: PathBuf,
        line: usize,
        what: String,
    },

    #[error(
        "{}:{line}: label range ends at {end} µs, after the recording's last event at {recording_end} µs — the labels belong to another recording or the recording is truncated",
        file.display()
    )]
    LabelPastEnd {
        file: PathBuf,
        line: usize,
        end: i64,
        recording_end: i64,
    },

    #[error("{}: {what}", file.display())]
    Invalid { file: PathBuf, what: String },

    #[error("invalid framing: {0} — fix the FrameSpec")]
    Spec(String),
}

impl EventError {
    pub(crate) fn io(file: &Path, source: std::io::Error) -> Self {
        Self::Io {
            file: file.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(file: &Path, offset: u64, what: impl Into<String>) -> Self {
        Self::Corrupt {
            file: file.to_path_buf(),
            offset,
            what: what.into(),
        }
    }

    pub(crate) fn bad_line(file: &Path, line: usize, what: impl Into<String>) -> Self {
        Self::BadLine {
            file: file.to_path_buf(),
            line,
            what: what.into(),
        }
    }

    pub(crate) fn invalid(file: &Path, what: impl Into<String>) -> Self {
        Self::Invalid {
            file: file.to_path_buf(),
            what: what.into(),
        }
    }
}
