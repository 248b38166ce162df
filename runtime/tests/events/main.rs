//! Integration tests of the event layer (one binary, to keep link time down on small machines):
//! golden values of the real recordings, corrupt input, AEDAT 3.1 fixtures, framing, datasets.

mod aedat31;
mod common;
mod corrupt;
mod dataset;
mod fixtures;
mod formats;
mod framing;
mod golden;
mod loader;
