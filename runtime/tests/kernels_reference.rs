//! Tests of the reference kernels: hand-computed values, finite-difference gradient checks in
//! f64 for every op and every differentiable input, and shape errors that must not panic.

use ndarray::{ArrayD, IxDyn, arr1, arr2, array};
use snn_runtime::kernels::KernelError;
use snn_runtime::kernels::finite_difference::{GradcheckReport, gradcheck};
use snn_runtime::kernels::reference::*;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Deterministic 64-bit LCG (Knuth's MMIX constants), so failures reproduce without `rand`.
struct Lcg(u64);

impl Lcg {
    fn next_unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [-1, 1).
    fn array(&mut self, shape: &[usize]) -> ArrayD<f64> {
        ArrayD::from_shape_simple_fn(IxDyn(shape), || 2.0 * self.next_unit() - 1.0)
    }

    /// Uniform in [lo, hi).
    fn uniform(&mut self, shape: &[usize], lo: f64, hi: f64) -> ArrayD<f64> {
        ArrayD::from_shape_simple_fn(IxDyn(shape), || lo + (hi - lo) * self.next_unit())
    }

    /// |v| in [0.1, 1) with a random sign, to stay clear of the kinks of relu and abs.
    fn away_from_zero(&mut self, shape: &[usize]) -> ArrayD<f64> {
        ArrayD::from_shape_simple_fn(IxDyn(shape), || {
            let v = 0.1 + 0.9 * self.next_unit();
            if self.next_unit() < 0.5 { -v } else { v }
        })
    }

    /// A 0/1 mask.
    fn mask(&mut self, shape: &[usize]) -> ArrayD<f64> {
        ArrayD::from_shape_simple_fn(IxDyn(shape), || f64::from(u8::from(self.next_unit() < 0.6)))
    }
}

const EPS: f64 = 1e-6;
const TOL: f64 = 1e-6;

/// `Σ y·r`: a scalar loss whose gradient with respect to `y` is `r`.
fn project(y: &ArrayD<f64>, r: &ArrayD<f64>) -> f64 {
    assert_eq!(y.shape(), r.shape(), "projection shape");
    (y * r).sum()
}

type Grads = Result<(f64, Vec<ArrayD<f64>>), KernelError>;

/// Gradchecks `f` at `inputs`, prints the worst error (visible with `--nocapture`), asserts.
fn check(
    name: &str,
    inputs: &[ArrayD<f64>],
    f: impl FnMut(&[ArrayD<f64>]) -> Grads,
) -> GradcheckReport {
    let report = gradcheck(f, inputs, EPS, TOL).expect("gradcheck runs");
    println!(
        "gradcheck {name:<40} max rel err {:.3e} (input {}, index {:?})",
        report.max_rel_error, report.input, report.index
    );
    assert!(report.passed(), "{name}: {report:?}");
    report
}

fn assert_close(actual: &ArrayD<f64>, expected: &ArrayD<f64>, tol: f64) {
    assert_eq!(actual.shape(), expected.shape(), "shapes differ");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() <= tol, "got {actual}, expected {expected}");
    }
}

fn expect_err<T: std::fmt::Debug>(res: Result<T, KernelError>, op: &str) -> KernelError {
    let err = res.expect_err("expected a shape/argument error");
    assert_eq!(err.op(), op, "{err}");
    assert!(err.to_string().starts_with(op), "{err}");
    err
}

fn d(a: impl Into<ArrayD<f64>>) -> ArrayD<f64> {
    a.into()
}

fn nine() -> ArrayD<f64> {
    ArrayD::from_shape_vec(IxDyn(&[1, 1, 3, 3]), (1..=9).map(f64::from).collect()).expect("3x3")
}

// ---------------------------------------------------------------------------------------------
// conv2d

#[test]
fn conv2d_by_hand() {
    let x = nine();
    // [[1, 0], [0, -1]] computes x[i, j] − x[i+1, j+1], which is −4 everywhere on 1..9.
    let w = d(array![[[[1.0, 0.0], [0.0, -1.0]]]].into_dyn());
    let b = d(arr1(&[0.5]).into_dyn());
    let y = conv2d(x.view(), w.view(), Some(b.view()), Conv2dParams::default()).expect("conv");
    assert_close(&y, &ArrayD::from_elem(IxDyn(&[1, 1, 2, 2]), -3.5), 0.0);

    // A 3×3 box filter with padding 1 and stride 2 sums the 2×2 corners of the image.
    let ones = ArrayD::ones(IxDyn(&[1, 1, 3, 3]));
    let p = Conv2dParams {
        stride: (2, 2),
        padding: (1, 1),
    };
    let y = conv2d(x.view(), ones.view(), None, p).expect("conv");
    assert_close(
        &y,
        &d(array![[[[12.0, 16.0], [24.0, 28.0]]]].into_dyn()),
        0.0,
    );

    let same = Conv2dParams {
        stride: (1, 1),
        padding: (1, 1),
    };
    let y = conv2d(x.view(), ones.view(), None, same).expect("conv");
    assert_eq!(y.shape(), &[1, 1, 3, 3]);
    assert_eq!(y[[0, 0, 1, 1]], 45.0);
    assert_eq!(y[[0, 0, 0, 0]], 12.0);
    let zero_bias = ArrayD::zeros(IxDyn(&[1]));
    let with_bias = conv2d(x.view(), ones.view(), Some(zero_bias.view()), same).expect("conv");
    assert_eq!(with_bias, y);
}

