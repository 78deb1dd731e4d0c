"""Render the README's tables from the JSON files written by bench_layers.py / bench_train_step.py --json.

    python benchmarks/report.py benchmarks/results/layers.json benchmarks/results/train_step.json ...

Each time cell is "median (min)"; ratios are numpy/torch of the medians, then of the mins in brackets (on a
shared machine the min is the less disturbed estimate).
"""
from __future__ import annotations

import json
import sys

from common import markdown_table


def ms(t):
    return f"{t[0] * 1e3:.1f} ({t[1] * 1e3:.1f})"


def gfs(flops, t):
    return f"{flops / t[0] / 1e9:.1f} ({flops / t[1] / 1e9:.1f})"


def ratio(a, b):
    return f"{a[0] / b[0]:.2f} ({a[1] / b[1]:.2f})"


def env_line(env):
    b = env.get("blas", {})
    la = env.get("loadavg")
    lae = env.get("loadavg_end")
    return (f"{env['date']}; CPU {env['cpu']} ({env['cores']} cores); numpy {env['numpy']}, "
            f"{b.get('internal_api')} {b.get('version')} kernel {b.get('architecture')}; threads {env['threads']} "
            f"(torch {env.get('torch')} same); OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']} "
            f"OPENBLAS_L2_SIZE={env['OPENBLAS_L2_SIZE']}; git {env['git']['commit']} (library dirty: "
            f"{env['git']['library_dirty']}); load average at start {la[0]:.1f}"
            + (f", at end {lae[0]:.1f}" if lae else ""))


def layers(d):
    print(env_line(d["env"]) + "\n")
    has_t = any("torch_fwd" in r for r in d["layers"])
    rows = []
    for r in d["layers"]:
        row = [r["name"], r["dtype"].replace("float", "f"), ms(r["numpy_fwd"]), ms(r["numpy_bwd"]),
               gfs(r["flops_fwd"], r["numpy_fwd"]), gfs(r["flops_bwd"], r["numpy_bwd"])]
        if r["kind"] != "conv":
            row[4] = f"{r['bytes_fwd'] / r['numpy_fwd'][0] / 1e9:.1f} GB/s"
            row[5] = f"{r['bytes_bwd'] / r['numpy_bwd'][0] / 1e9:.1f} GB/s"
        if has_t:
            row += [ms(r["torch_fwd"]), ms(r["torch_bwd"]), ratio(r["numpy_fwd"], r["torch_fwd"]),
                    ratio(r["numpy_bwd"], r["torch_bwd"])]
            if r["kind"] == "conv":
                row += [gfs(r["flops_fwd"], r["torch_fwd"]), gfs(r["flops_bwd"], r["torch_bwd"])]
            else:
                row += ["", ""]
        rows.append(row)
    h = ["layer", "dtype", "numpy fwd ms", "numpy bwd ms", "numpy fwd GFLOP/s (or GB/s)", "numpy bwd GFLOP/s (or GB/s)"]
    if has_t:
        h += ["torch fwd ms", "torch bwd ms", "fwd numpy/torch", "bwd numpy/torch", "torch fwd GFLOP/s",
              "torch bwd GFLOP/s"]
    print(markdown_table(h, rows))
    if d.get("layout"):
        print()
        rows = []
        cm = {}
        for r in d["layout"]:
            if r["variant"].startswith("channel-major"):
                cm[r["case"]] = r
        for r in d["layout"]:
            c = cm.get(r["case"])
            rows.append([r["case"], r["variant"], ms(r["fwd"]), ms(r["bwd"]) if r["bwd"] else "-",
                         ratio(r["fwd"], c["fwd"]) if c else "-",
                         ratio(r["bwd"], c["bwd"]) if c and r["bwd"] and c["bwd"] else "-"])
        print(markdown_table(["case", "variant", "fwd ms", "bwd ms", "fwd / channel-major", "bwd / channel-major"],
                             rows))


