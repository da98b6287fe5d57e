"""A hostile gossip peer, built on peernet's own codec, records, identity and TLS.

It dials a real ``twist peer --broadcast`` over wss + mutual TLS exactly as an
honest node would (Autobahn client, :class:`peernet.tls.MutualTLS` pinned to
the target's peer_id), says a valid broadcasting HELLO with its own signed
record, and then misbehaves in one of the ways listed in ``ATTACKS``.  It runs
as its own process (so its CPU and memory are not the test's), writes one
JSON object per line on stdout (``{"event": ...}``) and ends with a
``{"event": "result", ...}`` line.

    python hostile_peer.py --target wss://127.0.0.10:PORT/gossip --pin PEER_ID \\
        --attack forged_signature [--retry] [--rate 10000 --seconds 5] ...

``--retry``: after the target closed the link, dial again with the same key and
report whether the WebSocket opened (``"retry": "open"``) or the target refused
it during the TLS handshake (``"retry": "refused"``).

``--impostor HOST:PORT``: also listen there with a *different* key and
advertise that address in the attacker's record, so a target that dials the
attacker's record meets a server presenting the wrong key for the pinned
peer_id (the impostor reports whether any application byte arrived).
"""

import argparse
import json
import os
import random
import sys
import time

import msgpack
from autobahn.exception import Disconnected
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import HostnameEndpoint, serverFromString, wrapClientTLS
from twisted.internet.interfaces import IPushProducer
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from peernet import constants
from peernet.gossip import codec
from peernet.gossip.codec import MessageType as T
from peernet.gossip.core import GossipCore
from peernet.identity import NodeIdentity
from peernet.peer.transport import parse_gossip_address
from peernet.records import canonical_json
from peernet.tls import MutualTLS


def emit(event, **fields):
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
    sys.stdout.flush()


def now_ms():
    return int(time.time() * 1000)


class Attacker:
    """The attacker's identity, its own valid record, and frame builders."""

    def __init__(self, reactor, identity, advertise):
        self.identity = identity
        # A GossipCore only to issue a genuine signed record and HELLO.
        self.core = GossipCore(identity, reactor, random.Random(), broadcasting=True,
                               addresses=[advertise])

    @property
    def entry(self):
        return self.core.own

    def hello(self, silent=False):
        if silent:
            # What a silent peer says: bc false, nothing that identifies it.
            core = GossipCore(self.identity, self.core.clock, random.Random())
            return core.link_opened("target", True, None)[0].frame
        return self.core.link_opened("target", True, None)[0].frame

    def push(self, rec=None, rsig=None, *, mtype=T.PEER_ANNOUNCEMENT, ttl=constants.TTL_ANNOUNCEMENT,
             ts=None):
        """A push frame; by default the attacker's own record, signed correctly.
        (Protocol version 2: the record's signature ``rsig`` is the only one.)"""
        body = msgpack.packb({
            "id": os.urandom(codec.ID_BYTES), "ts": now_ms() if ts is None else ts,
            "rec": self.entry.record_bytes if rec is None else rec,
            "rsig": self.entry.signature if rsig is None else rsig,
        }, use_bin_type=True)
        return msgpack.packb({"v": constants.PROTOCOL_VERSION, "type": int(mtype), "ttl": ttl,
                              "body": body}, use_bin_type=True)

    def forged_hello(self, victim, victim_key=None):
        """A broadcasting HELLO whose record names ``victim`` (signed by us)."""
        changes = {"peer_id": victim}
        if victim_key:
            changes["public_key"] = victim_key
        rec, rsig = self.record_as(**changes)
        body = codec.encode_body(T.HELLO, {
            "id": os.urandom(16), "ts": now_ms(), "versions": [constants.PROTOCOL_VERSION],
            "bc": True, "rec": rec, "rsig": rsig, "repos": 0, "digest": bytes(16), "n": 0})
        return codec.encode(T.HELLO, 0, body)

    def record_as(self, **changes):
        """The attacker's record with fields replaced, canonical bytes + own signature."""
        record = dict(self.entry.record, **changes)
        record_bytes = canonical_json(record)
        return record_bytes, self.identity.sign(record_bytes)

    def request(self, repo, ttl=constants.TTL_REQUEST):
        body = codec.encode_body(T.PEER_REQUEST, {"id": os.urandom(codec.ID_BYTES),
                                                  "ts": now_ms(), "repo": repo})
        return codec.encode(T.PEER_REQUEST, ttl, body)


