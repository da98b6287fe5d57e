"""GossipService over real sockets on loopback: wss + mutual TLS + GossipCore.

Every wait is bounded (WAIT seconds); every service, port and raw client is
stopped at the end of its test.  Timing knobs (reconnect delays) are turned
down so the whole file runs in a few seconds.
"""

import dataclasses
import random

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.logger import formatEvent, globalLogPublisher

from peernet import constants
from peernet.gossip.codec import MessageType, decode
from peernet.identity import NodeIdentity
from peernet.peer import connector
from peernet.peer.connector import DialPlanner
from peernet.peer.links import CLOSE_POLICY_VIOLATION, CLOSE_UNSUPPORTED_DATA
from peernet.peer.transport import GossipService, gossip_address, parse_gossip_address
from peernet.records import make_record
from peernet.tls import MutualTLS

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0
LOOPBACK = "tcp:0:interface=127.0.0.1"


def _reactor():
    from twisted.internet import reactor

    return reactor


async def wait_until(predicate, timeout=WAIT, what="condition"):
    reactor = _reactor()
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


async def sleep(seconds):
    await task.deferLater(_reactor(), seconds, lambda: None)


def _bounded(d, seconds=WAIT):
    return d.addTimeout(seconds, _reactor())


class Cluster:
    """Starts GossipServices and raw clients; stops all of them afterwards."""

    def __init__(self):
        self.services = []
        self.raw = []

    async def node(self, broadcasting=True, identity=None, listen=LOOPBACK, **kw):
        kw.setdefault("reconnect_base_delay", 0.05)
        kw.setdefault("reconnect_max_delay", 0.5)
        svc = GossipService(_reactor(), identity or NodeIdentity.generate(),
                            broadcasting=broadcasting,
                            listen=listen if broadcasting else None, **kw)
        svc.startService()
        self.services.append(svc)
        await _bounded(svc.when_started())
        return svc

    async def raw_client(self, server, identity=None, protocols=(constants.WEBSOCKET_SUBPROTOCOL,),
                         bind=None):
        """A bare Autobahn client, mTLS-pinned to ``server``; returns it once
        the TCP connection exists (the WebSocket may still be refused)."""
        port = server.listening_port.getHost().port
        creator = MutualTLS(identity or NodeIdentity.generate(),
                            expected_peer_id=server.identity.peer_id)
        factory = WebSocketClientFactory(f"wss://127.0.0.1:{port}/gossip",
                                         protocols=list(protocols))
        factory.protocol = RawClient
        endpoint = wrapClientTLS(creator, HostnameEndpoint(
            _reactor(), "127.0.0.1", port, timeout=WAIT, bindAddress=bind))
        client = await _bounded(endpoint.connect(factory))
        self.raw.append(client)
        return client

    async def stop(self):
        for client in self.raw:
            if client.transport is not None and not client.lost:
                client.transport.abortConnection()
        for svc in self.services:
            if svc.running:
                await _bounded(svc.stopService(), WAIT)
        # Let the aborted connections' connectionLost run.
        await sleep(0.05)


class RawClient(WebSocketClientProtocol):
    def __init__(self):
        super().__init__()
        self.opened = defer.Deferred()
        self.closed = defer.Deferred()
        self.messages = []
        self.close_code = None
        self.open_now = False
        self.lost = False

    def connectionLost(self, reason):
        self.lost = True
        super().connectionLost(reason)

    def onOpen(self):
        self.open_now = True
        self.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.messages.append((payload, isBinary))

    def onClose(self, wasClean, code, reason):
        self.open_now = False
        self.close_code = code
        if not self.closed.called:
            self.closed.callback(code)


@pytest_twisted.async_yield_fixture
async def cluster():
    c = Cluster()
    try:
        yield c
    finally:
        await c.stop()


def signed(svc):
    return svc.core.own_signed_record()


def table_ids(svc):
    return {e.peer_id for e in svc.core.table}


async def trio(cluster):
    """Broadcasting A and B, silent C.  B and C know only A's record at first."""
    a = await cluster.node()
    b = await cluster.node()
    c = await cluster.node(broadcasting=False)
    b.add_seed_records([signed(a)])
    c.add_seed_records([signed(a)])
    want = {a.identity.peer_id, b.identity.peer_id}
    await wait_until(lambda: table_ids(a) == want and table_ids(b) == want
                     and table_ids(c) == want, what="every table to hold A and B")
    await wait_until(lambda: len(c.open_links(outbound=True)) == 2, what="C linked to A and B")
    return a, b, c


# -- (a) (b) (c): records flow, updates spread, the silent node searches ---------------


