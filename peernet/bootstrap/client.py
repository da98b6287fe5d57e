"""Asynchronous client of the bootstrap API (treq), used by peers.

What a caller may rely on:

- Every method returns a Deferred.  Success gives the parsed JSON answer;
  any failure is a :class:`BootstrapClientError` with one sentence naming the
  server, and ``status`` / ``error_code`` set when the server answered.
- Peer records in a ``discover`` or ``register`` answer are checked one by
  one (shape, key binding, signature, broadcasting flag); bad ones are
  dropped and logged by peer_id prefix, never raised, and counted in
  :attr:`BootstrapClient.rejected_records`.
- Plain ``http://`` is accepted only for loopback hosts (tests, local
  development), with a warning; ``https://`` checks the server certificate
  against the system CAs and the host name.
- No cookies are kept and no redirect is followed, so a server cannot link
  one caller's requests together through the client or bounce it elsewhere.
"""

import ipaddress
import json
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import urlsplit

from treq.client import HTTPClient
from treq.content import collect
from twisted.internet import defer
from twisted.internet import error as internet_error
from twisted.logger import Logger
from twisted.web import client as web_client
from twisted.web.iweb import IPolicyForHTTPS

from peernet import constants
from peernet.errors import BadRequest, BootstrapClientError, ConfigError, IdentityError
from peernet.records import (
    SIGNATURE_HEADER,
    b64encode,
    new_nonce,
    sign_request,
    verify_signed_record,
)
from peernet.schemas import validator

#: Largest answer body read from a bootstrap server.
MAX_RESPONSE_BYTES = 1024 * 1024
API_PREFIX = "/api/bootstrap"

log = Logger()


def _is_loopback(host):
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def check_base_url(base_url):
    """Normalise a bootstrap base URL; raise ConfigError when it is unusable.

    Returns ``(url_without_trailing_slash, is_plain_http)``.
    """
    if not isinstance(base_url, str) or not base_url:
        raise ConfigError("the bootstrap URL is empty")
    try:
        parts = urlsplit(base_url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ConfigError(f"the bootstrap URL {base_url} has an invalid port")
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"the bootstrap URL {base_url} must start with https://")
    if not parts.hostname:
        raise ConfigError(f"the bootstrap URL {base_url} names no host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(
            f"the bootstrap URL {base_url} must not carry a query, fragment or credentials"
        )
    if any(c.isspace() for c in base_url):
        raise ConfigError(f"the bootstrap URL {base_url!r} must not contain spaces")
    # An onion address is the server's key, and tor encrypts end to end:
    # plain http to one is as private and authenticated as https.
    if scheme == "http" and not _is_loopback(parts.hostname) \
            and not parts.hostname.lower().endswith(".onion"):
        raise ConfigError(
            f"the bootstrap URL {base_url} uses plain http, which is only allowed for "
            "loopback and .onion addresses; use https://"
        )
    return base_url.rstrip("/"), scheme == "http"


def verify_peer_list(entries):
    """Split the ``peers`` of an answer into verified records and rejects.

    Returns ``(valid, rejected)``: ``valid`` is the list of signed records
    (unchanged dicts) that pass :func:`verify_signed_record`, say
    ``is_broadcasting`` and appear once per peer_id; ``rejected`` is a list of
    ``(peer_id_prefix, reason)`` for the others.  Never raises.
    """
    valid, rejected, seen = [], [], set()
    if not isinstance(entries, list):
        return valid, [("?", "peers is not a list")]
    for entry in entries:
        prefix = _peer_id_prefix(entry)
        try:
            record = verify_signed_record(entry)
        except BadRequest as e:  # BadSignature is a BadRequest
            rejected.append((prefix, e.message))
            continue
        if not record["is_broadcasting"]:
            rejected.append((prefix, "the record is not broadcasting"))
        elif record["peer_id"] in seen:
            rejected.append((prefix, "the peer is listed twice"))
        else:
            seen.add(record["peer_id"])
            valid.append(entry)
    return valid, rejected


def _peer_id_prefix(entry):
    try:
        peer_id = entry["record"]["peer_id"]
    except (KeyError, TypeError, IndexError):
        return "?"
    if not isinstance(peer_id, str):
        return "?"
    return "".join(c for c in peer_id[:12] if c.isalnum()) or "?"


class _CappedBody:
    """Collects a response body, refusing more than ``limit`` bytes."""

    def __init__(self, limit):
        self.limit = limit
        self.chunks = []
        self.size = 0

    def __call__(self, data):
        self.size += len(data)
        if self.size > self.limit:
            raise _TooLarge()
        self.chunks.append(data)

    def bytes(self):
        return b"".join(self.chunks)


class _TooLarge(Exception):
    pass


