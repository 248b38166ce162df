//! Shared by every fuzz target: run a decoder under both timestamp policies and check the
//! invariants any successful decode must hold.

use snn_runtime::events::{EventError, ReadOptions, Recording, TimestampPolicy};

pub fn check(data: &[u8], decode: fn(&[u8], &ReadOptions) -> Result<Recording, EventError>) {
    for timestamps in [TimestampPolicy::Error, TimestampPolicy::Allow] {
        let opts = ReadOptions {
            timestamps,
            ..Default::default()
        };
        match decode(data, &opts) {
            Ok(rec) => {
                let ev = &rec.events;
                let n = ev.t.len();
                assert!(
                    ev.x.len() == n && ev.y.len() == n && ev.p.len() == n,
                    "ragged columns"
                );
                assert!(ev.p.iter().all(|&p| p <= 1), "polarity is 0 or 1");
                if let Some((w, h)) = ev.sensor() {
                    assert!(
                        ev.x.iter().all(|&x| x < w) && ev.y.iter().all(|&y| y < h),
                        "out of sensor"
                    );
                }
                if timestamps == TimestampPolicy::Error {
                    assert!(ev.t.windows(2).all(|w| w[0] <= w[1]), "order not enforced");
                }
            }
            Err(e) => assert!(
                e.to_string().contains("<memory>"),
                "error does not name the input: {e}"
            ),
        }
    }
}
