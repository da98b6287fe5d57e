"""The transport's own WebSocket framing, checked against Autobahn's.

* ``links.prepare_frame`` builds frames without Autobahn's PreparedMessage and
  masker objects: the bytes must be the frames Autobahn makes (unmasked) or
  valid masked client frames that Autobahn's own server decodes, at the
  length-encoding boundaries.
* Our protocol classes take complete binary frames on a fast path and leave
  everything else to Autobahn's parser: fed the same byte stream, cut into
  reads in several ways, they must deliver the same messages, write the same
  bytes back (pongs, close frames) and end in the same state as Autobahn's
  own protocol, for good and bad input alike.
* After a received frame the tick is rescheduled only when it is not due
  within RECEIVE_WAKEUP_FLOOR: the real core must never move its next wakeup
  earlier than that on a receive.

No sockets: Autobahn protocols over ``StringTransport``.
"""

import os
import random
import struct

import pytest
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol
from twisted.internet.testing import StringTransport

from peernet import constants
from peernet.gossip.memnet import HeapClock, MemoryNetwork
from peernet.peer import links
from peernet.peer.links import (
    GossipClientFactory,
    GossipClientProtocol,
    GossipLink,
    GossipServerFactory,
    GossipServerProtocol,
    prepare_frame,
    xor_mask,
)
from peernet.peer.transport import RECEIVE_WAKEUP_FLOOR

LIMIT = constants.MAX_MESSAGE_BYTES
BOUNDARY_SIZES = (0, 1, 3, 4, 5, 125, 126, 127, 446, 4095, 4096, 4097, 65535, 65536)


class _Owner:
    inbound_connections = 0

    def __init__(self):
        self.messages = []
        self.oversized = 0

    def link_message(self, link, payload, is_binary):
        self.messages.append((payload, is_binary))

    def link_oversized(self, link):
        self.oversized += 1

    def link_lost(self, link):
        pass

    def link_pong(self, link, payload):
        pass


class _RefServer(WebSocketServerProtocol):
    """Autobahn's own server protocol (no peernet code on its path)."""

    def onMessage(self, payload, is_binary):
        self.factory.messages.append((payload, is_binary))


class _RefClient(WebSocketClientProtocol):
    def onMessage(self, payload, is_binary):
        self.factory.messages.append((payload, is_binary))


def _open(protocol, factory):
    protocol.factory = factory
    transport = StringTransport()
    protocol.makeConnection(transport)
    if transport.producer is None:
        # Autobahn unregisters itself as a producer when it drops a connection.
        transport.registerProducer(protocol, True)
    # Past the opening handshake (what Autobahn sets when it completes).
    protocol.state = WebSocketProtocol.STATE_OPEN
    protocol.websocket_version = 13
    protocol.inside_message = False
    protocol.current_frame = None
    protocol.data = b""
    transport.clear()
    return protocol, transport


def ours_server():
    owner = _Owner()
    protocol, transport = _open(GossipServerProtocol(), GossipServerFactory(owner))
    protocol.link = GossipLink(outbound=False)
    return protocol, transport, owner.messages, owner


def ref_server():
    factory = WebSocketServerFactory()
    links._set_options(factory, server=True)
    factory.messages = []
    protocol, transport = _open(_RefServer(), factory)
    return protocol, transport, factory.messages, None


def ours_client():
    owner = _Owner()
    link = GossipLink(outbound=True)
    factory = GossipClientFactory(owner, link, "wss://127.0.0.1/gossip")
    protocol = GossipClientProtocol()
    protocol.link = link
    protocol, transport = _open(protocol, factory)
    return protocol, transport, owner.messages, owner


def ref_client():
    factory = WebSocketClientFactory("wss://127.0.0.1/gossip")
    links._set_options(factory, server=False)
    factory.messages = []
    protocol, transport = _open(_RefClient(), factory)
    return protocol, transport, factory.messages, None


