"""Optimizers: SGD (momentum, Nesterov, weight decay) and Adam, updating parameters in place.

An optimizer holds the parameters of a model and, after ``model.backward`` has filled every
``Parameter.grad``, ``step()`` moves each ``Parameter.data`` a little against its gradient.
The arrays are updated in place -- a model's layers keep their arrays -- with the array
module of the data, so the same code runs on NumPy and CuPy arrays.

SGD as PyTorch writes it (Sutskever et al., 2013), for one parameter w with gradient g:

    g  = g + wd * w              weight decay: the gradient of (wd / 2) * ||w||^2
    v  = mu * v + g              momentum: a running sum of past gradients
    w  = w - lr * v              (Nesterov: w = w - lr * (g + mu * v), a look-ahead)

The paper (Sect. 3.1) trained with mu = 0.9, wd = 5e-4, lr = 1e-2 divided by 10 when the
validation accuracy stopped improving. Caffe, which the paper used, folds lr into v
(v = mu * v - lr * g; w = w + v): the same steps while lr is constant, slightly different
right after lr changes. We follow PyTorch so that a run can be compared with one.

``decay_all=False`` (the default) exempts parameters whose ``decay`` flag is False -- biases
and batch-norm scales and shifts -- from weight decay: shrinking them towards zero does not
regularise anything.

``state_dict()`` returns host NumPy arrays (lr, step count, one buffer per parameter and
kind, keyed by parameter name), so a checkpoint restores an optimizer exactly.
"""

from __future__ import annotations

import math

import numpy as np

from minivgg.backend import asnumpy, check_device, device_of, get_array_module, to_device


def named_params(params) -> dict:
    """A model, a {name: Parameter} dict or a list of Parameters -> {name: Parameter}."""
    from minivgg.layers import Layer
    if isinstance(params, Layer):
        params = params.named_parameters()
    if isinstance(params, dict):
        return dict(params)
    return {str(i): p for i, p in enumerate(params)}


