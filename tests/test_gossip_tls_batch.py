"""links.GossipTLSProtocol and write_now: a gossip node's writes made while
it handles a received chunk leave together at the chunk's end, one TLS write
and one send per link, in the same reactor turn; writes made elsewhere leave
on the next turn; byte order never changes.  Real loopback TCP and real TLS
(the gossip links' MutualTLS)."""

import contextlib
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory

from peernet.identity import NodeIdentity
from peernet.peer import links
from peernet.peer.links import GossipTLSClientEndpoint, GossipTLSFactory, GossipTLSProtocol
from peernet.tls import MutualTLS


async def _until(predicate, what, seconds=5.0):
    for _ in range(int(seconds / 0.005)):
        if predicate():
            return
        await task.deferLater(reactor, 0.005)
    raise AssertionError(f"timed out waiting for {what}")


# -- write_now on a plain TCP transport ------------------------------------------------


def _received(sock, want, seconds=5.0):
    sock.settimeout(seconds)
    chunks, got = [], 0
    while got < want:
        try:
            chunk = sock.recv(min(1 << 20, want - got))
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _nothing_waiting(sock):
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


class _Plain:
    """A Twisted TCP client transport, and a blocking socket at the other end."""

    async def open(self, sndbuf=None):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        port = self.listener.getsockname()[1]
        self.proto = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
            protocol.Factory.forProtocol(protocol.Protocol))
        self.remote, _ = self.listener.accept()
        self.transport = self.proto.transport
        if sndbuf:
            self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            self.remote.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
        return self

    def close(self):
        self.transport.abortConnection()
        self.remote.close()
        self.listener.close()


@pytest_twisted.ensureDeferred
async def test_write_now_sends_before_the_reactor_turns():
    pair = await _Plain().open()
    try:
        links.write_now(pair.transport, b"hello")
        # No reactor turn in between: Twisted's write would still hold them.
        assert pair.transport._tempDataBuffer == [] and pair.transport.dataBuffer == b""
        assert _received(pair.remote, 5, seconds=1.0) == b"hello"
    finally:
        pair.close()


@pytest_twisted.ensureDeferred
async def test_write_now_keeps_queued_bytes_first():
    pair = await _Plain().open()
    try:
        pair.transport.write(b"first ")  # queued for the next turn
        links.write_now(pair.transport, b"second")
        assert _nothing_waiting(pair.remote)  # "second" did not overtake
        await task.deferLater(reactor, 0.01)
        assert _received(pair.remote, 12) == b"first second"
    finally:
        pair.close()


@pytest_twisted.ensureDeferred
async def test_write_now_queues_what_a_full_socket_leaves_in_order():
    pair = await _Plain().open(sndbuf=4096)
    try:
        big = bytes(range(256)) * 512  # 128 KiB: far more than the socket takes
        links.write_now(pair.transport, big)
        left = len(pair.transport.dataBuffer) - pair.transport.offset
        left += pair.transport._tempDataLen
        assert 0 < left < len(big)  # part sent now, the rest queued
        links.write_now(pair.transport, b"tail")  # behind the queue
        want, got = len(big) + 4, []

        def drain():
            pair.remote.setblocking(False)
            try:
                while True:
                    chunk = pair.remote.recv(1 << 20)
                    if not chunk:
                        return
                    got.append(chunk)
            except BlockingIOError:
                pass

        for _ in range(20000):  # at most ~10 s
            drain()
            if sum(map(len, got)) >= want:
                break
            await task.deferLater(reactor, 0.0005)
        assert b"".join(got) == big + b"tail"
    finally:
        pair.close()


@pytest_twisted.ensureDeferred
async def test_write_now_leaves_a_closing_transport_to_twisted():
    pair = await _Plain().open()
    try:
        pair.transport.loseConnection()
        links.write_now(pair.transport, b"last words")
        assert _nothing_waiting(pair.remote)  # queued, leaves before the close
        await task.deferLater(reactor, 0.01)
        assert _received(pair.remote, 10) == b"last words"
    finally:
        pair.close()


@pytest_twisted.ensureDeferred
async def test_write_now_sends_nothing_after_an_abort():
    pair = await _Plain().open()
    try:
        pair.transport.abortConnection()
        links.write_now(pair.transport, b"never")
        await task.deferLater(reactor, 0.05)
        assert _received(pair.remote, 5, seconds=0.5) == b""
    finally:
        pair.close()


def test_write_now_gives_any_other_transport_an_ordinary_write():
    transport = StringTransport()
    links.write_now(transport, b"abc")
    assert transport.value() == b"abc"


# -- the send batch over real TLS ---------------------------------------------------------


class Sink(protocol.Protocol):
    def connectionMade(self):
        self.data = b""

    def dataReceived(self, data):
        self.data += data


class Hub(protocol.Protocol):
    """Server side.  On bytes from the first connection: the script runs."""

    def connectionMade(self):
        self.factory.conns.append(self)

    def dataReceived(self, data):
        if self is self.factory.conns[0]:
            self.factory.script(self.factory.conns[1:], data)


@pytest.fixture
def sends(monkeypatch):
    """Every write_now call (the TLS layer's one way to the socket), by transport."""
    calls = []
    real = links.write_now

    def spy(transport, data):
        calls.append(transport)
        real(transport, data)

    monkeypatch.setattr(links, "write_now", spy)
    return calls


class CountingClock:
    """The reactor, counting callLater calls (the TLS layer's deferred flushes)."""

    def __init__(self):
        self.calls = 0

    def callLater(self, delay, f, *args, **kw):
        self.calls += 1
        return reactor.callLater(delay, f, *args, **kw)

    def seconds(self):
        return reactor.seconds()


