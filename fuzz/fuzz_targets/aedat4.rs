#![no_main]
//! Fuzzes the aedat4 reader's `from_bytes` entry point.

use libfuzzer_sys::fuzz_target;
use snn_runtime::events::aedat4;

mod common;

fuzz_target!(|data: &[u8]| common::check(data, aedat4::from_bytes));