@pytest_twisted.ensureDeferred
async def test_records_flow_between_broadcasting_and_silent_nodes(cluster):
    a, b, c = await trio(cluster)
    silent_id = c.identity.peer_id
    for svc in (a, b):
        assert silent_id not in table_ids(svc)
        assert len(svc.core.table) == 2
    # One link between A and B, whoever dialled; C dials out only.
    assert len(a.open_links()) + len(b.open_links()) == 4  # A-B counted twice, C-A, C-B
    assert c.open_links(outbound=False) == []
    assert c.listening_port is None
    # The silent node never published anything.
    assert c.core.own_signed_record() is None and not c.broadcasting


@pytest_twisted.ensureDeferred
async def test_peer_update_reaches_the_others(cluster):
    a, b, c = await trio(cluster)
    a.set_repos([{"name": "films"}])

    def has_films(svc):
        entry = svc.core.table.get(a.identity.peer_id)
        return entry is not None and "films" in entry.repo_names()

    await wait_until(lambda: has_films(b) and has_films(c), what="the PEER_UPDATE")
    assert a.core.stats.by_type_out.get(MessageType.PEER_UPDATE, 0) >= 1


@pytest_twisted.ensureDeferred
async def test_silent_node_search_finds_the_record(cluster):
    a, b, c = await trio(cluster)
    a.set_repos([{"name": "films"}])
    await wait_until(lambda: c.core.table.find_repo("films"), what="the update at C")

    # Local table first: instant.
    found = await _bounded(c.search(repo="films", timeout=3.0))
    assert [r["record"]["peer_id"] for r in found] == [a.identity.peer_id]
    assert found[0]["record"]["repos"] == [{"name": "films"}]

    # Network path: C forgets A's record, asks its neighbours (PEER_REQUEST)
    # and gets A's own signed record back.
    c.core.table._remove(c.core.table.get(a.identity.peer_id))
    reactor = _reactor()
    started = reactor.seconds()
    found = await _bounded(c.search(repo="films", timeout=3.0))
    assert [r["record"]["peer_id"] for r in found] == [a.identity.peer_id]
    assert reactor.seconds() - started < 3.0  # ended on settling, not on the timeout
    # Unknown repo: an empty answer at the timeout.
    assert await _bounded(c.search(repo="nothing-here", timeout=0.3)) == []


@pytest_twisted.ensureDeferred
async def test_simultaneous_dials_leave_one_link(cluster):
    for _ in range(3):
        a = await cluster.node()
        b = await cluster.node()
        # Both learn of each other at once and dial each other.
        a.add_seed_records([signed(b)])
        b.add_seed_records([signed(a)])
        await wait_until(lambda: len(a.open_links()) == 1 and len(b.open_links()) == 1
                         and a.core.links and b.core.links
                         and all(s.hello_received for s in a.core.links.values())
                         and all(s.hello_received for s in b.core.links.values()),
                         what="one link")
        await sleep(0.1)
        assert len(a.open_links()) == 1 and len(b.open_links()) == 1
        assert a.open_links()[0].outbound != b.open_links()[0].outbound
        assert len(a.core.links) == 1 and len(b.core.links) == 1


@pytest_twisted.ensureDeferred
async def test_seed_records_are_verified(cluster):
    a = await cluster.node()
    c = await cluster.node(broadcasting=False)
    good = signed(a)
    forged = {"record": dict(good["record"], addresses=["wss://203.0.113.9:1/gossip"]),
              "signature": good["signature"]}
    assert c.add_seed_records([forged, {"record": "x"}, {}]) == 0
    assert c.rejected_seed_records == 3
    assert len(c.core.table) == 0
    own = c.core.own_signed_record()
    assert own is None
    assert c.add_seed_records([good, good]) == 1


@pytest_twisted.ensureDeferred
async def test_broadcast_toggle_relinks_and_tombstones(cluster):
    a = await cluster.node()
    s = await cluster.node(broadcasting=False, listen=None)
    s.listen = LOOPBACK
    s.add_seed_records([signed(a)])
    await wait_until(lambda: len(s.open_links()) == 1, what="the silent link")
    silent_link = s.open_links()[0]
    sent = []
    original_send = silent_link.protocol.sendMessage
    silent_link.protocol.sendMessage = lambda payload, isBinary=False, **kw: (
        sent.append(payload), original_send(payload, isBinary, **kw))[1]
    await _bounded(s.set_broadcast(True))
    # Nothing that names S went over the link made with a throwaway key.
    assert all(decode(f).type not in (MessageType.PEER_UPDATE, MessageType.PEER_ANNOUNCEMENT)
               for f in sent)
    assert s.listening_port is not None
    await wait_until(lambda: s.identity.peer_id in table_ids(a), what="S's record at A")
    assert silent_link.lost  # the link made with a throwaway key was replaced
    await wait_until(lambda: len(s.open_links()) == 1, what="the relink")
    await _bounded(s.set_broadcast(False))
    assert s.listening_port is None
    await wait_until(lambda: a.core.table.get(s.identity.peer_id).is_tombstone,
                     what="the tombstone at A")
    await wait_until(lambda: len(s.open_links()) == 1, what="the silent relink")
    assert a.open_links(outbound=False)[0].peer_id != s.identity.peer_id


