//! The paper-style comparison of two models (e.g. attention vs vanilla SNN): accuracy, spikes
//! per sample and their reduction, mean firing rate, energy and the energy-efficiency ratio.

use serde::{Deserialize, Serialize};

use super::energy::EnergyReport;
use super::format::{columns, energy as fmt_energy, si};

/// What one model achieved on the evaluation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub name: String,
    /// Fraction in [0, 1].
    pub accuracy: f64,
    pub spikes_per_sample: f64,
    pub mean_firing_rate: f64,
    /// Inference energy per sample, µJ.
    pub energy_uj: f64,
}

impl Summary {
    pub fn from_report(name: impl Into<String>, accuracy: f64, report: &EnergyReport) -> Self {
        Summary {
            name: name.into(),
            accuracy,
            spikes_per_sample: report.total_spikes_per_sample,
            mean_firing_rate: report.mean_firing_rate,
            energy_uj: report.total_energy_uj,
        }
    }
}

/// `a` (the candidate) measured against `b` (the baseline).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub a: Summary,
    pub b: Summary,
    /// (acc_a − acc_b) in percentage points.
    pub accuracy_gain_points: f64,
    /// (1 − spikes_a / spikes_b) × 100: positive when `a` spikes less (the paper's −84.9 %
    /// is a reduction of 84.9).
    pub spike_reduction_pct: f64,
    /// Energy efficiency of `a` relative to `b` = E_b / E_a (the paper's "3.4×").
    pub energy_efficiency: f64,
}

pub fn compare(a: &Summary, b: &Summary) -> Comparison {
    // Ratios with a zero denominator come out ±∞/NaN, which the table prints as such: a
    // silent 0 would misreport.
    Comparison {
        a: a.clone(),
        b: b.clone(),
        accuracy_gain_points: (a.accuracy - b.accuracy) * 100.0,
        spike_reduction_pct: (1.0 - a.spikes_per_sample / b.spikes_per_sample) * 100.0,
        energy_efficiency: b.energy_uj / a.energy_uj,
    }
}

/// Aligned text table: one column per model and one for `a` relative to `b`.
pub fn compare_table(a: &Summary, b: &Summary) -> String {
    let c = compare(a, b);
    let rows = vec![
        vec![
            String::new(),
            b.name.clone(),
            a.name.clone(),
            format!("{} vs {}", a.name, b.name),
        ],
        vec![
            "accuracy (%)".into(),
            format!("{:.2}", b.accuracy * 100.0),
            format!("{:.2}", a.accuracy * 100.0),
            format!("{:+.2} points", c.accuracy_gain_points),
        ],
        vec![
            "spikes / sample".into(),
            si(b.spikes_per_sample),
            si(a.spikes_per_sample),
            format!("{:+.1} %", -c.spike_reduction_pct),
        ],
        vec![
            "mean firing rate".into(),
            format!("{:.4}", b.mean_firing_rate),
            format!("{:.4}", a.mean_firing_rate),
            String::new(),
        ],
        vec![
            "energy / sample (µJ)".into(),
            fmt_energy(b.energy_uj),
            fmt_energy(a.energy_uj),
            format!("{:.2}× energy efficiency", c.energy_efficiency),
        ],
    ];
    columns(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_style_comparison() {
        let vanilla = Summary {
            name: "vanilla".into(),
            accuracy: 0.892,
            spikes_per_sample: 1_000_000.0,
            mean_firing_rate: 0.2,
            energy_uj: 340.0,
        };
        let att = Summary {
            name: "TCSA".into(),
            accuracy: 0.951,
            spikes_per_sample: 151_000.0,
            mean_firing_rate: 0.03,
            energy_uj: 100.0,
        };
        let c = compare(&att, &vanilla);
        assert!((c.accuracy_gain_points - 5.9).abs() < 1e-9);
        assert!((c.spike_reduction_pct - 84.9).abs() < 1e-9);
        assert!((c.energy_efficiency - 3.4).abs() < 1e-12);
        let t = compare_table(&att, &vanilla);
        assert!(t.contains("+5.90 points"), "{t}");
        assert!(t.contains("-84.9 %"), "{t}");
        assert!(t.contains("3.40× energy efficiency"), "{t}");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5);
        // The numeric columns are right-aligned: every value row is as long as the header or
        // shorter only by an empty last cell.
        assert!(lines[1].starts_with("accuracy (%)"));
    }
}
