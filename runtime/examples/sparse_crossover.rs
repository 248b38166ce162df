//! Where the spike-sparse (accumulate-only) kernels stop paying: times the GEMM kernels against
//! the sparse path of the spike kernels (`snn_runtime::kernels::ffi::*_spike`, sparse path
//! forced) at the MA-SNN gesture network's shapes over firing rates 0.5 %..50 %, forward and
//! backward (dx + dW + db; the spike backward's dx stays GEMM). Likewise the masked conv input
//! gradient (`conv2d_backward_dx_masked`, masked path forced) against its dense path (the dense
//! dx, overwriting) at the gesture convs' dx shapes over mask densities 5 %..80 % (kernel
//! `conv2d_dx_masked`, "sparse" meaning masked).
//!
//!   cargo run --release -p snn-runtime --example sparse_crossover [RUNS [FILTER]]
//!
//! One JSON line per (kernel, shape, density) with the best of RUNS (default 3) timed calls
//! (only the cases whose `kernel shape` contains FILTER, when given),
//! then one per (kernel, shape) with the crossover density: where the sparse time reaches the
//! GEMM's, interpolated linearly between the two measured densities around it (`null`: sparse
//! wins everywhere measured; 0: nowhere). Threads: `SNN_THREADS` or all CPUs (pin with
//! taskset). bench/cpu/sparse.sh runs it; bench/RESULTS.md has the figures.

use snn_runtime::kernels::ffi::{
    SpikeDispatch, conv2d_backward_dx_masked, conv2d_backward_spike, conv2d_spike,
    dense_backward_spike, dense_spike, kernel_threads, snn_conv2d_backward_f32, snn_conv2d_f32,
    snn_dense_backward_f32, snn_dense_f32,
};
use std::time::Instant;

const DENSITIES: [f64; 11] = [0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5];
/// Mask densities for the masked dx: the surrogate derivative is nonzero at 15–40 % of positions;
/// the crossover lies above 60 %.
const MASK_DENSITIES: [f64; 9] = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8];

/// The best of `runs` times (ms) that `f` reports for itself, after one untimed call.
fn best_of(runs: usize, mut f: impl FnMut() -> f64) -> f64 {
    f();
    (0..runs).map(|_| f()).fold(f64::INFINITY, f64::min)
}

/// How long `f` took, in ms.
fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

/// xorshift values in [-1, 1), and 0/1 spikes with the given density from the same stream.
struct Rng(u32);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        (self.0 >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
    fn spikes(&mut self, n: usize, density: f64) -> Vec<f32> {
        (0..n)
            .map(|_| f32::from(u8::from(f64::from(self.next() + 1.0) / 2.0 < density)))
            .collect()
    }
}

/// The sparse path whatever the density (binary input).
fn forced() -> SpikeDispatch {
    SpikeDispatch {
        max_density: f64::INFINITY,
        threads: kernel_threads(),
    }
}

/// One call of a case's kernel on spikes (or a mask) `x`: the GEMM kernel, or the spike
/// kernel's sparse path when `sparse`; returns the call's time in ms (what it must do first
/// to start from `x` not included).
type Run = Box<dyn FnMut(&[f32], bool) -> f64>;

/// A kernel at one shape.
struct Case {
    kernel: &'static str,
    shape: String,
    x_len: usize,
    densities: &'static [f64],
    run: Run,
}

