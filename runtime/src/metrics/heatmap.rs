//! Heat-map grids for the spiking-response visualisation: one row per layer (or attention map),
//! one tile per time step, each row normalised to its own maximum, in a dark-to-bright palette.

use std::path::Path;

use ndarray::Array2;

use crate::events::write_rgb_png;

/// One row of the grid: a label (for the legend) and its maps, e.g. one per time step.
#[derive(Debug, Clone)]
pub struct HeatmapRow {
    pub label: String,
    pub maps: Vec<Array2<f64>>,
}

const TILE: usize = 64;
const GAP: usize = 2;

/// Black → purple → orange → yellow, so both low and high activity stay readable.
fn palette(v: f64) -> [u8; 3] {
    const STOPS: [[f64; 3]; 4] = [
        [0.0, 0.0, 0.0],
        [0.45, 0.1, 0.55],
        [0.95, 0.45, 0.1],
        [1.0, 1.0, 0.6],
    ];
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = v * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let c = |k: usize| ((STOPS[i][k] * (1.0 - f) + STOPS[i + 1][k] * f) * 255.0).round() as u8;
    [c(0), c(1), c(2)]
}

/// Renders `rows` as a PNG at `path` (atomically) and returns, per row, the value that maps to
/// full brightness, for the legend. Maps of any size are scaled to square tiles.
pub fn render_heatmaps(
    rows: &[HeatmapRow],
    path: &Path,
) -> Result<Vec<f64>, crate::events::EventError> {
    let cols = rows.iter().map(|r| r.maps.len()).max().unwrap_or(0);
    if rows.is_empty() || cols == 0 {
        return Err(crate::events::EventError::Spec(
            "nothing to render: no maps".into(),
        ));
    }
    let width = cols * TILE + (cols - 1) * GAP;
    let height = rows.len() * TILE + (rows.len() - 1) * GAP;
    let mut rgb = vec![40u8; width * height * 3];
    let mut scales = Vec::with_capacity(rows.len());
    for (r, row) in rows.iter().enumerate() {
        let max = row.maps.iter().flat_map(|m| m.iter()).fold(0.0f64, |a, v| {
            if v.is_finite() { a.max(v.abs()) } else { a }
        });
        scales.push(max);
        for (c, map) in row.maps.iter().enumerate() {
            let (h, w) = map.dim();
            if h == 0 || w == 0 {
                continue;
            }
            let (ox, oy) = (c * (TILE + GAP), r * (TILE + GAP));
            for py in 0..TILE {
                for px in 0..TILE {
                    let v = map[[py * h / TILE, px * w / TILE]];
                    let colour = palette(if max > 0.0 { v.abs() / max } else { 0.0 });
                    let i = ((oy + py) * width + ox + px) * 3;
                    rgb[i..i + 3].copy_from_slice(&colour);
                }
            }
        }
    }
    let (w32, h32) = (u32::try_from(width), u32::try_from(height));
    let (Ok(w32), Ok(h32)) = (w32, h32) else {
        return Err(crate::events::EventError::Spec(
            "heat-map grid too large".into(),
        ));
    };
    write_rgb_png(path, w32, h32, &rgb)?;
    Ok(scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rows_of_tiles() {
        let dir = std::env::temp_dir().join(format!("heatmap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("h.png");
        let rows = vec![
            HeatmapRow {
                label: "a".into(),
                maps: vec![Array2::from_elem((4, 4), 1.0), Array2::zeros((4, 4))],
            },
            HeatmapRow {
                label: "b".into(),
                maps: vec![Array2::from_shape_fn((2, 3), |(i, j)| (i + j) as f64)],
            },
        ];
        let scales = render_heatmaps(&rows, &path).expect("renders");
        assert_eq!(scales, vec![1.0, 3.0]);
        assert!(
            std::fs::read(&path)
                .expect("written")
                .starts_with(b"\x89PNG")
        );
        assert_eq!(palette(0.0), [0, 0, 0]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