class Optimizer:
    """Base class: the parameters, the learning rate, per-parameter buffers, saving."""

    buffer_names: tuple[str, ...] = ()

    def __init__(self, params, lr: float, weight_decay: float = 0.0, decay_all: bool = False):
        self.params = named_params(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got no parameters to optimise")
        for key, value in (("lr", lr), ("weight_decay", weight_decay)):
            if not isinstance(value, (int, float, np.floating)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"{type(self).__name__}: {key} must be a finite number >= 0, "
                                 f"got {value!r}")
        self.lr, self.weight_decay, self.decay_all = float(lr), float(weight_decay), decay_all
        self.steps = 0
        # buffers[kind][name]: momentum, Adam moments..., allocated lazily on first step
        self.buffers: dict[str, dict] = {kind: {} for kind in self.buffer_names}
        self.scratch: dict = {}

    def decay_of(self, p) -> float:
        """The weight decay that applies to parameter ``p``."""
        return self.weight_decay if (self.decay_all or p.decay) else 0.0

    def buffer(self, kind: str, name: str, p):
        """The optimizer's ``kind`` state for parameter ``name`` (zeros on first use)."""
        buf = self.buffers[kind].get(name)
        if buf is None:
            buf = get_array_module(p.data).zeros_like(p.data)
        buf = self.buffers[kind][name] = self._matching(buf, name, p)
        return buf

    def _matching(self, buf, name: str, p):
        """``buf`` converted to ``p.data``'s dtype and device (a parameter may have been
        moved or cast since the buffer was made); a changed shape is refused."""
        if buf.shape != p.data.shape:
            raise ValueError(f"{type(self).__name__}: parameter {name} now has shape "
                             f"{tuple(p.data.shape)} but its optimizer state has "
                             f"{tuple(buf.shape)}; build a new optimizer for the new model")
        if device_of(buf) != device_of(p.data):
            buf = to_device(buf, device_of(p.data))
        return buf if buf.dtype == p.data.dtype else buf.astype(p.data.dtype)

    def _scratch(self, key: str, name: str, p):
        """A scratch array shaped like parameter ``name`` (reused from step to step)."""
        buf = self.scratch.get(key)
        if buf is None or buf.shape != p.data.shape or buf.dtype != p.data.dtype \
                or device_of(buf) != device_of(p.data):
            buf = self.scratch[key] = get_array_module(p.data).empty_like(p.data)
        return buf

    def to(self, device: str):
        """Move every state buffer to ``device`` ("cpu" or "gpu"), as the model's parameters."""
        device = check_device(device, f"{type(self).__name__}.to")
        for bufs in self.buffers.values():
            for name in bufs:
                bufs[name] = to_device(bufs[name], device)
        self.scratch = {}
        return self

    def gradient(self, name: str, p):
        """g + wd * w, written to a scratch array (the model's .grad is left as it was)."""
        wd = self.decay_of(p)
        if wd == 0.0:
            return p.grad
        xp = get_array_module(p.data)
        g = self._scratch(name, name, p)
        xp.multiply(p.data, p.data.dtype.type(wd), out=g)
        g += p.grad
        return g

    def step(self) -> None:
        self.steps += 1
        for name, p in self.params.items():
            if p.grad.shape != p.data.shape:
                raise ValueError(f"{type(self).__name__}.step: {name} has data "
                                 f"{p.data.shape} but grad {p.grad.shape}")
            self.update(name, p)

    def update(self, name: str, p) -> None:
        raise NotImplementedError

    # -- saving and loading ---------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        state = {"lr": np.array(self.lr), "steps": np.array(self.steps)}
        for kind, bufs in self.buffers.items():
            for name, buf in bufs.items():
                state[f"{kind}.{name}"] = asnumpy(buf).copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore lr, the step count and every buffer; fail on names this optimizer lacks.

        Everything is checked first: a state that does not fit changes nothing.
        """
        missing = [k for k in ("lr", "steps") if k not in state]
        if missing:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state has no "
                             f"{' and no '.join(missing)}; expected the dict state_dict() "
                             "returns")
        lr, steps = float(state["lr"]), int(state["steps"])
        if not math.isfinite(lr) or lr < 0 or steps < 0:
            raise ValueError(f"{type(self).__name__}.load_state_dict: lr {lr} and steps "
                             f"{steps} must be finite and >= 0")
        loaded = {kind: {} for kind in self.buffers}
        for key, value in state.items():
            if key in ("lr", "steps"):
                continue
            kind, _, name = key.partition(".")
            if kind not in self.buffers or name not in self.params:
                raise ValueError(f"{type(self).__name__}.load_state_dict: unexpected key "
                                 f"{key!r}; expected '<{'|'.join(self.buffer_names)}>.<name>' "
                                 "for a parameter of this model")
            p = self.params[name]
            if tuple(np.shape(value)) != tuple(p.data.shape):
                raise ValueError(f"{type(self).__name__}.load_state_dict: {key} has shape "
                                 f"{tuple(np.shape(value))}, expected {tuple(p.data.shape)}")
            if not np.isfinite(np.asarray(value)).all():
                raise ValueError(f"{type(self).__name__}.load_state_dict: {key} holds NaN "
                                 "or infinite values")
            xp = get_array_module(p.data)
            loaded[kind][name] = xp.asarray(value, dtype=p.data.dtype).copy()
        self.lr, self.steps, self.buffers, self.scratch = lr, steps, loaded, {}

    def __repr__(self):
        return f"{type(self).__name__}(lr={self.lr}, weight_decay={self.weight_decay})"


class SGD(Optimizer):
    """Stochastic gradient descent with (Nesterov) momentum and L2 weight decay.

    Per parameter, four in-place passes over memory and no temporary arrays:
    g' = g + wd*w (scratch), v = mu*v + g', w -= lr*v (via the scratch array).
    """

    buffer_names = ("momentum",)

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 5e-4, nesterov: bool = False, decay_all: bool = False):
        super().__init__(params, lr, weight_decay, decay_all)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1); got {momentum}")
        if nesterov and momentum == 0.0:
            raise ValueError("SGD: Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), nesterov

    def update(self, name, p):
        xp = get_array_module(p.data)
        w, g = p.data, self.gradient(name, p)
        lr, mu = w.dtype.type(self.lr), w.dtype.type(self.momentum)
        if self.momentum == 0.0:
            w -= lr * g
            return
        v = self.buffer("momentum", name, p)
        v *= mu
        v += g
        tmp = self._scratch(name + "#tmp", name, p)
        if self.nesterov:                        # w -= lr * (g + mu * v)
            xp.multiply(v, mu, out=tmp)
            tmp += g
            tmp *= lr
        else:                                    # w -= lr * v
            xp.multiply(v, lr, out=tmp)
        w -= tmp

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay}, decay_all={self.decay_all})")


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015): per-parameter step sizes from running gradient moments.

        m = b1 * m + (1 - b1) * g            first moment (mean)
        s = b2 * s + (1 - b2) * g^2          second moment (uncentred variance)
        w = w - lr * m_hat / (sqrt(s_hat) + eps),  m_hat = m / (1 - b1^t), s_hat = s / (1 - b2^t)

    ``weight_decay`` is L2 added to the gradient (PyTorch's Adam); ``decoupled=True`` shrinks
    the weights directly instead, w -= lr * wd * w (AdamW, Loshchilov & Hutter, 2019).
    """

    buffer_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False, decay_all: bool = False):
        super().__init__(params, lr, weight_decay, decay_all)
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0) or eps <= 0:
            raise ValueError(f"Adam: need betas in [0, 1) and eps > 0; got betas={betas}, "
                             f"eps={eps}")
        self.betas, self.eps, self.decoupled = (float(b1), float(b2)), float(eps), decoupled

    def update(self, name, p):
        xp = get_array_module(p.data)
        w = p.data
        dt = w.dtype.type
        b1, b2 = self.betas
        if self.decoupled:
            wd = self.decay_of(p)
            if wd:
                w *= dt(1.0 - self.lr * wd)
            g = p.grad
        else:
            g = self.gradient(name, p)
        m, s = self.buffer("exp_avg", name, p), self.buffer("exp_avg_sq", name, p)
        m *= dt(b1)
        m += dt(1 - b1) * g
        s *= dt(b2)
        s += dt(1 - b2) * (g * g)
        bias1 = 1.0 - b1 ** self.steps
        bias2_sqrt = math.sqrt(1.0 - b2 ** self.steps)
        denom = xp.sqrt(s)
        denom /= dt(bias2_sqrt)
        denom += dt(self.eps)
        w -= dt(self.lr / bias1) * (m / denom)

    def __repr__(self):
        return (f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay}, decoupled={self.decoupled})")

