"""Counter-based random numbers: each draw a pure function of a key and a position.

A ``numpy.random.Generator`` is a state machine: draw n numbers and the state moves on, so
reproducing a mask means replaying every draw before it, and its state lives on the host.
A counter-based generator has no state to replay. The i-th number of a stream is

    z_i   = key + (i + 1) * GAMMA                  (mod 2^64),  GAMMA = 0x9E3779B97F4A7C15
    out_i = mix64(z_i)

    mix64(z):  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
               z = (z ^ (z >> 27)) * 0x94D049BB133111EB
               z =  z ^ (z >> 31)                        (all in uint64, wrapping)

which is SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014; the finaliser is Stafford's "Mix13"): the i-th output of
SplitMix64 seeded with ``key``, computed directly from i. It passes BigCrush. Every
operation is an integer shift, xor, add or multiply, so NumPy on the CPU and CuPy on the
GPU compute the *same integers*, and the numbers below are the same bits on both.

The key of a stream folds its parts (seed, stream, epoch, step, draw...) through mix64 on
the host, ``key = mix64(... mix64(mix64(p0) + p1) ...)``: nearby keys (step 7, step 8) give
unrelated streams. Two streams of n numbers overlap only if their keys differ by j * GAMMA
with |j| < n: with keys that behave like random 64-bit numbers, a chance of about
n / 2^63 per pair of streams.

From the 64 random bits of each out_i:

    uniform float32 in [0, 1):  (out >> 40) * 2^-24     (exact: 24 bits into a 24-bit mantissa)
    uniform float64 in [0, 1):  (out >> 11) * 2^-53
    integer in [low, high):     low + ((out >> 32) * (high - low)) >> 32   (Lemire's multiply-
                                shift; bias below (high - low) / 2^32, for ranges below 2^32)
    Bernoulli keep, P = 1 - p:  (out >> 40) >= round(p * 2^24)             (integers only)
    normal:                     Box-Muller from two uniforms (the same bits on both devices;
                                the logarithm and cosine may differ in the last place)

``KeyedRandom(seed).at(epoch, step)`` is what training uses: a generator whose draws are
keyed by (seed, epoch, step, the how-manyth draw at this position). It offers the methods
of ``numpy.random.Generator`` that the transforms and dropout call (``random``,
``integers``, ``normal``), plus ``keep_mask``, each with an ``xp`` argument: the array
module to compute in (NumPy by default, CuPy for GPU arrays).
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15           # 2^64 / golden ratio, odd
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def mix64_int(z: int) -> int:
    """SplitMix64's finaliser on one Python int (the host side: keys)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def derive_key(*parts: int) -> int:
    """One 64-bit key from non-negative integer parts, each folded in through mix64."""
    key = 0
    for part in parts:
        if not isinstance(part, (int, np.integer)) or isinstance(part, bool) or part < 0:
            raise ValueError(f"derive_key: parts must be non-negative integers; got {part!r}")
        key = mix64_int(key + GAMMA + (int(part) & MASK64))
    return key


