"""Stochastic gradient descent and learning-rate schedules, matching ``torch.optim``.

* :class:`SGD` applies exactly ``torch.optim.SGD``'s update (momentum, dampening, Nesterov, weight decay)
  in place on each ``Parameter.data``, in the parameter's own dtype.
* :class:`MultiStepLR` and :class:`CosineAnnealingLR` set ``optimizer.lr`` once per epoch to the
  closed-form values of their ``torch.optim.lr_scheduler`` namesakes; :func:`paper_schedule` is the
  DenseNet paper's recipe.

Every ``state_dict()`` here is a flat dict of plain ndarrays, so it can be written with ``np.savez`` and
read back with ``np.load(..., allow_pickle=False)``.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping

import numpy as np

__all__ = ["SGD", "MultiStepLR", "CosineAnnealingLR", "paper_schedule"]

_BUFFER_PREFIX = "momentum_buffer."


def _nonnegative(name, value):
    """Return ``float(value)``, raising a ValueError naming ``name`` unless it is a finite number >= 0."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}") from None
    if not (0.0 <= x < math.inf):
        raise ValueError(f"Invalid {name}: {value!r}; expected a finite number >= 0")
    return x


def _integer(name, value, minimum=0):
    """Return ``int(value)``, raising a ValueError naming ``name`` unless it is an integer >= ``minimum``."""
    v = np.asarray(value)
    if v.shape != () or v.dtype.kind not in "iuf" or not float(v).is_integer() or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(v)


def _check_keys(owner, given, required, optional=()):
    """Raise one ValueError listing every missing and unexpected key of a state dict."""
    missing = [k for k in required if k not in given]
    unexpected = [k for k in given if k not in required and k not in optional]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if problems:
        raise ValueError(f"Error(s) in loading state_dict for {owner}: " + " | ".join(problems))


def _scalar(state, key, owner):
    """``state[key]`` as a Python scalar, or a ValueError if it is not a single value."""
    value = np.asarray(state[key])
    if value.size != 1:
        raise ValueError(f"Error in loading state_dict for {owner}: {key} must be a scalar, "
                         f"got an array of shape {value.shape}")
    return value.reshape(()).item()


