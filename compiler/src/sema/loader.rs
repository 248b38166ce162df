//! Loads a root file and everything it imports (user files relative to the importer, `std.*`
//! from the stdlib embedded in the binary), and builds each file's scope of visible names.

use crate::diag::{Diagnostic, Diagnostics, ErrorCode, FileId, SourceMap, Span};
use crate::syntax::{self, ast};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The stdlib modules, embedded so the binary works from any directory.
pub const STDLIB: &[(&str, &str)] = &[
    ("surrogates", include_str!("../../../stdlib/surrogates.snn")),
    ("neurons", include_str!("../../../stdlib/neurons.snn")),
    ("attention", include_str!("../../../stdlib/attention.snn")),
    ("blocks", include_str!("../../../stdlib/blocks.snn")),
    ("networks", include_str!("../../../stdlib/networks.snn")),
];

/// A definition: file and index of the item in that file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DefId {
    pub file: FileId,
    pub index: usize,
}

pub struct LoadedFile {
    pub ast: ast::File,
    /// Every name visible in this file: its own items and the imported ones.
    pub scope: HashMap<String, DefId>,
}

/// All parsed files of one compilation.
pub struct Program {
    pub sources: SourceMap,
    pub files: HashMap<FileId, LoadedFile>,
    pub root: Option<FileId>,
}

impl Program {
    pub fn item(&self, def: DefId) -> Option<&ast::Item> {
        self.files
            .get(&def.file)
            .and_then(|f| f.ast.items.get(def.index))
    }

    pub fn scope(&self, file: FileId) -> Option<&HashMap<String, DefId>> {
        self.files.get(&file).map(|f| &f.scope)
    }
}

/// Names defined anywhere in the stdlib, for "import it from ..." help.
pub fn stdlib_home(name: &str) -> Option<&'static str> {
    STDLIB.iter().find_map(|(module, text)| {
        let defines = text.lines().any(|line| {
            let mut words = line.split_whitespace();
            matches!(
                words.next(),
                Some("neuron" | "surrogate" | "attention" | "block" | "model")
            ) && words
                .next()
                .is_some_and(|w| w.split(['(', '=', '{']).next() == Some(name))
        });
        defines.then_some(*module)
    })
}

struct Loader {
    program: Program,
    diags: Diagnostics,
    /// Files currently being loaded, for import-cycle detection.
    stack: Vec<FileId>,
}

/// Parses `root` (already read into `text`) and all its imports.
pub fn load(path: &Path, text: String) -> (Program, Diagnostics) {
    let mut loader = Loader {
        program: Program {
            sources: SourceMap::new(),
            files: HashMap::new(),
            root: None,
        },
        diags: Diagnostics::default(),
        stack: Vec::new(),
    };
    let root = loader.load_file(path.to_path_buf(), text);
    loader.program.root = root;
    (loader.program, loader.diags)
}

fn stdlib_path(module: &str) -> PathBuf {
    PathBuf::from(format!("<std>/{module}.snn"))
}

impl Loader {
    fn load_file(&mut self, path: PathBuf, text: String) -> Option<FileId> {
        let id = self.program.sources.add(&path, text);
        let source = self.program.sources.text(id).to_string();
        let ast = match syntax::parse(id, &source) {
            Ok(ast) => ast,
            Err(d) => {
                self.diags.push(d);
                return None;
            }
        };
        self.stack.push(id);
        let mut scope: HashMap<String, DefId> = HashMap::new();
        let mut spans: HashMap<String, Span> = HashMap::new();
        for import in &ast.imports {
            self.import(&path, import, &mut scope, &mut spans);
        }
        for (index, item) in ast.items.iter().enumerate() {
            let name = item.name();
            if let Some(previous) = spans.get(&name.name) {
                let own = scope.get(&name.name).is_some_and(|d| d.file == id);
                self.diags.push(
                    Diagnostic::error(
                        ErrorCode::Duplicate,
                        format!("`{}` is defined more than once", name.name),
                    )
                    .primary(
                        name.span,
                        format!("{} `{}` redefined here", item.kind(), name.name),
                    )
                    .secondary(
                        *previous,
                        if own {
                            "first defined here"
                        } else {
                            "imported here"
                        },
                    )
                    .help("rename one of the definitions"),
                );
                continue;
            }
            scope.insert(name.name.clone(), DefId { file: id, index });
            spans.insert(name.name.clone(), name.span);
        }
        self.stack.pop();
        self.program.files.insert(id, LoadedFile { ast, scope });
        Some(id)
    }

