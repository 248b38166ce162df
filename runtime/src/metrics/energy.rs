//! Spike statistics per layer and the 45 nm energy estimate of the paper (method.md, "Metrics"):
//! E = E_MAC·MACs + E_AC·SOPs, SOPs of a layer = firing rate of its input spikes × T × FLOPs.

use std::collections::{BTreeMap, HashMap};

use ndarray::ArrayViewD;
use serde::{Deserialize, Serialize};

use super::MetricsError;
use super::format::{columns, energy as fmt_energy, si};

/// How a [`LayerCounts`] row is charged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CountKind {
    /// A spiking layer; its spikes drive the next layer with accumulate-only synaptic ops (SOPs).
    #[default]
    Spiking,
    /// The encoding layer (first conv on real-valued frames): dense MACs at every time step.
    Encoding,
    /// An attention module: dense MACs on the real-valued input current.
    Attention,
}

/// Static operation counts of one row of the model, computed by the compiler.
///
/// "FLOPs" are multiply-accumulates, as in the paper's energy formula. What the two numbers mean
/// depends on `kind`:
/// - `Spiking`: `neurons_per_sample` = neurons of this layer at one time step (C·H·W);
///   `synaptic_ops_per_sample` = FLOPs at one time step of the layer that consumes this layer's
///   spikes (0 for the output layer). SOPs = firing rate × T × that.
/// - `Encoding`: `synaptic_ops_per_sample` = FLOPs of the encoding layer at one time step;
///   MACs = T × that. `neurons_per_sample` is unused.
/// - `Attention`: `synaptic_ops_per_sample` = FLOPs of the module for one sample over the whole
///   T window (it runs once on [T, C, H, W]); MACs = that. `neurons_per_sample` is unused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerCounts {
    pub name: String,
    #[serde(default)]
    pub neurons_per_sample: u64,
    pub synaptic_ops_per_sample: f64,
    #[serde(default)]
    pub kind: CountKind,
}

/// Spikes counted at run time for one spiking layer, summed over samples and time steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerStats {
    pub name: String,
    /// Spikes emitted.
    pub spikes: u64,
    /// Neuron updates: neurons × T × samples.
    pub neuron_steps: u64,
}

impl LayerStats {
    pub fn new(name: impl Into<String>) -> Self {
        LayerStats {
            name: name.into(),
            spikes: 0,
            neuron_steps: 0,
        }
    }

    /// Adds one batch: `spikes` emitted over `neuron_steps` neuron updates.
    pub fn add(&mut self, spikes: u64, neuron_steps: u64) {
        self.spikes += spikes;
        self.neuron_steps += neuron_steps;
    }

    /// Adds one batch from a binary spike tensor of any layout (e.g. [T, B, C, H, W]): every
    /// non-zero entry is a spike and every entry a neuron update.
    pub fn add_spike_tensor(&mut self, spikes: ArrayViewD<'_, f64>) {
        let n = spikes.iter().filter(|&&v| v != 0.0).count() as u64;
        self.add(n, spikes.len() as u64);
    }

    /// spikes / (neurons × T × samples); 0 before any update.
    pub fn firing_rate(&self) -> f64 {
        if self.neuron_steps == 0 {
            0.0
        } else {
            self.spikes as f64 / self.neuron_steps as f64
        }
    }
}

/// Energy per operation, picojoules (45 nm CMOS, Horowitz 2014, as the paper uses).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EnergyModel {
    pub e_mac_pj: f64,
    pub e_ac_pj: f64,
}

impl Default for EnergyModel {
    fn default() -> Self {
        EnergyModel {
            e_mac_pj: 4.6,
            e_ac_pj: 0.9,
        }
    }
}

/// One row of an [`EnergyReport`]; all counts are per sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyRow {
    pub name: String,
    pub kind: CountKind,
    /// Spiking rows only.
    pub firing_rate: Option<f64>,
    /// Spiking rows only.
    pub spikes_per_sample: Option<f64>,
    pub macs: f64,
    pub sops: f64,
    pub energy_uj: f64,
}

