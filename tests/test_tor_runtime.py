"""peernet.tor without a Tor network: parsing, the onion key file, the gate that
holds every network service until tor is ready, the onion publisher, address
mapping, the libtorrent settings, and streams and HTTP requests through a
SOCKS5 server (a small real one on loopback, standing in for tor's SocksPort).
Plus the Tor-related rules elsewhere: onion addresses skipped without Tor, and
.onion bootstrap URLs over plain http."""

import os
import stat
import struct

import libtorrent as lt
import pytest
import pytest_twisted
from twisted.application.service import Service
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.web.client import readBody

from peernet.bootstrap.client import check_base_url
from peernet.errors import ConfigError, PeernetError
from peernet.peer.repos import RepoService, is_onion_host, parse_torrent_address
from peernet.peer.transport import GossipService, is_onion_address
from peernet.tor import onion as onion_module
from peernet.tor.runtime import (
    TorRuntime,
    TorUnavailable,
    _read_key,
    _write_key,
    launch_tor,
    parse_bootstrap_phase,
    parse_listeners,
    read_torrc_lines,
)
from peernet.tor.service import TorAgent, TorGate

ONION = "a" * 56 + ".onion"


# -- parsing -----------------------------------------------------------------------------


def test_parse_listeners_keeps_tcp_listeners_only():
    reply = 'net/listeners/socks="127.0.0.1:9050" "10.1.2.1:9350" "unix:/run/tor/socks" "[::1]:9"'
    assert parse_listeners(reply) == [("127.0.0.1", 9050), ("10.1.2.1", 9350), ("::1", 9)]
    assert parse_listeners('net/listeners/socks=') == []
    assert parse_listeners("") == []


def test_parse_bootstrap_phase():
    reply = ('status/bootstrap-phase=NOTICE BOOTSTRAP PROGRESS=14 TAG=handshake '
             'SUMMARY="Handshaking with a relay"')
    assert parse_bootstrap_phase(reply) == (14, "Handshaking with a relay")
    assert parse_bootstrap_phase("garbage")[0] == 0


def test_read_torrc_lines(tmp_path):
    path = tmp_path / "torrc"
    path.write_text("# comment\n\nTestingTorNetwork 1\n  DirAuthority a b c  \n")
    assert read_torrc_lines(str(path)) == ["TestingTorNetwork 1", "DirAuthority a b c"]
    with pytest.raises(ConfigError, match="cannot read"):
        read_torrc_lines(str(tmp_path / "missing"))


def test_onion_key_file_is_private_and_checked(tmp_path):
    path = str(tmp_path / "onion.key")
    assert _read_key(path) is None
    _write_key(path, "ED25519-V3:" + "k" * 88)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert _read_key(path) == "ED25519-V3:" + "k" * 88
    with open(path, "w") as f:
        f.write("not a key\n")
    with pytest.raises(TorUnavailable, match="not a tor ED25519-V3 key"):
        _read_key(path)


def test_libtorrent_settings_exist_in_this_libtorrent():
    """A renamed or removed setting would silently leave libtorrent unproxied."""
    runtime = TorRuntime(Clock(), tor=None, socks=("127.0.0.1", 9050))
    settings = runtime.libtorrent_settings()
    assert settings["proxy_type"] == int(lt.proxy_type_t.socks5)
    assert settings["proxy_peer_connections"] and settings["proxy_hostnames"]
    assert settings["anonymous_mode"] and not settings["enable_incoming_tcp"]
    assert not settings["enable_dht"] and not settings["enable_lsd"]
    # libtorrent knows every one of them and keeps the values we gave
    session = lt.session(dict(settings, listen_interfaces=""))
    applied = session.get_settings()
    assert {k: applied.get(k) for k in settings} == settings


def test_launch_without_a_tor_program(tmp_path):
    failures = []
    d = defer.ensureDeferred(_launch_missing(tmp_path))
    d.addErrback(failures.append)
    assert failures and failures[0].check(TorUnavailable)
    assert "no tor program found" in str(failures[0].value)


async def _launch_missing(tmp_path):
    old = os.environ["PATH"]
    os.environ["PATH"] = str(tmp_path)  # nothing there
    try:
        await launch_tor(Clock(), str(tmp_path / "tor"))
    finally:
        os.environ["PATH"] = old