# -- (d) pinning ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_wrong_pinned_peer_id_fails_before_any_frame(cluster):
    server = await cluster.node()
    dialler = await cluster.node(broadcasting=False)
    received = []
    for svc in (server, dialler):
        original = svc.core.receive
        svc.core.receive = lambda link, frame, _o=original: (received.append(frame), _o(link, frame))[1]
    # A valid record of somebody else, pointing at the server's address.
    impostor = NodeIdentity.generate()
    fake = make_record(impostor, server.core._addresses, version=1,
                       issued_at_ms=int(_reactor().seconds() * 1000))
    assert dialler.add_seed_records([fake]) == 1
    await wait_until(lambda: dialler.planner.history(impostor.peer_id).failures >= 1,
                     what="the pinned dial to fail")
    assert received == []
    assert server.core.links == {} and dialler.core.links == {}
    assert server.open_links() == [] and dialler.open_links() == []


# -- (e) penalties ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_text_and_garbage_frames_cost_penalties_and_server_keeps_serving(cluster):
    server = await cluster.node(penalty_limit=3)
    text = await cluster.raw_client(server)
    await _bounded(text.opened)
    text.sendMessage(b"hello", isBinary=False)
    assert await _bounded(text.closed) == CLOSE_UNSUPPORTED_DATA
    assert server.penalties_total == 1

    garbage = await cluster.raw_client(server)
    await _bounded(garbage.opened)
    garbage.sendMessage(b"\xc1not msgpack", isBinary=True)
    await wait_until(lambda: server.penalties_total == 2, what="the garbage penalty")
    assert garbage.open_now  # one bad frame costs score, not the link
    garbage.sendMessage(b"\x00", isBinary=True)
    garbage.sendMessage(b"\x01", isBinary=True)
    assert await _bounded(garbage.closed) == CLOSE_POLICY_VIOLATION  # penalty_limit reached
    assert server.penalties_total == 4

    # Others are still served.
    other = await cluster.node(broadcasting=False)
    other.add_seed_records([signed(server)])
    await wait_until(lambda: len(other.open_links()) == 1 and
                     server.identity.peer_id in table_ids(other), what="a good client")


@pytest_twisted.ensureDeferred
async def test_handshake_without_subprotocol_or_oversized_frame_is_refused(cluster):
    server = await cluster.node()
    bare = await cluster.raw_client(server, protocols=())
    await _bounded(bare.closed)
    assert not bare.opened.called
    big = await cluster.raw_client(server)
    await _bounded(big.opened)
    big.sendMessage(b"\x00" * (constants.MAX_MESSAGE_BYTES + 1), isBinary=True)
    await _bounded(big.closed)
    assert server.open_links() == []


@pytest_twisted.ensureDeferred
async def test_broadcasting_peer_cut_off_for_abuse_is_refused(cluster):
    server = await cluster.node(penalty_limit=1)
    abuser = await cluster.node()
    abuser_id = abuser.identity.peer_id
    abuser.add_seed_records([signed(server)])
    await wait_until(lambda: len(server.open_links()) == 1, what="the abuser's link")
    await wait_until(lambda: server.core.links and all(
        l.remote_broadcasting for l in server.core.links.values()), what="HELLO")
    link = abuser.open_links()[0]
    # penalty_limit=1: one invalid frame costs a neutral peer its whole score;
    # a fast, live link has earned a little more than neutral, so send two.
    link.protocol.sendMessage(b"garbage", isBinary=True)
    link.protocol.sendMessage(b"garbage", isBinary=True)
    await wait_until(lambda: server.planner.is_refused(abuser_id), what="the refusal")
    await wait_until(lambda: server.open_links() == [], what="the link to close")
    # It redials and is refused during the TLS handshake.
    before = abuser.planner.history(server.identity.peer_id).failures
    await wait_until(lambda: abuser.planner.history(server.identity.peer_id).failures > before,
                     what="a refused redial")
    assert server.open_links() == []


# -- (e2) scores: penalties, cut-off, cool-off, floods, link choice -----------------------


