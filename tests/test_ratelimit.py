import pytest
from twisted.internet.task import Clock

from peernet.ratelimit import RateLimiter, parse_rate


def test_bucket_allows_burst_then_refills_with_time():
    clock = Clock()
    limiter = RateLimiter(clock, rate=3, per=60)
    assert [limiter.allow("ip") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("other")  # keys are independent
    clock.advance(19)
    assert not limiter.allow("ip")  # 0.95 token
    clock.advance(2)
    assert limiter.allow("ip")
    assert not limiter.allow("ip")


def test_memory_is_bounded_whatever_the_keys():
    clock = Clock()
    limiter = RateLimiter(clock, rate=1, per=1000, max_keys=100)
    for i in range(10_000):
        limiter.allow(f"k{i}")
    assert len(limiter) <= 100


def test_parse_rate():
    assert parse_rate("60/60") == (60, 60.0)
    assert parse_rate("5") == (5, 1.0)
    for bad in ("x/1", "0/10", "5/0", "5/-1", ""):
        with pytest.raises(ValueError):
            parse_rate(bad)
