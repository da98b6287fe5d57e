"""The private Tor network the Tor tests run on (peernet.tor.testnet) really works.

A client tor on it reaches a loopback TCP server through an exit, an onion
service published through another tor's control port (txtorcon, ADD_ONION)
serves bytes to a client dialing its .onion address, and stopping leaves no tor
process behind, also when the start fails.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import pytest_twisted
import txtorcon
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, clientFromString

from peernet.tor.testnet import PrivateTorNetwork, TorNetworkError

pytestmark = pytest.mark.slow

DIAL_ATTEMPTS = 10
DIAL_TIMEOUT = 30.0


def alive(pid):
    """True if ``pid`` is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Greeter(protocol.Protocol):
    """Answers the first bytes it receives with the greeting, then closes.

    (Answering before the client spoke can race the SOCKS reply.)"""

    def dataReceived(self, data):
        self.transport.write(self.factory.greeting)
        self.transport.loseConnection()


class Collect(protocol.Protocol):
    def __init__(self):
        self.data = b""
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(b"hello")

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done.callback(self.data)


@defer.inlineCallbacks
def fetch(endpoint, attempts=DIAL_ATTEMPTS):
    """Every byte the server behind ``endpoint`` sends before closing.

    Retried: an onion descriptor may not be fetchable the first second after
    its upload (NOTES.md); each attempt is bounded by tor's own timeouts.
    """
    last = None
    for _ in range(attempts):
        try:
            connecting = endpoint.connect(protocol.Factory.forProtocol(Collect))
            proto = yield connecting.addTimeout(DIAL_TIMEOUT, reactor)
            data = yield proto.done.addTimeout(DIAL_TIMEOUT, reactor)
        except Exception as e:  # SOCKS errors and timeouts: retry after a pause
            last = e
            yield task.deferLater(reactor, 1.0, lambda: None)
            continue
        return data
    raise AssertionError(f"no connection after {attempts} attempts: {last!r}")


@pytest.fixture
def greeter():
    """A loopback TCP server that sends a fixed greeting and closes."""
    factory = protocol.Factory.forProtocol(Greeter)
    factory.greeting = os.urandom(16).hex().encode() + b"\n"
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    yield factory.greeting, port.getHost().port
    port.stopListening()


def test_consensus_lists_every_relay_as_running(tor_network):
    assert tor_network.running_relays() >= {"auth0", "auth1", "auth2", "relay0", "relay1"}
    lines = tor_network.client_torrc_lines()
    assert "TestingTorNetwork 1" in lines
    assert sum(line.startswith("DirAuthority ") for line in lines) == 3
    config = tor_network.client_config()
    assert len(config["DirAuthority"]) == 3 and config["TestingTorNetwork"] == "1"
    assert tor_network.ready_after is not None
    for node in tor_network.authorities + tor_network.relays:
        assert alive(node.pid), node.name


@pytest_twisted.inlineCallbacks
def test_client_reaches_a_loopback_server_through_an_exit(tor_network, greeter):
    greeting, port = greeter
    client = tor_network.start_client("exit-client")
    try:
        assert client.control_endpoint == f"tcp:127.0.0.1:{client.control_port}"
        socks = TCP4ClientEndpoint(reactor, "127.0.0.1", client.socks_port)
        data = yield fetch(txtorcon.TorClientEndpoint("127.0.0.1", port, socks_endpoint=socks))
        assert data == greeting  # only tor's SOCKS port was dialled
    finally:
        client.stop()
    assert not alive(client.pid)


