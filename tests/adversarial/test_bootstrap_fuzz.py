"""The bootstrap API under generated input: schemathesis against the OpenAPI
document a real `twist bootstrap` serves, with zero 5xx allowed; plus the
regression tests for what it found.

Rerun by hand (any running bootstrap):

    schemathesis run http://HOST:PORT/api/bootstrap/openapi.json \\
        --checks not_a_server_error -n 100 --workers 1
"""

import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCHEMATHESIS = os.path.join(os.path.dirname(sys.executable), "schemathesis")
#: Generated cases per operation (--max-time would make it run the whole
#: budget: the count bounds the run, RUN_TIMEOUT is the backstop).
MAX_EXAMPLES = 100
RUN_TIMEOUT = 240


def _no_limits(bootstrap_factory):
    # Lift the rate limits, or most generated requests would stop at a 429
    # before reaching the code under test.
    return bootstrap_factory("--rate-ip", "1000000/1", "--rate-email", "1000000/1")


def test_schemathesis_finds_no_server_error(bootstrap_factory, tmp_path):
    server = _no_limits(bootstrap_factory)
    url = f"{server.url}/api/bootstrap/openapi.json"
    proc = subprocess.run(
        [SCHEMATHESIS, "run", url, "--checks", "not_a_server_error",
         "-n", str(MAX_EXAMPLES), "--seed", "20261125", "--workers", "1",
         "--generation-database", "none", "--no-color",
         "--request-timeout", "10", "--report-dir", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "Selected: 4/4" in out and "Tested: 4" in out, out[-2000:]
    # It really sent requests (not an empty run), and none failed.
    assert " generated, " in out and "passed" in out, out[-2000:]
    assert server.running()
    log = server.log(since_start=True)
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


def _raw_post(server, header_lines, body=b"{}"):
    s = socket.create_connection((server.host, server.port), timeout=10)
    try:
        s.sendall(b"POST /api/bootstrap/register HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  + header_lines + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), payload


@pytest.mark.parametrize("value", [b"\x84", b"\xc2\x84", b"abc\xff=="])
def test_non_ascii_signature_header_is_a_clear_4xx(bootstrap_server, value):
    """Found by schemathesis: a Peernet-Signature header that is not UTF-8 made
    twisted.web's getHeader raise, and the server answered 500."""
    status, payload = _raw_post(
        bootstrap_server,
        b"Content-Type: application/json\r\nPeernet-Signature: " + value + b"\r\n")
    assert status == 401
    error = json.loads(payload)["error"]
    assert error["code"] == "bad_signature" and "ASCII" in error["message"]
    assert "Traceback" not in bootstrap_server.log(since_start=True)