# -- attacks: each returns a list of frames, or a callable for timed ones --------------


def attack_forged_signature(a, opts):
    # Valid structure; the record's signature (a push's only one) is zeros,
    # random bytes, or a real signature by another key.
    other = NodeIdentity.generate().sign(a.entry.record_bytes)
    return [a.push(rsig=bytes(64)), a.push(rsig=os.urandom(64)),
            a.push(rsig=other), a.push(rsig=bytes(64), mtype=T.PEER_UPDATE),
            a.push(rsig=os.urandom(64), mtype=T.PEER_UPDATE), a.push(rsig=other, mtype=T.PEER_UPDATE)]


def attack_other_peer_id(a, opts):
    """Records claiming another peer's peer_id (``--victim``; with ``--victim-key``
    also its public key), signed by the attacker."""
    frames = []
    for i in range(6):
        changes = {"peer_id": opts.victim, "version": a.entry.record["version"] + 1 + i}
        if opts.victim_key and i % 2:
            changes["public_key"] = opts.victim_key
        rec, rsig = a.record_as(**changes)
        frames.append(a.push(rec, rsig, mtype=T.PEER_UPDATE if i % 3 else T.PEER_ANNOUNCEMENT))
    return frames


def attack_ttl(a, opts):
    return [a.push(ttl=33), a.push(ttl=-1), a.push(ttl=33, mtype=T.PEER_UPDATE),
            a.push(ttl=-1, mtype=T.PEER_UPDATE), a.push(ttl=40), a.push(ttl=-32)]


def attack_timestamps(a, opts):
    out = []
    for offset in (31_000, -31_000, 31_000, -31_000, 45_000, -3_600_000):
        out.append(a.push(ts=now_ms() + offset))
    return out


def attack_unknown_type(a, opts):
    frames = []
    for mtype in (0, 7, 8, 99, 255, 7):
        body = codec.encode_body(T.HEARTBEAT, {"id": os.urandom(16), "ts": now_ms(),
                                               "digest": bytes(16), "n": 0, "load": 0})
        frames.append(msgpack.packb({"v": constants.PROTOCOL_VERSION, "type": mtype, "ttl": 0,
                                     "body": body}, use_bin_type=True))
    return frames


