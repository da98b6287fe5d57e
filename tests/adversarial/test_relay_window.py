"""Framing honest relays with messages at the edge of the timestamp window.

Found by the PEER_REQUEST storm against real processes: an attacker sends
messages whose timestamp is just inside the ±30 s window (say 29.5 s old).
The node it talks to accepts them, which is right, and used to relay them.
One second later they are outside the window for the next node, which then
penalised the *honest relay*'s link; five of them cut it off and refused it
for ten minutes.  With a storm, every honest link of the network was cut
(peer2 cut off all four of its links at once): a cheap partition attack.

The defence: a node relays a message only while it has RELAY_WINDOW_MARGIN
seconds of the window left (pushes, requests and answers alike).  It still
applies what the message taught it, and digest pings then carry the change to
its neighbours as a fresh, link-local exchange.
"""

import random

from peernet import constants
from peernet.gossip import codec
from peernet.gossip.codec import MessageType as T
from peernet.gossip.core import RELAY_WINDOW_MARGIN, GossipCore, Penalty, Send
from peernet.gossip.memnet import HeapClock
from peernet.identity import NodeIdentity

START = 1_800_000_000.0
EDGE = constants.CLOCK_SKEW_SECONDS - 0.5     # seconds old when the attacker sends it
TRANSIT = 1.0                                 # seconds until the next node reads it


class Chain:
    """attacker -> T -> N, each pair with an open link (HELLOs exchanged)."""

    def __init__(self):
        self.clock = HeapClock(START)
        self.ids = {name: NodeIdentity.generate() for name in "ATN"}
        self.cores = {name: GossipCore(self.ids[name], self.clock, random.Random(i),
                                       broadcasting=True,
                                       addresses=[f"wss://127.0.0.{10 + i}:1/gossip"])
                      for i, name in enumerate("ATN")}
        self._link("A", "T")
        self._link("T", "N")

    def _link(self, a, b):
        ca, cb = self.cores[a], self.cores[b]
        hello_a = ca.link_opened(b, True, self.ids[b].peer_id)[0].frame
        hello_b = cb.link_opened(a, False, self.ids[a].peer_id)[0].frame
        ca.receive(b, hello_b)
        cb.receive(a, hello_a)

    def sends(self, actions, to):
        return [a.frame for a in actions if isinstance(a, Send) and a.link == to]

    def deliver_to_n(self, frames):
        self.clock.advance(TRANSIT)
        actions = []
        for frame in frames:
            actions += self.cores["N"].receive("T", frame)
        return [a for a in actions if isinstance(a, Penalty)]


def request(ts, repo="nobody-has-this"):
    body = codec.encode_body(T.PEER_REQUEST, {"id": random.randbytes(16), "ts": ts,
                                              "repo": repo})
    return codec.encode(T.PEER_REQUEST, constants.TTL_REQUEST, body)


def test_requests_at_the_window_edge_are_not_relayed_so_no_relay_is_framed():
    chain = Chain()
    now_ms = int(chain.clock.seconds() * 1000)
    frames = []
    for _ in range(constants.PENALTY_LIMIT + 2):
        actions = chain.cores["T"].receive("A", request(now_ms - int(EDGE * 1000)))
        assert not [a for a in actions if isinstance(a, Penalty)]  # inside the window at T
        frames += chain.sends(actions, "N")
    assert chain.deliver_to_n(frames) == []


def test_fresh_requests_are_still_relayed():
    chain = Chain()
    now_ms = int(chain.clock.seconds() * 1000)
    margin_ms = int((RELAY_WINDOW_MARGIN + 1) * 1000)
    for ts in (now_ms, now_ms - (constants.CLOCK_SKEW_SECONDS * 1000 - margin_ms),
               now_ms + (constants.CLOCK_SKEW_SECONDS * 1000 - margin_ms)):
        actions = chain.cores["T"].receive("A", request(ts, repo=f"r{ts}"))
        frames = chain.sends(actions, "N")
        assert len(frames) == 1
        assert chain.deliver_to_n(frames) == []


def test_pushes_at_the_window_edge_still_reach_the_next_node_by_digest_ping():
    chain = Chain()
    a, t, n = (chain.cores[x] for x in "ATN")
    # A new version of the attacker's own (valid) record, pushed 29.5 s old.
    a.set_repos([{"name": "edge"}])
    entry = a.own
    body = codec.encode_body(T.PEER_UPDATE, {
        "id": random.randbytes(16), "ts": int((chain.clock.seconds() - EDGE) * 1000),
        "rec": entry.record_bytes, "rsig": entry.signature})
    frame = codec.encode(T.PEER_UPDATE, constants.TTL_UPDATE, body)
    actions = t.receive("A", frame)
    assert not [x for x in actions if isinstance(x, Penalty)]
    assert t.table.get(entry.peer_id).order == entry.order       # T applied it
    assert chain.deliver_to_n(chain.sends(actions, "N")) == []   # nothing stale relayed
    # The digest ping carries it to N as a fresh, link-local pull (N asks
    # ASK_DELAY after the ping, from its own tick).
    for _ in range(40):
        chain.clock.advance(constants.DIGEST_PING_DELAY)
        for frame in chain.sends(t.tick(), "N"):
            for reply in chain.sends(n.receive("T", frame), "T"):
                for back in chain.sends(t.receive("N", reply), "N"):
                    assert not [x for x in n.receive("T", back) if isinstance(x, Penalty)]
        for ask in chain.sends(n.tick(), "T"):
            for back in chain.sends(t.receive("N", ask), "N"):
                assert not [x for x in n.receive("T", back) if isinstance(x, Penalty)]
        got = n.table.get(entry.peer_id)
        if got is not None and got.order == entry.order:
            break
    assert n.table.get(entry.peer_id).order == entry.order
