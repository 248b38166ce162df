//! Fuzzes the GPU launch manifest and check-bundle readers (`snn_runtime::gpu::manifest`): any
//! text must be refused with an error or accepted as a manifest whose checks hold, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snn_runtime::gpu::manifest::{CheckCase, LaunchManifest, Step};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(m) = LaunchManifest::from_json(&text) {
        let _ = m.peak_bytes();
        for step in &m.steps {
            if let Step::Gemm { c, gemm, .. } = step {
                let extents = gemm.extents().expect("a checked product has extents");
                assert!(extents[2] <= m.buffers[*c].elements(), "checked extent");
            }
        }
        // What was accepted writes back to the same manifest.
        let again = LaunchManifest::from_json(&m.to_json()).expect("round trip");
        assert_eq!(again, m);
    }
    let _ = serde_json::from_str::<Vec<CheckCase>>(&text);
});
