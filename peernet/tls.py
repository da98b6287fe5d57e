"""Mutual TLS 1.3 between peernet nodes, with the peer pinned by its peer_id.

Each node presents its own self-signed Ed25519 certificate (see
:mod:`peernet.identity`).  There is no certificate authority: a peer is who
its key says it is, so trust comes from comparing the peer_id of the
certificate the other side presented (SHA-256 of its DER SubjectPublicKeyInfo)
with the peer_id the caller expected.  TLS itself proves that the other side
holds the matching private key (CertificateVerify), so a matching peer_id
means "this connection really is that peer".

What a caller may rely on, for every connection made through
:class:`MutualTLS`:

* only TLS 1.3 is negotiated;
* both sides must present a certificate; a peer that presents none, presents
  one whose key is not Ed25519, presents a certificate that is not a valid
  self-signed one, or (when a peer_id is pinned) presents a different key, is
  refused *during the handshake*: the local protocol never receives a byte of
  application data from it;
* once data arrives, :func:`peer_id_of_transport` names the authenticated peer.

Usage with Twisted endpoints::

    creator = MutualTLS(identity, expected_peer_id=their_peer_id)
    SSL4ClientEndpoint(reactor, host, port, creator)
    SSL4ServerEndpoint(reactor, port, MutualTLS(identity))

Note for clients under TLS 1.3: the client finishes its side of the handshake
(``connect()`` fires, ``handshakeCompleted`` is called) before the server has
judged the client's certificate.  A server refusal shows up afterwards as
``connectionLost``; only received data proves the server accepted us.
"""

import re
import weakref

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from zope.interface import implementer

from peernet.identity import peer_id_of_certificate

log = Logger()

# X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT: the one OpenSSL complaint we expect
# (and accept) about a peer certificate, since every peernet certificate is
# self-signed and none is in a trust store.
_DEPTH_ZERO_SELF_SIGNED = 18

