"""The counter-based generator: SplitMix64's published outputs, determinism, statistics."""

from __future__ import annotations

import numpy as np
import pytest

from minivgg.keyed_random import (
    KeyedRandom,
    derive_key,
    integers,
    keep_mask,
    normal,
    random_bits,
    uniform,
)

# The first outputs of SplitMix64 seeded with 0 and with 1234567 (Vigna's splitmix64.c;
# the same values appear in the test vectors of many ports of it).
SPLITMIX64_SEED0 = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
SPLITMIX64_SEED1234567 = [6457827717110365317, 3203168211198807973, 9817491932198370423]


def test_random_bits_are_splitmix64():
    assert random_bits(0, 3).tolist() == SPLITMIX64_SEED0
    assert random_bits(1234567, 3).tolist() == SPLITMIX64_SEED1234567
    assert random_bits(0, 3).dtype == np.uint64


def test_the_ith_number_does_not_depend_on_how_many_are_drawn():
    np.testing.assert_array_equal(random_bits(99, 1000)[:10], random_bits(99, 10))
    np.testing.assert_array_equal(uniform(5, (4, 250), dtype=np.float32).ravel()[:7],
                                  uniform(5, 7, dtype=np.float32))


def test_same_key_same_numbers_other_key_other_numbers():
    a, b = KeyedRandom(3).at(1, 2), KeyedRandom(3).at(1, 2)
    np.testing.assert_array_equal(a.random(100), b.random(100))
    np.testing.assert_array_equal(a.integers(0, 7, 50), b.integers(0, 7, 50))
    c = KeyedRandom(3).at(1, 3)
    assert not np.array_equal(KeyedRandom(3).at(1, 2).random(100), c.random(100))
    assert not np.array_equal(KeyedRandom(4).at(1, 2).random(100),
                              KeyedRandom(3).at(1, 2).random(100))


def test_a_position_restarts_its_draws_and_jumping_back_reproduces_them():
    rng = KeyedRandom(11)
    first = [rng.at(0, 5).random(8), rng.random(8)]      # draws 0 and 1 at (0, 5)
    assert not np.array_equal(first[0], first[1])        # two draws: two streams
    rng.at(3, 0).random(8)                               # elsewhere
    again = [rng.at(0, 5).random(8), rng.random(8)]
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)


def test_derive_key_separates_parts_and_refuses_negative_ones():
    keys = {derive_key(1, 2), derive_key(2, 1), derive_key(1, 2, 0), derive_key(12),
            derive_key(1, 20), derive_key(0, 0)}
    assert len(keys) == 6
    with pytest.raises(ValueError, match="non-negative"):
        derive_key(1, -1)
    with pytest.raises(ValueError, match="non-negative"):
        KeyedRandom(-5)


def test_uniform_is_in_range_and_flat():
    for dtype in (np.float32, np.float64):
        u = uniform(derive_key(7), 200_000, dtype=dtype)
        assert u.dtype == dtype and u.min() >= 0.0 and u.max() < 1.0
        counts = np.bincount((u * 20).astype(int), minlength=20)
        chi2 = ((counts - 10_000) ** 2 / 10_000).sum()
        assert chi2 < 43.8                   # chi-square, 19 degrees of freedom, p = 0.001
        assert abs(u.mean() - 0.5) < 0.003 and abs(u.var() - 1 / 12) < 0.001


def test_every_bit_is_a_fair_coin():
    bits = random_bits(derive_key(8), 100_000)
    ones = np.array([((bits >> np.uint64(b)) & np.uint64(1)).sum() for b in range(64)])
    assert (np.abs(ones / 100_000 - 0.5) < 0.006).all()   # 3.8 sigma each


