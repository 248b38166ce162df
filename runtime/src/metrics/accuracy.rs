//! Classification accuracy from the output readout (already averaged over T): arg-max per row
//! against integer targets, per batch or accumulated over an epoch.

use ndarray::{ArrayViewD, Axis};
use serde::{Deserialize, Serialize};

use super::MetricsError;

/// Index of the largest value of each row of a `[batch, classes]` readout. Ties go to the first
/// (as torch.argmax); NaN is never the maximum (a row of NaN gives class 0).
pub fn argmax_rows(readout: ArrayViewD<'_, f64>) -> Result<Vec<usize>, MetricsError> {
    if readout.ndim() != 2 || readout.shape()[1] == 0 {
        return Err(MetricsError::ReadoutShape {
            shape: readout.shape().to_vec(),
        });
    }
    Ok(readout
        .axis_iter(Axis(0))
        .map(|row| {
            let mut best = 0;
            let mut best_v = f64::NEG_INFINITY;
            for (i, &v) in row.iter().enumerate() {
                // Strict `>` keeps the first of equal maxima; NaN compares false.
                if v > best_v {
                    best = i;
                    best_v = v;
                }
            }
            best
        })
        .collect())
}

/// How many rows' arg-max equals their target.
pub fn correct(readout: ArrayViewD<'_, f64>, targets: &[usize]) -> Result<usize, MetricsError> {
    let classes = readout.shape().get(1).copied().unwrap_or(0);
    let predicted = argmax_rows(readout)?;
    if predicted.len() != targets.len() {
        return Err(MetricsError::BatchMismatch {
            batch: predicted.len(),
            targets: targets.len(),
        });
    }
    let mut n = 0;
    for (row, (&p, &t)) in predicted.iter().zip(targets).enumerate() {
        if t >= classes {
            return Err(MetricsError::TargetRange {
                row,
                target: t,
                classes,
            });
        }
        n += usize::from(p == t);
    }
    Ok(n)
}

/// Fraction (0..=1) of rows classified correctly; an empty batch gives 0.
pub fn accuracy(readout: ArrayViewD<'_, f64>, targets: &[usize]) -> Result<f64, MetricsError> {
    let n = correct(readout, targets)?;
    Ok(if targets.is_empty() {
        0.0
    } else {
        n as f64 / targets.len() as f64
    })
}

/// Accumulates accuracy over the batches of an epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccuracyCounter {
    pub correct: u64,
    pub total: u64,
}

impl AccuracyCounter {
    pub fn add_batch(
        &mut self,
        readout: ArrayViewD<'_, f64>,
        targets: &[usize],
    ) -> Result<(), MetricsError> {
        self.correct += correct(readout, targets)? as u64;
        self.total += targets.len() as u64;
        Ok(())
    }

    /// Fraction correct so far (0 before any sample).
    pub fn value(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr2, array};

    #[test]
    fn accuracy_from_readout() {
        let r = arr2(&[[0.1, 0.9, 0.0], [0.5, 0.5, 0.0], [f64::NAN, 0.2, 0.3]]).into_dyn();
        assert_eq!(argmax_rows(r.view()).expect("2d"), [1, 0, 2]);
        assert_eq!(accuracy(r.view(), &[1, 1, 2]).expect("ok"), 2.0 / 3.0);
        let mut acc = AccuracyCounter::default();
        acc.add_batch(r.view(), &[1, 0, 0]).expect("ok");
        acc.add_batch(r.view(), &[0, 0, 0]).expect("ok");
        assert_eq!((acc.correct, acc.total), (3, 6));
        assert_eq!(acc.value(), 0.5);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let r = arr2(&[[0.1, 0.9]]).into_dyn();
        assert!(matches!(
            accuracy(r.view(), &[0, 1]),
            Err(MetricsError::BatchMismatch {
                batch: 1,
                targets: 2
            })
        ));
        let e = accuracy(r.view(), &[2]).expect_err("must fail");
        assert_eq!(
            e.to_string(),
            "target 2 at row 0 is out of range for 2 classes"
        );
        let flat = array![1.0, 2.0].into_dyn();
        assert!(matches!(
            accuracy(flat.view(), &[0]),
            Err(MetricsError::ReadoutShape { .. })
        ));
    }
}
