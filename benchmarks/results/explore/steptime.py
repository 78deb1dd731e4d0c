import sys, time, numpy as np
from numpy_densenet import densenet_bc
from numpy_densenet.nn import CrossEntropyLoss, no_grad
for spec in sys.argv[1:]:
    d, k, b = map(int, spec.split(","))
    m = densenet_bc(d, k, num_classes=10, in_channels=1, seed=0)
    crit = CrossEntropyLoss()
    x = np.random.default_rng(0).standard_normal((b, 1, 28, 28)).astype(np.float32)
    y = np.arange(b) % 10
    ts = []
    for i in range(4):
        t = time.perf_counter()
        for p in m.parameters(): p.grad[...] = 0
        l = crit(m(x), y); m.backward(crit.backward())
        ts.append(time.perf_counter() - t)
    m.eval()
    xe = np.random.default_rng(0).standard_normal((256, 1, 28, 28)).astype(np.float32)
    te = []
    for i in range(2):
        t = time.perf_counter()
        with no_grad(): m(xe)
        te.append(time.perf_counter() - t)
    step = np.median(ts[1:])
    print(f"bc{d} k{k} b{b}: params {m.num_parameters():,} step {step:.3f}s  epoch(54000) {54000/b*step:.0f}s  eval16k {16000/256*min(te):.1f}s", flush=True)
