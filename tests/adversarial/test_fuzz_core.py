"""Property-based fuzzing of the codec and the GossipCore (hypothesis).

tests/test_gossip_codec.py already feeds the decoder arbitrary bytes and
arbitrary msgpack bodies.  What this adds:

- the *core*: arbitrary frames, structured envelopes and mutated genuine
  frames fed to a GossipCore on an open link (and on a link before HELLO)
  never raise out of ``receive()`` and never change the table, except a
  mutation that leaves the self-signed record and its signature intact
  (protocol version 2 has no envelope signature: the TTL, and the body's
  ``id`` and ``ts``, are what a relay can change; the record is not);
- sequences of such frames, interleaved with time passing;
- the codec accepts every *valid* body the schema allows (no false
  rejections) and round-trips it exactly.
"""

import random

import msgpack
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from peernet import constants
from peernet.gossip import codec
from peernet.gossip.codec import MessageType as T
from peernet.gossip.core import GossipCore, Penalty, Send, TableChange
from peernet.gossip.memnet import HeapClock
from peernet.identity import NodeIdentity

START = 1_800_000_000.0
ME = NodeIdentity.generate()
OTHER = NodeIdentity.generate()
FIELD_NAMES = sorted({name for fields in codec.BODY_FIELDS.values() for name in fields})

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Node:
    """One core with an open link "L" from OTHER (HELLO exchanged), and
    OTHER's core to make genuine frames."""

    def __init__(self, hello=True):
        self.clock = HeapClock(START)
        self.core = GossipCore(ME, self.clock, random.Random(1), broadcasting=True,
                               addresses=["wss://127.0.0.1:1/gossip"])
        self.other = GossipCore(OTHER, self.clock, random.Random(2), broadcasting=True,
                                addresses=["wss://127.0.0.2:1/gossip"])
        mine = self.core.link_opened("L", False, OTHER.peer_id)[0].frame
        theirs = self.other.link_opened("M", True, ME.peer_id)[0].frame
        self.other.receive("M", mine)
        if hello:
            self.core.receive("L", theirs)
        self.hello = theirs

    def feed(self, frame):
        before = (self.core.table.digest(), len(self.core.table))
        actions = self.core.receive("L", frame)  # must not raise
        for a in actions:
            assert isinstance(a, (Penalty, Send, TableChange)), a
        return actions, before != (self.core.table.digest(), len(self.core.table))

    def genuine_update(self):
        self.clock.advance(0.01)
        actions = self.other.set_repos([{"name": f"r{self.clock.seconds()}"}])
        return next(a.frame for a in actions if isinstance(a, Send))


def leaves():
    return st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                     st.binary(max_size=80), st.text(max_size=20),
                     st.floats(allow_nan=True), st.lists(st.integers(0, 300), max_size=4))


values = st.recursive(leaves(), lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.integers(0, 300) | st.text(max_size=5),
                                                 kids, max_size=4)), max_leaves=12)

bodies = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), values, max_size=8)


@st.composite
def envelopes(draw):
    """A msgpack envelope with mostly-plausible parts and arbitrary values."""
    mtype = draw(st.sampled_from([int(t) for t in T]) | st.integers(-5, 300))
    body = draw(bodies)
    if draw(st.booleans()):
        body.setdefault("id", draw(st.binary(min_size=16, max_size=16)))
        body.setdefault("ts", int(START * 1000) + draw(st.integers(-40_000, 40_000)))
    env = {
        "v": draw(st.sampled_from([2, 2, 2, 0, 1, 3, "2", True])),
        "type": mtype,
        "ttl": draw(st.integers(-3, 40) | st.sampled_from([True, None, 1.5, "2"])),
        "body": msgpack.packb(body, use_bin_type=True) if draw(st.booleans()) else body,
    }
    if draw(st.integers(0, 4)) == 0:
        # version 1's envelope signature: an unknown field in version 2
        env["sig"] = draw(st.none() | st.binary(min_size=64, max_size=64) | st.binary(max_size=70))
    if draw(st.integers(0, 9)) == 0:
        env[draw(st.text(max_size=4))] = draw(leaves())
    try:
        return msgpack.packb(env, use_bin_type=True)
    except (OverflowError, TypeError, ValueError):
        assume(False)


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise_nor_change_the_table(data):
    node = Node()
    actions, changed = node.feed(data)
    assert not changed
    assert [type(a) for a in actions] == [Penalty]


@FUZZ
@given(envelopes())
def test_structured_envelopes_never_raise_nor_change_the_table(frame):
    node = Node()
    actions, changed = node.feed(frame)
    assert not changed
    assert not any(isinstance(a, TableChange) for a in actions)


@FUZZ
@given(envelopes())
def test_nothing_before_hello_is_accepted(frame):
    node = Node(hello=False)
    actions, changed = node.feed(frame)
    assert not changed
    assert not any(isinstance(a, (TableChange, Send)) for a in actions)


