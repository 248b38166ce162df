//! Helpers shared by the event tests: locating `shared/data` and small byte builders.

use std::path::PathBuf;

/// `shared/data` beside the repository, or `None` (with a printed reason) when it is absent,
/// so the golden tests skip instead of failing on machines without the data.
pub fn shared_data(test: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    if dir.join("README.md").is_file() {
        Some(dir)
    } else {
        println!(
            "SKIP {test}: {} not found (the shared data set lives beside the repository)",
            dir.display()
        );
        None
    }
}

/// The repository's bundled example data.
pub fn example_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/data")
}

/// A tiny deterministic generator (xorshift64*), so random tests need no extra crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
