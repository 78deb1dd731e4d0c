"""ImageNet-1k: the 1000 class names and torchvision's evaluation preprocessing, as PyTorch Hub's DenseNet
example uses them (``Resize(256)``, ``CenterCrop(224)``, ``ToTensor()``, ``Normalize(mean, std)``).

``imagenet_classes.txt`` (next to this file) holds torchvision's ImageNet-1k names in class-index order.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGENET_PREPROCESS", "imagenet_classes"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: torchvision's ImageNet evaluation transforms (Resize(256), CenterCrop(224), ToTensor(), Normalize(...)).
IMAGENET_PREPROCESS = {"resize": 256, "crop": 224, "interpolation": "bilinear", "scale": 255.0,
                       "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}

CLASSES_FILE = Path(__file__).resolve().parent / "imagenet_classes.txt"


def imagenet_classes():
    """The 1000 ImageNet-1k class names, index = class id, as torchvision's weight metadata lists them."""
    names = CLASSES_FILE.read_text(encoding="utf-8").splitlines()
    if len(names) != 1000:
        raise RuntimeError(f"{CLASSES_FILE} should hold 1000 class names, one a line; it holds {len(names)}")
    return names
