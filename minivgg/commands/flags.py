"""The checks every option's value passes while the command line is parsed.

Each function here is an argparse ``type=``: it turns the text into a value or raises
ArgumentTypeError saying what was allowed, so a bad value stops the command at once with
one line -- ``minivgg train: argument --epochs: expected a whole number >= 1, got '0'`` --
and exit status 2, instead of a traceback ten minutes into a run.
"""

from __future__ import annotations

import argparse
import math


def _fail(expected: str, text: str):
    raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")


def whole(minimum: int):
    """A whole number >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            _fail(f"a whole number >= {minimum}", text)
        if value < minimum:
            _fail(f"a whole number >= {minimum}", text)
        return value
    parse.__name__ = f"whole number >= {minimum}"
    return parse


def number(low: float, high: float | None = None, *, low_open: bool = False):
    """A finite number >= ``low`` (> ``low`` with ``low_open``), and < ``high`` if given."""
    left = ">" if low_open else ">="
    allowed = (f"a finite number {left} {low:g}" if high is None else
               f"a number in {'(' if low_open else '['}{low:g}, {high:g})")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            _fail(allowed, text)
        if not math.isfinite(value) or value < low or (low_open and value == low) \
                or (high is not None and value >= high):
            _fail(allowed, text)
        return value
    parse.__name__ = allowed
    return parse


def input_size(text: str) -> int:
    """A side the five 2x2 max-poolings of a VGG divide: 32, 64, ..., 224, ..."""
    allowed = "a multiple of 32 (the five 2x2 max-poolings halve it five times), e.g. 32, 224"
    try:
        value = int(text)
    except ValueError:
        _fail(allowed, text)
    if value < 32 or value % 32:
        _fail(allowed, text)
    return value


def model_config(text: str) -> str:
    """A configuration of Table 1 by name, or a custom comma list such as 16,M,32,M."""
    from minivgg.models.config import resolve_config
    from minivgg.run import parse_model
    allowed = ("A, A-LRN, B, C, D, E, vgg11, vgg13, vgg16, vgg19, or a comma list of channel "
               "counts, M (max-pool) and LRN such as 16,M,32,M")
    try:
        resolve_config(parse_model(text))
    except (TypeError, ValueError):
        _fail(allowed, text)
    return text


POSITIVE = whole(1)
NON_NEGATIVE = whole(0)
FRACTION = number(0.0, 1.0)                 # [0, 1): dropout, momentum, --val-split
POSITIVE_NUMBER = number(0.0, low_open=True)
NON_NEGATIVE_NUMBER = number(0.0)
