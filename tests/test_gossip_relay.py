"""Where a push goes: eager links, the flood phase, and the origin's publish
(GossipCore._relay_targets / _publish_targets; docs/protocol.md "Push")."""

import random

from peernet import constants
from peernet.gossip import codec
from peernet.gossip.codec import MessageType as T
from peernet.gossip.core import GossipCore, LinkState, Send
from peernet.gossip.memnet import HeapClock, MemoryNetwork
from peernet.identity import NodeIdentity

START = 1_800_000_000.0


def _core(clock, seed, broadcasting=True, index=1):
    return GossipCore(NodeIdentity.generate(), clock, random.Random(seed),
                      broadcasting=broadcasting, addresses=[f"wss://127.0.0.{index}:1/gossip"])


class Hub:
    """One core under test with hand-made links to other real cores."""

    def __init__(self, table_size=0):
        self.clock = HeapClock(START)
        self.me = _core(self.clock, 1)
        self.peers = {}
        # Records of other peers, so the table (N) has the size we want.
        for i in range(table_size):
            self.me.table.offer(_core(self.clock, 100 + i, index=200).own, self.clock.seconds())

    def link(self, name, outbound, remote_eager=False):
        """Open link ``name`` to a fresh peer; ``remote_eager``: the peer dials
        us and marks the link eager (only possible when we did not dial)."""
        peer = _core(self.clock, len(self.peers) + 10, index=len(self.peers) + 10)
        if remote_eager:
            assert not outbound
        elif not outbound:
            # The dialler already has its eager links, so its HELLO marks nothing.
            for j in range(constants.EAGER_LINKS):
                peer.links[f"x{j}"] = LinkState(f"x{j}", True, None, 0.0, 0.0,
                                                eager_local=True)
        mine = self.me.link_opened(name, outbound, peer.identity.peer_id)[0].frame
        theirs = peer.link_opened("P", not outbound, self.me.identity.peer_id)[0].frame
        peer.receive("P", mine)
        self.me.receive(name, theirs)
        self.peers[name] = peer
        return codec.decode(mine).body, codec.decode(theirs).body


def _sent_to(actions):
    return sorted(a.link for a in actions if isinstance(a, Send))


def test_first_outbound_links_are_eager_and_say_so_in_hello():
    hub = Hub()
    bodies = [hub.link(f"out{i}", True)[0] for i in range(4)]
    assert [b.get("eager", False) for b in bodies] == [True] * constants.EAGER_LINKS + [False] * (
        4 - constants.EAGER_LINKS)
    assert [hub.me.links[f"out{i}"].eager for i in range(4)] == [b.get("eager", False) for b in bodies]
    # an inbound link is eager exactly when the dialler marked it
    hub.link("in-eager", False, remote_eager=True)
    hub.link("in-plain", False)
    assert hub.me.links["in-eager"].eager and not hub.me.links["in-plain"].eager
    # the remote end agrees (symmetric without negotiation)
    assert hub.peers["out0"].links["P"].eager and not hub.peers["out3"].links["P"].eager


def test_a_closed_eager_link_is_replaced_by_the_next_outbound_link():
    hub = Hub()
    for i in range(constants.EAGER_LINKS + 1):
        hub.link(f"out{i}", True)
    hub.me.link_closed("out0")
    body, _ = hub.link("replacement", True)
    assert body.get("eager") is True and hub.me.links["replacement"].eager
    body, _ = hub.link("one-more", True)
    assert "eager" not in body


def _push_from(hub, source, ttl):
    """A PEER_UPDATE from a new origin, arriving on ``source`` with ``ttl``."""
    origin = _core(hub.clock, 999, index=99)
    origin.set_repos([{"name": "r"}])
    own = origin.own
    body = codec.encode_body(T.PEER_UPDATE, {"id": bytes(range(16)), "ts": int(hub.clock.seconds() * 1000),
                                             "rec": own.record_bytes, "rsig": own.signature})
    frame = codec.encode(T.PEER_UPDATE, ttl, body)  # the record is the signed part
    return hub.me.receive(source, frame)


