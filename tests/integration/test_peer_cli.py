"""`twist peer` start-up errors: one line on stderr, non-zero exit, no
traceback, nothing damaged; and its control API refuses a missing or wrong
token with a 401 JSON error."""

import http.client
import json
import os
import socket
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import TWIST, assert_one_line_error
from peernet.devnet import PeerNode

pytestmark = pytest.mark.slow


def run(*args, cwd=None, timeout=60):
    return subprocess.run([TWIST, "peer", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args, words", [
    (["--listen", "tcp:0:interface=127.0.0.1"], "--listen needs --broadcast"),
    (["--advertise", "127.0.0.1:8701"], "--advertise needs --broadcast"),
    (["--email", "a@example.org"], "--email needs --broadcast"),
    (["--broadcast", "--advertise", "garbage"], "--advertise"),
    (["--broadcast", "--advertise", "https://127.0.0.1:8701/gossip"], "--advertise"),
    (["--links", "0"], "--links"),
    (["--links", "65"], "--links"),
    (["--links", "many"], "--links"),
    (["--bootstrap", "ftp://x"], "--bootstrap"),
    (["--bootstrap", "http://host:99999"], "--bootstrap"),
    (["--control", "tcpx:1"], "bad endpoint"),
    (["--broadcast", "--listen", "tcp:notaport"], "bad endpoint"),
    (["--no-such-option"], "no-such-option"),
])
def test_bad_option_is_one_line_and_non_zero(tmp_path, args, words):
    state = tmp_path / "state"
    out = run("--state-dir", str(state), *args, cwd=tmp_path)
    assert_one_line_error(out, words)
    assert out.returncode == 2
    # a refused command line creates no identity
    assert not (state / "identity").exists()


def _valid_key_pem():
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


@pytest.mark.parametrize("content", [
    b"this is not a key\n",
    b"",
    _valid_key_pem()[:60],  # truncated PEM
    Ed25519PrivateKey.generate().private_bytes(  # encrypted
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")),
], ids=["garbage", "empty", "truncated", "encrypted"])
def test_corrupt_identity_key_is_one_sentence_exit_3_and_untouched(tmp_path, content):
    state = tmp_path / "state"
    identity = state / "identity"
    identity.mkdir(parents=True)
    os.chmod(state, 0o700)
    os.chmod(identity, 0o700)
    key = identity / "node.key"
    key.write_bytes(content)
    os.chmod(key, 0o600)
    out = run("--state-dir", str(state), "--control", "none", cwd=tmp_path)
    line = assert_one_line_error(out, "key file", str(key))
    assert out.returncode == 3
    assert line.rstrip().endswith("untouched") or "corrupt" in line
    assert key.read_bytes() == content
    assert os.listdir(identity) == ["node.key"]  # no certificate made from nothing


def _busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


def test_gossip_port_in_use_is_one_line_error(tmp_path):
    s, port = _busy_port()
    with s:
        out = run("--state-dir", str(tmp_path / "state"), "--broadcast",
                  "--listen", f"tcp:{port}:interface=127.0.0.1", "--control", "none",
                  cwd=tmp_path)
    line = assert_one_line_error(out, str(port))
    assert out.returncode == 1
    assert "listen" in line


def test_control_port_in_use_is_one_line_error(tmp_path):
    s, port = _busy_port()
    with s:
        out = run("--state-dir", str(tmp_path / "state"),
                  "--control", f"tcp:{port}:interface=127.0.0.1", cwd=tmp_path)
    line = assert_one_line_error(out, str(port))
    assert out.returncode == 1
    assert "cannot listen" in line


def test_help_documents_every_option():
    out = run("--help")
    assert out.returncode == 0
    for option in ("--broadcast", "--state-dir", "--listen", "--advertise", "--email",
                   "--control", "--bind-address", "--links", "--bootstrap"):
        assert option in out.stdout


# -- the control API's token -------------------------------------------------------------


def _call(node, method, path, headers, body=None):
    host, port = node.control_url.split("//", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, "/api/" + path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def test_control_api_refuses_a_missing_or_wrong_token(tmp_path):
    node = PeerNode(str(tmp_path), "solo", broadcast=False, host="127.0.0.1")
    try:
        node.start()
        token = node.token
        assert token and node.control_url.startswith("http://127.0.0.1:")
        mode = os.stat(os.path.join(node.state_dir, "control.token")).st_mode & 0o777
        assert mode == 0o600
        wrong = [
            {},
            {"Authorization": ""},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer "},
            {"Authorization": "Bearer wrong-token"},
            {"Authorization": f"Bearer {token}x"},
            {"Authorization": f"Bearer {token[:-1]}"},
            {"Authorization": f"Basic {token}"},
            {"Authorization": token},
        ]
        calls = [("GET", "status", None), ("GET", "peers", None),
                 ("POST", "broadcast", json.dumps({"on": True})),
                 ("POST", "search", json.dumps({"repo": "x", "timeout": 1}))]
        for headers in wrong:
            for method, path, body in calls:
                h = dict(headers)
                if body is not None:
                    h["Content-Type"] = "application/json"
                status, ctype, raw = _call(node, method, path, h, body)
                assert status == 401, (headers, path, status, raw)
                assert ctype.startswith("application/json"), ctype
                error = json.loads(raw)["error"]
                assert error["code"] == "bad_token" and error["message"], error
                assert token.encode() not in raw
        # nothing was done by the refused calls; the right token works
        status, _, raw = _call(node, "GET", "status", {"Authorization": f"Bearer {token}"})
        assert status == 200 and json.loads(raw)["broadcasting"] is False
        status, _, raw = _call(node, "GET", "events", {})
        assert status == 401
        # Without the token, even an unknown path says only "bad token".
        status, _, raw = _call(node, "GET", "no-such-endpoint", {})
        assert status == 401 and json.loads(raw)["error"]["code"] == "bad_token"
    finally:
        node.stop()
    assert "Traceback" not in node.log()
