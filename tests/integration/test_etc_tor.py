"""etc/tor/torrc.example is a configuration the real tor accepts and serves.

The example names system paths (/run/tor, /var/lib/tor); the tests use a copy
with those paths moved into a temporary directory, and nothing else changed
except where stated.
"""

import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import time

import pytest
import pytest_twisted
import txtorcon
from twisted.internet import reactor, task
from twisted.internet.endpoints import clientFromString

from peernet.devnet import stop_process

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "etc", "tor", "torrc.example")


def tor():
    path = shutil.which("tor")
    if path is None:
        pytest.fail("these tests need the Debian tor package (scripts/test.sh installs it)",
                    pytrace=False)
    return path


def copy_example(tmp_path, *extra, replace=()):
    run, lib = tmp_path / "run", tmp_path / "lib"
    run.mkdir()
    lib.mkdir(mode=0o700)
    text = open(EXAMPLE).read().replace("/run/tor", str(run)).replace("/var/lib/tor", str(lib))
    for old, new in replace:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "torrc"
    path.write_text(text + "".join(line + "\n" for line in extra))
    return path, run, lib


def verify(path):
    return subprocess.run([tor(), "--verify-config", "-f", str(path), "--defaults-torrc",
                           os.devnull], capture_output=True, text=True, timeout=60)


def test_tor_verify_config_accepts_the_example(tmp_path):
    path, _, _ = copy_example(tmp_path)
    done = verify(path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Configuration was valid" in done.stdout


def test_the_example_with_debians_service_defaults(tmp_path):
    """Copied to /etc/tor/torrc, the example is read after Debian's
    tor-service-defaults-torrc (User debian-tor, its own ControlSocket and
    SocksPorts, which the example's lines replace); tor accepts the pair."""
    defaults = "/usr/share/tor/tor-service-defaults-torrc"
    if not os.path.exists(defaults):
        pytest.fail(f"{defaults} is missing: the Debian tor package is not installed "
                    "(scripts/test.sh installs it)", pytrace=False)
    # tor checks its directories as debian-tor, who cannot enter pytest's
    # private tmp tree: a directory of its own under /tmp, removed afterwards.
    with tempfile.TemporaryDirectory(prefix="peernet-etc-tor-") as top:
        os.chmod(top, 0o755)
        base = pathlib.Path(top)
        path, run, lib = copy_example(base)
        moved = base / "defaults"
        moved.write_text(open(defaults).read().replace("/run/tor", str(run))
                         .replace("/var/lib/tor", str(lib)))
        shutil.chown(lib, "debian-tor", "debian-tor")   # as Debian's package leaves them
        shutil.chown(run, "debian-tor", "debian-tor")
        done = subprocess.run([tor(), "--verify-config", "-f", str(path), "--defaults-torrc",
                               str(moved)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "Configuration was valid" in done.stdout
        assert "User debian-tor" in moved.read_text()   # the defaults really were in play


def test_tor_verify_config_catches_a_broken_copy(tmp_path):
    # the check above means something: a wrong line makes it fail
    path, _, _ = copy_example(tmp_path, "HiddenServicePort not-a-port")
    assert verify(path).returncode != 0


@pytest_twisted.inlineCallbacks
def test_a_tor_started_from_the_example_serves_the_peer(tmp_path):
    """Control socket with cookie auth (what --tor-control unix:... uses), the
    SOCKS port setting, and the static onion service's hostname.  DisableNetwork keeps
    this tor from contacting the public Tor network: nothing leaves loopback."""
    path, run, lib = copy_example(
        tmp_path, "DisableNetwork 1",
        replace=[("SocksPort 127.0.0.1:9050", "SocksPort 127.0.0.1:auto"),
                 ("Log notice syslog", f"Log notice file {tmp_path / 'tor.log'}")])
    proc = subprocess.Popen([tor(), "-f", str(path), "--defaults-torrc", os.devnull],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, MALLOC_ARENA_MAX="1"))
    try:
        control, hostname = run / "control", lib / "peernet" / "hostname"
        deadline = time.monotonic() + 60
        while not (control.exists() and hostname.exists()) and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "tor.log").read_text()[-2000:]
            time.sleep(0.2)
        assert control.exists() and hostname.exists()
        assert re.fullmatch(r"[a-z2-7]{56}\.onion", hostname.read_text().strip())
        assert (run / "control.authcookie").stat().st_size == 32
        # Cookie authentication through the socket, as twist peer does.
        state, last = None, None
        for _ in range(20):  # the socket may exist a moment before it accepts
            try:
                state = yield txtorcon.connect(reactor, clientFromString(reactor,
                                                                         f"unix:{control}"))
                break
            except Exception as e:
                last = e
                yield task.deferLater(reactor, 0.25, lambda: None)
        assert state is not None, repr(last)
        ports = yield state.protocol.get_conf("HiddenServicePort")
        assert "8701 127.0.0.1:8701" in str(ports) and "6881 127.0.0.1:6881" in str(ports)
        # (DisableNetwork also keeps the SOCKS listener closed; its setting is checked)
        socks = yield state.protocol.get_conf("SocksPort")
        assert "127.0.0.1:auto IsolateDestAddr IsolateDestPort" in str(socks)
        yield state.protocol.quit()
    finally:
        stop_process(proc, timeout=10)
