//! End-to-end test crate: the tests live in `tests/tests/*.rs` and drive the `snnc` binary and library.
