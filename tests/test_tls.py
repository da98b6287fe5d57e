"""Real TLS handshakes on loopback through peernet.tls.MutualTLS.

Every refusal test also checks that no application byte crossed: the client
writes a request as soon as it is connected (Twisted buffers it until the
handshake is done), and the server answers any byte it receives.  So if a
check that should refuse were broken (for example a verify callback that
always returned True), the server would see the request and the client the
answer, and these tests would fail.
"""

import datetime

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.endpoints import (
    SSL4ClientEndpoint,
    SSL4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from peernet.identity import NodeIdentity
from peernet.tls import MutualTLS, peer_id_of_transport

# Backstop only: every wait below is bounded on its own (WAIT seconds).
pytestmark = pytest.mark.timeout(30)

WAIT = 5.0
REQUEST = b"ping from client"
ANSWER = b"pong from server"


def _reactor():
    from twisted.internet import reactor

    return reactor


def _bounded(d, seconds=WAIT):
    return d.addTimeout(seconds, _reactor())


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """Records everything; optionally sends ``send`` and answers ``expect``."""

    def __init__(self, send=None, expect=None, answer=None):
        self.send = send
        self.expect = expect
        self.answer = answer
        self.received = []
        self.handshake_done = False
        self.peer_id = None
        self.tls_version = None
        self.lost_reason = None
        self.made = defer.Deferred()
        self.got_all = defer.Deferred()
        self.lost = defer.Deferred()

    def connectionMade(self):
        if self.send:
            self.transport.write(self.send)
        self.made.callback(self)

    def handshakeCompleted(self):
        self.handshake_done = True
        self.peer_id = peer_id_of_transport(self.transport)
        self.tls_version = self.transport.getHandle().get_protocol_version_name()

    def dataReceived(self, data):
        self.received.append(data)
        if b"".join(self.received) == self.expect and not self.got_all.called:
            if self.answer:
                self.transport.write(self.answer)
            self.got_all.callback(self)

    def connectionLost(self, reason):
        self.lost_reason = reason
        if not self.lost.called:
            # Fire with None: a Failure passed to callback() would errback.
            self.lost.callback(None)


@implementer(IOpenSSLClientConnectionCreator)
class RawClient:
    """A client that is not MutualTLS: optional certificate, optional max
    version, and it trusts any server (so only the server can refuse)."""

    def __init__(self, certificate=None, private_key=None, max_version=None):
        ctx = SSL.Context(SSL.TLS_METHOD)
        if max_version is not None:
            ctx.set_max_proto_version(max_version)
        if certificate is not None:
            ctx.use_certificate(certificate)
            ctx.use_privatekey(private_key)
        ctx.set_verify(SSL.VERIFY_NONE)
        self.ctx = ctx

    def clientConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self.ctx, None)


class Outcome:
    def __init__(self, client, server, exchanged):
        self.client = client
        self.server = server
        self.exchanged = exchanged


@defer.inlineCallbacks
def exchange(server_creator, client_creator):
    """Listen on 127.0.0.1:0, connect once, try one request/answer.

    Returns an Outcome once both sides have disconnected; closes the port and
    every connection whatever happens.
    """
    reactor = _reactor()
    servers = []
    server_built = defer.Deferred()

    def build():
        proto = Recorder(expect=REQUEST, answer=ANSWER)
        servers.append(proto)
        if not server_built.called:
            server_built.callback(proto)
        return proto

    port = yield SSL4ServerEndpoint(
        reactor, 0, server_creator, interface="127.0.0.1"
    ).listen(Factory.forProtocol(build))
    client = Recorder(send=REQUEST, expect=ANSWER)
    try:
        endpoint = SSL4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port, client_creator, timeout=WAIT
        )
        yield _bounded(connectProtocol(endpoint, client))
        server = yield _bounded(server_built)
        # Either the answer arrives (accepted) or the connection drops.
        first = yield _bounded(
            defer.DeferredList(
                [client.got_all, client.lost], fireOnOneCallback=True, consumeErrors=True
            )
        )
        exchanged = first[1] == 0
        if exchanged:
            client.transport.loseConnection()
        yield _bounded(client.lost)
        yield _bounded(server.lost)
        return Outcome(client, server, exchanged)
    finally:
        for proto in [client] + servers:
            if proto.transport is not None and not proto.lost.called:
                proto.transport.abortConnection()
        yield port.stopListening()
        assert len(servers) <= 1