class SGD:
    """Stochastic gradient descent with momentum, exactly as ``torch.optim.SGD``.

    For each parameter ``p`` with gradient ``g``, one :meth:`step` does::

        d_p = g + weight_decay * p
        buf = d_p                                      # first step
        buf = momentum * buf + (1 - dampening) * d_p   # later steps
        d_p = d_p + momentum * buf if nesterov else buf
        p  -= lr * d_p

    (the momentum lines only when ``momentum != 0``). ``p.data`` is updated in place and keeps its dtype;
    ``p.grad`` is only read.

    Parameters
    ----------
    params : iterable
        Parameters (anything with ``.data`` and ``.grad`` arrays), or ``(name, Parameter)`` pairs as
        yielded by ``Module.named_parameters()``, or a ``{name: Parameter}`` mapping. Unnamed parameters
        are called ``"0"``, ``"1"``, ...; names key the momentum buffers in :meth:`state_dict`.
    lr : float
        Learning rate, >= 0. The ``lr`` attribute may be changed between steps (schedulers do).
    momentum : float, default 0
        Momentum factor, >= 0.
    dampening : float, default 0
        Dampening for momentum.
    weight_decay : float, default 0
        L2 penalty, >= 0.
    nesterov : bool, default False
        Nesterov momentum; requires ``momentum > 0`` and ``dampening == 0``.

    Attributes
    ----------
    names : list of str
        Parameter names, in update order.
    step_count : int
        Number of :meth:`step` calls so far.

    Examples
    --------
    >>> opt = SGD(model.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    >>> model.zero_grad(); loss_backward(); opt.step()
    """

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        self.lr = lr
        self._momentum, self._dampening, self._weight_decay, self._nesterov = self._validate(
            momentum, dampening, weight_decay, nesterov)
        self.names, self.params = self._collect(params)
        self._buffers = {}
        self.step_count = 0

    # -- construction helpers -------------------------------------------------------------------------
    @staticmethod
    def _validate(momentum, dampening, weight_decay, nesterov):
        momentum = _nonnegative("momentum", momentum)
        try:
            dampening = float(dampening)
        except (TypeError, ValueError):
            raise ValueError(f"dampening must be a number, got {dampening!r}") from None
        if not math.isfinite(dampening):
            raise ValueError(f"Invalid dampening: {dampening!r}; expected a finite number")
        weight_decay = _nonnegative("weight_decay", weight_decay)
        nesterov = bool(nesterov)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"Nesterov momentum requires momentum > 0 and dampening = 0, "
                             f"got momentum={momentum}, dampening={dampening}")
        return momentum, dampening, weight_decay, nesterov

    @staticmethod
    def _collect(params):
        items = list(params.items()) if isinstance(params, Mapping) else list(params)
        if not items:
            raise ValueError("SGD got an empty parameter list")
        named = [isinstance(it, tuple) and len(it) == 2 and isinstance(it[0], str) for it in items]
        if any(named) and not all(named):
            raise ValueError("params must be all Parameters or all (name, Parameter) pairs, not a mix")
        if all(named):
            names, ps = [n for n, _ in items], [p for _, p in items]
        else:
            names, ps = [str(i) for i in range(len(items))], items
        for name, p in zip(names, ps):
            if not (isinstance(getattr(p, "data", None), np.ndarray)
                    and isinstance(getattr(p, "grad", None), np.ndarray)):
                raise TypeError(f"parameter {name!r} must have ndarray .data and .grad, "
                                f"got {type(p).__name__}")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names: {sorted({n for n in names if names.count(n) > 1})}")
        if len({id(p) for p in ps}) != len(ps):
            raise ValueError("some parameters appear more than once in params")
        return names, ps

    # -- hyper-parameters -----------------------------------------------------------------------------
    @property
    def lr(self):
        """Learning rate (a float >= 0); settable."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _nonnegative("lr", value)

    momentum = property(lambda self: self._momentum, doc="Momentum factor (read-only).")
    dampening = property(lambda self: self._dampening, doc="Momentum dampening (read-only).")
    weight_decay = property(lambda self: self._weight_decay, doc="L2 penalty (read-only).")
    nesterov = property(lambda self: self._nesterov, doc="Whether Nesterov momentum is used (read-only).")

    def __repr__(self):
        return (f"SGD({len(self.params)} parameters, lr={self.lr}, momentum={self.momentum}, "
                f"dampening={self.dampening}, weight_decay={self.weight_decay}, nesterov={self.nesterov})")

    # -- the update -----------------------------------------------------------------------------------
    def zero_grad(self):
        """Set every parameter's ``.grad`` to zero, in place."""
        for p in self.params:
            p.grad[...] = 0

    def step(self):
        """Apply one update to every parameter, in place, from its current ``.grad``."""
        for name, p in zip(self.names, self.params):  # check all before changing any
            if p.grad.dtype != p.data.dtype or p.grad.shape != p.data.shape:
                raise TypeError(f"parameter {name!r}: grad is {p.grad.dtype}{p.grad.shape} but data is "
                                f"{p.data.dtype}{p.data.shape}")
        lr, mom, damp, wd = self.lr, self.momentum, self.dampening, self.weight_decay
        for name, p in zip(self.names, self.params):
            d_p, owned = p.grad, False          # ``owned``: d_p is a scratch array we may overwrite
            if wd != 0:
                d_p = np.multiply(p.data, wd)   # Python-float scalars keep the array's dtype
                d_p += p.grad
                owned = True
            if mom != 0:
                buf = self._buffers.get(name)
                if buf is None:
                    buf = self._buffers[name] = d_p.copy()
                else:
                    buf *= mom
                    buf += d_p if damp == 0 else (1 - damp) * d_p
                if self.nesterov:
                    nest = np.multiply(buf, mom)
                    nest += d_p
                    d_p, owned = nest, True
                else:
                    d_p, owned = buf, False
            delta = np.multiply(d_p, lr, out=d_p if owned else None)
            p.data -= delta
        self.step_count += 1

    # -- checkpointing --------------------------------------------------------------------------------
    def state_dict(self):
        """The optimizer's state as a flat dict of ndarray copies (``np.savez``-able, no pickle).

        Keys: ``lr``, ``momentum``, ``dampening``, ``weight_decay``, ``nesterov``, ``step`` and one
        ``momentum_buffer.<name>`` per parameter once momentum buffers exist.
        """
        out = {"lr": np.array(self.lr), "momentum": np.array(self.momentum),
               "dampening": np.array(self.dampening), "weight_decay": np.array(self.weight_decay),
               "nesterov": np.array(self.nesterov), "step": np.array(self.step_count, dtype=np.int64)}
        for name in self.names:
            if name in self._buffers:
                out[_BUFFER_PREFIX + name] = self._buffers[name].copy()
        return out

    def load_state_dict(self, state_dict):
        """Restore a :meth:`state_dict` exactly, so that training continues bit for bit.

        Raises
        ------
        ValueError
            Listing every missing or unexpected key and every buffer whose shape differs from its
            parameter's, or if a hyper-parameter is invalid. Nothing is changed when it raises.
        """
        owner = type(self).__name__
        given = {str(k): v for k, v in state_dict.items()}
        scalars = ["lr", "momentum", "dampening", "weight_decay", "nesterov", "step"]
        _check_keys(owner, given, scalars, optional=[_BUFFER_PREFIX + n for n in self.names])
        lr = _nonnegative("lr", _scalar(given, "lr", owner))
        hyper = self._validate(*(_scalar(given, k, owner)
                                 for k in ("momentum", "dampening", "weight_decay", "nesterov")))
        step = _integer("step", _scalar(given, "step", owner))
        needs_buffers = hyper[0] != 0 and step > 0
        if needs_buffers:
            _check_keys(owner, given, scalars + [_BUFFER_PREFIX + n for n in self.names])
        else:
            _check_keys(owner, given, scalars)
        buffers, mismatched = {}, []
        for name, p in zip(self.names, self.params):
            if needs_buffers:
                buf = np.asarray(given[_BUFFER_PREFIX + name])
                if buf.shape != p.data.shape:
                    mismatched.append(f"{_BUFFER_PREFIX}{name}: state_dict has shape {buf.shape}, "
                                      f"parameter has shape {p.data.shape}")
                buffers[name] = np.array(buf, dtype=p.data.dtype, copy=True)
        if mismatched:
            raise ValueError(f"Error(s) in loading state_dict for {owner}: size mismatch for "
                             + "; ".join(mismatched))
        self.lr = lr
        self._momentum, self._dampening, self._weight_decay, self._nesterov = hyper
        self.step_count = step
        self._buffers = buffers


