"""The gossip duplicate filter: false-positive rate at capacity, two-generation
rotation by age and by fill, for the rbloom backend (default) and the
pybloom-live fallback."""

import os
import random

import pytest
from twisted.internet.task import Clock

from peernet import constants
from peernet.gossip.core import DuplicateFilter


def ids(rng, n):
    return [rng.randbytes(16) for _ in range(n)]


def test_default_backend_is_rbloom():
    assert DuplicateFilter(Clock()).backend == "rbloom"


def test_production_sizing_keeps_its_false_positive_rate_when_nearly_full():
    # DEDUP_CAPACITY ids at DEDUP_ERROR_RATE (1e-6): filled to 95 % (where it
    # rotates), 2 million unknown ids give about 1 false positive.
    f = DuplicateFilter(Clock())
    rng = random.Random(1)
    for mid in ids(rng, int(constants.DEDUP_CAPACITY * 0.95) - 1):
        f.add(mid)
    assert f.previous is None  # not rotated yet
    probes = 2_000_000
    false = sum(f.seen(rng.randbytes(16)) for _ in range(probes))
    assert false <= 8, f"{false} false positives in {probes} (design rate 1e-6)"


@pytest.mark.parametrize("backend", ["rbloom", "pybloom"])
def test_false_positive_rate_matches_the_design_rate(backend):
    capacity, rate = 5000, 1e-3
    f = DuplicateFilter(Clock(), capacity=capacity, error_rate=rate, backend=backend)
    rng = random.Random(2)
    added = ids(rng, int(capacity * 0.95) - 1)
    for mid in added:
        f.add(mid)
    assert all(f.seen(mid) for mid in added)  # no false negatives
    probes = 100_000
    false = sum(f.seen(rng.randbytes(16)) for _ in range(probes))
    assert false <= 2.5 * rate * probes, f"{backend}: {false} false positives in {probes}"


@pytest.mark.parametrize("backend", ["rbloom", "pybloom"])
def test_two_generations_rotate_by_age(backend):
    clock = Clock()
    f = DuplicateFilter(clock, period=60, capacity=1000, error_rate=1e-6, backend=backend)
    a, b = os.urandom(16), os.urandom(16)
    f.add(a)
    clock.advance(61)
    f.add(b)  # rotates: a moves to the previous generation
    assert f.seen(a) and f.seen(b)
    clock.advance(61)
    f.add(os.urandom(16))  # rotates again: a is forgotten, b is previous
    assert not f.seen(a) and f.seen(b)


@pytest.mark.parametrize("backend", ["rbloom", "pybloom"])
def test_rotates_before_the_generation_fills(backend):
    f = DuplicateFilter(Clock(), capacity=100, error_rate=1e-3, backend=backend)
    first = [os.urandom(16) for _ in range(95)]
    for mid in first:
        f.add(mid)
    assert f.previous is None
    f.add(os.urandom(16))  # 95 % full: a new generation starts
    assert f.previous is not None and f.count == 1
    assert all(f.seen(mid) for mid in first)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError):
        DuplicateFilter(Clock(), backend="nope")
