#![no_main]
//! Fuzzes the npy reader's `from_bytes` entry point.

use libfuzzer_sys::fuzz_target;
use snn_runtime::events::npy;

mod common;

fuzz_target!(|data: &[u8]| common::check(data, npy::from_bytes));
