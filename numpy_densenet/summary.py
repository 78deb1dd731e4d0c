"""A per-layer table of a DenseNet: output shapes, channel growth k0 + l*k, parameters."""
from __future__ import annotations

import numpy as np

from .model import DenseBlock, DenseNet


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
    h = np.zeros((model.in_channels, 1, image_size, image_size), dtype=model.dtype)     # (C, N, H, W)
    rows = []

    def add(name, what, h, module):
        params = sum(p.size for p in module.parameters())
        rows.append(dict(name=name, what=what, output=(h.shape[1], h.shape[0]) + h.shape[2:],
                         channels=h.shape[0], params=int(params)))

    try:
        for name, stage in model.features.named_children():
            if isinstance(stage, DenseBlock):
                buffer = np.empty((stage.num_output_features,) + h.shape[1:], dtype=h.dtype)
                buffer[:stage.offsets[1]] = h
                for i, layer in enumerate(stage.layers()):
                    start, stop = stage.offsets[i + 1], stage.offsets[i + 2]
                    buffer[start:stop] = layer.forward_cnhw(buffer[:start])
                    add(f"features.{name}.denselayer{i + 1}",
                        f"reads {start} = {stage.offsets[1]} + {i}*{stage.growth_rate} ch, adds {stop - start}",
                        buffer[:stop], layer)
                h = buffer
            else:
                h = stage.forward_cnhw(h)
                add(f"features.{name}", type(stage).__name__, h, stage)
        pooled = model.pool.forward_cnhw(model.relu(h))
        logits = model.classifier(pooled.reshape(pooled.shape[0], -1).T)
        rows.append(dict(name="relu + pool", what="ReLU, global average pool", output=(1, h.shape[0], 1, 1),
                         channels=h.shape[0], params=0))
        rows.append(dict(name="classifier", what="Linear", output=logits.shape, channels=logits.shape[1],
                         params=model.classifier.weight.size + model.classifier.bias.size))
    finally:
        model.train(was_training)
        for m in model.modules():
            m._clear_cache()
    return rows


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
