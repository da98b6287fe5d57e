"""Gossip links: Autobahn WebSocket protocols and factories over mutual TLS.

These classes are thin.  They check what belongs to the transport (path,
subprotocol, binary frames) and hand every event to an *owner* (the
:class:`peernet.peer.transport.GossipService`), which runs the GossipCore:

* ``owner.inbound_handshake(protocol, tls_peer_id)`` -> a :class:`GossipLink`,
  or raises ``ConnectionDeny`` (cap reached, refused peer, duplicate link);
* ``owner.link_open(link)``: the WebSocket is open (for a client: the server
  accepted our certificate, since TLS 1.3 lets a client finish its side
  before the server judged it);
* ``owner.link_message(link, payload, is_binary)``;
* ``owner.link_lost(link)``: called exactly once per link, open or not.

Framing: frames we send are built here (:func:`prepare_frame`: the bytes
Autobahn's PreparedMessage makes; a client frame masked with a fresh key from
``os.urandom``), and complete, unfragmented binary frames are received on a
fast path (``_GossipProtocolMixin._whole_frames``); everything else (the
handshake, control frames, fragments, frames split across reads, anything
invalid or oversized) goes through Autobahn's own parser and its checks.
tests/test_peer_frames.py feeds both the same bytes and compares.

Privacy: nothing here logs or keeps the remote socket address.  Autobahn's
own loggers are held at ``error`` (its ``warn`` lines name the peer's
address), and the server protocol overwrites Autobahn's copy of the address
(``self.peer``) as soon as the connection is made.
"""

import itertools
import os

import txaio
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.xormasker import create_xor_masker
from autobahn.websocket.types import ConnectionDeny
from OpenSSL.SSL import WantReadError
from twisted.internet import tcp
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from peernet import constants
from peernet.tls import peer_id_of_transport

log = Logger()

#: Seconds allowed for TCP + TLS + the HTTP upgrade.
OPEN_HANDSHAKE_TIMEOUT = 10.0
#: Seconds to wait for the other side's close frame before dropping.
CLOSE_HANDSHAKE_TIMEOUT = 2.0
#: What Autobahn puts in its Server header (no version: nothing to fingerprint).
SERVER_HEADER = "peernet"
#: Stands in for the remote address wherever Autobahn would keep it.
HIDDEN_PEER = "hidden"

# WebSocket close codes.  An application may send only 1000 or 3000-4999
# (Autobahn enforces it), so ours are 4000 + the RFC 6455 code they mirror.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 4001
CLOSE_UNSUPPORTED_DATA = 4003
CLOSE_POLICY_VIOLATION = 4008

# Autobahn's "warn" lines include the peer's socket address ("dropping
# connection to peer tcp4:..."), so our classes use loggers held at "error".
# Explicit per-logger levels are not changed by txaio.set_global_log_level.
_autobahn_log = txaio.make_logger(level="error")

_link_ids = itertools.count(1)


