"""GossipCore driven on a virtual clock through in-memory links."""

import random

import msgpack
import pytest

from peernet import constants
from peernet.gossip import codec
from peernet.gossip.codec import MessageType as T
from peernet.gossip.core import Close, GossipCore, Penalty, Send, TableChange
from peernet.gossip.memnet import HeapClock, MemoryNetwork
from peernet.identity import NodeIdentity

START = 1_800_000_000.0


def network(n, seed=7, latency=0.005, degree_out=4, silent=0):
    clock = HeapClock(START)
    net = MemoryNetwork(clock, seed=seed, latency=latency)
    for _ in range(n):
        net.add_node()
    for _ in range(silent):
        net.add_node(broadcasting=False)
    net.random_graph(degree_out)
    return net


def converged(net):
    peer_ids = {n.core.identity.peer_id for n in net.live() if n.core.broadcasting}
    return all({e.peer_id for e in n.core.table.live_broadcasting()} >= peer_ids for n in net.live())


def time_to_full_coverage(net, node, actions, timeout=30.0):
    net.process(node, actions)
    order = node.core.own.order
    return net.run_until(lambda: net.coverage(node.core.identity.peer_id, order) == 1.0,
                         timeout, step=0.001)


def test_200_nodes_reach_every_record_and_100_percent_of_an_update():
    net = network(200)
    assert net.run_until(lambda: converged(net), 30.0, step=0.01) is not None
    origin = net.nodes[17]
    elapsed = time_to_full_coverage(net, origin, origin.core.set_repos([{"name": "films"}]))
    assert elapsed is not None, "the update did not reach 100 % of nodes"
    assert elapsed < 2.0  # push + digest pings, far below one heartbeat interval
    holders = [n.core.table.get(origin.core.identity.peer_id) for n in net.nodes]
    assert all(e.record.get("repos") == [{"name": "films"}] for e in holders)
    assert all(not n.penalties for n in net.nodes)


def test_survivors_reach_100_percent_after_30_percent_are_killed():
    net = network(200, seed=11)
    assert net.run_until(lambda: converged(net), 30.0, step=0.01) is not None
    rng = random.Random(3)
    victims = rng.sample(net.nodes, 60)
    for v in victims:
        net.kill(v)
    # What the connection manager does: a node left with few links dials more.
    survivors = net.live()
    for node in survivors:
        while len(node.links) < 3:
            net.connect(node, rng.choice([s for s in survivors if s is not node]))
    origin = survivors[5]
    elapsed = time_to_full_coverage(net, origin, origin.core.set_repos([{"name": "after"}]))
    assert elapsed is not None and len(net.live()) == 140
    # And a second update from another survivor, to be sure it was not luck.
    other = survivors[77]
    assert time_to_full_coverage(net, other, other.core.set_repos([{"name": "again"}])) is not None


def test_dead_peers_records_expire_and_live_ones_are_refreshed():
    net = network(12, seed=5)
    assert net.run_until(lambda: converged(net), 10.0, step=0.01) is not None
    dead = net.nodes[3]
    net.kill(dead)
    # Three hours later: the dead node's record is gone everywhere, the live
    # nodes' records are still there (refreshed every 30 min).
    net.run_until(lambda: False, 3 * 3600.0, step=5.0)
    for n in net.live():
        assert n.core.table.get(dead.core.identity.peer_id) is None
        assert converged(net)
    assert any(c.kind == "removed" for _, c in net.nodes[0].changes)


def test_broadcast_off_tombstone_erases_addresses_everywhere():
    net = network(30, seed=9)
    assert net.run_until(lambda: converged(net), 10.0, step=0.01) is not None
    node = net.nodes[4]
    pid = node.core.identity.peer_id
    net.process(node, node.core.set_broadcast(False))
    assert net.run_until(lambda: all(
        n.core.table.get(pid) is not None and n.core.table.get(pid).is_tombstone
        for n in net.nodes), 5.0, step=0.001) is not None
    for n in net.nodes:
        assert n.core.table.get(pid).record["addresses"] == []
        assert pid not in {e.peer_id for e in n.core.table.live_broadcasting()}


