//! Training-data pipeline on top of `events`: seeded shuffling, per-sample augmentation and a
//! threaded, prefetching loader that turns `Sample` lists into `[T, B, 2, H, W]` batches.

mod augment;
mod loader;
mod seed;

pub use augment::{Augment, Shift};
pub use loader::{Batch, Epoch, Loader, LoaderConfig};
pub use seed::{SeedRng, epoch_order};