def frame(opcode, payload, *, fin=True, mask=None, rsv=0, length_form=None):
    """One raw WebSocket frame; ``length_form`` forces 7/16/64-bit lengths."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    form = length_form or (7 if n <= 125 else 16 if n <= 0xFFFF else 64)
    mbit = 0x80 if mask is not None else 0
    if form == 7:
        head = bytes((b0, mbit | n))
    elif form == 16:
        head = bytes((b0, mbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mbit | 127)) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def masked(opcode, payload, **kw):
    return frame(opcode, payload, mask=os.urandom(4), **kw)


def chunkings(wire, rng):
    yield [wire]
    if len(wire) < 3000:
        yield [wire[i:i + 1] for i in range(len(wire))]
    for _ in range(3):
        cuts = sorted(rng.sample(range(1, len(wire)), min(len(wire) - 1, rng.randint(1, 6))))
        yield [wire[a:b] for a, b in zip([0] + cuts, cuts + [len(wire)])]


def written_frames(wire):
    """The frames in ``wire`` as (first byte, masked?, unmasked payload): a
    client's frames carry random keys, so bytes alone cannot be compared."""
    out, at = [], 0
    while at < len(wire):
        b0, b1 = wire[at], wire[at + 1]
        n, at = b1 & 0x7F, at + 2
        if n == 126:
            n, at = struct.unpack("!H", wire[at:at + 2])[0], at + 2
        elif n == 127:
            n, at = struct.unpack("!Q", wire[at:at + 8])[0], at + 8
        key = None
        if b1 & 0x80:
            key, at = wire[at:at + 4], at + 4
        body = wire[at:at + n]
        at += n
        out.append((b0, key is not None, xor_mask(body, key) if key else body))
    return out


def run(make, chunks):
    protocol, transport, messages, owner = make()
    for chunk in chunks:
        if protocol.state == WebSocketProtocol.STATE_CLOSED:
            break
        protocol.dataReceived(chunk)
    return {
        "messages": list(messages),
        "wire": written_frames(transport.value()),
        "state": protocol.state,
        "close": (protocol.localCloseCode, protocol.localCloseReason),
        "dropped": transport.disconnecting,
        "stats": (protocol.trafficStats.incomingWebSocketMessages,
                  protocol.trafficStats.incomingWebSocketFrames,
                  protocol.trafficStats.incomingOctetsAppLevel,
                  protocol.trafficStats.incomingOctetsWireLevel),
    }, owner


def same_as_autobahn(ours, ref, wire, seed=0):
    """Our protocol and Autobahn's agree on ``wire``, however it is cut up."""
    results = []
    for chunks in chunkings(wire, random.Random(seed)):
        mine, owner = run(ours, chunks)
        theirs, _ = run(ref, chunks)
        assert mine == theirs, f"differs when fed in {len(chunks)} reads"
        results.append((mine, owner))
    return results


# -- sending ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", BOUNDARY_SIZES)
def test_unmasked_prepared_frames_are_autobahns_bytes(n):
    payload = os.urandom(n)
    prepared = prepare_frame(payload)
    assert prepared.payloadHybi == PreparedMessage(payload, True, False, True).payloadHybi
    assert prepared.payload_len == n


@pytest.mark.parametrize("n", [s for s in BOUNDARY_SIZES if s <= LIMIT])
def test_masked_prepared_frames_decode_in_autobahns_own_server(n):
    payload = os.urandom(n)
    wires = [prepare_frame(payload, masked=True).payloadHybi for _ in range(3)]
    header = PreparedMessage(payload, True, True, True).payloadHybi
    head_len = len(header) - n - 4
    for wire in wires:
        assert len(wire) == len(header)
        assert wire[:head_len] == header[:head_len]  # FIN, binary, mask bit, length
        protocol, transport, messages, _ = ref_server()
        protocol.dataReceived(wire)
        assert messages == [(payload, True)]
        assert protocol.state == WebSocketProtocol.STATE_OPEN and transport.value() == b""
    keys = {w[head_len:head_len + 4] for w in wires}
    assert len(keys) == 3  # a fresh key per frame (2^-32 to collide)


