#![no_main]
//! Fuzzes the evt3 reader's `from_bytes` entry point.

use libfuzzer_sys::fuzz_target;
use snn_runtime::events::evt3;

mod common;

fuzz_target!(|data: &[u8]| common::check(data, evt3::from_bytes));
