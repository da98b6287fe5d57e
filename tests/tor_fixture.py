"""The private Tor network fixture (imported by tests/conftest.py).

Only tests/conftest.py may be a conftest: a second one (tests/integration/conftest.py)
takes the module name ``conftest`` and breaks ``from conftest import ...``.

``tor_network``: one private Tor network on 127.0.0.1 per test session (three
directory authorities and two relays of the Debian ``tor`` binary, see
``peernet.tor.testnet``).  It starts lazily, only when a test asks for it, and
every tor it started is stopped by pid at the end of the session.

``tor_processes_of(dir)``: pids of the tor processes whose torrc lives under ``dir``.
"""

import os
import shutil

import pytest

from peernet.tor.testnet import PrivateTorNetwork


@pytest.fixture(scope="session")
def tor_network(tmp_path_factory):
    """A started PrivateTorNetwork; use ``start_client(name)`` for a client tor."""
    if shutil.which("tor") is None or shutil.which("tor-gencert") is None:
        # Not a skip: the test command installs tor, so its absence is a broken setup.
        pytest.fail("the Tor tests need the Debian tor package (apt-get install tor; "
                    "scripts/test.sh installs it)", pytrace=False)
    network = PrivateTorNetwork(str(tmp_path_factory.mktemp("tornet")))
    network.start()
    try:
        yield network
    finally:
        network.stop()


def tor_processes_of(state_dir):
    """pids of tor processes whose torrc lives under ``state_dir``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"tor") and any(str(state_dir).encode() in a for a in argv):
            found.append(int(pid))
    return found