def test_mask_keys_come_from_the_system_random_source(monkeypatch):
    drawn = []
    real = os.urandom

    def counting(n):
        drawn.append(n)
        return real(n)

    monkeypatch.setattr(links.os, "urandom", counting)
    monkeypatch.setattr(links, "_mask_keys", links._MaskKeys())
    keys = [prepare_frame(b"x" * 10, masked=True).payloadHybi[2:6] for _ in range(2048)]
    assert drawn == [4096, 4096]  # 1024 keys per system call
    assert len(set(keys)) > 2000


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 446, 4096, 4097, 20000])
def test_xor_mask_matches_the_rfc(n):
    payload, key = os.urandom(n), os.urandom(4)
    expected = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert xor_mask(payload, key) == expected
    assert xor_mask(expected, key) == payload


def test_send_prepared_keeps_autobahns_counters_and_skips_closing_links():
    protocol, transport, _, _ = ours_server()
    link = GossipLink(outbound=False)
    link.protocol, link.opened = protocol, True
    prepared = prepare_frame(b"abc" * 100)
    link.send_prepared(prepared)
    assert transport.value() == prepared.payloadHybi
    stats = protocol.trafficStats
    assert (stats.outgoingWebSocketMessages, stats.outgoingOctetsAppLevel,
            stats.outgoingOctetsWebSocketLevel) == (1, 300, 300)
    assert stats.outgoingOctetsWireLevel == len(prepared.payloadHybi)
    transport.clear()
    protocol.sendClose()
    link.send_prepared(prepared)
    assert prepared.payloadHybi not in transport.value()


# -- receiving: the server side (masked client frames) ---------------------------------------


@pytest.mark.parametrize("n", BOUNDARY_SIZES)
def test_server_receives_binary_frames_of_every_length_form_as_autobahn(n):
    results = same_as_autobahn(ours_server, ref_server, masked(2, os.urandom(n)), seed=n)
    mine, owner = results[0]
    if n <= LIMIT:
        assert len(mine["messages"]) == 1 and mine["state"] == WebSocketProtocol.STATE_OPEN
    else:
        # Over the limit: Autobahn fails the link (1009) and we charge the sender.
        assert mine["messages"] == [] and mine["close"][0] == 1009
        assert owner.oversized == 1


def test_server_several_frames_in_one_read_and_interleaved_control_frames():
    payloads = [os.urandom(k) for k in (10, 300, 0, 126, 5000)]
    wire = b"".join([
        masked(2, payloads[0]), masked(2, payloads[1]),
        masked(9, b"ping!"),  # a ping between data frames: answered with a pong
        masked(2, payloads[2]), masked(10, b"unsolicited pong"),
        masked(2, payloads[3]), masked(2, payloads[4]),
    ])
    mine, _ = same_as_autobahn(ours_server, ref_server, wire)[0]
    assert mine["messages"] == [(p, True) for p in payloads]
    assert mine["wire"] == [(0x8A, False, b"ping!")]  # the pong, unmasked
    assert mine["state"] == WebSocketProtocol.STATE_OPEN


def test_server_fragmented_messages_with_a_ping_inside_are_reassembled():
    parts = [os.urandom(100), os.urandom(200), os.urandom(1)]
    wire = b"".join([
        masked(2, parts[0], fin=False), masked(9, b"p"), masked(0, parts[1], fin=False),
        masked(0, parts[2]), masked(2, b"after"),
    ])
    mine, _ = same_as_autobahn(ours_server, ref_server, wire)[0]
    assert mine["messages"] == [(b"".join(parts), True), (b"after", True)]


def test_a_fragmented_message_is_delivered_once_without_autobahns_event(monkeypatch):
    protocol, _, messages, _ = ours_server()
    fired = []
    monkeypatch.setattr(protocol, "fire", lambda *a, **kw: fired.append(a))
    protocol.dataReceived(masked(2, b"ab", fin=False) + masked(0, b"cd"))
    protocol.dataReceived(masked(2, b"whole"))
    assert messages == [(b"abcd", True), (b"whole", True)] and fired == []


