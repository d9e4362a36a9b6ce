"""Gradient bookkeeping: whether forward passes keep what backward needs.

Two things are separate in minivgg, as in PyTorch:

- **the mode** of a layer, ``model.train()`` or ``model.eval()``: *how* it computes.
  In evaluation mode dropout is the identity and batch norm uses its running statistics.
- **gradient bookkeeping**: whether a forward pass keeps its cache so that ``backward``
  can run afterwards. On by default, in both modes -- saliency maps, Grad-CAM and
  adversarial examples take gradients through a network in evaluation mode. Inside
  ``with no_grad():`` forwards keep nothing, which is what plain inference wants (the
  caches of a VGG-16 at batch 64 are gigabytes).

    model.eval()
    with no_grad():
        logits = model(x)          # deterministic, no caches kept
"""

from __future__ import annotations

import contextlib
import threading

_state = threading.local()


def grad_enabled() -> bool:
    """Whether forward passes on this thread keep their caches for backward."""
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def no_grad():
    """Forward passes inside keep no caches; ``backward`` after them raises."""
    previous = grad_enabled()
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = previous
