"""`--listen ssl:...` serves the API over HTTPS with the operator's certificate."""

import http.client
import json
import ssl

import pytest

from conftest import server_certificate

pytestmark = pytest.mark.slow


def get(host, port, context, server_hostname=None):
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    try:
        conn.request("GET", "/api/bootstrap/health")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_https_listener_with_certificate_checks(bootstrap_factory, tmp_path):
    key_path, cert_path = server_certificate(str(tmp_path), "127.0.0.1")
    server = bootstrap_factory(
        listen=f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}",
        scheme="https",
    )
    trusting = ssl.create_default_context(cafile=str(cert_path))
    status, health = get("127.0.0.1", server.port, trusting)
    assert status == 200 and health["status"] == "ok"
    # A client that does not trust the certificate is refused by its own checks.
    with pytest.raises(ssl.SSLCertVerificationError):
        get("127.0.0.1", server.port, ssl.create_default_context())
    # Plain HTTP on the HTTPS port gets no API answer.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        conn.request("GET", "/api/bootstrap/health")
        conn.getresponse().read()
    conn.close()
