//! Per-sample augmentation: random crop with zero padding (a spatial shift), horizontal flip and
//! time jitter, each drawn from `(seed, epoch, sample index)` alone so thread scheduling cannot matter.

use super::seed::{STREAM_AUGMENT, SeedRng};

/// Which augmentations the loader applies; the default applies none.
///
/// Spatial augmentations act on the framed tensor (after downsampling), so they behave the same
/// whether frames come from the events or from a [`FrameCache`](crate::events::FrameCache).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Augment {
    /// Random crop with zero padding: pad every side by this many frame pixels and crop back to
    /// `H x W` at a uniformly drawn offset, i.e. shift the frame by `dx, dy` in `-pad..=pad`.
    pub crop_padding: u16,
    /// Mirror the frame left–right with probability 1/2.
    pub flip_horizontal: bool,
    /// Shift the first time window's start by a uniform draw in `-k..=k` µs. Only meaningful for
    /// `Slicing::TimeWindow`: moving every timestamp leaves count- and span-based slicing unchanged.
    pub time_jitter_us: i64,
}

/// The augmentation drawn for one sample in one epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shift {
    /// Columns to move right (negative: left); vacated pixels are zero.
    pub dx: i64,
    /// Rows to move down (negative: up).
    pub dy: i64,
    /// Mirror left–right before shifting.
    pub flip: bool,
    /// µs added to the first window's start.
    pub dt_us: i64,
}

impl Augment {
    pub fn is_identity(&self) -> bool {
        self.crop_padding == 0 && !self.flip_horizontal && self.time_jitter_us <= 0
    }

    /// The draws for dataset sample `index` in `epoch`. All four numbers are always drawn, in a
    /// fixed order, so enabling one augmentation never changes the values of another.
    pub fn draw(&self, seed: u64, epoch: u64, index: usize) -> Shift {
        let mut rng = SeedRng::keyed(&[STREAM_AUGMENT, seed, epoch, index as u64]);
        let dt = rng.symmetric(self.time_jitter_us);
        let dx = rng.symmetric(i64::from(self.crop_padding));
        let dy = rng.symmetric(i64::from(self.crop_padding));
        let flip = rng.coin();
        Shift {
            dx,
            dy,
            flip: flip && self.flip_horizontal,
            dt_us: dt,
        }
    }
}

/// Copies one `[T, 2, H, W]` sample (`src`, row-major) into slot `b` of a zeroed row-major
/// `[T, B, 2, H, W]` batch (`dst`), applying `shift`'s flip and spatial shift on the way, so
/// augmentation costs no pass of its own. `planes = T * 2`.
pub(crate) fn write_shifted(
    src: &[f32],
    dst: &mut [f32],
    (planes, batch, b): (usize, usize, usize),
    (h, w): (usize, usize),
    shift: &Shift,
) {
    let plane = h * w;
    // Output pixel (y, x) takes source pixel (y - dy, x' - dx), x' mirrored when flipping;
    // only rows and columns whose source lies inside the frame are written.
    let (dy, dx) = (shift.dy, shift.dx);
    let rows = clip(dy, h);
    let cols = clip(dx, w);
    if rows.is_empty() || cols.is_empty() {
        return;
    }
    for p in 0..planes {
        // Plane p = (t, c) with c = p % 2; in the batch it sits at ((t * B + b) * 2 + c).
        let (t, c) = (p / 2, p % 2);
        let s_plane = &src[p * plane..(p + 1) * plane];
        let d_off = ((t * batch + b) * 2 + c) * plane;
        let d_plane = &mut dst[d_off..d_off + plane];
        for y in rows.clone() {
            let sy = (y as i64 - dy) as usize;
            let s_row = &s_plane[sy * w..(sy + 1) * w];
            let d_row = &mut d_plane[y * w..(y + 1) * w];
            let sx0 = (cols.start as i64 - dx) as usize;
            let n = cols.len();
            if shift.flip {
                // Mirrored source column of output x is w - 1 - (x - dx).
                let hi = w - sx0; // exclusive end of the mirrored source span
                for (d, s) in d_row[cols.clone()]
                    .iter_mut()
                    .zip(s_row[hi - n..hi].iter().rev())
                {
                    *d = *s;
                }
            } else {
                d_row[cols.clone()].copy_from_slice(&s_row[sx0..sx0 + n]);
            }
        }
    }
}

/// The output indices `i` in `0..n` whose source `i - d` lies in `0..n`.
fn clip(d: i64, n: usize) -> std::ops::Range<usize> {
    let n = n as i64;
    let lo = d.clamp(0, n);
    let hi = (n + d).clamp(0, n);
    lo as usize..hi.max(lo) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slow, obvious definition `write_shifted` must match.
    fn reference(src: &[f32], h: usize, w: usize, s: &Shift) -> Vec<f32> {
        let mut out = vec![0.0; src.len()];
        let planes = src.len() / (h * w);
        for p in 0..planes {
            for y in 0..h as i64 {
                for x in 0..w as i64 {
                    let (sy, sx) = (y - s.dy, x - s.dx);
                    if (0..h as i64).contains(&sy) && (0..w as i64).contains(&sx) {
                        let sx = if s.flip { w as i64 - 1 - sx } else { sx };
                        out[p * h * w + (y as usize) * w + x as usize] =
                            src[p * h * w + (sy as usize) * w + sx as usize];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn shifted_copy_matches_the_definition() {
        let (planes, h, w) = (4, 3, 5);
        let src: Vec<f32> = (0..planes * h * w).map(|v| v as f32 + 1.0).collect();
        for flip in [false, true] {
            for dy in -4..=4 {
                for dx in -6..=6 {
                    let s = Shift {
                        dx,
                        dy,
                        flip,
                        dt_us: 0,
                    };
                    // Batch of 1: the batch layout equals the sample layout.
                    let mut dst = vec![0.0; src.len()];
                    write_shifted(&src, &mut dst, (planes, 1, 0), (h, w), &s);
                    assert_eq!(dst, reference(&src, h, w, &s), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn draws_are_deterministic_and_independent_of_other_options() {
        let all = Augment {
            crop_padding: 4,
            flip_horizontal: true,
            time_jitter_us: 1000,
        };
        let crop_only = Augment {
            crop_padding: 4,
            ..Augment::default()
        };
        assert_eq!(all.draw(1, 2, 3), all.draw(1, 2, 3));
        let (a, c) = (all.draw(1, 2, 3), crop_only.draw(1, 2, 3));
        assert_eq!((a.dx, a.dy), (c.dx, c.dy));
        assert_eq!(Augment::default().draw(1, 2, 3), Shift::default());
        let flips = (0..1000).filter(|&i| all.draw(9, 0, i).flip).count();
        assert!((400..600).contains(&flips), "{flips} flips of 1000");
    }
}
