#!/usr/bin/env bash
# Read + frame throughput: snnc (Rust, release) vs tonic and SpikingJelly on the same files, in one run.
# Every tool is pinned to the same CPUs (default 0,1) with BLAS/OpenMP pools of that size.
#
#   bench/events/run.sh [RUNS]      # median of RUNS timed passes per case (default 7)
#
# Environment (defaults in brackets):
#   CPUS      CPUs to pin to with taskset [0,1]
#   TONIC_PY  python with tonic, numpy, aedat [/work/bench-venv/bin/python]
#   SJ_PY     python with spikingjelly (+ torch) and aedat [/work/peers-venv/bin/python]
#   SJ_PATH   extra PYTHONPATH for SJ_PY, e.g. a `pip install --target` dir [empty]
#   BASELINE  a bench_events binary built from an older commit, run first with its rows
#             relabelled `before-snnc…`, for a before/after comparison in the same run [none]
#   CARGO_TARGET_DIR  [target-runtime]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-7}
CPUS=${CPUS:-0,1}
NCPU=$(awk -F, '{print NF}' <<<"$CPUS")
TONIC_PY=${TONIC_PY:-/work/bench-venv/bin/python}
SJ_PY=${SJ_PY:-/work/peers-venv/bin/python}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-runtime}
export OMP_NUM_THREADS=$NCPU OPENBLAS_NUM_THREADS=$NCPU MKL_NUM_THREADS=$NCPU NUMBA_NUM_THREADS=$NCPU

cargo build --quiet --release --example bench_events -p snn-runtime
out=$(mktemp)
trap 'rm -f "$out"' EXIT
pin() { taskset -c "$CPUS" "$@"; }

if [ -n "${BASELINE:-}" ]; then
  pin "$BASELINE" "$RUNS" | sed -E 's/"tool": "(snnc[a-z0-9-]*)"/"tool": "before-\1"/; s/-before"/"/' | tee -a "$out"
fi
pin "$CARGO_TARGET_DIR/release/examples/bench_events" "$RUNS" | tee -a "$out"
if [ -x "$TONIC_PY" ]; then
  pin "$TONIC_PY" bench/events/peers.py tonic "$RUNS" | tee -a "$out"
else
  echo "skip tonic: $TONIC_PY not found" >&2
fi
if [ -x "$SJ_PY" ]; then
  PYTHONPATH=${SJ_PATH:-} pin "$SJ_PY" bench/events/peers.py spikingjelly "$RUNS" | tee -a "$out"
else
  echo "skip SpikingJelly: $SJ_PY not found" >&2
fi

python3 - "$out" "$CPUS" "$RUNS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
cases = list(dict.fromkeys(r["case"] for r in rows))
print(f"\npinned to CPUs {sys.argv[2]}, median of {sys.argv[3]} runs; ratio = snnc (1 thread) / tool")
print("| case | tool | events | framed | median s | Mev/s | snnc / tool |")
print("|---|---|---:|---:|---:|---:|---:|")
for c in cases:
    ours = next(r for r in rows if r["case"] == c and r["tool"] == "snnc")
    for r in (r for r in rows if r["case"] == c):
        ratio = ours["events_per_s"] / r["events_per_s"]
        print(f"| {c} | {r['tool']} | {r['events']:,} | {int(r['framed']):,} | {r['median_s']:.4f} "
              f"| {r['events_per_s'] / 1e6:.2f} | {ratio:.2f}x |")
PY