class GossipLink:
    """One gossip connection as the service sees it.

    ``id`` is an opaque counter (the only name logs use); ``outbound`` says who
    dialled; ``peer_id`` is the pinned peer_id for an outbound link and the
    TLS-proven peer_id for an inbound one (for a silent peer, a throwaway key
    that means nothing once the link closes).  ``protocol`` is the Autobahn
    protocol once a connection exists.
    """

    __slots__ = ("id", "outbound", "peer_id", "protocol", "opened", "closing",
                 "lost", "penalties", "connect_deferred", "deadline", "address",
                 "superseded")

    def __init__(self, outbound, peer_id=None, address=None):
        self.id = next(_link_ids)
        self.outbound = outbound
        self.peer_id = peer_id
        #: the dialled address (outbound only: a broadcasting peer's own URL)
        self.address = address
        self.protocol = None
        self.opened = False
        self.closing = False
        self.lost = False
        self.penalties = 0
        self.connect_deferred = None
        self.deadline = None
        #: closed because another link to the same peer won (not a failure)
        self.superseded = False

    def __repr__(self):
        # Deliberately only the id and direction: safe in any log line.
        return f"<GossipLink {self.id} {'out' if self.outbound else 'in'}>"

    def send(self, frame):
        if self.opened and not self.closing and self.protocol is not None:
            self.protocol.sendMessage(frame, isBinary=True)

    def send_prepared(self, prepared):
        """Send a frame made by :func:`prepare_frame`: unmasked (framed once
        for any number of inbound links: a relay), or, on an outbound link,
        masked for this link alone.  As :meth:`send`, a closing link sends
        nothing."""
        protocol = self.protocol
        if (self.opened and not self.closing and protocol is not None
                and protocol.state == _STATE_OPEN):
            # The counters sendMessage keeps (sendPreparedMessage does not).
            stats = protocol.trafficStats
            stats.outgoingWebSocketMessages += 1
            stats.outgoingOctetsAppLevel += prepared.payload_len
            stats.outgoingOctetsWebSocketLevel += prepared.payload_len
            # Autobahn's sendPreparedMessage without compression (gossip
            # links never negotiate it) is this one call.
            protocol.sendData(prepared.payloadHybi)

    def close(self, code=CLOSE_NORMAL, reason=""):
        """Start the closing handshake (the protocol drops after a timeout)."""
        if self.lost:
            return
        self.closing = True
        if self.protocol is None:
            return
        if self.opened:
            # Close reasons are limited to 123 bytes of UTF-8.
            reason = reason.encode("utf-8")[:120].decode("utf-8", "ignore")
            self.protocol.sendClose(code=code, reason=reason)
        else:
            self.abort()

    def abort(self):
        """Drop the connection at once (no closing handshake)."""
        if self.lost or self.protocol is None or self.protocol.transport is None:
            return
        try:
            self.protocol.transport.abortConnection()
        except AttributeError:
            # Twisted's TLS transport raises this once it has already been
            # torn down; the connection is gone either way.
            pass


_STATE_OPEN = WebSocketProtocol.STATE_OPEN

#: Payloads up to this size are (un)masked by one big-integer XOR here;
#: longer ones by Autobahn's masker (native, faster once the payload is long).
XOR_INLINE_MAX = 4096


def xor_mask(payload, key):
    """``payload`` XOR the 4-byte ``key`` repeated (RFC 6455 5.3), from its
    first byte.  The same call masks and unmasks."""
    n = len(payload)
    if n > XOR_INLINE_MAX:
        return create_xor_masker(key, n).process(payload)
    if not n:
        return payload
    return (int.from_bytes(payload, "little")
            ^ int.from_bytes((key * ((n >> 2) + 1))[:n], "little")).to_bytes(n, "little")


class _MaskKeys:
    """Fresh, unpredictable 4-byte masking keys, drawn from ``os.urandom``
    1024 at a time (one system call per 1024 frames, not one per frame)."""

    __slots__ = ("_pool", "_at")

    def __init__(self):
        self._pool = b""
        self._at = 0

    def next(self):
        at = self._at
        if at >= len(self._pool):
            self._pool = os.urandom(4096)
            at = 0
        self._at = at + 4
        return self._pool[at:at + 4]


_mask_keys = _MaskKeys()


class PreparedFrame:
    """One binary WebSocket frame, ready to write: ``payloadHybi`` (the wire
    bytes, as in Autobahn's PreparedMessage), ``payload_len``."""

    __slots__ = ("payloadHybi", "payload_len")

    def __init__(self, wire, payload_len):
        self.payloadHybi = wire
        self.payload_len = payload_len


def _frame_header(n, mask_bit):
    # FIN + binary opcode; 7-bit, 16-bit or 64-bit length, minimal encoding.
    if n <= 125:
        return bytes((0x82, mask_bit | n))
    if n <= 0xFFFF:
        return bytes((0x82, mask_bit | 126)) + n.to_bytes(2, "big")
    return bytes((0x82, mask_bit | 127)) + n.to_bytes(8, "big")


def prepare_frame(frame, masked=False):
    """``frame`` framed as a binary WebSocket message (no compression: gossip
    links never negotiate it) for :meth:`GossipLink.send_prepared`.

    Unmasked (the server side of a link, an inbound one), one prepared frame
    can go to any number of links.  A client must mask each frame with a
    fresh key (RFC 6455 5.3): ``masked=True`` draws one from the operating
    system's random source, so such a frame is for one outbound link, once.
    The bytes are those Autobahn's PreparedMessage makes (tests check it)."""
    n = len(frame)
    if masked:
        key = _mask_keys.next()
        wire = b"".join((_frame_header(n, 0x80), key, xor_mask(frame, key)))
    else:
        wire = _frame_header(n, 0) + frame
    return PreparedFrame(wire, n)