def assert_refused_before_data(outcome):
    assert not outcome.exchanged
    # The server's protocol never received a single application byte ...
    assert outcome.server.received == []
    assert not outcome.server.got_all.called
    # ... and never learnt of a finished handshake.
    assert not outcome.server.handshake_done
    # The client got nothing either, and both sides failed in TLS.
    assert outcome.client.received == []
    assert outcome.client.lost_reason.check(SSL.Error)
    assert outcome.server.lost_reason.check(SSL.Error)


@pytest.fixture
def server_id():
    return NodeIdentity.generate()


@pytest.fixture
def client_id():
    return NodeIdentity.generate()


# (a) ---------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_pinned_right_key_connects_and_data_flows_both_ways(server_id, client_id):
    outcome = yield exchange(
        MutualTLS(server_id),
        MutualTLS(client_id, expected_peer_id=server_id.peer_id),
    )
    assert outcome.exchanged
    assert b"".join(outcome.server.received) == REQUEST
    assert b"".join(outcome.client.received) == ANSWER
    # Each side sees the other's peer_id.
    assert outcome.client.peer_id == server_id.peer_id
    assert outcome.server.peer_id == client_id.peer_id
    assert outcome.client.tls_version == "TLSv1.3"
    assert outcome.server.tls_version == "TLSv1.3"


@pytest_twisted.inlineCallbacks
def test_pin_is_case_insensitive(server_id, client_id):
    outcome = yield exchange(
        MutualTLS(server_id),
        MutualTLS(client_id, expected_peer_id=server_id.peer_id.upper()),
    )
    assert outcome.exchanged


# (b) ---------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_client_pinning_another_peer_is_refused_before_data(server_id, client_id):
    other = NodeIdentity.generate()
    outcome = yield exchange(
        MutualTLS(server_id),
        MutualTLS(client_id, expected_peer_id=other.peer_id),
    )
    assert_refused_before_data(outcome)
    # The client refused during its own handshake: it never completed it.
    assert not outcome.client.handshake_done


# (c) ---------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_server_pinning_the_client_accepts_that_client(server_id, client_id):
    outcome = yield exchange(
        MutualTLS(server_id, expected_peer_id=client_id.peer_id),
        MutualTLS(client_id, expected_peer_id=server_id.peer_id),
    )
    assert outcome.exchanged
    assert outcome.server.peer_id == client_id.peer_id


@pytest_twisted.inlineCallbacks
def test_server_pinning_the_client_refuses_another_key(server_id, client_id):
    impostor = NodeIdentity.generate()
    outcome = yield exchange(
        MutualTLS(server_id, expected_peer_id=client_id.peer_id),
        MutualTLS(impostor, expected_peer_id=server_id.peer_id),
    )
    assert_refused_before_data(outcome)


# (d) ---------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_raw_client_with_a_valid_certificate_is_accepted(server_id, client_id):
    # Control for the RawClient refusals below: with an Ed25519 certificate
    # and TLS 1.3 allowed, the very same kind of client gets through.
    outcome = yield exchange(
        MutualTLS(server_id),
        RawClient(client_id.certificate, client_id.private_key),
    )
    assert outcome.exchanged
    assert outcome.server.peer_id == client_id.peer_id


@pytest_twisted.inlineCallbacks
def test_client_without_certificate_is_refused_before_data(server_id):
    outcome = yield exchange(MutualTLS(server_id), RawClient())
    assert_refused_before_data(outcome)