def train(d):
    print(env_line(d["env"]) + "\n")
    res = [r for r in d.get("results", []) if "error" not in r]
    if res:
        def get(name, dtype, fw, mode, me=False):
            for r in res:
                s = r["spec"]
                if (s["name"], s["dtype"], s["framework"], s["mode"], bool(s.get("memory_efficient"))) == \
                        (name, dtype, fw, mode, me):
                    return r
            return None

        keys = []
        for r in res:
            k = (r["spec"]["name"], r["spec"]["dtype"], r["spec"]["batch"])
            if k not in keys:
                keys.append(k)
        rows, mrows = [], []
        for name, dt, B in keys:
            n, t, m = get(name, dt, "numpy", "train"), get(name, dt, "torch", "train"), \
                get(name, dt, "torch", "train", True)
            ne, te = get(name, dt, "numpy", "eval"), get(name, dt, "torch", "eval")
            s = lambda r: f"{r['median_s']:.2f} ({r['min_s']:.2f})" if r else "-"
            ips = lambda r: f"{B / r['median_s']:.1f}" if r else "-"
            rt = lambda a, b: f"{a['median_s'] / b['median_s']:.2f} ({a['min_s'] / b['min_s']:.2f})" if a and b \
                else "-"
            rows.append([name, B, dt, s(n), ips(n), s(t), ips(t), rt(n, t), s(m), rt(n, m), s(ne), s(te), rt(ne, te)])
            mem = lambda r: f"{r['peak_mb']:.0f} / {r['baseline_mb']:.0f} / {r['delta_mb']:.0f}" if r else "-"
            mrows.append([name, B, dt, mem(n), mem(t), mem(m),
                          f"{n['delta_mb'] / t['delta_mb']:.2f}" if n and t else "-", mem(ne), mem(te)])
        print(markdown_table(["config", "batch", "dtype", "numpy train s", "numpy img/s", "torch train s", "torch img/s",
                              "train numpy/torch", "torch mem-eff train s", "numpy / torch mem-eff",
                              "numpy eval fwd s", "torch eval fwd s", "eval numpy/torch"], rows))
        print()
        print(markdown_table(["config", "batch", "dtype", "numpy train MB peak / base / delta",
                              "torch train MB", "torch mem-eff train MB", "train delta numpy/torch",
                              "numpy eval MB", "torch eval MB"], mrows))
    for p in d.get("profile", []):
        if "error" in p or "profile" not in p:
            continue
        spec = p["spec"]
        print(f"\n{spec['framework']} profile, {spec['name']} {spec['dtype']} batch {spec['batch']}:\n")
        if spec["framework"] == "numpy":
            step = p["profile"][-1]["total_s"]
            rows = []
            for r in p["profile"]:
                tot = r.get("total_s", (r["fwd_s"] or 0) + (r["bwd_s"] or 0))
                rows.append([r["op"], f"{r['fwd_s'] * 1e3:.0f}" if r["fwd_s"] is not None else "",
                             f"{r['bwd_s'] * 1e3:.0f}" if r["bwd_s"] is not None else "", f"{tot * 1e3:.0f}",
                             f"{100 * tot / step:.1f}%", r["calls"] or ""])
            print(markdown_table(["operation", "forward ms", "backward ms", "total ms", "share", "calls"], rows))
        else:
            print(markdown_table(["op", "self CPU ms", "calls"],
                                 [[r["op"], f"{r['self_ms']:.0f}", r["calls"]] for r in p["profile"]]))


def depth(d):
    print(env_line(d["env"]) + "\n")
    for r in d.get("depth", []):
        if "error" in r:
            continue
        s = r["spec"]
        print(f"- {s['framework']}{' mem-eff' if s.get('memory_efficient') else ''} depth {s['depth']}: "
              f"delta {r['delta_mb']:.0f} MB (peak {r['peak_mb']:.0f}, baseline {r['baseline_mb']:.0f}), "
              f"step {r['median_s']:.1f} s, load {r['loadavg_after'][0]:.1f}")


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            data = json.load(f)
        print(f"<!-- {path} -->")
        if "layers" in data:
            layers(data)
        else:
            train(data)
            if data.get("depth"):
                depth(data)
        print()
