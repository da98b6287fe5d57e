"""Token-bucket rate limits keyed by a string (an IP address, an email)."""


class RateLimiter:
    """Allow ``rate`` events per ``per`` seconds for each key, in bursts of ``rate``.

    ``clock`` is anything with ``seconds()`` (the reactor, or a task.Clock in
    tests).  At most ``max_keys`` keys are remembered: when full, keys whose
    bucket has refilled (they carry no information) are dropped first, then
    the oldest half.  Memory is therefore bounded whatever callers send.
    """

    def __init__(self, clock, rate, per, max_keys=100_000):
        if rate <= 0 or per <= 0:
            raise ValueError("rate and per must be positive")
        self.clock = clock
        self.capacity = float(rate)
        self.refill = rate / per  # tokens per second
        self.max_keys = max_keys
        self._buckets = {}  # key -> (tokens, last_seconds)

    def allow(self, key):
        now = self.clock.seconds()
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.refill)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            self._prune(now)
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def _prune(self, now):
        full = [k for k, (t, last) in self._buckets.items()
                if t + (now - last) * self.refill >= self.capacity]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_keys:
            for k in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[k]

    def __len__(self):
        return len(self._buckets)


def parse_rate(text):
    """Parse "N/SECONDS" (e.g. "60/60") into (N, SECONDS); ValueError if bad."""
    try:
        count, _, per = text.partition("/")
        count, per = int(count), float(per or "1")
    except ValueError:
        raise ValueError(f"{text!r} is not a rate of the form N/SECONDS, e.g. 60/60")
    if count < 1 or per <= 0:
        raise ValueError(f"{text!r}: N must be at least 1 and SECONDS positive")
    return count, per