class BootstrapClient:
    """Talks to one bootstrap server.

    ``identity`` (a :class:`NodeIdentity`) is needed for ``register`` and
    ``unregister`` only; silent peers use ``discover`` without one.
    ``timeout`` bounds each call from connecting to the last body byte.
    ``agent`` replaces the default Agent (tests, pinned TLS, Tor).  ``clock``
    supplies the time put in signed requests (defaults to ``reactor``).
    """

    def __init__(self, reactor, base_url, identity=None, *, timeout=10, agent=None,
                 clock=None, tls_policy=None):
        self.base_url, plain_http = check_base_url(base_url)
        self._reactor = reactor
        self._clock = clock or reactor
        self.identity = identity
        self.timeout = timeout
        #: Peer records dropped so far because they did not verify.
        self.rejected_records = 0
        if plain_http and not urlsplit(self.base_url).hostname.lower().endswith(".onion"):
            log.warn("talking to bootstrap {url} over plain http (loopback only)",
                     url=self.base_url)
        if agent is None:
            if tls_policy is not None and not IPolicyForHTTPS.providedBy(tls_policy):
                raise ConfigError("tls_policy must provide IPolicyForHTTPS")
            agent = web_client.Agent(
                reactor,
                contextFactory=tls_policy or web_client.BrowserLikePolicyForHTTPS(),
                connectTimeout=timeout,
                pool=web_client.HTTPConnectionPool(reactor, persistent=False),
            )
        # A cookie jar that accepts nothing: a server must not be able to link
        # a silent peer's requests to each other through the client.
        self._http = HTTPClient(
            agent, cookiejar=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        )

    def __repr__(self):
        return f"<BootstrapClient {self.base_url}>"

    # -- API ---------------------------------------------------------------------

    def register(self, signed_record, email=None, email_code=None):
        """Register (or refresh) ``signed_record``; needs the identity.

        Fires with the RegisterResponse (``status == "registered"``, its
        ``peers`` verified) or a VerificationPending (``status ==
        "verification_sent"``: repeat with ``email_code``).
        """
        self._need_identity("register")  # raises at once: a caller's mistake
        return defer.ensureDeferred(self._register(signed_record, email, email_code))

    def unregister(self, release_email=False):
        """Remove this identity's registration; fires with UnregisterResponse."""
        self._need_identity("unregister")
        return defer.ensureDeferred(self._unregister(release_email))

    def discover(self, limit=constants.DISCOVER_DEFAULT_LIMIT):
        """A sample of live bootstrap-capable peers; ``peers`` are verified."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not (
            1 <= limit <= constants.DISCOVER_MAX_LIMIT
        ):
            raise ValueError(f"limit must be from 1 to {constants.DISCOVER_MAX_LIMIT}")
        return defer.ensureDeferred(self._discover(limit))

    def health(self):
        """The server's Health answer."""
        return defer.ensureDeferred(self._health())

    # -- implementation ---------------------------------------------------------

    async def _register(self, signed_record, email, email_code):
        identity = self._need_identity("register")
        fields = {
            "type": "register",
            "peer_id": identity.peer_id,
            "public_key": signed_record["record"]["public_key"],
            "signed_record": signed_record,
            "timestamp": self._now_ms(),
            "nonce": new_nonce(),
        }
        if email is not None:
            fields["email"] = email
        if email_code is not None:
            fields["email_code"] = email_code
        body, signature = sign_request(identity, fields)
        status, answer = await self._call(
            "POST", "/register", "registration", body=body, signature=signature
        )
        if status == 202:
            self._check_shape(answer, "VerificationPending", "registration")
        else:
            answer["peers"] = self._verified_peers(answer, "RegisterResponse", "registration")
        return answer

    async def _unregister(self, release_email):
        identity = self._need_identity("unregister")

        fields = {
            "type": "unregister",
            "peer_id": identity.peer_id,
            "public_key": b64encode(identity.public_key_der),
            "release_email": bool(release_email),
            "timestamp": self._now_ms(),
            "nonce": new_nonce(),
        }
        body, signature = sign_request(identity, fields)
        _status, answer = await self._call(
            "POST", "/unregister", "unregistration", body=body, signature=signature
        )
        self._check_shape(answer, "UnregisterResponse", "unregistration")
        return answer

    async def _discover(self, limit):
        _status, answer = await self._call(
            "GET", f"/discover?limit={limit}", "discover request"
        )
        answer["peers"] = self._verified_peers(answer, "DiscoverResponse", "discover request")
        return answer

    async def _health(self):
        _status, answer = await self._call("GET", "/health", "health request")
        self._check_shape(answer, "Health", "health request")
        return answer

    def _need_identity(self, what):
        if self.identity is None:
            raise IdentityError(f"{what} needs the node identity; this client has none")
        return self.identity

    def _now_ms(self):
        return int(self._clock.seconds() * 1000)

    def _verified_peers(self, answer, schema, action):
        if not isinstance(answer, dict):
            raise self._bad_answer(action, "it is not a JSON object")
        # Check everything but the individual records, which are filtered.
        self._check_shape(dict(answer, peers=[]), schema, action)
        valid, rejected = verify_peer_list(answer["peers"])
        for prefix, reason in rejected:
            log.warn("bootstrap {url} sent an invalid record for peer {peer}: {reason}",
                     url=self.base_url, peer=prefix, reason=reason)
        self.rejected_records += len(rejected)
        return valid

    def _check_shape(self, answer, schema, action):
        try:
            validator(schema).check(answer)
        except BadRequest as e:
            raise self._bad_answer(action, f"it does not match the API ({e.message})")

    def _bad_answer(self, action, reason):
        return _client_error(
            f"bootstrap {self.base_url} sent an unusable answer to the {action}: {reason}",
            code="bootstrap_bad_answer",
        )

    async def _call(self, method, path, action, *, body=None, signature=None):
        """One request; returns ``(status, parsed JSON)`` for a 2xx answer."""
        url = self.base_url + API_PREFIX + path
        headers = {"Accept": ["application/json"]}
        if body is not None:
            headers["Content-Type"] = ["application/json"]
            headers[SIGNATURE_HEADER] = [signature]
        d = defer.ensureDeferred(self._exchange(method, url, headers, body))
        d.addTimeout(self.timeout, self._reactor)
        try:
            status, raw = await d
        except BootstrapClientError:
            raise
        except _TooLarge:
            raise self._bad_answer(
                action, f"it is larger than {MAX_RESPONSE_BYTES // (1024 * 1024)} MiB"
            )
        except _NETWORK_ERRORS as e:  # refused, TLS failure, timeout, ...
            raise _client_error(f"bootstrap {self.base_url} is unreachable: {_reason(e)}")
        try:
            answer = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            answer = None
        if not 200 <= status < 300:
            raise self._refusal(status, answer, action)
        if not isinstance(answer, dict):
            raise self._bad_answer(action, "it is not a JSON object")
        return status, answer

    async def _exchange(self, method, url, headers, body):
        response = await self._http.request(
            method, url, headers=headers, data=body, allow_redirects=False,
            unbuffered=True, reactor=self._reactor,
        )
        collector = _CappedBody(MAX_RESPONSE_BYTES)
        if response.length is not None and response.length > MAX_RESPONSE_BYTES:
            response.original.deliverBody(_Discard())
            raise _TooLarge()
        await collect(response, collector)
        return response.code, collector.bytes()

    def _refusal(self, status, answer, action):
        error_code, message = f"http_{status}", "no error description"
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict):
            if isinstance(error.get("code"), str) and error["code"]:
                error_code = _one_line(error["code"], 64)
            if isinstance(error.get("message"), str) and error["message"]:
                message = _one_line(error["message"], 300)
        return _client_error(
            f"bootstrap {self.base_url} refused the {action}: {error_code}: {message}",
            code="bootstrap_refused", status=status, error_code=error_code,
        )


