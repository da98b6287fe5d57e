"""`--listen ssl:...` serves the API over HTTPS with the operator's certificate."""

import datetime
import http.client
import ipaddress
import json
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

pytestmark = pytest.mark.slow


def make_server_certificate(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bootstrap.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def get(host, port, context, server_hostname=None):
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    try:
        conn.request("GET", "/api/bootstrap/health")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_https_listener_with_certificate_checks(bootstrap_factory, tmp_path):
    key_path, cert_path = make_server_certificate(tmp_path)
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
