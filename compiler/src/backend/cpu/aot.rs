//! Ahead-of-time compilation: `<model>.o` (cranelift-object), `lib<model>.so` (linked by the
//! system `cc`), `<model>.h` (C prototypes and buffer sizes) and `<model>.json` (the manifest).

use super::manifest::Manifest;
use super::translate::{define_packed_entry, translate_module};
use super::{BackendError, host_isa, lower_to_llvm_with, target_description};
use crate::ir::Graph;
use crate::mlir::LowerOptions;
use crate::mlir::context::new_context;
use crate::mlir::lower::LoopForm;
use cranelift_module::Linkage;
use cranelift_object::{ObjectBuilder, ObjectModule};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The files `build_aot` wrote.
#[derive(Clone, Debug)]
pub struct AotArtifacts {
    pub object: PathBuf,
    /// `None` when no C compiler was found to link it (the object file is still written).
    pub shared_library: Option<PathBuf>,
    pub header: PathBuf,
    pub manifest: PathBuf,
    /// Why there is no shared library, when there is none.
    pub link_note: Option<String>,
}

/// Compiles `g`'s forward pass at `opts.batch` for this host and writes the artifacts into
/// `dir` (created if missing). Every file is written atomically.
pub fn build_aot(g: &Graph, opts: &LowerOptions, dir: &Path) -> Result<AotArtifacts, BackendError> {
    let context = new_context();
    // Plain loops: the shared library must not depend on the runtime's kernel symbols.
    let mlir = lower_to_llvm_with(&context, &[g], opts, LoopForm::Nested)?;
    let isa = host_isa(true)?;
    let target = target_description(&*isa);
    let builder = ObjectBuilder::new(
        isa,
        g.name.as_str(),
        cranelift_module::default_libcall_names(),
    )
    .map_err(|e| BackendError::new(format!("cannot create the object module: {e}")))?;
    let mut module = ObjectModule::new(builder);
    let translation = translate_module(&mlir, &mut module, false)?;
    let manifest = Manifest::new(g, opts, &target)?;
    let forward = translation
        .defined
        .iter()
        .find(|(name, _)| *name == manifest.symbol)
        .map(|(_, id)| *id)
        .ok_or_else(|| BackendError::new(format!("the module defines no @{}", manifest.symbol)))?;
    define_packed_entry(
        &mut module,
        &manifest.packed_symbol,
        forward,
        manifest.buffers.len(),
        Linkage::Export,
    )?;
    let bytes = module
        .finish()
        .emit()
        .map_err(|e| BackendError::new(format!("cannot emit the object file: {e}")))?;

    std::fs::create_dir_all(dir)
        .map_err(|e| BackendError::new(format!("cannot create `{}`: {e}", dir.display())))?;
    let object = dir.join(format!("{}.o", g.name));
    let header = dir.join(format!("{}.h", g.name));
    let json = dir.join(format!("{}.json", g.name));
    write_atomic(&object, &bytes)?;
    write_atomic(&header, c_header(&manifest).as_bytes())?;
    write_atomic(&json, manifest.to_json().as_bytes())?;

    let lib = dir.join(format!("lib{}.so", g.name));
    let (shared_library, link_note) = match link_shared(&object, &lib) {
        Ok(()) => (Some(lib), None),
        Err(note) => (None, Some(note)),
    };
    Ok(AotArtifacts {
        object,
        shared_library,
        header,
        manifest: json,
        link_note,
    })
}

/// `cc -shared -o lib.so obj.o -lm`, through a temporary name so that a failed link never
/// leaves a half-written library behind.
fn link_shared(object: &Path, lib: &Path) -> Result<(), String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let tmp = lib.with_extension("so.tmp-snnc");
    let out = Command::new(&cc)
        .arg("-shared")
        .arg("-o")
        .arg(&tmp)
        .arg(object)
        .arg("-lm")
        .output();
    match out {
        Err(e) => Err(format!(
            "no shared library: cannot run `{cc}` ({e}); link `{}` yourself",
            object.display()
        )),
        Ok(out) if !out.status.success() => {
            let _ = std::fs::remove_file(&tmp);
            Err(format!(
                "no shared library: `{cc} -shared` failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
        Ok(_) => std::fs::rename(&tmp, lib).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write `{}`: {e}", lib.display())
        }),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BackendError> {
    let tmp = path.with_extension("tmp-snnc");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            BackendError::new(format!("cannot write `{}`: {e}", path.display()))
        })
}

