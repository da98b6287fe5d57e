#!/usr/bin/env python3
"""µs per call of the pieces of the relay hot path changed for issue 9.

Runs against whichever peernet is first on the path, so the same script times
the code before and after a change (run it from a ``git archive`` copy of the
old commit with ``PYTHONPATH`` pointing at that copy, then from this tree):

    .venv/bin/python benchmarks/hotpath_micro.py
    PYTHONPATH=/tmp/old .venv/bin/python /tmp/old/benchmarks/hotpath_micro.py  # the old code

What it times (``timeit``, median of 7 repeats):

- one Ed25519 verify of a real 307-byte record (``identity.verify``);
- ``codec.decode`` of the benchmark's PEER_UPDATE frame, message id included,
  and of a HEARTBEAT (digest ping naming 2 changes);
- the checks of a record this process has not seen (``record_from_bytes``
  with its cache cleared: JSON, schema, canonical form, key binding and the
  verify; the key's binding stays cached, as for any peer's next update),
  ``entry_from_wire`` around it, and both with the verify left out;
- a relayed frame (446 bytes) sent on 3 inbound links: 3 × ``sendMessage``
  through Autobahn's own ``sendData`` (with its debug-log arguments), 3 ×
  ``sendMessage`` through our protocol class, and, where the code has it, one
  prepared frame + 3 × ``GossipLink.send_prepared``; Autobahn server protocols
  over ``StringTransport`` (no TLS, no sockets);
- one masked 446-byte client frame through ``dataReceived``, Autobahn's and ours;
- a Twisted ``log.debug`` event dropped by a ``FilteringLogObserver`` at "info"
  (as ``twist`` sets logging up);
- what a table change costs the connection manager when it has all the
  outbound links it wants (schedule + run ``_maintain``, or the
  ``_outbound_wanted`` check), on a ``GossipService`` driven by ``task.Clock``.
"""