# -- address mapping -------------------------------------------------------------------------


class FakeProtocol:
    def __init__(self, replies):
        self.replies = replies
        self.commands = []

    def queue_command(self, command):
        self.commands.append(command)
        return defer.succeed(self.replies.pop(0))


class FakeTor:
    def __init__(self, replies=()):
        self.protocol = FakeProtocol(list(replies))


def test_map_address_asks_tor_once_per_name():
    tor = FakeTor(["127.192.0.7=" + ONION])
    runtime = TorRuntime(Clock(), tor, ("127.0.0.1", 9050))
    results = []
    runtime.map_address(ONION.upper()).addCallback(results.append)
    runtime.map_address(ONION).addCallback(results.append)
    runtime.map_address("10.0.0.5").addCallback(results.append)
    assert results == ["127.192.0.7", "127.192.0.7", "10.0.0.5"]
    assert tor.protocol.commands == [f"MAPADDRESS 0.0.0.0={ONION}"]


def test_map_address_refuses_odd_names_and_odd_replies():
    runtime = TorRuntime(Clock(), FakeTor(["garbage"]), ("127.0.0.1", 9050))
    failures = []
    runtime.map_address("bad name\r\nSIGNAL HALT").addErrback(failures.append)
    runtime.map_address(ONION).addErrback(failures.append)
    assert [f.check(PeernetError) for f in failures] == [PeernetError, PeernetError]
    assert runtime.tor.protocol.commands == [f"MAPADDRESS 0.0.0.0={ONION}"]


# -- the gate -----------------------------------------------------------------------------------


class Child(Service):
    def __init__(self, log):
        self.log = log

    def startService(self):
        super().startService()
        self.log.append("child started")

    def stopService(self):
        super().stopService()
        self.log.append("child stopped")


class FakeRuntime:
    def __init__(self, log):
        self.log = log

    def close(self):
        self.log.append("tor closed")
        return defer.succeed(None)


def logging_gate(log, start_tor):
    """A TorGate over ``start_tor`` with one Child, all of them writing to ``log``."""
    gate = TorGate(start_tor, on_ready=lambda rt: log.append("configured"),
                   on_failure=lambda m: log.append(("failed", m)))
    Child(log).setServiceParent(gate)
    return gate


def test_gate_starts_its_children_only_once_tor_is_ready():
    log, pending = [], defer.Deferred()
    gate = logging_gate(log, lambda: pending)
    gate.startService()
    assert log == [] and gate.runtime is None
    runtime = FakeRuntime(log)
    pending.callback(runtime)
    assert log == ["configured", "child started"]
    assert gate.runtime is runtime
    ready = []
    gate.when_ready().addCallback(ready.append)
    assert ready == [runtime]
    gate.stopService()
    assert log[-2:] == ["child stopped", "tor closed"]


def test_gate_failure_is_one_sentence_and_no_child_starts():
    log = []
    gate = logging_gate(log, lambda: defer.fail(TorUnavailable("tor did not finish bootstrapping")))
    gate.startService()
    assert log == [("failed", "tor did not finish bootstrapping")]
    gate.stopService()
    assert "child stopped" not in log


def test_gate_stopped_before_tor_is_ready_closes_tor_and_starts_nothing():
    log, pending = [], defer.Deferred()
    gate = logging_gate(log, lambda: pending)
    gate.startService()
    gate.stopService()
    pending.callback(FakeRuntime(log))
    assert log == ["tor closed"]


def test_tor_agent_before_tor_is_ready_fails_like_a_refused_connection():
    gate = TorGate(lambda: defer.Deferred(), lambda rt: None, lambda m: None)
    failures = []
    TorAgent(gate).request(b"GET", b"http://" + ONION.encode() + b"/").addErrback(
        failures.append)
    assert failures and "tor is not ready" in str(failures[0].value)


# -- the onion publisher ---------------------------------------------------------------------------


class PublishingRuntime:
    def __init__(self):
        self.calls = []

    def publish_onion(self, key_path, ports):
        self.calls.append(("publish", os.path.basename(key_path), ports))
        return defer.succeed(ONION)

    def unpublish(self, hostname):
        self.calls.append(("unpublish", hostname))
        return defer.succeed(None)


