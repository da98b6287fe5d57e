"""Network and cost models of the simulator: latency, loss, CPU, frame sizes.

Every model draws from a ``random.Random`` handed to it, never from a global
source, so a simulation is a pure function of its seed.
"""

import math
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


def latency_from_spec(spec):
    """'fixed:0.05', 'uniform:0.02:0.08', 'lognormal:0.05:0.5' -> model."""
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