#[test]
fn conv2d_backward_by_hand() {
    let x = nine();
    let w = ArrayD::ones(IxDyn(&[1, 1, 2, 2]));
    let dy = ArrayD::ones(IxDyn(&[1, 1, 2, 2]));
    let g = conv2d_backward(x.view(), w.view(), dy.view(), Conv2dParams::default()).expect("bwd");
    // Each input pixel's gradient counts the windows covering it.
    assert_close(
        &g.dx,
        &d(array![[[[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]]].into_dyn()),
        0.0,
    );
    assert_close(
        &g.dw,
        &d(array![[[[12.0, 16.0], [24.0, 28.0]]]].into_dyn()),
        0.0,
    );
    assert_close(&g.db, &d(arr1(&[4.0]).into_dyn()), 0.0);
}

#[test]
fn conv2d_gradcheck() {
    let mut rng = Lcg(1);
    for (params, shape, kernel) in [
        (Conv2dParams::default(), [2, 3, 5, 4], [4, 3, 3, 3]),
        (
            Conv2dParams {
                stride: (2, 1),
                padding: (1, 2),
            },
            [2, 3, 5, 6],
            [4, 3, 3, 2],
        ),
    ] {
        let x = rng.array(&shape);
        let w = rng.array(&kernel);
        let b = rng.array(&[kernel[0]]);
        let y = conv2d(x.view(), w.view(), Some(b.view()), params).expect("conv");
        let r = rng.array(y.shape());
        check(&format!("conv2d {params:?}"), &[x, w, b], |xs| {
            let y = conv2d(xs[0].view(), xs[1].view(), Some(xs[2].view()), params)?;
            let g = conv2d_backward(xs[0].view(), xs[1].view(), r.view(), params)?;
            Ok((project(&y, &r), vec![g.dx, g.dw, g.db]))
        });
    }
}

#[test]
fn conv2d_shape_errors() {
    let x = ArrayD::<f64>::zeros(IxDyn(&[1, 2, 4, 4]));
    let w = ArrayD::<f64>::zeros(IxDyn(&[3, 2, 3, 3]));
    let p = Conv2dParams::default();
    let rank3 = ArrayD::<f64>::zeros(IxDyn(&[2, 4, 4]));
    expect_err(conv2d(rank3.view(), w.view(), None, p), "conv2d");
    expect_err(conv2d(x.view(), rank3.view(), None, p), "conv2d");
    let wrong_c = ArrayD::<f64>::zeros(IxDyn(&[3, 5, 3, 3]));
    let err = expect_err(conv2d(x.view(), wrong_c.view(), None, p), "conv2d");
    assert!(err.to_string().contains("[3, 5, 3, 3]") && err.to_string().contains("[1, 2, 4, 4]"));
    let bias = ArrayD::<f64>::zeros(IxDyn(&[2]));
    expect_err(conv2d(x.view(), w.view(), Some(bias.view()), p), "conv2d");
    let big = ArrayD::<f64>::zeros(IxDyn(&[3, 2, 5, 5]));
    expect_err(conv2d(x.view(), big.view(), None, p), "conv2d");
    let zero_stride = Conv2dParams {
        stride: (0, 1),
        ..p
    };
    expect_err(conv2d(x.view(), w.view(), None, zero_stride), "conv2d");
    let dy = ArrayD::<f64>::zeros(IxDyn(&[1, 3, 3, 2]));
    expect_err(
        conv2d_backward(x.view(), w.view(), dy.view(), p),
        "conv2d_backward",
    );
}

// ---------------------------------------------------------------------------------------------
// dense

#[test]
fn dense_by_hand() {
    let x = d(arr2(&[[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]]).into_dyn());
    let w = d(arr2(&[[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]]).into_dyn());
    let b = d(arr1(&[0.5, -1.0]).into_dyn());
    let y = dense(x.view(), w.view(), Some(b.view()), 1).expect("dense");
    assert_close(&y, &d(arr2(&[[-1.5, 3.0], [-0.5, -2.0]]).into_dyn()), 0.0);

    // Contracting axis 0 is the same as contracting the last axis of the transpose.
    let xt = x.t().to_owned();
    let y0 = dense(xt.view(), w.view(), Some(b.view()), 0).expect("dense axis 0");
    assert_close(&y0, &y.t().to_owned(), 0.0);

    // A rank-1 input is a single vector; no bias means no offset.
    let v = d(arr1(&[1.0, 2.0, 3.0]).into_dyn());
    let yv = dense(v.view(), w.view(), None, 0).expect("dense rank 1");
    assert_close(&yv, &d(arr1(&[-2.0, 4.0]).into_dyn()), 0.0);

    let dy = ArrayD::ones(IxDyn(&[2, 2]));
    let g = dense_backward(x.view(), w.view(), dy.view(), 1).expect("bwd");
    assert_close(
        &g.dx,
        &d(arr2(&[[3.0, 1.0, -1.0], [3.0, 1.0, -1.0]]).into_dyn()),
        0.0,
    );
    assert_close(
        &g.dw,
        &d(arr2(&[[1.0, 1.0, 4.0], [1.0, 1.0, 4.0]]).into_dyn()),
        0.0,
    );
    assert_close(&g.db, &d(arr1(&[2.0, 2.0]).into_dyn()), 0.0);
}

#[test]
fn dense_gradcheck_every_axis() {
    let mut rng = Lcg(2);
    let shape = [3, 4, 5];
    for axis in 0..3 {
        let x = rng.array(&shape);
        let w = rng.array(&[2, shape[axis]]);
        let b = rng.array(&[2]);
        let mut y_shape = shape;
        y_shape[axis] = 2;
        let r = rng.array(&y_shape);
        check(&format!("dense axis {axis}"), &[x, w, b], |xs| {
            let y = dense(xs[0].view(), xs[1].view(), Some(xs[2].view()), axis)?;
            let g = dense_backward(xs[0].view(), xs[1].view(), r.view(), axis)?;
            Ok((project(&y, &r), vec![g.dx, g.dw, g.db]))
        });
    }
}

#[test]
fn dense_shape_errors() {
    let x = ArrayD::<f64>::zeros(IxDyn(&[2, 3]));
    let w = ArrayD::<f64>::zeros(IxDyn(&[4, 3]));
    expect_err(dense(x.view(), w.view(), None, 2), "dense");
    expect_err(dense(x.view(), w.view(), None, 0), "dense");
    let w3 = ArrayD::<f64>::zeros(IxDyn(&[4, 3, 1]));
    expect_err(dense(x.view(), w3.view(), None, 1), "dense");
    let b = ArrayD::<f64>::zeros(IxDyn(&[3]));
    expect_err(dense(x.view(), w.view(), Some(b.view()), 1), "dense");
    let dy = ArrayD::<f64>::zeros(IxDyn(&[2, 3]));
    expect_err(
        dense_backward(x.view(), w.view(), dy.view(), 1),
        "dense_backward",
    );
}

// ---------------------------------------------------------------------------------------------
// pooling

#[test]
fn pooling_by_hand() {
    let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 4, 4]), (0..16).map(f64::from).collect())
        .expect("4x4");
    let p = Pool2dParams::square(2);
    let avg = avg_pool2d(x.view(), p).expect("avg");
    assert_close(
        &avg,
        &d(array![[[[2.5, 4.5], [10.5, 12.5]]]].into_dyn()),
        0.0,
    );
    let max = max_pool2d(x.view(), p).expect("max");
    assert_close(
        &max,
        &d(array![[[[5.0, 7.0], [13.0, 15.0]]]].into_dyn()),
        0.0,
    );

    // Floor mode: a 5×5 input pools like its top-left 4×4.
    let x5 = ArrayD::from_shape_vec(IxDyn(&[1, 1, 5, 5]), (0..25).map(f64::from).collect())
        .expect("5x5");
    assert_eq!(
        max_pool2d(x5.view(), p).expect("max").shape(),
        &[1, 1, 2, 2]
    );

    // Overlapping 2×2 windows with stride 1 on 3×3: gradients add up where windows overlap.
    let overlap = Pool2dParams {
        kernel: (2, 2),
        stride: (1, 1),
    };
    let dy = ArrayD::ones(IxDyn(&[1, 1, 2, 2]));
    let dx = avg_pool2d_backward(&[1, 1, 3, 3], dy.view(), overlap).expect("avg bwd");
    assert_close(
        &dx,
        &d(array![[[[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]]].into_dyn()),
        0.0,
    );
}