def _hub_with_links(table_size):
    # 5 links: 2 outbound eager, 1 outbound plain, 2 inbound plain
    hub = Hub(table_size)
    for i in range(3):
        hub.link(f"out{i}", True)
    for i in range(2):
        hub.link(f"in{i}", False)
    assert sorted(n for n, l in hub.me.links.items() if l.eager) == ["out0", "out1"]
    return hub


def test_early_hops_flood_and_later_hops_use_eager_links_only():
    # D = 5 links, N = 102 records: D(D-1)^(hops+1) is 20, 80, 320 for 0, 1, 2
    # hops already made, so the push floods at 0 and 1 and goes eager at 2.
    for ttl, expected in ((32, ["in1", "out0", "out1", "out2"]),
                          (31, ["in1", "out0", "out1", "out2"]),
                          (30, ["out0", "out1"]),
                          (5, ["out0", "out1"])):
        hub = _hub_with_links(table_size=96)
        assert 80 <= len(hub.me.table) < 320  # 96 + own record + the 5 peers' HELLO records
        relayed = [a for a in _push_from(hub, "in0", ttl) if isinstance(a, Send)]
        assert _sent_to(relayed) == expected, ttl
        assert all(codec.decode(a.frame).ttl == ttl - 1 for a in relayed)


def test_a_small_table_means_no_flood_at_all():
    hub = _hub_with_links(table_size=0)  # N = 6 < 20
    assert _sent_to(_push_from(hub, "in0", 32)) == ["out0", "out1"]
    # an eager link that sent us the push gets nothing back
    hub = _hub_with_links(table_size=0)
    assert _sent_to(_push_from(hub, "out0", 32)) == ["out1"]


def test_without_eager_links_a_relay_falls_back_to_random_fanout():
    hub = Hub(table_size=0)
    for i in range(6):
        hub.link(f"in{i}", False)
    assert not any(l.eager for l in hub.me.links.values())
    sent = _sent_to(_push_from(hub, "in0", 20))
    assert len(sent) == constants.FANOUT and "in0" not in sent


def test_own_publish_floods_unless_our_links_are_a_quarter_of_the_network():
    small = _hub_with_links(table_size=0)  # 4 x 5 links > N = 6
    assert _sent_to(small.me.set_repos([{"name": "a"}])) == ["out0", "out1"]
    big = _hub_with_links(table_size=14)  # 20 <= 20
    assert _sent_to(big.me.set_repos([{"name": "a"}])) == ["in0", "in1", "out0", "out1", "out2"]


def _spread(seed=3, n=300):
    """One update over a converged in-memory network of ``n`` peers dialling 8
    each, 50 ms links: (time-to-100 %, duplicates per delivery, the network)."""
    clock = HeapClock(START)
    net = MemoryNetwork(clock, seed=seed, latency=0.05)
    for _ in range(n):
        net.add_node()
    net.random_graph(8)
    assert net.run_until(lambda: all(len(nd.core.table) == n for nd in net.nodes), 60.0, 0.05)
    net.run_until(lambda: False, 1.0, 0.05)
    dups0 = sum(nd.core.stats.duplicates for nd in net.nodes)
    origin = net.nodes[0]
    net.process(origin, origin.core.set_repos([{"name": "relay-test"}]))
    order = origin.core.own.order
    t0 = clock.seconds()
    assert net.run_until(lambda: net.coverage(origin.core.identity.peer_id, order) == 1.0, 5.0, 0.001)
    t100 = clock.seconds() - t0
    net.run_until(lambda: False, 1.0, 0.05)
    dups = sum(nd.core.stats.duplicates for nd in net.nodes) - dups0
    return t100, dups / (n - 1), net


