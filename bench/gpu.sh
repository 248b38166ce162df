#!/usr/bin/env bash
# GPU check for snnc on a machine with an NVIDIA GPU and driver, no network, no CUDA toolkit.
# Runs from the repository root; builds nothing unless cargo and the sources are there and a
# binary is missing. Finishes in well under 5 minutes; prints a summary at the end.
#
#   bash bench/gpu.sh
#
# What it needs (prepared on any machine, see docs/gpu.md):
#   target/release/examples/gpu_check   the runtime's replay binary (feature `gpu`, small)
#   target/gpu-bundle/                  PTX, launch manifests, inputs, params, references
#     (made by target/release/examples/gpu_prepare, which this script runs if the bundle is
#      missing and that binary is present)
# Overrides: GPU_CHECK=path/to/gpu_check  GPU_PREPARE=path/to/gpu_prepare  BUNDLE=dir
#            PYTHON=python with CUDA torch (peers)  GPU_PROFILE_CSV=file (every launch's time)
#            SNNC_CUBLAS=path/to/libcublas.so.N (else found on the loader's path or searched)
set -u
cd "$(dirname "$0")/.."

GPU_CHECK=${GPU_CHECK:-target/release/examples/gpu_check}
GPU_PREPARE=${GPU_PREPARE:-target/release/examples/gpu_prepare}
BUNDLE=${BUNDLE:-target/gpu-bundle}
LOG=$(mktemp -d)/gpu
status_smi="not run"; status_check="not run"; peak_mib="?"

echo "== nvidia-smi"
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 30 nvidia-smi && status_smi=ok || status_smi="failed ($?)"
else
    status_smi="nvidia-smi not found"
    echo "$status_smi"
fi

# Binaries: prebuilt, else built offline from the repository when cargo is there.
if [ ! -x "$GPU_CHECK" ] && command -v cargo >/dev/null 2>&1; then
    echo "== building gpu_check (offline)"
    timeout 240 cargo build --offline --release -p snn-runtime --features gpu --example gpu_check
fi
if [ ! -f "$BUNDLE/cases.json" ]; then
    if [ ! -x "$GPU_PREPARE" ] && command -v cargo >/dev/null 2>&1; then
        echo "== building gpu_prepare (offline)"
        timeout 240 cargo build --offline --release -p snnc --example gpu_prepare
    fi
    if [ -x "$GPU_PREPARE" ]; then
        echo "== preparing the bundle in $BUNDLE"
        timeout 120 "$GPU_PREPARE" "$BUNDLE" . || echo "gpu_prepare failed"
    fi
fi
if [ ! -x "$GPU_CHECK" ] || [ ! -f "$BUNDLE/cases.json" ]; then
    echo "missing $GPU_CHECK or $BUNDLE/cases.json: see docs/gpu.md (Running bench/gpu.sh)"
    exit 2
fi

# cuBLAS (convolutions and dense layers are its SGEMM): the loader's, else the first found under
# the usual roots (a CUDA toolkit, or the nvidia-cublas wheel PyTorch brings).
if [ -z "${SNNC_CUBLAS:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so'; then
    found=$(find /usr/local/cuda*/lib64 /usr/lib /usr/local/lib /opt -name 'libcublas.so*' \
        -not -name '*Lt*' 2>/dev/null | sort | head -1)
    if [ -n "$found" ]; then
        export SNNC_CUBLAS=$found
        export LD_LIBRARY_PATH=$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    fi
fi
echo "== cuBLAS: ${SNNC_CUBLAS:-on the library path}"

# Peak device memory as nvidia-smi sees it, sampled every 50 ms during the run.
SAMPLER=""
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$LOG.mem" 2>/dev/null &
    SAMPLER=$!
fi

echo "== gpu_check $BUNDLE (forward and one training step: golden_small vs PyTorch, N-MNIST vs interpreter, gesture timing)"
start=$(date +%s)
timeout 400 "$GPU_CHECK" "$BUNDLE" | tee "$LOG.out"
rc=${PIPESTATUS[0]}
elapsed=$(( $(date +%s) - start ))
[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null && wait "$SAMPLER" 2>/dev/null
if [ -s "$LOG.mem" ]; then
    peak_mib=$(sort -n "$LOG.mem" | tail -1 | tr -d ' ')
fi
case $rc in
    0) status_check="all passed" ;;
    3) status_check="skipped: no GPU or driver" ;;
    124) status_check="timed out" ;;
    *) status_check="FAILED (exit $rc)" ;;
esac

# Peers on the same card: the gesture step in PyTorch (official LIF loop) and with SpikingJelly's
# neuron when it is importable (its wheels can be carried in .whl/, see docs/gpu.md).
# PYTHON: the interpreter with CUDA torch (default python3).
PY=${PYTHON:-python3}
peer_status="not run (no $PY with CUDA torch)"
if [ "$rc" != 3 ] && "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/snnc-peer-site .whl/*.whl && export PYTHONPATH=/tmp/snnc-peer-site
    fi
    echo "== peers: bench/gpu/peer_gesture_step.py --T 60 --B 16"
    timeout 300 "$PY" bench/gpu/peer_gesture_step.py --T 60 --B 16 --runs 5 | tee "$LOG.peer"
    peer_status="ran"
fi

echo
echo "================ snnc GPU summary ================"
echo "nvidia-smi:          $status_smi"
grep -E "^device:" "$LOG.out" | sed 's/^/                     /'
echo "checks:              $status_check in ${elapsed}s"
grep -E "^(PASS|FAIL|SKIP|wall phases|tf32)" "$LOG.out" | sed 's/^/  /'
grep -E "passed, .* failed" "$LOG.out" | sed 's/^/  /'
echo "peak GPU memory:     ${peak_mib} MiB (nvidia-smi, whole device, sampled every 50 ms)"
echo "peers:               $peer_status"
if [ -s "$LOG.peer" ]; then
    # Ratio of each peer's median step to ours: forward, loss gradient, backward and Adam, all
    # on the device; ours also with the batch's upload, which the peers' timing leaves out
    # (their batch is created on the device once).
    "$PY" - "$LOG.out" "$LOG.peer" <<'PY'
import json, re, sys
ours = {}
for line in open(sys.argv[1]):
    m = re.search(r"(_train: training step|^tf32)[: ].*?step ([0-9.]+) ms wall, ([0-9.]+) ms without", line)
    if m:
        ours["tf32" if m.group(1) == "tf32" else "f32"] = (float(m.group(2)), float(m.group(3)))
for k, (wall, resident) in ours.items():
    print(f"  snnc gesture step (T=60, B=16, {k}): {resident} ms ({wall} ms with the batch upload)")
for line in open(sys.argv[2]):
    r = json.loads(line)
    if "step_median_ms" in r:
        t = r["step_median_ms"]
        ratios = ", ".join(f"{t / ours[k][1]:.2f}x ({t / ours[k][0]:.2f}x with the upload) vs {k}"
                           for k in ("f32", "tf32") if k in ours)
        print(f"  {r['framework']}: {t} ms median, peak {r['peak_allocated_mib']} MiB; peer/snnc = {ratios}")
    else:
        print(f"  {r.get('framework', 'peer')}: skipped ({r.get('skipped')})")
PY
fi
echo "=================================================="
exit $rc