    fn resolve_module(&mut self, importer: &Path, import: &ast::Import) -> Option<FileId> {
        let segments: Vec<&str> = import
            .path
            .segments
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        let (path, text) = if segments.first() == Some(&"std") {
            let module = segments.get(1).copied().unwrap_or("");
            match STDLIB.iter().find(|(m, _)| *m == module) {
                Some((m, text)) if segments.len() == 2 => (stdlib_path(m), (*text).to_string()),
                _ => {
                    let known: Vec<&str> = STDLIB.iter().map(|(m, _)| *m).collect();
                    self.diags.push(
                        Diagnostic::error(
                            ErrorCode::ImportNotFound,
                            format!("no stdlib module `{}`", import.path.dotted()),
                        )
                        .primary(import.path.span, "not in the standard library")
                        .suggest(module, known.iter().copied())
                        .note(format!(
                            "stdlib modules: {}",
                            known
                                .iter()
                                .map(|m| format!("std.{m}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    );
                    return None;
                }
            }
        } else {
            let base = importer.parent().unwrap_or(Path::new("."));
            let mut path = base.to_path_buf();
            for s in &segments {
                path.push(s);
            }
            path.set_extension("snn");
            match std::fs::read_to_string(&path) {
                Ok(text) => (path, text),
                Err(e) => {
                    self.diags.push(
                        Diagnostic::error(ErrorCode::ImportNotFound, format!("cannot import `{}`", import.path.dotted()))
                            .primary(import.path.span, format!("{}: {e}", path.display()))
                            .help("imports name a `.snn` file relative to the importing file (`import layers.conv` reads `layers/conv.snn`), or a stdlib module `std.<name>`"),
                    );
                    return None;
                }
            }
        };
        if let Some(existing) = self.program.sources.find(&path) {
            if self.stack.contains(&existing) {
                self.diags.push(
                    Diagnostic::error(
                        ErrorCode::Cycle,
                        format!("import cycle through `{}`", import.path.dotted()),
                    )
                    .primary(
                        import.path.span,
                        "this import leads back to a file that is still being loaded",
                    )
                    .help("move the shared definitions into a third file that both import"),
                );
                return None;
            }
            return self
                .program
                .files
                .contains_key(&existing)
                .then_some(existing);
        }
        self.load_file(path, text)
    }

    fn import(
        &mut self,
        importer: &Path,
        import: &ast::Import,
        scope: &mut HashMap<String, DefId>,
        spans: &mut HashMap<String, Span>,
    ) {
        let Some(module) = self.resolve_module(importer, import) else {
            return;
        };
        let Some(module_scope) = self.program.files.get(&module).map(|f| {
            // Only the module's own definitions are re-exported, not what it imported.
            f.scope
                .iter()
                .filter(|(_, d)| d.file == module)
                .map(|(k, v)| (k.clone(), *v))
                .collect::<Vec<_>>()
        }) else {
            return;
        };
        let mut add = |name: &str, def: DefId, span: Span, diags: &mut Diagnostics| {
            if let Some(previous) = spans.get(name) {
                if scope.get(name) != Some(&def) {
                    diags.push(
                        Diagnostic::error(
                            ErrorCode::Duplicate,
                            format!("`{name}` is imported twice"),
                        )
                        .primary(span, "second import")
                        .secondary(*previous, "first import")
                        .help("import only one of them"),
                    );
                }
                return;
            }
            scope.insert(name.to_string(), def);
            spans.insert(name.to_string(), span);
        };
        match &import.names {
            ast::ImportNames::All => {
                let mut sorted = module_scope;
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                for (name, def) in sorted {
                    add(&name, def, import.span, &mut self.diags);
                }
            }
            ast::ImportNames::Some(names) => {
                for n in names {
                    match module_scope.iter().find(|(k, _)| *k == n.name) {
                        Some((_, def)) => add(&n.name, *def, n.span, &mut self.diags),
                        None => self.diags.push(
                            Diagnostic::error(
                                ErrorCode::UnknownName,
                                format!(
                                    "`{}` is not defined in `{}`",
                                    n.name,
                                    import.path.dotted()
                                ),
                            )
                            .primary(n.span, "not found in this module")
                            .suggest(&n.name, module_scope.iter().map(|(k, _)| k.as_str())),
                        ),
                    }
                }
            }
        }
    }
}
