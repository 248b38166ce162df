#!/usr/bin/env bash
# Forward pass on CPU: snnc's Cranelift JIT vs the peer scripts (PyTorch, SpikingJelly, snnTorch,
# Norse) in one run, every process pinned to the same CPUs, tuned glibc malloc for all (see
# /work/shared/bench/peers/README.md, "Malloc matters").
#
#   bench/cpu/run.sh [RUNS]       # median of RUNS timed calls per case (default 7)
#
# Cases
#   lif      one layer of N=4096 LIF neurons, T=100, B=16 (bench/cpu/lif_layer.snn vs
#            lif_layer.py --frameworks plain,sj,snntorch,norse), modes "fwd" and "fwd_bwd"
#            (ours: bench_cpu --fwd-bwd = forward_train + backward down to the input)
#   gesture  MA-SNN DVS128 Gesture forward, T=20, B=4, vanilla and TCSA (examples/gesture.snn vs
#            masnn_gesture_step.py --single, its "infer_fwd" figure). Ours runs train-mode
#            batchnorm (batch statistics: the only forward the lowering has).
#   step     MA-SNN gesture training step, T=20, B=4, vanilla and TCSA: bench_cpu --step (the
#            `snnc train --backend cpu` step: forward_train, MSE, backward, Adam) vs
#            masnn_gesture_step.py's "step" figure; peak RSS of both processes (GNU time)
#   paper    the same step at the paper's configuration, T=60, B=16 (PAPER_RUNS steps each,
#            default 3: PyTorch's step takes about 5 s here)
#   peak     this machine's FMA peak and the conv/dense runtime kernels' GFLOP/s at the
#            gesture network's shapes (bench/cpu/peak_flops.rs)
# Environment (defaults in brackets)
#   CPUS      CPUs to pin to with taskset [0,1]; torch, our conv/dense kernels and the generated
#             code's parallel loops (SNN_THREADS) get that many threads
#   PEERS_PY  python with torch (+ snntorch, norse) [/work/peers-venv/bin/python]
#   SJ_PATH   PYTHONPATH for SpikingJelly [/work/bench-sj]
#   PEERS_DIR the peer scripts [/work/shared/bench/peers]
#   CASES     [lif gesture step paper peak]
#   CARGO_TARGET_DIR  [target-cpu]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-7}
CPUS=${CPUS:-0,1}
NCPU=$(awk -F, '{print NF}' <<<"$CPUS")
PEERS_PY=${PEERS_PY:-/work/peers-venv/bin/python}
SJ_PATH=${SJ_PATH:-/work/bench-sj}
PEERS_DIR=${PEERS_DIR:-/work/shared/bench/peers}
CASES=${CASES:-lif gesture step paper peak}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cpu}
export OMP_NUM_THREADS=$NCPU MKL_NUM_THREADS=$NCPU OPENBLAS_NUM_THREADS=$NCPU SNN_THREADS=$NCPU
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296

cargo build --quiet --release -p snnc --example bench_cpu
cargo build --quiet --release -p snn-runtime --example peak_flops
BENCH="$CARGO_TARGET_DIR/release/examples/bench_cpu"
PEAK="$CARGO_TARGET_DIR/release/examples/peak_flops"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
pin() { taskset -c "$CPUS" "$@"; }

for case in $CASES; do
  case $case in
    lif)
      pin "$BENCH" bench/cpu/lif_layer.snn LIFLayer 16 "$RUNS" T=100 N=4096 | tee -a "$out"
      pin "$BENCH" bench/cpu/lif_layer.snn LIFLayer 16 "$RUNS" --fwd-bwd T=100 N=4096 | tee -a "$out"
      PYTHONPATH=$SJ_PATH pin "$PEERS_PY" -W ignore "$PEERS_DIR/lif_layer.py" --neurons 4096 --steps 100 \
        --batch 16 --runs "$RUNS" --threads "$NCPU" --frameworks plain,sj,snntorch,norse \
        | grep '"mode": "fwd' | tee -a "$out"
      ;;
    gesture)
      for m in Vanilla TCSA; do
        pin "$BENCH" examples/gesture.snn "Gesture$m" 4 "$RUNS" T=20 | tee -a "$out"
        att=$([ $m = TCSA ] && echo TCSA || echo no)
        pin "$PEERS_PY" -W ignore "$PEERS_DIR/masnn_gesture_step.py" --single --T 20 --B 4 \
          --attention "$att" --runs "$RUNS" --threads "$NCPU" | tee -a "$out"
      done
      ;;
    step|paper)
      if [ $case = step ]; then t=20 b=4 runs=$RUNS; else t=60 b=16 runs=${PAPER_RUNS:-3}; fi
      for m in Vanilla TCSA; do
        rss=$(mktemp)
        /usr/bin/time -f '%M' -o "$rss" taskset -c "$CPUS" "$BENCH" examples/gesture.snn "Gesture$m" $b "$runs" --step T=$t \
          | sed "s/}\$/, \"peak_rss_mb\": PEAK}/" > "$rss.json"
        sed "s/PEAK/$(awk '{printf "%.1f", $1/1024}' "$rss")/" "$rss.json" | tee -a "$out"
        rm -f "$rss" "$rss.json"
        att=$([ $m = TCSA ] && echo TCSA || echo no)
        pin "$PEERS_PY" -W ignore "$PEERS_DIR/masnn_gesture_step.py" --single --T $t --B $b \
          --attention "$att" --runs "$runs" --threads "$NCPU" | sed 's/^/STEP /' | tee -a "$out"
      done
      ;;
    peak)
      pin "$PEAK" "$NCPU" | tee -a "$out"
      ;;
  esac
