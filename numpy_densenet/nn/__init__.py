"""Layers with hand-written backward passes, PyTorch names and semantics, NCHW at the public API.

Every layer follows one protocol (see :mod:`numpy_densenet.nn.module`): ``y = layer(x)`` caches what
backward needs, ``dx = layer.backward(dy)`` returns the input gradient and adds into each ``param.grad``.
"""
from .activation import Dropout, ReLU
from .concat import Concat, channel_offsets, split_channels
from .conv import Conv2d, col2im, im2col
from .linear import Flatten, Linear
from .loss import CrossEntropyLoss
from .module import Module, Parameter, Sequential, SpatialModule, is_grad_enabled, no_grad
from .norm import BatchNorm2d, BatchNormReLU2d
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .threads import get_num_threads, set_num_threads

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm2d", "BatchNormReLU2d", "Concat", "Conv2d",
           "CrossEntropyLoss", "Dropout", "Flatten", "Linear", "MaxPool2d", "Module", "Parameter", "ReLU",
           "Sequential", "SpatialModule", "channel_offsets", "col2im", "get_num_threads", "im2col",
           "is_grad_enabled", "no_grad", "set_num_threads", "split_channels"]