def test_neighbouring_keys_and_neighbouring_counters_are_uncorrelated():
    n = 100_000
    streams = [uniform(derive_key(0, 0, step), n) for step in range(4)]   # steps 0..3
    streams += [uniform(derive_key(1, 0, 0), n)]                          # another seed
    for i in range(len(streams)):
        for j in range(i + 1, len(streams)):
            r = np.corrcoef(streams[i], streams[j])[0, 1]
            assert abs(r) < 0.015, (i, j, r)         # sd of r is 1 / sqrt(n) = 0.0032
    u = streams[0]
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.015       # consecutive counters
    # and pairs of consecutive numbers fill the unit square evenly (no lattice)
    cells = np.bincount((u[:-1:2] * 8).astype(int) * 8 + (u[1::2] * 8).astype(int),
                        minlength=64)
    assert ((cells - n / 2 / 64) ** 2 / (n / 2 / 64)).sum() < 103.4   # chi2(63), p=0.001


def test_integers_cover_the_range_evenly():
    x = integers(derive_key(9), 3, 13, 100_000)
    assert x.dtype == np.int64 and x.min() == 3 and x.max() == 12
    counts = np.bincount(x - 3, minlength=10)
    assert ((counts - 10_000) ** 2 / 10_000).sum() < 27.9        # chi2(9), p = 0.001
    with pytest.raises(ValueError, match="high - low"):
        integers(1, 5, 5, 3)


def test_keep_mask_keeps_one_minus_p():
    for p in (0.0, 0.1, 0.5, 0.9):
        keep = keep_mask(derive_key(10), (400, 250), p)
        assert keep.dtype == bool and keep.shape == (400, 250)
        assert abs(keep.mean() - (1 - p)) < 0.005, p


def test_normal_has_the_moments_of_a_normal():
    z = normal(derive_key(12), 1.5, 2.0, 200_000)
    assert abs(z.mean() - 1.5) < 0.02 and abs(z.std() - 2.0) < 0.02
    t = (z - 1.5) / 2.0
    assert abs((t ** 3).mean()) < 0.03 and abs((t ** 4).mean() - 3.0) < 0.06
    assert np.isfinite(z).all()


def test_generator_methods_take_numpy_generator_arguments():
    rng = KeyedRandom(1)
    assert isinstance(rng.random(), float) and 0 <= rng.random() < 1
    assert rng.integers(0, 5, 3).shape == (3,) and 0 <= rng.integers(4) < 4
    assert rng.normal(0.0, 1.0, (2, 3)).shape == (2, 3)
    with pytest.raises(AttributeError, match="random\\(\\), integers\\(\\)"):
        rng.choice([1, 2])


def test_from_generator_does_not_draw_from_it_and_is_seeded_by_it():
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    ka = KeyedRandom.from_generator(a)
    assert a.random() == b.random()                  # a's stream unchanged
    assert ka.seed == KeyedRandom.from_generator(np.random.default_rng(5)).seed
    assert ka.seed != KeyedRandom.from_generator(np.random.default_rng(6)).seed
    second = KeyedRandom.from_generator(a)            # a second layer on the same generator
    assert second.seed != ka.seed


def test_state_round_trip_and_an_old_bit_generator_state():
    rng = KeyedRandom(21).at(4, 2)
    rng.random(3)
    clone = KeyedRandom(0)
    clone.load_state_dict(rng.state_dict())
    np.testing.assert_array_equal(clone.random(5), rng.random(5))
    old = np.random.default_rng(0).bit_generator.state        # what checkpoints held before
    x, y = KeyedRandom(0), KeyedRandom(1)
    x.load_state_dict(old)
    y.load_state_dict(old)
    assert x.seed == y.seed                                    # derived, deterministically
    with pytest.raises(ValueError, match="not a generator state"):
        x.load_state_dict({"kind": "something else"})


@pytest.mark.gpu
def test_cupy_draws_the_same_integers_and_floats():
    import cupy
    key = derive_key(3, 1, 4)
    np.testing.assert_array_equal(cupy.asnumpy(random_bits(key, 10_000, cupy)),
                                  random_bits(key, 10_000))
    np.testing.assert_array_equal(cupy.asnumpy(uniform(key, 999, cupy, np.float32)),
                                  uniform(key, 999, np, np.float32))
    np.testing.assert_array_equal(cupy.asnumpy(keep_mask(key, (30, 40), 0.3, cupy)),
                                  keep_mask(key, (30, 40), 0.3))
    np.testing.assert_array_equal(cupy.asnumpy(integers(key, 0, 9, 500, cupy)),
                                  integers(key, 0, 9, 500))