@pytest.mark.parametrize("name,wire", [
    ("unmasked client frame", frame(2, b"x" * 50)),
    ("text frame", masked(1, "héllo".encode())),
    ("invalid UTF-8 text", masked(1, b"\xff\xfe")),
    ("reserved bit", masked(2, b"x" * 20, rsv=4)),
    ("reserved opcode", masked(3, b"x")),
    ("continuation outside a message", masked(0, b"x")),
    ("16-bit length for 100 bytes", masked(2, b"x" * 100, length_form=16)),
    ("64-bit length for 1000 bytes", masked(2, b"x" * 1000, length_form=64)),
    ("fragmented ping", masked(9, b"x", fin=False)),
    ("control frame over 125 bytes", masked(9, b"x" * 126)),
    ("close frame", masked(8, struct.pack("!H", 1000) + b"bye")),
    ("data frame inside a fragmented message", masked(2, b"a", fin=False) + masked(2, b"b")),
    ("frame just over the limit", masked(2, b"\0" * (LIMIT + 1), length_form=64)),
    ("good frame then an unmasked one", masked(2, b"ok") + frame(2, b"bad")),
], ids=lambda v: v if isinstance(v, str) else "")
def test_server_refuses_or_handles_bad_frames_exactly_as_autobahn(name, wire):
    mine, _ = same_as_autobahn(ours_server, ref_server, wire)[0]
    if name not in ("text frame", "close frame"):
        assert mine["state"] != WebSocketProtocol.STATE_OPEN or mine["dropped"], name
    if name == "text frame":
        assert mine["messages"] == [("héllo".encode(), False)]


def test_server_data_after_a_close_frame_is_not_delivered():
    wire = masked(8, struct.pack("!H", 1000)) + masked(2, b"late")
    mine, _ = same_as_autobahn(ours_server, ref_server, wire)[0]
    assert (b"late", True) not in mine["messages"]


def test_a_frame_split_across_reads_then_whole_frames():
    protocol, _, messages, _ = ours_server()
    first, second = masked(2, b"A" * 300), masked(2, b"B" * 40)
    protocol.dataReceived(first[:7])
    protocol.dataReceived(first[7:200])
    protocol.dataReceived(first[200:] + second)  # rest of a frame + a whole one
    protocol.dataReceived(second)
    assert messages == [(b"A" * 300, True), (b"B" * 40, True), (b"B" * 40, True)]


def test_a_message_handler_closing_the_link_stops_the_fast_path():
    protocol, transport, messages, owner = ours_server()

    def close_on_first(link, payload, is_binary):
        messages.append(payload)
        protocol.sendClose(code=1000)

    owner.link_message = close_on_first
    ref, ref_transport, ref_messages, _ = ref_server()
    ref.onMessage = lambda payload, is_binary: (ref_messages.append(payload),
                                                ref.sendClose(code=1000))
    wire = masked(2, b"one") + masked(2, b"two")
    protocol.dataReceived(wire)
    ref.dataReceived(wire)
    # Autobahn still delivers data frames while closing; so do we (through it).
    assert messages == ref_messages and transport.value() == ref_transport.value()
    assert protocol.state == ref.state == WebSocketProtocol.STATE_CLOSING


# -- receiving: the client side (unmasked server frames) -------------------------------------


@pytest.mark.parametrize("n", (0, 125, 126, 446, 65535, 65536))
def test_client_receives_unmasked_frames_as_autobahn(n):
    mine, _ = same_as_autobahn(ours_client, ref_client, frame(2, os.urandom(n)), seed=n)[0]
    assert len(mine["messages"]) == (1 if n <= LIMIT else 0)


