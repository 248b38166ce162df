#!/usr/bin/env python3
"""Independent PyTorch reference for tests/reference/golden_small.snn.

Computes, in float64, the forward values, the MSE loss, the parameter and input
gradients (autograd; BPTT through the LIF recurrences with the atan surrogate)
and the updated BatchNorm running statistics of the small MA-SNN

    x -> conv(4, 3) -> bn -> attend(TCSA(r_t = 2, r_c = 2, k = 3)) -> LIF(v_th = 0.5)
      -> pool.avg(2) -> flatten -> linear(3) -> LIF(v_th = 0.5) -> readout.rate

and writes them as .npy golden files that the Rust reference interpreter is
tested against (1e-5 relative). Layout is [T, B, C, H, W] throughout. Nothing
here reads snnc's own code or output: the semantics follow the IR printed by
`snnc build tests/reference/golden_small.snn` and are spelt out below.

Usage:
    python golden_small.py --out tests/reference/golden_small   # write golden files
    python golden_small.py --selfcheck                          # finite-difference check
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

DT = torch.float64
SEED = 2024
T, B, CIN, H, W = 4, 2, 2, 8, 8
COUT = 4
NCLS = 3
TARGET_CLASSES = [0, 2]

BN_EPS = 1e-5
BN_MOMENTUM = 0.1
TAU = 2.0
V_TH = 0.5
V_RESET = 0.0
ALPHA = 2.0  # atan surrogate

# Scales applied on top of the default uniform initialisations so that both LIF
# layers fire at a healthy rate (see README). Recorded in manifest.json.
CONV0_WEIGHT_SCALE = 3.0
LINEAR0_WEIGHT_SCALE = 4.0
# BN normalises the conv output, so the conv scale alone cannot make lif0 fire; the three
# sigmoid gates (each ~0.5) shrink the current ~8x more. gamma and beta are scaled up.
BN0_AFFINE_SCALE = 3.0

PARAM_NAMES = [
    "conv0.weight", "conv0.bias", "bn0.gamma", "bn0.beta",
    "ta_fc1_0.weight", "ta_fc2_0.weight", "ca_fc1_0.weight", "ca_fc2_0.weight",
    "sa_conv0.weight", "linear0.weight", "linear0.bias",
]


# ----------------------------------------------------------------------------------------
# data


def make_data(seed=SEED):
    """All random draws, in this exact order, from numpy default_rng(seed)."""
    rng = np.random.default_rng(seed)

    def u(lo, hi, shape):
        return rng.uniform(lo, hi, size=shape)

    def fan(fan_in, shape):
        b = 1.0 / math.sqrt(fan_in)
        return rng.uniform(-b, b, size=shape)

    x = u(0.0, 2.0, (T, B, CIN, H, W))
    p = {}
    p["conv0.weight"] = fan(CIN * 9, (COUT, CIN, 3, 3)) * CONV0_WEIGHT_SCALE
    p["conv0.bias"] = fan(CIN * 9, (COUT,))
    p["bn0.gamma"] = u(0.5, 1.5, (COUT,)) * BN0_AFFINE_SCALE
    p["bn0.beta"] = u(-0.2, 0.6, (COUT,)) * BN0_AFFINE_SCALE
    p["ta_fc1_0.weight"] = fan(T, (T // 2, T))
    p["ta_fc2_0.weight"] = fan(T // 2, (T, T // 2))
    p["ca_fc1_0.weight"] = fan(COUT, (COUT // 2, COUT))
    p["ca_fc2_0.weight"] = fan(COUT // 2, (COUT, COUT // 2))
    p["sa_conv0.weight"] = fan(2 * 9, (1, 2, 3, 3))
    p["linear0.weight"] = fan(COUT * 4 * 4, (NCLS, COUT * 4 * 4)) * LINEAR0_WEIGHT_SCALE
    p["linear0.bias"] = u(0.0, 0.3, (NCLS,))
    target = np.zeros((B, NCLS))
    for b, c in enumerate(TARGET_CLASSES):
        target[b, c] = 1.0
    running = {"bn0.running_mean": np.zeros(COUT), "bn0.running_var": np.ones(COUT)}
    return x, target, p, running


# ----------------------------------------------------------------------------------------
# spike function


class SpikeAtan(torch.autograd.Function):
    """Heaviside forward, H(u) = 1 if u >= 0 else 0; atan surrogate backward:
    dS/du = (alpha/2) / (1 + (pi/2 * alpha * u)^2)."""

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        d = (ALPHA / 2.0) / (1.0 + (math.pi / 2.0 * ALPHA * u) ** 2)
        return g * d


def make_smooth_spike(k):
    """Self-check stand-in: forward sigmoid(k u), backward its exact derivative
    (goes through the same custom-Function plumbing as SpikeAtan)."""

    class SpikeSmooth(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u):
            s = torch.sigmoid(k * u)
            ctx.save_for_backward(s)
            return s

        @staticmethod
        def backward(ctx, g):
            (s,) = ctx.saved_tensors
            return g * k * s * (1.0 - s)

    return SpikeSmooth


# ----------------------------------------------------------------------------------------
# layers


def conv2d_tb(x, w, b):
    """Conv2d (cross-correlation, stride 1, padding 1) on [T, B, C, H, W]: merge T-major
    to [T*B, C, H, W], convolve, split back."""
    t, bb = x.shape[:2]
    y = F.conv2d(x.reshape(t * bb, *x.shape[2:]), w, b, stride=1, padding=1)
    return y.reshape(t, bb, *y.shape[1:])


def batch_norm_train(x, gamma, beta, running_mean, running_var):
    """Training-mode BN over C with statistics over (T, B, H, W); biased variance in the
    normalisation; running stats updated with momentum and the UNBIASED variance."""
    axes = (0, 1, 3, 4)
    n = x.shape[0] * x.shape[1] * x.shape[3] * x.shape[4]
    mean = x.mean(dim=axes, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)  # biased
    xhat = (x - mean) / torch.sqrt(var + BN_EPS)
    y = xhat * gamma.view(1, 1, -1, 1, 1) + beta.view(1, 1, -1, 1, 1)
    with torch.no_grad():
        m = mean.reshape(-1)
        v_unbiased = var.reshape(-1) * n / (n - 1)
        new_rm = (1.0 - BN_MOMENTUM) * running_mean + BN_MOMENTUM * m
        new_rv = (1.0 - BN_MOMENTUM) * running_var + BN_MOMENTUM * v_unbiased
    return y, new_rm, new_rv


def mlp_axis(u, w1, w2, axis):
    """f(u) = W2 . relu(W1 . u), contracting dimension `axis` of u (W: [out, in])."""
    h = torch.tensordot(w1, u, dims=([1], [axis])).movedim(0, axis)
    h = torch.relu(h)
    return torch.tensordot(w2, h, dims=([1], [axis])).movedim(0, axis)


def lif(x, spike_fn):
    """LIF over T (dim 0), elementwise; v0 = 0; charge v += (x - (v - v_reset)) / tau;
    s = spike(v - v_th); hard reset v = v*(1 - s) + v_reset*s (not detached). Returns
    spikes [T, ...] and the pre-reset margins u = v - v_th [T, ...]."""
    v = torch.zeros_like(x[0])
    spikes, us = [], []
    for t in range(x.shape[0]):
        v = v + (x[t] - (v - V_RESET)) / TAU
        u = v - V_TH
        s = spike_fn(u)
        v = v * (1.0 - s) + V_RESET * s
        spikes.append(s)
        us.append(u)
    return torch.stack(spikes), torch.stack(us)


def forward(x, target, p, running, spike_fn):
    """Returns (loss, dict of named values, dict of extra diagnostics)."""
    o = {}
    o["conv0"] = conv2d_tb(x, p["conv0.weight"], p["conv0.bias"])
    o["bn0"], new_rm, new_rv = batch_norm_train(
        o["conv0"], p["bn0.gamma"], p["bn0.beta"],
        running["bn0.running_mean"], running["bn0.running_var"])
    z = o["bn0"]
    # TA: pool over (C, H, W) per (t, b); MLP along T; one weight per (t, b)
    o["ta_avg0"] = z.mean(dim=(2, 3, 4), keepdim=True)
    o["ta_max0"] = z.amax(dim=(2, 3, 4), keepdim=True)
    w1, w2 = p["ta_fc1_0.weight"], p["ta_fc2_0.weight"]
    o["ta_fc1_0"] = torch.tensordot(w1, o["ta_avg0"], dims=([1], [0]))
    o["ta_fc1_1"] = torch.tensordot(w1, o["ta_max0"], dims=([1], [0]))
    o["ta_sum0"] = mlp_axis(o["ta_avg0"], w1, w2, 0) + mlp_axis(o["ta_max0"], w1, w2, 0)
    o["ta0"] = torch.sigmoid(o["ta_sum0"])
    o["gated0"] = z * o["ta0"]
    # CA: pool over (T, H, W) per (b, c); MLP along C; one weight per (b, c)
    z1 = o["gated0"]
    o["ca_avg0"] = z1.mean(dim=(0, 3, 4), keepdim=True)
    o["ca_max0"] = z1.amax(dim=(0, 3, 4), keepdim=True)
    w1, w2 = p["ca_fc1_0.weight"], p["ca_fc2_0.weight"]
    o["ca_fc1_0"] = torch.tensordot(w1, o["ca_avg0"], dims=([1], [2])).movedim(0, 2)
    o["ca_fc1_1"] = torch.tensordot(w1, o["ca_max0"], dims=([1], [2])).movedim(0, 2)
    o["ca_sum0"] = mlp_axis(o["ca_avg0"], w1, w2, 2) + mlp_axis(o["ca_max0"], w1, w2, 2)
    o["ca0"] = torch.sigmoid(o["ca_sum0"])
    o["gated1"] = z1 * o["ca0"]
    # SA: pool over (T, C) per (b, h, w); concat [mean, max] on C; 3x3 conv, no bias
    z2 = o["gated1"]
    o["sa_avg0"] = z2.mean(dim=(0, 2), keepdim=True)
    o["sa_max0"] = z2.amax(dim=(0, 2), keepdim=True)
    o["sa_cat0"] = torch.cat([o["sa_avg0"], o["sa_max0"]], dim=2)
    o["sa_conv0"] = conv2d_tb(o["sa_cat0"], p["sa_conv0.weight"], None)
    o["sa0"] = torch.sigmoid(o["sa_conv0"])
    o["gated2"] = z2 * o["sa0"]
    o["relu0"] = torch.relu(o["gated2"])
    o["lif0"], u0 = lif(o["relu0"], spike_fn)
    t, bb = o["lif0"].shape[:2]
    pooled = F.avg_pool2d(o["lif0"].reshape(t * bb, *o["lif0"].shape[2:]), 2, 2)
    o["avgpool0"] = pooled.reshape(t, bb, *pooled.shape[1:])
    o["flatten0"] = o["avgpool0"].reshape(t, bb, -1)  # index c*H*W + h*W + w
    o["linear0"] = o["flatten0"] @ p["linear0.weight"].T + p["linear0.bias"]
    o["lif1"], u1 = lif(o["linear0"], spike_fn)
    o["readout0"] = o["lif1"].mean(dim=0)
    loss = ((o["readout0"] - target) ** 2).mean()
    extra = {"u_lif0": u0, "u_lif1": u1, "running_mean": new_rm, "running_var": new_rv}
    return loss, o, extra


def to_tensors(x, target, p, running, requires_grad=True):
    xt = torch.tensor(x, dtype=DT, requires_grad=requires_grad)
    tt = torch.tensor(target, dtype=DT)
    pt = {k: torch.tensor(v, dtype=DT, requires_grad=requires_grad) for k, v in p.items()}
    rt = {k: torch.tensor(v, dtype=DT) for k, v in running.items()}
    return xt, tt, pt, rt


# ----------------------------------------------------------------------------------------
# robustness diagnostics


def margins(o, extra):
    """Distances to every non-smooth decision, so that float32 / different summation
    orders cannot flip any branch."""
    d = {}
    o = {k: v.detach() for k, v in o.items()}
    extra = {k: v.detach() for k, v in extra.items()}
    d["lif0_min_abs_u"] = float(extra["u_lif0"].abs().min())
    d["lif1_min_abs_u"] = float(extra["u_lif1"].abs().min())
    # gates are > 0, so relu0's branch is sign(bn0); |bn0| is the margin that matters
    d["relu0_sign_margin_min_abs_bn0"] = float(o["bn0"].abs().min())
    d["ta_relu_min_abs_in"] = float(torch.cat([o["ta_fc1_0"], o["ta_fc1_1"]]).abs().min())
    d["ca_relu_min_abs_in"] = float(torch.cat([o["ca_fc1_0"], o["ca_fc1_1"]]).abs().min())

    def max_gap(v, dims):
        # smallest gap between the largest and second largest entry of a max reduction
        v = v.detach().movedim(dims, tuple(range(len(dims))))
        n = int(np.prod(v.shape[:len(dims)]))
        top2 = torch.topk(v.reshape(n, -1), 2, dim=0).values
        return float((top2[0] - top2[1]).min())

    d["ta_max_gap"] = max_gap(o["bn0"], (2, 3, 4))
    d["ca_max_gap"] = max_gap(o["gated0"], (0, 3, 4))
    d["sa_max_gap"] = max_gap(o["gated1"], (0, 2))
    return d


# ----------------------------------------------------------------------------------------
# golden generation


def save(path, arr):
    arr = np.ascontiguousarray(np.asarray(arr, dtype="<f8"))
    np.save(path, arr)
    return list(arr.shape)


def generate(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    x, target, p, running = make_data()
    xt, tt, pt, rt = to_tensors(x, target, p, running)
    loss, o, extra = forward(xt, tt, pt, rt, SpikeAtan.apply)
    for v in o.values():
        v.retain_grad()
    loss.backward()

    rate0 = float(o["lif0"].detach().mean())
    rate1 = float(o["lif1"].detach().mean())
    mg = margins(o, extra)
    ok = (0.05 < rate0 < 0.95) and (0.05 < rate1 < 0.95) \
        and mg["lif0_min_abs_u"] >= 1e-6 and mg["lif1_min_abs_u"] >= 1e-6
    if not ok:
        print(f"firing rates {rate0:.4f} {rate1:.4f}, margins {mg}: adjust scales",
              file=sys.stderr)
        sys.exit(1)

    files = {}

    def put(name, arr):
        files[name] = save(os.path.join(out_dir, name), arr)

    put("input.npy", x)
    put("target.npy", target)
    for k in PARAM_NAMES:
        put(f"param.{k}.npy", p[k])
    for k in OUT_VALUES:
        put(f"out.{k}.npy", o[k].detach().numpy())
    put("loss.npy", np.array(loss.item()))
    for k in PARAM_NAMES:
        put(f"grad.{k}.npy", pt[k].grad.numpy())
    put("grad.input.npy", xt.grad.numpy())
    put("running.bn0.running_mean.npy", extra["running_mean"].numpy())
    put("running.bn0.running_var.npy", extra["running_var"].numpy())

    manifest = {
        "model": "tests/reference/golden_small.snn (GoldenSmall, T = 4)",
        "generator": "tests/reference/golden_small.py",
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "dtype": "float64 little-endian, C order",
        "layout": "[T, B, C, H, W]; T = 4, B = 2",
        "seed": SEED,
        "rng": "numpy.random.default_rng(seed); draw order: input, then params in "
               "param_names order (see make_data)",
        "scales": {"conv0.weight": CONV0_WEIGHT_SCALE, "linear0.weight": LINEAR0_WEIGHT_SCALE,
                   "bn0.gamma": BN0_AFFINE_SCALE, "bn0.beta": BN0_AFFINE_SCALE},
        "target_classes": TARGET_CLASSES,
        "param_names": PARAM_NAMES,
        "initial_running": {"bn0.running_mean": 0.0, "bn0.running_var": 1.0},
        "loss": loss.item(),
        "firing_rates": {"lif0": rate0, "lif1": rate1},
        "spike_counts": {"lif0": int(o["lif0"].sum()), "lif1": int(o["lif1"].sum())},
        "margins": mg,
        "tolerance": "1e-5 relative",
        "zero_by_construction": {
            "grad.conv0.bias.npy": "a per-channel bias before training-mode BN cancels; the "
                                   "stored values are ~1e-18 rounding noise, compare with an "
                                   "absolute floor"},
        "files": files,
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=False)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir))
    print(f"wrote {len(files) + 1} files ({total} bytes) to {out_dir}")
    print(f"loss = {loss.item():.17g}")
    print(f"firing rates: lif0 = {rate0:.6f}, lif1 = {rate1:.6f}")
    print(f"spikes: lif1 = {o['lif1'].detach().numpy().tolist()}")
    print(f"margins: {json.dumps(mg, indent=1)}")


# IR values written as out.<name>.npy (the brief's list plus the other IR nodes that
# are cheap to store, for localising mismatches).
OUT_VALUES = [
    "conv0", "bn0",
    "ta_avg0", "ta_max0", "ta_fc1_0", "ta_fc1_1", "ta_sum0", "ta0", "gated0",
    "ca_avg0", "ca_max0", "ca_fc1_0", "ca_fc1_1", "ca_sum0", "ca0", "gated1",
    "sa_avg0", "sa_max0", "sa_cat0", "sa_conv0", "sa0", "gated2",
    "relu0", "lif0", "avgpool0", "flatten0", "linear0", "lif1", "readout0",
]


# ----------------------------------------------------------------------------------------
# self-check


def selfcheck(k=4.0, h=1e-6):
    """(1) autograd vs central finite differences of every parameter and input entry with
    the smooth stand-in spike sigmoid(k u); (2) SpikeAtan backward vs the formula via
    gradcheck-style comparison; (3) BN vs torch.nn.functional.batch_norm."""
    x, target, p, running = make_data()
    spike = make_smooth_spike(k).apply
    xt, tt, pt, rt = to_tensors(x, target, p, running)
    loss, o, extra = forward(xt, tt, pt, rt, spike)
    loss.backward()
    mg = margins(o, extra)
    print(f"smooth loss (k={k}) = {loss.item():.12g}; kink margins {mg}")

    def loss_at(xv, pv):
        a, b, c, d = to_tensors(xv, target, pv, running, requires_grad=False)
        with torch.no_grad():
            return forward(a, b, c, d, spike)[0].item()

    worst_rel, worst_abs, worst = 0.0, 0.0, None
    groups = [("input", x, xt.grad.numpy())] + [(n, p[n], pt[n].grad.numpy()) for n in PARAM_NAMES]
    for name, arr, g in groups:
        fd = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            orig = arr[idx]
            arr[idx] = orig + h
            lp = loss_at(x, p)
            arr[idx] = orig - h
            lm = loss_at(x, p)
            arr[idx] = orig
            fd[idx] = (lp - lm) / (2 * h)
        err = np.abs(fd - g)
        scale = max(np.abs(g).max(), 1e-9)  # conv0.bias: exactly 0 (cancelled by BN)
        rel = err.max() / scale
        print(f"  {name:18s} max|grad| = {np.abs(g).max():.3e}  max|fd - grad| = "
              f"{err.max():.3e}  (relative to max|grad|: {rel:.3e})")
        if rel > worst_rel:
            worst_rel, worst = rel, name
        worst_abs = max(worst_abs, err.max())
    print(f"finite-difference check: worst error relative to the group's max|grad| = "
          f"{worst_rel:.3e} ({worst}); worst absolute = {worst_abs:.3e}")

    # SpikeAtan backward against torch's autograd of the same closed form
    u = torch.linspace(-2, 2, 101, dtype=DT, requires_grad=True)
    SpikeAtan.apply(u).sum().backward()
    u2 = u.detach().clone().requires_grad_(True)
    # antiderivative of (alpha/2)/(1+(pi/2 alpha u)^2) is atan(pi/2 alpha u)/pi
    (torch.atan(math.pi / 2 * ALPHA * u2) / math.pi).sum().backward()
    e_sur = float((u.grad - u2.grad).abs().max())
    print(f"atan surrogate vs d/du[atan(pi/2 alpha u)/pi]: max error {e_sur:.3e}")

    # BN against torch's functional BN on the T-major merged batch
    xt2, tt2, pt2, rt2 = to_tensors(x, target, p, running, requires_grad=False)
    c0 = conv2d_tb(xt2, pt2["conv0.weight"], pt2["conv0.bias"])
    mine, rm, rv = batch_norm_train(c0, pt2["bn0.gamma"], pt2["bn0.beta"],
                                    rt2["bn0.running_mean"], rt2["bn0.running_var"])
    trm, trv = rt2["bn0.running_mean"].clone(), rt2["bn0.running_var"].clone()
    ref = F.batch_norm(c0.reshape(T * B, COUT, H, W), trm, trv, pt2["bn0.gamma"],
                       pt2["bn0.beta"], training=True, momentum=BN_MOMENTUM, eps=BN_EPS)
    e_bn = float((mine.reshape(T * B, COUT, H, W) - ref).abs().max())
    e_rs = float(max((rm - trm).abs().max(), (rv - trv).abs().max()))
    print(f"BN vs F.batch_norm: output {e_bn:.3e}, running stats {e_rs:.3e}")

    # Golden (Heaviside) forward: spikes must be exactly the IR's (u >= 0)
    xt3, tt3, pt3, rt3 = to_tensors(x, target, p, running, requires_grad=False)
    _, o3, ex3 = forward(xt3, tt3, pt3, rt3, SpikeAtan.apply)
    print(f"golden-mode margins: {margins(o3, ex3)}")
    return worst_rel


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "golden_small"))
    ap.add_argument("--selfcheck", action="store_true",
                    help="finite-difference check with a smooth spike stand-in; writes nothing")
    ap.add_argument("--k", type=float, default=4.0, help="steepness of the stand-in")
    args = ap.parse_args()
    torch.set_default_dtype(DT)
    if args.selfcheck:
        worst = selfcheck(k=args.k)
        sys.exit(0 if worst < 1e-6 else 1)
    generate(args.out)


if __name__ == "__main__":
    main()