/// Per-layer and total spike counts, operations and energy, per sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyReport {
    pub model: EnergyModel,
    /// Samples the statistics were gathered over.
    pub samples: u64,
    /// Time steps, derived from the statistics (`None` if there were no spiking rows).
    pub time_steps: Option<u64>,
    pub rows: Vec<EnergyRow>,
    pub total_spikes_per_sample: f64,
    /// Neuron-weighted mean: all spikes / all neuron updates.
    pub mean_firing_rate: f64,
    pub total_macs: f64,
    pub total_sops: f64,
    pub total_energy_uj: f64,
}

/// Builds the energy report with the default 45 nm model; see [`energy_report_with`].
pub fn energy_report(
    counts: &[LayerCounts],
    stats: &[LayerStats],
    samples: u64,
) -> Result<EnergyReport, MetricsError> {
    energy_report_with(EnergyModel::default(), counts, stats, samples)
}

/// Joins the compiler's static counts with run-time spike statistics over `samples` samples.
/// T is derived per spiking layer as neuron_steps / (samples × neurons) and must agree across
/// layers; every statistic must have a `Spiking` row and every `Spiking` row a statistic.
pub fn energy_report_with(
    model: EnergyModel,
    counts: &[LayerCounts],
    stats: &[LayerStats],
    samples: u64,
) -> Result<EnergyReport, MetricsError> {
    let err = |m: String| Err(MetricsError::Energy(m));
    if samples == 0 {
        return err("no samples: run at least one sample before computing energy".into());
    }
    let mut by_name: HashMap<&str, &LayerStats> = HashMap::new();
    for s in stats {
        if by_name.insert(s.name.as_str(), s).is_some() {
            return err(format!("layer {:?} has two statistics entries", s.name));
        }
    }
    let mut seen = HashMap::new();
    for c in counts {
        if seen.insert(c.name.as_str(), c.kind).is_some() {
            return err(format!("layer {:?} has two LayerCounts rows", c.name));
        }
    }
    for s in stats {
        if seen.get(s.name.as_str()) != Some(&CountKind::Spiking) {
            return err(format!(
                "statistics for layer {:?} have no Spiking LayerCounts row — the counts and the model do not match",
                s.name
            ));
        }
    }

    // T from each spiking layer; all must agree, or the stats were gathered inconsistently.
    let mut time_steps: Option<u64> = None;
    for c in counts.iter().filter(|c| c.kind == CountKind::Spiking) {
        let Some(s) = by_name.get(c.name.as_str()) else {
            return err(format!(
                "no spike statistics for spiking layer {:?}",
                c.name
            ));
        };
        if c.neurons_per_sample == 0 {
            return err(format!("spiking layer {:?} has 0 neurons", c.name));
        }
        let per_t = samples * c.neurons_per_sample;
        if s.neuron_steps % per_t != 0 {
            return err(format!(
                "layer {:?}: {} neuron updates is not a whole number of time steps for {samples} samples × {} neurons",
                c.name, s.neuron_steps, c.neurons_per_sample
            ));
        }
        let t = s.neuron_steps / per_t;
        match time_steps {
            Some(prev) if prev != t => {
                return err(format!(
                    "layer {:?} ran {t} time steps per sample but an earlier layer ran {prev}",
                    c.name
                ));
            }
            _ => time_steps = Some(t),
        }
    }

    let energy = |macs: f64, sops: f64| (model.e_mac_pj * macs + model.e_ac_pj * sops) * 1e-6;
    let mut rows = Vec::with_capacity(counts.len());
    for c in counts {
        let flops = c.synaptic_ops_per_sample;
        if !(flops.is_finite() && flops >= 0.0) {
            return err(format!(
                "layer {:?}: FLOPs {flops} must be finite and ≥ 0",
                c.name
            ));
        }
        let row = match c.kind {
            CountKind::Spiking => {
                let s = by_name[c.name.as_str()];
                let fr = s.firing_rate();
                let t = time_steps.unwrap_or(0) as f64;
                let sops = fr * t * flops;
                EnergyRow {
                    name: c.name.clone(),
                    kind: c.kind,
                    firing_rate: Some(fr),
                    spikes_per_sample: Some(s.spikes as f64 / samples as f64),
                    macs: 0.0,
                    sops,
                    energy_uj: energy(0.0, sops),
                }
            }
            CountKind::Encoding => {
                let Some(t) = time_steps else {
                    return err(format!(
                        "encoding layer {:?} needs T, which comes from spiking-layer statistics, and there are none",
                        c.name
                    ));
                };
                let macs = t as f64 * flops;
                EnergyRow {
                    name: c.name.clone(),
                    kind: c.kind,
                    firing_rate: None,
                    spikes_per_sample: None,
                    macs,
                    sops: 0.0,
                    energy_uj: energy(macs, 0.0),
                }
            }
            CountKind::Attention => EnergyRow {
                name: c.name.clone(),
                kind: c.kind,
                firing_rate: None,
                spikes_per_sample: None,
                macs: flops,
                sops: 0.0,
                energy_uj: energy(flops, 0.0),
            },
        };
        rows.push(row);
    }
    let total_spikes: u64 = stats.iter().map(|s| s.spikes).sum();
    let total_steps: u64 = stats.iter().map(|s| s.neuron_steps).sum();
    let total_macs: f64 = rows.iter().map(|r| r.macs).sum();
    let total_sops: f64 = rows.iter().map(|r| r.sops).sum();
    Ok(EnergyReport {
        model,
        samples,
        time_steps,
        total_spikes_per_sample: total_spikes as f64 / samples as f64,
        mean_firing_rate: if total_steps == 0 {
            0.0
        } else {
            total_spikes as f64 / total_steps as f64
        },
        total_energy_uj: energy(total_macs, total_sops),
        total_macs,
        total_sops,
        rows,
    })
}