def test_onion_publisher_republishes_only_when_local_ports_change(tmp_path):
    runtime = PublishingRuntime()
    publisher = onion_module.OnionPublisher(lambda: runtime, str(tmp_path))
    got = []
    publisher.publish("127.0.0.1:1000", "127.0.0.1:2000").addCallback(got.append)
    publisher.publish("127.0.0.1:1000", "127.0.0.1:2000").addCallback(got.append)
    publisher.publish("127.0.0.1:1001", "127.0.0.1:2000").addCallback(got.append)
    assert got == [ONION] * 3
    assert runtime.calls == [
        ("publish", "onion.key", [(8701, "127.0.0.1:1000"), (6881, "127.0.0.1:2000")]),
        ("unpublish", ONION),
        ("publish", "onion.key", [(8701, "127.0.0.1:1001"), (6881, "127.0.0.1:2000")]),
    ]


# -- streams and HTTP through a SOCKS5 server -------------------------------------------------------


class Socks5Server(protocol.Protocol):
    """Just enough SOCKS5 (no auth, CONNECT) to stand in for tor's SocksPort:
    records the requested (host, port), then answers a canned HTTP response."""

    def connectionMade(self):
        self.buffer = b""
        self.stage = "greeting"

    def dataReceived(self, data):
        self.buffer += data
        if self.stage == "greeting" and len(self.buffer) >= 2:
            n = self.buffer[1]
            if len(self.buffer) < 2 + n:
                return
            self.buffer = self.buffer[2 + n:]
            self.transport.write(b"\x05\x00")
            self.stage = "request"
        if self.stage == "request" and len(self.buffer) >= 5:
            kind = self.buffer[3]
            if kind == 3:
                n = self.buffer[4]
                if len(self.buffer) < 5 + n + 2:
                    return
                host = self.buffer[5:5 + n].decode()
                port = struct.unpack("!H", self.buffer[5 + n:7 + n])[0]
                self.buffer = self.buffer[7 + n:]
            elif kind == 1:
                if len(self.buffer) < 10:
                    return
                host = ".".join(str(b) for b in self.buffer[4:8])
                port = struct.unpack("!H", self.buffer[8:10])[0]
                self.buffer = self.buffer[10:]
            else:
                self.transport.loseConnection()
                return
            self.factory.requests.append((host, port))
            self.transport.write(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00")
            self.stage = "http"
        if self.stage == "http" and b"\r\n\r\n" in self.buffer:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n"
                                 b"Connection: close\r\n\r\nvia socks")
            self.transport.loseConnection()


# txtorcon's SOCKS transport has no abortConnection (readBody only warns).
@pytest.mark.filterwarnings("ignore:Using readBody with a transport:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_http_agent_sends_the_host_name_to_the_socks_port():
    factory = protocol.Factory.forProtocol(Socks5Server)
    factory.requests = []
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    try:
        runtime = TorRuntime(reactor, tor=None, socks=("127.0.0.1", port.getHost().port))
        agent = runtime.http_agent()
        response = await agent.request(b"GET", f"http://{ONION}:8080/api/bootstrap/health".encode())
        assert response.code == 200
        assert await readBody(response) == b"via socks"
        # tor resolves the name: it reached the SOCKS port as a host name
        assert factory.requests == [(ONION, 8080)]
        # a plain stream endpoint goes the same way
        from twisted.internet.endpoints import connectProtocol

        class Once(protocol.Protocol):
            def connectionMade(self):
                self.transport.write(b"GET / HTTP/1.0\r\n\r\n")
                self.transport.loseConnection()

        await connectProtocol(runtime.stream_endpoint("peer.example", 8701), Once())
        assert factory.requests[-1] == ("peer.example", 8701)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_socks_refusal_is_a_connect_error():
    from twisted.internet.error import ConnectError

    class Refuse(protocol.Protocol):
        def dataReceived(self, data):
            if data[:1] == b"\x05" and len(data) == 3:
                self.transport.write(b"\x05\x00")
            else:  # "host unreachable", as tor answers for a dead onion
                self.transport.write(b"\x05\x04\x00\x01\x00\x00\x00\x00\x00\x00")
                self.transport.loseConnection()

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Refuse))
    try:
        runtime = TorRuntime(reactor, tor=None, socks=("127.0.0.1", port.getHost().port))
        with pytest.raises(ConnectError, match="tor could not connect"):
            await runtime.http_agent().request(b"GET", f"http://{ONION}/".encode())
    finally:
        await port.stopListening()