# (e) ---------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_client_offering_at_most_tls12_is_refused(server_id, client_id):
    outcome = yield exchange(
        MutualTLS(server_id),
        RawClient(client_id.certificate, client_id.private_key, SSL.TLS1_2_VERSION),
    )
    assert_refused_before_data(outcome)
    # TLS 1.2 fails on the client's side too: it never finished a handshake.
    assert not outcome.client.handshake_done


# Certificates that are not a peernet identity ----------------------------------


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject_key, issuer_key, subject, issuer, algorithm=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(issuer_key, algorithm)
    )


@pytest_twisted.inlineCallbacks
def test_client_with_non_ed25519_certificate_is_refused(server_id):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(key, key, "ecdsa", "ecdsa", hashes.SHA256())
    outcome = yield exchange(MutualTLS(server_id), RawClient(cert, key))
    assert_refused_before_data(outcome)


@pytest_twisted.inlineCallbacks
def test_client_with_ca_issued_ed25519_certificate_is_refused(server_id):
    ca_key = Ed25519PrivateKey.generate()
    key = Ed25519PrivateKey.generate()
    cert = _certificate(key, ca_key, "leaf", "some ca")
    outcome = yield exchange(MutualTLS(server_id), RawClient(cert, key))
    assert_refused_before_data(outcome)


# on_peer ------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_on_peer_sees_each_peer_once_per_handshake(server_id, client_id):
    seen_by_server, seen_by_client = [], []
    outcome = yield exchange(
        MutualTLS(server_id, on_peer=seen_by_server.append),
        MutualTLS(client_id, expected_peer_id=server_id.peer_id, on_peer=seen_by_client.append),
    )
    assert outcome.exchanged
    assert seen_by_server == [client_id.peer_id]
    assert seen_by_client == [server_id.peer_id]


@pytest_twisted.inlineCallbacks
def test_on_peer_returning_false_refuses(server_id, client_id):
    outcome = yield exchange(
        MutualTLS(server_id, on_peer=lambda peer_id: False),
        MutualTLS(client_id, expected_peer_id=server_id.peer_id),
    )
    assert_refused_before_data(outcome)


@pytest_twisted.inlineCallbacks
def test_on_peer_raising_refuses(server_id, client_id):
    def explode(peer_id):
        raise RuntimeError("boom")

    outcome = yield exchange(
        MutualTLS(server_id, on_peer=explode),
        MutualTLS(client_id, expected_peer_id=server_id.peer_id),
    )
    assert_refused_before_data(outcome)


# The verify callback on its own ---------------------------------------------------


def _verify_calls(creator, identity):
    """The answers to OpenSSL's two calls for a self-signed leaf (error 18 with
    ok=0, then ok=1), each on a fresh connection so no cached verdict helps."""
    from OpenSSL.crypto import X509

    cert = X509.from_cryptography(identity.certificate)
    first = creator._verify(creator.clientConnectionForTLS(None), cert, 18, 0, 0)
    second = creator._verify(creator.clientConnectionForTLS(None), cert, 0, 0, 1)
    return bool(first), bool(second)


def test_verify_callback_answers_the_same_on_both_calls(server_id, client_id):
    other = NodeIdentity.generate()
    assert _verify_calls(MutualTLS(client_id, server_id.peer_id), server_id) == (True, True)
    assert _verify_calls(MutualTLS(client_id, other.peer_id), server_id) == (False, False)
    assert _verify_calls(MutualTLS(client_id), server_id) == (True, True)


@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "a" * 63, "a" * 65, b"a" * 64])
def test_malformed_pin_is_rejected(client_id, bad):
    with pytest.raises(ValueError):
        MutualTLS(client_id, expected_peer_id=bad)


def test_peer_id_of_transport_without_tls_or_certificate():
    class Plain:
        pass

    class NoCertYet:
        def getPeerCertificate(self):
            return None

    assert peer_id_of_transport(Plain()) is None
    assert peer_id_of_transport(NoCertYet()) is None