done

python3 - "$out" "$CPUS" "$RUNS" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
rows = [json.loads(l) for l in lines if l.startswith("{")]
peer_steps = [json.loads(l[5:]) for l in lines if l.startswith("STEP {")]
print(f"\npinned to CPUs {sys.argv[2]}; medians; ratio = snnc time / peer time (>1: snnc slower)")
print("| case | framework | threads | median ms | snnc / peer |")
print("|---|---|---:|---:|---:|")
ours = [r for r in rows if r.get("framework") == "snnc-cranelift"]
for mode, bench in (("fwd", "cpu_forward"), ("fwd_bwd", "cpu_fwd_bwd")):
    lif = next((r for r in ours if r["model"] == "LIFLayer" and r["bench"] == bench), None)
    if lif:
        print(f"| LIF N=4096 T=100 B=16 {mode} | snnc (Cranelift JIT) | {lif['threads']} | {lif['median_ms']:.1f} | 1.00 |")
        for r in rows:
            if r.get("bench") == "lif_layer" and r.get("mode") == mode:
                print(f"| LIF N=4096 T=100 B=16 {mode} | {r['version']} | {r['threads']} | {r['median_ms']:.1f} | {lif['median_ms'] / r['median_ms']:.2f} |")
for att, model in (("no", "GestureVanilla"), ("TCSA", "GestureTCSA")):
    o = next((r for r in ours if r["model"] == model and r["bench"] == "cpu_forward"), None)
    p = next((r for r in rows if r.get("bench") == "masnn_gesture_step" and r["attention"] == att), None)
    if o:
        print(f"| gesture {model[7:]} T=20 B=4 fwd | snnc (Cranelift JIT) | {o['threads']} | {o['median_ms']:.1f} | 1.00 |")
    if o and p:
        print(f"| gesture {model[7:]} T=20 B=4 fwd | torch {p['torch']} (eval) | {p['threads']} | {p['infer_fwd_median_ms']:.1f} | {o['median_ms'] / p['infer_fwd_median_ms']:.2f} |")
for t, b in ((20, 4), (60, 16)):
    for att, model in (("no", "GestureVanilla"), ("TCSA", "GestureTCSA")):
        o = next((r for r in ours if r["model"] == model and r["bench"] == "cpu_train_step"
                  and r["T"] == t and r["batch"] == b), None)
        p = next((r for r in peer_steps if r["attention"] == att and r["T"] == t and r["B"] == b), None)
        case = f"gesture {model[7:]} T={t} B={b} train step"
        if o:
            print(f"| {case} | snnc (Cranelift JIT) | {o['threads']} | {o['median_ms']:.1f} | 1.00 | peak RSS {o['peak_rss_mb']} MB |")
        if o and p:
            print(f"| {case} | torch {p['torch']} | {p['threads']} | {p['step_median_ms']:.1f} | {o['median_ms'] / p['step_median_ms']:.2f} | peak RSS {p['peak_rss_mb']} MB ({o['peak_rss_mb'] / p['peak_rss_mb']:.2f}x) |")
probes = [r for r in rows if "probe" in r]
if probes:
    print("\n| probe | shape | threads | GFLOP/s | of peak |")
    print("|---|---|---:|---:|---:|")
    for r in probes:
        if r["probe"] == "fma_peak":
            print(f"| FMA peak ({r['isa']}) | | {r['threads']} | {r['gflops']:.1f} | 1.00 |")
        else:
            print(f"| {r['probe']} | {r['shape']} | {r['threads']} | {r['gflops']:.1f} | {r['of_peak']:.2f} |")
PY
