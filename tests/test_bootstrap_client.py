"""BootstrapClient against a real `twist bootstrap` (conftest's bootstrap_server)
and against small in-process HTTP servers for the failure cases."""

import copy
import json
import socket

import pytest
import pytest_twisted
from twisted.internet import protocol, task
from twisted.web import resource, server

from peernet.bootstrap.client import (
    MAX_RESPONSE_BYTES,
    BootstrapClient,
    check_base_url,
    verify_peer_list,
)
from peernet.errors import BootstrapClientError, ConfigError, IdentityError
from peernet.identity import NodeIdentity
from peernet.records import SIGNATURE_HEADER, make_record, open_signed_request
from smtp_fixture import self_signed_pem, smtp_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(60)


def _reactor():
    from twisted.internet import reactor

    return reactor


def _record(identity, *, version=1, is_broadcasting=True, addresses=None):
    return make_record(
        identity, addresses or ["wss://127.0.0.1:8701/gossip"],
        is_broadcasting=is_broadcasting, version=version,
        issued_at_ms=int(_reactor().seconds() * 1000),
    )


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def _error_of(d, kind=BootstrapClientError):
    try:
        await d
    except kind as e:
        return e
    raise AssertionError(f"expected {kind.__name__}")


# -- against the real server ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_register_discover_unregister(bootstrap_server):
    identity = NodeIdentity.generate()
    client = BootstrapClient(_reactor(), bootstrap_server.url, identity, timeout=10)
    signed = _record(identity)

    answer = await client.register(signed)
    assert answer["status"] == "registered"
    assert answer["peer_id"] == identity.peer_id
    assert answer["reannounce_after"] > 0

    # A silent peer: no identity at all.
    silent = BootstrapClient(_reactor(), bootstrap_server.url)
    found = await silent.discover()
    assert found["peers"] == [signed]
    assert silent.rejected_records == 0

    gone = await client.unregister()
    assert gone == {"status": "unregistered", "removed": True, "email_released": False}
    assert (await silent.discover(limit=100))["peers"] == []


@pytest_twisted.ensureDeferred
async def test_register_answer_peers_are_verified(bootstrap_server):
    first, second = NodeIdentity.generate(), NodeIdentity.generate()
    await BootstrapClient(_reactor(), bootstrap_server.url, first).register(_record(first))
    client = BootstrapClient(_reactor(), bootstrap_server.url, second)
    answer = await client.register(_record(second))
    assert [p["record"]["peer_id"] for p in answer["peers"]] == [first.peer_id]
    assert client.rejected_records == 0


@pytest_twisted.ensureDeferred
async def test_health(bootstrap_server):
    health = await BootstrapClient(_reactor(), bootstrap_server.url + "/").health()
    assert health["status"] == "ok"
    assert isinstance(health["schema_version"], int)


@pytest_twisted.ensureDeferred
async def test_stale_timestamp_is_refused_with_its_code(bootstrap_server):
    identity = NodeIdentity.generate()
    clock = task.Clock()
    clock.advance(_reactor().seconds() - 3600)  # an hour slow
    client = BootstrapClient(_reactor(), bootstrap_server.url, identity, clock=clock)
    err = await _error_of(client.register(_record(identity)))
    assert err.status == 400
    assert err.error_code == "stale_timestamp"
    assert str(err).startswith(
        f"bootstrap {bootstrap_server.url} refused the registration: stale_timestamp: "
    )
    assert "\n" not in str(err)


@pytest_twisted.ensureDeferred
async def test_not_broadcasting_is_refused(bootstrap_server):
    identity = NodeIdentity.generate()
    client = BootstrapClient(_reactor(), bootstrap_server.url, identity)
    err = await _error_of(client.register(_record(identity, is_broadcasting=False)))
    assert err.error_code == "not_broadcasting"
    assert 400 <= err.status < 500


@pytest_twisted.ensureDeferred
async def test_record_of_another_peer_is_refused(bootstrap_server):
    identity, other = NodeIdentity.generate(), NodeIdentity.generate()
    client = BootstrapClient(_reactor(), bootstrap_server.url, identity)
    err = await _error_of(client.register(_record(other)))
    assert 400 <= err.status < 500
    assert err.error_code  # the server names why


@pytest_twisted.ensureDeferred
async def test_email_verification_round_trip(bootstrap_factory, smtp_server):  # noqa: F811
    boot = bootstrap_factory("--smtp", smtp_server.url)
    identity = NodeIdentity.generate()
    client = BootstrapClient(_reactor(), boot.url, identity)
    pending = await client.register(_record(identity), email="Peer@Example.org")
    assert pending["status"] == "verification_sent"
    await smtp_server.wait_for_messages(1)
    assert smtp_server.messages[0][0] == ["peer@example.org"]
    (code,) = smtp_server.codes()
    answer = await client.register(_record(identity), email="peer@example.org",
                                   email_code=code)
    assert answer["status"] == "registered"