def test_silent_peer_finds_a_record_by_request_along_the_reverse_path():
    clock = HeapClock(START)
    net = MemoryNetwork(clock, seed=2, latency=0.01)
    c = net.add_node()
    m = net.add_node()
    b = net.add_node()
    s = net.add_node(broadcasting=False)
    net.process(c, c.core.set_repos([{"name": "docs"}]))
    net.connect(m, c)  # a line: s - b - m - c
    net.connect(b, m)
    net.connect(s, b)
    answers = []
    orig = net.process

    def capture(node, actions):
        answers.extend(a for a in actions if type(a).__name__ == "SearchAnswer" and node is s)
        orig(node, actions)

    net.process = capture
    clock.advance(0.011)  # HELLOs delivered; b does not hold c's record yet (two hops away)
    assert b.core.table.get(c.core.identity.peer_id) is None
    rid, actions = s.core.search(repo="docs")
    net.process(s, actions)
    clock.advance(0.2)
    assert [a.peer_ids for a in answers if a.request_id == rid] == [(c.core.identity.peer_id,)]
    assert s.core.table.get(c.core.identity.peer_id).repo_names() == {"docs"}


def test_silent_peer_leaves_no_trace_in_other_nodes_or_its_frames():
    net = network(20, seed=4, silent=1)
    silent = net.nodes[-1]
    sent = []
    orig_send = net._send

    def spy(node, action):
        if node is silent:
            sent.append(action.frame)
        orig_send(node, action)

    net._send = spy
    assert net.run_until(lambda: converged(net), 10.0, step=0.01) is not None
    rid, actions = silent.core.search(repo="nothing-has-this")
    net.process(silent, actions)
    net.run_until(lambda: False, 65.0, step=0.05)  # heartbeats both ways
    pid = silent.core.identity.peer_id
    key = silent.core.identity.public_key_der
    assert sent, "the silent node sent nothing at all"
    for frame in sent:
        assert pid.encode() not in frame and key not in frame
        assert bytes.fromhex(pid) not in frame
    for n in net.nodes[:-1]:
        assert n.core.table.get(pid) is None
        assert all(link.tls_peer_id != pid for link in n.core.links.values())
        assert pid.encode() not in n.core.table.snapshot_bytes()


# -- hostile input against one node --------------------------------------------------


class Harness:
    """One core under test, fed frames by hand on an open link."""

    def __init__(self):
        self.clock = HeapClock(START)
        self.me = GossipCore(NodeIdentity.generate(), self.clock, random.Random(1),
                             broadcasting=True, addresses=["wss://127.0.0.1:1/gossip"])
        self.other = NodeIdentity.generate()
        self.other_core = GossipCore(self.other, self.clock, random.Random(2),
                                     broadcasting=True, addresses=["wss://127.0.0.2:1/gossip"])
        my_hello = self.me.link_opened("L", False, self.other.peer_id)[0].frame
        hello = self.other_core.link_opened("M", True, self.me.identity.peer_id)[0].frame
        self.other_core.receive("M", my_hello)
        self.me.receive("L", hello)

    def feed(self, frame):
        digest = self.me.table.digest()
        actions = self.me.receive("L", frame)
        return actions, digest != self.me.table.digest()

    def update_frame(self, ts_offset=0.0, ttl=5):
        self.clock.advance(0.001)
        actions = self.other_core.set_repos([{"name": f"r{self.clock.seconds()}"}])
        frame = next(a.frame for a in actions if isinstance(a, Send))
        if ts_offset or ttl != 5:
            msg = codec.decode(frame)
            body = msgpack.unpackb(msg.body_bytes, raw=False)
            body["ts"] += int(ts_offset * 1000)
            body_bytes = codec.encode_body(T.PEER_UPDATE, body)
            frame = codec.encode(T.PEER_UPDATE, ttl, body_bytes)
        return frame

    def rewrap(self, frame, ts_offset=0.0, ttl=5, **fields):
        """The record of ``frame`` in a new body (fresh id, ``ts`` now +
        offset), as any relay can build it since version 2; ``fields``
        replace body fields (rec, rsig) to forge."""
        body = msgpack.unpackb(codec.decode(frame).body_bytes, raw=False)
        body.update({"id": random.randbytes(16),
                     "ts": int((self.clock.seconds() + ts_offset) * 1000), **fields})
        return codec.encode(T.PEER_UPDATE, ttl, codec.encode_body(T.PEER_UPDATE, body))


def penalties(actions):
    return [a.code for a in actions if isinstance(a, Penalty)]


def test_valid_update_is_applied_once():
    h = Harness()
    frame = h.update_frame()
    actions, changed = h.feed(frame)
    assert changed and any(isinstance(a, TableChange) for a in actions)
    actions, changed = h.feed(frame)  # replay inside the window
    assert not changed and not actions
    assert h.me.stats.duplicates >= 1


def test_replay_outside_the_window_is_rejected():
    h = Harness()
    frame = h.update_frame()
    h.clock.advance(constants.DEDUP_GENERATION_SECONDS * 2 + 31)  # filter rotated twice
    actions, changed = h.feed(frame)
    assert not changed and penalties(actions) == ["stale_timestamp"]


