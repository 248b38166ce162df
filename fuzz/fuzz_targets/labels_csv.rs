#![no_main]
//! Fuzzes the DVS128 Gesture labels CSV parser and the split it feeds.

use libfuzzer_sys::fuzz_target;
use snn_runtime::events::{Events, labels};

fuzz_target!(|data: &[u8]| {
    match labels::from_bytes(data) {
        Ok(rows) => {
            assert!(
                rows.iter().all(|r| r.start < r.end),
                "empty or reversed range accepted"
            );
            let mut ev = Events::new(Some((4, 4)));
            for (i, r) in rows.iter().enumerate().take(64) {
                ev.push((r.start, (i % 4) as u16, 0, 1));
                ev.push((r.end, 0, (i % 4) as u16, 0));
            }
            ev.t.sort_unstable();
            if let Ok(samples) = labels::split_by_labels(&ev, &rows, "labels.csv") {
                for s in samples {
                    assert!(s.events.t.iter().all(|&t| t >= s.start && t < s.end));
                }
            }
        }
        Err(e) => assert!(e.to_string().contains("<memory>"), "{e}"),
    }
});
