"""torch.nn replica of torchvision's DenseNet for the side-by-side benchmarks (torch is never a runtime dependency).

The replica itself is ``tests/torch_densenet.py`` (the one the parity tests check against numpy_densenet):
same structure, module names (so ``state_dict`` keys), defaults and initialisation as torchvision's DenseNet,
including ``memory_efficient=True``, which wraps the concat -> norm1 -> relu1 -> conv1 part of every dense
layer in ``torch.utils.checkpoint`` (recomputed during backward), as torchvision does; plus the paper's CIFAR
stem. This module loads it by path and adds the two factories the benchmarks use.

    python benchmarks/torch_densenet.py       # checks parameter counts and forward parity against numpy_densenet
"""
from __future__ import annotations

import importlib.util
import os

import torch


def _load_replica():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "torch_densenet.py")
    spec = importlib.util.spec_from_file_location("tests_torch_densenet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_replica = _load_replica()
DenseNet, _DenseLayer = _replica.DenseNet, _replica._DenseLayer


def densenet121(num_classes=1000, memory_efficient=False):
    return DenseNet(32, (6, 12, 24, 16), 64, num_classes=num_classes, memory_efficient=memory_efficient)


def densenet_bc(depth=100, growth_rate=12, num_classes=10, memory_efficient=False):
    n = (depth - 4) // 6
    return DenseNet(growth_rate, (n, n, n), 2 * growth_rate, bn_size=4, num_classes=num_classes,
                    memory_efficient=memory_efficient, compression=0.5, stem="cifar")


def _check():
    """Parameter counts (facts sheet) and forward/backward parity with numpy_densenet on the same weights."""
    import numpy as np

    from numpy_densenet.zoo import densenet121 as np_d121
    from numpy_densenet.zoo import densenet_bc as np_bc

    assert sum(p.numel() for p in densenet_bc(100, 12).parameters()) == 769_162
    assert sum(p.numel() for p in densenet121().parameters()) == 7_978_856
    print("parameter counts: BC-100-12 769,162 and densenet121 7,978,856 (as torchvision): ok")
    for name, np_model, t_model, shape in (
            ("densenet_bc(40,12)", np_bc(40, 12, seed=0, dtype=np.float64), densenet_bc(40, 12), (4, 3, 32, 32)),
            ("densenet121", np_d121(seed=0, dtype=np.float64), densenet121(), (2, 3, 64, 64))):
        # Taken before any training forward: see the README (BatchNorm buffers leave state_dict after one).
        state = {k: torch.from_numpy(np.asarray(v).copy()) for k, v in np_model.state_dict().items()}
        for eff in (False, True):
            t = t_model.double()
            for m in t.modules():
                if isinstance(m, _DenseLayer):
                    m.memory_efficient = eff
            t.load_state_dict(state)
            x = np.random.default_rng(1).standard_normal(shape)
            xt = torch.from_numpy(x).requires_grad_(True)
            yt = t(xt)
            y = np_model.forward(x)
            g = np.random.default_rng(2).standard_normal(y.shape)
            yt.backward(torch.from_numpy(g))
            dx = np_model.backward(g)
            err_y = float(np.abs(yt.detach().numpy() - y).max())
            err_dx = float(np.abs(xt.grad.numpy() - dx).max() / np.abs(dx).max())
            print(f"{name} memory_efficient={eff}: max|y - y_torch| = {err_y:.2e}, "
                  f"max|dx - dx_torch| / max|dx| = {err_dx:.2e}")
            assert err_y < 1e-8 and err_dx < 1e-8


if __name__ == "__main__":
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _check()
