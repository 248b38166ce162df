//! PNG rendering of frame tensors for eyeballing: one tile per time step in a near-square grid,
//! ON counts in red and OFF counts in blue on black.

use std::path::Path;

use ndarray::Array4;

use super::error::EventError;
use super::io::write_atomic;

/// Smallest tile edge in pixels; small sensors (N-MNIST's 34 x 34) are scaled up to reach it.
const MIN_TILE: usize = 96;
const GAP: usize = 2;
const GAP_GREY: u8 = 48;

/// Writes `frames` (`[T, 2, H, W]`, channel 0 OFF, 1 ON) as an RGB PNG grid, atomically.
/// Row 0 of each tile is `y = 0` (no flip). Intensities are scaled so the 99th percentile of the
/// non-zero counts is full brightness, so one hot pixel does not blacken the rest.
pub fn render_frames_png(frames: &Array4<f32>, path: impl AsRef<Path>) -> Result<(), EventError> {
    let path = path.as_ref();
    let (steps, channels, h, w) = frames.dim();
    if channels != 2 || steps == 0 || h == 0 || w == 0 {
        return Err(EventError::Spec(format!(
            "cannot render a {steps}x{channels}x{h}x{w} tensor: expected [T >= 1, 2, H >= 1, W >= 1]"
        )));
    }
    let scale = MIN_TILE.div_ceil(h.max(w)).max(1);
    let cols = (1..=steps).find(|c| c * c >= steps).unwrap_or(steps);
    let rows = steps.div_ceil(cols);
    let (tw, th) = (w * scale, h * scale);
    let width = cols * tw + (cols - 1) * GAP;
    let height = rows * th + (rows - 1) * GAP;
    let (width32, height32) = match (u32::try_from(width), u32::try_from(height)) {
        (Ok(a), Ok(b)) if width.saturating_mul(height) <= 1 << 28 => (a, b),
        _ => {
            return Err(EventError::Spec(format!(
                "a {width}x{height} image is too large to render"
            )));
        }
    };

    let mut nonzero: Vec<f32> = frames.iter().copied().filter(|&v| v > 0.0).collect();
    let norm = if nonzero.is_empty() {
        1.0
    } else {
        let k = (nonzero.len() - 1) * 99 / 100;
        *nonzero.select_nth_unstable_by(k, f32::total_cmp).1
    };
    let level = |v: f32| ((v / norm).clamp(0.0, 1.0) * 255.0).round() as u8;

    let mut rgb = vec![GAP_GREY; width * height * 3];
    for s in 0..steps {
        let (ox, oy) = ((s % cols) * (tw + GAP), (s / cols) * (th + GAP));
        for py in 0..th {
            for px in 0..tw {
                let (y, x) = (py / scale, px / scale);
                let i = ((oy + py) * width + ox + px) * 3;
                rgb[i] = level(frames[[s, 1, y, x]]);
                rgb[i + 1] = 0;
                rgb[i + 2] = level(frames[[s, 0, y, x]]);
            }
        }
    }
    // Grid cells past the last step stay black rather than gap-grey.
    for s in steps..rows * cols {
        let (ox, oy) = ((s % cols) * (tw + GAP), (s / cols) * (th + GAP));
        for py in 0..th {
            let i = ((oy + py) * width + ox) * 3;
            rgb[i..i + tw * 3].fill(0);
        }
    }
    write_rgb_png(path, width32, height32, &rgb)
}

/// Encodes 8-bit RGB pixels (row-major, 3 bytes each) as a PNG, written atomically.
pub(crate) fn write_rgb_png(
    path: &Path,
    width: u32,
    height: u32,
    rgb: &[u8],
) -> Result<(), EventError> {
    write_atomic(path, |out| {
        let mut enc = png::Encoder::new(out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(rgb)
            .map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    })
}
