"""Per-layer forward/backward time and throughput for the shapes of DenseNet-BC-100-12 (and densenet121's stem),
numpy_densenet side by side with torch.nn.functional, plus a channel-major vs NCHW layout comparison.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_layers.py
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_layers.py --batch 8 --repeats 2 --warmup 1

Settings below are the defaults; every one can be overridden on the command line (--name value).

What is timed
-------------
* numpy forward: ``layer.forward_cnhw(x)`` on a contiguous channel-major (C, N, H, W) array, the path the
  DenseNet uses internally. numpy backward: ``layer.backward_cnhw(dy)``; the forward that fills its cache runs
  untimed before every call. Conv layers have no bias (as in DenseNet); BatchNorm is in train mode.
* torch forward: the torch.nn.functional op on a contiguous NCHW tensor with requires_grad (as in training);
  torch backward: ``torch.autograd.grad`` of that output with a fresh untimed forward before every call.
  ``torch.set_num_threads`` is set to numpy's BLAS thread count.
* time: median of ``repeats`` runs after ``warmup`` runs (min also kept in the JSON).
* GFLOP/s: conv = 2*O*C*kh*kw*N*Ho*Wo per forward, twice that per backward (dW and dX). For the memory-bound
  layers a nominal count (documented per kind in FLOPS_PER_ELEMENT) and GB/s over the minimum traffic
  (forward: read x, write y; backward: read dy and the saved input, write dx) are more telling.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from common import environment, fmt, markdown_table, print_environment, time_fn

# ------------------------------------------------------------------------------------------------------------
# settings (override on the command line: --batch 8 --repeats 3 --no-torch ...)
batch = 64              # DenseNet-BC-100-12 cases (CIFAR, 32x32)
size = 32               # input side of the CIFAR cases; in-model shapes use size/2 and size/4 too
batch_imagenet = 8      # densenet121 stem cases at 224x224
size_imagenet = 224
dtypes = "float32,float64"  # float64 runs only for the cases marked f64 below
repeats = 10
warmup = 2
torch = "auto"          # auto: on when torch is importable; on / off
threads = 0             # 0 = numpy's BLAS default; torch gets the same number
only = ""               # run only cases whose name contains this substring
layout = True           # run the channel-major vs NCHW comparison
json_out = ""           # write results to this JSON file
# ------------------------------------------------------------------------------------------------------------

FLOPS_PER_ELEMENT = {    # nominal, per input element (pools: per output element for forward)
    "bn": (8, 9),        # fwd: mean 1, var 3, normalise 2, affine 2; bwd: dbeta 1, dgamma 2, dx 6
    "relu": (1, 1),
    "avgpool": (4, 1),   # 2x2: 3 adds + 1 divide per output; backward: 1 per input element
    "maxpool": (9, 1),   # 3x3: 9 compares per output; backward: 1 per input element
}


def cases(a):
    """(name, kind, params, NCHW input shape, run float64 too)."""
    N, S, Ni, Si = a.batch, a.size, a.batch_imagenet, a.size_imagenet
    c = []
    for cin in (24, 96, 192, 342):
        c.append((f"conv1x1 {cin}->48 @{S}", "conv", dict(cin=cin, cout=48, k=1, s=1, p=0), (N, cin, S, S),
                  cin == 192))
    c += [
        (f"conv1x1 204->48 @{S} (block1 last)", "conv", dict(cin=204, cout=48, k=1, s=1, p=0), (N, 204, S, S), False),
        (f"conv1x1 288->48 @{S // 2} (block2 last)", "conv", dict(cin=288, cout=48, k=1, s=1, p=0),
         (N, 288, S // 2, S // 2), False),
        (f"conv1x1 330->48 @{S // 4} (block3 last)", "conv", dict(cin=330, cout=48, k=1, s=1, p=0),
         (N, 330, S // 4, S // 4), False),
        (f"conv1x1 216->108 @{S} (transition1)", "conv", dict(cin=216, cout=108, k=1, s=1, p=0), (N, 216, S, S),
         False),
        (f"conv3x3 48->12 p1 @{S}", "conv", dict(cin=48, cout=12, k=3, s=1, p=1), (N, 48, S, S), True),
        (f"conv3x3 48->12 p1 @{S // 2}", "conv", dict(cin=48, cout=12, k=3, s=1, p=1), (N, 48, S // 2, S // 2), False),
        (f"conv3x3 48->12 p1 @{S // 4}", "conv", dict(cin=48, cout=12, k=3, s=1, p=1), (N, 48, S // 4, S // 4), False),
        (f"conv3x3 3->24 p1 @{S} (bc stem)", "conv", dict(cin=3, cout=24, k=3, s=1, p=1), (N, 3, S, S), False),
        (f"conv7x7/2 3->64 p3 @{Si} b{Ni} (d121 stem)", "conv", dict(cin=3, cout=64, k=7, s=2, p=3),
         (Ni, 3, Si, Si), True),
    ]
    for ch in (24, 48, 96, 192, 342):
        c.append((f"batchnorm {ch} @{S}", "bn", dict(ch=ch), (N, ch, S, S), ch == 192))
    c += [
        (f"relu 48 @{S}", "relu", {}, (N, 48, S, S), True),
        (f"relu 192 @{S}", "relu", {}, (N, 192, S, S), False),
        (f"avgpool2 108 @{S} (transition1)", "avgpool", dict(k=2, s=2, p=0), (N, 108, S, S), False),
        (f"avgpool2 150 @{S // 2} (transition2)", "avgpool", dict(k=2, s=2, p=0), (N, 150, S // 2, S // 2), False),
        (f"maxpool3/2/1 64 @{Si // 2} b{Ni} (d121 pool0)", "maxpool", dict(k=3, s=2, p=1), (Ni, 64, Si // 2, Si // 2),
         True),
    ]
    return c


# -- numpy side -------------------------------------------------------------------------------------------------
def make_numpy_layer(kind, params, dtype, rng):
    try:                                                   # the fast tier's kernels (since issue 11)
        from numpy_densenet.fast import AvgPool2d, BatchNorm2d, Conv2d, MaxPool2d, ReLU
    except ImportError:                                    # older snapshots: the layers were in nn
        from numpy_densenet.nn import AvgPool2d, BatchNorm2d, Conv2d, MaxPool2d, ReLU
    if kind == "conv":
        conv = Conv2d(params["cin"], params["cout"], params["k"], stride=params["s"], padding=params["p"],
                      bias=False, dtype=dtype, generator=rng)
        return conv
    if kind == "bn":
        return BatchNorm2d(params["ch"], dtype=dtype)
    if kind == "relu":
        return ReLU()
    if kind == "avgpool":
        return AvgPool2d(params["k"], stride=params["s"], padding=params["p"])
    if kind == "maxpool":
        return MaxPool2d(params["k"], stride=params["s"], padding=params["p"])
    raise ValueError(kind)


def out_shape(kind, params, shape):
    N, C, H, W = shape
    if kind in ("bn", "relu"):
        return shape
    k, s, p = params["k"], params["s"], params["p"]
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    return (N, params["cout"] if kind == "conv" else C, Ho, Wo)


def work(kind, params, shape, itemsize):
    """(fwd flops, bwd flops, fwd bytes, bwd bytes), nominal."""
    N, C, H, W = shape
    yN, yC, Ho, Wo = out_shape(kind, params, shape)
    nx, ny = N * C * H * W, yN * yC * Ho * Wo
    if kind == "conv":
        nw = params["cout"] * C * params["k"] ** 2
        f = 2.0 * nw * N * Ho * Wo
        return f, 2 * f, (nx + nw + ny) * itemsize, (ny + nx + nw + nx + nw) * itemsize
    ff, fb = FLOPS_PER_ELEMENT[kind]
    fwd_f = ff * (ny if kind in ("avgpool", "maxpool") else nx)
    return float(fwd_f), float(fb * nx), (nx + ny) * itemsize, (ny + nx + nx) * itemsize


def bench_numpy(kind, params, shape, dtype, a, rng):
    layer = make_numpy_layer(kind, params, dtype, rng)
    N, C, H, W = shape
    x = rng.standard_normal((C, N, H, W)).astype(dtype)                  # channel-major, contiguous
    oN, oC, oH, oW = out_shape(kind, params, shape)
    dy = rng.standard_normal((oC, oN, oH, oW)).astype(dtype)
    fwd = time_fn(lambda: layer.forward_cnhw(x), a.repeats, a.warmup)
    bwd = time_fn(lambda: layer.backward_cnhw(dy), a.repeats, a.warmup, setup=lambda: layer.forward_cnhw(x))
    return fwd, bwd


# -- torch side -------------------------------------------------------------------------------------------------
def bench_torch(kind, params, shape, dtype, a, rng):
    import torch
    import torch.nn.functional as F
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    x = torch.from_numpy(rng.standard_normal(shape).astype(dtype)).requires_grad_(True)
    dy = torch.from_numpy(rng.standard_normal(out_shape(kind, params, shape)).astype(dtype))
    if kind == "conv":
        w = torch.randn(params["cout"], params["cin"], params["k"], params["k"], dtype=tdt, requires_grad=True)
        inputs = (x, w)
        f = lambda: F.conv2d(x, w, None, params["s"], params["p"])
    elif kind == "bn":
        ch = params["ch"]
        g = torch.ones(ch, dtype=tdt, requires_grad=True)
        b = torch.zeros(ch, dtype=tdt, requires_grad=True)
        rm, rv = torch.zeros(ch, dtype=tdt), torch.ones(ch, dtype=tdt)
        inputs = (x, g, b)
        f = lambda: F.batch_norm(x, rm, rv, g, b, training=True, momentum=0.1, eps=1e-5)
    elif kind == "relu":
        inputs = (x,)
        f = lambda: F.relu(x)
    elif kind == "avgpool":
        inputs = (x,)
        f = lambda: F.avg_pool2d(x, params["k"], params["s"], params["p"])
    elif kind == "maxpool":
        inputs = (x,)
        f = lambda: F.max_pool2d(x, params["k"], params["s"], params["p"])
    fwd = time_fn(f, a.repeats, a.warmup)
    holder = {}

    def setup():
        holder["y"] = f()

    bwd = time_fn(lambda: torch.autograd.grad(holder["y"], inputs, dy), a.repeats, a.warmup, setup=setup)
    return fwd, bwd


# -- layout comparison: channel-major (library) vs a straightforward NCHW im2col written here -------------------
def nchw_im2col(x, k, s, p):
    """x (N, C, H, W) -> cols (N, C*k*k, Ho*Wo): per-image patch matrices."""
    N, C, H, W = x.shape
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    if k == 1 and s == 1 and p == 0:
        return x.reshape(N, C, H * W)                                   # a view even for a channel slice
    xp = np.zeros((N, C, H + 2 * p, W + 2 * p), dtype=x.dtype)
    xp[:, :, p:p + H, p:p + W] = x
    cols = np.empty((N, C, k, k, Ho, Wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = xp[:, :, i:i + s * (Ho - 1) + 1:s, j:j + s * (Wo - 1) + 1:s]
    return cols.reshape(N, C * k * k, Ho * Wo)


def nchw_col2im(dcols, x_shape, k, s, p):
    N, C, H, W = x_shape
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    if k == 1 and s == 1 and p == 0:
        return dcols.reshape(N, C, H, W)
    dcols = dcols.reshape(N, C, k, k, Ho, Wo)
    dxp = np.zeros((N, C, H + 2 * p, W + 2 * p), dtype=dcols.dtype)
    for i in range(k):
        for j in range(k):
            dxp[:, :, i:i + s * (Ho - 1) + 1:s, j:j + s * (Wo - 1) + 1:s] += dcols[:, :, i, j]
    return dxp[:, :, p:p + H, p:p + W]


class NCHWConv:
    """Conv2d (no bias) in NCHW with per-image batched GEMMs: y[n] = W2 @ cols[n]. Caches x, like the library."""

    def __init__(self, weight, k, s, p):
        self.w, self.k, self.s, self.p = weight, k, s, p
        self.grad = np.zeros_like(weight)

    def forward(self, x):
        N, C, H, W = x.shape
        O = self.w.shape[0]
        Ho, Wo = (H + 2 * self.p - self.k) // self.s + 1, (W + 2 * self.p - self.k) // self.s + 1
        cols = nchw_im2col(x, self.k, self.s, self.p)
        y = np.matmul(self.w.reshape(O, -1), cols)                       # (N, O, Ho*Wo)
        self.x = x
        return y.reshape(N, O, Ho, Wo)

    def backward(self, dy):
        x = self.x
        N, O = dy.shape[:2]
        d2 = dy.reshape(N, O, -1)
        cols = nchw_im2col(x, self.k, self.s, self.p)                    # rebuilt, as the library does
        self.grad += np.matmul(d2, cols.transpose(0, 2, 1)).sum(axis=0).reshape(self.w.shape)
        dcols = np.matmul(self.w.reshape(O, -1).T, d2)                   # (N, C*k*k, Ho*Wo)
        return nchw_col2im(dcols, x.shape, self.k, self.s, self.p)


class NCHWBatchNorm:
    """Train-mode BatchNorm2d in NCHW: statistics over axes (0, 2, 3)."""

    def __init__(self, ch, dtype, eps=1e-5):
        self.g, self.b, self.eps = np.ones(ch, dtype), np.zeros(ch, dtype), eps

    def forward(self, x):
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))
        invstd = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)
        xhat = (x - mean[:, None, None]) * invstd[:, None, None]
        self.cache = (xhat, invstd)
        return xhat * self.g[:, None, None] + self.b[:, None, None]

    def backward(self, dy):
        xhat, invstd = self.cache
        M = dy.size // dy.shape[1]
        dbeta = dy.sum(axis=(0, 2, 3))
        dgamma = (dy * xhat).sum(axis=(0, 2, 3))
        return (self.g * invstd / M)[:, None, None] * (M * dy - dbeta[:, None, None] - xhat * dgamma[:, None, None])


def layout_cases(a):
    N, S = a.batch, a.size
    return [
        ("conv1x1 192->48", "conv", dict(cin=192, cout=48, k=1, s=1, p=0), (N, 192, S, S)),
        ("conv1x1 96->48", "conv", dict(cin=96, cout=48, k=1, s=1, p=0), (N, 96, S, S)),
        ("conv3x3 48->12 p1", "conv", dict(cin=48, cout=12, k=3, s=1, p=1), (N, 48, S, S)),
        ("conv1x1 on slice [:192] of 216-ch block buffer", "conv_slice",
         dict(cin=192, cout=48, k=1, s=1, p=0, total=216), (N, 192, S, S)),
        ("batchnorm on slice [:192] of 216-ch block buffer", "bn_slice", dict(ch=192, total=216), (N, 192, S, S)),
        ("copy slice [:192] of 216-ch buffer to contiguous", "copy_slice", dict(ch=192, total=216), (N, 192, S, S)),
        ("write 12 new channels into 216-ch buffer", "write_slice", dict(ch=204, total=216), (N, 12, S, S)),
    ]


def bench_layout(name, kind, params, shape, a, rng, use_torch):
    """Rows: variant -> (fwd, bwd) timings ((median, min) or None)."""
    dtype = np.float32
    N, C, H, W = shape
    res = {}
    R, Wm = a.repeats, a.warmup
    if kind in ("conv", "conv_slice"):
        try:
            from numpy_densenet.fast import Conv2d
        except ImportError:
            from numpy_densenet.nn import Conv2d
        k, s, p = params["k"], params["s"], params["p"]
        conv = Conv2d(C, params["cout"], k, stride=s, padding=p, bias=False, dtype=dtype, generator=rng)
        ref = NCHWConv(conv.weight.data.copy(), k, s, p)
        Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        dy_nchw = rng.standard_normal((N, params["cout"], Ho, Wo)).astype(dtype)
        dy_cnhw = np.ascontiguousarray(dy_nchw.transpose(1, 0, 2, 3))
        if kind == "conv":
            x_nchw = rng.standard_normal(shape).astype(dtype)
            x_cnhw = np.ascontiguousarray(x_nchw.transpose(1, 0, 2, 3))
            tag_cm, tag_nchw = "channel-major (C,N,H,W), library forward_cnhw", "NCHW im2col + per-image matmul"
        else:
            T = params["total"]
            buf_cnhw = rng.standard_normal((T, N, H, W)).astype(dtype)
            buf_nchw = np.ascontiguousarray(buf_cnhw.transpose(1, 0, 2, 3))
            x_cnhw = buf_cnhw[:C]                                        # contiguous view
            x_nchw = buf_nchw[:, :C]                                     # strided view
            tag_cm = "channel-major buf[:c] (contiguous view), library"
            tag_nchw = "NCHW x[:, :c] (strided view), per-image matmul"
            xc = np.ascontiguousarray(x_nchw)
            res["NCHW contiguous copy of the slice, per-image matmul"] = (
                time_fn(lambda: ref.forward(xc), R, Wm),
                time_fn(lambda: ref.backward(dy_nchw), R, Wm, setup=lambda: ref.forward(xc)))
        res[tag_cm] = (time_fn(lambda: conv.forward_cnhw(x_cnhw), R, Wm),
                       time_fn(lambda: conv.backward_cnhw(dy_cnhw), R, Wm, setup=lambda: conv.forward_cnhw(x_cnhw)))
        res[tag_nchw] = (time_fn(lambda: ref.forward(x_nchw), R, Wm),
                         time_fn(lambda: ref.backward(dy_nchw), R, Wm, setup=lambda: ref.forward(x_nchw)))
        res["library public NCHW API (forward/backward, axis swap)"] = (
            time_fn(lambda: conv.forward(x_nchw), R, Wm),
            time_fn(lambda: conv.backward(dy_nchw), R, Wm, setup=lambda: conv.forward(x_nchw)))
        if use_torch:
            import torch
            import torch.nn.functional as F
            xt = torch.from_numpy(x_nchw).requires_grad_(True) if kind == "conv" else \
                torch.from_numpy(buf_nchw).requires_grad_(True)
            wt = torch.from_numpy(conv.weight.data.copy()).requires_grad_(True)
            dyt = torch.from_numpy(dy_nchw)
            f = (lambda: F.conv2d(xt, wt, None, s, p)) if kind == "conv" else \
                (lambda: F.conv2d(xt[:, :C], wt, None, s, p))
            holder = {}
            res["torch NCHW" + (" (x[:, :c] of the buffer)" if kind != "conv" else "")] = (
                time_fn(f, R, Wm),
                time_fn(lambda: torch.autograd.grad(holder["y"], (xt, wt), dyt), R, Wm,
                        setup=lambda: holder.__setitem__("y", f())))
    elif kind == "bn_slice":
        try:
            from numpy_densenet.fast import BatchNorm2d
        except ImportError:
            from numpy_densenet.nn import BatchNorm2d
        T = params["total"]
        buf_cnhw = rng.standard_normal((T, N, H, W)).astype(dtype)
        buf_nchw = np.ascontiguousarray(buf_cnhw.transpose(1, 0, 2, 3))
        bn = BatchNorm2d(C, dtype=dtype)
        ref = NCHWBatchNorm(C, dtype)
        dy_nchw = rng.standard_normal(shape).astype(dtype)
        dy_cnhw = np.ascontiguousarray(dy_nchw.transpose(1, 0, 2, 3))
        x_cnhw, x_nchw = buf_cnhw[:C], buf_nchw[:, :C]
        res["channel-major buf[:c] (contiguous view), library"] = (
            time_fn(lambda: bn.forward_cnhw(x_cnhw), R, Wm),
            time_fn(lambda: bn.backward_cnhw(dy_cnhw), R, Wm, setup=lambda: bn.forward_cnhw(x_cnhw)))
        res["NCHW x[:, :c] (strided view), numpy over axes (0,2,3)"] = (
            time_fn(lambda: ref.forward(x_nchw), R, Wm),
            time_fn(lambda: ref.backward(dy_nchw), R, Wm, setup=lambda: ref.forward(x_nchw)))
        if use_torch:
            import torch
            import torch.nn.functional as F
            xt = torch.from_numpy(buf_nchw).requires_grad_(True)
            g = torch.ones(C, requires_grad=True)
            b = torch.zeros(C, requires_grad=True)
            rm, rv = torch.zeros(C), torch.ones(C)
            f = lambda: F.batch_norm(xt[:, :C], rm, rv, g, b, training=True)
            holder = {}
            res["torch NCHW (x[:, :c] of the buffer)"] = (
                time_fn(f, R, Wm),
                time_fn(lambda: torch.autograd.grad(holder["y"], (xt, g, b), torch.from_numpy(dy_nchw)), R, Wm,
                        setup=lambda: holder.__setitem__("y", f())))
    elif kind == "copy_slice":
        T = params["total"]
        buf_cnhw = rng.standard_normal((T, N, H, W)).astype(dtype)
        buf_nchw = np.ascontiguousarray(buf_cnhw.transpose(1, 0, 2, 3))
        res["channel-major np.ascontiguousarray(buf[:c])"] = (
            time_fn(lambda: np.array(buf_cnhw[:C]), R, Wm), None)
        res["NCHW np.ascontiguousarray(x[:, :c])"] = (time_fn(lambda: np.ascontiguousarray(buf_nchw[:, :C]), R, Wm),
                                                      None)
    elif kind == "write_slice":
        T, c0 = params["total"], params["ch"]
        buf_cnhw = np.empty((T, N, H, W), dtype)
        buf_nchw = np.empty((N, T, H, W), dtype)
        new_cnhw = rng.standard_normal((C, N, H, W)).astype(dtype)
        new_nchw = np.ascontiguousarray(new_cnhw.transpose(1, 0, 2, 3))

        def w_cm():
            buf_cnhw[c0:c0 + C] = new_cnhw

        def w_nchw():
            buf_nchw[:, c0:c0 + C] = new_nchw

        res["channel-major buf[c:c+k] = new (contiguous)"] = (time_fn(w_cm, R, Wm), None)
        res["NCHW x[:, c:c+k] = new (strided)"] = (time_fn(w_nchw, R, Wm), None)
    return res


# ------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--size", type=int, default=size)
    ap.add_argument("--batch-imagenet", type=int, default=batch_imagenet)
    ap.add_argument("--size-imagenet", type=int, default=size_imagenet)
    ap.add_argument("--dtypes", default=dtypes, help="comma list; float64 only for the cases marked for it")
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--torch", choices=("auto", "on", "off"), default=torch)
    ap.add_argument("--no-torch", dest="torch", action="store_const", const="off")
    ap.add_argument("--threads", type=int, default=threads)
    ap.add_argument("--only", default=only)
    ap.add_argument("--layout", dest="layout", action="store_true", default=layout)
    ap.add_argument("--no-layout", dest="layout", action="store_false")
    ap.add_argument("--json", dest="json_out", default=json_out)
    ap.add_argument("--src", default="", help="import numpy_densenet from this directory (a snapshot), see common.py")
    return ap.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    limiter = None
    if a.threads:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(a.threads)
    env = environment()
    nthreads = a.threads or (env["blas"].get("num_threads") or 1)
    env["threads"] = nthreads
    use_torch = a.torch != "off"
    if use_torch:
        try:
            import torch as _torch
            _torch.set_num_threads(nthreads)
            env["torch_threads"] = _torch.get_num_threads()
        except ImportError:
            if a.torch == "on":
                raise
            use_torch = False
    print_environment(env)
    print(f"# batch {a.batch} @ {a.size}x{a.size}; imagenet cases batch {a.batch_imagenet} @ {a.size_imagenet}; "
          f"median of {a.repeats} after {a.warmup} warm-up; torch: {use_torch}")
    rng = np.random.default_rng(0)
    wanted = [np.dtype(d) for d in a.dtypes.split(",") if d]
    results = []
    rows = []
    for name, kind, params, shape, f64 in cases(a):
        if a.only and a.only not in name:
            continue
        for dt in wanted:
            if dt == np.float64 and not f64:
                continue
            (fwd, _), (bwd, _) = r_np = bench_numpy(kind, params, shape, dt, a, rng)
            ff, fb, bf, bb = work(kind, params, shape, dt.itemsize)
            rec = dict(name=name, kind=kind, dtype=dt.name, shape_nchw=shape, numpy_fwd=r_np[0], numpy_bwd=r_np[1],
                       flops_fwd=ff, flops_bwd=fb, bytes_fwd=bf, bytes_bwd=bb)
            tf = tb = None
            if use_torch:
                r_t = bench_torch(kind, params, shape, dt, a, rng)
                rec.update(torch_fwd=r_t[0], torch_bwd=r_t[1])
                tf, tb = r_t[0][0], r_t[1][0]
            results.append(rec)
            row = [name, dt.name.replace("float", "f"), fmt(fwd * 1e3, 2), fmt(bwd * 1e3, 2),
                   fmt(ff / fwd / 1e9), fmt(fb / bwd / 1e9), fmt(bf / fwd / 1e9), fmt(bb / bwd / 1e9)]
            if use_torch:
                row += [fmt(tf * 1e3, 2), fmt(tb * 1e3, 2), fmt(ff / tf / 1e9), fmt(fb / tb / 1e9),
                        fmt(fwd / tf, 2), fmt(bwd / tb, 2)]
            rows.append(row)
            print("  " + " | ".join(row), file=sys.stderr, flush=True)
    headers = ["layer (NCHW shape per name)", "dtype", "np fwd ms", "np bwd ms", "np fwd GFLOP/s",
               "np bwd GFLOP/s", "np fwd GB/s", "np bwd GB/s"]
    if use_torch:
        headers += ["torch fwd ms", "torch bwd ms", "torch fwd GFLOP/s", "torch bwd GFLOP/s", "fwd np/torch",
                    "bwd np/torch"]
    print()
    print(markdown_table(headers, rows))

    layout_results = []
    if a.layout:
        lrows = []
        for name, kind, params, shape in layout_cases(a):
            if a.only and a.only not in name:
                continue
            res = bench_layout(name, kind, params, shape, a, rng, use_torch)
            base_key = next(iter(res))
            # the first channel-major row is the reference of the "x channel-major" column
            cm_key = next((k for k in res if k.startswith("channel-major")), base_key)
            cm = res[cm_key]
            for variant, (fwd, bwd) in res.items():
                layout_results.append(dict(case=name, variant=variant, fwd=fwd, bwd=bwd))
                lrows.append([name, variant, fmt(fwd[0] * 1e3, 2), fmt(bwd[0] * 1e3, 2) if bwd else "-",
                              fmt(fwd[0] / cm[0][0], 2),
                              fmt(bwd[0] / cm[1][0], 2) if bwd and cm[1] else "-"])
                print("  " + " | ".join(lrows[-1]), file=sys.stderr, flush=True)
        print()
        print(f"Layout comparison, float32, batch {a.batch} @ {a.size}x{a.size} "
              "(time relative to the channel-major row of the same case):")
        print()
        print(markdown_table(["case", "variant", "fwd ms", "bwd ms", "fwd / channel-major", "bwd / channel-major"],
                             lrows))
    env["git_end"] = environment()["git"]
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(dict(env=env, args=vars(a), layers=results, layout=layout_results), f, indent=1)
        print(f"\nwrote {a.json_out}")
    if limiter is not None:
        limiter.restore_original_limits()


if __name__ == "__main__":
    main()