def _set_options(factory, server):
    options = dict(
        maxFramePayloadSize=constants.MAX_MESSAGE_BYTES,
        maxMessagePayloadSize=constants.MAX_MESSAGE_BYTES,
        openHandshakeTimeout=OPEN_HANDSHAKE_TIMEOUT,
        closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
        # Liveness is the GossipCore's job (HEARTBEAT every HEARTBEAT_INTERVAL,
        # a link silent for LINK_DEAD_AFTER is closed); Autobahn pings would
        # only duplicate it.
        autoPingInterval=0,
        failByDrop=True,
        tcpNoDelay=True,
    )
    if server:
        # Compression off: it would let a peer probe the plaintext length
        # (CRIME-style) and costs CPU for signed, high-entropy frames.
        options.update(perMessageCompressionAccept=lambda offers: None,
                       webStatus=False, requireMaskedClientFrames=True)
    else:
        options.update(perMessageCompressionOffers=[])
    factory.setProtocolOptions(**options)


class _GossipProtocolMixin:
    log = _autobahn_log
    link = None
    _reported_lost = False

    # Autobahn's Twisted adapter builds the arguments of a debug log line
    # (``hltype``/``hlval``: inspect + click.style, ~7 us) on every
    # dataReceived and every sendData, even with its logger held at "error".
    # These two overrides are the same code minus that line; everything else
    # (state, traffic counters, octet logging, the send queue) is Autobahn's.
    # tests/test_peer_transport.py checks them against Autobahn's own.

    def dataReceived(self, data):
        if (self.state != _STATE_OPEN or self.data or self.current_frame is not None
                or self.inside_message or self.logOctets or self.logFrames
                or self.trackedTimings):
            # Handshake, a frame split across reads, a fragmented message,
            # logging on: Autobahn's parser, unchanged.
            self._dataReceived(data)
            return
        self.trafficStats.incomingOctetsWireLevel += len(data)
        at = self._whole_frames(data)
        if at < len(data):
            # Whatever the fast path does not take (a control frame, a
            # fragment, a partial or oversized frame, anything invalid) goes
            # to Autobahn's parser from its first byte, with all its checks.
            self.data = data[at:] if at else data
            self.consumeData()

    def _whole_frames(self, data):
        """Deliver the complete, unfragmented binary frames at the start of
        ``data`` (masked if we are the server, unmasked if the client, within
        the size limits, minimal length encoding) and return the offset of
        the first byte not consumed.  Exactly what Autobahn's processData
        accepts and delivers for such a frame, without its per-frame masker
        object, frame header object and callback chain; it stops at the first
        frame that is anything else and leaves it to Autobahn."""
        end = len(data)
        at = 0
        server = self.factory.isServer
        if server and not self.applyMask:
            return 0
        want_mask = 0x80 if server else 0
        key_len = 4 if server else 0
        max_frame = self.maxFramePayloadSize
        max_message = self.maxMessagePayloadSize
        stats = self.trafficStats
        while at + 2 <= end and self.state == _STATE_OPEN and not self.failedByMe:
            b1 = data[at + 1]
            if data[at] != 0x82 or (b1 & 0x80) != want_mask:
                break  # not FIN + binary, a reserved bit set, or masking wrong
            n = b1 & 0x7F
            head = at + 2
            if n == 126:
                if head + 2 > end:
                    break
                n = (data[head] << 8) | data[head + 1]
                if n < 126:
                    break  # not the minimal length encoding: Autobahn refuses it
                head += 2
            elif n == 127:
                break  # 64 KiB or more: over our limit, Autobahn fails the link
            if 0 < max_frame < n or 0 < max_message < n:
                break
            stop = head + key_len + n
            if stop > end:
                break
            if key_len:
                payload = xor_mask(data[head + 4:stop], data[head:head + 4])
            else:
                payload = data[head:stop]
            at = stop
            stats.incomingOctetsWebSocketLevel += n
            stats.incomingOctetsAppLevel += n
            stats.incomingWebSocketFrames += 1
            stats.incomingWebSocketMessages += 1
            if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                self._cancelAutoPingTimeoutCall()
            self.onMessage(payload, True)
        return at

    def onMessageEnd(self):
        # Autobahn's, minus the "message" event it fires through txaio to
        # observers (futures and callbacks per message); our protocols have
        # none: onMessage is the one consumer.  Used for what the fast path
        # leaves to Autobahn (fragmented messages, frames split across reads).
        if not self.failedByMe:
            if self.trackedTimings:
                self.trackedTimings.track("onMessage")
            self._onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None

    def sendData(self, data, sync=False, chopsize=None):
        if sync or chopsize or self.send_queue:
            # The queued and chopped paths: Autobahn's, unchanged.
            return super().sendData(data, sync, chopsize)
        self.transport.write(data)
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif self.state in (WebSocketProtocol.STATE_CONNECTING,
                            WebSocketProtocol.STATE_PROXY_CONNECTING):
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)
        if self.logOctets:
            self.logTxOctets(data, False)

    # An exception escaping into Twisted would be logged with the
    # connection's log prefix, which for a server connection holds the
    # client's address; so every call into the owner is guarded here and
    # logged by link id only.

    def _call_owner(self, what, *args):
        try:
            return getattr(self.factory.owner, what)(*args)
        except Exception:
            log.failure("gossip {what} failed on link {link_id}", what=what,
                        link_id=getattr(self.link, "id", None))
            return None

    def onOpen(self):
        self._call_owner("link_open", self.link)

    def onMessage(self, payload, isBinary):
        self._call_owner("link_message", self.link, payload, isBinary)

    def _max_message_size_exceeded(self, msg_size, max_msg_size, reason):
        # Autobahn's hook for a frame or message over the 64 KiB limit: it
        # fails the connection; the owner also charges the sender (no honest
        # peer sends one), so it cannot just reconnect and do it again.
        self._call_owner("link_oversized", self.link)
        super()._max_message_size_exceeded(msg_size, max_msg_size, reason)

    def onPong(self, payload):
        # The answer to the owner's round-trip probe (GossipService._probe).
        self._call_owner("link_pong", self.link, payload)

    def connectionLost(self, reason):
        try:
            super().connectionLost(reason)
        except Exception:
            log.failure("Autobahn failed while closing link {link_id}",
                        link_id=getattr(self.link, "id", None))
        finally:
            if not self._reported_lost and self.link is not None:
                self._reported_lost = True
                self._call_owner("link_lost", self.link)


