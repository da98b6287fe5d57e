"""Peers over Tor, on the private Tor network of the ``tor_network`` fixture.

The world (one per module):

* a ``twist bootstrap`` on 127.0.0.1, published as an onion service by a tor
  of the private network (so Tor users reach it without any exit);
* ``onion1``: ``twist peer --broadcast --onion-only`` sharing a repo; it
  launches its own tor (``--torrc`` with the private network's lines) and
  announces nothing but ``wss://<56>.onion:8701/gossip`` and
  ``bittorrent://<56>.onion:6881``;
* ``silent1``: ``twist peer --tor --tor-control ...`` inside a network
  namespace whose only link is a veth pair to the host, where a tor of the
  private network listens (SOCKS and control) on the host side.  Nothing
  else is reachable from there: 127.0.0.1 inside the namespace is its own
  loopback, with no route out.  So whatever the silent peer achieves, it
  achieved through Tor, and a sampler checks every socket it opens.

Checked: the silent peer discovers the onion-only peer through the bootstrap
(reached as an onion), finds the repo by PEER_REQUEST, downloads it through
Tor with SHA-256 verified; no other node (bootstrap, peers, tors of the
network) holds its address, peer_id or key; restarting the onion peer keeps
its onion address (and the silent peer links to it again).
"""

import binascii
import hashlib
import json
import os
import random
import re
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from peernet.devnet import BootstrapNode, PeerNode
from peernet.records import verify_signed_record
from peernet.tor.testnet import free_ports
from tor_fixture import tor_processes_of

# Shared helpers of the other integration tests (same directory, no package).
from test_gossip_network import _hits, _needles
from test_repos_network import MiB, make_repo, wait_job

pytestmark = pytest.mark.slow

REPO = "films"
REPO_SIZES = [6 * MiB, 2 * MiB, 777]
ONION_PEER_HOST = "127.0.0.21"
CLEAR_PEER_HOST = "127.0.0.22"
TOR_START = 150.0       # a peer that launches its own tor on the private network
LINK_TIMEOUT = 120.0    # first gossip link through Tor (onion rendezvous included)
ONION_RE = re.compile(r"^wss://([a-z2-7]{56})\.onion:8701/gossip$")


# -- helpers -----------------------------------------------------------------------------


def control_command(port, cookie_path, *commands, host="127.0.0.1"):
    """Raw control-port session (cookie auth): the replies, one string each."""
    with socket.create_connection((host, port), timeout=30) as s:
        f = s.makefile("rwb")

        def send(command):
            f.write(command.encode() + b"\r\n")
            f.flush()
            lines = []
            while True:
                line = f.readline().decode()
                if not line:
                    raise RuntimeError("tor closed the control connection")
                lines.append(line.rstrip())
                if re.match(r"^\d{3} ", line):
                    break
            if not lines[-1].startswith("250"):
                raise RuntimeError(f"tor refused {command.split()[0]}: {lines}")
            return "\n".join(lines)

        with open(cookie_path, "rb") as c:
            send("AUTHENTICATE " + binascii.hexlify(c.read()).decode())
        return [send(c) for c in commands]


class Namespace:
    """A network namespace joined to the host by one veth pair (a /30)."""

    def __init__(self):
        tag = f"{os.getpid() % 10000}{random.randrange(100)}"
        self.name = f"pn-tor-{tag}"
        self.host_if, self.ns_if = f"pth{tag}", f"ptn{tag}"
        octet = random.randrange(0, 63) * 4
        self.subnet = f"10.213.{random.randrange(256)}"
        self.host_ip = f"{self.subnet}.{octet + 1}"
        self.ns_ip = f"{self.subnet}.{octet + 2}"
        self.created = False

    def run(self, *argv):
        subprocess.run(argv, check=True, capture_output=True, timeout=30)

    def __enter__(self):
        self.run("ip", "netns", "add", self.name)
        self.created = True
        try:
            self.run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            self.run("ip", "link", "set", self.ns_if, "netns", self.name)
            self.run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            self.run("ip", "link", "set", self.host_if, "up")
            for argv in (["ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if],
                         ["ip", "link", "set", self.ns_if, "up"],
                         ["ip", "link", "set", "lo", "up"]):
                self.run("ip", "netns", "exec", self.name, *argv)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
            subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30)
            self.created = False

    @property
    def prefix(self):
        return ["ip", "netns", "exec", self.name]

    def can_connect(self, host, port):
        """Whether a TCP connection from inside the namespace succeeds."""
        code = (f"import socket; socket.create_connection(({host!r}, {port}), timeout=3)")
        done = subprocess.run(self.prefix + [sys.executable, "-c", code],
                              capture_output=True, timeout=30)
        return done.returncode == 0


