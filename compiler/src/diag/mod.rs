//! Diagnostics shared by every stage: spans into a source map, errors with codes, labels, notes
//! and help, rendered rustc-style through codespan-reporting. Errors are values, never panics.

mod codes;

pub use codes::{ErrorCode, explain};

use codespan_reporting::{
    diagnostic::{Diagnostic as CsDiagnostic, Label as CsLabel},
    files::SimpleFiles,
    term::{self, Config},
};
use std::path::{Path, PathBuf};

/// Index of a source file in a [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub usize);

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    pub file: FileId,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Self {
        Span { file, start, end }
    }

    /// The smallest span covering both (same file assumed; falls back to `self` otherwise).
    pub fn to(self, other: Span) -> Span {
        if self.file != other.file {
            return self;
        }
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// Every source text the compiler has read, user files and embedded stdlib alike.
#[derive(Default)]
pub struct SourceMap {
    files: SimpleFiles<String, String>,
    paths: Vec<PathBuf>,
}

impl SourceMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, path: impl AsRef<Path>, text: String) -> FileId {
        let path = path.as_ref().to_path_buf();
        let id = self.files.add(path.display().to_string(), text);
        self.paths.push(path);
        FileId(id)
    }

    pub fn text(&self, file: FileId) -> &str {
        self.files
            .get(file.0)
            .map(|f| f.source().as_str())
            .unwrap_or("")
    }

    pub fn path(&self, file: FileId) -> &Path {
        self.paths
            .get(file.0)
            .map(PathBuf::as_path)
            .unwrap_or(Path::new("<unknown>"))
    }

    /// Finds an already loaded file by path, so imports are read once.
    pub fn find(&self, path: &Path) -> Option<FileId> {
        self.paths.iter().position(|p| p == path).map(FileId)
    }

    /// 1-based (line, column) of a byte offset.
    pub fn line_col(&self, file: FileId, offset: usize) -> (usize, usize) {
        let text = self.text(file);
        let offset = offset.min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(before.chars().count(), |nl| {
            before[nl + 1..].chars().count()
        }) + 1;
        (line, col)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug)]
pub struct Label {
    pub span: Span,
    pub message: String,
    pub primary: bool,
}

/// One user-facing message. Built with the chained constructors, never by formatting at call sites.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: ErrorCode,
    pub message: String,
    pub labels: Vec<Label>,
    pub notes: Vec<String>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            labels: Vec::new(),
            notes: Vec::new(),
            help: None,
        }
    }

    pub fn warning(code: ErrorCode, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Self::error(code, message)
        }
    }

    pub fn primary(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
            primary: true,
        });
        self
    }

    pub fn secondary(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
            primary: false,
        });
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds "did you mean" help when a close candidate exists.
    pub fn suggest<'a>(self, unknown: &str, candidates: impl IntoIterator<Item = &'a str>) -> Self {
        match closest(unknown, candidates) {
            Some(best) => self.help(format!("did you mean `{best}`?")),
            None => self,
        }
    }

    /// Re-anchors an error found inside a definition at the place that used it (when the two
    /// differ), keeping the definition's location as a secondary label.
    pub fn at_use(mut self, use_span: Span, what: &str) -> Self {
        if self
            .labels
            .iter()
            .any(|l| l.primary && l.span.file == use_span.file)
        {
            return self;
        }
        for l in &mut self.labels {
            l.primary = false;
        }
        self.labels.insert(
            0,
            Label {
                span: use_span,
                message: format!("{what} used here"),
                primary: true,
            },
        );
        self
    }

    pub fn primary_span(&self) -> Option<Span> {
        self.labels.iter().find(|l| l.primary).map(|l| l.span)
    }
}

/// The candidate nearest to `unknown` by edit distance, if it is plausibly a typo.
pub fn closest<'a>(
    unknown: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (unknown.chars().count() / 3).max(1) + usize::from(unknown.len() > 5);
    candidates
        .into_iter()
        .filter(|c| *c != unknown)
        .map(|c| {
            (
                strsim::damerau_levenshtein(&unknown.to_lowercase(), &c.to_lowercase()),
                c,
            )
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

/// Collects diagnostics of a whole run so that one invocation reports every error it can find.
#[derive(Default, Debug)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Adds `d` unless the same message at the same place is already there (a definition
    /// instantiated many times reports its error once).
    pub fn push(&mut self, d: Diagnostic) {
        let seen = self.items.iter().any(|o| {
            o.code == d.code && o.message == d.message && o.primary_span() == d.primary_span()
        });
        if !seen {
            self.items.push(d);
        }
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn error_count(&self) -> usize {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub fn extend(&mut self, other: Diagnostics) {
        for d in other.items {
            self.push(d);
        }
    }

    /// Renders every diagnostic as plain text, as terminals, pipes and snapshots all take it.
    pub fn render_plain(&self, sources: &SourceMap) -> String {
        let config = Config::default();
        let mut out = String::new();
        for d in &self.items {
            if term::emit_to_string(&mut out, &config, &sources.files, &to_codespan(d)).is_err() {
                out.push_str(&format!("error[{}]: {}\n", d.code.as_str(), d.message));
            }
        }
        let errors = self.error_count();
        if errors > 0 {
            let plural = if errors == 1 { "" } else { "s" };
            out.push_str(&format!(
                "error: aborting due to {errors} previous error{plural}\n"
            ));
        }
        out
    }
}

fn to_codespan(d: &Diagnostic) -> CsDiagnostic<usize> {
    let base = match d.severity {
        Severity::Error => CsDiagnostic::error(),
        Severity::Warning => CsDiagnostic::warning(),
    };
    let mut notes = d.notes.clone();
    if let Some(help) = &d.help {
        notes.push(format!("help: {help}"));
    }
    base.with_message(&d.message)
        .with_code(d.code.as_str())
        .with_notes(notes)
        .with_labels(
            d.labels
                .iter()
                .map(|l| {
                    let label = if l.primary {
                        CsLabel::primary(l.span.file.0, l.span.start..l.span.end)
                    } else {
                        CsLabel::secondary(l.span.file.0, l.span.start..l.span.end)
                    };
                    label.with_message(&l.message)
                })
                .collect(),
        )
}
