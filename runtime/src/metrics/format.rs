//! Number formatting shared by the metric tables: SI prefixes keep large counts readable.

/// `1234567.0` → `"1.23 M"`: three significant digits and an SI prefix.
pub(crate) fn si(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    let (scale, unit) = if a >= 1e12 {
        (1e12, " T")
    } else if a >= 1e9 {
        (1e9, " G")
    } else if a >= 1e6 {
        (1e6, " M")
    } else if a >= 1e3 {
        (1e3, " k")
    } else {
        (1.0, "")
    };
    let v = x / scale;
    // Three significant digits.
    let digits = if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$}{unit}")
}

/// Energies in µJ span 1e-4 (toy models) to 1e4 (ImageNet): about four significant digits.
pub(crate) fn energy(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.3}")
    } else if x == 0.0 {
        "0".into()
    } else {
        format!("{x:.3e}")
    }
}

/// Renders rows as columns: the first left-aligned, the rest right-aligned, two spaces apart.
pub(crate) fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            if c == 0 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str("  ");
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn si_prefixes() {
        assert_eq!(si(1_234_567.0), "1.23 M");
        assert_eq!(si(0.5), "0.50");
        assert_eq!(si(123_456.0), "123 k");
        assert_eq!(si(62.5), "62.5");
        assert_eq!(si(0.0), "0");
        assert_eq!(energy(409.18244), "409.182");
        assert_eq!(energy(0.02413), "2.413e-2");
    }

    #[test]
    fn columns_align() {
        let t = columns(&[
            vec!["a".into(), "1".into()],
            vec!["long".into(), "123".into()],
        ]);
        assert_eq!(t, "a       1\nlong  123\n");
    }
}