/// A C identifier for a buffer name (`bn0.running_mean` → `bn0_running_mean`), unique in `used`.
fn c_ident(name: &str, used: &mut Vec<String>) -> String {
    let mut id: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if id.is_empty() || id.starts_with(|c: char| c.is_ascii_digit()) {
        id.insert_str(0, "arg_");
    }
    let base = id.clone();
    let mut k = 2;
    while used.contains(&id) {
        id = format!("{base}_{k}");
        k += 1;
    }
    used.push(id.clone());
    id
}

/// The C header: the forward prototype with a comment per argument, the packed entry point, and
/// macros with the argument count, sizes and roles so that C callers need not parse the JSON.
pub fn c_header(m: &Manifest) -> String {
    let guard = format!(
        "SNNC_{}_H",
        m.model
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            })
            .collect::<String>()
    );
    let p = &m.model;
    let mut h = String::new();
    let _ = writeln!(
        h,
        "/* Generated by snnc: the forward pass of model `{p}` at batch {}.\n * Target: {}.\n *\n * Every argument is a dense row-major float32 buffer owned by the caller, in the order\n * below: inputs, then parameters and batchnorm running statistics (`state`, updated in\n * place: train-mode batchnorm), then outputs (overwritten). Reentrant: temporaries are\n * malloc'ed and freed per call. Link with -l{p} (and -lm). */",
        m.batch, m.target
    );
    let _ = writeln!(h, "#ifndef {guard}\n#define {guard}\n");
    let _ = writeln!(h, "#ifdef __cplusplus\nextern \"C\" {{\n#endif\n");
    let _ = writeln!(h, "#define {p}_BATCH {}", m.batch);
    let _ = writeln!(h, "#define {p}_NUM_ARGS {}", m.buffers.len());
    let sizes: Vec<String> = m.buffers.iter().map(|b| b.elements.to_string()).collect();
    let _ = writeln!(
        h,
        "/* Element count of each argument, in argument order. */\n#define {p}_ARG_SIZES {{ {} }}",
        sizes.join(", ")
    );
    let roles: String = m
        .buffers
        .iter()
        .map(|b| b.role.chars().next().unwrap_or('?'))
        .collect();
    let _ = writeln!(
        h,
        "/* Role of each argument: i = input, p = parameter, s = state (updated), o = output. */\n#define {p}_ARG_ROLES \"{roles}\"\n"
    );
    let mut used = Vec::new();
    let _ = writeln!(h, "void {}(", m.symbol);
    let n = m.buffers.len();
    for (k, b) in m.buffers.iter().enumerate() {
        let id = c_ident(&b.name, &mut used);
        let qual = if b.role == "input" || b.role == "param" {
            "const float *"
        } else {
            "float *"
        };
        let sep = if k + 1 == n { "" } else { "," };
        let shape: Vec<String> = b.shape.iter().map(usize::to_string).collect();
        let _ = writeln!(
            h,
            "    {qual}{id}{sep} /* arg {k}: {} `{}` [{}], {} floats */",
            b.role,
            b.name,
            shape.join(", "),
            b.elements
        );
    }
    let _ = writeln!(h, ");\n");
    let args: Vec<String> = (0..n).map(|k| format!("(a)[{k}]")).collect();
    let _ = writeln!(
        h,
        "/* Calls {} with the arguments taken from an array of {n} float pointers. */\n#define {p}_FORWARD_ARGV(a) {}({})\n",
        m.symbol,
        m.symbol,
        args.join(", ")
    );
    let _ = writeln!(
        h,
        "/* The same function taking its {n} buffers as one array (for FFI callers). */\nvoid {}(float *const *args);\n",
        m.packed_symbol
    );
    let _ = writeln!(h, "#ifdef __cplusplus\n}}\n#endif\n\n#endif /* {guard} */");
    h
}
