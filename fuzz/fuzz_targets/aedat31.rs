#![no_main]
//! Fuzzes the aedat31 reader's `from_bytes` entry point.

use libfuzzer_sys::fuzz_target;
use snn_runtime::events::aedat31;

mod common;

fuzz_target!(|data: &[u8]| common::check(data, aedat31::from_bytes));