@pytest.mark.parametrize("wire", [
    masked(2, b"x" * 30),  # a masked server frame is refused
    frame(2, b"a", fin=False) + frame(9, b"p") + frame(0, b"b"),
    frame(2, b"x" * 20, length_form=16),
    frame(2, b"one") + frame(1, b"two") + frame(2, b"three"),
], ids=["masked server frame", "fragmented with ping", "non-minimal length", "binary text binary"])
def test_client_edge_cases_as_autobahn(wire):
    same_as_autobahn(ours_client, ref_client, wire)


# -- the tick after a frame ------------------------------------------------------------------


class _CheckedNetwork(MemoryNetwork):
    """A MemoryNetwork that checks, on every receive, that the core's next
    wakeup does not move earlier than RECEIVE_WAKEUP_FLOOR from now."""

    checked = moved_earlier = 0

    def _deliver(self, index, link, frame_bytes):
        node = self.nodes[index]
        if not node.alive or link not in node.links:
            return
        now = self.clock.seconds()
        before = node.core.next_wakeup()
        actions = node.core.receive(link, frame_bytes)
        after = node.core.next_wakeup()
        assert after >= min(before, now + RECEIVE_WAKEUP_FLOOR) - 1e-9, (before, after, now)
        self.checked += 1
        self.moved_earlier += after < before
        self.process(node, actions)


def test_a_received_frame_never_makes_the_core_due_sooner_than_the_floor():
    clock = HeapClock(1_800_000_000)
    net = _CheckedNetwork(clock, seed=7, latency=0.003)
    nodes = [net.add_node(broadcasting=i % 4 != 3) for i in range(14)]
    net.random_graph(degree_out=3)
    clock.advance(5)
    rng = random.Random(7)
    for step in range(40):
        node = rng.choice([n for n in nodes if n.alive and n.core.broadcasting])
        net.process(node, node.core.set_repos([{"name": f"r{step}"}]))
        if step % 7 == 3:
            searcher = rng.choice([n for n in nodes if n.alive])
            rid, actions = searcher.core.search(repo=f"r{step}")
            net.process(searcher, actions)
        if step == 20:
            net.kill(nodes[1])
            late = net.add_node()
            net.connect(late, nodes[0])
            net.connect(late, nodes[2])
        clock.advance(rng.uniform(0.01, 3.0))
    clock.advance(2 * constants.HEARTBEAT_INTERVAL)
    assert net.checked > 1000
    assert net.moved_earlier > 10  # the check saw wakeups move (digest pings)


@pytest.mark.parametrize("limit", ["maxFramePayloadSize", "maxMessagePayloadSize"])
@pytest.mark.parametrize("n", (999, 1000, 1001))
def test_lower_size_limits_hold_on_the_fast_path(limit, n):
    def limited(make):
        def made():
            protocol, transport, messages, owner = make()
            setattr(protocol, limit, 1000)
            return protocol, transport, messages, owner
        return made

    mine, _ = same_as_autobahn(limited(ours_server), limited(ref_server),
                               masked(2, os.urandom(n)))[0]
    assert len(mine["messages"]) == (1 if n <= 1000 else 0)


def test_whole_binary_frames_skip_autobahns_parser_and_masker(monkeypatch):
    import autobahn.websocket.protocol as ws_protocol

    protocol, _, messages, _ = ours_server()
    made = []
    real = ws_protocol.create_xor_masker
    monkeypatch.setattr(ws_protocol, "create_xor_masker",
                        lambda *a: made.append(a) or real(*a))
    monkeypatch.setattr(protocol, "processData", lambda: pytest.fail("Autobahn's parser"))
    payloads = [os.urandom(k) for k in (0, 100, 446, 3000)]
    for p in payloads:
        protocol.dataReceived(masked(2, p))
    protocol.dataReceived(b"".join(masked(2, p) for p in payloads))
    assert messages == [(p, True) for p in payloads * 2] and made == []


# -- the service's per-frame work (task.Clock, no sockets) ------------------------------------


