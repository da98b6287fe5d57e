"""Network and cost models of the simulator: latency, loss, CPU, frame sizes.

Every model draws from a ``random.Random`` handed to it, never from a global
source, so a simulation is a pure function of its seed.
"""

import math
import random
from dataclasses import dataclass


class Fixed:
    """Every frame takes ``delay`` seconds."""

    def __init__(self, delay):
        self.delay = float(delay)
        self.fifo_free = True  # equal delays cannot reorder a link

    def sample(self, rng):
        return self.delay

    def describe(self):
        return f"fixed {self.delay * 1000:g} ms"


class Uniform:
    """Uniform in [low, high] seconds, drawn per frame (links stay FIFO)."""

    def __init__(self, low, high):
        self.low, self.high = float(low), float(high)
        self.fifo_free = False

    def sample(self, rng):
        return rng.uniform(self.low, self.high)

    def describe(self):
        return f"uniform {self.low * 1000:g}-{self.high * 1000:g} ms"


class LogNormal:
    """Log-normal with the given median and sigma (of the log), per frame,
    capped at ``cap`` seconds (links stay FIFO)."""

    def __init__(self, median, sigma=0.5, cap=5.0):
        self.median, self.sigma, self.cap = float(median), float(sigma), float(cap)
        self.mu = math.log(self.median)
        self.fifo_free = False

    def sample(self, rng):
        return min(self.cap, rng.lognormvariate(self.mu, self.sigma))

    def describe(self):
        return f"log-normal median {self.median * 1000:g} ms, sigma {self.sigma:g}"


class PerLink:
    """A latency that is a property of the link: each link (unordered pair of
    peers) draws its delay once from ``base`` and keeps it for the whole run,
    both ways; ``jitter`` (a model, or None) adds a fresh draw to every frame
    (links stay FIFO).

    A link's delay depends only on ``seed`` and the two peers, never on the
    order frames are sent, so every design run on the same graph with the
    same ``seed`` sees the same latency on every link (the same network).
    """

    per_link = True

    def __init__(self, base, jitter=None, seed=0):
        self.base, self.jitter, self.seed = base, jitter, seed
        self.fifo_free = jitter is None  # one delay per link cannot reorder it
        self._salt = int.from_bytes(str(seed).encode(), "big") % (1 << 61)

    def link(self, a, b):
        """The fixed delay of the link between peers ``a`` and ``b``."""
        if a > b:
            a, b = b, a
        return self.base.sample(random.Random((self._salt << 64) | (a << 32) | b))

    def delay(self, a, b, rng):
        """One frame's delay from ``a`` to ``b`` (jitter drawn from ``rng``)."""
        d = self.link(a, b)
        if self.jitter is not None:
            d += self.jitter.sample(rng)
        return d

    def sample(self, rng):
        raise TypeError("PerLink latency depends on the link: use delay(a, b, rng)")

    def describe(self):
        out = f"per link: {self.base.describe()}"
        if self.jitter is not None:
            out += f", + per-frame jitter {self.jitter.describe()}"
        return out


class Geographic:
    """Latency from distance: every peer sits at a random point of a unit
    square (drawn from ``seed`` and its index) and a link takes ``base`` +
    ``per_unit`` x the distance between its ends (triangle inequality holds,
    unlike independent per-link draws: near peers are near each other's
    neighbours too).  Defaults: 5 ms + 85 ms per unit, 5-125 ms, mean ~49 ms
    over random pairs.  Fixed for the run, both ways, as ``PerLink``."""

    per_link = True
    fifo_free = True
    jitter = None

    def __init__(self, base=0.005, per_unit=0.085, seed=0):
        self.base, self.per_unit, self.seed = float(base), float(per_unit), seed
        self._points = {}

    def point(self, i):
        p = self._points.get(i)
        if p is None:
            rng = random.Random(f"{self.seed}/geo/{i}")
            p = self._points[i] = (rng.random(), rng.random())
        return p

    def link(self, a, b):
        (xa, ya), (xb, yb) = self.point(a), self.point(b)
        return self.base + self.per_unit * math.hypot(xa - xb, ya - yb)

    def delay(self, a, b, rng):
        return self.link(a, b)

    def sample(self, rng):
        raise TypeError("Geographic latency depends on the link: use delay(a, b, rng)")

    def describe(self):
        return (f"geographic: peers at random points of a unit square, {self.base * 1000:g} ms + "
                f"{self.per_unit * 1000:g} ms x distance")


def latency_from_spec(spec):
    """'fixed:0.05', 'uniform:0.02:0.08', 'lognormal:0.05:0.5' -> model;
    'link-' before uniform or lognormal draws once per link (``PerLink``)."""
    if spec.startswith("link-"):
        return PerLink(latency_from_spec(spec[5:]))
    kind, *args = spec.split(":")
    args = [float(a) for a in args]
    return {"fixed": Fixed, "uniform": Uniform, "lognormal": LogNormal}[kind](*args)


@dataclass
class CpuModel:
    """Processing time of a peer: ``recv_s`` per frame received, ``send_s`` per
    frame sent.  A peer handles one frame at a time (a single-threaded event
    loop); frames that arrive while it is busy queue in arrival order.  With
    ``cores`` set, all peers also share that many CPUs (several processes on
    one machine, as in benchmarks/convergence.py); with None each peer has a
    CPU of its own (a real deployment)."""

    recv_s: float = 0.0
    send_s: float = 0.0
    cores: "int | None" = None
    #: time from "publish" to the first frame leaving the publisher (the
    #: HTTP POST /api/repos handling in the real benchmark)
    publish_overhead_s: float = 0.0
    #: time from a peer's table change to an observer seeing it (the SSE
    #: /api/events delivery to the benchmark client)
    observe_delay_s: float = 0.0

    @property
    def enabled(self):
        return bool(self.recv_s or self.send_s)


#: No processing time at all: pure protocol latency.
FREE_CPU = CpuModel()


def wan_cpu():
    """Per-peer CPU (own machine) at the cost per frame measured in the real
    100-peer benchmark (TLS + WebSocket + codec + Ed25519 + core, all in)."""
    return CpuModel(recv_s=0.00017, send_s=0.00011, cores=None)


#: Link-layer overhead added to each gossip frame for byte counts: WebSocket
#: binary frame header (2-4 B, 4 B used) plus a TLS 1.3 record header and
#: AEAD tag (5 + 16 + 1 content-type byte).  TCP/IP headers are not counted.
FRAME_OVERHEAD_BYTES = 4 + 22