class GossipServerProtocol(_GossipProtocolMixin, WebSocketServerProtocol):
    """Accepts ``wss://.../gossip`` with subprotocol ``peernet.2`` only
    (constants.WEBSOCKET_SUBPROTOCOL)."""

    _counted = False

    def connectionMade(self):
        self._counted = True
        self.factory.owner.inbound_connections += 1
        super().connectionMade()
        # Autobahn keeps the remote address in self.peer (and in the request
        # it hands to onConnect); a silent peer's address must not be kept.
        self.peer = HIDDEN_PEER
        details = getattr(self, "_transport_details", None)
        if details is not None:
            try:
                details.peer = None
            except Exception:  # pragma: no cover - older Autobahn
                pass

    def connectionLost(self, reason):
        try:
            super().connectionLost(reason)
        finally:
            if self._counted:
                self._counted = False
                self.factory.owner.inbound_connections -= 1

    def onConnect(self, request):
        if request.path != constants.GOSSIP_PATH:
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, "unknown path")
        if constants.WEBSOCKET_SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, _subprotocol_refusal(request.protocols))
        tls_peer_id = peer_id_of_transport(self.transport)
        if tls_peer_id is None:  # pragma: no cover - MutualTLS requires a certificate
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "no client certificate")
        try:
            self.link = self.factory.owner.inbound_handshake(self, tls_peer_id)
        except ConnectionDeny:
            raise
        except Exception:
            log.failure("gossip inbound_handshake failed")
            raise ConnectionDeny(ConnectionDeny.INTERNAL_SERVER_ERROR, "internal error")
        return constants.WEBSOCKET_SUBPROTOCOL


