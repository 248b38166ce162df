//! This machine's f32 peak (FMA throughput) and what the conv/dense kernels generated CPU code
//! calls (`snn_runtime::kernels::ffi`) reach at the MA-SNN gesture network's shapes, as GFLOP/s
//! and as a fraction of the peak, forward and backward, and the bare single-thread GEMM
//! (`matrixmultiply`, which the dense kernels use) at the big convolutions' shapes.
//!
//!   cargo run --release -p snn-runtime --example peak_flops [THREADS]
//!
//! One JSON line per measurement. THREADS (default: the kernels' own, `SNN_THREADS` or all
//! CPUs) only labels the multi-threaded peak; pin with taskset to compare with other tools.
//! `PROBE_ONLY=text` runs only the kernel probes whose shape contains `text` (for profiling).

use snn_runtime::kernels::ffi::{
    kernel_threads, snn_conv2d_backward_f32, snn_conv2d_f32, snn_dense_backward_f32, snn_dense_f32,
};
use std::time::Instant;

fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

const ACC: usize = 16;
const ITERS: usize = 20_000_000;

/// FLOPs of one call of `fma_loop_*`: ACC accumulators × lanes × 2 per iteration.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_loop_avx2(seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(seed); ACC];
    for _ in 0..ITERS / 8 {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut s = _mm256_setzero_ps();
    for v in acc {
        s = _mm256_add_ps(s, v);
    }
    let mut out = [0f32; 8];
    // SAFETY: `out` holds 8 floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_loop_avx512(seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(seed); ACC];
    for _ in 0..ITERS / 16 {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for v in acc {
        s = _mm512_add_ps(s, v);
    }
    _mm512_reduce_add_ps(s)
}

/// GFLOP/s of `threads` copies of the widest FMA loop this CPU has.
fn peak(threads: usize) -> Option<(&'static str, f64)> {
    #[cfg(target_arch = "x86_64")]
    {
        let (isa, lanes, f): (&str, usize, fn(f32) -> f32) = if is_x86_feature_detected!("avx512f")
        {
            // SAFETY: the feature was detected.
            ("avx512f", 16, |s| unsafe { fma_loop_avx512(s) })
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            ("avx2+fma", 8, |s| unsafe { fma_loop_avx2(s) })
        } else {
            return None;
        };
        let flops = (threads * ACC * (ITERS / lanes) * lanes * 2) as f64;
        // Best of 7: a busy neighbour on a shared VM only ever lowers the figure.
        let secs = best_of(7, || {
            std::thread::scope(|s| {
                for t in 0..threads {
                    s.spawn(move || std::hint::black_box(f(t as f32 * 1e-3)));
                }
            });
        });
        Some((isa, flops / secs / 1e9))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = threads;
        None
    }
}

fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn main() {
    let threads = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(kernel_threads);
    let mut peaks = Vec::new();
    for t in [1, threads] {
        if let Some((isa, g)) = peak(t) {
            println!(
                "{{\"probe\": \"fma_peak\", \"isa\": \"{isa}\", \"threads\": {t}, \"gflops\": {g:.1}}}"
            );
            peaks.push((t, g));
        }
    }
    let peak_of = |t: usize| {
        peaks
            .iter()
            .find(|(pt, _)| *pt == t)
            .map_or(f64::NAN, |p| p.1)
    };
    let kt = kernel_threads();
    // The gesture network at T=20, B=4 (80 images): conv 2→64, 64→128 at 32×32, 128→128 at
    // 16×16 (3×3, padding 1), dense 8192→256 and 256→11 over 80 rows.
    let wanted = |name: &str| std::env::var("PROBE_ONLY").map_or(true, |p| name.contains(&p));
    for &(name, n, c, hw, o) in &[
        ("conv 2->64 32x32", 80usize, 2usize, 32usize, 64usize),
        ("conv 64->128 32x32", 80, 64, 32, 128),
        ("conv 128->128 16x16", 80, 128, 16, 128),
    ] {
        if !wanted(name) {
            continue;
        }
        let x = values(n * c * hw * hw);
        let w = values(o * c * 9);
        let b = values(o);
        let mut y = vec![0f32; n * o * hw * hw];
        let flops = 2.0 * (n * o * hw * hw * c * 9) as f64;
        let secs = best_of(5, || unsafe {
            snn_conv2d_f32(
                x.as_ptr(),
                w.as_ptr(),
                if std::env::var_os("PROBE_NO_BIAS").is_some() {
                    std::ptr::null()
                } else {
                    b.as_ptr()
                },
                y.as_mut_ptr(),
                n as i64,
                c as i64,
                hw as i64,
                hw as i64,
                o as i64,
                3,
                3,
                1,
                1,
                1,
                1,
                hw as i64,
                hw as i64,
            )
        });
        let g = flops / secs / 1e9;
        println!(
            "{{\"probe\": \"snn_conv2d_f32\", \"shape\": \"{name}\", \"images\": {n}, \"threads\": {kt}, \"ms\": {:.3}, \"gflops\": {g:.1}, \"of_peak\": {:.3}}}",
            secs * 1e3,
            g / peak_of(kt)
        );
        // Backward: dx (wᵀ·dy) and dW (dy·colsᵀ), each as many FLOPs as the forward; db is
        // not counted.
        let (mut dx, mut dw, mut db) = (vec![0f32; x.len()], vec![0f32; w.len()], vec![0f32; o]);
        let secs = best_of(5, || unsafe {
            snn_conv2d_backward_f32(
                x.as_ptr(),
                w.as_ptr(),
                y.as_ptr(),
                dx.as_mut_ptr(),
                dw.as_mut_ptr(),
                db.as_mut_ptr(),
                n as i64,
                c as i64,
                hw as i64,
                hw as i64,
                o as i64,
                3,
                3,
                1,
                1,
                1,
                1,
                hw as i64,
                hw as i64,
            )
        });
        let g = 2.0 * flops / secs / 1e9;
        println!(
            "{{\"probe\": \"snn_conv2d_backward_f32\", \"shape\": \"{name}\", \"images\": {n}, \"threads\": {kt}, \"ms\": {:.3}, \"gflops\": {g:.1}, \"of_peak\": {:.3}}}",
            secs * 1e3,
            g / peak_of(kt)
        );
    }
    for &(name, rows, n_in, n_out) in &[
        ("dense 8192->256", 80usize, 8192usize, 256usize),
        ("dense 256->11", 80, 256, 11),
    ] {
        if !wanted(name) {
            continue;
        }
        let x = values(rows * n_in);
        let w = values(n_out * n_in);
        let mut y = vec![0f32; rows * n_out];
        let flops = 2.0 * (rows * n_in * n_out) as f64;
        let secs = best_of(5, || unsafe {
            snn_dense_f32(
                x.as_ptr(),
                w.as_ptr(),
                std::ptr::null(),
                y.as_mut_ptr(),
                rows as i64,
                n_in as i64,
                1,
                n_out as i64,
            )
        });
        let g = flops / secs / 1e9;
        println!(
            "{{\"probe\": \"snn_dense_f32\", \"shape\": \"{name}\", \"rows\": {rows}, \"threads\": {kt}, \"ms\": {:.3}, \"gflops\": {g:.1}, \"of_peak\": {:.3}}}",
            secs * 1e3,
            g / peak_of(kt)
        );
        // Backward: dx and dW, each as many FLOPs as the forward.
        let (mut dx, mut dw, mut db) =
            (vec![0f32; x.len()], vec![0f32; w.len()], vec![0f32; n_out]);
        let secs = best_of(5, || unsafe {
            snn_dense_backward_f32(
                x.as_ptr(),
                w.as_ptr(),
                y.as_ptr(),
                dx.as_mut_ptr(),
                dw.as_mut_ptr(),
                db.as_mut_ptr(),
                rows as i64,
                n_in as i64,
                1,
                n_out as i64,
            )
        });
        let g = 2.0 * flops / secs / 1e9;
        println!(
            "{{\"probe\": \"snn_dense_backward_f32\", \"shape\": \"{name}\", \"rows\": {rows}, \"threads\": {kt}, \"ms\": {:.3}, \"gflops\": {g:.1}, \"of_peak\": {:.3}}}",
            secs * 1e3,
            g / peak_of(kt)
        );
    }
    // The per-image GEMMs of the two big convolutions, one thread, without im2col.
    for &(name, m, k, n) in &[
        ("gemm 128x576 * 576x1024", 128usize, 576usize, 1024usize),
        ("gemm 128x1152 * 1152x256", 128, 1152, 256),
    ] {
        if !wanted(name) {
            continue;
        }
        let a = values(m * k);
        let b = values(k * n);
        let mut c = vec![0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        // The dense kernel with outer = 1 and inner = n is exactly w[m×k] · x[k×n], one thread.
        let secs = best_of(7, || unsafe {
            snn_dense_f32(
                b.as_ptr(),
                a.as_ptr(),
                std::ptr::null(),
                c.as_mut_ptr(),
                1,
                k as i64,
                n as i64,
                m as i64,
            )
        });
        let g = flops / secs / 1e9;
        println!(
            "{{\"probe\": \"sgemm\", \"shape\": \"{name}\", \"threads\": 1, \"gflops\": {g:.1}, \"of_peak\": {:.3}}}",
            g / peak_of(1)
        );
    }
}