def random_bits(key: int, n: int, xp=np):
    """The first ``n`` outputs of SplitMix64 seeded with ``key``: uint64 (n,), in ``xp``."""
    z = xp.arange(1, n + 1, dtype=xp.uint64)
    z *= np.uint64(GAMMA)
    z += np.uint64(key & MASK64)
    z ^= z >> np.uint64(30)
    z *= np.uint64(MIX1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(MIX2)
    z ^= z >> np.uint64(31)
    return z


def _size(shape) -> tuple[tuple, int]:
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    return shape, int(np.prod(shape, dtype=np.int64))


def uniform(key: int, shape, xp=np, dtype=np.float64):
    """Uniform numbers in [0, 1) of ``dtype`` (float32: 24 random bits; float64: 53)."""
    shape, n = _size(shape)
    bits = random_bits(key, n, xp)
    if np.dtype(dtype) == np.float32:
        out = (bits >> np.uint64(40)).astype(xp.float32) * np.float32(2.0 ** -24)
    elif np.dtype(dtype) == np.float64:
        out = (bits >> np.uint64(11)).astype(xp.float64) * (2.0 ** -53)
    else:
        raise TypeError(f"uniform: dtype must be float32 or float64; got {np.dtype(dtype)}")
    return out.reshape(shape)


def integers(key: int, low: int, high: int, shape, xp=np):
    """Integers in [low, high), int64; the range must be below 2^32."""
    span = int(high) - int(low)
    if not 0 < span < 1 << 32:
        raise ValueError(f"integers: need 0 < high - low < 2**32; got low={low}, high={high}")
    shape, n = _size(shape)
    bits = random_bits(key, n, xp) >> np.uint64(32)
    bits *= np.uint64(span)
    return ((bits >> np.uint64(32)).astype(xp.int64) + int(low)).reshape(shape)


def keep_mask(key: int, shape, p: float, xp=np):
    """Booleans that are True with probability 1 - round(p * 2^24) / 2^24 (dropout's keep)."""
    shape, n = _size(shape)
    threshold = np.uint64(round(float(p) * (1 << 24)))
    return ((random_bits(key, n, xp) >> np.uint64(40)) >= threshold).reshape(shape)


def normal(key: int, loc: float, scale: float, shape, xp=np):
    """Normal numbers (float64) by Box-Muller: sqrt(-2 ln u1) cos(2 pi u2), u1 in (0, 1]."""
    shape, n = _size(shape)
    bits = random_bits(key, 2 * n, xp) >> np.uint64(11)
    u1 = (bits[:n] + np.uint64(1)).astype(xp.float64) * (2.0 ** -53)
    u2 = bits[n:].astype(xp.float64) * (2.0 ** -53)
    z = xp.sqrt(-2.0 * xp.log(u1)) * xp.cos(2.0 * np.pi * u2)
    return (loc + scale * z).reshape(shape)


class KeyedRandom:
    """A counter-based generator: draws keyed by (seed, position..., draw number).

        rng = KeyedRandom(seed).at(epoch, step)   # a position; the draw count restarts
        rng.random(5)                             # key (seed, epoch, step, 0)
        rng.integers(0, 9, 5)                     # key (seed, epoch, step, 1)

    Jumping to a position reproduces its draws exactly, with no state to save but the seed:
    this is how a resumed run draws the same dropout masks and crops. Without ``at`` the
    position is empty and successive draws are keyed (seed, 0), (seed, 1), ...
    """

    def __init__(self, seed: int | None = None):
        if seed is None:                       # fresh entropy, like default_rng()
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
        derive_key(seed)                       # refuses negative or non-integer seeds
        self.seed = int(seed)
        self.position: tuple[int, ...] = ()
        self.draws = 0

    @classmethod
    def from_generator(cls, rng: np.random.Generator) -> KeyedRandom:
        """A keyed generator seeded from a NumPy Generator's SeedSequence, without drawing
        from it (the weights that generator initialises stay as they were)."""
        bits = rng.bit_generator
        seq = getattr(bits, "seed_seq", getattr(bits, "_seed_seq", None))
        if isinstance(seq, np.random.SeedSequence):
            return cls(int(seq.spawn(1)[0].generate_state(1, np.uint64)[0]))
        return cls(int(rng.integers(0, 1 << 63)))

    def at(self, *position: int) -> KeyedRandom:
        """Move to ``position`` (e.g. epoch, step); the next draw is its first."""
        self.position, self.draws = tuple(int(p) for p in position), 0
        return self

    def next_key(self) -> int:
        key = derive_key(self.seed, *self.position, self.draws)
        self.draws += 1
        return key

    # -- numpy.random.Generator's names, computed in the array module ``xp`` -------------
    def random(self, size=None, dtype=np.float64, xp=np):
        out = uniform(self.next_key(), () if size is None else size, xp, dtype)
        return float(out) if size is None else out

    def integers(self, low, high=None, size=None, xp=np):
        low, high = (0, low) if high is None else (low, high)
        out = integers(self.next_key(), low, high, () if size is None else size, xp)
        return int(out) if size is None else out

    def normal(self, loc=0.0, scale=1.0, size=None, xp=np):
        out = normal(self.next_key(), loc, scale, () if size is None else size, xp)
        return float(out) if size is None else out

    def keep_mask(self, shape, p: float, xp=np):
        """Dropout's mask: True (keep) with probability 1 - p, in the array module ``xp``."""
        return keep_mask(self.next_key(), shape, p, xp)

    # -- saving ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"kind": "keyed-splitmix64", "seed": self.seed,
                "position": list(self.position), "draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from ``state_dict()``. A NumPy bit-generator state (checkpoints
        written before this generator) gives a seed derived from it: deterministic, but
        not the masks the old generator would have drawn."""
        if not isinstance(state, dict) or state.get("kind") != "keyed-splitmix64":
            inner = state.get("state", {}) if isinstance(state, dict) else {}
            words = [v for v in (inner.values() if isinstance(inner, dict) else [])
                     if isinstance(v, int)]
            if not words:
                raise ValueError(f"KeyedRandom.load_state_dict: not a generator state: "
                                 f"{str(state)[:80]}")
            self.seed, self.position, self.draws = derive_key(*words), (), 0
            return
        self.seed = int(state["seed"]) & MASK64
        self.position = tuple(int(p) for p in state.get("position", ()))
        self.draws = int(state.get("draws", 0))

    def __getattr__(self, name):
        raise AttributeError(f"KeyedRandom has no {name!r}; transforms and layers may draw "
                             "with random(), integers(), normal() and keep_mask()")

    def __repr__(self):
        return f"KeyedRandom(seed={self.seed:#x}, position={self.position}, draws={self.draws})"
