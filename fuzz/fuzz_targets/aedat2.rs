#![no_main]
//! Fuzzes the aedat2 reader's `from_bytes` entry point.

use libfuzzer_sys::fuzz_target;
use snn_runtime::events::aedat2;

mod common;

fuzz_target!(|data: &[u8]| common::check(data, aedat2::from_bytes));
