"""The plain tier: layers with hand-written backward passes, PyTorch names and semantics, NCHW throughout.

Every layer follows one protocol (see :mod:`numpy_densenet.nn.module`): ``y = layer(x)`` caches what
backward needs, ``dx = layer.backward(dy)`` returns the input gradient and adds into each ``param.grad``.
Each forward and backward here is the specification, written to be read: no threads, workspaces or ``out=``.
The fast versions live in :mod:`numpy_densenet.fast` and are tested equal to these.

Reading order: ``conv.py`` (im2col) -> ``norm.py`` (BatchNorm) -> ``concat.py`` (the split) ->
``numpy_densenet/model.py`` (the DenseNet built from them).
"""
from .activation import Dropout, ReLU
from .concat import Concat, channel_offsets, split_channels
from .conv import Conv2d, col2im, im2col
from .linear import Flatten, Linear
from .loss import CrossEntropyLoss
from .module import Module, Parameter, Sequential, is_grad_enabled, no_grad
from .norm import BatchNorm2d
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm2d", "Concat", "Conv2d", "CrossEntropyLoss", "Dropout",
           "Flatten", "Linear", "MaxPool2d", "Module", "Parameter", "ReLU", "Sequential", "channel_offsets",
           "col2im", "im2col", "is_grad_enabled", "no_grad", "split_channels"]
