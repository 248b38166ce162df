#![no_main]
//! Fuzzes the nmnist reader's `from_bytes` entry point.

use libfuzzer_sys::fuzz_target;
use snn_runtime::events::nmnist;

mod common;

fuzz_target!(|data: &[u8]| common::check(data, nmnist::from_bytes));