def _subprotocol_refusal(offered):
    """The HTTP 400 reason for a handshake without our subprotocol: a peer
    running an older (or newer) peernet learns which version this one speaks."""
    others = [p for p in offered if isinstance(p, str) and p.startswith("peernet.")][:3]
    reason = (f"subprotocol {constants.WEBSOCKET_SUBPROTOCOL} required (gossip protocol "
              f"version {constants.PROTOCOL_VERSION})")
    if others:
        reason += f"; this peer does not speak {', '.join(p[:16] for p in others)}: upgrade peernet"
        log.info("refused an inbound gossip link that speaks {offered} (this node speaks {ours})",
                 offered=", ".join(p[:16] for p in others), ours=constants.WEBSOCKET_SUBPROTOCOL)
    return reason


class GossipClientProtocol(_GossipProtocolMixin, WebSocketClientProtocol):
    def onConnect(self, response):
        if response.protocol != constants.WEBSOCKET_SUBPROTOCOL:
            # Raising makes Autobahn fail the connection; link_lost follows.
            raise ValueError(f"the server did not select {constants.WEBSOCKET_SUBPROTOCOL}")

    def failHandshake(self, reason):
        # Autobahn logs this at "info" on its own logger (held at "error"):
        # say it on ours, so an operator sees e.g. that the dialled peer
        # runs another protocol version.  The dialled peer is a broadcasting
        # one (public address); the line names the link id only anyway.
        log.info("gossip link {link_id}: the WebSocket handshake failed: {reason}",
                 link_id=getattr(self.link, "id", None), reason=str(reason)[:300])
        super().failHandshake(reason)


class GossipServerFactory(WebSocketServerFactory):
    """``GossipServerFactory(owner)``: wrap it in :func:`tls_server_factory`."""

    protocol = GossipServerProtocol
    log = _autobahn_log
    noisy = False

    def __init__(self, owner):
        # No URL: a URL would carry the listening port (0 in tests, which
        # Autobahn rejects) and turn on Host-header port checks that break
        # behind NAT or port forwarding.
        super().__init__(protocols=[constants.WEBSOCKET_SUBPROTOCOL], server=SERVER_HEADER)
        self.owner = owner
        _set_options(self, server=True)


class GossipClientFactory(WebSocketClientFactory):
    """One factory per dial: ``GossipClientFactory(owner, link, url)``."""

    protocol = GossipClientProtocol
    log = _autobahn_log
    noisy = False

    def __init__(self, owner, link, url):
        super().__init__(url=url, protocols=[constants.WEBSOCKET_SUBPROTOCOL],
                         useragent=SERVER_HEADER)
        self.owner = owner
        self.link = link
        _set_options(self, server=False)

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.link = self.link
        self.link.protocol = protocol
        return protocol


# -- TLS: writes gathered per read, sent in the same reactor turn ------------------------
#
# Twisted's TLS layer (BufferingTLSTransport) gathers a connection's small
# writes until a callLater(0) of its own fires, encrypts them as one record
# and hands the bytes to the TCP transport, which queues them for the next
# poll: per link and per reactor turn, a DelayedCall, an epoll_ctl to watch
# the socket, a poll result, a doWrite dispatch and an epoll_ctl to stop.
# A gossip node writes mostly in answer to what it reads (a relay: one frame
# in, three out), so here writes are gathered while a received chunk of bytes
# is handled (a "send batch", opened by GossipTLSProtocol.dataReceived), and
# at its end every link written to encrypts its gathered bytes once and sends
# them at once when nothing is queued before them (write_now).  Writes made
# outside a batch (timers, the handshake) are gathered until one callLater(0)
# for all links, as Twisted's are per link.  Measured in docs/costs.md.

_SOCKET_TRANSPORTS = (tcp.Server, tcp.Client)
#: Bytes gathered for one link past which they are written without waiting
#: for the batch's end (Twisted's aggregator uses the same bound).
MAX_GATHERED = 64_000


def write_now(transport, data):
    """Write ``data`` to a TCP transport, sending at once what the socket takes.

    When nothing is queued before ``data`` (so the order of bytes cannot
    change), send it now through the transport's own ``writeSomeData`` (one
    ``send``) and queue only what the socket did not take.  Anything else
    (bytes already queued, the connection closing or aborted, a send error, a transport
    that is not a plain TCP socket, e.g. one through a SOCKS proxy) goes to
    ``transport.write`` unchanged, where Twisted handles it as always (an
    error closes the connection on the next turn).
    """
    if (type(transport) in _SOCKET_TRANSPORTS and transport.connected
            and not transport.disconnecting and not transport._aborting
            and not transport._writeDisconnected and not transport.TLS
            and not transport._tempDataBuffer
            and transport.offset == len(transport.dataBuffer)):
        sent = transport.writeSomeData(data)
        if type(sent) is int:
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


