"""A real SMTP server on 127.0.0.1 for tests (Twisted's own ESMTP server).

Import the fixture from a conftest or a test module::

    from smtp_fixture import smtp_server  # noqa: F401  (pytest finds it by name)

``smtp_server`` yields a started :class:`SMTPTestServer`: ``.port`` is its TCP
port, ``.url`` is ``smtp://127.0.0.1:PORT`` and ``.messages`` is a list of
``(recipients, raw_message_bytes)`` in arrival order, recipients being a list
of ``str`` addresses (Twisted's server stores one copy per recipient, so the
list has one address).  ``.codes()`` pulls the 8-digit codes out of the bodies.
"""

import re

import pytest_twisted
from twisted.cred import checkers, portal
from twisted.internet import defer
from twisted.mail import imap4, smtp
from zope.interface import implementer


@implementer(smtp.IMessage)
class _Message:
    def __init__(self, server, recipients):
        self._server = server
        self._recipients = recipients
        self._lines = []

    def lineReceived(self, line):
        self._lines.append(line)

    def eomReceived(self):
        self._server.messages.append((list(self._recipients), b"\n".join(self._lines) + b"\n"))
        self._server._arrived()
        return defer.succeed(None)

    def connectionLost(self):
        self._lines = []


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self, server):
        self._server = server

    def receivedHeader(self, helo, origin, recipients):
        return None

    def validateFrom(self, helo, origin):
        self._server.senders.append(str(origin))
        return origin

    def validateTo(self, user):
        address = str(user.dest)
        if address in self._server.refuse:
            raise smtp.SMTPBadRcpt(user)
        # Twisted's server builds one message per accepted recipient.
        return lambda: _Message(self._server, [address])


@implementer(portal.IRealm)
class _Realm:
    def __init__(self, server):
        self._server = server

    def requestAvatar(self, avatar_id, mind, *interfaces):
        if smtp.IMessageDelivery in interfaces:
            return smtp.IMessageDelivery, _Delivery(self._server), lambda: None
        raise NotImplementedError()


class _Factory(smtp.SMTPFactory):
    protocol = smtp.ESMTP
    timeout = 30

    def __init__(self, server):
        smtp.SMTPFactory.__init__(self, server._portal)
        self._server = server

    def buildProtocol(self, addr):
        challengers = {}
        if self._server.credentials:
            challengers = {b"LOGIN": smtp.LOGINCredentials, b"PLAIN": imap4.PLAINCredentials}
        p = self.protocol(challengers)
        p.factory = self
        p.portal = self.portal
        p.host = b"smtp.test"
        if not self._server.credentials:
            p.delivery = _Delivery(self._server)
        return p


class SMTPTestServer:
    """An ESMTP server that keeps every message it accepts.

    ``credentials=(user, password)`` makes it require AUTH (PLAIN or LOGIN).
    Addresses in ``refuse`` are rejected at RCPT with 550.
    """

    def __init__(self, reactor, credentials=None):
        self._reactor = reactor
        self.credentials = credentials
        self.messages = []
        self.senders = []
        self.refuse = set()
        self._waiters = []
        self._listening = None
        self._portal = None
        if credentials:
            checker = checkers.InMemoryUsernamePasswordDatabaseDontUse()
            checker.addUser(credentials[0].encode(), credentials[1].encode())
            self._portal = portal.Portal(_Realm(self), [checker])

    def start(self):
        self._listening = self._reactor.listenTCP(0, _Factory(self), interface="127.0.0.1")
        self.port = self._listening.getHost().port
        self.url = f"smtp://127.0.0.1:{self.port}"
        return self

    def stop(self):
        if self._listening is None:
            return defer.succeed(None)
        port, self._listening = self._listening, None
        return defer.maybeDeferred(port.stopListening)

    def wait_for_messages(self, count, timeout=10):
        """Deferred firing with ``messages`` once ``count`` have arrived (bounded)."""
        if len(self.messages) >= count:
            return defer.succeed(self.messages)
        d = defer.Deferred()
        self._waiters.append((count, d))
        d.addTimeout(timeout, self._reactor)
        return d

    def _arrived(self):
        for item in list(self._waiters):
            count, d = item
            if len(self.messages) >= count:
                self._waiters.remove(item)
                if not d.called:
                    d.callback(self.messages)

    def codes(self):
        """The verification codes found in the received bodies, in order."""
        found = []
        for _recipients, raw in self.messages:
            found.extend(re.findall(rb"verification code is ([0-9]{8})", raw))
        return [c.decode() for c in found]


def self_signed_pem(ip="127.0.0.1"):
    """(certificate PEM, key PEM) of a throwaway self-signed cert for ``ip``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest_twisted.async_yield_fixture
async def smtp_server():
    from twisted.internet import reactor

    server = SMTPTestServer(reactor).start()
    try:
        yield server
    finally:
        await server.stop()