fn conv_case(backward: bool, [n, c, hw, o]: [usize; 4]) -> Case {
    let mut r = Rng(7);
    let (w, b) = (r.values(o * c * 9), r.values(o));
    let y_len = n * o * hw * hw;
    let dy = r.values(y_len);
    let (mut y, mut dx, mut dw, mut db) = (
        vec![0f32; y_len],
        vec![0f32; n * c * hw * hw],
        vec![0f32; w.len()],
        vec![0f32; o],
    );
    let g = [n, c, hw, hw, o, 3, 3, 1, 1, 1, 1, hw, hw].map(|v| v as i64);
    let [n_, c_, h_, w_, o_, kh, kw, sh, sw, ph, pw, oh, ow] = g;
    let mut run = move |x: &[f32], sparse: bool| unsafe {
        match (backward, sparse) {
            (false, false) => snn_conv2d_f32(
                x.as_ptr(),
                w.as_ptr(),
                b.as_ptr(),
                y.as_mut_ptr(),
                n_,
                c_,
                h_,
                w_,
                o_,
                kh,
                kw,
                sh,
                sw,
                ph,
                pw,
                oh,
                ow,
            ),
            (false, true) => {
                conv2d_spike(
                    forced(),
                    x.as_ptr(),
                    w.as_ptr(),
                    b.as_ptr(),
                    y.as_mut_ptr(),
                    n_,
                    c_,
                    h_,
                    w_,
                    o_,
                    kh,
                    kw,
                    sh,
                    sw,
                    ph,
                    pw,
                    oh,
                    ow,
                );
            }
            (true, false) => snn_conv2d_backward_f32(
                x.as_ptr(),
                w.as_ptr(),
                dy.as_ptr(),
                dx.as_mut_ptr(),
                dw.as_mut_ptr(),
                db.as_mut_ptr(),
                n_,
                c_,
                h_,
                w_,
                o_,
                kh,
                kw,
                sh,
                sw,
                ph,
                pw,
                oh,
                ow,
            ),
            (true, true) => {
                conv2d_backward_spike(
                    forced(),
                    x.as_ptr(),
                    w.as_ptr(),
                    dy.as_ptr(),
                    dx.as_mut_ptr(),
                    dw.as_mut_ptr(),
                    db.as_mut_ptr(),
                    n_,
                    c_,
                    h_,
                    w_,
                    o_,
                    kh,
                    kw,
                    sh,
                    sw,
                    ph,
                    pw,
                    oh,
                    ow,
                );
            }
        }
    };
    Case {
        kernel: if backward {
            "conv2d_backward"
        } else {
            "conv2d"
        },
        shape: format!("{c}->{o} 3x3 pad 1, {hw}x{hw}, n={n}"),
        x_len: n * c * hw * hw,
        densities: &DENSITIES,
        run: Box::new(move |x, sparse| timed(|| run(x, sparse))),
    }
}

/// The masked input gradient of the conv `c → o` at `[n, c, hw, o]`: `x` is the mask; its
/// masked path (forced) or its dense path (the dense dx).
fn masked_dx_case([n, c, hw, o]: [usize; 4]) -> Case {
    let mut r = Rng(13);
    let w = r.values(o * c * 9);
    let dy = r.values(n * o * hw * hw);
    let mut dx = vec![0f32; n * c * hw * hw];
    let g = [n, c, hw, hw, o, 3, 3, 1, 1, 1, 1, hw, hw].map(|v| v as i64);
    let [n_, c_, h_, w_, o_, kh, kw, sh, sw, ph, pw, oh, ow] = g;
    let run = move |mask: &[f32], sparse: bool| {
        // The kernel overwrites its mask: a fresh copy per call, outside the timing.
        dx.copy_from_slice(mask);
        let d = SpikeDispatch {
            max_density: if sparse { f64::INFINITY } else { 0.0 },
            threads: kernel_threads(),
        };
        timed(|| unsafe {
            conv2d_backward_dx_masked(
                d,
                w.as_ptr(),
                dy.as_ptr(),
                dx.as_mut_ptr(),
                n_,
                c_,
                h_,
                w_,
                o_,
                kh,
                kw,
                sh,
                sw,
                ph,
                pw,
                oh,
                ow,
            );
        })
    };
    Case {
        kernel: "conv2d_dx_masked",
        shape: format!("{c}->{o} 3x3 pad 1, {hw}x{hw}, n={n}"),
        x_len: n * c * hw * hw,
        densities: &MASK_DENSITIES,
        run: Box::new(run),
    }
}

