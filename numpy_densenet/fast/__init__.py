"""The fast tier: everything that makes numpy_densenet train at PyTorch's CPU speed, kept apart from the plain
layers of :mod:`numpy_densenet.nn`, which are its specification.

Each fast layer subclasses the plain layer it speeds up (same parameters, initialisation, ``state_dict``
keys and results) and names it in its docstring; ``tests/test_fast_tier.py`` proves every pair equal
(output, input gradient and parameter gradients, to 16 eps sqrt(K) of their scale) on hypothesis-drawn
geometries. What the fast tier adds:

* channel-major layout, (C, N, H, W), inside the network (:mod:`.layout` holds the one NCHW adapter);
* the dense block's single buffer, whose slices are the concatenations (:mod:`.densenet`);
* 1x1 convolutions as one GEMM on the input as it lies, and the "shift" algorithm for 3x3 convolutions with
  fewer output than input channels (:mod:`.conv`);
* BatchNorm fused with the following ReLU, statistics computed once per feature map and shared by all its
  consumers, and the memory-efficient recomputation of Pleiss et al. (:mod:`.norm`, :mod:`.densenet`);
* the library's own threads for element-wise passes and split matrix products, and inference in pieces of
  the batch (:mod:`.threads`);
* the train step's large arrays kept from one step to the next instead of mapped afresh each time, and the
  backward pass computing its gradients over forward arrays it no longer needs (:mod:`.reuse`).

:class:`DenseNet` is the network built from these layers; ``numpy_densenet.DenseNet(..., fast=True)`` (the
default) builds it, ``fast=False`` the plain :class:`numpy_densenet.model.DenseNet` it subclasses.
"""
from .activation import ReLU, relu_into
from .conv import Conv2d
from .densenet import DenseBlock, DenseLayer, DenseNet, Transition
from .layout import ChannelMajor, Sequential, swap01
from .linear import Linear
from .norm import BatchNorm2d, BatchNormReLU2d
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .threads import get_num_threads, set_num_threads

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm2d", "BatchNormReLU2d", "ChannelMajor", "Conv2d", "DenseBlock",
           "DenseLayer", "DenseNet", "Linear", "MaxPool2d", "ReLU", "Sequential", "Transition", "get_num_threads",
           "relu_into", "set_num_threads", "swap01"]
