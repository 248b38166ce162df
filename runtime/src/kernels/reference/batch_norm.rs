//! Batch normalisation over one channel axis of an N-d tensor (statistics over all other axes),
//! training and eval mode with affine gamma/beta, forward and backward, PyTorch semantics.

use ndarray::{Array1, Array2, ArrayD, ArrayView1, ArrayViewD, Axis, Ix1, NdFloat, Zip};

use super::layout::AxisSplit;
use super::scalar::{constant, count};
use super::shape::{check_axis, expect_shape, fixed_rank};
use crate::kernels::error::{KernelError, KernelResult};

/// Channel axis, the variance floor `eps`, and the running-stat update weight `momentum`
/// (`running ← (1 − momentum) · running + momentum · batch`, as PyTorch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormParams<A> {
    pub axis: usize,
    pub eps: A,
    pub momentum: A,
}

impl<A: NdFloat> BatchNormParams<A> {
    /// PyTorch's defaults: `eps = 1e-5`, `momentum = 0.1`.
    pub fn new(axis: usize) -> Self {
        Self {
            axis,
            eps: constant(1e-5),
            momentum: constant(0.1),
        }
    }
}

/// Training-mode results: the output, the batch statistics used to normalise (variance
/// biased), and the running statistics after this step's update (variance unbiased).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormTrainOutput<A> {
    pub y: ArrayD<A>,
    pub batch_mean: ArrayD<A>,
    pub batch_var: ArrayD<A>,
    pub running_mean: ArrayD<A>,
    pub running_var: ArrayD<A>,
}

/// Gradients with respect to the input and the affine parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormGrads<A> {
    pub dx: ArrayD<A>,
    pub dgamma: ArrayD<A>,
    pub dbeta: ArrayD<A>,
}

/// Normalises with batch statistics and returns the updated running statistics; every
/// per-channel operand is `[C]` with `C = x.shape()[axis]`, and each channel needs ≥ 2 values.
pub fn batch_norm_train<A: NdFloat>(
    x: ArrayViewD<'_, A>,
    gamma: ArrayViewD<'_, A>,
    beta: ArrayViewD<'_, A>,
    running_mean: ArrayViewD<'_, A>,
    running_var: ArrayViewD<'_, A>,
    params: BatchNormParams<A>,
) -> KernelResult<BatchNormTrainOutput<A>> {
    const OP: &str = "batch_norm_train";
    let bn = Channels::new(OP, x, params)?;
    let [gamma, beta, running_mean, running_var] = bn.per_channel([
        ("gamma", gamma.view()),
        ("beta", beta.view()),
        ("running mean", running_mean.view()),
        ("running var", running_var.view()),
    ])?;
    if !(A::zero()..=A::one()).contains(&params.momentum) {
        return Err(KernelError::argument(
            OP,
            format!("momentum {} is outside [0, 1]", params.momentum),
        ));
    }
    let (mean, var) = bn.batch_stats()?;
    let y = affine(&bn.normalized(mean.view(), var.view()), gamma, beta);
    let m = count::<A>(bn.x.ncols());
    let unbiased = &var * (m / (m - A::one()));
    let blend = |running: &ArrayView1<'_, A>, batch: &Array1<A>| {
        (running * (A::one() - params.momentum) + batch * params.momentum).into_dyn()
    };
    Ok(BatchNormTrainOutput {
        y: bn.split.to_tensor(y)?,
        running_mean: blend(&running_mean, &mean),
        running_var: blend(&running_var, &unbiased),
        batch_mean: mean.into_dyn(),
        batch_var: var.into_dyn(),
    })
}

/// Gradients of [`batch_norm_train`], differentiating through the batch mean and variance.
pub fn batch_norm_train_backward<A: NdFloat>(
    x: ArrayViewD<'_, A>,
    gamma: ArrayViewD<'_, A>,
    dy: ArrayViewD<'_, A>,
    params: BatchNormParams<A>,
) -> KernelResult<BatchNormGrads<A>> {
    const OP: &str = "batch_norm_train_backward";
    let bn = Channels::new(OP, x, params)?;
    let [gamma] = bn.per_channel([("gamma", gamma.view())])?;
    let (mean, var) = bn.batch_stats()?;
    let xhat = bn.normalized(mean.view(), var.view());
    let dy = bn.output_gradient(dy)?;
    let m = count::<A>(bn.x.ncols());
    // dx = γ/(σ·M) · (M·dy − Σdy − x̂·Σ(dy·x̂)), per channel.
    let mut dx = Array2::zeros(bn.x.raw_dim());
    Zip::from(dx.outer_iter_mut())
        .and(xhat.outer_iter())
        .and(dy.outer_iter())
        .and(&gamma)
        .and(&var)
        .for_each(|mut dx, xhat, dy, &g, &v| {
            let sum_dy = dy.sum();
            let sum_dy_xhat = (&dy * &xhat).sum();
            let scale = g / ((v + params.eps).sqrt() * m);
            Zip::from(&mut dx)
                .and(&xhat)
                .and(&dy)
                .for_each(|dx, &xh, &d| *dx = scale * (m * d - sum_dy - xh * sum_dy_xhat));
        });
    bn.grads(dx, &xhat, &dy)
}

