"""Record refreshes (issue 9: idle traffic under 100 B/s per link).

A refresh is the same version re-signed with a newer ``issued_at``.  Table
digests and bucket hashes hold record *identities* (peer_id, version,
tombstone), so a refresh changes no digest: it starts no digest ping, names
nothing in ``recent`` and starts no bucket sync; it spreads by push alone and
extends the record's life.  The owner declares a lifetime that grows with the
network it sees (bounded by every receiver), and refreshes
LIFETIME_REFRESHES times per lifetime.
"""

import random

import pytest
from twisted.internet.task import Clock

from peernet import constants
from peernet.errors import BadRequest
from peernet.gossip import codec
from peernet.gossip.codec import MessageType as T
from peernet.gossip import core as core_module
from peernet.gossip.core import GossipCore, Send
from peernet.gossip.memnet import MemoryNetwork
from peernet.gossip.table import (PeerTable, entry_from_wire, lifetime_for, record_lifetime,
                                  refresh_interval_for)
from peernet.identity import NodeIdentity
from peernet.records import b64decode, canonical_json, make_record, verify_signed_record

START = 1_800_000_000.0
ADDR = ["wss://127.0.0.9:8701/gossip"]


def signed(identity, issued_at, version=1, lifetime=None, broadcasting=True):
    return make_record(identity, ADDR if broadcasting else [], version=version,
                       issued_at_ms=int(issued_at * 1000), lifetime=lifetime,
                       is_broadcasting=broadcasting)


def entry(identity, issued_at, version=1, lifetime=None, broadcasting=True):
    s = signed(identity, issued_at, version, lifetime, broadcasting)
    return entry_from_wire(canonical_json(s["record"]), b64decode(s["signature"], "signature"))


def clock_at(t=START):
    clock = Clock()
    clock.advance(t)
    return clock


def run(clock, seconds, step=0.01):
    """Advance in small steps (Clock.advance runs every call due at the *end*
    time, so one long jump would deliver frames with stale timestamps)."""
    end = clock.seconds() + seconds
    while clock.seconds() < end - 1e-9:
        clock.advance(min(step, end - clock.seconds()))


def line(n, clock, seed=1):
    """n broadcasting cores in a line 0 - 1 - ... - n-1, converged."""
    net = MemoryNetwork(clock, seed=seed, latency=0.01)
    nodes = [net.add_node() for _ in range(n)]
    for a, b in zip(nodes, nodes[1:]):
        net.connect(a, b)
    net.run_until(lambda: all(len(x.core.table) == n for x in nodes), 10.0, step=0.01)
    assert all(len(x.core.table) == n for x in nodes)
    return net, nodes


