"""A newcomer syncs its table from one link at a time (GossipCore._start_sync,
SYNC_SETTLE; docs/protocol.md "Anti-entropy").  It says HELLO on all its links
at once and every digest differs; synced from all of them at once it took the
whole table from each (a join cost ~1.4 x the table per link)."""

from twisted.internet.task import Clock

from peernet.gossip import codec
from peernet.gossip import core as core_module
from peernet.gossip.codec import MessageType as T
from peernet.gossip.memnet import MemoryNetwork
from peernet.gossip.table import entry_from_wire
from peernet.identity import NodeIdentity
from peernet.records import b64decode, canonical_json, make_record

START = 1_800_000_000.0


class WatchedNetwork(MemoryNetwork):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.log = []

    def _send(self, node, action):
        to = node.links.get(action.link, (None,))[0]
        self.log.append((self.clock.seconds(), node.index, to, codec.decode(action.frame)))
        super()._send(node, action)


def run(clock, seconds, step=0.01):
    end = clock.seconds() + seconds
    while clock.seconds() < end - 1e-9:
        clock.advance(min(step, end - clock.seconds()))


def network(n, seed=1):
    clock = Clock()
    clock.advance(START)
    net = WatchedNetwork(clock, seed=seed, latency=0.02)
    nodes = [net.add_node() for _ in range(n)]
    net.random_graph(degree_out=3)
    run(clock, 10.0)
    assert all(len(x.core.table) == n for x in nodes)
    return clock, net, nodes


def records_sent_to(net, index, since):
    return sum(len(m.body["recs"]) for when, _, to, m in net.log
               if to == index and when >= since and m.type is T.PEER_LIST_RESPONSE and m.ttl == 0)


def join(net, nodes, links):
    newcomer = net.add_node()
    for other in links:
        net.connect(newcomer, other)
    return newcomer


def test_a_newcomer_takes_the_table_from_one_link_not_from_each():
    clock, net, nodes = network(40)
    t0 = clock.seconds()
    newcomer = join(net, nodes, nodes[:6])
    run(clock, 5.0)
    assert len(newcomer.core.table) == 41
    got = records_sent_to(net, newcomer.index, t0)
    # one table's worth (less what HELLOs carried), not 6 x 40
    assert 30 <= got <= 50, got
    answering = {frm for when, frm, to, m in net.log if to == newcomer.index and when >= t0
                 and m.type is T.PEER_LIST_RESPONSE and m.body["recs"]}
    assert len(answering) == 1


def test_the_old_rule_took_the_table_from_every_link(monkeypatch):
    """The same join with the one-at-a-time rule off (the sync in progress is
    forgotten as soon as it starts): the measure above then fails."""
    original = core_module.GossipCore._start_sync

    def every_link_at_once(self, link):
        actions = original(self, link)
        self._sync_link = None
        return actions
    monkeypatch.setattr(core_module.GossipCore, "_start_sync", every_link_at_once)
    clock, net, nodes = network(40)
    t0 = clock.seconds()
    newcomer = join(net, nodes, nodes[:6])
    run(clock, 5.0)
    assert len(newcomer.core.table) == 41
    assert records_sent_to(net, newcomer.index, t0) >= 4 * 40


def test_a_deferred_link_whose_digest_still_differs_syncs_after_the_first():
    clock, net, nodes = network(20)
    # b holds one record nobody else has (never spread): after the newcomer's
    # first sync (from a), its digest still differs from b's.
    a, b = nodes[0], nodes[1]
    extra = make_record(NodeIdentity.generate(), ["wss://127.0.0.9:1/gossip"], version=1,
                        issued_at_ms=int(clock.seconds() * 1000))
    e = entry_from_wire(canonical_json(extra["record"]), b64decode(extra["signature"], "signature"))
    b.core.table.offer(e, clock.seconds())
    t0 = clock.seconds()
    newcomer = net.add_node()
    net.connect(newcomer, a)
    run(clock, 0.001)
    net.connect(newcomer, b)
    run(clock, 0.3)
    assert newcomer.core.table.get(e.peer_id) is None  # b's sync waits for a's
    assert newcomer.core.links[next(l for l, (o, _) in newcomer.links.items() if o == b.index)].sync_deferred
    run(clock, core_module.SYNC_SETTLE + 1.0)
    assert newcomer.core.table.get(e.peer_id) is not None
    asked_b = [m for when, frm, to, m in net.log if frm == newcomer.index and to == b.index
               and when >= t0 and m.type is T.PEER_REQUEST and "sync" in m.body]
    assert asked_b


def test_a_newcomers_record_spreads_by_push_from_its_first_neighbours():
    """The neighbours that learn a new record from a HELLO forward it as the
    first hop of a push (PEER_ANNOUNCEMENT): everyone has it within a few
    link delays, and nobody has to ask for it."""
    clock, net, nodes = network(60, seed=3)
    t0 = clock.seconds()
    newcomer = join(net, nodes, nodes[:4])
    pid = newcomer.core.identity.peer_id
    run(clock, 0.5)
    assert all(n.core.table.get(pid) is not None for n in nodes)
    sent = [(frm, m) for when, frm, to, m in net.log if when >= t0]
    assert not [m for _, m in sent if m.type is T.PEER_REQUEST and "peer" in m.body]
    pushes = [frm for frm, m in sent if m.type is T.PEER_ANNOUNCEMENT]
    assert newcomer.index not in pushes  # its HELLOs were its publish
    assert {n.index for n in nodes[:4]} <= set(pushes)


def test_a_hello_record_we_hold_already_goes_nowhere():
    clock, net, nodes = network(20, seed=5)
    a, b = nodes[0], nodes[1]
    if any(other == b.index for other, _ in a.links.values()):
        b = next(n for n in nodes[2:] if all(o != n.index for o, _ in a.links.values()))
    t0 = clock.seconds()
    net.connect(a, b)  # two peers that know each other's records meet
    run(clock, 1.0)
    assert not [m for when, frm, to, m in net.log if when >= t0 and m.type is T.PEER_ANNOUNCEMENT]