@contextlib.asynccontextmanager
async def _hub(n_sinks, clock=None):
    """(hub factory, client TLS protocols): conns[0] / clients[0] inject, the rest are sinks."""
    server_id = NodeIdentity.generate()
    hub_factory = protocol.Factory.forProtocol(Hub)
    hub_factory.conns = []
    hub_factory.script = lambda sinks, data: None
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        GossipTLSFactory(MutualTLS(server_id), False, hub_factory, clock=clock))
    clients = []
    for _ in range(1 + n_sinks):
        creator = MutualTLS(NodeIdentity.generate(), expected_peer_id=server_id.peer_id)
        clients.append(await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
                       .connect(TLSMemoryBIOFactory(creator, True,
                                                    protocol.Factory.forProtocol(Sink))))
        # one at a time, so conns[i] on the hub is clients[i]
        await _until(lambda: len(hub_factory.conns) == len(clients), "the hub's side")
    for c in clients:
        c.write(b"")
    await task.deferLater(reactor, 0.2)  # handshakes done
    try:
        yield hub_factory, clients
    finally:
        await port.stopListening()
        for c in clients:
            c.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_writes_made_while_a_chunk_is_handled_leave_once_per_link(sends):
    clock = CountingClock()
    async with _hub(3, clock) as (hub, clients):
        sent_inside = []

        def relay(sinks, data):
            for sink in sinks:
                for i in range(3):
                    sink.transport.write(data + b"#%d;" % i)
            # what had left before the batch's end (nothing should have)
            sent_inside.append(len(sends))

        hub.script = relay
        for sink in hub.conns[1:]:
            assert isinstance(sink.transport, GossipTLSProtocol)
        del sends[:]
        clock.calls = 0
        clients[0].write(b"m")
        want = b"m#0;m#1;m#2;"
        sinks = [c.wrappedProtocol for c in clients[1:]]
        await _until(lambda: all(s.data == want for s in sinks), "every sink's bytes")
        # Each sink's three writes became one TLS write and one send.
        per_link = [sum(1 for t in sends if t is conn.transport.transport)
                    for conn in hub.conns[1:]]
        assert per_link == [1, 1, 1]
        assert sent_inside == [0]
        # ... at the end of the received chunk: no deferred flush was needed.
        assert clock.calls == 0


@pytest_twisted.ensureDeferred
async def test_writes_outside_a_chunk_leave_on_the_next_turn_in_order(sends):
    clock = CountingClock()
    async with _hub(2, clock) as (hub, clients):
        sinks = [c.wrappedProtocol for c in clients[1:]]
        del sends[:]
        clock.calls = 0
        for conn in hub.conns[1:]:
            conn.transport.write(b"tick ")
            conn.transport.write(b"tock")
        assert sends == []  # gathered until the next turn
        await _until(lambda: all(s.data == b"tick tock" for s in sinks), "the timer's writes")
        assert len(sends) == 2  # one send per link
        assert clock.calls == 1  # one deferred flush for both links


@pytest_twisted.ensureDeferred
async def test_close_after_a_write_sends_the_write_first():
    async with _hub(1) as (hub, clients):
        closed = defer.Deferred()
        sink = clients[1].wrappedProtocol
        sink.connectionLost = lambda reason: closed.callback(None)

        def last_words(sinks, data):
            sinks[0].transport.write(b"goodbye")
            sinks[0].transport.loseConnection()

        hub.script = last_words
        clients[0].write(b"x")
        await _until(lambda: closed.called, "the close")
        assert sink.data == b"goodbye"


@pytest_twisted.ensureDeferred
async def test_a_large_gathering_is_written_without_waiting(sends):
    async with _hub(1) as (hub, clients):
        chunk = bytes(range(256)) * 100  # 25.6 kB

        sent_inside = []

        def flood(sinks, data):
            for _ in range(5):  # 128 kB, twice past MAX_GATHERED
                sinks[0].transport.write(chunk)
            sent_inside.append(len(sends))  # some left before the batch's end

        hub.script = flood
        del sends[:]
        clients[0].write(b"x")
        sink = clients[1].wrappedProtocol
        await _until(lambda: len(sink.data) >= 5 * len(chunk), "the flood")
        assert sink.data == chunk * 5
        assert sent_inside[0] > 0


def test_gossip_links_use_the_batching_tls_layer():
    from peernet.peer.links import tls_server_factory

    creator = MutualTLS(NodeIdentity.generate())
    server = tls_server_factory(creator, owner=None)
    assert isinstance(server, GossipTLSFactory) and server.protocol is GossipTLSProtocol

    class Plain:
        def connect(self, factory):
            self.factory = factory
            return defer.Deferred()

    plain = Plain()
    GossipTLSClientEndpoint(creator, plain).connect(protocol.Factory())
    assert isinstance(plain.factory, GossipTLSFactory)
    assert plain.factory.protocol is GossipTLSProtocol


@pytest_twisted.ensureDeferred
async def test_a_reused_buffer_is_sent_as_it_was_when_written():
    async with _hub(1) as (hub, clients):
        def reuse(sinks, data):
            buffer = bytearray(b"first")
            sinks[0].transport.write(buffer)
            buffer[:] = b"XXXXX"  # the caller's buffer changes before the flush

        hub.script = reuse
        clients[0].write(b"x")
        sink = clients[1].wrappedProtocol
        await _until(lambda: len(sink.data) >= 5, "the write")
        assert sink.data == b"first"
