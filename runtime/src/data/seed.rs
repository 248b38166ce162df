//! Deterministic randomness for the data pipeline: a SplitMix64 generator keyed by
//! `(seed, epoch, index, stream)` and the seeded per-epoch shuffle.

/// Separate streams so the shuffle and each augmentation draw independent numbers from one seed.
pub(crate) const STREAM_SHUFFLE: u64 = 0x5348_5546; // "SHUF"
pub(crate) const STREAM_AUGMENT: u64 = 0x4155_474d; // "AUGM"

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast, and good enough for shuffling and
/// augmentation draws. Implemented here so the sequence is fixed by this crate, not by a
/// dependency's version.
#[derive(Debug, Clone)]
pub struct SeedRng(u64);

impl SeedRng {
    /// A generator keyed by every part of `key`; distinct keys give unrelated sequences.
    pub fn keyed(key: &[u64]) -> Self {
        let mut state = 0x243F_6A88_85A3_08D3; // pi, to keep an all-zero key away from state 0
        for &k in key {
            state = mix(state ^ mix(k.wrapping_add(0x9E37_79B9_7F4A_7C15)));
        }
        Self(state)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// A number in `0..n` (0 when `n == 0`). Lemire's multiply-shift: the bias is below
    /// `n / 2^64`, far under anything a data set of `usize` samples could show.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A number in `-k..=k` (0 when `k <= 0`). Always consumes one draw, so a disabled option
    /// does not shift the numbers the next one sees.
    pub fn symmetric(&mut self, k: i64) -> i64 {
        let r = self.next_u64();
        if k <= 0 {
            return 0;
        }
        // 2k + 1 fits in u64 for every positive i64 k, and `r * (2k + 1) >> 64` - k lies in -k..=k.
        let span = (k as u64) * 2 + 1;
        let draw = ((u128::from(r) * u128::from(span)) >> 64) as u64;
        (i128::from(draw) - i128::from(k)) as i64
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }
}

/// The SplitMix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The sample order of one epoch: `0..n` shuffled by Fisher–Yates with a generator keyed by
/// `(seed, epoch)`, or `0..n` itself when `shuffle` is false.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = SeedRng::keyed(&[STREAM_SHUFFLE, seed, epoch]);
        for i in (1..n).rev() {
            // `below(i + 1) <= i`, so the cast back to usize is exact.
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_permutation_and_depends_on_seed_and_epoch() {
        let a = epoch_order(1000, 7, 0, true);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(1000, 7, 0, true));
        assert_ne!(a, epoch_order(1000, 7, 1, true));
        assert_ne!(a, epoch_order(1000, 8, 0, true));
        assert_eq!(epoch_order(5, 7, 3, false), vec![0, 1, 2, 3, 4]);
        assert!(epoch_order(0, 1, 1, true).is_empty());
    }

    #[test]
    fn draws_stay_in_range() {
        let mut rng = SeedRng::keyed(&[1, 2, 3]);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let v = rng.symmetric(3);
            assert!((-3..=3).contains(&v));
            seen[(v + 3) as usize] = true;
            assert!(rng.below(10) < 10);
        }
        assert!(seen.iter().all(|&s| s), "every shift in -3..=3 occurs");
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.symmetric(0), 0);
        assert!(
            rng.symmetric(i64::MAX) > i64::MIN,
            "no overflow at the extreme"
        );
    }
}