def test_flood_then_eager_mesh_beats_random_fanout_at_few_duplicates(monkeypatch):
    # 300 peers, ~16 links each: the flood phase and the eager mesh reach
    # everyone in 4 hops at no more than 3 duplicates per delivery (digest
    # pings run alongside, as always); the random fan-out-3 rule, on the same
    # network, needs more hops.
    t100, dups, net = _spread()
    assert dups <= 3.0
    assert t100 <= 4 * 0.05 + 0.01
    # the eager links form one connected, symmetric mesh
    eager = {nd.index: {nd.links[lid][0] for lid, l in nd.core.links.items() if l.eager}
             for nd in net.nodes}
    assert all(a in eager[b] for a in eager for b in eager[a])
    seen, todo = {0}, [0]
    while todo:
        for b in eager[todo.pop()] - seen:
            seen.add(b)
            todo.append(b)
    assert len(seen) == len(net.nodes)
    # the rule before: every link at publish, then FANOUT random links
    monkeypatch.setattr(GossipCore, "_publish_targets", lambda self: self._ready_links())
    monkeypatch.setattr(GossipCore, "_relay_targets", lambda self, msg, src, h: self._pick(
        exclude={src.id}, count=self.fanout, lacking=h))
    t100_fanout, _, _ = _spread()
    assert t100 < t100_fanout


def test_a_hello_with_a_malformed_eager_flag_is_refused_and_the_link_stays_unready():
    import msgpack

    from peernet.gossip.core import Penalty

    hub = Hub()
    peer = _core(hub.clock, 77, index=77)
    hub.me.link_opened("bad", False, peer.identity.peer_id)
    body = {"id": bytes(16), "ts": int(hub.clock.seconds() * 1000),
            "versions": [constants.PROTOCOL_VERSION], "bc": False, "repos": 0,
            "digest": bytes(16), "n": 0, "eager": "yes"}
    actions = hub.me.receive("bad", codec.encode(T.HELLO, 0, msgpack.packb(body, use_bin_type=True)))
    assert [a.code for a in actions if isinstance(a, Penalty)] == ["malformed"]
    assert "eager must be true or false" in actions[0].detail
    link = hub.me.links["bad"]
    assert not link.hello_received and not link.eager


def test_the_fastest_outbound_links_take_the_eager_marks_and_both_ends_learn_it():
    hub = Hub()
    for i in range(4):
        hub.link(f"out{i}", True)
    me = hub.me
    assert [me.links[f"out{i}"].eager for i in range(4)] == [True, True, False, False]
    # round trips measured: out3 is much faster than the slowest eager link,
    # out2 only a little (within EAGER_SWAP_RATIO): one swap, no flapping
    for name, rtt in (("out0", 0.050), ("out1", 0.100), ("out2", 0.085)):
        assert me.link_rtt(name, rtt) == []
    assert [me.links[f"out{i}"].eager for i in range(4)] == [True, True, False, False]
    me.link_rtt("out3", 0.020)
    assert [me.links[f"out{i}"].eager for i in range(4)] == [True, False, False, True]
    # the next tick tells both ends at once (a heartbeat with or without "eager")
    frames = {a.link: codec.decode(a.frame) for a in me.tick() if isinstance(a, Send)}
    assert frames["out3"].type is T.HEARTBEAT and frames["out3"].body["eager"] is True
    assert frames["out1"].type is T.HEARTBEAT and frames["out1"].body["eager"] is False
    assert "out0" not in frames and "out2" not in frames  # nothing changed there
    for name in ("out1", "out3"):
        hub.peers[name].receive("P", me_frame(me, frames[name]))
    assert hub.peers["out3"].links["P"].eager and not hub.peers["out1"].links["P"].eager
    # later heartbeats say nothing of it, and the marks stay
    hub.clock.advance(constants.HEARTBEAT_INTERVAL)
    later = {a.link: codec.decode(a.frame) for a in me.tick() if isinstance(a, Send)}
    assert later and all("eager" not in m.body for m in later.values())
    for name in ("out1", "out3"):
        hub.peers[name].receive("P", me_frame(me, later[name]))
    assert hub.peers["out3"].links["P"].eager and not hub.peers["out1"].links["P"].eager
    # the push past the flood phase now takes out0 and out3
    hub.clock.advance(0.01)
    assert sorted(l for l, x in me.links.items() if x.eager) == ["out0", "out3"]


