"""`twist peer --tor/--onion` start-up failures, with real subprocesses and a real
tor: one line on stderr, a non-zero exit, no traceback, no tor left behind.

No private Tor network is needed here: each case is a tor that cannot be had
(not installed, nothing at the control port, no directory authority reachable)
or an option combination refused before anything starts.
"""

import os
import socket
import subprocess
import time

import pytest

from conftest import assert_one_line_error
from peernet.devnet import twist_command
from tor_fixture import tor_processes_of

pytestmark = pytest.mark.slow

# A directory authority nobody runs (a closed loopback port): a tor given this
# is a valid configuration that can never bootstrap, and never tries the
# public Tor network either.
UNREACHABLE_NETWORK = [
    "TestingTorNetwork 1",
    "DirAuthority nobody orport=1 no-v2 v3ident=" + "A" * 40 + " 127.0.0.1:1 " + "B" * 40,
]


def run(tmp_path, *args, env=None, timeout=90):
    return subprocess.run(
        twist_command() + ["peer", "--state-dir", str(tmp_path / "state"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
        stdin=subprocess.DEVNULL, env=env)


@pytest.mark.parametrize("args, words", [
    (["--tor", "--broadcast"], "--tor is for silent peers"),
    (["--onion"], "--onion needs --broadcast"),
    (["--onion-only"], "--onion needs --broadcast"),
    (["--tor-control", "tcp:127.0.0.1:9051"], "--tor-control needs --tor or --onion"),
    (["--torrc", "x"], "--torrc needs --tor or --onion"),
    (["--tor-timeout", "30"], "--tor-timeout needs --tor or --onion"),
    (["--tor", "--bind-address", "127.0.0.1"], "--bind-address has no use with --tor"),
    (["--tor", "--tor-control", "nonsense:1"], "--tor-control"),
    (["--tor", "--tor-control", "tcp:127.0.0.1:9051", "--torrc", "/dev/null"], "--torrc"),
    (["--tor", "--tor-timeout", "0"], "--tor-timeout"),
    (["--tor", "--torrc", "/nonexistent/torrc"], "cannot read"),
    (["--broadcast", "--onion-only", "--advertise", "127.0.0.1:8701"], "--onion-only"),
])
def test_bad_tor_options_are_refused_in_one_line(tmp_path, args, words):
    out = run(tmp_path, *args)
    assert_one_line_error(out, words)
    assert out.returncode == 2
    assert not (tmp_path / "state" / "identity").exists()


@pytest.mark.parametrize("args", [["--tor"], ["--broadcast", "--onion-only"]])
def test_without_tor_installed(tmp_path, args):
    empty = tmp_path / "bin"
    empty.mkdir()
    env = dict(os.environ, PATH=str(empty))
    out = run(tmp_path, *args, "--listen", "tcp:0:interface=127.0.0.1", env=env) \
        if "--broadcast" in args else run(tmp_path, *args, env=env)
    assert_one_line_error(out, "no tor program found on PATH")
    assert out.returncode == 2


def test_control_port_with_nothing_listening(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # now nothing listens there
    out = run(tmp_path, "--tor", "--tor-control", f"tcp:127.0.0.1:{port}")
    assert_one_line_error(out, "cannot reach the tor control port", str(port), "connection refused")
    assert out.returncode == 1


def test_control_socket_that_does_not_exist(tmp_path):
    out = run(tmp_path, "--broadcast", "--onion-only", "--tor-control",
              f"unix:{tmp_path}/no-such-control.sock")
    assert_one_line_error(out, "cannot reach the tor control port", "no such socket")
    assert out.returncode == 1


def test_tor_that_cannot_bootstrap_gives_up_after_the_timeout(tmp_path):
    torrc = tmp_path / "unreachable.torrc"
    torrc.write_text("\n".join(UNREACHABLE_NETWORK) + "\n")
    t0 = time.monotonic()
    out = run(tmp_path, "--tor", "--torrc", str(torrc), "--tor-timeout", "4")
    elapsed = time.monotonic() - t0
    assert_one_line_error(out, "did not finish bootstrapping within 4 s", "--tor-timeout")
    assert out.returncode == 1
    # the tor it launched: its data in the state directory, a circuit per destination
    torrc = (tmp_path / "state" / "tor" / "torrc").read_text()
    assert "SocksPort 127.0.0.1:auto IsolateDestAddr IsolateDestPort" in torrc
    assert "DirAuthority nobody" in torrc  # the --torrc lines
    assert 3.5 < elapsed < 40, elapsed
    # the private tor it launched is gone with it
    deadline = time.monotonic() + 10
    while tor_processes_of(tmp_path / "state") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tor_processes_of(tmp_path / "state") == []


def test_tor_refusing_its_configuration_is_named(tmp_path):
    torrc = tmp_path / "bad.torrc"
    torrc.write_text("NoSuchTorOption 1\n")
    out = run(tmp_path, "--tor", "--torrc", str(torrc), "--tor-timeout", "30")
    line = assert_one_line_error(out, "tor exited at start")
    assert "NoSuchTorOption" in line
    assert out.returncode == 1


def test_help_documents_the_tor_options(tmp_path):
    out = subprocess.run(twist_command() + ["peer", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for option in ("--tor", "--onion", "--onion-only", "--tor-control", "--torrc",
                   "--tor-timeout", "--tor-control-password-file"):
        assert option in out.stdout, option


@pytest.fixture
def password_tor(tmp_path):
    """A tor with a control password and no network (it never bootstraps)."""
    hashed = subprocess.run(["tor", "--quiet", "--hash-password", "s3cret"], capture_output=True,
                            text=True, timeout=30).stdout.strip().splitlines()[-1]
    data = tmp_path / "tor-data"
    data.mkdir(mode=0o700)
    port_file = data / "control.port"
    torrc = tmp_path / "password.torrc"
    torrc.write_text("\n".join([
        f"DataDirectory {data}", "DisableNetwork 1", "SocksPort 127.0.0.1:auto",
        "ControlPort 127.0.0.1:auto", f"ControlPortWriteToFile {port_file}",
        "CookieAuthentication 0", f"HashedControlPassword {hashed}",
        f"__OwningControllerProcess {os.getpid()}", "Log notice stdout"]) + "\n")
    proc = subprocess.Popen(["tor", "-f", str(torrc), "--defaults-torrc", os.devnull],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        port = port_file.read_text().strip().rsplit(":", 1)[1]
        yield f"tcp:127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_control_password_file(tmp_path, password_tor):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("s3cret\n")
    bad.write_text("wrong\n")
    # the right password gets past authentication (then this tor, without a
    # network, never bootstraps)
    out = run(tmp_path, "--tor", "--tor-control", password_tor,
              "--tor-control-password-file", str(good), "--tor-timeout", "2")
    assert_one_line_error(out, "did not finish bootstrapping within 2 s")
    out = run(tmp_path, "--tor", "--tor-control", password_tor,
              "--tor-control-password-file", str(bad), "--tor-timeout", "2")
    assert_one_line_error(out, "refused us")
    assert out.returncode == 1