class _SendBatch:
    """The links written to since the last flush (one reactor thread)."""

    depth = 0  # > 0 while a received chunk is being handled
    scheduled = None  # the callLater(0) flush for writes outside a batch

    def __init__(self):
        self.dirty = []

    def flush(self):
        self.scheduled = None
        while self.dirty:
            dirty, self.dirty = self.dirty, []
            for protocol in dirty:
                try:
                    protocol.flush_gathered()
                except Exception:
                    log.failure("flushing a gossip link's writes failed")


_batch = _SendBatch()


class GossipTLSProtocol(TLSMemoryBIOProtocol):
    """Twisted's TLS layer with the send batch above in place of its own
    per-connection aggregator.  Everything else is Twisted's."""

    _gathered = None  # list of bytes written since the last flush, or None
    _gathered_len = 0

    def write(self, data):
        if type(data) is not bytes:
            data = bytes(data)  # held until the flush: a caller may reuse its buffer
        gathered = self._gathered
        if gathered is None:
            if self.disconnecting or self._lostTLSConnection:
                return TLSMemoryBIOProtocol.write(self, data)  # Twisted's rules
            self._gathered = [data]
            self._gathered_len = len(data)
            _batch.dirty.append(self)
            if _batch.depth == 0 and _batch.scheduled is None:
                _batch.scheduled = self.factory._clock.callLater(0, _batch.flush)
            return
        gathered.append(data)
        self._gathered_len += len(data)
        if self._gathered_len > MAX_GATHERED:
            self.flush_gathered()

    def writeSequence(self, iovec):
        self.write(b"".join(iovec))

    def flush_gathered(self):
        """Encrypt what was written since the last flush, and send it."""
        gathered = self._gathered
        if gathered is None:
            return
        self._gathered = None
        TLSMemoryBIOProtocol.write(self, gathered[0] if len(gathered) == 1 else b"".join(gathered))

    def dataReceived(self, data):
        _batch.depth += 1
        try:
            TLSMemoryBIOProtocol.dataReceived(self, data)
        finally:
            _batch.depth -= 1
            if _batch.depth == 0 and _batch.dirty:
                _batch.flush()

    def _flushSendBIO(self):
        # The one place the TLS layer hands bytes to the TCP transport.
        try:
            data = self._tlsConnection.bio_read(2**15)
        except WantReadError:
            return  # nothing in the send BIO
        write_now(self.transport, data)

    def loseConnection(self):
        self.flush_gathered()
        TLSMemoryBIOProtocol.loseConnection(self)

    def connectionLost(self, reason):
        self._gathered = None
        TLSMemoryBIOProtocol.connectionLost(self, reason)


class GossipTLSFactory(TLSMemoryBIOFactory):
    """:class:`TLSMemoryBIOFactory` building :class:`GossipTLSProtocol`."""

    protocol = GossipTLSProtocol
    noisy = False


@implementer(IStreamClientEndpoint)
class GossipTLSClientEndpoint:
    """``wrapClientTLS(creator, plain)`` with :class:`GossipTLSProtocol`; the
    connected protocol is the wrapped (WebSocket) one, as there."""

    def __init__(self, creator, plain):
        self._creator = creator
        self._plain = plain

    def connect(self, factory):
        d = self._plain.connect(GossipTLSFactory(self._creator, True, factory))
        d.addCallback(lambda tls: tls.wrappedProtocol)
        return d


class _BoundedTLSFactory(GossipTLSFactory):
    """Server-side TLS wrapper that refuses raw connections past a cap.

    ``admit()`` is asked before any TLS work; False closes the socket at once
    (returning None from buildProtocol makes Twisted drop it).
    """

    noisy = False

    def __init__(self, creator, wrapped, admit):
        super().__init__(creator, False, wrapped)
        self._admit = admit

    def buildProtocol(self, addr):
        if not self._admit():
            return None
        return super().buildProtocol(addr)


def tls_server_factory(creator, owner, admit=lambda: True):
    """The listening factory: MutualTLS (``creator``) around GossipServerFactory."""
    return _BoundedTLSFactory(creator, GossipServerFactory(owner), admit)