@pytest_twisted.ensureDeferred
async def test_mail_server_down_gives_503(bootstrap_factory):
    boot = bootstrap_factory("--smtp", f"smtp://127.0.0.1:{_closed_port()}")
    identity = NodeIdentity.generate()
    client = BootstrapClient(_reactor(), boot.url, identity)
    err = await _error_of(client.register(_record(identity), email="peer@example.org"))
    assert err.status == 503
    assert "the mail server could not be reached" in str(err)


def test_identity_needed_for_signed_calls():
    client = BootstrapClient(_reactor(), "http://127.0.0.1:1")
    with pytest.raises(IdentityError):
        client.unregister()
    with pytest.raises(IdentityError):
        client.register(_record(NodeIdentity.generate()))


# -- unreachable and misbehaving servers ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unreachable_server_fails_quickly():
    reactor = _reactor()
    url = f"http://127.0.0.1:{_closed_port()}"
    client = BootstrapClient(reactor, url, timeout=5)
    started = reactor.seconds()
    err = await _error_of(client.discover())
    assert reactor.seconds() - started < 3
    assert str(err) == f"bootstrap {url} is unreachable: connection refused"
    assert err.status is None and err.error_code is None


@pytest_twisted.ensureDeferred
async def test_silent_server_times_out():
    reactor = _reactor()
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol),
                             interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}"
        client = BootstrapClient(reactor, url, timeout=0.5)
        started = reactor.seconds()
        err = await _error_of(client.health())
        assert reactor.seconds() - started < 3
        assert str(err) == f"bootstrap {url} is unreachable: no answer in time"
    finally:
        await port.stopListening()


class _Canned(resource.Resource):
    """Answers every request with a fixed status and body; keeps the requests."""

    isLeaf = True

    def __init__(self, status=200, body=b"{}", content_type=b"application/json",
                 cookie=False):
        super().__init__()
        self.status, self.body, self.content_type, self.cookie = (
            status, body, content_type, cookie)
        self.requests = []

    def render(self, request):
        self.requests.append({
            "method": request.method, "path": request.uri,
            "headers": {k.decode().lower(): v[0].decode()
                        for k, v in request.requestHeaders.getAllRawHeaders()},
            "body": request.content.read(),
        })
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", self.content_type)
        if self.cookie:
            request.addCookie(b"track", b"me", path=b"/")
        return self.body


@pytest.fixture
def canned():
    """Start a one-resource HTTP server; returns a starter giving (url, resource)."""
    ports = []

    def start(**kw):
        res = _Canned(**kw)
        site = server.Site(res)
        site.displayTracebacks = False
        port = _reactor().listenTCP(0, site, interface="127.0.0.1")
        ports.append(port)
        return f"http://127.0.0.1:{port.getHost().port}", res

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def https_server():
    """An HTTPS server on 127.0.0.1 with a self-signed certificate."""
    from twisted.internet import ssl

    cert_pem, key_pem = self_signed_pem()
    res = _Canned(body=json.dumps({"peers": [], "bootstrap_servers": []}).encode())
    options = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem).options()
    port = _reactor().listenSSL(0, server.Site(res), options, interface="127.0.0.1")
    yield f"https://127.0.0.1:{port.getHost().port}", cert_pem
    pytest_twisted.blockon(port.stopListening())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Twisted passes pyOpenSSL X509
@pytest_twisted.ensureDeferred
async def test_https_checks_the_certificate(https_server):
    from twisted.internet import ssl
    from twisted.web.iweb import IPolicyForHTTPS
    from zope.interface import implementer

    url, cert_pem = https_server
    # Default policy: system CAs, which do not know this certificate.
    err = await _error_of(BootstrapClient(_reactor(), url, timeout=5).discover())
    assert str(err) == (
        f"bootstrap {url} is unreachable: TLS handshake failed (certificate verify failed)")

    @implementer(IPolicyForHTTPS)
    class TrustThisCert:
        def creatorForNetloc(self, hostname, port):
            return ssl.optionsForClientTLS(
                hostname.decode(), trustRoot=ssl.Certificate.loadPEM(cert_pem))

    client = BootstrapClient(_reactor(), url, timeout=5, tls_policy=TrustThisCert())
    assert (await client.discover())["peers"] == []


def _discover_body(peers):
    return json.dumps({"peers": peers, "bootstrap_servers": []}).encode()


@pytest_twisted.ensureDeferred
async def test_discover_drops_tampered_records_end_to_end(canned):
    good_id, bad_id = NodeIdentity.generate(), NodeIdentity.generate()
    good = _record(good_id)
    bad = _record(bad_id)
    bad["record"]["addresses"] = ["wss://198.51.100.66:8701/gossip"]  # after signing
    url, _res = canned(body=_discover_body([bad, good]))
    client = BootstrapClient(_reactor(), url)
    answer = await client.discover(limit=5)
    assert answer["peers"] == [good]
    assert answer["bootstrap_servers"] == []
    assert client.rejected_records == 1