@pytest_twisted.ensureDeferred
async def test_invalid_frames_lower_the_score_then_cut_off_refused_and_accepted_after_cool_off(
        cluster):
    cool_off = 1.5
    server = await cluster.node(refuse_seconds=cool_off)
    abuser = await cluster.node()
    abuser_id = abuser.identity.peer_id
    abuser.add_seed_records([signed(server)])
    await wait_until(lambda: server.core.links and all(
        l.remote_broadcasting for l in server.core.links.values()), what="HELLO")
    before = server.scores.total(abuser_id)
    assert server.peer_score(abuser_id)["penalties"] == 0
    link = abuser.open_links()[0]
    link.protocol.sendMessage(b"\xc1not msgpack", isBinary=True)
    await wait_until(lambda: server.scores.penalties(abuser_id) > 0, what="the first penalty")
    assert server.scores.total(abuser_id) < before - 5
    assert len(server.open_links()) == 1  # one bad frame costs score, not the link
    # Keep sending garbage: the score falls below the cut-off, the link closes.
    for _ in range(20):
        if link.closing or link.lost:
            break
        link.protocol.sendMessage(b"\xc1not msgpack", isBinary=True)
        await sleep(0.02)
    await wait_until(lambda: server.scores.is_refused(abuser_id), what="the refusal")
    snapshot = server.peer_score(abuser_id)
    assert snapshot["total"] < constants.SCORE_CUT_OFF and snapshot["refused_until"] is not None
    await wait_until(lambda: server.open_links() == [], what="the cut-off")
    # During the cool-off its redials fail in the TLS handshake.
    failures = abuser.planner.history(server.identity.peer_id).failures
    await wait_until(lambda: abuser.planner.history(server.identity.peer_id).failures
                     > failures, what="a refused redial")
    assert server.open_links() == [] and server.scores.is_refused(abuser_id)
    # After it, the peer is accepted again (its penalty has decayed a little,
    # and the cap at refusal kept it at or above zero).
    await wait_until(lambda: not server.scores.is_refused(abuser_id), timeout=cool_off + 1,
                     what="the cool-off to end")
    await wait_until(lambda: len(server.open_links()) == 1, timeout=WAIT,
                     what="the link after the cool-off")
    assert server.peer_score(abuser_id)["refused_until"] is None


def _hello_and_heartbeats(count):
    """A silent peer's HELLO, then ``count`` valid HEARTBEAT frames."""
    from peernet.gossip import codec

    now_ms = int(_reactor().seconds() * 1000)
    hello = codec.encode(MessageType.HELLO, 0, codec.encode_body(MessageType.HELLO, {
        "id": random.randbytes(16), "ts": now_ms, "versions": [constants.PROTOCOL_VERSION],
        "bc": False, "repos": 0, "digest": bytes(16), "n": 0}))
    beats = [codec.encode(MessageType.HEARTBEAT, constants.TTL_HEARTBEAT,
                          codec.encode_body(MessageType.HEARTBEAT, {
                              "id": random.randbytes(16), "ts": now_ms, "digest": bytes(16),
                              "n": 0, "load": 0}))
             for _ in range(count)]
    return hello, beats


@pytest_twisted.ensureDeferred
async def test_a_flood_of_valid_frames_is_dropped_over_the_rate_and_cut_off(cluster):
    server = await cluster.node()
    flooder = await cluster.raw_client(server)
    await _bounded(flooder.opened)
    hello, beats = _hello_and_heartbeats(int(constants.FLOOD_BURST) + 1500)
    flooder.sendMessage(hello, isBinary=True)
    await wait_until(lambda: any(l.hello_received for l in server.core.links.values()),
                     what="HELLO")
    received = server.core.stats.received
    for frame in beats:  # all at once: far above FLOOD_RATE
        flooder.sendMessage(frame, isBinary=True)
    assert await _bounded(flooder.closed) == CLOSE_POLICY_VIOLATION
    handled = server.core.stats.received - received
    print(f"flood: {handled} of {len(beats)} frames reached the core, "
          f"{server.penalties_total} penalties")
    # The core saw at most the burst plus what the rate refilled meanwhile.
    assert handled < constants.FLOOD_BURST + 1000
    assert server.core.stats.invalid == 0  # every penalty was for the rate
    assert server.penalties_total >= constants.PENALTY_LIMIT
    assert server.cut_offs_total == 1 and server.flood_dropped_total >= 400
    # The anonymous link's score is gone with the link; nothing names it.
    assert not any(isinstance(k, tuple) for k in server.scores.keys())
    # Others are still served.
    other = await cluster.node(broadcasting=False)
    other.add_seed_records([signed(server)])
    await wait_until(lambda: len(other.open_links()) == 1, what="a good client")


