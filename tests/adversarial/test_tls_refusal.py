"""TLS refusals against a real `twist peer --broadcast` process: a peer that
presents the wrong key for the peer_id it is pinned to, a client without a
certificate, and a client limited to TLS 1.2 are all refused during the TLS
handshake, before any gossip (or even the WebSocket upgrade) is read.

tests/test_tls.py checks the MutualTLS class itself; this module checks
that the running node really uses it on both its listening and dialling
sides.  A raw client that does everything right gets ``101 Switching
Protocols`` from the same port: so each refusal below is the defence, not a
broken test client.
"""

import base64
import os
import socket
import ssl

import pytest
from cryptography.hazmat.primitives import serialization

from peernet.devnet import DevNet
from peernet.identity import NodeIdentity

from adversary import Hostile, Watch, gossip_address

pytestmark = pytest.mark.slow

UPGRADE = (
    "GET /gossip HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: peernet.2\r\n\r\n"
)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tlsrefusal")
    with DevNet(workdir, broadcasting=2, silent=0, bootstrap=True) as devnet:
        devnet.workdir = str(workdir)
        assert devnet.wait(devnet.converged, 60, interval=0.2) is not None
        yield devnet


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory):
    """PEM files of a fresh, valid peernet identity (for the raw clients)."""
    identity = NodeIdentity.generate()
    d = tmp_path_factory.mktemp("clientcert")
    cert, key = d / "cert.pem", d / "key.pem"
    cert.write_bytes(identity.certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(identity.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return str(cert), str(key)


def _host_port(peer):
    rest = gossip_address(peer)[len("wss://"):].split("/", 1)[0]
    host, port = rest.rsplit(":", 1)
    return host, int(port)


def raw_upgrade(peer, cert=None, max_version=None):
    """Dial the peer's gossip port with Python's ssl module and ask for the
    WebSocket upgrade; returns what came back, or the handshake error."""
    host, port = _host_port(peer)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # peernet pins by key; not the point here
    if max_version is not None:
        ctx.maximum_version = max_version
    if cert is not None:
        ctx.load_cert_chain(*cert)
    sock = socket.create_connection((host, port), timeout=10)
    try:
        tls = ctx.wrap_socket(sock)
    except (ssl.SSLError, OSError) as e:
        sock.close()
        return {"handshake": "failed", "error": str(e), "data": b""}
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        data = b""
        try:
            tls.sendall(UPGRADE.format(host=host, port=port, key=key).encode())
            while b"\r\n\r\n" not in data:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (ssl.SSLError, OSError) as e:
            return {"handshake": "done", "version": tls.version(), "error": str(e),
                    "data": data}
        return {"handshake": "done", "version": tls.version(), "error": None, "data": data}
    finally:
        tls.close()


def test_raw_client_doing_everything_right_is_upgraded(net, client_cert):
    answer = raw_upgrade(net.broadcasters[0], cert=client_cert)
    assert answer["version"] == "TLSv1.3"
    assert answer["data"].startswith(b"HTTP/1.1 101"), answer


def test_client_without_certificate_is_refused_before_any_gossip(net):
    target = net.broadcasters[0]
    watch = Watch(net)
    answer = raw_upgrade(target)
    # TLS 1.3: the client finishes its half, then the server's alert arrives
    # instead of any HTTP answer.
    assert not answer["data"], answer
    assert answer["error"] and "CERTIFICATE_REQUIRED" in answer["error"].upper(), answer
    assert "open (inbound)" not in watch.new_log(target)
    watch.assert_healthy()


def test_client_offering_at_most_tls_1_2_is_refused_in_the_handshake(net, client_cert):
    target = net.broadcasters[0]
    watch = Watch(net)
    answer = raw_upgrade(target, cert=client_cert, max_version=ssl.TLSVersion.TLSv1_2)
    assert answer["handshake"] == "failed", answer
    assert "version" in answer["error"].lower(), answer
    assert "open (inbound)" not in watch.new_log(target)
    watch.assert_healthy()


def test_peer_presenting_the_wrong_key_for_its_pinned_peer_id_is_refused(net):
    """The attacker announces a valid record for its key X, with an address
    where an impostor presents another key Y.  When the target dials X there,
    its TLS pin refuses Y: the impostor never receives one byte of
    application data (not even the WebSocket upgrade request).  The record
    spreads, so any honest peer may be the one that dials it."""
    target = net.broadcasters[0]
    watch = Watch(net)
    hostile = Hostile(net.workdir, target, "none", "--impostor", "127.0.0.67:0",
                      "--linger", 1, "--close", "--impostor-wait", 12)
    try:
        impostor = hostile.wait_event("impostor", 60)
        attacker = hostile.wait_event("identity", 10)["peer_id"]
        result = hostile.result(timeout=120)
    finally:
        hostile.stop()
    report = result["impostor"]
    assert report["connections"] >= 1, result   # the target did dial the record
    assert report["app_bytes"] == 0, result
    # The record spread: whichever honest peer dialled it logged the refusal,
    # and no honest peer ever opened a link to the attacker's peer_id.
    refusal = (f"TLS peer refused: it presented peer_id {impostor['peer_id']}, "
               f"expected {attacker}")
    logs = {p.name: watch.new_log(p) for p in net.broadcasters}
    assert any(refusal in text for text in logs.values()), logs
    assert not any(f"to {attacker} open" in text for text in logs.values()), logs
    watch.assert_healthy()
