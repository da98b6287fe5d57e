"""GossipCore.next_wakeup() is kept between calls (the transport asks after
every frame); it must always equal a fresh scan of every timer, whatever the
core went through: links opening, saying HELLO, closing and going silent,
pushes, digest pings, ticks, a re-issued own record."""

import random

import pytest

from peernet import constants
from peernet.gossip.core import GossipCore, Send
from peernet.gossip.memnet import HeapClock, MemoryNetwork
from peernet.identity import NodeIdentity

START = 1_800_000_000.0


@pytest.fixture
def checked(monkeypatch):
    """Every public call into any core is followed by the check."""
    calls = {"n": 0}

    def wrap(name):
        original = getattr(GossipCore, name)

        def checked_call(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            assert self.next_wakeup() == self._scan_wakeup(), f"stale after {name}"
            calls["n"] += 1
            return result
        monkeypatch.setattr(GossipCore, name, checked_call)

    original_apply = GossipCore._apply

    def counting_apply(self, *args, **kwargs):
        before = {l.id for l in self.links.values() if l.ping_due is not None}
        result = original_apply(self, *args, **kwargs)
        calls["pings"] += any(l.ping_due is not None and l.id not in before
                              for l in self.links.values())
        return result
    monkeypatch.setattr(GossipCore, "_apply", counting_apply)
    calls["pings"] = 0
    for name in ("link_opened", "link_closed", "receive", "tick", "set_repos",
                 "set_broadcast", "search"):
        wrap(name)
    return calls


def test_cached_wakeup_always_equals_a_fresh_scan(checked):
    clock = HeapClock(START)
    net = MemoryNetwork(clock, seed=4, latency=0.02, loss=0.05)
    nodes = [net.add_node(broadcasting=i % 5 != 4) for i in range(24)]
    net.random_graph(degree_out=3)
    rng = random.Random(9)
    clock.advance(1.0)
    for step in range(40):
        node = rng.choice([n for n in nodes if n.alive])
        what = rng.random()
        if what < 0.4 and node.core.broadcasting:
            net.process(node, node.core.set_repos([{"name": f"r{step}"}]))
        elif what < 0.5:
            net.kill(node)  # its neighbours' links close; theirs go silent first under loss
        elif what < 0.6:
            rid, actions = node.core.search(repo="r1")
            net.process(node, actions)
        clock.advance(rng.choice([0.01, 0.2, 3.0, constants.HEARTBEAT_INTERVAL]))
    # long enough for missed heartbeats to close links and records to be refreshed
    clock.advance(constants.LINK_DEAD_AFTER * 2)
    assert checked["n"] > 2000
    assert checked["pings"] > 20  # digest pings were scheduled (they pull the wakeup earlier)


def test_a_silent_link_that_speaks_again_moves_its_deadline_later():
    """When a silent link's deadline is the next wakeup, a frame from it moves
    that deadline later: the kept answer must go."""
    clock = HeapClock(START)
    a = GossipCore(NodeIdentity.generate(), clock, random.Random(1), broadcasting=True,
                   addresses=["wss://127.0.0.1:1/gossip"])
    b = GossipCore(NodeIdentity.generate(), clock, random.Random(2), broadcasting=True,
                   addresses=["wss://127.0.0.2:1/gossip"])
    hello_a = a.link_opened("L", True, b.identity.peer_id)[0].frame
    hello_b = b.link_opened("L", False, a.identity.peer_id)[0].frame
    b.receive("L", hello_a)
    a.receive("L", hello_b)
    # b says nothing more; a ticks every second until b's silence is its next
    # deadline (before the expiry check a tick sets 1 s ahead)
    clock.advance(0.4)
    while a.links["L"].last_heard + constants.LINK_DEAD_AFTER > clock.seconds() + 1.0:
        clock.advance(1.0)
        a.tick()
    silence_deadline = a.links["L"].last_heard + constants.LINK_DEAD_AFTER
    assert a.next_wakeup() == silence_deadline
    clock.advance(0.1)
    heartbeat = [x for x in b.tick() if isinstance(x, Send)]  # b's first tick: its heartbeat
    a.receive("L", heartbeat[0].frame)
    assert a.next_wakeup() == a._scan_wakeup() > silence_deadline