impl EnergyReport {
    /// Layer name → firing rate, for a log record.
    pub fn firing_rates(&self) -> BTreeMap<String, f64> {
        self.rows
            .iter()
            .filter_map(|r| r.firing_rate.map(|f| (r.name.clone(), f)))
            .collect()
    }

    /// An aligned text table, one row per layer plus totals and the formula used.
    pub fn to_table(&self) -> String {
        let dash = || "-".to_string();
        let mut rows = vec![vec![
            "layer".to_string(),
            "kind".into(),
            "firing rate".into(),
            "spikes/sample".into(),
            "MACs".into(),
            "SOPs".into(),
            "energy (µJ)".into(),
        ]];
        for r in &self.rows {
            rows.push(vec![
                r.name.clone(),
                format!("{:?}", r.kind).to_lowercase(),
                r.firing_rate.map_or_else(dash, |f| format!("{f:.4}")),
                r.spikes_per_sample.map_or_else(dash, si),
                si(r.macs),
                si(r.sops),
                fmt_energy(r.energy_uj),
            ]);
        }
        rows.push(vec![
            "total".into(),
            String::new(),
            format!("{:.4}", self.mean_firing_rate),
            si(self.total_spikes_per_sample),
            si(self.total_macs),
            si(self.total_sops),
            fmt_energy(self.total_energy_uj),
        ]);
        let mut out = columns(&rows);
        out.push_str(&format!(
            "per sample over {} samples, T = {}; E = {} pJ × MAC + {} pJ × SOP (45 nm); total firing rate = all spikes / all neuron updates\n",
            self.samples,
            self.time_steps.map_or_else(|| "?".to_string(), |t| t.to_string()),
            self.model.e_mac_pj,
            self.model.e_ac_pj
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> Vec<LayerCounts> {
        vec![
            LayerCounts {
                name: "conv0".into(),
                neurons_per_sample: 0,
                synaptic_ops_per_sample: 1000.0,
                kind: CountKind::Encoding,
            },
            LayerCounts {
                name: "att1".into(),
                neurons_per_sample: 0,
                synaptic_ops_per_sample: 50.0,
                kind: CountKind::Attention,
            },
            LayerCounts {
                name: "lif0".into(),
                neurons_per_sample: 100,
                synaptic_ops_per_sample: 2000.0,
                kind: CountKind::Spiking,
            },
            LayerCounts {
                name: "lif1".into(),
                neurons_per_sample: 10,
                synaptic_ops_per_sample: 0.0,
                kind: CountKind::Spiking,
            },
        ]
    }

    fn stats() -> Vec<LayerStats> {
        // 4 samples, T = 5: lif0 has 100·5·4 = 2000 neuron updates, 200 spikes (rate 0.1).
        let mut a = LayerStats::new("lif0");
        a.add(120, 1200);
        a.add(80, 800);
        let mut b = LayerStats::new("lif1");
        // 10 neurons × T 5 × 4 samples, 50 spikes, given as a [T, B, N] spike tensor.
        let spikes = ndarray::ArrayD::from_shape_fn(vec![5, 4, 10], |ix| {
            f64::from(u8::from((ix[0] * 40 + ix[1] * 10 + ix[2]) % 4 == 0))
        });
        b.add_spike_tensor(spikes.view());
        assert_eq!((b.spikes, b.neuron_steps), (50, 200));
        vec![a, b]
    }

    #[test]
    fn energy_follows_the_paper_formula() {
        let r = energy_report(&counts(), &stats(), 4).expect("report");
        assert_eq!(r.time_steps, Some(5));
        // conv0: MACs = T·FLOPs = 5000; att1: 50 MACs; lif0: SOPs = 0.1·5·2000 = 1000.
        assert_eq!(r.rows[0].macs, 5000.0);
        assert_eq!(r.rows[1].macs, 50.0);
        assert!((r.rows[2].sops - 1000.0).abs() < 1e-9);
        assert_eq!(r.rows[2].firing_rate, Some(0.1));
        assert_eq!(r.rows[2].spikes_per_sample, Some(50.0));
        assert_eq!(r.rows[3].firing_rate, Some(0.25));
        assert_eq!(r.total_spikes_per_sample, 62.5);
        assert!((r.mean_firing_rate - 250.0 / 2200.0).abs() < 1e-15);
        // E = 4.6 pJ·5050 + 0.9 pJ·1000 = 24130 pJ = 0.02413 µJ
        assert!(
            (r.total_energy_uj - 0.02413).abs() < 1e-12,
            "{}",
            r.total_energy_uj
        );
        let table = r.to_table();
        assert!(table.contains("lif0"), "{table}");
        assert!(table.contains("2.413e-2"), "{table}");
        assert!(table.contains("T = 5"), "{table}");
        // serde_json's default float parsing may be 1 ulp off, so compare the JSON text.
        let json = serde_json::to_string(&r).expect("ser");
        let back: EnergyReport = serde_json::from_str(&json).expect("de");
        assert_eq!(back.rows, r.rows);
        assert!((back.mean_firing_rate - r.mean_firing_rate).abs() < 1e-15);
        assert_eq!(r.firing_rates().len(), 2);
    }

    #[test]
    fn inconsistent_inputs_are_clear_errors() {
        let e = energy_report(&counts(), &stats()[..1], 4)
            .expect_err("must fail")
            .to_string();
        assert!(
            e.contains("no spike statistics for spiking layer \"lif1\""),
            "{e}"
        );
        let mut extra = stats();
        extra.push(LayerStats::new("ghost"));
        let e = energy_report(&counts(), &extra, 4)
            .expect_err("must fail")
            .to_string();
        assert!(e.contains("\"ghost\""), "{e}");
        let mut bad_t = stats();
        bad_t[1].neuron_steps = 10 * 4 * 6;
        let e = energy_report(&counts(), &bad_t, 4)
            .expect_err("must fail")
            .to_string();
        assert!(e.contains("6 time steps"), "{e}");
        assert!(energy_report(&counts(), &stats(), 0).is_err());
        assert!(energy_report(&counts(), &stats(), 3).is_err());
    }

    #[test]
    fn counts_parse_from_compiler_json() {
        let c: LayerCounts = serde_json::from_str(
            r#"{"name": "lif0", "neurons_per_sample": 65536, "synaptic_ops_per_sample": 1.2e8}"#,
        )
        .expect("json");
        assert_eq!(c.kind, CountKind::Spiking);
        let c: LayerCounts = serde_json::from_str(
            r#"{"name": "ta0", "synaptic_ops_per_sample": 10, "kind": "attention"}"#,
        )
        .expect("json");
        assert_eq!(c.kind, CountKind::Attention);
    }
}
