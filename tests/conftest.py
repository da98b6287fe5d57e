"""Shared fixtures: real `twist bootstrap` processes on loopback, and helpers to
talk to them with plain HTTP from the test thread."""

import base64
import hashlib
import http.client
import json
import os
import sys
import time

import pytest

from peernet.devnet import BootstrapNode
from peernet.identity import NodeIdentity
from peernet.records import make_record, new_nonce, sign_request
from tor_fixture import tor_network  # noqa: F401  (session fixture, found by name)

BIN = os.path.dirname(sys.executable)
TWIST = os.path.join(BIN, "twist")


class BootstrapProcess(BootstrapNode):
    """A real `twist bootstrap` subprocess listening on 127.0.0.1 (port 0).

    The port is read from the server's own "listening on" log line, so there
    is no race for a free port.  Stopped by pid in every case.
    """

    def __init__(self, workdir, *args, db_path=None, host="127.0.0.1", listen=None,
                 scheme="http"):
        super().__init__(workdir, host, args, db_path=db_path, listen=listen, scheme=scheme)

    # -- plain HTTP -----------------------------------------------------------

    def request(self, method, path, body=None, headers=None, source=None, timeout=10):
        """Send one request; return (status, headers dict, parsed JSON or raw bytes)."""
        conn = http.client.HTTPConnection(
            self.host, self.port, timeout=timeout,
            source_address=(source, 0) if source else None,
        )
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw
        return resp.status, hdrs, parsed

    def post_signed(self, path, body, signature, source=None):
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Peernet-Signature"] = signature
        return self.request("POST", path, body, headers, source=source)


def now_ms():
    return int(time.time() * 1000)


def registration(identity=None, *, addresses=None, is_bootstrap=True, is_broadcasting=True,
                 version=1, email=None, email_code=None, timestamp=None, nonce=None,
                 extra=None):
    """(identity, body bytes, signature) of a signed register request."""
    identity = identity or NodeIdentity.generate()
    ts = now_ms() if timestamp is None else timestamp
    signed = make_record(
        identity, addresses or ["wss://127.0.0.1:8701/gossip"],
        is_bootstrap=is_bootstrap, is_broadcasting=is_broadcasting,
        version=version, issued_at_ms=ts,
    )
    fields = {
        "type": "register", "peer_id": identity.peer_id,
        "public_key": signed["record"]["public_key"], "signed_record": signed,
        "timestamp": ts, "nonce": nonce or new_nonce(),
    }
    if email is not None:
        fields["email"] = email
    if email_code is not None:
        fields["email_code"] = email_code
    fields.update(extra or {})
    body, sig = sign_request(identity, fields)
    return identity, body, sig


def unregistration(identity, *, release_email=False, timestamp=None, nonce=None):
    public_key = base64.b64encode(identity.public_key_der).decode()
    fields = {
        "type": "unregister", "peer_id": identity.peer_id, "public_key": public_key,
        "release_email": release_email,
        "timestamp": now_ms() if timestamp is None else timestamp,
        "nonce": nonce or new_nonce(),
    }
    return sign_request(identity, fields)


@pytest.fixture
def bootstrap_factory(tmp_path):
    """Start bootstrap servers with extra arguments; all are stopped afterwards."""
    started = []

    def start(*args, workdir=None, **kw):
        wd = workdir or tmp_path / f"bootstrap{len(started)}"
        os.makedirs(wd, exist_ok=True)
        server = BootstrapProcess(str(wd), *args, **kw)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def bootstrap_server(bootstrap_factory):
    return bootstrap_factory()


def wait_for(predicate, what, timeout=30.0):
    """Poll ``predicate()`` every 0.1 s until true; AssertionError naming ``what``
    after ``timeout`` seconds.  Transient errors of a process still starting
    (connection refused, a 4xx/5xx, half-written JSON) count as "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, RuntimeError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting until {what}")


def assert_one_line_error(out, *words):
    """``out`` (a finished `twist peer` run) failed with exactly one line on
    stderr, "twist peer: error: ..." holding every one of ``words``, and no
    traceback; returns that line."""
    assert out.returncode != 0, out
    assert "Traceback" not in out.stdout + out.stderr, (out.stdout[-3000:], out.stderr[-3000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("twist peer: error:"), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def make_repo(path, seed, sizes, stem="part", subdir="sub"):
    """A directory of pseudo-random files (the same seed gives the same bytes):
    ``{stem}{i}.bin``, every second one in ``subdir``; returns {relative path:
    SHA-256 hex}."""
    os.makedirs(path, exist_ok=True)
    digests = {}
    for i, size in enumerate(sizes):
        rel = f"{stem}{i}.bin" if i % 2 == 0 else f"{subdir}/{stem}{i}.bin"
        os.makedirs(os.path.dirname(os.path.join(path, rel)), exist_ok=True)
        block = hashlib.sha256(f"{seed}/{i}".encode()).digest() * (1024 * 1024 // 32)
        data = (block * (size // len(block) + 1))[:size]
        with open(os.path.join(path, rel), "wb") as f:
            f.write(data)
        digests[rel] = hashlib.sha256(data).hexdigest()
    return digests


def server_certificate(directory, ip):
    """(key path, certificate path) of a self-signed server certificate for
    ``ip`` (a subjectAltName IP entry), for an HTTPS bootstrap; give the
    certificate to clients as their trust store (SSL_CERT_FILE, cafile=)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bootstrap {ip}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path = os.path.join(directory, "bootstrap-key.pem")
    cert_path = os.path.join(directory, "bootstrap-cert.pem")
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path