/// Normalises with the given running statistics (eval mode); per-channel operands are `[C]`.
pub fn batch_norm_eval<A: NdFloat>(
    x: ArrayViewD<'_, A>,
    gamma: ArrayViewD<'_, A>,
    beta: ArrayViewD<'_, A>,
    running_mean: ArrayViewD<'_, A>,
    running_var: ArrayViewD<'_, A>,
    params: BatchNormParams<A>,
) -> KernelResult<ArrayD<A>> {
    const OP: &str = "batch_norm_eval";
    let bn = Channels::new(OP, x, params)?;
    let [gamma, beta, mean, var] = bn.per_channel([
        ("gamma", gamma.view()),
        ("beta", beta.view()),
        ("running mean", running_mean.view()),
        ("running var", running_var.view()),
    ])?;
    let y = affine(&bn.normalized(mean, var), gamma, beta);
    bn.split.to_tensor(y)
}

/// Gradients of [`batch_norm_eval`]; the running statistics are constants there.
pub fn batch_norm_eval_backward<A: NdFloat>(
    x: ArrayViewD<'_, A>,
    gamma: ArrayViewD<'_, A>,
    running_mean: ArrayViewD<'_, A>,
    running_var: ArrayViewD<'_, A>,
    dy: ArrayViewD<'_, A>,
    params: BatchNormParams<A>,
) -> KernelResult<BatchNormGrads<A>> {
    const OP: &str = "batch_norm_eval_backward";
    let bn = Channels::new(OP, x, params)?;
    let [gamma, mean, var] = bn.per_channel([
        ("gamma", gamma.view()),
        ("running mean", running_mean.view()),
        ("running var", running_var.view()),
    ])?;
    let xhat = bn.normalized(mean, var);
    let dy = bn.output_gradient(dy)?;
    let scale = Zip::from(&gamma)
        .and(&var)
        .map_collect(|&g, &v| g / (v + params.eps).sqrt());
    let dx = &dy * &scale.insert_axis(Axis(1));
    bn.grads(dx, &xhat, &dy)
}

/// The input as a `[C, M]` matrix (one row per channel) plus what is needed to map back.
struct Channels<A> {
    op: &'static str,
    split: AxisSplit,
    x: Array2<A>,
    shape: Vec<usize>,
    eps: A,
}

impl<A: NdFloat> Channels<A> {
    fn new(
        op: &'static str,
        x: ArrayViewD<'_, A>,
        params: BatchNormParams<A>,
    ) -> KernelResult<Self> {
        check_axis(op, params.axis, x.shape())?;
        if params.eps.is_nan() || params.eps < A::zero() {
            return Err(KernelError::argument(
                op,
                format!("eps {} must be non-negative", params.eps),
            ));
        }
        let shape = x.shape().to_vec();
        let others: Vec<usize> = (0..shape.len()).filter(|&a| a != params.axis).collect();
        let split = AxisSplit::new(op, &shape, &others)?;
        Ok(Self {
            op,
            x: split.to_matrix(x)?,
            split,
            shape,
            eps: params.eps,
        })
    }

    /// Checks that each named operand is `[C]` and views it as a vector.
    fn per_channel<'a, const K: usize>(
        &self,
        operands: [(&str, ArrayViewD<'a, A>); K],
    ) -> KernelResult<[ArrayView1<'a, A>; K]> {
        let channels = [self.x.nrows()];
        let mut views = Vec::with_capacity(K);
        for (name, v) in operands {
            expect_shape(self.op, name, v.shape(), &channels)?;
            views.push(fixed_rank::<_, Ix1>(self.op, name, v)?);
        }
        views
            .try_into()
            .map_err(|_| KernelError::argument(self.op, "per-channel operand count"))
    }

    /// Per-channel mean and biased variance of the batch.
    fn batch_stats(&self) -> KernelResult<(Array1<A>, Array1<A>)> {
        if self.x.ncols() < 2 {
            return Err(KernelError::shape(
                self.op,
                format!(
                    "training needs more than one value per channel, input {:?} has {}",
                    self.shape,
                    self.x.ncols()
                ),
            ));
        }
        let m = count::<A>(self.x.ncols());
        let mean = self.x.sum_axis(Axis(1)) / m;
        let centered = &self.x - &mean.view().insert_axis(Axis(1));
        let var = (&centered * &centered).sum_axis(Axis(1)) / m;
        Ok((mean, var))
    }

    /// x̂ = (x − mean) / √(var + eps), per channel row.
    fn normalized(&self, mean: ArrayView1<'_, A>, var: ArrayView1<'_, A>) -> Array2<A> {
        let inv_std = var.mapv(|v| (v + self.eps).sqrt().recip());
        (&self.x - &mean.insert_axis(Axis(1))) * &inv_std.insert_axis(Axis(1))
    }

    fn output_gradient(&self, dy: ArrayViewD<'_, A>) -> KernelResult<Array2<A>> {
        expect_shape(self.op, "output gradient", dy.shape(), &self.shape)?;
        self.split.to_matrix(dy)
    }

    /// Packs `dx` with the affine gradients, which are the same in both modes.
    fn grads(
        &self,
        dx: Array2<A>,
        xhat: &Array2<A>,
        dy: &Array2<A>,
    ) -> KernelResult<BatchNormGrads<A>> {
        Ok(BatchNormGrads {
            dx: self.split.to_tensor(dx)?,
            dgamma: (dy * xhat).sum_axis(Axis(1)).into_dyn(),
            dbeta: dy.sum_axis(Axis(1)).into_dyn(),
        })
    }
}

/// y = γ·x̂ + β, per channel row.
fn affine<A: NdFloat>(
    xhat: &Array2<A>,
    gamma: ArrayView1<'_, A>,
    beta: ArrayView1<'_, A>,
) -> Array2<A> {
    xhat * &gamma.insert_axis(Axis(1)) + beta.insert_axis(Axis(1))
}