@st.composite
def mutations(draw, frame):
    data = bytearray(frame)
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice", "ttl"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "insert":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete":
        i = draw(st.integers(0, len(data) - 1))
        del data[i:i + draw(st.integers(1, 16))]
    elif kind == "splice":
        i = draw(st.integers(0, len(data) - 1))
        data[i:] = draw(st.binary(max_size=64))
    else:
        env = msgpack.unpackb(bytes(data), raw=False)
        env["ttl"] = draw(st.integers(-2, 40))
        data = bytearray(msgpack.packb(env, use_bin_type=True))
    return bytes(data)


@FUZZ
@given(st.data())
def test_mutated_genuine_frames_change_the_table_only_with_intact_signed_parts(data):
    node = Node()
    genuine = node.genuine_update()
    original = codec.decode(genuine)
    frame = data.draw(mutations(genuine))
    actions, changed = node.feed(frame)
    if changed:
        # Only what lies outside the record's signature may differ.
        got = codec.decode(frame)
        assert (got.body["rec"], got.body["rsig"]) == (original.body["rec"], original.body["rsig"])
        assert 0 <= got.ttl <= constants.MAX_TTL
    # The genuine copy is never shadowed by a mutated one that came first.
    if not changed:
        _, changed_now = node.feed(genuine)
        assert changed_now


@FUZZ
@given(st.lists(st.tuples(envelopes() | st.binary(max_size=300), st.floats(0, 40)),
                max_size=12))
def test_sequences_with_time_passing_never_raise_nor_change_the_table(steps):
    node = Node()
    for frame, wait in steps:
        node.clock.advance(wait)
        node.core.tick()
        actions, changed = node.feed(frame)
        assert not changed


# -- the codec accepts what the schema allows ------------------------------------------

ids = st.binary(min_size=16, max_size=16)
ts = st.integers(0, 2**53)
sig64 = st.binary(min_size=64, max_size=64)
small = st.integers(0, 2**31)
VALID_BODIES = {
    T.HELLO: st.one_of(
        st.fixed_dictionaries({"id": ids, "ts": ts, "versions": st.lists(st.integers(1, 255), min_size=1, max_size=8),
                               "bc": st.just(False), "repos": small,
                               "digest": st.binary(min_size=16, max_size=16), "n": small}),
        st.fixed_dictionaries({"id": ids, "ts": ts, "versions": st.lists(st.integers(1, 255), min_size=1, max_size=8),
                               "bc": st.just(True), "rec": st.binary(max_size=200), "rsig": sig64,
                               "repos": small, "digest": st.binary(min_size=16, max_size=16), "n": small})),
    T.PEER_ANNOUNCEMENT: st.fixed_dictionaries({"id": ids, "ts": ts, "rec": st.binary(max_size=500), "rsig": sig64}),
    T.PEER_UPDATE: st.fixed_dictionaries({"id": ids, "ts": ts, "rec": st.binary(max_size=500), "rsig": sig64}),
    T.PEER_REQUEST: st.one_of(
        st.fixed_dictionaries({"id": ids, "ts": ts, "repo": st.text(min_size=1, max_size=255)}),
        st.fixed_dictionaries({"id": ids, "ts": ts, "peer": st.text("0123456789abcdef", min_size=64, max_size=64)}),
        st.fixed_dictionaries({"id": ids, "ts": ts, "sync": st.dictionaries(
            st.integers(0, 255), st.binary(min_size=8, max_size=8), max_size=20)})),
    T.PEER_LIST_RESPONSE: st.fixed_dictionaries({"id": ids, "ts": ts, "re": ids, "recs": st.lists(
        st.tuples(st.binary(max_size=100), sig64).map(list), max_size=5)}),
    T.HEARTBEAT: st.fixed_dictionaries(
        {"id": ids, "ts": ts, "digest": st.binary(min_size=16, max_size=16), "n": small,
         "load": st.integers(0, 100)},
        optional={"recent": st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 2**53),
                                               st.integers(0, 2**53)).map(list), max_size=8)}),
}


@FUZZ
@given(st.sampled_from(list(T)).flatmap(lambda t: st.tuples(st.just(t), VALID_BODIES[t])),
       st.integers(0, constants.MAX_TTL))
def test_every_valid_body_is_accepted_and_round_trips(typed_body, ttl):
    mtype, body = typed_body
    ttl = min(ttl, constants.MAX_TTL_BY_TYPE[mtype])
    body_bytes = codec.encode_body(mtype, body)
    msg = codec.decode(codec.encode(mtype, ttl, body_bytes))
    assert (msg.type, msg.ttl, msg.body, msg.body_bytes) == (mtype, ttl, body, body_bytes)