def _service(n_links=3):
    from twisted.internet.task import Clock

    from peernet.identity import NodeIdentity
    from peernet.peer.transport import GossipService

    clock = Clock()
    clock.advance(1_800_000_000)
    svc = GossipService(clock, NodeIdentity.generate(), broadcasting=False)
    svc.running = True
    svc.target_links = 1
    opened = []
    for i in range(n_links):
        protocol, _, _, _ = ours_server()
        protocol.factory.owner = svc
        link = GossipLink(outbound=False, peer_id=os.urandom(32).hex())
        link.protocol = protocol
        protocol.link = link
        svc._links[link.id] = link
        svc.link_open(link)
        svc.core.links[link.id].hello_received = True
        opened.append(link)
    clock.advance(0.01)  # the first tick (expiry check) is due at once
    return clock, svc, opened


def test_the_tick_follows_a_wakeup_a_frame_brings_forward_and_skips_the_scan_otherwise(
        monkeypatch):
    clock, svc, (a, b, c) = _service()
    state = svc.core.links[b.id]

    def receive(link_id, payload):  # what a table change does: digest pings due soon
        if state.ping_due is None:
            state.ping_due = clock.seconds() + RECEIVE_WAKEUP_FLOOR
            svc.core.timers_changed()  # set from outside the core
        return []

    monkeypatch.setattr(svc.core, "receive", receive)
    # Due next: the once-a-second expiry check.
    assert svc._tick_call.getTime() > clock.seconds() + 0.5
    svc.link_message(a, b"frame", True)
    due = clock.seconds() + RECEIVE_WAKEUP_FLOOR
    assert svc._tick_call.getTime() == pytest.approx(due)
    scans = []
    real = svc.core.next_wakeup
    monkeypatch.setattr(svc.core, "next_wakeup", lambda: scans.append(1) or real())
    for _ in range(5):
        clock.advance(0.002)
        svc.link_message(a, b"frame", True)
    assert scans == [] and svc._tick_call.getTime() == pytest.approx(due)
    ticks = []
    real_tick = svc.core.tick
    monkeypatch.setattr(svc.core, "tick", lambda: ticks.append(clock.seconds()) or real_tick())
    clock.advance(RECEIVE_WAKEUP_FLOOR)
    assert ticks and ticks[0] == pytest.approx(due) and state.ping_due is None
    # Nothing due soon again: the next frame rescans and schedules the tick.
    scans.clear()
    svc.link_message(a, b"frame", True)
    assert scans and svc._tick_call.getTime() == pytest.approx(
        clock.seconds() + RECEIVE_WAKEUP_FLOOR)


def test_frame_gaps_are_scored_for_broadcasting_remotes_only(monkeypatch):
    from peernet.peer.scoring import link_key

    clock, svc, (anon, bc, _) = _service()
    svc.core.links[bc.id].remote_broadcasting = True
    monkeypatch.setattr(svc.core, "receive", lambda link_id, payload: [])
    for _ in range(3):
        clock.advance(1.0)
        svc.link_message(anon, b"frame", True)
        svc.link_message(bc, b"frame", True)
    assert not svc.scores.known(link_key(anon.id))
    assert svc.scores.known(bc.peer_id)
    assert svc.scores.parts(bc.peer_id)["regularity"] > 0.5  # on-time frames count


def test_relays_over_the_cap_are_dropped_and_the_rest_sent_in_order(monkeypatch):
    from peernet.gossip.core import Send

    clock, svc, (src, x, y) = _service()
    meter = svc._meters[x.id]
    meter.relay_tokens, meter.relay_refilled_at = 0.0, clock.seconds()  # x at its cap
    sent = []
    monkeypatch.setattr(svc, "_execute", lambda actions, received_at=None: sent.extend(actions))
    actions = [Send(x.id, b"1"), Send(y.id, b"2"), Send(src.id, b"reply"), Send(x.id, b"3")]
    monkeypatch.setattr(svc.core, "receive", lambda link_id, payload: list(actions))
    svc.link_message(src, b"frame", True)
    assert sent == [actions[1], actions[2]] and svc.relay_dropped_total == 2