@pytest.mark.parametrize("offset", [-31, 31])
def test_timestamps_31_seconds_off_are_rejected(offset):
    h = Harness()
    actions, changed = h.feed(h.update_frame(ts_offset=offset))
    assert not changed and penalties(actions) == ["stale_timestamp"]


@pytest.mark.parametrize("offset", [-29, 29])
def test_timestamps_inside_the_window_are_accepted(offset):
    h = Harness()
    actions, changed = h.feed(h.update_frame(ts_offset=offset))
    assert changed and not penalties(actions)


def test_forged_signature_has_no_effect_and_does_not_shadow_the_real_message():
    h = Harness()
    good = h.update_frame()
    msg = codec.decode(good)
    forged = h.rewrap(good, id=msg.body["id"], ts=msg.body["ts"], rsig=bytes(64))
    actions, changed = h.feed(forged)
    assert not changed and penalties(actions) == ["bad_signature"]
    # The forged message's id did not enter the duplicate filter: the same
    # bytes again are checked (and charged) again, not dropped unread.
    actions, changed = h.feed(forged)
    assert not changed and penalties(actions) == ["bad_signature"]
    actions, changed = h.feed(good)  # the genuine copy still gets through
    assert changed


def test_record_signed_by_someone_else_is_rejected():
    h = Harness()
    mallory = NodeIdentity.generate()
    msg = codec.decode(h.update_frame())
    forged = h.rewrap(h.update_frame(), rsig=mallory.sign(msg.body["rec"]))
    actions, changed = h.feed(forged)
    assert not changed and penalties(actions) == ["bad_signature"]


# -- one signature per push (protocol version 2): what a relay re-wrapping a
#    record can and cannot do (docs/protocol.md "One signature per push") -----


def relays(actions):
    return [a for a in actions if isinstance(a, Send)]


def relayed_core():
    """A Harness whose core has three more ready links, so a push that
    changes the table is relayed (FANOUT 3)."""
    h = Harness()
    for name in ("A", "B", "C"):
        peer = GossipCore(NodeIdentity.generate(), h.clock, random.Random(3), broadcasting=False)
        mine = h.me.link_opened(name, False, None)[0].frame
        peer.link_opened("X", True, None)
        peer.receive("X", mine)
        h.me.receive(name, peer.link_opened("Y", True, None)[0].frame)
    return h


def test_a_rewrapped_record_we_hold_changes_nothing_and_is_not_relayed():
    h = relayed_core()
    good = h.update_frame()
    actions, changed = h.feed(good)
    assert changed and len(relays(actions)) == 3
    before = (h.me.stats.duplicates, h.me.stats.forwarded, h.me.stats.invalid)
    for ttl in (5, constants.MAX_TTL):  # a relay may also raise the TTL
        actions, changed = h.feed(h.rewrap(good, ttl=ttl))
        assert not changed and actions == []
    assert h.me.stats.duplicates == before[0] + 2
    assert (h.me.stats.forwarded, h.me.stats.invalid) == before[1:]


def test_a_rewrapped_record_we_lack_is_applied_and_relayed_like_the_original():
    h = relayed_core()
    good = h.update_frame()
    wrapped = h.rewrap(good, ts_offset=-10)
    actions, changed = h.feed(wrapped)
    assert changed and len(relays(actions)) == 3 and not penalties(actions)
    entry = h.me.table.get(h.other.peer_id)
    assert entry.record_bytes == codec.decode(good).body["rec"]
    # The relay forwards the frame as received (its body is untouched).
    assert {a.frame for a in relays(actions)} == {codec.relay(codec.decode(wrapped), 4)}
    actions, changed = h.feed(good)  # the origin's own copy: nothing new
    assert not changed and actions == []


def test_a_rewrapped_older_record_never_replaces_the_newer_one():
    h = relayed_core()
    old = h.update_frame()
    new = h.update_frame()
    assert h.feed(new)[1]
    actions, changed = h.feed(h.rewrap(old))
    assert not changed and actions == []
    assert h.me.table.get(h.other.peer_id).record_bytes == codec.decode(new).body["rec"]


def test_a_fresh_envelope_does_not_revive_an_expired_record():
    h = relayed_core()
    old = h.update_frame()  # never fed: this core has not seen the record
    # Two hours and more later (the origin is gone), somebody re-stamps its
    # last record: its issued_at, not the envelope's ts, says it is dead.
    h.clock.advance(constants.RECORD_LIFETIME + 1)
    actions, changed = h.feed(h.rewrap(old))
    assert not changed and not relays(actions) and not penalties(actions)
    entry = h.me.table.get(h.other.peer_id)
    assert entry is None or entry.record_bytes != codec.decode(old).body["rec"]


