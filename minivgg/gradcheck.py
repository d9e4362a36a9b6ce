"""Gradient checking: hand-written backward passes against centred finite differences.

For a layer f and a fixed random upstream gradient g, the scalar L(x) = sum(f(x) * g) has

    dL/dx = backward(g)                           (what the layer computes)
    dL/dx_i ~ (L(x + h e_i) - L(x - h e_i)) / 2h  (what we measure; error O(h^2))

Both are compared, tensor by tensor, with the relative error

    err = max_i |a_i - b_i| / max(1e-8, max_i (|a_i| + |b_i|))

which is scale-free and does not blow up on entries that are zero in both. Everything
runs in float64: in float32 the rounding of L alone (~1e-7 relative) swamps the test.
A random upstream gradient (not all ones) makes sure every output entry matters.
"""

from __future__ import annotations

import numpy as np

from minivgg.backend import asnumpy, get_array_module


def relative_error(analytic, numeric) -> float:
    a, b = np.asarray(analytic, dtype=np.float64), np.asarray(numeric, dtype=np.float64)
    scale = max(1e-8, float(np.max(np.abs(a) + np.abs(b), initial=0.0)))
    return float(np.max(np.abs(a - b), initial=0.0)) / scale


def _sample(size: int, max_entries: int, rng, grad=None) -> np.ndarray:
    """Every flat index of a small tensor; of a large one, the entries with the largest
    analytic gradients (half of ``max_entries``) and a random sample of the others.

    The largest entries make "this gradient vanishes" mean the whole tensor's does, not
    that a random few entries hit dead ReLUs or dropped units; the random ones still catch
    a backward that puts zeros where the true gradient is not.
    """
    if size <= max_entries:
        return np.arange(size)
    if grad is None:
        return np.sort(rng.choice(size, max_entries, replace=False))
    top = np.argsort(-np.abs(np.asarray(grad).reshape(-1)), kind="stable")[:max_entries // 2]
    rest = np.setdiff1d(np.arange(size), top)
    return np.sort(np.concatenate([top, rng.choice(rest, max_entries - len(top),
                                                   replace=False)]))


def _freeze_dropout(model, frozen: bool) -> None:
    """Make dropout layers reuse their mask so L(x) is one fixed function."""
    from minivgg.layers import Dropout
    from minivgg.models import Sequential
    layers = [l for _, l in model.named_layers()] if isinstance(model, Sequential) else [model]
    for layer in layers:
        if isinstance(layer, Dropout):
            layer.freeze_mask(frozen)


def _copy_keeping_layout(x):
    """A copy of ``x`` with its axes in the same memory order (NumPy and CuPy: order="K").

    The layers' fast paths depend on the layout (an NCHW view of NHWC memory goes through
    the kernels without a copy), so a check of "the NHWC case" must hand the layer an NHWC
    view; a C-order copy would quietly test the NCHW case instead.
    """
    return x.copy(order="K")


def upstream_rng(seed: int) -> np.random.Generator:
    """The generator of the random upstream gradient: seeded, but never the same stream as
    ``default_rng(seed)``. A caller who draws x from ``default_rng(0)`` must not get g == x:
    for batch norm, sum(BN(x) * x) has exactly zero gradient, and the check would compare
    rounding noise."""
    return np.random.default_rng([seed, 0x6752414E])


def compute_gradients(model, x, loss_fn=None, *, training=True, eps=1e-6, max_entries=100,
                      seed=0, check_input=True):
    """Analytic and numeric gradients of L = sum(model(x) * g), or of ``loss_fn`` if given.

    ``loss_fn(y) -> (value, dy)`` replaces the random upstream gradient (used for whole
    models with a real loss). Returns {name: (indices, analytic, numeric)}.
    """
    xp = get_array_module(x)
    if x.dtype != np.float64:
        raise TypeError(f"gradcheck: expected a float64 input, got {x.dtype}; finite "
                        "differences in float32 are too coarse (see lessons/08)")
    rng, pick = upstream_rng(seed), np.random.default_rng(seed)   # g; sampled entries
    x = _copy_keeping_layout(x)             # an NHWC view stays one: the layer sees it
    y = model.forward(x, training)
    _freeze_dropout(model, True)
    try:
        if loss_fn is None:
            g = xp.asarray(rng.standard_normal(y.shape))
            if g.shape == x.shape and bool(xp.allclose(g, x)):   # never the caller's input
                g = xp.asarray(rng.standard_normal(y.shape))

            def objective(out):
                return float((out * g).sum())
            upstream = g
        else:
            def objective(out):
                return loss_fn(out)[0]
            upstream = loss_fn(y)[1]
        g_copy = upstream.copy()
        dx = model.backward(upstream)
        if not bool((upstream == g_copy).all()):
            raise AssertionError(f"{type(model).__name__}.backward modified the upstream "
                                 "gradient it was given")
        tensors = model.named_parameters()
        analytic = {k: asnumpy(p.grad).copy() for k, p in tensors.items()}

        def loss_at() -> float:
            return objective(model.forward(x, training))

        results = {}
        targets = [("input", x, asnumpy(dx))] if check_input else []
        targets += [(k, p.data, analytic[k]) for k, p in tensors.items()]
        for name, arr, grad in targets:
            idx = _sample(arr.size, max_entries, pick, grad)
            numeric = np.empty(len(idx))
            for t, i in enumerate(idx):
                at = np.unravel_index(int(i), arr.shape)  # in place, whatever the strides
                old = float(arr[at])
                arr[at] = old + eps
                plus = loss_at()
                arr[at] = old - eps
                minus = loss_at()
                arr[at] = old
                numeric[t] = (plus - minus) / (2 * eps)
            results[name] = (idx, grad.reshape(-1)[idx], numeric)
        return results
    finally:
        _freeze_dropout(model, False)


class GradientErrors(dict):
    """{tensor name: relative error}, as returned by check_layer and check_model.

    ``zero`` names the tensors left out of the dict because their gradient vanished: every
    sampled entry, analytic and numeric, below ``zero_atol`` in magnitude. A relative error
    means nothing there (it compares rounding noise with nothing), and such tensors exist
    for a reason: in front of batch normalisation in training mode a convolution's bias has
    exactly zero gradient, because the batch mean subtracts it again.
    """

    zero: tuple[str, ...] = ()


def _assert_close(results, tol, what, zero_atol=0.0) -> GradientErrors:
    errors, zero = GradientErrors(), []
    for name, (idx, analytic, numeric) in results.items():
        if max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0)) < zero_atol:
            zero.append(name)
            continue
        err = relative_error(analytic, numeric)
        if err > tol:
            diff = np.abs(analytic - numeric)
            k = int(np.argmax(diff))
            raise AssertionError(
                f"gradient check failed for {what}: tensor {name!r}, flat index {int(idx[k])}: "
                f"analytic {analytic[k]:.10g}, numeric {numeric[k]:.10g}; "
                f"relative error {err:.3g} > {tol:g}")
        errors[name] = err
    errors.zero = tuple(zero)
    return errors


