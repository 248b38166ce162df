#!/usr/bin/env python3
"""GPU peer of snnc's gesture training step: the MA-SNN DVS128 Gesture network (the paper's
official equations, as examples/gesture.snn and ../../../shared/paper/method.md describe it) in
PyTorch on CUDA, timed the way bench/gpu.sh times ours.

One step = forward over T + MSE on the spike rate + backward (BPTT, rectangular surrogate) +
Adam. The input is what our gpu_check feeds: [T, B, 2, 32, 32] binary frames (the 128x128
events already downsampled by 4), about 10 % active.

Variants (one JSON line each):
  plain  the neuron recurrence as a Python loop over T (autograd through every step),
         PyTorch's defaults (TF32 convolutions)
  sj     the same network with SpikingJelly's multi-step LIF neuron (CuPy backend, or 2.x's own
         fused kernels) in place of that loop (SpikingJelly's LIF, not the official
         forget-gate LIF: the same cost class, the neuron fused over T); skipped with a reason
         when spikingjelly is not importable (carry its wheel, see docs/gpu.md)

  python3 bench/gpu/peer_gesture_step.py [--T 60] [--B 16] [--attention TCSA|no] [--runs 5]
"""
import argparse
import json
import statistics

import torch
import torch.nn as nn
import torch.nn.functional as F

VTH, ALPHA, LENS = 0.3, 0.3, 0.25
C_RATIO, T_RATIO = 8, 5


