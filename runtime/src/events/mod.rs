//! Event-camera data: one SoA `Events` type, readers for AEDAT 2/3.1/4, Prophesee EVT 3, N-MNIST, `.npy`/`.npz`,
//! DVS128 Gesture labels, framing into `[T, 2, H, W]` tensors, PNG previews, datasets and a frame cache.
//!
//! Every reader has `read(path, &ReadOptions)` (small files read in one call, large ones memory-mapped)
//! and `from_bytes(&[u8], &ReadOptions)`; [`read_events`] picks the reader itself, and [`EventReader`]
//! does the same for many files with its buffers kept between them. All failures are [`EventError`]s
//! that name the file and the byte offset (or line) — no reader panics on malformed input.

pub mod aedat2;
pub mod aedat31;
pub mod aedat4;
mod cursor;
pub mod dataset;
mod detect;
mod error;
pub mod evt3;
mod flatbuf;
mod frame;
mod io;
pub mod labels;
mod lz4;
pub mod nmnist;
pub mod npy;
pub mod npz;
mod render;
mod types;

pub use dataset::{FrameCache, Sample, Split};
pub use detect::{EventReader, Format, FramedRead, detect_format, read_events};
pub use error::EventError;
pub use frame::{FrameBuffer, FrameSpec, Slicing, denoise, frame, frame_into, repeat_static};
pub use io::write_atomic;
pub use npy::{load_frames_npy, save_frames_npy};
pub use render::render_frames_png;
pub(crate) use render::write_rgb_png;
pub use types::{Event, Events, ReadOptions, ReadReport, Recording, TimestampPolicy};
