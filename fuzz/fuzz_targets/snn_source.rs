//! Fuzzes the whole front end (parser, imports of the embedded stdlib, sema, IR verifier) and the
//! diagnostic renderer on arbitrary source text: any input must give diagnostics, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let c = snnc::sema::compile_source(std::path::Path::new("fuzz.snn"), text, &[]);
    let _ = c.diags.render_plain(&c.program.sources);
});