def me_frame(core, msg):
    return codec.encode(msg.type, msg.ttl, msg.body_bytes)


def test_rtts_change_nothing_until_every_outbound_link_is_measured():
    hub = Hub()
    for i in range(3):
        hub.link(f"out{i}", True)
    hub.me.link_rtt("out2", 0.001)
    hub.me.link_rtt("out1", 0.5)
    assert [hub.me.links[f"out{i}"].eager for i in range(3)] == [True, True, False]
    hub.me.link_rtt("out0", 0.5)
    assert [hub.me.links[f"out{i}"].eager for i in range(3)] == [True, False, True]


def test_own_publish_reaches_its_side_when_every_eager_link_is_black_holed():
    """In a small network the origin pushes its own update over its eager links
    only; when all of them lead into a cut that drops packets silently (the
    netns partition chaos test, tests/chaos/test_partition.py), the rest of its
    links must still learn of the change: the origin's own change schedules a
    digest ping naming it, as any other table change does, and the neighbours
    pull it within a second, not at the next heartbeat (HEARTBEAT_INTERVAL)."""
    clock = HeapClock(START)
    net = MemoryNetwork(clock, seed=5, latency=0.002)
    for _ in range(9):
        net.add_node()
    for a in range(9):  # a full mesh; node 0 dials 1 and 2 first: its eager links
        for b in range(a + 1, 9):
            net.connect(net.nodes[a], net.nodes[b])
    assert net.run_until(lambda: all(len(n.core.table) == 9 for n in net.nodes), 10.0)
    net.run_until(lambda: False, 1.0)
    origin = net.nodes[0]
    eager_ends = {net.nodes[0].links[l][0] for l, s in origin.core.links.items() if s.eager}
    side_a, side_b = {0, 5, 6, 7}, {1, 2, 3, 4, 8}
    assert eager_ends and eager_ends <= side_b, eager_ends

    sent = net._send

    def black_hole(node, action):
        if action.link in node.links and (
                (node.index in side_a) != (node.links[action.link][0] in side_a)):
            return  # dropped in the cut: no close, no error
        sent(node, action)

    net._send = black_hole
    pushed = origin.core.set_repos([{"name": "cut"}])
    assert {origin.links[a.link][0] for a in pushed if isinstance(a, Send)} <= side_b
    net.process(origin, pushed)
    order = origin.core.own.order
    pid = origin.core.identity.peer_id

    def side_a_has_it():
        return all(net.nodes[i].core.table.get(pid).order >= order for i in side_a - {0})

    took = net.run_until(side_a_has_it, 10.0)
    assert took is not None and took < 1.5, took
    assert not any(net.nodes[i].core.table.get(pid).order >= order for i in side_b)


def test_a_closed_eager_link_hands_its_mark_to_the_fastest_measured_outbound_link():
    hub = Hub()
    for i in range(4):
        hub.link(f"out{i}", True)
    me = hub.me
    me.link_rtt("out3", 0.030)
    me.link_rtt("out2", 0.010)  # not every link measured: the marks stay put
    assert [me.links[f"out{i}"].eager for i in range(4)] == [True, True, False, False]
    assert me.link_closed("out0") == []
    # out2, the fastest measured, is eager at once, and the next tick tells its other end
    assert sorted(n for n, l in me.links.items() if l.eager) == ["out1", "out2"]
    assert me.next_wakeup() <= hub.clock.seconds()
    frames = {a.link: codec.decode(a.frame) for a in me.tick() if isinstance(a, Send)}
    assert frames["out2"].body["eager"] is True and "out3" not in frames
    hub.peers["out2"].receive("P", me_frame(me, frames["out2"]))
    assert hub.peers["out2"].links["P"].eager
    # the connection manager's replacement dial finds the marks taken
    body, _ = hub.link("replacement", True)
    assert "eager" not in body and not me.links["replacement"].eager