@pytest_twisted.ensureDeferred
async def test_requests_are_signed_json_without_cookies(canned):
    identity = NodeIdentity.generate()
    url, res = canned(
        body=json.dumps({"status": "unregistered", "removed": False,
                         "email_released": False}).encode(),
        cookie=True,
    )
    client = BootstrapClient(_reactor(), url, identity)
    await client.unregister(release_email=True)
    await client.unregister()
    first, second = res.requests
    assert first["method"] == b"POST" and first["path"] == b"/api/bootstrap/unregister"
    assert first["headers"]["content-type"] == "application/json"
    fields = open_signed_request(first["body"], first["headers"][SIGNATURE_HEADER.lower()],
                                 "UnregisterRequest", _reactor().seconds())
    assert fields["peer_id"] == identity.peer_id
    assert fields["release_email"] is True
    assert "cookie" not in second["headers"]
    assert json.loads(second["body"])["nonce"] != fields["nonce"]


@pytest_twisted.ensureDeferred
async def test_error_without_json_body(canned):
    url, _ = canned(status=502, body=b"<html>bad gateway</html>", content_type=b"text/html")
    err = await _error_of(BootstrapClient(_reactor(), url).health())
    assert err.status == 502 and err.error_code == "http_502"
    assert str(err) == f"bootstrap {url} refused the health request: http_502: no error description"


@pytest_twisted.ensureDeferred
async def test_oversized_answer_is_refused(canned):
    url, _ = canned(body=b" " * (MAX_RESPONSE_BYTES + 1))
    err = await _error_of(BootstrapClient(_reactor(), url).discover())
    assert "larger than 1 MiB" in str(err)


@pytest_twisted.ensureDeferred
async def test_answer_that_does_not_match_the_api(canned):
    url, _ = canned(body=b'{"peers": "nope"}')
    err = await _error_of(BootstrapClient(_reactor(), url).discover())
    assert str(err).startswith(f"bootstrap {url} sent an unusable answer to the discover request")
    url, _ = canned(body=b"not json")
    await _error_of(BootstrapClient(_reactor(), url).health())


def test_discover_limit_is_checked():
    client = BootstrapClient(_reactor(), "http://127.0.0.1:1")
    for bad in (0, 101, "5", True):
        with pytest.raises(ValueError):
            client.discover(limit=bad)


# -- URL rules -----------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8600", "http://127.5.6.7", "http://localhost:8600/", "http://[::1]:8600",
    "https://boot.example.org", "https://203.0.113.9:8600/prefix",
])
def test_allowed_urls(url):
    BootstrapClient(_reactor(), url)


@pytest.mark.parametrize("url", [
    "http://boot.example.org", "http://203.0.113.9:8600", "http://10.0.0.1", "http://[2001:db8::1]",
    "ftp://127.0.0.1", "boot.example.org", "", "https://", "https://h:99999",
    "https://user:pw@boot.example.org", "https://boot.example.org/?x=1",
])
def test_refused_urls(url):
    with pytest.raises(ConfigError):
        BootstrapClient(_reactor(), url)


def test_check_base_url_strips_slash():
    assert check_base_url("http://127.0.0.1:1/") == ("http://127.0.0.1:1", True)
    assert check_base_url("https://b.example.org") == ("https://b.example.org", False)


# -- record filtering ----------------------------------------------------------------


def test_verify_peer_list_filters_and_explains():
    ids = [NodeIdentity.generate() for _ in range(4)]
    good = _record(ids[0])

    tampered = _record(ids[1])
    tampered["record"]["addresses"] = ["wss://198.51.100.66:8701/gossip"]

    stolen_key = _record(ids[2])
    stolen_key["record"]["public_key"] = good["record"]["public_key"]

    silent = _record(ids[3], is_broadcasting=False)
    duplicate = copy.deepcopy(good)

    valid, rejected = verify_peer_list(
        [good, tampered, stolen_key, silent, duplicate, None, "x", {}, {"record": {}}]
    )
    assert valid == [good]
    prefixes = [p for p, _reason in rejected]
    assert prefixes[:4] == [i.peer_id[:12] for i in ids[1:]] + [ids[0].peer_id[:12]]
    assert prefixes[4:] == ["?", "?", "?", "?"]
    reasons = dict(zip(prefixes[:4], [r for _p, r in rejected[:4]]))
    assert "signature" in reasons[ids[1].peer_id[:12]]
    assert "not broadcasting" in reasons[ids[3].peer_id[:12]]


def test_verify_peer_list_never_raises_on_garbage():
    assert verify_peer_list("nope") == ([], [("?", "peers is not a list")])
    hostile = {"record": {"peer_id": "\n" * 40}, "signature": 5}
    valid, rejected = verify_peer_list([hostile])
    assert valid == [] and rejected[0][0] == "?"