def attack_truncated(a, opts):
    good = a.push()
    return [good[:1], good[:len(good) // 2], good[:-1], good[:-7], good[:10], b""]


def attack_oversized(a, opts):
    # One frame just over the 64 KiB limit (a valid msgpack map with a big body).
    body = msgpack.packb({"id": os.urandom(16), "ts": now_ms(), "rec": b"x" * 70_000,
                          "rsig": bytes(64)}, use_bin_type=True)
    frame = msgpack.packb({"v": constants.PROTOCOL_VERSION, "type": int(T.PEER_ANNOUNCEMENT),
                           "ttl": 1, "body": body}, use_bin_type=True)
    assert len(frame) > constants.MAX_MESSAGE_BYTES
    return [frame]


def attack_silent_impersonation(a, opts):
    """Records naming a silent peer's peer_id (``--victim``, ``--victim-key``)."""
    frames = []
    for i in range(6):
        changes = {"peer_id": opts.victim, "version": a.entry.record["version"] + 1 + i}
        if i % 2:
            changes["public_key"] = opts.victim_key
        rec, rsig = a.record_as(**changes)
        frames.append(a.push(rec, rsig, mtype=T.PEER_UPDATE if i % 2 else T.PEER_ANNOUNCEMENT))
    return frames


def attack_hello_impersonation(a, opts):
    """The HELLO (sent on open) claimed to be ``--victim``; now talk as if it
    had been accepted."""
    frames = []
    for _ in range(6):
        body = codec.encode_body(T.HEARTBEAT, {"id": os.urandom(16), "ts": now_ms(),
                                               "digest": bytes(16), "n": 0, "load": 0})
        frames.append(codec.encode(T.HEARTBEAT, 1, body))
    return frames


class Fresh:
    """``count`` frames, each made when it is sent (so its id is new and its
    timestamp current however long the attack lasts)."""

    def __init__(self, count, make):
        self.count, self.make = count, make

    def __len__(self):
        return self.count

    def __getitem__(self, part):
        start, stop, _ = part.indices(self.count)
        return [self.make() for _ in range(start, stop)]


def timed_flood(a, opts):
    """``opts.rate`` frames per second for ``opts.seconds``: fresh ids, current
    timestamps, valid signatures (each costs the receiver a verification)."""
    return Fresh(int(opts.rate * opts.seconds), a.push)


def timed_request_storm(a, opts):
    return Fresh(int(opts.rate * opts.seconds),
                 lambda: a.request(f"nothing-{os.urandom(6).hex()}"))


ATTACKS = {
    "forged_signature": attack_forged_signature,
    "other_peer_id": attack_other_peer_id,
    "ttl": attack_ttl,
    "timestamps": attack_timestamps,
    "unknown_type": attack_unknown_type,
    "truncated": attack_truncated,
    "oversized": attack_oversized,
    "silent_impersonation": attack_silent_impersonation,
    "hello_impersonation": attack_hello_impersonation,
    "flood": timed_flood,
    "request_storm": timed_request_storm,
    "replay": None,  # built from captured frames (see Session.replay)
    "none": lambda a, opts: [],
}
PACED = {"flood", "request_storm"}


# -- the link -------------------------------------------------------------------------


class HostileProtocol(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.session.opened(self)

    def onMessage(self, payload, isBinary):
        self.factory.session.received(payload)

    def onClose(self, wasClean, code, reason):
        self.factory.session.closed(code, reason)


class Session:
    def __init__(self, reactor, opts, identity):
        self.reactor = reactor
        self.opts = opts
        self.identity = identity
        self.attacker = Attacker(reactor, identity, opts.advertise)
        self.proto = None
        self.open_d = None
        self.closed_d = None
        self.close_code = None
        self.close_reason = None
        self.received_types = {}
        self.captured = []  # PEER_UPDATE / PEER_ANNOUNCEMENT frames from the target
        self.sent = 0
        self.pressure = Pressure()

    def connect(self):
        host, port = parse_gossip_address(self.opts.target)
        self.open_d, self.closed_d = defer.Deferred(), defer.Deferred()
        factory = WebSocketClientFactory(url=self.opts.target,
                                         protocols=[constants.WEBSOCKET_SUBPROTOCOL])
        factory.protocol = HostileProtocol
        factory.session = self
        # Unlimited on our side (the target's limits are what is tested).
        factory.setProtocolOptions(perMessageCompressionOffers=[], autoPingInterval=0,
                                   openHandshakeTimeout=10, closeHandshakeTimeout=2,
                                   maxFramePayloadSize=0, maxMessagePayloadSize=0)
        creator = MutualTLS(self.identity, expected_peer_id=self.opts.pin)
        d = wrapClientTLS(creator, HostnameEndpoint(self.reactor, host, port, timeout=10)
                          ).connect(factory)
        d.addErrback(lambda f: self._fail_open(f.getErrorMessage()))
        return self.open_d

    def _fail_open(self, why):
        if not self.open_d.called:
            self.open_d.callback(False)
        if not self.closed_d.called:
            self.closed_d.callback(None)
        self.close_reason = why

    def opened(self, proto):
        self.proto = proto
        # TCP backpressure: a real attacker cannot push faster than the
        # target reads (the kernel buffers are all it gets), so neither do we;
        # "sent" then counts frames the connection took, not our own queue.
        self.pressure = Pressure()
        proto.transport.registerProducer(self.pressure, True)
        if self.opts.attack == "hello_impersonation":
            hello = self.attacker.forged_hello(self.opts.victim, self.opts.victim_key)
        else:
            hello = self.attacker.hello(silent=self.opts.silent)
        proto.sendMessage(hello, isBinary=True)
        if not self.open_d.called:
            self.open_d.callback(True)

    def received(self, payload):
        try:
            msg = codec.decode(payload)
        except codec.CodecError:
            name = "invalid"
        else:
            name = msg.type.name
            if msg.type in (T.PEER_UPDATE, T.PEER_ANNOUNCEMENT):
                self.captured.append(payload)
        self.received_types[name] = self.received_types.get(name, 0) + 1

    def closed(self, code, reason):
        self.close_code, self.close_reason = code, reason
        if not self.open_d.called:
            self.open_d.callback(False)
        if not self.closed_d.called:
            self.closed_d.callback(None)

    def send(self, frame):
        if self.proto is not None and self.close_code is None and not self.closed_d.called:
            try:
                self.proto.sendMessage(frame, isBinary=True)
            except Disconnected:
                # The target closed the link; onClose is on its way.
                return
            self.sent += 1

    @defer.inlineCallbacks
    def writable(self):
        """Wait (polling, bounded by the link's life) while TCP pushes back."""
        while self.pressure.paused and not self.closed_d.called:
            yield task.deferLater(self.reactor, 0.005, lambda: None)

    @defer.inlineCallbacks
    def send_paced(self, frames, rate):
        """Send at ``rate`` frames/s in 10 ms slices (until the link closes)."""
        per_slice = max(1, int(rate / 100))
        start = self.reactor.seconds()
        for i in range(0, len(frames), per_slice):
            yield self.writable()
            if self.closed_d.called:
                break
            for frame in frames[i:i + per_slice]:
                self.send(frame)
            due = start + (i + per_slice) / rate
            yield task.deferLater(self.reactor, max(0.0, due - self.reactor.seconds()),
                                  lambda: None)
        return self.reactor.seconds() - start


@defer.inlineCallbacks
def flood_with_reconnects(reactor, opts, session, frames):
    """Send ``frames`` at ``opts.rate`` per second; whenever the target cuts
    the link, dial again with a fresh key (as a Sybil or a silent peer can)
    and go on, until every frame is sent.  Returns (sessions, seconds)."""
    per_slice = max(1, int(opts.rate / 100))
    start = reactor.seconds()
    sessions = [session]
    i = 0
    while i < len(frames) and reactor.seconds() - start < opts.seconds * 2:
        if session.closed_d.called:
            session = Session(reactor, opts, NodeIdentity.generate())
            sessions.append(session)
            ok = yield session.connect()
            if not ok:
                yield sleep(reactor, 0.1)
                continue
            yield sleep(reactor, 0.02)  # the HELLO goes first
        yield session.writable()
        for frame in frames[i:i + per_slice]:
            session.send(frame)
        i += per_slice
        due = start + i / opts.rate
        yield sleep(reactor, max(0.0, due - reactor.seconds()))
    return sessions, reactor.seconds() - start


@implementer(IPushProducer)
class Pressure:
    """Told by the transport when its buffer is full (pause) or drained."""

    paused = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        self.paused = False


class ImpostorServer(protocol.Protocol):
    """Counts application bytes received (after TLS): must stay 0."""

    def connectionMade(self):
        self.factory.report["connections"] += 1

    def dataReceived(self, data):
        self.factory.report["app_bytes"] += len(data)


def sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def main(reactor, opts):
    identity = NodeIdentity.generate()
    impostor = None
    if opts.impostor:
        host, port = opts.impostor.rsplit(":", 1)
        factory = protocol.Factory.forProtocol(ImpostorServer)
        factory.report = {"connections": 0, "app_bytes": 0}
        other = NodeIdentity.generate()
        impostor = factory.report
        impostor["peer_id"] = other.peer_id
        listening = yield serverFromString(reactor, f"tcp:{port}:interface={host}").listen(
            TLSMemoryBIOFactory(MutualTLS(other), False, factory))
        opts.advertise = f"wss://{host}:{listening.getHost().port}/gossip"
        emit("impostor", address=opts.advertise, peer_id=other.peer_id)
    session = Session(reactor, opts, identity)
    emit("identity", peer_id=identity.peer_id)
    ok = yield session.connect()
    emit("open", ok=ok, reason=session.close_reason)
    result = {"peer_id": identity.peer_id, "opened": ok}
    if ok:
        yield sleep(reactor, opts.settle)
        attack_started = time.monotonic()
        if opts.attack == "replay":
            # Capture what the target pushes to us (the test publishes now),
            # then replay it: copies inside the window, or after it.
            emit("capturing")
            yield sleep(reactor, opts.capture)
            captured = list(session.captured)
            emit("captured", frames=len(captured))
            if opts.replay_delay:
                yield sleep(reactor, opts.replay_delay)
            frames = [f for f in captured for _ in range(opts.copies)]
            result["captured"] = len(captured)
            if opts.replay_target:
                # Replay to another peer than the one we captured from.
                session.proto.sendClose(code=1000)
                yield session.closed_d
                opts.target, opts.pin = opts.replay_target, opts.replay_pin
                session = Session(reactor, opts, identity)
                ok = yield session.connect()
                emit("replay_open", ok=ok, reason=session.close_reason)
                yield sleep(reactor, opts.settle)
            for f in frames:
                session.send(f)
        else:
            frames = ATTACKS[opts.attack](session.attacker, opts)
            emit("attacking", frames=len(frames))
            if opts.attack in PACED and opts.reconnect:
                sessions, elapsed = yield flood_with_reconnects(reactor, opts, session, frames)
                result.update(send_seconds=round(elapsed, 2), links=len(sessions),
                              links_cut_off=sum(1 for x in sessions if x.close_code == 4008),
                              frames_total=sum(x.sent for x in sessions),
                              close_codes=[x.close_code for x in sessions])
                session = sessions[-1]
            elif opts.attack in PACED:
                elapsed = yield session.send_paced(frames, opts.rate)
                result["send_seconds"] = round(elapsed, 2)
            else:
                for f in frames:
                    session.send(f)
        result["attack_seconds"] = round(time.monotonic() - attack_started, 2)
        emit("sent", frames=session.sent)
        # Wait for the target to close the link (or give up after --linger).
        waited = defer.Deferred()
        timer = reactor.callLater(opts.linger, lambda: waited.called or waited.callback(None))
        session.closed_d.addBoth(lambda _: waited.called or waited.callback(None))
        yield waited
        if timer.active():
            timer.cancel()
        result["closed_by_target"] = session.closed_d.called
        result.update(close_code=session.close_code, close_reason=session.close_reason)
        if not session.closed_d.called and opts.close:
            session.proto.sendClose(code=1000)
            yield sleep(reactor, 1)
    else:
        result.update(closed_by_target=True, close_code=None, close_reason=session.close_reason)
    result.update(sent=session.sent, received=session.received_types)
    if opts.retry:
        again = Session(reactor, opts, identity)
        reopened = yield again.connect()
        result["retry"] = "open" if reopened else "refused"
        result["retry_reason"] = again.close_reason
        if reopened:
            again.proto.sendClose(code=1000)
            yield sleep(reactor, 0.5)
    if impostor is not None:
        yield sleep(reactor, opts.impostor_wait)
        result["impostor"] = impostor
    emit("result", **result)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="wss://HOST:PORT/gossip of the target")
    p.add_argument("--pin", required=True, help="the target's peer_id")
    p.add_argument("--attack", required=True, choices=sorted(ATTACKS))
    p.add_argument("--advertise", default="wss://127.0.0.66:9/gossip",
                   help="address in the attacker's own record (default: nothing listens)")
    p.add_argument("--victim", help="peer_id to claim")
    p.add_argument("--victim-key", help="base64 public key of the victim")
    p.add_argument("--rate", type=float, default=10_000)
    p.add_argument("--seconds", type=float, default=3)
    p.add_argument("--capture", type=float, default=5)
    p.add_argument("--copies", type=int, default=50)
    p.add_argument("--replay-delay", type=float, default=0)
    p.add_argument("--replay-target", help="replay to this wss:// address instead")
    p.add_argument("--replay-pin", help="peer_id of --replay-target")
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument("--linger", type=float, default=10)
    p.add_argument("--close", action="store_true", help="close the link ourselves after --linger")
    p.add_argument("--retry", action="store_true")
    p.add_argument("--silent", action="store_true",
                   help="say a silent peer's HELLO (no record: the target cannot refuse a key)")
    p.add_argument("--reconnect", action="store_true",
                   help="paced attacks: dial again with a fresh key whenever cut off")
    p.add_argument("--impostor")
    p.add_argument("--impostor-wait", type=float, default=0)
    return p.parse_args(argv)


if __name__ == "__main__":
    from twisted.internet import reactor as _reactor

    _opts = parse(sys.argv[1:])

    def _run():
        d = main(_reactor, _opts)
        d.addErrback(lambda f: emit("error", error=f.getTraceback()))
        d.addBoth(lambda _: _reactor.stop())

    _reactor.callWhenRunning(_run)
    _reactor.run()
