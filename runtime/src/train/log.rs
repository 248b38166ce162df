//! The JSON-lines run log `RUN_DIR/log.jsonl`: one object per epoch and split, appended and
//! flushed as it happens, and a reader that tolerates the torn last line a crash can leave.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TrainError;

/// File name of the run log inside a run directory.
pub const LOG_FILE: &str = "log.jsonl";

/// One line of the log: the metrics of one split after one epoch (or one evaluation).
/// Optional fields are omitted when unknown; a NaN loss is written as `null` (JSON has no NaN)
/// and so reads back as `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// 0-based epoch the record belongs to.
    pub epoch: usize,
    /// Optimiser steps taken so far.
    pub step: u64,
    /// `"train"`, `"test"`, `"val"`… (free text so new splits need no code change).
    pub split: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Fraction in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spikes_per_sample: Option<f64>,
    /// Spiking layer name → firing rate (spikes / (neurons × T)).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub firing_rates: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Estimated inference energy per sample, µJ (see `metrics::energy_report`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_uj: Option<f64>,
}

/// An open run log, appending one line per record.
#[derive(Debug)]
pub struct RunLog {
    path: PathBuf,
    file: File,
}

impl RunLog {
    /// Opens (creating the run directory and file if needed) `RUN_DIR/log.jsonl` for appending.
    /// If a crash left the last line without its newline, one is added first so the next record
    /// starts on a line of its own and the torn fragment stays an isolated, skippable line.
    pub fn open(run_dir: &Path) -> Result<Self, TrainError> {
        fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
        let path = run_dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        let len = file.metadata().map_err(|e| TrainError::io(&path, e))?.len();
        if len > 0 {
            let mut last = [0u8];
            file.seek(SeekFrom::Start(len - 1))
                .and_then(|_| file.read_exact(&mut last))
                .map_err(|e| TrainError::io(&path, e))?;
            if last[0] != b'\n' {
                file.write_all(b"\n")
                    .map_err(|e| TrainError::io(&path, e))?;
            }
        }
        Ok(RunLog { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record as a single line and flushes it to the OS. The line goes out in one
    /// `write` on an unbuffered append-mode file, so a crash can tear at most this line.
    pub fn append(&mut self, record: &LogRecord) -> Result<(), TrainError> {
        let mut line = serde_json::to_vec(record).map_err(|e| TrainError::Json {
            path: self.path.clone(),
            line: None,
            source: e,
        })?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.flush())
            .map_err(|e| TrainError::io(&self.path, e))
    }

    /// Forces the log to disk (e.g. right after a checkpoint); `append` only flushes to the OS.
    pub fn sync(&self) -> Result<(), TrainError> {
        self.file
            .sync_data()
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

/// The parsed log plus what was skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogContents {
    pub records: Vec<LogRecord>,
    /// One message per skipped torn line (file and line number); print them as warnings.
    pub warnings: Vec<String>,
}

/// Reads `RUN_DIR/log.jsonl`. A line cut short by a crash (JSON that ends early) is skipped
/// with a warning; any other malformed line is an error naming the file and line.
pub fn read_log(run_dir: &Path) -> Result<LogContents, TrainError> {
    read_log_file(&run_dir.join(LOG_FILE))
}

/// As [`read_log`], for a log at any path.
pub fn read_log_file(path: &Path) -> Result<LogContents, TrainError> {
    let bytes = fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let mut out = LogContents::default();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<LogRecord>(line) {
            Ok(r) => out.records.push(r),
            // A torn write is a prefix of a valid line: serde reports it as unexpected EOF.
            // (A torn line in the middle comes from a crashed run that was later resumed.)
            Err(e) if e.is_eof() => out.warnings.push(format!(
                "{} line {}: skipped an incomplete record (torn by an interrupted write)",
                path.display(),
                i + 1
            )),
            Err(e) => {
                return Err(TrainError::Json {
                    path: path.to_path_buf(),
                    line: Some(i + 1),
                    source: e,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, split: &str, loss: f64) -> LogRecord {
        LogRecord {
            epoch,
            step: epoch as u64 * 10,
            split: split.into(),
            loss: Some(loss),
            accuracy: Some(0.5),
            firing_rates: BTreeMap::from([("lif0".to_string(), 0.125)]),
            ..Default::default()
        }
    }

    #[test]
    fn append_and_read_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = RunLog::open(dir.path()).expect("open");
        log.append(&record(0, "train", 1.5)).expect("append");
        log.append(&record(0, "test", f64::NAN)).expect("append");
        drop(log);
        let got = read_log(dir.path()).expect("read");
        assert!(got.warnings.is_empty());
        assert_eq!(got.records.len(), 2);
        assert_eq!(got.records[0], record(0, "train", 1.5));
        assert_eq!(got.records[1].loss, None, "NaN is written as null");
    }

    #[test]
    fn torn_last_line_is_skipped_and_reopening_starts_a_fresh_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = RunLog::open(dir.path()).expect("open");
        log.append(&record(0, "train", 1.0)).expect("append");
        drop(log);
        let path = dir.path().join(LOG_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(br#"{"epoch":1,"step":10,"split":"tr"#)
            .expect("write");
        drop(f);
        let got = read_log(dir.path()).expect("read");
        assert_eq!(got.records.len(), 1);
        assert_eq!(got.warnings.len(), 1);
        assert!(got.warnings[0].contains("line 2"), "{:?}", got.warnings);
        // Resuming appends after the fragment, on a new line.
        let mut log = RunLog::open(dir.path()).expect("open");
        log.append(&record(1, "train", 0.5)).expect("append");
        let got = read_log(dir.path()).expect("read");
        assert_eq!(got.records.len(), 2);
        assert_eq!(got.records[1].epoch, 1);
        assert_eq!(got.warnings.len(), 1);
    }

    #[test]
    fn garbage_line_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().expect("tmp");
        fs::write(
            dir.path().join(LOG_FILE),
            "{\"epoch\":0,\"step\":0,\"split\":\"train\"}\nnot json\n",
        )
        .expect("write");
        let err = read_log(dir.path()).expect_err("must fail").to_string();
        assert!(err.contains("log.jsonl line 2"), "{err}");
        let err = read_log(&dir.path().join("missing"))
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