#[test]
fn max_pool_ties_go_to_first_argmax() {
    let x = d(array![[[[1.0, 3.0, 3.0, 0.0], [3.0, 3.0, 2.0, 2.0]]]].into_dyn());
    let dy = d(array![[[[10.0, 20.0]]]].into_dyn());
    let dx = max_pool2d_backward(x.view(), dy.view(), Pool2dParams::square(2)).expect("bwd");
    assert_close(
        &dx,
        &d(array![[[[0.0, 10.0, 20.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]].into_dyn()),
        0.0,
    );
}

#[test]
fn pooling_gradcheck() {
    let mut rng = Lcg(3);
    for p in [
        Pool2dParams::square(2),
        Pool2dParams {
            kernel: (3, 2),
            stride: (2, 1),
        },
    ] {
        let x = rng.array(&[2, 3, 7, 6]);
        let y = avg_pool2d(x.view(), p).expect("avg");
        let r = rng.array(y.shape());
        check(
            &format!("avg_pool2d {p:?}"),
            std::slice::from_ref(&x),
            |xs| {
                let y = avg_pool2d(xs[0].view(), p)?;
                let dx = avg_pool2d_backward(xs[0].shape(), r.view(), p)?;
                Ok((project(&y, &r), vec![dx]))
            },
        );
        check(&format!("max_pool2d {p:?}"), &[x], |xs| {
            let y = max_pool2d(xs[0].view(), p)?;
            let dx = max_pool2d_backward(xs[0].view(), r.view(), p)?;
            Ok((project(&y, &r), vec![dx]))
        });
    }
}

#[test]
fn pooling_shape_errors() {
    let x = ArrayD::<f64>::zeros(IxDyn(&[1, 1, 4, 4]));
    let rank3 = ArrayD::<f64>::zeros(IxDyn(&[1, 4, 4]));
    expect_err(
        avg_pool2d(rank3.view(), Pool2dParams::square(2)),
        "avg_pool2d",
    );
    expect_err(max_pool2d(x.view(), Pool2dParams::square(0)), "max_pool2d");
    expect_err(max_pool2d(x.view(), Pool2dParams::square(5)), "max_pool2d");
    let dy = ArrayD::<f64>::zeros(IxDyn(&[1, 1, 3, 2]));
    expect_err(
        avg_pool2d_backward(&[1, 1, 4, 4], dy.view(), Pool2dParams::square(2)),
        "avg_pool2d_backward",
    );
    expect_err(
        max_pool2d_backward(x.view(), dy.view(), Pool2dParams::square(2)),
        "max_pool2d_backward",
    );
}

// ---------------------------------------------------------------------------------------------
// batch norm

/// Textbook batch norm with plain loops over a `[N, C, L]` tensor, channel axis 1.
fn textbook_batch_norm(x: &ArrayD<f64>, gamma: &[f64], beta: &[f64], eps: f64) -> ArrayD<f64> {
    let (n, c, l) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let mut y = x.clone();
    for ch in 0..c {
        let values: Vec<f64> = (0..n)
            .flat_map(|i| (0..l).map(move |j| (i, j)))
            .map(|(i, j)| x[[i, ch, j]])
            .collect();
        let m = values.len() as f64;
        let mean = values.iter().sum::<f64>() / m;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
        for i in 0..n {
            for j in 0..l {
                y[[i, ch, j]] = gamma[ch] * (x[[i, ch, j]] - mean) / (var + eps).sqrt() + beta[ch];
            }
        }
    }
    y
}

#[test]
fn batch_norm_by_hand() {
    // One channel, values 1..4: mean 2.5, biased var 1.25, unbiased var 5/3.
    let x = d(arr2(&[[1.0], [2.0], [3.0], [4.0]]).into_dyn());
    let (one, zero) = (d(arr1(&[1.0]).into_dyn()), d(arr1(&[0.0]).into_dyn()));
    let params = BatchNormParams::new(1);
    let out = batch_norm_train(
        x.view(),
        one.view(),
        zero.view(),
        zero.view(),
        one.view(),
        params,
    )
    .expect("bn");
    let s = (1.25_f64 + 1e-5).sqrt();
    assert_close(
        &out.y,
        &d(arr2(&[[-1.5 / s], [-0.5 / s], [0.5 / s], [1.5 / s]]).into_dyn()),
        1e-15,
    );
    assert_close(&out.batch_mean, &d(arr1(&[2.5]).into_dyn()), 0.0);
    assert_close(&out.batch_var, &d(arr1(&[1.25]).into_dyn()), 0.0);
    assert_close(&out.running_mean, &d(arr1(&[0.25]).into_dyn()), 1e-15);
    assert_close(
        &out.running_var,
        &d(arr1(&[0.9 + 0.1 * 5.0 / 3.0]).into_dyn()),
        1e-15,
    );

    // Eval mode uses the running statistics it is given.
    let (mean, var) = (d(arr1(&[2.0]).into_dyn()), d(arr1(&[4.0]).into_dyn()));
    let gamma = d(arr1(&[3.0]).into_dyn());
    let beta = d(arr1(&[1.0]).into_dyn());
    let eval = BatchNormParams { eps: 0.0, ..params };
    let y = batch_norm_eval(
        x.view(),
        gamma.view(),
        beta.view(),
        mean.view(),
        var.view(),
        eval,
    )
    .expect("bn eval");
    assert_close(
        &y,
        &d(arr2(&[[-0.5], [1.0], [2.5], [4.0]]).into_dyn()),
        1e-15,
    );

    // Textbook formula on [N, C, L] with channel axis 1.
    let mut rng = Lcg(4);
    let x = rng.array(&[3, 2, 4]);
    let (g, b) = ([1.5, -0.5], [0.1, 0.2]);
    let out = batch_norm_train(
        x.view(),
        d(arr1(&g).into_dyn()).view(),
        d(arr1(&b).into_dyn()).view(),
        ArrayD::zeros(IxDyn(&[2])).view(),
        ArrayD::ones(IxDyn(&[2])).view(),
        params,
    )
    .expect("bn");
    assert_close(&out.y, &textbook_batch_norm(&x, &g, &b, 1e-5), 1e-14);
}

#[test]
fn batch_norm_gradcheck() {
    let mut rng = Lcg(5);
    for (shape, axis) in [([4usize, 3, 5], 1usize), ([2, 3, 4], 2), ([6, 2, 1], 0)] {
        let c = shape[axis];
        let params = BatchNormParams::new(axis);
        let x = rng.array(&shape);
        let gamma = rng.uniform(&[c], 0.5, 1.5);
        let beta = rng.array(&[c]);
        let running_mean = rng.array(&[c]);
        let running_var = rng.uniform(&[c], 0.5, 2.0);
        let r = rng.array(&shape);
        let inputs = [x, gamma, beta];
        check(
            &format!("batch_norm_train {shape:?} axis {axis}"),
            &inputs,
            |xs| {
                let out = batch_norm_train(
                    xs[0].view(),
                    xs[1].view(),
                    xs[2].view(),
                    running_mean.view(),
                    running_var.view(),
                    params,
                )?;
                let g = batch_norm_train_backward(xs[0].view(), xs[1].view(), r.view(), params)?;
                Ok((project(&out.y, &r), vec![g.dx, g.dgamma, g.dbeta]))
            },
        );
        check(
            &format!("batch_norm_eval {shape:?} axis {axis}"),
            &inputs,
            |xs| {
                let (m, v) = (&running_mean, &running_var);
                let y = batch_norm_eval(
                    xs[0].view(),
                    xs[1].view(),
                    xs[2].view(),
                    m.view(),
                    v.view(),
                    params,
                )?;
                let g = batch_norm_eval_backward(
                    xs[0].view(),
                    xs[1].view(),
                    m.view(),
                    v.view(),
                    r.view(),
                    params,
                )?;
                Ok((project(&y, &r), vec![g.dx, g.dgamma, g.dbeta]))
            },
        );
    }
}

#[test]
fn batch_norm_shape_errors() {
    let x = ArrayD::<f64>::zeros(IxDyn(&[4, 3]));
    let c3 = ArrayD::<f64>::ones(IxDyn(&[3]));
    let c2 = ArrayD::<f64>::ones(IxDyn(&[2]));
    let p = BatchNormParams::new(1);
    expect_err(
        batch_norm_train(x.view(), c2.view(), c3.view(), c3.view(), c3.view(), p),
        "batch_norm_train",
    );
    expect_err(
        batch_norm_eval(x.view(), c3.view(), c3.view(), c3.view(), c2.view(), p),
        "batch_norm_eval",
    );
    let bad_axis = BatchNormParams::new(2);
    expect_err(
        batch_norm_eval(
            x.view(),
            c3.view(),
            c3.view(),
            c3.view(),
            c3.view(),
            bad_axis,
        ),
        "batch_norm_eval",
    );
    // One value per channel has no variance to train with.
    let single = ArrayD::<f64>::zeros(IxDyn(&[1, 3]));
    expect_err(
        batch_norm_train(single.view(), c3.view(), c3.view(), c3.view(), c3.view(), p),
        "batch_norm_train",
    );
    let momentum = BatchNormParams { momentum: 1.5, ..p };
    expect_err(
        batch_norm_train(
            x.view(),
            c3.view(),
            c3.view(),
            c3.view(),
            c3.view(),
            momentum,
        ),
        "batch_norm_train",
    );
    let dy = ArrayD::<f64>::zeros(IxDyn(&[3, 4]));
    expect_err(
        batch_norm_train_backward(x.view(), c3.view(), dy.view(), p),
        "batch_norm_train_backward",
    );
    expect_err(
        batch_norm_eval_backward(x.view(), c3.view(), c3.view(), c3.view(), dy.view(), p),
        "batch_norm_eval_backward",
    );
}

// ---------------------------------------------------------------------------------------------
// reduce

#[test]
fn reduce_by_hand() {
    let x = d(arr2(&[[1.0, 5.0, 2.0], [7.0, 0.0, 7.0]]).into_dyn());
    let sum = reduce(x.view(), ReduceKind::Sum, &[1], false).expect("sum");
    assert_close(&sum, &d(arr1(&[8.0, 14.0]).into_dyn()), 0.0);
    let mean = reduce(x.view(), ReduceKind::Mean, &[0], false).expect("mean");
    assert_close(&mean, &d(arr1(&[4.0, 2.5, 4.5]).into_dyn()), 0.0);
    let max = reduce(x.view(), ReduceKind::Max, &[1], true).expect("max");
    assert_close(&max, &d(arr2(&[[5.0], [7.0]]).into_dyn()), 0.0);
    let all = reduce(x.view(), ReduceKind::Sum, &[1, 0], false).expect("all");
    assert_eq!(all.shape(), &[] as &[usize]);
    assert_eq!(all[[]], 22.0);
    let none = reduce(x.view(), ReduceKind::Max, &[], true).expect("identity");
    assert_eq!(none, x);

    // Ties: the gradient goes to the first maximum of each reduced slice.
    let dy = d(arr2(&[[1.0], [2.0]]).into_dyn());
    let dx = reduce_backward(x.view(), ReduceKind::Max, &[1], true, dy.view()).expect("bwd");
    assert_close(
        &dx,
        &d(arr2(&[[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]).into_dyn()),
        0.0,
    );
    let dy = d(arr1(&[3.0, 6.0, 9.0]).into_dyn());
    let dx = reduce_backward(x.view(), ReduceKind::Mean, &[0], false, dy.view()).expect("bwd");
    assert_close(
        &dx,
        &d(arr2(&[[1.5, 3.0, 4.5], [1.5, 3.0, 4.5]]).into_dyn()),
        0.0,
    );

    // Max over several axes: first argmax in row-major order of the reduced sub-tensor.
    let t = d(array![[[1.0, 9.0], [9.0, 0.0]], [[2.0, 3.0], [4.0, 5.0]]].into_dyn());
    let dy = d(arr1(&[1.0, 1.0]).into_dyn());
    let dt = reduce_backward(t.view(), ReduceKind::Max, &[2, 1], false, dy.view()).expect("bwd");
    assert_close(
        &dt,
        &d(array![[[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]].into_dyn()),
        0.0,
    );
}

#[test]
fn reduce_gradcheck() {
    let mut rng = Lcg(6);
    let shape = [3, 4, 2];
    for kind in [ReduceKind::Sum, ReduceKind::Mean, ReduceKind::Max] {
        for axes in [&[][..], &[1], &[0, 2], &[2, 0], &[0, 1, 2]] {
            for keepdim in [false, true] {
                let x = rng.array(&shape);
                let y = reduce(x.view(), kind, axes, keepdim).expect("reduce");
                let r = rng.array(y.shape());
                check(
                    &format!("reduce {kind:?} {axes:?} keepdim={keepdim}"),
                    &[x],
                    |xs| {
                        let y = reduce(xs[0].view(), kind, axes, keepdim)?;
                        let dx = reduce_backward(xs[0].view(), kind, axes, keepdim, r.view())?;
                        Ok((project(&y, &r), vec![dx]))
                    },
                );
            }
        }
    }
}

#[test]
fn reduce_shape_errors() {
    let x = ArrayD::<f64>::zeros(IxDyn(&[2, 3]));
    expect_err(reduce(x.view(), ReduceKind::Sum, &[2], false), "reduce");
    expect_err(reduce(x.view(), ReduceKind::Sum, &[1, 1], false), "reduce");
    let empty = ArrayD::<f64>::zeros(IxDyn(&[2, 0]));
    expect_err(reduce(empty.view(), ReduceKind::Max, &[1], false), "reduce");
    let dy = ArrayD::<f64>::zeros(IxDyn(&[2, 1]));
    expect_err(
        reduce_backward(x.view(), ReduceKind::Sum, &[1], false, dy.view()),
        "reduce_backward",
    );
}

// ---------------------------------------------------------------------------------------------
// broadcasting binary ops

#[test]
fn binary_by_hand() {
    let a = d(arr2(&[[1.0], [2.0]]).into_dyn());
    let b = d(arr2(&[[10.0, 20.0, 40.0]]).into_dyn());
    let sum = binary(BinaryOp::Add, a.view(), b.view()).expect("add");
    assert_close(
        &sum,
        &d(arr2(&[[11.0, 21.0, 41.0], [12.0, 22.0, 42.0]]).into_dyn()),
        0.0,
    );
    let q = binary(BinaryOp::Div, b.view(), a.view()).expect("div");
    assert_close(
        &q,
        &d(arr2(&[[10.0, 20.0, 40.0], [5.0, 10.0, 20.0]]).into_dyn()),
        0.0,
    );
    let diff = binary(BinaryOp::Sub, a.view(), b.view()).expect("sub");
    assert_eq!(diff[[1, 2]], -38.0);

    let dy = ArrayD::ones(IxDyn(&[2, 3]));
    let g = binary_backward(BinaryOp::Mul, a.view(), b.view(), dy.view()).expect("bwd");
    assert_close(&g.da, &d(arr2(&[[70.0], [70.0]]).into_dyn()), 0.0);
    assert_close(&g.db, &d(arr2(&[[3.0, 3.0, 3.0]]).into_dyn()), 0.0);

    let folded = sum_to_shape(dy.view(), &[1, 3]).expect("fold");
    assert_close(&folded, &d(arr2(&[[2.0, 2.0, 2.0]]).into_dyn()), 0.0);
    assert_eq!(sum_to_shape(dy.view(), &[2, 3]).expect("identity"), dy);
    assert_eq!(
        broadcast_shape("test", &[2, 1, 4], &[1, 3, 4]).expect("shape"),
        vec![2, 3, 4]
    );
}

#[test]
fn binary_gradcheck() {
    let mut rng = Lcg(7);
    for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
        for (sa, sb) in [
            ([2, 3, 4], [2, 3, 4]),
            ([2, 1, 4], [1, 3, 4]),
            ([2, 3, 4], [1, 1, 1]),
        ] {
            let a = rng.array(&sa);
            // Keep divisors away from zero.
            let b = rng.away_from_zero(&sb) * 2.0;
            let r = rng.array(&[2, 3, 4]);
            check(&format!("binary {op:?} {sa:?} {sb:?}"), &[a, b], |xs| {
                let y = binary(op, xs[0].view(), xs[1].view())?;
                let g = binary_backward(op, xs[0].view(), xs[1].view(), r.view())?;
                Ok((project(&y, &r), vec![g.da, g.db]))
            });
        }
    }
}

#[test]
fn binary_shape_errors() {
    let a = ArrayD::<f64>::zeros(IxDyn(&[2, 3]));
    let b = ArrayD::<f64>::zeros(IxDyn(&[3]));
    let c = ArrayD::<f64>::zeros(IxDyn(&[2, 4]));
    expect_err(binary(BinaryOp::Add, a.view(), b.view()), "binary");
    let err = expect_err(binary(BinaryOp::Mul, a.view(), c.view()), "binary");
    assert!(err.to_string().contains("[2, 3]") && err.to_string().contains("[2, 4]"));
    expect_err(
        binary_backward(BinaryOp::Add, a.view(), a.view(), c.view()),
        "binary_backward",
    );
    expect_err(sum_to_shape(a.view(), &[2, 2]), "sum_to_shape");
    expect_err(sum_to_shape(a.view(), &[3]), "sum_to_shape");
    let small = ArrayD::<f64>::zeros(IxDyn(&[1, 3]));
    expect_err(sum_to_shape(small.view(), &[2, 3]), "sum_to_shape");
}

// ---------------------------------------------------------------------------------------------
// concat, dropout, unary

#[test]
fn concat_by_hand() {
    let a = d(arr2(&[[1.0, 2.0]]).into_dyn());
    let b = d(arr2(&[[3.0, 4.0], [5.0, 6.0]]).into_dyn());
    let y = concat(&[a.view(), b.view()], 0).expect("concat");
    assert_close(
        &y,
        &d(arr2(&[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]).into_dyn()),
        0.0,
    );
    let parts = concat_backward(y.view(), &[1, 2], 0).expect("split");
    assert_eq!(parts, vec![a, b]);
}

#[test]
fn concat_gradcheck() {
    let mut rng = Lcg(8);
    let inputs = [
        rng.array(&[2, 1, 3]),
        rng.array(&[2, 4, 3]),
        rng.array(&[2, 2, 3]),
    ];
    let r = rng.array(&[2, 7, 3]);
    check("concat axis 1", &inputs, |xs| {
        let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
        let y = concat(&views, 1)?;
        let sizes: Vec<usize> = xs.iter().map(|x| x.shape()[1]).collect();
        Ok((project(&y, &r), concat_backward(r.view(), &sizes, 1)?))
    });
}

#[test]
fn concat_shape_errors() {
    let a = ArrayD::<f64>::zeros(IxDyn(&[2, 3]));
    let b = ArrayD::<f64>::zeros(IxDyn(&[3, 3]));
    let c = ArrayD::<f64>::zeros(IxDyn(&[2, 3, 1]));
    expect_err(concat::<f64>(&[], 0), "concat");
    expect_err(concat(&[a.view(), b.view()], 1), "concat");
    expect_err(concat(&[a.view(), c.view()], 0), "concat");
    expect_err(concat(&[a.view()], 2), "concat");
    expect_err(concat_backward(a.view(), &[1, 1], 1), "concat_backward");
    expect_err(concat_backward(a.view(), &[1, 2], 5), "concat_backward");
}

#[test]
fn dropout_by_hand() {
    let x = d(arr1(&[1.0, 2.0, 3.0, 4.0]).into_dyn());
    let mask = d(arr1(&[1.0, 0.0, 1.0, 0.0]).into_dyn());
    let y = dropout(x.view(), mask.view(), 0.5).expect("dropout");
    assert_close(&y, &d(arr1(&[2.0, 0.0, 6.0, 0.0]).into_dyn()), 0.0);
    assert_eq!(
        dropout(x.view(), mask.view(), 0.0).expect("p=0"),
        &x * &mask
    );
    assert!(
        dropout(x.view(), mask.view(), 1.0)
            .expect("p=1")
            .iter()
            .all(|&v| v == 0.0)
    );
    let dx = dropout_backward(x.view(), mask.view(), 0.5).expect("bwd");
    assert_eq!(dx, y);
}

#[test]
fn dropout_gradcheck() {
    let mut rng = Lcg(9);
    let x = rng.array(&[3, 4, 5]);
    let mask = rng.mask(&[3, 4, 5]);
    let r = rng.array(&[3, 4, 5]);
    check("dropout p=0.3", &[x], |xs| {
        let y = dropout(xs[0].view(), mask.view(), 0.3)?;
        Ok((
            project(&y, &r),
            vec![dropout_backward(r.view(), mask.view(), 0.3)?],
        ))
    });
}

#[test]
fn dropout_errors() {
    let x = ArrayD::<f64>::zeros(IxDyn(&[4]));
    let mask = ArrayD::<f64>::zeros(IxDyn(&[2, 2]));
    expect_err(dropout(x.view(), mask.view(), 0.5), "dropout");
    expect_err(dropout(x.view(), x.view(), 1.5), "dropout");
    expect_err(dropout(x.view(), x.view(), f64::NAN), "dropout");
    expect_err(
        dropout_backward(x.view(), mask.view(), 0.5),
        "dropout_backward",
    );
}

#[test]
fn unary_by_hand() {
    let x = d(arr1(&[-2.0, 0.0, 1.0]).into_dyn());
    let dy = ArrayD::ones(IxDyn(&[3]));
    let cases: [(UnaryOp, [f64; 3], [f64; 3]); 5] = [
        (
            UnaryOp::Sigmoid,
            [1.0 / (1.0 + 2f64.exp()), 0.5, 1.0 / (1.0 + (-1f64).exp())],
            [0.104_993_585_403_507_4, 0.25, 0.196_611_933_241_481_85],
        ),
        (UnaryOp::Relu, [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]),
        (
            UnaryOp::Exp,
            [(-2f64).exp(), 1.0, 1f64.exp()],
            [(-2f64).exp(), 1.0, 1f64.exp()],
        ),
        (
            UnaryOp::Tanh,
            [(-2f64).tanh(), 0.0, 1f64.tanh()],
            [1.0 - (-2f64).tanh().powi(2), 1.0, 1.0 - 1f64.tanh().powi(2)],
        ),
        (UnaryOp::Abs, [2.0, 0.0, 1.0], [-1.0, 0.0, 1.0]),
    ];
    for (op, y, dydx) in cases {
        assert_close(&unary(op, x.view()), &d(arr1(&y).into_dyn()), 1e-15);
        let g = unary_backward(op, x.view(), dy.view()).expect("bwd");
        assert_close(&g, &d(arr1(&dydx).into_dyn()), 1e-15);
    }
    let pos = d(arr1(&[0.5, 1.0, 4.0]).into_dyn());
    assert_close(&unary(UnaryOp::Log, pos.view()), &pos.mapv(f64::ln), 0.0);
    let g = unary_backward(UnaryOp::Log, pos.view(), dy.view()).expect("bwd");
    assert_close(&g, &d(arr1(&[2.0, 1.0, 0.25]).into_dyn()), 0.0);
}

#[test]
fn unary_gradcheck() {
    let mut rng = Lcg(10);
    for op in [
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Tanh,
        UnaryOp::Abs,
    ] {
        let x = match op {
            UnaryOp::Log => rng.uniform(&[3, 4], 0.2, 3.0),
            UnaryOp::Relu | UnaryOp::Abs => rng.away_from_zero(&[3, 4]),
            _ => rng.array(&[3, 4]) * 3.0,
        };
        let r = rng.array(&[3, 4]);
        check(&format!("unary {op:?}"), &[x], |xs| {
            let y = unary(op, xs[0].view());
            Ok((
                project(&y, &r),
                vec![unary_backward(op, xs[0].view(), r.view())?],
            ))
        });
    }
}

#[test]
fn unary_shape_errors() {
    let x = ArrayD::<f64>::zeros(IxDyn(&[2, 3]));
    let dy = ArrayD::<f64>::zeros(IxDyn(&[3, 2]));
    expect_err(
        unary_backward(UnaryOp::Tanh, x.view(), dy.view()),
        "unary_backward",
    );
}

// ---------------------------------------------------------------------------------------------
// f32 instantiation

#[test]
fn f32_matches_f64() {
    let mut rng = Lcg(11);
    let x = rng.array(&[2, 3, 6, 6]);
    let w = rng.array(&[4, 3, 3, 3]);
    let p = Conv2dParams {
        stride: (1, 1),
        padding: (1, 1),
    };
    let y64 = conv2d(x.view(), w.view(), None, p).expect("f64");
    let (x32, w32) = (x.mapv(|v| v as f32), w.mapv(|v| v as f32));
    let y32 = conv2d(x32.view(), w32.view(), None, p).expect("f32");
    assert_close(&y32.mapv(f64::from), &y64, 1e-5);

    let c = ArrayD::<f32>::ones(IxDyn(&[4]));
    let z = ArrayD::<f32>::zeros(IxDyn(&[4]));
    let out = batch_norm_train(
        y32.view(),
        c.view(),
        z.view(),
        z.view(),
        c.view(),
        BatchNormParams::new(1),
    )
    .expect("bn f32");
    let mean = reduce(out.y.view(), ReduceKind::Mean, &[0, 2, 3], false).expect("mean");
    assert!(mean.iter().all(|m| m.abs() < 1e-5), "{mean}");
}