def check_layer(layer, x, *, training=True, eps=1e-6, tol=1e-7, max_entries=100, seed=0,
                check_input=True, zero_atol=0.0) -> GradientErrors:
    """Check a layer's backward against finite differences; return the error per tensor.

    Raises AssertionError naming the tensor, the flat index and the worst error when any
    tensor's relative error exceeds ``tol``. ``zero_atol`` > 0 lets a tensor whose gradient
    vanishes pass (see GradientErrors); by default none is exempt.
    """
    results = compute_gradients(layer, x, training=training, eps=eps, max_entries=max_entries,
                                seed=seed, check_input=check_input)
    return _assert_close(results, tol, type(layer).__name__, zero_atol)


def check_model(model, x, labels=None, *, training=True, eps=1e-6, tol=1e-6, max_entries=20,
                seed=0, check_input=True, zero_atol=1e-7) -> GradientErrors:
    """Check a whole model, end to end, with softmax cross-entropy when labels are given.

    Samples ``max_entries`` entries from *every* parameter tensor. A tensor whose sampled
    gradients, analytic and numeric, all stay below ``zero_atol`` passes as vanishing and is
    listed in the result's ``zero`` (a convolution bias in front of batch norm). With a loss
    of order 1 the finite-difference noise is ~1e-10 through im2col layers and up to ~1e-8
    through F(4x4) Winograd layers (their float64 transforms round ~100x more, coefficients
    up to 8 in Bᵀ and Aᵀ), so 1e-7 separates noise from signal.
    """
    loss_fn = None
    if labels is not None:
        from minivgg.losses import SoftmaxCrossEntropy
        criterion = SoftmaxCrossEntropy()

        def loss_fn(out):
            value = criterion.forward(out, labels)
            return value, criterion.backward()
    results = compute_gradients(model, x, loss_fn, training=training, eps=eps,
                                max_entries=max_entries, seed=seed, check_input=check_input)
    return _assert_close(results, tol, type(model).__name__, zero_atol)
