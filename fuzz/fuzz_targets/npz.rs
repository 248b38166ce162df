#![no_main]
//! Fuzzes the npz reader's `from_bytes` entry point.

use libfuzzer_sys::fuzz_target;
use snn_runtime::events::npz;

mod common;

fuzz_target!(|data: &[u8]| common::check(data, npz::from_bytes));