_PEER_ID_RE = re.compile(r"\A[0-9a-f]{64}\Z")


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class MutualTLS:
    """TLS connection creator for both ends of a peernet connection.

    ``MutualTLS(identity, expected_peer_id=None, on_peer=None)``

    * ``identity``: the local :class:`peernet.identity.NodeIdentity`, whose
      certificate and key are presented to the other side.
    * ``expected_peer_id``: when set (64 lowercase hex characters; upper case
      is accepted and folded), only a peer presenting exactly that key is
      accepted.  When ``None`` any peer with a valid self-signed Ed25519
      certificate is accepted; this is meant for servers, which learn who
      connected from :func:`peer_id_of_transport`.  A client should always
      pin.  A malformed value raises ``ValueError``.
    * ``on_peer``: optional ``callable(peer_id)``, called once per handshake
      with the peer_id of a certificate that passed every check above, before
      any application data is exchanged.  Returning ``False`` (exactly) or
      raising refuses the peer; any other return value accepts it.  It runs
      inside the handshake, so it must be quick and must not block.

    The same instance can be passed to any number of endpoints and
    connections; it holds one ``SSL.Context`` built once.
    """

    def __init__(self, identity, expected_peer_id=None, on_peer=None):
        if expected_peer_id is not None:
            if not isinstance(expected_peer_id, str):
                raise ValueError("expected_peer_id must be a str of 64 hex characters")
            expected_peer_id = expected_peer_id.lower()
            if not _PEER_ID_RE.match(expected_peer_id):
                raise ValueError(
                    f"expected_peer_id {expected_peer_id!r} is not 64 hex characters"
                )
        self.identity = identity
        self.expected_peer_id = expected_peer_id
        self._on_peer = on_peer
        # The verify callback runs more than once per handshake (for a
        # self-signed leaf: once with error 18 and ok=0, then with ok=1).  The
        # verdict for a connection is computed once and replayed, so every
        # call answers the same and on_peer runs exactly once.  Weak keys:
        # an entry goes away with its connection.
        self._verdicts = weakref.WeakKeyDictionary()
        self._context = self._make_context()

    def _make_context(self):
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        # cryptography objects go in directly: wrapping them in pyOpenSSL's
        # X509/PKey is deprecated and warns.
        ctx.use_certificate(self.identity.certificate)
        ctx.use_privatekey(self.identity.private_key)
        ctx.check_privatekey()
        # No session resumption: a resumed session skips certificate
        # verification, so every connection must run the full handshake for
        # the pin to be checked every time.
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        # FAIL_IF_NO_PEER_CERT makes a server refuse a client that sends no
        # certificate (VERIFY_PEER alone would let it in unauthenticated).
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        return ctx

    # -- IOpenSSLServerConnectionCreator / IOpenSSLClientConnectionCreator ----

    def serverConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self._context, None)

    def clientConnectionForTLS(self, tlsProtocol):
        # No SNI: peers are named by key, not by host name.
        return SSL.Connection(self._context, None)

    # -- verification ----------------------------------------------------------

    def _verify(self, connection, cert, errno, depth, ok):
        """OpenSSL verify callback: True accepts, False fails the handshake."""
        if depth != 0:
            # A peernet node presents one self-signed certificate, so OpenSSL
            # never builds a longer chain for it; anything at depth > 0 means
            # a CA-issued certificate, which is not ours.
            log.info("TLS peer refused: its certificate is not self-signed (chain depth {depth})",
                     depth=depth)
            return False
        if not ok and errno != _DEPTH_ZERO_SELF_SIGNED:
            # Any other OpenSSL complaint (expired, not yet valid, issuer not
            # found, ...) is a real defect of the certificate.
            log.info("TLS peer refused: certificate error {errno}", errno=errno)
            return False
        verdict = self._verdicts.get(connection)
        if verdict is None:
            verdict = self._judge(cert.to_cryptography())
            self._verdicts[connection] = verdict
        return verdict

    def _judge(self, certificate):
        """The verdict (bool) for the peer's leaf certificate; logs refusals."""
        if not isinstance(certificate.public_key(), Ed25519PublicKey):
            log.info("TLS peer refused: its certificate key is not Ed25519")
            return False
        try:
            # Checks issuer == subject and the self-signature.  TLS proves key
            # possession anyway; this keeps malformed certificates out.
            certificate.verify_directly_issued_by(certificate)
        except (ValueError, TypeError, InvalidSignature):
            log.info("TLS peer refused: its certificate is not validly self-signed")
            return False
        peer_id = peer_id_of_certificate(certificate)
        if self.expected_peer_id is not None and peer_id != self.expected_peer_id:
            log.warn(
                "TLS peer refused: it presented peer_id {peer_id}, expected {expected}",
                peer_id=peer_id,
                expected=self.expected_peer_id,
            )
            return False
        if self._on_peer is not None:
            try:
                if self._on_peer(peer_id) is False:
                    log.info("TLS peer {peer_id} refused by on_peer", peer_id=peer_id)
                    return False
            except Exception:
                # pyOpenSSL would re-raise this from inside Twisted's TLS
                # machinery; refuse cleanly instead and keep the traceback.
                log.failure("on_peer raised for TLS peer {peer_id}; refused", peer_id=peer_id)
                return False
        return True


def peer_id_of_transport(transport):
    """The peer_id of the certificate the remote end of ``transport`` presented.

    ``transport`` is a connected TLS transport (anything with
    ``getPeerCertificate()``, such as Twisted's TLS transports).  Returns None
    when there is no peer certificate yet (before the handshake completes, for
    example in ``connectionMade``) or the transport is not TLS.  With a
    :class:`MutualTLS` connection that has delivered data, the result is the
    authenticated peer's peer_id.
    """
    get_peer_certificate = getattr(transport, "getPeerCertificate", None)
    if get_peer_certificate is None:
        return None
    cert = get_peer_certificate()
    if cert is None:
        return None
    if not isinstance(cert, x509.Certificate):
        # pyOpenSSL hands back its own X509 wrapper; convert without warnings.
        cert = cert.to_cryptography()
    return peer_id_of_certificate(cert)
