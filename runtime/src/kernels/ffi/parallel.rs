//! Threads for the generated code's own parallel loops: [`snn_parallel_for`], which the CPU
//! backend calls with each outlined `scf.parallel` nest (elementwise passes, neuron scans,
//! batchnorm, pooling, attention and their gradients).
//!
//! Iterations of a parallel loop write disjoint elements, so running contiguous blocks of them
//! on different threads gives the same bits as running them in order. Whether a loop is worth a
//! second thread is decided per loop from how long its first call took on one thread: most of a
//! model's loops (bias vectors, per-channel statistics) are over in a few microseconds, less than
//! waking a worker costs.

use super::kernel_threads;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// An outlined loop body: runs iterations `start..end` with the captured values at `ctx`.
pub type LoopBody = unsafe extern "C" fn(ctx: *const u8, start: i64, end: i64);

/// A loop whose first call took at least this many nanoseconds on one thread runs on
/// [`kernel_threads`] threads from then on. Waking a worker and waiting for it costs ~5–15 µs
/// on this kind of VM; a loop of 40 µs gains ~15 µs from a second core.
const DEFAULT_MIN_PARALLEL_NS: u64 = 40_000;

/// The threshold in effect (see [`set_min_parallel_ns`]); `u64::MAX` until first read, when
/// `SNN_PARALLEL_MIN_NS` (if set) or the default replaces it.
static MIN_PARALLEL_NS: AtomicU64 = AtomicU64::new(UNSET);
const UNSET: u64 = u64::MAX - 1;

fn min_parallel_ns() -> u64 {
    let v = MIN_PARALLEL_NS.load(Ordering::Relaxed);
    if v != UNSET {
        return v;
    }
    let from_env = std::env::var("SNN_PARALLEL_MIN_NS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_MIN_PARALLEL_NS);
    // A concurrent `set_min_parallel_ns` wins over the environment.
    let _ = MIN_PARALLEL_NS.compare_exchange(UNSET, from_env, Ordering::Relaxed, Ordering::Relaxed);
    MIN_PARALLEL_NS.load(Ordering::Relaxed)
}

/// Sets the single-thread time from which a loop runs in parallel (default 40 µs, or the
/// environment's `SNN_PARALLEL_MIN_NS`): `0` runs every loop with more than one iteration on all
/// threads (the tests use this to check that generated parallel loops really are free of
/// races); `u64::MAX` keeps every loop on the calling thread.
pub fn set_min_parallel_ns(ns: u64) {
    MIN_PARALLEL_NS.store(ns, Ordering::Relaxed);
    decisions()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
}

/// Per loop body (by address): whether it runs in parallel. Addresses of freed JIT code may be
/// reused by a later module; the decision is then only a stale guess, never a wrong result.
fn decisions() -> &'static Mutex<HashMap<usize, bool>> {
    static D: OnceLock<Mutex<HashMap<usize, bool>>> = OnceLock::new();
    D.get_or_init(Default::default)
}

/// The workers besides the calling thread (`kernel_threads() - 1` of them), or None for one
/// thread: shared by the parallel loops and the kernels.
pub(super) fn pool() -> Option<&'static rayon_core::ThreadPool> {
    static POOL: OnceLock<Option<rayon_core::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let workers = kernel_threads().saturating_sub(1);
        if workers == 0 {
            return None;
        }
        rayon_core::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("snn-loop-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// A pointer that crosses to the workers: the loop body only reads the captures.
#[derive(Clone, Copy)]
struct Ctx(*const u8);
// SAFETY: the captures are read-only values (pointers, sizes, constants) written by the caller
// before the call and alive until every block has returned.
unsafe impl Send for Ctx {}
unsafe impl Sync for Ctx {}

impl Ctx {
    fn get(self) -> *const u8 {
        self.0
    }
}

/// Runs `body(ctx, 0, n)`, split into contiguous blocks over the kernel threads when this loop
/// was measured to be worth it.
///
/// # Safety
/// `body` must be a loop body the CPU backend generated for `ctx` (its iterations write
/// disjoint memory), valid for every range within `0..n`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snn_parallel_for(body: LoopBody, ctx: *const u8, n: i64) {
    if n <= 0 {
        return;
    }
    let key = body as usize;
    let min_ns = min_parallel_ns();
    let known = decisions()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .copied();
    let parallel = match known {
        Some(p) => p,
        None if min_ns == 0 => true,
        None => {
            let start = Instant::now();
            // SAFETY: the caller's contract.
            unsafe { body(ctx, 0, n) };
            let took = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            decisions()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, took >= min_ns);
            return;
        }
    };
    match pool() {
        Some(pool) if parallel && n > 1 => {
            let threads = (pool.current_num_threads() + 1).min(n as usize) as i64;
            let per = (n + threads - 1) / threads;
            let ctx = Ctx(ctx);
            pool.in_place_scope(|s| {
                for start in (per..n).step_by(per as usize) {
                    let end = (start + per).min(n);
                    // SAFETY: the caller's contract; blocks are disjoint.
                    s.spawn(move |_| unsafe { body(ctx.get(), start, end) });
                }
                // SAFETY: as above; the first block runs on the calling thread.
                unsafe { body(ctx.get(), 0, per.min(n)) };
            });
        }
        // SAFETY: the caller's contract.
        _ => unsafe { body(ctx, 0, n) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI64;

    /// Adds `start..end` to the counter at `ctx` and marks each index once in the table after it.
    unsafe extern "C" fn mark(ctx: *const u8, start: i64, end: i64) {
        // SAFETY: the test passes a `Table`.
        let table = unsafe { &*(ctx as *const Table) };
        for i in start..end {
            table.hits[i as usize].fetch_add(1, Ordering::Relaxed);
        }
        table.calls.fetch_add(1, Ordering::Relaxed);
    }

    struct Table {
        calls: AtomicI64,
        hits: Vec<AtomicI64>,
    }

    #[test]
    fn every_iteration_runs_once_serial_or_split() {
        // The only test here that changes the threshold: first everything on one thread, then
        // everything split.
        for min_ns in [u64::MAX, 0] {
            set_min_parallel_ns(min_ns);
            every_iteration_once();
        }
        set_min_parallel_ns(DEFAULT_MIN_PARALLEL_NS);
    }

    fn every_iteration_once() {
        for n in [0i64, 1, 2, 3, 7, 1000] {
            let table = Table {
                calls: AtomicI64::new(0),
                hits: (0..n.max(1)).map(|_| AtomicI64::new(0)).collect(),
            };
            for round in 1..=2 {
                // SAFETY: `mark` only reads the table.
                unsafe { snn_parallel_for(mark, &table as *const Table as *const u8, n) };
                for (i, h) in table.hits.iter().enumerate().take(n as usize) {
                    assert_eq!(h.load(Ordering::Relaxed), round, "n {n} index {i}");
                }
            }
            if n == 0 {
                assert_eq!(table.calls.load(Ordering::Relaxed), 0);
            }
        }
    }
}