class _EpochScheduler:
    """Base of the epoch-wise schedules: sets ``optimizer.lr = lr_at(last_epoch)``.

    Like torch, construction counts as epoch 0: it records ``base_lr = optimizer.lr`` and sets the
    epoch-0 rate. Call :meth:`step` once at the end of every epoch.
    """

    _hyper = ()  # names of the subclass's hyper-parameters stored in state_dict

    def __init__(self, optimizer):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"optimizer must have an lr attribute, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0
        self.optimizer.lr = self.lr_at(0)

    def lr_at(self, epoch):  # pragma: no cover - abstract
        """The learning rate for ``epoch`` (a pure function of the epoch and the hyper-parameters)."""
        raise NotImplementedError

    def step(self):
        """Advance one epoch and set the optimizer's learning rate for it."""
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def get_last_lr(self):
        """The learning rate of the current epoch ``last_epoch`` (a float)."""
        return self.lr_at(self.last_epoch)

    def state_dict(self):
        """``base_lr``, ``last_epoch`` and the hyper-parameters, as ndarrays (``np.savez``-able)."""
        out = {"base_lr": np.array(self.base_lr), "last_epoch": np.array(self.last_epoch, dtype=np.int64)}
        for key in self._hyper:
            out[key] = np.array(getattr(self, key))
        return out

    def load_state_dict(self, state_dict):
        """Restore a :meth:`state_dict` and set ``optimizer.lr`` to the restored epoch's rate.

        Raises a ValueError listing missing or unexpected keys; nothing changes when it raises.
        """
        owner = type(self).__name__
        given = {str(k): v for k, v in state_dict.items()}
        _check_keys(owner, given, ["base_lr", "last_epoch", *self._hyper])
        base_lr = _nonnegative("base_lr", _scalar(given, "base_lr", owner))
        last_epoch = _integer("last_epoch", _scalar(given, "last_epoch", owner))
        self._set_hyper(given)  # validates before assigning
        self.base_lr, self.last_epoch = base_lr, last_epoch
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def _set_hyper(self, given):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        hyper = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hyper)
        return f"{type(self).__name__}({hyper}, base_lr={self.base_lr}, last_epoch={self.last_epoch})"