fn dense_case(backward: bool, [rows, n_in, n_out]: [usize; 3]) -> Case {
    let mut r = Rng(11);
    let (w, b) = (r.values(n_out * n_in), r.values(n_out));
    let dy = r.values(rows * n_out);
    let (mut y, mut dx, mut dw, mut db) = (
        vec![0f32; rows * n_out],
        vec![0f32; rows * n_in],
        vec![0f32; w.len()],
        vec![0f32; n_out],
    );
    let [o, k, j] = [rows, n_in, n_out].map(|v| v as i64);
    let mut run = move |x: &[f32], sparse: bool| unsafe {
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        match (backward, sparse) {
            (false, false) => snn_dense_f32(xp, wp, b.as_ptr(), y.as_mut_ptr(), o, k, 1, j),
            (false, true) => {
                dense_spike(forced(), xp, wp, b.as_ptr(), y.as_mut_ptr(), o, k, 1, j);
            }
            (true, false) => snn_dense_backward_f32(
                xp,
                wp,
                dy.as_ptr(),
                dx.as_mut_ptr(),
                dw.as_mut_ptr(),
                db.as_mut_ptr(),
                o,
                k,
                1,
                j,
            ),
            (true, true) => {
                dense_backward_spike(
                    forced(),
                    xp,
                    wp,
                    dy.as_ptr(),
                    dx.as_mut_ptr(),
                    dw.as_mut_ptr(),
                    db.as_mut_ptr(),
                    o,
                    k,
                    1,
                    j,
                );
            }
        }
    };
    Case {
        kernel: if backward { "dense_backward" } else { "dense" },
        shape: format!("{n_in}->{n_out}, {rows} rows"),
        x_len: rows * n_in,
        densities: &DENSITIES,
        run: Box::new(move |x, sparse| timed(|| run(x, sparse))),
    }
}

fn main() {
    let runs = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let threads = kernel_threads();
    let mut cases = Vec::new();
    for backward in [false, true] {
        // The gesture network's big convolutions (T·B = 80 images) and dense layers (80 rows),
        // and a 4096-neuron layer as a dense 4096→4096 over T·B = 25·16 rows (the LIF benchmark's
        // B = 16 with T cut from 100 to 25 so that the whole run stays under a minute).
        cases.push(conv_case(backward, [80, 64, 32, 128]));
        cases.push(conv_case(backward, [80, 128, 16, 128]));
        cases.push(dense_case(backward, [80, 8192, 256]));
        cases.push(dense_case(backward, [400, 4096, 4096]));
    }
    // The input gradients of the same convs where the surrogate derivative needs them.
    cases.push(masked_dx_case([80, 64, 32, 128]));
    cases.push(masked_dx_case([80, 128, 16, 128]));
    let filter = std::env::args().nth(2).unwrap_or_default();
    cases.retain(|c| format!("{} {}", c.kernel, c.shape).contains(&filter));
    for case in &mut cases {
        let mut rng = Rng(3);
        // The GEMM kernels' time does not depend on the values: measured at 10 %, before and
        // after the sweep (the better of the two, so that one noisy stretch on a shared
        // machine does not move every crossover of the case).
        let x = rng.spikes(case.x_len, 0.1);
        let dense_before = best_of(runs, || (case.run)(&x, false));
        let mut points = Vec::new();
        for &density in case.densities {
            let x = rng.spikes(case.x_len, density);
            points.push((density, best_of(runs, || (case.run)(&x, true))));
        }
        let dense_ms = dense_before.min(best_of(runs, || (case.run)(&x, false)));
        for &(density, sparse_ms) in &points {
            println!(
                "{{\"kernel\": \"{}\", \"shape\": \"{}\", \"threads\": {threads}, \"density\": {density}, \"dense_ms\": {dense_ms:.3}, \"sparse_ms\": {sparse_ms:.3}, \"speedup\": {:.2}}}",
                case.kernel,
                case.shape,
                dense_ms / sparse_ms
            );
        }
        let crossover =
            crossover(&points, dense_ms).map_or("null".to_string(), |d| format!("{d:.3}"));
        println!(
            "{{\"kernel\": \"{}\", \"shape\": \"{}\", \"threads\": {threads}, \"dense_ms\": {dense_ms:.3}, \"crossover_density\": {crossover}}}",
            case.kernel, case.shape
        );
    }
}

/// The density at which `sparse_ms` first reaches `dense_ms`, interpolated between the
/// measured points around it; None when it never does.
fn crossover(points: &[(f64, f64)], dense_ms: f64) -> Option<f64> {
    let i = points.iter().position(|&(_, ms)| ms >= dense_ms)?;
    if i == 0 {
        return Some(0.0);
    }
    let ((d0, t0), (d1, t1)) = (points[i - 1], points[i]);
    Some(d0 + (d1 - d0) * (dense_ms - t0) / (t1 - t0))
}
