"""`twist bootstrap` option errors: one line on stderr, non-zero exit, no traceback."""

import socket
import subprocess

import pytest

from conftest import TWIST

pytestmark = pytest.mark.slow


def run(*args, cwd=None, timeout=60):
    return subprocess.run([TWIST, "bootstrap", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args, words", [
    (["--ttl", "soon"], "--ttl"),
    (["--ttl", "5"], "--ttl"),
    (["--listen", "tcpx:80"], "bad endpoint"),
    (["--listen", "tcp:notaport"], "bad endpoint"),
    (["--federate", "ftp://x"], "--federate"),
    (["--federate", "http://host:99999"], "--federate"),
    (["--smtp", "mail.example.org"], "--smtp"),
    (["--rate-ip", "lots"], "--rate-ip"),
    (["--rate-email", "0/60"], "--rate-email"),
    (["--db", "/nonexistent-dir/db.sqlite"], "--db"),
    (["--no-such-option"], "no-such-option"),
])
def test_bad_option_is_one_line_and_non_zero(tmp_path, args, words):
    out = run("--db", str(tmp_path / "db.sqlite"), *args, cwd=tmp_path)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("twist bootstrap: error:") and words in lines[0]
    assert "Traceback" not in out.stdout + out.stderr


def test_corrupt_database_file_is_one_line_error_and_untouched(tmp_path):
    db = tmp_path / "db.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    before = db.read_bytes()
    out = run("--db", str(db), cwd=tmp_path)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1
    assert "--db" in out.stderr and "Traceback" not in out.stderr
    assert db.read_bytes() == before


def test_port_in_use_is_one_line_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run("--db", str(tmp_path / "db.sqlite"),
                  "--listen", f"tcp:{port}:interface=127.0.0.1", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().startswith("twist bootstrap: error: cannot listen")
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stdout + out.stderr


def test_help_documents_every_option():
    out = run("--help")
    assert out.returncode == 0
    for option in ("--listen", "--db", "--ttl", "--federate", "--smtp", "--rate-ip", "--rate-email"):
        assert option in out.stdout