# -- Tor rules outside peernet.tor ---------------------------------------------------------------


class Entry:
    def __init__(self, addresses):
        self.record = {"addresses": addresses}


def test_gossip_dials_onion_addresses_only_through_tor():
    entry = Entry(["wss://127.0.0.9:8701/gossip", f"wss://{ONION}:8701/gossip",
                   f"bittorrent://{ONION}:6881"])
    service = GossipService.__new__(GossipService)
    service.dial_onions = False
    assert service._dial_addresses(entry) == ["wss://127.0.0.9:8701/gossip"]
    service.dial_onions = True  # through Tor: the onion address first
    assert service._dial_addresses(entry) == [f"wss://{ONION}:8701/gossip",
                                              "wss://127.0.0.9:8701/gossip"]
    assert is_onion_address(f"wss://{ONION.upper()}:1/gossip")
    assert not is_onion_address("wss://onion.example:1/gossip")


class Planner:
    @staticmethod
    def score(peer_id):
        return 0.0

    @staticmethod
    def is_refused(peer_id):
        return False


class Gossip:
    planner = Planner()


def test_repo_seeders_on_onions_need_tor():
    record = {"peer_id": "p" * 64, "addresses": [f"bittorrent://{ONION}:6881"],
              "repos": [{"name": "films", "btih": "b" * 40, "manifest": "m" * 64}]}
    repos = RepoService(Clock(), Gossip(), engine=None, state_dir="/nonexistent",
                        downloads_dir="/nonexistent")
    assert repos._sources([record], "films") == (None, {})
    mapped = []
    repos.map_host = lambda host: (mapped.append(host), defer.succeed("127.192.0.9"))[1]
    summary, seeders = repos._sources([record], "films")
    assert summary["name"] == "films" and seeders == {(ONION, 6881): "p" * 64}
    dialable = []
    defer.ensureDeferred(repos._dialable(seeders)).addCallback(dialable.append)
    assert dialable == [{("127.192.0.9", 6881): "p" * 64}] and mapped == [ONION]
    assert parse_torrent_address(f"bittorrent://{ONION}:6881") == (ONION, 6881)
    assert is_onion_host(ONION.upper())


def test_bootstrap_url_over_plain_http_only_to_loopback_or_an_onion():
    assert check_base_url(f"http://{ONION}")[1] is True
    assert check_base_url("http://127.0.0.1:8080")[1] is True
    with pytest.raises(ConfigError, match=r"loopback and \.onion"):
        check_base_url("http://bootstrap.example.org")


# -- what an --onion peer announces (peernet.peer.tap) --------------------------------------------


class _Host:
    def __init__(self, host, port):
        self.host, self.port = host, port


class _Port:
    def __init__(self, host, port):
        self._host = _Host(host, port)

    def getHost(self):
        return self._host


class _Engine:
    listen_interfaces = "127.0.0.5:0"

    def __init__(self):
        self.ready = defer.succeed(self)

    def listen_port(self):
        return 41000


class _Gossip:
    listening_port = _Port("127.0.0.5", 42000)


class _Gate:
    def __init__(self, runtime):
        self.runtime = runtime


@pytest.mark.parametrize("clearnet, expected", [
    (False, [f"wss://{ONION}:8701/gossip", f"bittorrent://{ONION}:6881"]),
    (True, ["bittorrent://127.0.0.5:41000", f"wss://{ONION}:8701/gossip",
            f"bittorrent://{ONION}:6881"]),
])
def test_onion_peer_announces_its_onion_service(tmp_path, clearnet, expected):
    from peernet.peer.tap import _onion_addresses

    runtime = PublishingRuntime()
    extra = _onion_addresses(_Gate(runtime), _Gossip(), _Engine(), str(tmp_path),
                             clearnet=clearnet)
    got = []
    extra("127.0.0.5").addCallback(got.append)
    assert got == [expected]
    # the onion service leads to the local gossip and torrent ports
    assert runtime.calls == [("publish", "onion.key", [(8701, "127.0.0.5:42000"),
                                                       (6881, "127.0.0.5:41000")])]