@pytest_twisted.inlineCallbacks
def test_onion_service_serves_a_client_on_another_tor(tor_network, greeter):
    greeting, port = greeter
    host = tor_network.start_client("onion-host")
    visitor = tor_network.start_client("onion-visitor")
    try:
        tor = yield txtorcon.connect(reactor, clientFromString(reactor, host.control_endpoint))
        onion = yield tor.create_onion_service(
            ports=[(80, f"127.0.0.1:{port}")], version=3, await_all_uploads=True)
        assert re.fullmatch(r"[a-z2-7]{56}\.onion", onion.hostname)
        socks = TCP4ClientEndpoint(reactor, "127.0.0.1", visitor.socks_port)
        data = yield fetch(txtorcon.TorClientEndpoint(onion.hostname, 80, socks_endpoint=socks))
        assert data == greeting
        yield tor.protocol.quit()
    finally:
        host.stop()
        visitor.stop()
    assert not alive(host.pid) and not alive(visitor.pid)


def test_a_client_name_is_unique_while_running_and_reusable_after(tor_network):
    first = tor_network.start_client("reused")
    try:
        with pytest.raises(TorNetworkError, match="already running"):
            tor_network.start_client("reused")
    finally:
        first.stop()
    second = tor_network.start_client("reused")  # same data directory, new process
    try:
        assert second.pid != first.pid and alive(second.pid) and not alive(first.pid)
        assert second in tor_network.clients and first not in tor_network.clients
    finally:
        second.stop()


def test_stop_after_a_failed_start_leaves_no_tor_process(tmp_path):
    network = PrivateTorNetwork(str(tmp_path))
    # No consensus can list every relay as Running within 2 s (the first vote
    # happens at the next 5 s boundary): start() fails and must clean up.
    with pytest.raises(TorNetworkError) as failure:
        network.start(timeout=2)
    assert "last lines of" in str(failure.value)
    pids = [node.pid for node in network.authorities + network.relays]
    assert len(pids) == 5 and all(pids)
    assert not any(alive(pid) for pid in pids)
    network.stop()  # idempotent
    with pytest.raises(TorNetworkError):
        network.client_torrc_lines()  # nobody joins a network that failed
    with pytest.raises(TorNetworkError):
        network.start()
    for node in network.authorities + network.relays:
        assert os.path.exists(node.log_path)


def test_client_of_a_stopped_network_is_refused(tmp_path):
    network = PrivateTorNetwork(str(tmp_path))
    with pytest.raises(TorNetworkError):
        network.start_client("nobody")
    assert network.pids == []


def test_tor_benchmark_quick_measures_both_paths(tor_network, tmp_path):
    """benchmarks/tor.py --quick on the session network: every figure, both paths."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    description = tmp_path / "network.json"
    description.write_text(json.dumps(tor_network.description()))
    out = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "tor.py"), "--quick",
         "--network", str(description), "--workdir", str(tmp_path / "work"),
         "--out", str(tmp_path / "tor")],
        capture_output=True, text=True, timeout=240, cwd=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "tor.json").read_text())
    gossip, download = report["gossip"], report["download"]
    for path in ("direct", "tor"):
        assert gossip[path]["n"] == 40 and gossip[path]["median_ms"] > 0
        assert download[path]["sha256_ok"] is True
        assert download[path]["payload_down"] >= download[path]["bytes"] == 5_000_000
        assert download[path]["mb_per_s"] > 0
    # six hops and a rendezvous cannot beat a loopback socket
    assert gossip["tor"]["median_ms"] > gossip["direct"]["median_ms"]
    md = (tmp_path / "tor.md").read_text()
    assert "Tor, onion service" in md and "direct loopback" in md
    assert f"| {gossip['tor']['median_ms']} |" in md
    assert f"| {download['tor']['mb_per_s']} |" in md
    # the benchmark's own client tors are gone, the session network still runs
    assert os.path.exists(tmp_path / "work" / "tor" / "bench-host.torrc")
    assert _pids_of(tmp_path / "work") == []
    assert all(alive(node.pid) for node in tor_network.authorities + tor_network.relays)


def _pids_of(workdir):
    """Live processes whose command line names a torrc under ``workdir``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            if str(workdir) in cmd and "torrc" in cmd and alive(int(entry)):
                pids.append(entry)
    return pids
