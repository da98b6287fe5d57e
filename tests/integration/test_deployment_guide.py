"""docs/deployment.md, followed as written:

* section 2 (one host): its shell blocks run unchanged, except that the work
  directory is a tmp path and every `&` also records the pid, so the test can
  stop what it started.  The checks block must show alice registered, bob
  knowing her and downloading her repo, and the metrics line.
* section 3 (HTTPS): the guide's `--listen ssl:443:...` line, with certbot's
  file layout made here (root -> intermediate -> server certificate), serves
  clients that trust only the root; a broadcasting peer registers over it.
  The tempting `certKey=fullchain.pem` really fails, as the guide says.
"""

import datetime
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from peernet.devnet import BootstrapNode, PeerNode

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUIDE = os.path.join(ROOT, "docs", "deployment.md")
BIN = os.path.dirname(sys.executable)


def section(number):
    with open(GUIDE) as f:
        text = f.read()
    match = re.search(rf"^## {number}\. .*?(?=^## \d+\. |\Z)", text, re.S | re.M)
    assert match, f"docs/deployment.md has no section {number}"
    return match.group(0)


def shell_blocks(text):
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def kill_all(pid_file):
    if not os.path.exists(pid_file):
        return
    pids = [int(p) for p in open(pid_file).read().split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 20
    for pid in pids:
        if not _gone_by(pid, deadline):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_single_host_section_as_written(tmp_path):
    if shutil.which("curl") is None:   # not a skip: scripts/test.sh installs curl
        pytest.fail("the guide uses curl (apt-get install curl)", pytrace=False)
    start, checks = shell_blocks(section(2))[:2]
    work = str(tmp_path / "peernet-try")
    pid_file = str(tmp_path / "pids")
    assert "/tmp/peernet-try" in start
    start = start.replace("/tmp/peernet-try", work)
    # Record each background job's pid (to stop it by pid, even on failure).
    start = re.sub(r"&\s*$", f"& echo $! >> {pid_file}", start, flags=re.M)
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    try:
        subprocess.run(["bash", "-euc", start], env=env, check=True, timeout=60,
                       stdin=subprocess.DEVNULL)
        assert len(open(pid_file).read().split()) == 3
        # The guide's checks, once the three have started (the silent peer
        # rediscovers within seconds once alice has registered).
        def shows_everything(out):
            return (out.returncode == 0
                    and '"peers":1' in out.stdout.replace(" ", "")
                    and "broadcasting" in out.stdout and "notes" in out.stdout
                    and re.search(r"peernet_bootstrap_registrations\{kind=\"all\"\} 1\.0",
                                  out.stdout))

        deadline = time.monotonic() + 60
        while True:
            # -e: every command of the block must succeed, not only the last one.
            out = subprocess.run(["bash", "-ec", f"cd {work}\n{checks}"], env=env,
                                 capture_output=True, text=True, timeout=120,
                                 stdin=subprocess.DEVNULL)
            if shows_everything(out) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert shows_everything(out), out.stdout[-3000:] + out.stderr[-3000:]
        with open(os.path.join(work, "downloads", "notes", "readme.txt")) as f:
            assert f.read() == "hello\n"
        # Stopping as the guide says: peers first, then the bootstrap server.
        pids = open(pid_file).read().split()
        for pid in reversed(pids[1:]):
            os.kill(int(pid), signal.SIGTERM)
        for pid in pids[1:]:
            _wait_gone(int(pid))
        with open(os.path.join(work, "alice.log")) as f:
            assert "unregistered from http://127.0.0.1:8600" in f.read()
    finally:
        kill_all(pid_file)


def _gone_by(pid, deadline):
    """Whether process ``pid`` has exited by ``deadline`` (time.monotonic())."""
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _wait_gone(pid, timeout=30):
    if not _gone_by(pid, time.monotonic() + timeout):
        raise AssertionError(f"process {pid} still running")


# -- HTTPS with a certbot-like certificate chain ------------------------------------------


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject_key, subject, issuer_key, issuer, ca, san=None, path_length=0):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
        .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), True)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), True)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), False)
    return builder.sign(issuer_key, hashes.SHA256())


def certbot_live_dir(directory):
    """privkey.pem, cert.pem, chain.pem, fullchain.pem as certbot writes them,
    signed by a root (returned as a PEM path) through an intermediate."""
    root_key, int_key, key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert(root_key, "Test Root", root_key, "Test Root", ca=True, path_length=1)
    intermediate = _cert(int_key, "Test Intermediate", root_key, "Test Root", ca=True)
    leaf = _cert(key, "localhost", int_key, "Test Intermediate", ca=False,
                 san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    pem = serialization.Encoding.PEM
    directory.mkdir(parents=True)
    (directory / "privkey.pem").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / "cert.pem").write_bytes(leaf.public_bytes(pem))
    (directory / "chain.pem").write_bytes(intermediate.public_bytes(pem))
    (directory / "fullchain.pem").write_bytes(leaf.public_bytes(pem) + intermediate.public_bytes(pem))
    root_path = directory.parent / "root.pem"
    root_path.write_bytes(root.public_bytes(pem))
    return root_path


def https_health(port, cafile):
    context = ssl.create_default_context(cafile=str(cafile))
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    try:
        conn.request("GET", "/api/bootstrap/health")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def test_https_section_with_a_certbot_chain(tmp_path):
    text = section(3)
    [listen] = re.findall(r"--listen (ssl:443:\S+)", text)
    live = tmp_path / "letsencrypt" / "live" / "bootstrap.example.org"
    root = certbot_live_dir(live)
    listen = listen.replace("/etc/letsencrypt/live/bootstrap.example.org", str(live))
    listen = listen.replace("ssl:443:", "ssl:0:interface=127.0.0.1:")
    boot = BootstrapNode(str(tmp_path / "boot"), listen=listen, scheme="https")
    wrong = BootstrapNode(str(tmp_path / "wrong"), scheme="https", listen=(
        f"ssl:0:interface=127.0.0.1:privateKey={live}/privkey.pem:certKey={live}/fullchain.pem"))
    peer = None
    try:
        boot.start()
        assert https_health(boot.port, root)["status"] == "ok"   # the client trusts only the root
        wrong.start()
        with pytest.raises(ssl.SSLCertVerificationError):   # no intermediate sent
            https_health(wrong.port, root)
        # A peer registers over it (the root trusted through OpenSSL's SSL_CERT_FILE).
        os.environ["SSL_CERT_FILE"] = str(root)
        try:
            peer = PeerNode(str(tmp_path / "net"), "alice", broadcast=True, host="127.0.0.61",
                            bootstraps=[f"https://localhost:{boot.port}"]).start()
        finally:
            del os.environ["SSL_CERT_FILE"]
        peer.wait_for_log(r"registered with https://localhost")
        assert https_health(boot.port, root)["peers"] == 1
    finally:
        if peer is not None:
            peer.stop()
        boot.stop()
        wrong.stop()