@pytest_twisted.ensureDeferred
async def test_a_node_relaying_a_storm_caps_its_relays_and_is_not_taken_for_a_flooder(cluster):
    from peernet.gossip import codec

    middle = await cluster.node()
    honest = await cluster.node()
    honest.add_seed_records([signed(middle)])
    await wait_until(lambda: len(middle.open_links()) == 1 and len(honest.open_links()) == 1,
                     what="the honest link")
    storm = await cluster.raw_client(middle)
    await _bounded(storm.opened)
    hello, _ = _hello_and_heartbeats(0)
    storm.sendMessage(hello, isBinary=True)
    await wait_until(lambda: sum(l.hello_received for l in middle.core.links.values()) == 2,
                     what="the storm's HELLO")
    now_ms = int(_reactor().seconds() * 1000)
    for _ in range(int(constants.FLOOD_BURST) + 1000):  # valid requests, nobody has the repo
        body = codec.encode_body(MessageType.PEER_REQUEST, {
            "id": random.randbytes(16), "ts": now_ms, "repo": "nobody-has-this"})
        storm.sendMessage(codec.encode(MessageType.PEER_REQUEST, constants.TTL_REQUEST, body),
                          isBinary=True)
    assert await _bounded(storm.closed) == CLOSE_POLICY_VIOLATION  # the stormer is cut off
    await sleep(0.5)
    # The honest node saw nothing above its flood limit from the middle node ...
    assert honest.flood_dropped_total == 0 and honest.penalties_total == 0
    assert len(honest.open_links()) == 1
    assert honest.scores.penalties(middle.identity.peer_id) == 0
    # ... because the middle node relayed at most its relay budget and dropped the rest.
    assert middle.relay_dropped_total > 0


@pytest_twisted.ensureDeferred
async def test_link_choice_prefers_high_scores(cluster):
    servers = [await cluster.node() for _ in range(6)]
    dialler = await cluster.node(broadcasting=False, target_links=3)
    ids = [s.identity.peer_id for s in servers]
    # Two peers with a fine record (fast round trips, good contacts); the
    # others below neutral (dial failures long ago, their backoff over).
    for good in ids[:2]:
        for _ in range(3):
            dialler.scores.contact(good, True)
            dialler.scores.rtt(good, 0.001)
    for bad in ids[2:]:
        dialler.scores.contact(bad, False)
    dialler.add_seed_records([signed(s) for s in servers])
    await wait_until(lambda: len(dialler.open_links()) == 3, what="three links")
    linked = {l.peer_id for l in dialler.open_links()}
    assert set(ids[:2]) <= linked  # half (rounded up) by score: both good ones
    assert len(linked - set(ids[:2])) == 1  # and one at random


@pytest_twisted.ensureDeferred
async def test_network_search_results_come_best_score_first_and_links_are_measured(cluster):
    server = await cluster.node()
    sharers = [NodeIdentity.generate() for _ in range(4)]
    now_ms = int(_reactor().seconds() * 1000)
    records = [make_record(ident, [f"wss://127.0.0.{i + 2}:1/gossip"], version=1,
                           issued_at_ms=now_ms, repos=[{"name": "films"}])
               for i, ident in enumerate(sharers)]
    assert server.add_seed_records(records) == 4
    client = await cluster.node(broadcasting=False, target_links=1)
    client.add_seed_records([signed(server)])
    server_id = server.identity.peer_id
    ids = [ident.peer_id for ident in sharers]
    await wait_until(lambda: len(client.open_links()) == 1 and set(ids) <= table_ids(client),
                     what="the link and the sharers' records")
    # The client's own view of the sharers (scores are kept for peers in the
    # table), as earlier downloads from them would have left it.
    client.scores.rtt(ids[2], 0.001)
    client.scores.rtt(ids[0], 0.05)
    client.scores.penalize(ids[1], "bad_ttl")
    # The WebSocket ping at opening measures the round trip (loopback: ~1 ms).
    await wait_until(lambda: client.scores.parts(server_id)["rtt"] > 0.9, what="an RTT sample")
    answers_before = client.scores.parts(server_id)["answers"]
    results = await _bounded(client.search(repo="films", local=False, timeout=3, settle=0.3))
    found = [r["record"]["peer_id"] for r in results]
    assert found == [ids[2], ids[0], ids[3], ids[1]]
    # The server answered on its link: its "answers" part went up.
    assert client.scores.parts(server_id)["answers"] > answers_before
    # And the server kept the silent client's link anonymous in its scores.
    assert all(isinstance(k, tuple) for k in server.scores.keys() if k not in ids)


# -- (f) inbound cap -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_inbound_links_above_the_cap_are_refused(cluster):
    server = await cluster.node(max_inbound=2)
    first = await cluster.raw_client(server)
    second = await cluster.raw_client(server)
    await _bounded(first.opened)
    await _bounded(second.opened)
    third = await cluster.raw_client(server)
    await _bounded(third.closed)
    assert not third.opened.called
    assert len(server.open_links(outbound=False)) == 2
    # A slot frees when a link closes.
    first.sendClose()
    await _bounded(first.closed)
    await wait_until(lambda: len(server.open_links(outbound=False)) == 1, what="the close")
    fourth = await cluster.raw_client(server)
    await _bounded(fourth.opened)