def _client_error(message, code=None, *, status=None, error_code=None):
    """A BootstrapClientError with ``status`` (HTTP status or None) and
    ``error_code`` (the server's error code or None) always set."""
    err = BootstrapClientError(message, code=code)
    err.status = status
    err.error_code = error_code
    return err


# What can go wrong between us and the server (anything else is a bug and
# propagates as itself).
_NETWORK_ERRORS = (
    internet_error.ConnectError,  # refused, DNS, connect timeout, cancelled
    internet_error.ConnectionLost,
    internet_error.ConnectionDone,
    web_client.ResponseNeverReceived,
    web_client.ResponseFailed,
    web_client.RequestTransmissionFailed,
    defer.TimeoutError,
    defer.CancelledError,
    OSError,
)


class _Discard:
    """Body protocol that drops everything (an oversized answer)."""

    def makeConnection(self, transport):
        transport.stopProducing()

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        pass


def _one_line(text, limit):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(exc):
    if isinstance(exc, (defer.TimeoutError, defer.CancelledError)):
        return "no answer in time"
    if isinstance(exc, internet_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, internet_error.DNSLookupError):
        return "the host name does not resolve"
    if isinstance(exc, (internet_error.TimeoutError, internet_error.TCPTimedOutError)):
        return "connection timed out"
    if isinstance(exc, web_client.ResponseNeverReceived):
        reasons = [f.value for f in exc.reasons]
        if any(isinstance(r, defer.CancelledError) for r in reasons):
            return "no answer in time"
        return "; ".join(_describe_lower_error(r) for r in reasons) \
            or "the connection closed before an answer"
    if isinstance(exc, web_client.ResponseFailed):
        return "the connection broke during the answer"
    return _one_line(str(exc) or exc.__class__.__name__, 200)


def _describe_lower_error(value):
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover - pyOpenSSL comes with Twisted[tls]
        SSL = None
    if SSL is not None and isinstance(value, SSL.Error):
        details = [item[-1] for item in (value.args[0] if value.args else [])
                   if isinstance(item, tuple) and item and item[-1]]
        return "TLS handshake failed" + (f" ({', '.join(details)})" if details else "")
    if isinstance(value, internet_error.ConnectionDone):
        return "the connection closed before an answer"
    return _one_line(str(value) or value.__class__.__name__, 200)