class RectSurrogate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return (v >= 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad * (v.abs() < LENS).to(grad.dtype) / (2 * LENS)


def official_lif(x):
    """x [B, T, ...] -> spikes; the spike gates the forgetting, then a decay by ALPHA."""
    h, spikes = torch.zeros_like(x[:, 0]), []
    for t in range(x.shape[1]):
        u = h + x[:, t]
        s = RectSurrogate.apply(u - VTH)
        h = (s * VTH + (1 - s) * u) * ALPHA
        spikes.append(s)
    return torch.stack(spikes, 1)


def sj_lif():
    """SpikingJelly's multi-step LIF neuron as a [B, T, ...] module: its CuPy backend on
    SpikingJelly 0.0.0.0.x, and on 2.x its own dispatch (fused kernels over T on CUDA)."""
    from spikingjelly.activation_based import neuron, surrogate

    args = dict(tau=1.0 / (1.0 - ALPHA), v_threshold=VTH, surrogate_function=surrogate.ATan(),
                detach_reset=True, step_mode="m")
    try:
        node, backend = neuron.LIFNode(**args, backend="cupy"), "cupy"
    except TypeError:  # 2.x: no `backend` argument
        node, backend = neuron.LIFNode(**args), "built-in dispatch"

    def run(x):  # SpikingJelly's multi-step layout is [T, B, ...]
        node.reset()
        return node(x.transpose(0, 1).contiguous()).transpose(0, 1)

    run.backend = backend
    return run


def mlp(n, r):
    return nn.Sequential(nn.Linear(n, max(n // r, 1), bias=False), nn.ReLU(),
                         nn.Linear(max(n // r, 1), n, bias=False))


def gate(net, pooled):
    avg, mx = pooled
    return torch.sigmoid(net(avg) + net(mx))


class TCSA(nn.Module):
    """Temporal, then channel, then spatial attention on [B, T, C, H, W], then ReLU."""

    def __init__(self, T, C):
        super().__init__()
        self.t, self.c = mlp(T, T_RATIO), mlp(C, C_RATIO)
        self.s = nn.Conv2d(2, 1, 3, padding=1, bias=False)

    def forward(self, x):
        f = x.flatten(2)
        x = gate(self.t, (f.mean(2), f.amax(2)))[..., None, None, None] * x
        f = x.transpose(1, 2).flatten(2)
        x = gate(self.c, (f.mean(2), f.amax(2)))[:, None, :, None, None] * x
        f = x.flatten(1, 2)
        m = torch.cat([f.mean(1, keepdim=True), f.amax(1, keepdim=True)], 1)
        x = torch.sigmoid(self.s(m)).unsqueeze(1) * x
        return F.relu(x)


class TA(nn.Module):
    def __init__(self, T):
        super().__init__()
        self.t = mlp(T, T_RATIO)

    def forward(self, x):  # [B, T, N]
        return F.relu(gate(self.t, (x.mean(2), x.amax(2)))[..., None] * x)


class Net(nn.Module):
    def __init__(self, T, att, lif):
        super().__init__()
        self.lif = lif
        chans = [(2, 64, 1), (64, 128, 2), (128, 128, 2)]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b, _ in chans)
        self.bns = nn.ModuleList(nn.BatchNorm2d(b) for _, b, _ in chans)
        self.pools = [p for _, _, p in chans]
        self.catt = nn.ModuleList(TCSA(T, b) for _, b, _ in chans) if att else None
        self.fcs = nn.ModuleList([nn.Linear(8192, 256), nn.Linear(256, 11)])
        self.fbns = nn.ModuleList([nn.BatchNorm1d(256), nn.BatchNorm1d(11)])
        self.fatt = nn.ModuleList([TA(T), TA(T)]) if att else None

    def forward(self, x):  # [T, B, 2, 32, 32]
        T, B = x.shape[:2]
        x = x.transpose(0, 1)
        for i, (conv, bn, pool) in enumerate(zip(self.convs, self.bns, self.pools)):
            y = bn(conv(x.flatten(0, 1)))
            if pool > 1:
                y = F.avg_pool2d(y, pool)
            y = y.view(B, T, *y.shape[1:])
            x = self.lif(self.catt[i](y) if self.catt else y)
        x = x.flatten(2)
        for i, (fc, bn) in enumerate(zip(self.fcs, self.fbns)):
            y = bn(fc(x.flatten(0, 1))).view(B, T, -1)
            x = self.lif(self.fatt[i](y) if self.fatt else y)
        return x.mean(1)


def time_step(a, lif, name):
    dev = torch.device("cuda")
    torch.manual_seed(0)
    net = Net(a.T, a.attention == "TCSA", lif).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = (torch.rand(a.T, a.B, 2, 32, 32, device=dev) < 0.1).float()
    y = F.one_hot(torch.randint(0, 11, (a.B,), device=dev), 11).float()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(net(x), y)
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return {
        "bench": "gesture_train_step_gpu", "framework": name, "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0), "attention": a.attention, "T": a.T, "B": a.B,
        "runs": a.runs, "step_median_ms": round(statistics.median(times), 2),
        "step_min_ms": round(min(times), 2), "step_max_ms": round(max(times), 2),
        "peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, default=60)
    p.add_argument("--B", type=int, default=16)
    p.add_argument("--attention", default="TCSA", choices=["TCSA", "no"])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"bench": "gesture_train_step_gpu", "skipped": "no CUDA device"}))
        return
    print(json.dumps(time_step(a, official_lif, "plain PyTorch (official LIF loop)")), flush=True)
    try:
        lif = sj_lif()
    except Exception as e:
        print(json.dumps({"bench": "gesture_train_step_gpu", "framework": "SpikingJelly",
                          "skipped": f"{type(e).__name__}: {e}"}), flush=True)
        return
    # PyTorch's default runs convolutions on the tensor cores in TF32
    # (torch.backends.cudnn.allow_tf32); the second row keeps them in full f32, as snnc's
    # default does.
    for tf32 in (True, False):
        torch.backends.cudnn.allow_tf32 = tf32
        name = f"SpikingJelly LIFNode ({lif.backend}), {'TF32' if tf32 else 'f32'} convolutions"
        try:
            row = time_step(a, lif, name)
        except Exception as e:  # a backend that imports but fails on this card leaves a row
            row = {"bench": "gesture_train_step_gpu", "framework": "SpikingJelly",
                   "skipped": f"{type(e).__name__}: {str(e)[:300]}"}
        print(json.dumps(row), flush=True)
    torch.backends.cudnn.allow_tf32 = True


if __name__ == "__main__":
    main()