# -- (g) reconnection -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_dropped_peer_is_redialled_with_backoff_when_it_returns(cluster):
    a_identity = NodeIdentity.generate()
    a = await cluster.node(identity=a_identity)
    port = a.listening_port.getHost().port
    b = await cluster.node(reconnect_base_delay=0.05, reconnect_max_delay=0.4)
    b.add_seed_records([signed(a)])
    await wait_until(lambda: len(b.open_links(outbound=True)) == 1, what="B's link to A")
    dials = []
    original_dial = b._dial
    b._dial = lambda entry: (dials.append(_reactor().seconds()), original_dial(entry))[1]

    # Kill A: connections dropped without a closing handshake, port closed.
    for link in list(a._links.values()):
        link.abort()
    await _bounded(a.stopService())
    await wait_until(lambda: b.open_links() == [], what="B to see the drop")
    await wait_until(lambda: b.planner.history(a_identity.peer_id).failures >= 4,
                     what="failed redials")
    history = b.planner.history(a_identity.peer_id)
    # Exponential backoff: the gaps between redials grow (jitter is within 0.5-1x).
    gaps = [t2 - t1 for t1, t2 in zip(dials, dials[1:])]
    assert len(gaps) >= 2 and gaps[-1] > gaps[0]
    assert history.next_attempt > _reactor().seconds() - 0.5

    # A comes back on the same port with the same identity: B relinks.
    a2 = await cluster.node(identity=a_identity, listen=f"tcp:{port}:interface=127.0.0.1")
    await wait_until(lambda: len(b.open_links(outbound=True)) == 1, what="B to redial A")
    await wait_until(lambda: len(a2.open_links()) == 1, what="A to accept")
    assert b.planner.history(a_identity.peer_id).failures == 0


# -- (h) privacy ---------------------------------------------------------------------------------