def test_hello_impersonating_another_peer_is_rejected():
    clock = HeapClock(START)
    me = GossipCore(NodeIdentity.generate(), clock, random.Random(1), broadcasting=True,
                    addresses=["wss://127.0.0.1:1/gossip"])
    victim = GossipCore(NodeIdentity.generate(), clock, random.Random(2), broadcasting=True,
                        addresses=["wss://127.0.0.3:1/gossip"])
    mallory = NodeIdentity.generate()
    me.link_opened("L", False, mallory.peer_id)  # TLS proved mallory's key
    hello_of_victim = victim.link_opened("X", True, None)[0].frame
    actions = me.receive("L", hello_of_victim)
    assert penalties(actions) == ["impersonation"]
    assert me.table.get(victim.identity.peer_id) is None


@pytest.mark.parametrize("ttl", [33, 40])
def test_ttl_above_32_is_rejected(ttl):
    h = Harness()
    actions, changed = h.feed(h.update_frame(ttl=ttl))
    assert not changed and penalties(actions) == ["bad_ttl"]


def test_unknown_type_and_truncated_frames_are_rejected_without_effect():
    h = Harness()
    good = h.update_frame()
    env = msgpack.unpackb(good, raw=False)
    env["type"] = 9
    for frame in [msgpack.packb(env, use_bin_type=True), good[:len(good) // 2], good[:-1], b"", b"\x00" * 10]:
        actions, changed = h.feed(frame)
        assert not changed and penalties(actions)
    actions, changed = h.feed(good)
    assert changed


def test_older_version_never_replaces_newer():
    h = Harness()
    first = h.update_frame()
    second = h.update_frame()
    assert h.feed(second)[1]
    actions, changed = h.feed(first)
    assert not changed
    assert h.me.table.get(h.other.peer_id).repo_names() == {
        r["name"] for r in h.other_core.own.record["repos"]}


def test_messages_before_hello_are_refused():
    clock = HeapClock(START)
    me = GossipCore(NodeIdentity.generate(), clock, random.Random(1))
    me.link_opened("L", False, None)
    body = codec.encode_body(T.HEARTBEAT, {"id": b"i" * 16, "ts": int(START * 1000),
                                           "digest": b"d" * 16, "n": 0, "load": 0})
    actions = me.receive("L", codec.encode(T.HEARTBEAT, 1, body))
    assert penalties(actions) == ["no_hello"]


def test_a_link_without_a_valid_hello_closes_hello_timeout_after_opening():
    """Refused frames (here: a HELLO from a clock 40 s ahead, repeated) do not
    keep a link that never said a valid HELLO open, and the close says why."""
    clock = HeapClock(START)
    me = GossipCore(NodeIdentity.generate(), clock, random.Random(1))
    ahead_clock = HeapClock(START + 40)
    ahead = GossipCore(NodeIdentity.generate(), ahead_clock, random.Random(2))
    me.link_opened("L", False, None)
    assert me.next_wakeup() <= START + constants.HELLO_TIMEOUT
    for _ in range(int(constants.HELLO_TIMEOUT) - 1):
        clock.advance(1.0)
        ahead_clock.advance(1.0)
        hello = ahead.link_opened("X", True, None)[0].frame
        penalty = next(a for a in me.receive("L", hello) if isinstance(a, Penalty))
        assert penalty.code == "stale_timestamp"
        assert "+40 s off this node's clock, outside the \u00b130 s window" in penalty.detail
        assert not [a for a in me.tick() if isinstance(a, Close)]
    clock.advance(1.0)
    closes = [a for a in me.tick() if isinstance(a, Close)]
    assert closes == [Close("L", "no valid HELLO in time")]
    assert "L" not in me.links


def test_snapshot_round_trip_reverifies_records(tmp_path):
    net = network(10, seed=1)
    assert net.run_until(lambda: converged(net), 10.0, step=0.01) is not None
    table = net.nodes[0].core.table
    data = table.snapshot_bytes()
    from peernet.gossip.table import PeerTable

    fresh = PeerTable()
    assert fresh.load_snapshot_bytes(data, START + 1) == len(table)
    assert fresh.digest() == table.digest()
    tampered = data.replace(b"127.0.0.5", b"127.0.0.9")
    other = PeerTable()
    assert other.load_snapshot_bytes(tampered, START + 1) == len(table) - 1
    assert PeerTable().load_snapshot_bytes(b"garbage", START) == 0
    # Expired records are not loaded back.
    assert PeerTable().load_snapshot_bytes(data, START + 3 * 3600) == 0
