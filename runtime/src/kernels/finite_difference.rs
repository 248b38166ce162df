//! Gradient checking by central finite differences in f64, used by the kernel tests and by
//! anyone adding a backward pass: compares analytic gradients with numerical ones.

use ndarray::{ArrayD, Dimension};

use super::error::{KernelError, KernelResult};

/// Where analytic and numerical gradients disagreed most.
#[derive(Debug, Clone, PartialEq)]
pub struct GradcheckReport {
    /// Largest [`relative_error`] over all elements of all inputs (0 when there are none).
    pub max_rel_error: f64,
    /// Which input and which element of it (empty when there are no elements).
    pub input: usize,
    pub index: Vec<usize>,
    pub analytic: f64,
    pub numeric: f64,
    pub tol: f64,
}

impl GradcheckReport {
    pub fn passed(&self) -> bool {
        self.max_rel_error < self.tol
    }
}

/// `|a − n| / max(|a|, |n|, 1)`: relative for large gradients, absolute near zero, where a
/// pure ratio would be dominated by rounding. NaN anywhere counts as an infinite error.
pub fn relative_error(analytic: f64, numeric: f64) -> f64 {
    let err = (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(1.0);
    if err.is_nan() { f64::INFINITY } else { err }
}

/// Central-difference gradient `(L(x + eps·e_i) − L(x − eps·e_i)) / (2·eps)` of a scalar
/// loss with respect to every element of every input.
pub fn numerical_gradient<F>(
    mut loss: F,
    inputs: &[ArrayD<f64>],
    eps: f64,
) -> KernelResult<Vec<ArrayD<f64>>>
where
    F: FnMut(&[ArrayD<f64>]) -> KernelResult<f64>,
{
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(KernelError::argument(
            "numerical_gradient",
            format!("step {eps} must be positive and finite"),
        ));
    }
    let mut work = inputs.to_vec();
    let mut grads = Vec::with_capacity(inputs.len());
    for k in 0..inputs.len() {
        let mut grad = ArrayD::zeros(inputs[k].raw_dim());
        for (index, g) in grad.indexed_iter_mut() {
            let original = work[k][&index];
            work[k][&index] = original + eps;
            let plus = loss(&work)?;
            work[k][&index] = original - eps;
            let minus = loss(&work)?;
            work[k][&index] = original;
            *g = (plus - minus) / (2.0 * eps);
        }
        grads.push(grad);
    }
    Ok(grads)
}

/// Checks the analytic gradients `f` returns against central differences of the loss it
/// returns. `f(inputs)` gives `(loss, [dloss/dinput_k])`; its gradients are only used at the
/// unperturbed point. Typical `f`: run forward, take `loss = Σ y·r` for a fixed random `r`,
/// and run backward with `dy = r`.
pub fn gradcheck<F>(
    mut f: F,
    inputs: &[ArrayD<f64>],
    eps: f64,
    tol: f64,
) -> KernelResult<GradcheckReport>
where
    F: FnMut(&[ArrayD<f64>]) -> KernelResult<(f64, Vec<ArrayD<f64>>)>,
{
    const OP: &str = "gradcheck";
    let (_, analytic) = f(inputs)?;
    if analytic.len() != inputs.len() {
        return Err(KernelError::shape(
            OP,
            format!("{} gradients for {} inputs", analytic.len(), inputs.len()),
        ));
    }
    for (k, (a, x)) in analytic.iter().zip(inputs).enumerate() {
        if a.shape() != x.shape() {
            return Err(KernelError::shape(
                OP,
                format!(
                    "gradient {k} has shape {:?}, input has {:?}",
                    a.shape(),
                    x.shape()
                ),
            ));
        }
    }
    let numeric = numerical_gradient(|xs| f(xs).map(|(loss, _)| loss), inputs, eps)?;
    let mut worst: Option<GradcheckReport> = None;
    for (k, (a, n)) in analytic.iter().zip(&numeric).enumerate() {
        for ((index, &a), &n) in a.indexed_iter().zip(n.iter()) {
            let err = relative_error(a, n);
            if worst.as_ref().is_none_or(|w| err > w.max_rel_error) {
                worst = Some(GradcheckReport {
                    max_rel_error: err,
                    input: k,
                    index: index.slice().to_vec(),
                    analytic: a,
                    numeric: n,
                    tol,
                });
            }
        }
    }
    Ok(worst.unwrap_or(GradcheckReport {
        max_rel_error: 0.0,
        input: 0,
        index: Vec::new(),
        analytic: 0.0,
        numeric: 0.0,
        tol,
    }))
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn, arr1};

    use super::{gradcheck, relative_error};

    #[test]
    fn accepts_a_correct_gradient_and_rejects_a_wrong_one() {
        let x = vec![arr1(&[0.3, -1.2, 2.0]).into_dyn()];
        // `bug` perturbs the analytic gradient most (relatively) at the largest |x|.
        let cube = |xs: &[ArrayD<f64>], bug: f64| {
            let loss = xs[0].mapv(|v| v * v * v).sum();
            Ok((loss, vec![xs[0].mapv(|v| 3.0 * v * v + bug * v.powi(4))]))
        };
        let good = gradcheck(|xs| cube(xs, 0.0), &x, 1e-5, 1e-6).expect("runs");
        assert!(good.passed(), "{good:?}");
        let bad = gradcheck(|xs| cube(xs, 1e-3), &x, 1e-5, 1e-6).expect("runs");
        assert!(!bad.passed());
        assert_eq!((bad.input, bad.index.as_slice()), (0, &[2][..]));
    }

    #[test]
    fn rejects_mismatched_gradient_shapes() {
        let x = vec![ArrayD::zeros(IxDyn(&[2]))];
        let res = gradcheck(
            |_| Ok((0.0, vec![ArrayD::zeros(IxDyn(&[3]))])),
            &x,
            1e-5,
            1e-6,
        );
        assert!(res.is_err());
    }

    #[test]
    fn nan_is_an_infinite_error() {
        assert_eq!(relative_error(f64::NAN, 1.0), f64::INFINITY);
        assert_eq!(relative_error(1e-9, 0.0), 1e-9);
    }
}