def _walk_strings(obj, seen=None, depth=0):
    """Every str/bytes reachable from ``obj`` through peernet objects and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 12:
        return
    seen.add(id(obj))
    if isinstance(obj, (str, bytes)):
        yield obj
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_strings(k, seen, depth + 1)
            yield from _walk_strings(v, seen, depth + 1)
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            yield from _walk_strings(v, seen, depth + 1)
        return
    module = type(obj).__module__ or ""
    if not module.startswith("peernet") and not dataclasses.is_dataclass(obj):
        return
    for name in getattr(type(obj), "__slots__", ()):
        if hasattr(obj, name):
            yield from _walk_strings(getattr(obj, name), seen, depth + 1)
    if hasattr(obj, "__dict__"):
        for k, v in vars(obj).items():
            if k in ("reactor", "clock", "rng", "protocol", "connect_deferred", "deadline"):
                continue
            yield from _walk_strings(v, seen, depth + 1)


@pytest_twisted.ensureDeferred
async def test_silent_peer_leaves_no_identity_or_address_behind(cluster):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        a = await cluster.node()
        b = await cluster.node()
        b.add_seed_records([signed(a)])
        silent = await cluster.node(broadcasting=False, bind_address="127.0.0.77")
        silent.add_seed_records([signed(a)])
        await wait_until(lambda: len(silent.open_links()) == 2, what="the silent links")
        await wait_until(lambda: all(st.hello_received for svc in (a, b)
                                     for st in svc.core.links.values()), what="HELLOs")
        # A fresh throwaway certificate per connection: A and B saw different keys.
        throwaway = [state.tls_peer_id for svc in (a, b) for state in svc.core.links.values()
                     if not state.outbound and not state.remote_broadcasting]
        assert len(throwaway) == 2 and len(set(throwaway)) == 2
        a.set_repos([{"name": "films"}])
        await wait_until(lambda: silent.core.table.find_repo("films"), what="the update")
        # Misbehaviour from the same address: a text frame, a refused handshake.
        rude = await cluster.raw_client(a, bind="127.0.0.77")
        await _bounded(rude.opened)
        rude.sendMessage(b"hi", isBinary=False)
        await _bounded(rude.closed)
        bare = await cluster.raw_client(a, protocols=(), bind="127.0.0.77")
        await _bounded(bare.closed)
        # A bug while handling a frame from that address is logged by link id.
        crashing = await cluster.raw_client(a, bind="127.0.0.77")
        await _bounded(crashing.opened)
        original_receive = a.core.receive

        def broken_receive(link_id, frame):
            a.core.receive = original_receive
            raise RuntimeError("simulated bug")

        a.core.receive = broken_receive
        crashing.sendMessage(b"\x00", isBinary=True)
        await wait_until(lambda: a.core.receive is original_receive, what="the bug")
        await wait_until(lambda: any(e.get("log_failure") is not None for e in events),
                         what="the failure to be logged")

        silent_id = silent.identity.peer_id
        for svc in (a, b):
            strings = list(_walk_strings(svc))
            assert not any(silent_id in s for s in strings if isinstance(s, str))
            assert not any(bytes.fromhex(silent_id) in s for s in strings if isinstance(s, bytes))
            assert not any("127.0.0.77" in s for s in strings if isinstance(s, str))
            for state in svc.core.links.values():
                assert state.tls_peer_id != silent_id
            for link in svc._links.values():
                assert link.peer_id != silent_id
                if not link.outbound and link.protocol is not None:
                    assert "127.0.0.77" not in str(link.protocol.peer)
        # The silent node's connections really came from 127.0.0.77.
        for link in silent.open_links():
            assert link.protocol.transport.getHost().host == "127.0.0.77"
        # Close everything, so closing lines are captured too.
        await cluster.stop()
    finally:
        globalLogPublisher.removeObserver(events.append)

    texts = []
    for event in events:
        texts.append(formatEvent(event))
        texts.append(repr({k: v for k, v in event.items() if k != "log_logger"}))
        failure = event.get("log_failure")
        if failure is not None:
            texts.append(failure.getTraceback())
    joined = "\n".join(texts)
    assert "gossip link" in joined  # the capture works
    assert "127.0.0.77" not in joined
    assert silent_id not in joined


# -- helpers and the planner on a fake clock ------------------------------------------------------


def test_gossip_addresses_round_trip():
    assert parse_gossip_address(gossip_address("127.0.0.1", 8701)) == ("127.0.0.1", 8701)
    assert parse_gossip_address(gossip_address("::1", 8701)) == ("::1", 8701)
    assert parse_gossip_address("wss://example.org/gossip") == ("example.org", 443)
    for bad in ("ws://h:1/gossip", "wss://h:1/other", "wss://h:99999/gossip",
                "wss://u:p@h:1/gossip", "wss://h:1/gossip?x=1", "onion://abc", "garbage"):
        assert parse_gossip_address(bad) is None


def test_planner_backoff_grows_with_jitter_and_resets():
    clock = task.Clock()
    planner = DialPlanner(clock, random.Random(1), base_delay=1.0, max_delay=300.0)
    delays = [planner.record_failure("p") for _ in range(12)]
    for n, delay in enumerate(delays, start=1):
        nominal = min(300.0, 2 ** (n - 1))
        assert 0.5 * nominal <= delay <= nominal
    assert not planner.ready("p")
    clock.advance(delays[-1])
    assert planner.ready("p")
    planner.record_success("p")
    assert planner.history("p").failures == 0 and planner.ready("p")
    assert planner.backoff_delay(10_000) <= 300.0


def test_planner_choice_half_by_score_half_random_and_refusals():
    clock = task.Clock()
    planner = DialPlanner(clock, random.Random(2))
    peers = [f"{i:064x}" for i in range(20)]
    for p in peers[:4]:
        for _ in range(5):
            planner.record_success(p)
    for p in peers[-4:]:
        planner.record_failure(p)
    for _ in range(20):
        chosen = planner.choose(peers, 8)
        assert len(set(chosen)) == 8
        assert set(chosen[:4]) == set(peers[:4])  # the best half
    planner.refuse(peers[0], 10)
    assert not planner.ready(peers[0]) and planner.is_refused(peers[0])
    clock.advance(10)
    assert planner.ready(peers[0])
    assert planner.next_due([peers[-1]]) == planner.history(peers[-1]).next_attempt
    assert connector.REFUSE_SECONDS > 0


@pytest_twisted.ensureDeferred
async def test_start_failures_are_reported_by_when_started(cluster):
    from twisted.internet.error import CannotListenError

    from peernet.errors import ConfigError

    a = await cluster.node()
    port = a.listening_port.getHost().port
    with pytest.raises(CannotListenError):
        await cluster.node(listen=f"tcp:{port}:interface=127.0.0.1")
    # Listening on every interface without an address to announce.
    with pytest.raises(ConfigError):
        await cluster.node(listen="tcp:0")
    with pytest.raises(ConfigError):
        GossipService(_reactor(), NodeIdentity.generate(), broadcasting=True)


# -- protocol version 2 and the lean send/receive path (issue 9) ---------------------------


@pytest_twisted.ensureDeferred
async def test_a_version_1_peer_is_refused_with_a_clear_reason(cluster):
    lines = []

    def observer(event):
        lines.append(formatEvent(event))

    server = await cluster.node()
    globalLogPublisher.addObserver(observer)
    try:
        old = await cluster.raw_client(server, protocols=("peernet.1",))
        await _bounded(old.closed)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert not old.opened.called and server.open_links() == []
    # What the old peer reads in the HTTP refusal: both versions, and what to do.
    reason = old.wasNotCleanReason
    assert "[400]" in reason and "subprotocol peernet.2 required" in reason, reason
    assert "does not speak peernet.1" in reason and "upgrade peernet" in reason, reason
    # What the refusing node's operator reads: the version, no address.
    refused = [l for l in lines if "speaks peernet.1" in l]
    assert len(refused) == 1 and "127.0.0.1" not in refused[0], refused


@pytest_twisted.ensureDeferred
async def test_a_relay_is_framed_once_for_inbound_links_and_masked_per_outbound_link(
        cluster, monkeypatch):
    from peernet.gossip import codec
    from peernet.gossip.core import Send
    from peernet.peer import transport

    prepared = []
    real_prepare = transport.prepare_frame

    def counting_prepare(frame, masked=False):
        prepared.append((frame, masked))
        return real_prepare(frame, masked)

    monkeypatch.setattr(transport, "prepare_frame", counting_prepare)
    a = await cluster.node()
    b = await cluster.node()
    a.add_seed_records([signed(b)])  # A dials B: A's one outbound link
    await wait_until(lambda: len(a.open_links(outbound=True)) == 1, what="A's link to B")
    raws = [await cluster.raw_client(a) for _ in range(2)]
    for raw in raws:
        await _bounded(raw.opened)
    await wait_until(lambda: len(a.open_links(outbound=False)) == 2, what="two inbound links")
    heard = []
    b.on_frame = lambda direction, frame: heard.append(frame) if direction == "in" else None
    _, (beat,) = _hello_and_heartbeats(1)
    assert decode(beat).type is MessageType.HEARTBEAT
    links = a.open_links(outbound=False) + a.open_links(outbound=True)
    assert [l.outbound for l in links] == [False, False, True]
    prepared.clear()
    a._execute([Send(l.id, beat) for l in links])
    # Framed once for the two inbound links; once more, masked with a key of
    # its own, for the outbound one (B requires masked client frames and
    # would have failed the link otherwise).
    assert prepared == [(beat, False), (beat, True)]
    await wait_until(lambda: all(any(p == beat for p, _ in raw.messages) for raw in raws)
                     and beat in heard, what="the frame on all three links")
    assert len(a.open_links()) == 3 and len(b.open_links()) == 1
    # A's counters for the prepared sends are kept as sendMessage keeps them.
    for link in links[:2]:
        stats = link.protocol.trafficStats
        assert stats.outgoingWebSocketMessages >= 2  # HELLO (and a probe's ping) + this
        assert stats.outgoingOctetsAppLevel >= len(beat)
    # A closing link sends nothing (as with sendMessage), and nothing raises.
    links[0].protocol.sendClose()
    a._execute([Send(links[0].id, beat)])
    assert codec.decode(beat).ttl == constants.TTL_HEARTBEAT


@pytest_twisted.ensureDeferred
async def test_links_build_no_autobahn_debug_arguments_per_frame(cluster, monkeypatch):
    """Autobahn's Twisted adapter calls hltype()/hlval() on every dataReceived
    and sendData to build a debug line nobody logs; our protocols skip it and
    keep Autobahn's traffic counters."""
    import autobahn.twisted.websocket as tx_ws
    import autobahn.websocket.protocol as ws_protocol

    calls = []

    def counting(real):
        def wrapper(*args, **kw):
            calls.append(real.__name__)
            return real(*args, **kw)
        return wrapper

    a, b, c = await trio(cluster)
    for module in (tx_ws, ws_protocol):
        for name in ("hltype", "hlval"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, counting(getattr(module, name)))
    link = a.open_links(outbound=False)[0]
    wire_before = link.protocol.trafficStats.outgoingOctetsWireLevel
    in_before = link.protocol.trafficStats.incomingOctetsWireLevel
    a.set_repos([{"name": "films"}])  # a PEER_UPDATE on every link, pings, answers

    def has_films(svc):
        entry = svc.core.table.get(a.identity.peer_id)
        return entry is not None and "films" in entry.repo_names()

    await wait_until(lambda: has_films(b) and has_films(c), what="the PEER_UPDATE")
    await sleep(0.2)  # digest pings and their answers
    assert calls == []
    assert link.protocol.trafficStats.outgoingOctetsWireLevel > wire_before
    assert link.protocol.trafficStats.incomingOctetsWireLevel >= in_before


def test_prepared_frames_are_unmasked_for_inbound_and_freshly_masked_for_outbound():
    from peernet.peer.links import prepare_frame

    frame = bytes(range(200))
    plain = prepare_frame(frame)
    # FIN + binary opcode, no mask bit, 16-bit length 200, then the frame itself
    assert plain.payloadHybi == b"\x82\x7e\x00\xc8" + frame and plain.payload_len == 200
    masked = [prepare_frame(frame, masked=True).payloadHybi for _ in range(2)]
    for wire in masked:
        assert wire[:2] == b"\x82\xfe" and wire[2:4] == b"\x00\xc8"
        key, body = wire[4:8], wire[8:]
        assert bytes(b ^ key[i % 4] for i, b in enumerate(body)) == frame
    assert masked[0][4:8] != masked[1][4:8]  # a fresh key per frame (2^-32 to collide)