import os
import sys
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO), str(REPO / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

from autobahn.twisted.websocket import WebSocketServerProtocol  # noqa: E402
from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.logger import (  # noqa: E402
    FilteringLogObserver, LogLevel, LogLevelFilterPredicate, LogPublisher, Logger)

from peernet import constants  # noqa: E402
from peernet import records  # noqa: E402
from peernet.gossip import codec  # noqa: E402
from peernet.gossip.table import entry_from_wire  # noqa: E402
from peernet.gossip.codec import MessageType as T  # noqa: E402
from peernet.identity import NodeIdentity, verify  # noqa: E402
from peernet.peer import links  # noqa: E402
from peernet.peer.links import GossipLink, GossipServerFactory, GossipServerProtocol  # noqa: E402
from peernet.peer.transport import GossipService  # noqa: E402

from costs import Key, wire_record  # noqa: E402


def per_call(f, n=3000):
    runs = sorted(timeit.repeat(f, number=n, repeat=7))
    return runs[3] / n * 1e6


class _Owner:
    inbound_connections = 0

    def link_message(self, *args):
        pass


class _AutobahnIO(links._GossipProtocolMixin, WebSocketServerProtocol):
    """Our protocol class with Autobahn's own sendData / dataReceived."""

    sendData = WebSocketServerProtocol.sendData
    dataReceived = WebSocketServerProtocol.dataReceived


def _open_protocol(cls):
    protocol = cls()
    protocol.factory = GossipServerFactory(_Owner())
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.state = WebSocketProtocol.STATE_OPEN
    protocol.websocket_version = 13
    protocol.inside_message = False
    protocol.current_frame = None
    protocol.link = object()
    return protocol, transport


def main():
    out = {}
    key = Key("micro", 1)
    ts = 1_800_000_000_000
    record_bytes, rsig = wire_record(key, 2, ts)
    out["Ed25519 verify (identity.verify, 307-byte record)"] = per_call(
        lambda: verify(key.public_key_der, rsig, record_bytes), n=1000)

    body = codec.encode_body(T.PEER_UPDATE, {"id": os.urandom(16), "ts": ts,
                                             "rec": record_bytes, "rsig": rsig})
    if constants.PROTOCOL_VERSION == 1:
        frame = codec.encode(T.PEER_UPDATE, 32, body, key.sign(body))
    else:
        frame = codec.encode(T.PEER_UPDATE, 32, body)
    out["codec.decode + message id"] = per_call(lambda: codec.decode(frame).id)
    beat = codec.encode(T.HEARTBEAT, 1, codec.encode_body(T.HEARTBEAT, {
        "id": os.urandom(16), "ts": ts, "digest": os.urandom(16), "n": 500, "load": 3,
        "recent": [[os.urandom(32), 7, ts], [os.urandom(32), 9, ts]]}))
    out["codec.decode of a HEARTBEAT (2 recent changes)"] = per_call(lambda: codec.decode(beat).id)

    def new_record():
        records._record_from_bytes.cache_clear()
        return records.record_from_bytes(record_bytes, rsig)

    def new_entry():
        records._record_from_bytes.cache_clear()
        return entry_from_wire(record_bytes, rsig, 1.0)

    new_record()  # the key binding, once per key
    out["record check of a new record (record_from_bytes, verify included)"] = per_call(
        new_record, n=1000)
    out["entry_from_wire of a new record (verify included)"] = per_call(new_entry, n=1000)
    real_verify, records.verify = records.verify, lambda *args: None
    try:  # what the record costs besides its signature
        out["record check of a new record, verify left out"] = per_call(new_record)
        out["entry_from_wire of a new record, verify left out"] = per_call(new_entry)
    finally:
        records.verify = real_verify

    payload = os.urandom(446)
    for label, cls in (("Autobahn's sendData", _AutobahnIO), ("our protocol class", GossipServerProtocol)):
        opened = [_open_protocol(cls) for _ in range(3)]

        def three_sends():
            for protocol, transport in opened:
                protocol.sendMessage(payload, isBinary=True)
                transport.clear()

        out[f"relay to 3 inbound links: 3 x sendMessage, {label}"] = per_call(three_sends)
    if hasattr(links, "prepare_frame"):
        targets = []
        for protocol, transport in (_open_protocol(GossipServerProtocol) for _ in range(3)):
            link = GossipLink(outbound=False)
            link.protocol, link.opened = protocol, True
            targets.append((link, transport))

        def prepared_sends():
            prepared = links.prepare_frame(payload)
            for link, transport in targets:
                link.send_prepared(prepared)
                transport.clear()

        out["relay to 3 inbound links: one prepared frame + 3 x send_prepared"] = per_call(
            prepared_sends)

    wire = PreparedMessage(payload, True, True, True).payloadHybi
    for label, cls in (("Autobahn's dataReceived", _AutobahnIO), ("our protocol class", GossipServerProtocol)):
        protocol, _ = _open_protocol(cls)
        out[f"receive one 446-byte frame, {label}"] = per_call(lambda: protocol.dataReceived(wire))

    publisher = LogPublisher()
    kept = []
    publisher.addObserver(FilteringLogObserver(kept.append, [LogLevelFilterPredicate(LogLevel.info)]))
    log = Logger(namespace="peernet.peer.transport", observer=publisher)
    out["a log.debug event dropped at level info"] = per_call(
        lambda: log.debug("table {kind} {peer_id}", kind="updated", peer_id="ab" * 32))
    assert not kept

    clock = Clock()
    service = GossipService(clock, NodeIdentity.generate(), broadcasting=False)
    service.running = True
    for i in range(9):
        link = GossipLink(outbound=(i == 0))
        service._links[link.id] = link
    service.target_links = 1

    def schedule_and_run():
        service._schedule_maintain(0)
        clock.advance(0)

    out["table change, manager has its links: schedule + run _maintain"] = per_call(schedule_and_run)
    if hasattr(service, "_outbound_wanted"):
        out["table change, manager has its links: _outbound_wanted check"] = per_call(
            service._outbound_wanted)

    for name, us in out.items():
        print(f"{us:8.2f} us  {name}")


# -- third pass: the transport (issue 9, "lean") -------------------------------------------------
#
# Rows for the transport's own framing and per-frame work (best of 15 runs of 2000 calls);
# each runs on the old code too
# (a ``git archive`` copy with PYTHONPATH pointing at it), so before / after compare:
#
# - one masked 446-byte client frame received by Autobahn's own server protocol (no peernet
#   code on its path: NVX masker per frame, txaio "message" event) and by ours (fast path);
# - a relayed frame framed for 2 inbound links (shared, unmasked) and 1 outbound link
#   (masked with a fresh key) and sent: ``prepare_frame`` + 3 x ``send_prepared``;
# - ``GossipService.link_message`` of one relayed push on a service with 9 open links
#   (task.Clock, StringTransports), the core's ``receive`` replaced by the actions of a
#   relay (a table change, 3 Sends, digest pings due on 3 lacking links), so what is timed
#   is the transport: meters, relay caps, framing, sends, the tick; the real core.tick runs
#   when due (every 50 ms of clock: one frame in 25).


class _AutobahnServer(WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        pass


def _lean_service():
    from peernet.gossip.core import Send, TableChange

    clock = Clock()
    clock.advance(1_800_000_000)
    svc = GossipService(clock, NodeIdentity.generate(), broadcasting=False)
    svc.running = True
    svc.target_links = 1  # the connection manager has its links, as in costs.py
    opened = []
    for i in range(9):
        protocol, transport = _open_protocol(GossipServerProtocol)
        protocol.factory.owner = svc
        link = GossipLink(outbound=(i == 0), peer_id=os.urandom(32).hex())
        link.protocol, protocol.link = protocol, link
        svc._links[link.id] = link
        svc.link_open(link)
        svc.core.links[link.id].hello_received = True
        opened.append((link, transport))
    clock.advance(0.01)
    frame = os.urandom(446)
    targets = [link.id for link, _ in opened[:3]]  # the outbound link + 2 inbound
    lacking = [svc.core.links[link.id] for link, _ in opened[6:]]

    def receive(link_id, payload):
        due = clock.seconds() + constants.DIGEST_PING_DELAY
        for state in lacking:
            if state.ping_due is None:
                state.ping_due = due
        return [TableChange("updated", "ab" * 32)] + [Send(t, frame) for t in targets]

    svc.core.receive = receive
    src = opened[5][0]

    def one():
        clock.advance(0.002)  # 500 frames/s
        svc.link_message(src, frame, True)
        for _, transport in opened:
            transport.clear()

    return one


def best_per_call(f, n=2000, repeat=15):
    """µs per call, best of ``repeat`` runs (the machine is shared: the
    fastest run is the one least disturbed)."""
    return min(timeit.repeat(f, number=n, repeat=repeat)) / n * 1e6


def _lean_rows():
    per_call = best_per_call
    out = {}
    payload = os.urandom(446)
    wire = PreparedMessage(payload, True, True, True).payloadHybi
    for label, cls in (("Autobahn's own server protocol", _AutobahnServer),
                       ("our protocol class", GossipServerProtocol)):
        protocol, _ = _open_protocol(cls)
        out[f"lean: receive one masked 446-byte frame, {label}"] = per_call(
            lambda: protocol.dataReceived(wire))
    targets = []
    for i in range(3):
        protocol, transport = _open_protocol(GossipServerProtocol)
        link = GossipLink(outbound=(i == 0))
        link.protocol, link.opened = protocol, True
        targets.append((link, transport))

    def relay_frames():
        shared = links.prepare_frame(payload)
        for link, transport in targets:
            link.send_prepared(links.prepare_frame(payload, masked=True) if link.outbound
                               else shared)
            transport.clear()

    out["lean: relay framed for 2 inbound + 1 outbound link, 3 x send_prepared"] = per_call(
        relay_frames)
    out["lean: link_message of one relayed push, transport only (core stubbed)"] = per_call(
        _lean_service())
    return out


if __name__ == "__main__":
    main()
    for name, us in _lean_rows().items():
        print(f"{us:8.2f} us  {name}")