class WatchedNetwork(MemoryNetwork):
    """MemoryNetwork that keeps every frame sent: (time, node index, decoded)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.log = []

    def _send(self, node, action):
        self.log.append((self.clock.seconds(), node.index, codec.decode(action.frame)))
        super()._send(node, action)

    def since(self, t):
        return [m for when, _, m in self.log if when >= t]


def is_ping(msg):
    return msg.type is T.HEARTBEAT and "recent" in msg.body


def sent(node, mtype):
    return node.core.stats.by_type_out.get(mtype, 0)


# -- the table ---------------------------------------------------------------------------


def test_a_refresh_changes_no_digest_and_no_bucket_hash_but_replaces_the_copy():
    me, other = NodeIdentity.generate(), NodeIdentity.generate()
    table = PeerTable()
    assert table.offer(entry(other, START), START) == "added"
    assert table.offer(entry(me, START), START) == "added"
    digest, buckets = table.digest(), table.bucket_hashes()
    fresh = entry(me, START + 1800)
    assert table.offer(fresh, START + 1800) == "refreshed"
    assert table.digest() == digest and table.bucket_hashes() == buckets
    assert table.get(me.peer_id) is fresh
    assert table.known_copy(fresh.record_bytes, fresh.signature) is fresh
    # The refreshed copy lives a lifetime past its own issued_at.
    assert me.peer_id not in table.expire(START + constants.RECORD_LIFETIME + 1)
    assert me.peer_id in table
    # An older copy of the same version does not come back.
    assert table.offer(entry(me, START + 900), START + 1800) is None
    # A new version and a tombstone do change the digest.
    assert table.offer(entry(me, START + 1801, version=2), START + 1801) == "updated"
    d2 = table.digest()
    assert d2 != digest
    assert table.offer(entry(me, START + 1802, version=3, broadcasting=False), START + 1802) == "updated"
    assert table.digest() not in (digest, d2)


def test_two_tables_with_different_issue_times_of_one_version_agree():
    me = NodeIdentity.generate()
    a, b = PeerTable(), PeerTable()
    a.offer(entry(me, START), START)
    b.offer(entry(me, START + 600, lifetime=4 * 3600), START + 600)
    assert a.digest() == b.digest()
    assert a.differing_buckets(b.bucket_hashes()) == set()


def test_declared_lifetime_sets_expiry_and_is_bounded():
    me = NodeIdentity.generate()
    long = entry(me, START, lifetime=5 * 86400)
    assert long.expires_at == START + 5 * 86400
    table = PeerTable()
    table.offer(long, START)
    assert table.expire(START + 4 * 86400) == []
    assert table.expire(START + 5 * 86400) == [me.peer_id]
    # No field: the default lifetime.
    assert entry(me, START).expires_at == START + constants.RECORD_LIFETIME
    # Out-of-range values are clamped by every receiver, whatever the path...
    assert record_lifetime({"lifetime": 10}) == constants.RECORD_LIFETIME
    assert record_lifetime({"lifetime": 10 ** 9}) == constants.MAX_RECORD_LIFETIME
    # ... and refused by the schema with one clear error (gossip and bootstrap).
    for bad in (constants.RECORD_LIFETIME - 1, constants.MAX_RECORD_LIFETIME + 1):
        s = signed(me, START, lifetime=bad)
        with pytest.raises(BadRequest):
            verify_signed_record(s)
        with pytest.raises(BadRequest):
            entry_from_wire(canonical_json(s["record"]), b64decode(s["signature"], "signature"))
    ok = signed(me, START, lifetime=constants.MAX_RECORD_LIFETIME)
    assert verify_signed_record(ok)["lifetime"] == constants.MAX_RECORD_LIFETIME


def test_a_non_integer_lifetime_is_refused():
    me = NodeIdentity.generate()
    s = signed(me, START)
    s["record"]["lifetime"] = True
    s["signature"] = make_record(me, ADDR, version=1, issued_at_ms=int(START * 1000))["signature"]
    with pytest.raises(BadRequest):
        verify_signed_record(s)


def test_refresh_interval_grows_with_the_network_and_is_capped():
    assert refresh_interval_for(1) == constants.RECORD_REFRESH_INTERVAL
    assert lifetime_for(1) == constants.RECORD_LIFETIME
    assert refresh_interval_for(1000) == 1000 * constants.REFRESH_SECONDS_PER_PEER
    assert refresh_interval_for(100_000) == 100_000 * constants.REFRESH_SECONDS_PER_PEER
    cap = constants.MAX_RECORD_LIFETIME // constants.LIFETIME_REFRESHES
    assert refresh_interval_for(10 ** 7) == cap
    assert lifetime_for(10 ** 7) == constants.MAX_RECORD_LIFETIME
    # The network-wide refresh rate N / interval never exceeds 1 / REFRESH_SECONDS_PER_PEER
    # below the cap.
    for n in (10, 100, 360, 1000, 10_000, 100_000, 129_600):
        assert n / refresh_interval_for(n) <= 1 / constants.REFRESH_SECONDS_PER_PEER + 1e-12


def test_a_snapshot_keeps_the_declared_lifetime_and_the_digest():
    me, other = NodeIdentity.generate(), NodeIdentity.generate()
    table = PeerTable()
    table.offer(entry(me, START, lifetime=3 * 86400), START)
    table.offer(entry(other, START), START)
    copy = PeerTable()
    assert copy.load_snapshot_bytes(table.snapshot_bytes(), START + 86400) == 1
    assert copy.get(me.peer_id).expires_at == START + 3 * 86400  # the other one lapsed
    copy.offer(entry(other, START + 86400), START + 86400)
    table.offer(entry(other, START + 86400), START + 86400)
    assert copy.digest() == table.digest()


# -- the core ----------------------------------------------------------------------------


def test_a_refresh_spreads_by_push_with_no_digest_ping_and_no_sync():
    # origin - hub - 6 leaves the hub dialled: past the flood phase (7 links,
    # 8 records) the hub forwards the push over its eager links only, its
    # first EAGER_LINKS (2) outbound ones; the leaves it skips keep the older
    # copy (same digest) and are NOT pinged, as they would be for an update.
    clock = clock_at()
    net = WatchedNetwork(clock, seed=3, latency=0.01)
    origin, hub = net.add_node(), net.add_node()
    leaves = [net.add_node() for _ in range(6)]
    net.connect(origin, hub)
    for leaf in leaves:
        net.connect(hub, leaf)
    nodes = [origin, hub] + leaves
    run(clock, 60)  # HELLO-time syncs and pings settle
    assert all(len(n.core.table) == len(nodes) for n in nodes)
    digests = [n.core.table.digest() for n in nodes]
    old_issue = origin.core.own.record["issued_at"]
    run(clock, 5)
    t0 = clock.seconds()
    net.process(origin, origin.core._publish(
        T.PEER_ANNOUNCEMENT, origin.core._issue_record(True, bump=False)))
    run(clock, 1.0)  # well under a heartbeat: only the push and what it causes
    pid = origin.core.identity.peer_id
    issued = [n.core.table.get(pid).record["issued_at"] for n in nodes[1:]]
    assert issued.count(old_issue) == len(leaves) - constants.EAGER_LINKS  # push alone missed them
    for n in nodes[1:]:
        refreshed = n.core.table.get(pid).record["issued_at"] > old_issue
        assert refreshed == any(c.kind == "refreshed" and c.peer_id == pid for _, c in n.changes)
        for link in n.core.links.values():
            assert link.ping_due is None and link.recent == {}
    assert [n.core.table.digest() for n in nodes] == digests
    types = [m.type for m in net.since(t0)]
    assert set(types) <= {T.PEER_ANNOUNCEMENT, T.HEARTBEAT}
    assert types.count(T.PEER_ANNOUNCEMENT) == 1 + constants.EAGER_LINKS  # origin -> hub -> 2 leaves
    assert not any(is_ping(m) for m in net.since(t0)), "a refresh caused a digest ping"
    # Nor does the next regular heartbeat round find anything to sync.
    run(clock, constants.HEARTBEAT_INTERVAL + 1, step=0.05)
    assert not [m for m in net.since(t0) if m.type is T.PEER_REQUEST or is_ping(m)]


def test_the_owner_refreshes_on_its_declared_schedule():
    clock = clock_at()
    net, nodes = line(2, clock)
    owner = nodes[0]
    first = owner.core.own
    assert "lifetime" not in first.record  # 2 peers: the default lifetime, no field
    early = constants.REFRESH_JITTER * constants.RECORD_REFRESH_INTERVAL
    run(clock, constants.RECORD_REFRESH_INTERVAL - early - 5, step=0.25)
    assert owner.core.own is first
    run(clock, early + 10)
    assert owner.core.own is not first
    took = (owner.core.own.record["issued_at"] - first.record["issued_at"]) / 1000
    assert constants.RECORD_REFRESH_INTERVAL - early <= took <= constants.RECORD_REFRESH_INTERVAL + 0.25
    assert owner.core.own.record["version"] == first.record["version"]
    assert owner.core.own.record["issued_at"] > first.record["issued_at"]
    # The neighbour took the refresh (push) and its digest did not move.
    assert nodes[1].core.table.get(owner.core.identity.peer_id).order == owner.core.own.order


def test_a_large_table_makes_the_owner_declare_a_longer_lifetime_and_tombstones_keep_it():
    clock = clock_at()
    core = GossipCore(NodeIdentity.generate(), clock, random.Random(1), broadcasting=True,
                      addresses=ADDR)
    n = 500
    for _ in range(n - 1):
        core.table.offer(entry(NodeIdentity.generate(), START), START)
    clock.advance(constants.RECORD_REFRESH_INTERVAL)
    core.tick()
    own = core.own.record
    assert own["lifetime"] == lifetime_for(n) == 4 * n * constants.REFRESH_SECONDS_PER_PEER
    interval = n * constants.REFRESH_SECONDS_PER_PEER
    assert (own["issued_at"] / 1000 + (1 - constants.REFRESH_JITTER) * interval
            <= core._refresh_due() <= own["issued_at"] / 1000 + interval)
    assert core.next_wakeup() <= core._refresh_due()
    # The others lapse (the table is small again); a tombstone issued now
    # still lives as long as the last live record did.
    core.table.expire(clock.seconds() + constants.RECORD_LIFETIME)
    assert len(core.table.live_broadcasting()) == 1
    core.set_broadcast(False)
    assert core.own.is_tombstone and core.own.record["lifetime"] == own["lifetime"]


def heartbeat_frame(clock, digest, recent):
    body = codec.encode_body(T.HEARTBEAT, {
        "id": bytes(range(16)), "ts": int(clock.seconds() * 1000), "digest": digest,
        "n": 3, "load": 0, "recent": recent})
    return codec.encode(T.HEARTBEAT, constants.TTL_HEARTBEAT, body)


def test_a_ping_naming_a_newer_issue_of_a_version_we_hold_asks_for_nothing():
    clock = clock_at()
    net, (a, b, c) = line(3, clock)
    run(clock, 60)
    pid = c.core.identity.peer_id
    held = b.core.table.get(pid)
    link_id = next(lid for lid, (other, _) in b.links.items() if other == a.index)
    v, ia = held.record["version"], held.record["issued_at"]
    other_digest = bytes(16)
    # Same version, a later issue: b holds that version, nothing to ask.
    acts = b.core.receive(link_id, heartbeat_frame(clock, other_digest, [[bytes.fromhex(pid), v, ia + 60_000]]))
    assert acts == []
    clock.advance(core_module.ASK_DELAY)
    assert not [x for x in b.core.tick() if isinstance(x, Send) and x.link == link_id
                and codec.decode(x.frame).type is T.PEER_REQUEST]
    # A newer version named: b asks for exactly that record, ASK_DELAY later
    # (if no push brought it meanwhile).
    acts = b.core.receive(link_id, heartbeat_frame(clock, other_digest, [[bytes.fromhex(pid), v + 1, ia]]))
    assert acts == []
    clock.advance(core_module.ASK_DELAY)
    frames = [codec.decode(x.frame) for x in b.core.tick() if isinstance(x, Send) and x.link == link_id]
    assert [(f.type, f.body.get("peer")) for f in frames if f.type is T.PEER_REQUEST] == [(T.PEER_REQUEST, pid)]


def test_an_expired_copy_comes_back_from_a_neighbour_once_and_no_sync_loop_follows():
    clock = clock_at()
    net, (owner, b, a) = line(3, clock)
    pid = owner.core.identity.peer_id
    run(clock, 60)
    # The owner refreshes; only b gets it (a missed it: its copy stays old).
    fresh = owner.core._issue_record(True, bump=False)
    assert b.core.table.offer(fresh, clock.seconds()) == "refreshed"
    old = a.core.table.get(pid)
    assert old.order < fresh.order and a.core.table.digest() == b.core.table.digest()
    net.kill(owner)  # it crashes: no further refreshes
    # a's old copy lapses; its digest now differs from b's, and the next
    # heartbeat's bucket sync brings b's live copy back.
    run(clock, old.expires_at - clock.seconds() + 0.5, step=0.25)
    net.run_until(lambda: a.core.table.get(pid) is None, 5.0, step=0.25)
    net.run_until(lambda: a.core.table.get(pid) is not None, 2 * constants.HEARTBEAT_INTERVAL,
                  step=0.25)
    back = a.core.table.get(pid)
    assert back is not None and back.order == fresh.order
    kinds = [c.kind for _, c in a.changes if c.peer_id == pid]
    assert kinds[-2:] == ["removed", "added"]
    assert a.core.table.digest() == b.core.table.digest()
    # Restored once: over the next ten heartbeats nobody syncs again.
    syncs = sent(a, T.PEER_REQUEST) + sent(b, T.PEER_REQUEST)
    run(clock, 10 * constants.HEARTBEAT_INTERVAL, step=0.25)
    assert sent(a, T.PEER_REQUEST) + sent(b, T.PEER_REQUEST) == syncs
    # When b's copy lapses too, both drop it and agree again.
    run(clock, fresh.expires_at - clock.seconds() + 2, step=0.25)
    assert a.core.table.get(pid) is None and b.core.table.get(pid) is None
    assert a.core.table.digest() == b.core.table.digest()
    assert not a.penalties and not b.penalties


def test_a_tombstone_still_spreads_with_digest_pings():
    clock = clock_at()
    net, nodes = line(4, clock)
    run(clock, 60)
    owner = nodes[0]
    pid = owner.core.identity.peer_id
    net.process(owner, owner.core.set_broadcast(False))
    run(clock, 1.0)
    for n in nodes[1:]:
        assert n.core.table.get(pid).is_tombstone
    assert len({n.core.table.digest() for n in nodes}) == 1


def test_an_idle_network_over_two_refresh_rounds_sends_heartbeats_and_pushes_only():
    clock = clock_at()
    net = WatchedNetwork(clock, seed=4, latency=0.01)
    nodes = [net.add_node() for _ in range(10)]
    net.random_graph(3)
    run(clock, 60, step=0.05)
    assert all(len(n.core.table) == len(nodes) for n in nodes)
    first = {n.index: n.core.own for n in nodes}
    t0 = clock.seconds()
    run(clock, 2 * constants.RECORD_REFRESH_INTERVAL + 10, step=0.05)
    types = {m.type for m in net.since(t0)}
    assert types == {T.HEARTBEAT, T.PEER_ANNOUNCEMENT}, types
    assert not any(is_ping(m) for m in net.since(t0))
    # Every owner refreshed twice (tick), and every table holds every record
    # at its latest issue or an older issue of the same version.
    for n in nodes:
        assert n.core.own.record["version"] == first[n.index].record["version"]
        assert n.core.own.record["issued_at"] >= first[n.index].record["issued_at"] + 2 * 0.9 * 1800 * 1000
        for other in nodes:
            e = n.core.table.get(other.core.identity.peer_id)
            assert e is not None and e.record["version"] == other.core.own.record["version"]
    assert len({n.core.table.digest() for n in nodes}) == 1
    assert not any(n.penalties for n in nodes)


def test_a_copy_refused_as_expired_is_not_sent_again_and_the_digests_settle():
    """b's clock is 20 s behind a's.  A record lapses at a first: its digest
    differs, it syncs, b (for which the record is still live) answers with
    it, a refuses it as expired.  b marks it known on the link and does not
    send it again; 20 s later it lapses at b too and the digests agree."""
    skew = 20.0
    ca, cb = clock_at(), clock_at(START - skew)
    a = GossipCore(NodeIdentity.generate(), ca, random.Random(1), broadcasting=True, addresses=ADDR)
    b = GossipCore(NodeIdentity.generate(), cb, random.Random(2), broadcasting=True, addresses=ADDR)
    owner = NodeIdentity.generate()
    rec = entry(owner, START)
    assert a.table.offer(rec, ca.seconds()) and b.table.offer(rec, cb.seconds())
    expired_at_a = rec.expires_at
    cores = {"a": (a, "ab"), "b": (b, "ba")}  # name -> (core, its link id)
    sent_rec = []

    def pump(name, actions):
        queue = [(name, actions)]
        while queue:
            src, acts = queue.pop(0)
            dst = "b" if src == "a" else "a"
            for act in acts:
                if isinstance(act, Send):
                    msg = codec.decode(act.frame)
                    if src == "b" and msg.type is T.PEER_LIST_RESPONSE:
                        sent_rec.extend(r for r, _ in msg.body["recs"] if r == rec.record_bytes)
                    core, link = cores[dst]
                    queue.append((dst, core.receive(link, act.frame)))

    # Open the link 10 s in, so a heartbeat falls inside the 20 s when the
    # record has lapsed at a but not yet at b.
    ca.advance(10)
    cb.advance(10)
    hello_a = a.link_opened("ab", True, b.identity.peer_id)
    hello_b = b.link_opened("ba", False, a.identity.peer_id)
    pump("a", hello_a)
    pump("b", hello_b)
    assert a.table.digest() == b.table.digest()
    # Tick both (their own records refresh every 30 min: pushes, no syncs).
    while ca.seconds() < expired_at_a + 2 * constants.HEARTBEAT_INTERVAL + 1:
        ca.advance(0.5)
        cb.advance(0.5)
        pump("a", a.tick())
        pump("b", b.tick())
    assert owner.peer_id not in a.table and owner.peer_id not in b.table
    # b offered it back exactly once (a refused it as expired), not in a loop.
    assert len(sent_rec) == 1
    assert a.table.digest() == b.table.digest()


def test_an_owner_counts_refreshing_peers_not_crashed_ones():
    table = PeerTable()
    now = START + 3 * 3600
    live = [entry(NodeIdentity.generate(), now - 600) for _ in range(5)]
    # records past half their lifetime: their owners stopped refreshing
    stale = [entry(NodeIdentity.generate(), now - constants.RECORD_LIFETIME / 2 - 1) for _ in range(3)]
    long_ = entry(NodeIdentity.generate(), now - 86400, lifetime=4 * 86400)  # 1 of 4 days: counts
    tomb = entry(NodeIdentity.generate(), now - 60, version=2, broadcasting=False)
    for e in live + stale + [long_, tomb]:
        assert table.offer(e, now)
    assert table.refreshing_peers(now) == 6


def test_a_pushed_record_with_an_out_of_range_lifetime_is_refused_with_a_penalty():
    clock = clock_at()
    net, (a, b) = line(2, clock)
    link_id = next(iter(b.links))
    owner = NodeIdentity.generate()
    for bad in (60, constants.MAX_RECORD_LIFETIME + 1):
        s = signed(owner, clock.seconds(), lifetime=bad)
        body = codec.encode_body(T.PEER_ANNOUNCEMENT, {
            "id": bytes(15) + bytes([bad % 256]), "ts": int(clock.seconds() * 1000),
            "rec": canonical_json(s["record"]), "rsig": b64decode(s["signature"], "signature")})
        acts = b.core.receive(link_id, codec.encode(T.PEER_ANNOUNCEMENT, 5, body))
        assert [type(x).__name__ for x in acts] == ["Penalty"] and acts[0].code == "invalid_body"
        assert owner.peer_id not in b.core.table


def test_refreshes_of_owners_that_started_together_drift_apart():
    """No lockstep: every copy is re-signed a random 0-10 % of the interval
    early, so owners started in the same second refresh at different times,
    and drift further apart each round."""
    clock = clock_at()
    cores = [GossipCore(NodeIdentity.generate(), clock, random.Random(seed), broadcasting=True,
                        addresses=ADDR) for seed in range(20)]
    interval = constants.RECORD_REFRESH_INTERVAL
    spreads = []
    for _ in range(3):
        for c in cores:
            issued = c.own.record["issued_at"] / 1000
            assert issued + (1 - constants.REFRESH_JITTER) * interval <= c._refresh_due() <= issued + interval
        last = max(c._refresh_due() for c in cores)
        while clock.seconds() < last:  # each owner ticks when it is due, as the transport does
            clock.advance(min(1.0, max(0.001, min(c.next_wakeup() for c in cores) - clock.seconds())))
            for c in cores:
                if c.next_wakeup() <= clock.seconds():
                    c.tick()
        issued = sorted(c.own.record["issued_at"] / 1000 for c in cores)
        spreads.append(issued[-1] - issued[0])
    assert spreads[0] > 0.03 * interval  # 20 draws spread over 10 % of it
    assert spreads[2] > spreads[0]