def _hex_endpoint(text):
    address, port = text.split(":")
    raw = bytes.fromhex(address)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1]), int(port, 16)
    return raw.hex(), int(port, 16)


def namespace_sockets(pid):
    """(proto, state, local, remote) of every TCP/UDP socket in pid's namespace."""
    out = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/{pid}/net/{proto}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    out.append((proto, fields[3], _hex_endpoint(fields[1]),
                                _hex_endpoint(fields[2])))
        except (OSError, StopIteration):
            pass
    return out


class SocketAudit(threading.Thread):
    """Samples the silent peer's sockets; keeps every remote it ever had."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.remotes = set()
        self.samples = 0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            for proto, state, local, remote in namespace_sockets(self.pid):
                if remote[1] != 0:  # connected (not a listener / unbound)
                    self.remotes.add((proto, local, remote))
            self.samples += 1
            self.halt.wait(0.1)


def socks_connect(socks, host, port, timeout=30):
    """Whether tor's SOCKS port opens a stream to host:port (SOCKS5, no auth)."""
    with socket.create_connection(socks, timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(b"\x05\x01\x00")
        if s.recv(2) != b"\x05\x00":
            return False
        name = host.encode()
        s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big"))
        reply = s.recv(10)
        return len(reply) >= 2 and reply[1] == 0


def wait_for(predicate, timeout, what, interval=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, RuntimeError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def onion_host(peer):
    for address in peer.status()["addresses"]:
        m = ONION_RE.match(address)
        if m:
            return m.group(1)
    return None


def public_key_der(state_dir):
    with open(os.path.join(state_dir, "identity", "node.crt"), "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


# -- the world -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tor_network, tmp_path_factory):
    base = tmp_path_factory.mktemp("torpeer")
    workdir = str(base / "net")
    os.makedirs(workdir)
    repo_dir = str(base / "repo" / REPO)
    expected = make_repo(repo_dir, "tor-films", REPO_SIZES)
    torrc = os.path.join(workdir, "private-network.torrc")
    with open(torrc, "w") as f:
        f.write("\n".join(tor_network.client_torrc_lines()) + "\n")
    nodes, figures = [], {}
    ns = Namespace()
    try:
        bootstrap = BootstrapNode(workdir).start()
        nodes.append(bootstrap)
        # The bootstrap as an onion service, published by a tor of the network.
        boot_tor = tor_network.start_client(f"boot-tor-{os.getpid()}")
        [reply] = control_command(
            boot_tor.control_port, boot_tor.cookie_path,
            f"ADD_ONION NEW:ED25519-V3 Flags=Detach,DiscardPK Port=80,127.0.0.1:{bootstrap.port}")
        boot_url = "http://" + re.search(r"ServiceID=([a-z2-7]{56})", reply).group(1) + ".onion"

        started = time.monotonic()
        onion = PeerNode(workdir, "onion1", broadcast=True, host=ONION_PEER_HOST,
                         bootstraps=[boot_url], start_timeout=TOR_START,
                         extra=["--onion-only", "--torrc", torrc,
                                "--share", f"{REPO}={repo_dir}"])
        nodes.append(onion)
        onion.start()
        host = wait_for(lambda: onion_host(onion), TOR_START, "the onion peer's record")
        wait_for(lambda: onion.status()["bootstrap"].get(boot_url) == "registered", TOR_START,
                 "the onion peer registered through Tor")
        figures["onion peer: start to registered (s)"] = round(time.monotonic() - started, 2)

        # The silent peer's tor listens on the host side of the veth pair.
        ns.__enter__()
        socks_port, control_port = free_ports(2)
        silent_tor = tor_network.start_client(
            f"silent-tor-{os.getpid()}",
            extra_lines=[f"SocksPort {ns.host_ip}:{socks_port}",
                         f"ControlPort {ns.host_ip}:{control_port}"])
        silent = PeerNode(workdir, "silent1", broadcast=False, host=None,
                          bootstraps=[boot_url], prefix=ns.prefix, start_timeout=60,
                          extra=["--tor", "--tor-control", f"tcp:{ns.host_ip}:{control_port}",
                                 "--control", f"tcp:0:interface={ns.ns_ip}"])
        nodes.append(silent)
        started = time.monotonic()
        silent.start()
        audit = SocketAudit(silent.pid)
        audit.start()
        yield {
            "workdir": workdir, "bootstrap": bootstrap, "boot_url": boot_url,
            "onion": onion, "onion_host": host, "silent": silent,
            "silent_started": started, "ns": ns, "audit": audit, "expected": expected,
            "socks": (ns.host_ip, socks_port), "control": (ns.host_ip, control_port),
            "tor_workdir": tor_network.workdir, "silent_tor": silent_tor.name,
            "figures": figures, "base": str(base), "nodes": nodes,
            "fresh_socks": ("127.0.0.1", boot_tor.socks_port), "torrc": torrc,
        }
        audit.halt.set()
    finally:
        for node in reversed(nodes):
            node.stop()
        ns.__exit__()
        print("\nTor figures:", json.dumps(figures, indent=1))


# -- tests ----------------------------------------------------------------------------------


def test_silent_peer_finds_and_downloads_an_onion_only_repo_through_tor(world):
    silent, onion = world["silent"], world["onion"]
    figures = world["figures"]
    onion_id = onion.peer_id()

    # The onion-only record: no clearnet address at all.
    addresses = onion.status()["addresses"]
    assert addresses and all(".onion:" in a for a in addresses), addresses
    assert f"wss://{world['onion_host']}.onion:8701/gossip" in addresses
    assert f"bittorrent://{world['onion_host']}.onion:6881" in addresses
    key_path = os.path.join(onion.state_dir, "onion.key")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600

    # Discovery through the bootstrap (an onion) and a gossip link through Tor.
    def linked():
        status = silent.status()
        return onion_id in status["outbound_peers"] and status["links"]["outbound"] >= 1

    wait_for(linked, LINK_TIMEOUT, "a gossip link from the silent peer to the onion peer")
    figures["silent peer: start to first gossip link over Tor (s)"] = round(
        time.monotonic() - world["silent_started"], 2)
    status = silent.status()
    assert status["broadcasting"] is False and status["addresses"] == []
    assert status["links"]["inbound"] == 0

    # "Who has films?" as a PEER_REQUEST over the Tor link, answered with the
    # onion peer's own signed record.
    t0 = time.monotonic()
    found = wait_for(lambda: silent.search(repo=REPO, network_only=True, timeout=10),
                     60, "an answer to the PEER_REQUEST")
    figures["PEER_REQUEST answered over Tor (s)"] = round(time.monotonic() - t0, 2)
    assert {verify_signed_record(r)["peer_id"] for r in found} == {onion_id}

    # Download over Tor (libtorrent through the SOCKS port, .onion mapped by tor).
    dest = os.path.join(world["base"], "downloads")
    t0 = time.monotonic()
    job = silent.api("POST", "get", {"repo": REPO, "dest": dest})
    job = wait_job(silent, job["id"], ("done", "failed"), 180)
    elapsed = time.monotonic() - t0
    assert job["state"] == "done", job
    assert {f["path"]: f["sha256"] for f in job["files"]} == world["expected"]
    for rel, digest in world["expected"].items():
        with open(os.path.join(dest, REPO, rel), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest
    total = sum(REPO_SIZES)
    figures["download over Tor (MB/s, 8 MiB repo, incl. metadata and verification)"] = round(
        total / elapsed / 1e6, 2)

    # An onion-only peer dials no seeder itself (that would show its address).
    with pytest.raises(RuntimeError, match="dials no seeder"):
        onion.api("POST", "get", {"repo": REPO, "dest": os.path.join(world["base"], "x")})

    # Nothing direct: the namespace reaches only the tor on the host side ...
    ns = world["ns"]
    assert not ns.can_connect("127.0.0.1", world["bootstrap"].port)
    assert not ns.can_connect(ONION_PEER_HOST, 1)
    # ... and every socket the silent peer ever connected went to that tor
    # (SOCKS or control port), or is the test talking to its control API.
    audit = world["audit"]
    assert audit.samples > 10
    control_api_port = int(silent.control_url.rsplit(":", 1)[1])
    tor_ports = {world["socks"], world["control"]}
    seen = {(proto, remote) for proto, local, remote in audit.remotes}
    strays = {(proto, local, remote) for proto, local, remote in audit.remotes
              if remote not in tor_ports and local[1] != control_api_port}
    assert not strays, f"the silent peer connected elsewhere than its tor: {strays}"
    assert ("tcp", world["socks"]) in seen and ("tcp", world["control"]) in seen


def test_restarted_onion_peer_keeps_its_onion_address(world):
    onion, silent = world["onion"], world["silent"]
    before, onion_id = world["onion_host"], onion.peer_id()
    with open(os.path.join(onion.state_dir, "onion.key")) as f:
        key = f.read()
    onion.stop()
    wait_for(lambda: onion_id not in silent.status()["outbound_peers"], 60,
             "the silent peer noticing the onion peer left")
    onion.start()
    assert wait_for(lambda: onion_host(onion), TOR_START, "the restarted record") == before
    with open(os.path.join(onion.state_dir, "onion.key")) as f:
        assert f.read() == key
    # The same address really works again, seen from a tor that never visited
    # it before: a SOCKS connection to NAME.onion:8701 is accepted.  (Not the
    # silent peer's own tor: if it redialled while the peer was down, it keeps
    # the old descriptor's dead intro points for a while, minutes at worst.)
    t0 = time.monotonic()
    wait_for(lambda: socks_connect(world["fresh_socks"], f"{before}.onion", 8701),
             LINK_TIMEOUT, "a connection to the restarted onion service", interval=1)
    world["figures"]["restarted onion service reachable from a fresh tor (s)"] = round(
        time.monotonic() - t0, 2)


def test_clearnet_peer_without_tor_skips_onion_addresses(world):
    """A broadcasting peer without Tor (127.0.0.22, registered directly with the
    bootstrap) learns the onion peer's record but never dials its onion
    address.  The silent peer learns it too and may only try it through Tor:
    from the namespace it is unreachable.  (Not asserted: a link through an
    exit relay; the private network's loopback exits come and go in its
    consensus, so the Tor tests rely on onion services only.)"""
    clear = PeerNode(world["workdir"], "clear1", broadcast=True, host=CLEAR_PEER_HOST,
                     bootstraps=[world["bootstrap"].url])
    world["nodes"].append(clear)
    clear.start()
    world["clear"] = clear
    gossip_port = int(clear.wait_for_log(r"gossip listening on port (\d+)").group(1))
    assert not world["ns"].can_connect(CLEAR_PEER_HOST, gossip_port)
    onion_id = world["onion"].peer_id()
    wait_for(lambda: any(p["peer_id"] == onion_id for p in clear.peers()), 60,
             "the onion peer's record at the clearnet peer")
    time.sleep(3)  # time to dial, if it were to
    assert onion_id not in clear.status()["outbound_peers"]
    # a dial to an onion name without Tor would fail and be logged
    assert f"dial to {onion_id}" not in clear.log()
    assert f"to {onion_id} open" not in clear.log()


def test_silent_peer_with_the_tor_it_launches(world):
    """The default: no --tor-control, the peer launches its own tor (here with
    the private network's --torrc) and finds the repo through it."""
    silent2 = PeerNode(world["workdir"], "silent2", broadcast=False, host=None,
                       bootstraps=[world["boot_url"]], start_timeout=60,
                       extra=["--tor", "--torrc", world["torrc"]])
    world["nodes"].append(silent2)
    t0 = time.monotonic()
    silent2.start()
    onion_id = world["onion"].peer_id()
    # A fresh tor right after the onion peer's restart (the test before) may
    # not fetch the republished descriptor in time for its first dial (60 s
    # deadline); it failed once that way in CI, then linked on a redial.
    wait_for(lambda: onion_id in silent2.status()["outbound_peers"], 2 * LINK_TIMEOUT,
             "a link from a silent peer with its own tor")
    world["figures"]["silent peer launching its own tor: start to first link (s)"] = round(
        time.monotonic() - t0, 2)
    found = silent2.search(repo=REPO, network_only=True, timeout=10)
    assert {verify_signed_record(r)["peer_id"] for r in found} == {onion_id}
    # its tor lives in its state directory, and dies with it
    torrc = os.path.join(silent2.state_dir, "tor", "torrc")
    assert os.path.exists(torrc)
    silent2.stop()
    deadline = time.monotonic() + 15
    while tor_processes_of(silent2.state_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tor_processes_of(silent2.state_dir) == []


def test_no_other_node_holds_a_trace_of_the_silent_peer(world):
    silent, onion, bootstrap = world["silent"], world["onion"], world["bootstrap"]
    silent_id = silent.peer_id()
    der = public_key_der(silent.state_dir)
    assert hashlib.sha256(der).hexdigest() == silent_id
    needles = _needles(silent_id, der, world["ns"].ns_ip)

    # Live answers of every other node, and the bootstrap's database.
    clear = world.get("clear")
    other_peers = [onion] + ([clear] if clear is not None else [])
    api = {}
    for peer in other_peers + [silent]:
        api[f"{peer.name} /api/peers + /api/status"] = json.dumps(
            [peer.api("GET", "peers"), peer.api("GET", "status")]).encode()
    api["bootstrap /api/bootstrap/discover"] = json.dumps(
        bootstrap_discover(bootstrap)).encode()
    live_database = b""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(bootstrap.db_path + suffix):
            with open(bootstrap.db_path + suffix, "rb") as f:
                live_database += f.read()
    # Stop the others first (their snapshots and logs are written), then the silent one.
    for peer in other_peers:
        peer.stop()
    silent.stop()
    bootstrap.stop()

    files = {}
    own = (os.path.join(world["workdir"], "silent1"), os.path.join(world["workdir"],
                                                                    "silent1.log"))
    for top in (world["workdir"], world["tor_workdir"]):
        for root, _, names in os.walk(top):
            for name in names:
                path = os.path.join(root, name)
                if path.startswith(own) or world["silent_tor"] in path:
                    continue  # the silent peer's own state, and its own tor
                try:
                    with open(path, "rb") as f:
                        files[path] = f.read()
                except OSError:
                    continue
    assert any(p.endswith("onion1.log") for p in files)
    assert any(p.endswith("bootstrap.sqlite") for p in files)
    assert any(p.endswith("relay0.log") for p in files)
    sources = dict(files, **{k: v for k, v in api.items() if not k.startswith("silent1")})
    sources["bootstrap database while running"] = live_database
    leaks = {src: _hits(data, needles) for src, data in sources.items()}
    leaks = {src: hits for src, hits in leaks.items() if hits}
    assert not leaks, f"the silent peer is visible in other nodes' data: {leaks}"

    # The onion-only peer's own socket address (where its tor reaches it)
    # never left it either: not in the bootstrap, nor any other peer, the
    # silent one included.
    onion_own = (os.path.join(world["workdir"], "onion1"),
                 os.path.join(world["workdir"], "onion1.log"))
    local = {"onion1 listening address": ONION_PEER_HOST.encode()}
    others = {src: data for src, data in dict(files, **api).items()
              if not src.startswith(onion_own) and not src.startswith("onion1 ")}
    with open(silent.log_path, "rb") as f:
        others["silent1.log"] = f.read()
    for root, _, names in os.walk(silent.state_dir):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                others[os.path.join(root, name)] = f.read()
    assert any(src.endswith("peers.snapshot") and src.startswith(silent.state_dir)
               for src in others)
    others["bootstrap database while running"] = live_database
    seen = {src: _hits(data, local) for src, data in others.items()}
    assert not {src: hits for src, hits in seen.items() if hits}, seen

    # Sanity: the same scan finds the onion peer where it should be.
    onion_needles = _needles(_peer_id_of(onion), public_key_der(onion.state_dir),
                             world["onion_host"])
    assert {"peer_id", "address"} <= set(_hits(live_database, onion_needles))


def bootstrap_discover(bootstrap):
    import http.client

    conn = http.client.HTTPConnection(bootstrap.host, bootstrap.port, timeout=10)
    try:
        conn.request("GET", "/api/bootstrap/discover?limit=100")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _peer_id_of(peer):
    return hashlib.sha256(public_key_der(peer.state_dir)).hexdigest()