class MultiStepLR(_EpochScheduler):
    """Multiply the learning rate by ``gamma`` at each milestone epoch, like torch's ``MultiStepLR``.

    ``lr_at(epoch) = base_lr * gamma ** (number of milestones <= epoch)``; a milestone listed twice
    counts twice.

    Parameters
    ----------
    optimizer : SGD
        Any object with a settable ``lr``.
    milestones : iterable of int
        Epochs (>= 0) at which to decay; any order.
    gamma : float, default 0.1
        Multiplicative decay factor.
    """

    _hyper = ("milestones", "gamma")

    def __init__(self, optimizer, milestones, gamma=0.1):
        self._set_hyper({"milestones": list(milestones), "gamma": gamma})
        super().__init__(optimizer)

    def _set_hyper(self, given):
        milestones = sorted(_integer("milestone", m) for m in np.ravel(given["milestones"]))
        self.gamma = _nonnegative("gamma", np.asarray(given["gamma"]).item())
        self.milestones = milestones

    def lr_at(self, epoch):
        """``base_lr * gamma ** bisect_right(milestones, epoch)``."""
        return self.base_lr * self.gamma ** bisect_right(self.milestones, _integer("epoch", epoch))


class CosineAnnealingLR(_EpochScheduler):
    """Cosine annealing from ``base_lr`` to ``eta_min`` over ``T_max`` epochs, like torch's.

    ``lr_at(t) = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``; past ``T_max`` the
    cosine continues (rising again), as in torch.

    Parameters
    ----------
    optimizer : SGD
        Any object with a settable ``lr``.
    T_max : int
        Number of epochs of the half cosine period, > 0.
    eta_min : float, default 0
        Minimum learning rate, >= 0.
    """

    _hyper = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self._set_hyper({"T_max": T_max, "eta_min": eta_min})
        super().__init__(optimizer)

    def _set_hyper(self, given):
        T_max = _integer("T_max", given["T_max"], minimum=1)
        self.eta_min = _nonnegative("eta_min", np.asarray(given["eta_min"]).item())
        self.T_max = T_max

    def lr_at(self, epoch):
        """``eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``."""
        epoch = _integer("epoch", epoch)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


def paper_schedule(optimizer, epochs):
    """The DenseNet paper's schedule: divide the rate by 10 at 50% and 75% of ``epochs``.

    Returns ``MultiStepLR(optimizer, [int(0.5 * epochs), int(0.75 * epochs)], gamma=0.1)``, leaving out
    milestones at epoch 0 (a run of one epoch trains at the initial rate, not at a hundredth of it).
    """
    epochs = _integer("epochs", epochs, minimum=1)
    milestones = [m for m in (int(0.5 * epochs), int(0.75 * epochs)) if m >= 1]
    return MultiStepLR(optimizer, milestones, gamma=0.1)
