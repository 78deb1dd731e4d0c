"""A per-layer table of a DenseNet: output shapes, channel growth k0 + l*k, parameters."""
from __future__ import annotations

import numpy as np

from ..model import DenseLayer, DenseNet
from ..nn import no_grad


def summary_rows(model: DenseNet, image_size=None):
    """Run one eval-mode image through ``model`` and list every stage.

    Returns
    -------
    list of dict
        Keys: name, what (a short description), output (N, C, H, W) with N = 1, channels, params.
    """
    if image_size is None:
        image_size = 224 if model.config["stem"] == "imagenet" else 32
    was_training = model.training
    model.eval()
    x = np.zeros((1, model.in_channels, image_size, image_size), dtype=model.dtype)
    rows = []
    try:
        with no_grad():
            for name, module, out in model.forward_stages(x):
                rows += _describe_stage(model, name, module, out, rows)
    finally:
        model.train(was_training)
    return rows


def _describe_stage(model, name, module, out, previous_rows):
    params = int(sum(p.size for p in module.parameters()))
    if name == "classifier":
        channels = previous_rows[-1]["channels"]
        return [dict(name="relu + pool", what="ReLU, global average pool", output=(1, channels, 1, 1),
                     channels=channels, params=0),
                dict(name=name, what="Linear", output=out.shape, channels=out.shape[1], params=params)]
    what = type(module).__name__
    if isinstance(module, DenseLayer):
        block = getattr(model.features, name.split(".")[1])
        i = int(name.rsplit("denselayer", 1)[1]) - 1
        k0, k = block.offsets[1], block.growth_rate
        what = f"reads {k0 + i * k} = {k0} + {i}*{k} ch, adds {k}"
    return [dict(name=name, what=what, output=out.shape, channels=out.shape[1], params=params)]


def format_summary(model, image_size=None):
    """The summary as an aligned text table with totals."""
    rows = summary_rows(model, image_size)
    head = ("layer", "what", "output shape", "channels", "params")
    body = [(r["name"], r["what"], str(tuple(r["output"])), str(r["channels"]), f"{r['params']:,}") for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for b in body:
        lines.append("  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))))
    total = model.num_parameters()
    assert total == sum(r["params"] for r in rows), "summary rows miss parameters"
    lines.append(f"total parameters: {total:,}")
    lines.append(f"buffers (BatchNorm running statistics): {sum(b.size for _, b in model.named_buffers()):,}")
    return "\n".join(lines)
