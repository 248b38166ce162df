#!/usr/bin/env bash
# Crossover firing rate of the spike-sparse (accumulate-only) kernels: the GEMM conv/dense
# kernels vs the sparse path of their *_spike variants at the MA-SNN gesture network's shapes,
# forward and backward, over input densities 0.5 %..50 % (runtime/examples/sparse_crossover.rs).
# Also the masked conv input gradient (snn_conv2d_backward_dx_masked_f32's masked path) vs the
# dense dx at the gesture convs' dx shapes over mask densities 5 %..80 % (FILTER dx_masked for
# only those). The dispatch thresholds in runtime/src/kernels/ffi/spike.rs and masked.rs come
# from this; results in bench/RESULTS.md, "Spike-sparse kernels: crossover firing rate" and
# "Masked conv input gradient".
#
#   bench/cpu/sparse.sh [RUNS [FILTER]]   # best of RUNS calls per point (default 3)
#
# Environment (defaults in brackets)
#   CPUS              CPUs to pin to with taskset; the kernels get that many threads [0,1]
#   CARGO_TARGET_DIR  [target-sparse]
set -euo pipefail
cd "$(dirname "$0")/../.."
CPUS=${CPUS:-0,1}
export SNN_THREADS=$(awk -F, '{print NF}' <<<"$CPUS")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-sparse}
# The same tuned glibc malloc as run.sh: per-call scratch is reused instead of mmap'd and
# page-faulted on every call.
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296

cargo build --quiet --release -p snn-runtime --example sparse_crossover
taskset -c "$CPUS" "$CARGO_TARGET_DIR/release/examples/sparse_crossover" "$@"
