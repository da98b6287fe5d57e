"""The Tor part of the deployment guide, followed as an operator would, on the
private Tor network of the ``tor_network`` fixture.

The "system tor" is started from a copy of ``etc/tor/torrc.example`` in which
only these lines differ from the shipped file (``system_torrc`` asserts it):

* ``/run/tor`` and ``/var/lib/tor`` (control socket, cookie, DataDirectory,
  HiddenServiceDir) are moved into the test's temporary directory;
* ``SocksPort 127.0.0.1:9050`` becomes ``127.0.0.1:auto`` (its isolation flags
  kept): port 9050 may be taken on this machine (a real system tor, a parallel
  test run);
* ``Log notice syslog`` becomes a log file, so a failure can show the log;
* the static onion service's targets ``127.0.0.1:8701`` and ``127.0.0.1:6881``
  move to ``STATIC_HOST`` (same ports): fixed ports on the shared 127.0.0.1
  could clash with a parallel test run, a dedicated loopback address cannot;
* the private network's ``client_torrc_lines()`` are appended (TestingTorNetwork
  and its DirAuthority lines), so this tor joins the private network instead of
  the public one.

tor is started with ``--defaults-torrc /dev/null`` (Debian's service defaults
only add User debian-tor, PidFile and RunAsDaemon).

The ``twist peer`` command lines are read from ``etc/tor/README.md`` (and must
appear in ``docs/deployment.md`` too), with only the paths, the bootstrap URL
and the loopback address above substituted, plus ``--state-dir`` (the systemd
unit adds it).  So if the guide's commands break, this test fails.

The bootstrap server is published as an onion service with the two torrc lines
docs/tor.md gives (directory moved, the server's own port instead of 8600), by a
client tor of the network standing for the bootstrap host's system tor.

Checked: the onion-only peer (A, through the control socket) publishes its onion
address, registers it with that onion bootstrap server, and a silent
``--tor`` peer (another "machine": its own tor of the network, attached through
that tor's control socket as the README shows) finds its repo and downloads it
with SHA-256 verified; restarted against the same system tor, the peer keeps its
onion address.  The static onion service (B, the torrc's HiddenServiceDir) is
announced in the record of a peer started with the README's ``--advertise``
line, and the silent peer links to it through Tor and downloads its repo
through the service's BitTorrent port.
"""

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import time

import pytest

from peernet.devnet import BootstrapNode, PeerNode, stop_process
from peernet.records import verify_signed_record
from peernet.tor.testnet import _die_with_parent, log_tail, tor_binary

# Shared helpers of the other integration tests (same directory, no package).
from test_repos_network import MiB, make_repo, wait_job
from test_tor_peer import bootstrap_discover, onion_host, socks_connect, wait_for

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "etc", "tor", "torrc.example")
README = os.path.join(ROOT, "etc", "tor", "README.md")
DEPLOYMENT = os.path.join(ROOT, "docs", "deployment.md")
TOR_GUIDE = os.path.join(ROOT, "docs", "tor.md")
STATIC_HOST = "127.0.0.23"
TOR_START = 90.0        # the system tor reaching "Bootstrapped 100%"
PEER_START = 120.0      # an onion peer: attach, publish, first descriptor upload
LINK_TIMEOUT = 120.0    # first gossip link through Tor (onion rendezvous included)
HOSTNAME_CMD = "$(sudo cat /var/lib/tor/peernet/hostname)"


# -- the guide ---------------------------------------------------------------------------


def guide_commands(path):
    """Every ``twist peer ...`` command of the sh code blocks of a markdown file
    (continuation lines joined)."""
    with open(path) as f:
        text = f.read()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(line.split())
            if line.startswith("twist peer "):
                commands.append(line)
    return commands


def the_command(commands, *must):
    def has(c, m):  # an option is a whole word; anything else a substring
        return m in c.split() if m.startswith("--") else m in c
    found = [c for c in commands if all(has(c, m) for m in must)]
    assert len(found) == 1, (must, commands)
    return found[0]


def as_run(command, state_dir, substitutions):
    """The guide's command with ``substitutions`` (each must occur) applied, as
    argv after ``twist peer``, with --state-dir in front."""
    for old, new in substitutions:
        assert old in command, (old, command)
        command = command.replace(old, new)
    words = shlex.split(command)
    assert words[:2] == ["twist", "peer"], words
    return ["--state-dir", state_dir] + words[2:]


def system_torrc(base, network_lines):
    """The shipped example with the changes the module docstring lists; returns
    (torrc path, run dir, lib dir)."""
    run, lib = os.path.join(base, "run"), os.path.join(base, "lib")
    os.makedirs(run)
    os.makedirs(lib, mode=0o700)
    with open(EXAMPLE) as f:
        shipped = f.read()
    text = shipped.replace("/run/tor", run).replace("/var/lib/tor", lib)
    changes = [
        ("SocksPort 127.0.0.1:9050 ", "SocksPort 127.0.0.1:auto "),   # flags kept
        ("Log notice syslog", f"Log notice file {os.path.join(base, 'tor.log')}"),
        ("HiddenServicePort 8701 127.0.0.1:8701", f"HiddenServicePort 8701 {STATIC_HOST}:8701"),
        ("HiddenServicePort 6881 127.0.0.1:6881", f"HiddenServicePort 6881 {STATIC_HOST}:6881"),
    ]
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new)
    text += "\n## private test network\n" + "".join(line + "\n" for line in network_lines)
    # Exactly those lines differ: every other setting is the shipped one.
    def settings(t):
        return [line for line in t.splitlines() if line and not line.startswith("#")]
    moved = {line.replace("/run/tor", run).replace("/var/lib/tor", lib)
             for line in settings(shipped)}
    differing = set(settings(text)) - moved
    changed = {line for line in settings(text) if any(new in line for _, new in changes)}
    assert len(changed) == len(changes), changed
    assert differing == changed | set(network_lines), differing
    path = os.path.join(base, "torrc")
    with open(path, "w") as f:
        f.write(text)
    return path, run, lib


class SystemTor:
    """The operator's tor: ``tor -f torrc``, stopped by pid."""

    def __init__(self, torrc, log_path):
        self.torrc, self.log_path = torrc, log_path
        self.proc = subprocess.Popen(
            [tor_binary(), "-f", torrc, "--defaults-torrc", os.devnull],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, MALLOC_ARENA_MAX="1"), preexec_fn=_die_with_parent)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_ready(self, control, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("the system tor exited:\n" + log_tail(self.log_path))
            if os.path.exists(control) and "Bootstrapped 100%" in self.log():
                return
            time.sleep(0.2)
        raise AssertionError("the system tor did not bootstrap:\n" + log_tail(self.log_path))

    def stop(self):
        stop_process(self.proc)


def bootstrap_onion_lines(base, port):
    """docs/tor.md's two torrc lines that publish a bootstrap server as an onion
    service, with the directory moved into ``base`` and the server's port (the
    guide's 8600 is fixed; a test server takes a free one).  Returns the lines
    and the path of the hostname file tor writes."""
    with open(TOR_GUIDE) as f:
        [block] = re.findall(r"```\n(HiddenServiceDir /var/lib/tor/peernet-bootstrap/\n.*?)```",
                             f.read(), re.S)
    lib = os.path.join(base, "boot-lib")
    os.makedirs(lib, mode=0o700)
    assert "127.0.0.1:8600" in block, block
    block = block.replace("/var/lib/tor", lib).replace("127.0.0.1:8600", f"127.0.0.1:{port}")
    return block.strip().splitlines(), os.path.join(lib, "peernet-bootstrap", "hostname")


def broadcasting(node):
    """PeerNode.start waits for the record only for nodes it gave --broadcast
    itself; these get it from the guide's command line."""
    node.broadcast = True
    return node


def start_static_peer(w):
    """B: the README's --advertise command, announcing the hostname tor wrote."""
    with open(os.path.join(w["lib"], "peernet", "hostname")) as f:
        hostname = f.read().strip()
    assert re.fullmatch(r"[a-z2-7]{56}\.onion", hostname)
    command = the_command(w["readme"], "--advertise", HOSTNAME_CMD)
    argv = as_run(command, os.path.join(w["workdir"], "static-b"), [
        (HOSTNAME_CMD, hostname),     # what the shell's $(sudo cat ...) gives
        ("interface=127.0.0.1", f"interface={STATIC_HOST}"),
        ("https://bootstrap.example.org", w["bootstrap"].url),   # B itself has no Tor
    ]) + ["--share", f"notes={os.path.join(w['base'], 'srv', 'notes')}"]
    static = broadcasting(PeerNode(w["workdir"], "static-b", broadcast=False, host=None,
                                   extra=argv))
    w["nodes"].append(static)
    static.start()
    w.update(static=static, static_hostname=hostname)


# -- the world ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployment(tor_network, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("tordeploy"))
    workdir = os.path.join(base, "net")
    os.makedirs(workdir)
    films = os.path.join(base, "srv", "films")
    notes = os.path.join(base, "srv", "notes")
    expected = {"films": make_repo(films, "deploy-films", [2 * MiB, 1 * MiB, 321]),
                "notes": make_repo(notes, "deploy-notes", [512 * 1024, 99])}
    readme = guide_commands(README)
    guide = guide_commands(DEPLOYMENT)
    torrc, run, lib = system_torrc(base, tor_network.client_torrc_lines())
    control = os.path.join(run, "control")
    nodes, tors, clients = [], [], []
    w = {"base": base, "workdir": workdir, "expected": expected, "readme": readme,
         "guide": guide, "control": control, "lib": lib, "nodes": nodes, "torrc": torrc}
    try:
        system = SystemTor(torrc, os.path.join(base, "tor.log"))
        tors.append(system)
        # Meanwhile: the bootstrap server's tor and the visitor's tor (another
        # machine's system tor, reached through its control socket too).
        visitor_control = os.path.join(base, "visitor.control")
        bootstrap = BootstrapNode(workdir).start()
        nodes.append(bootstrap)
        boot_lines, boot_hostname = bootstrap_onion_lines(base, bootstrap.port)
        boot_tor = tor_network.start_client(f"deploy-boot-{os.getpid()}", wait=False,
                                            extra_lines=boot_lines)
        clients.append(boot_tor)
        visitor_tor = tor_network.start_client(
            f"deploy-visitor-{os.getpid()}", wait=False,
            extra_lines=[f"ControlSocket {visitor_control}"])
        clients.append(visitor_tor)
        system.wait_ready(control, TOR_START)
        boot_tor.wait_ready(TOR_START)
        visitor_tor.wait_ready(TOR_START)
        with open(boot_hostname) as f:
            boot_url = "http://" + f.read().strip()    # "http://$(sudo cat .../hostname)"
        assert re.fullmatch(r"http://[a-z2-7]{56}\.onion", boot_url), boot_url
        w.update(system=system, bootstrap=bootstrap, boot_url=boot_url,
                 fresh_socks=("127.0.0.1", boot_tor.socks_port),
                 visitor_control=visitor_control)
        # B first: its static service is published while A's test runs, so the
        # silent peer finds both records at its first discover.
        start_static_peer(w)
        yield w
    finally:
        for node in reversed(nodes):
            node.stop()
        for tor in tors:
            tor.stop()
        for client in clients:
            client.stop()


def start_onion_peer(w):
    """A: the README's onion-only command, through the system tor's control socket."""
    command = the_command(w["readme"], "--onion-only", "--tor-control")
    assert command in w["guide"], "docs/deployment.md shows another onion command"
    argv = as_run(command, os.path.join(w["workdir"], "onion-a"), [
        ("unix:/run/tor/control", f"unix:{w['control']}"),
        ("films=/srv/films", f"films={os.path.join(w['base'], 'srv', 'films')}"),
        ("https://bootstrap.example.org", w["boot_url"]),
    ])
    peer = w.get("onion") or broadcasting(PeerNode(
        w["workdir"], "onion-a", broadcast=False, host=None, extra=argv,
        start_timeout=PEER_START))
    if "onion" not in w:
        w["nodes"].append(peer)
        w["onion"] = peer
    peer.start()
    host = wait_for(lambda: onion_host(peer), PEER_START, "the onion peer's record")
    wait_for(lambda: peer.status()["bootstrap"].get(w["boot_url"]) == "registered", PEER_START,
             "the onion peer registered with the onion bootstrap")
    return peer, host


def start_silent_peer(w):
    command = the_command(w["readme"], "--tor", "--tor-control")
    assert command in w["guide"], "docs/deployment.md shows another silent --tor command"
    argv = as_run(command, os.path.join(w["workdir"], "silent"), [
        ("unix:/run/tor/control", f"unix:{w['visitor_control']}"),
        ("https://bootstrap.example.org", w["boot_url"]),
    ])
    silent = PeerNode(w["workdir"], "silent", broadcast=False, host=None, extra=argv,
                      start_timeout=60)
    w["nodes"].append(silent)
    silent.start()
    w["silent"] = silent
    return silent


def download(silent, repo, dest, expected):
    job = silent.api("POST", "get", {"repo": repo, "dest": dest})
    job = wait_job(silent, job["id"], ("done", "failed"), 120)
    assert job["state"] == "done", job
    assert {f["path"]: f["sha256"] for f in job["files"]} == expected
    for rel, digest in expected.items():
        with open(os.path.join(dest, repo, rel), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest


# -- tests -------------------------------------------------------------------------------


def test_the_guide_shows_the_commands_this_test_runs():
    """docs/deployment.md and etc/tor/README.md agree on the Tor command lines."""
    readme, guide = guide_commands(README), guide_commands(DEPLOYMENT)
    for must in (("--onion-only", "--tor-control"), ("--tor", "--tor-control"),
                 ("--advertise", HOSTNAME_CMD)):
        assert the_command(readme, *must) in guide, must


def test_onion_peer_through_the_system_tor_control_socket(deployment):
    w = deployment
    t0 = time.monotonic()
    onion, host = start_onion_peer(w)
    started = time.monotonic() - t0
    onion_id = onion.peer_id()
    addresses = onion.status()["addresses"]
    assert sorted(addresses) == sorted([f"wss://{host}.onion:8701/gossip",
                                        f"bittorrent://{host}.onion:6881"]), addresses
    assert f"using the tor at unix:{w['control']}" in onion.log()
    # The service is the peer's (ADD_ONION through the socket), not the torrc's.
    with open(os.path.join(w["lib"], "peernet", "hostname")) as f:
        assert f.read().strip() != f"{host}.onion"
    # The bootstrap hands out the onion record.
    assert f"{host}.onion" in json.dumps(bootstrap_discover(w["bootstrap"]))

    silent = start_silent_peer(w)
    wait_for(lambda: onion_id in silent.status()["outbound_peers"], LINK_TIMEOUT,
             "a gossip link from the silent peer to the onion peer")
    found = wait_for(lambda: silent.search(repo="films", network_only=True, timeout=10),
                     60, "an answer to the PEER_REQUEST for films")
    assert {verify_signed_record(r)["peer_id"] for r in found} == {onion_id}
    download(silent, "films", os.path.join(w["base"], "downloads"), w["expected"]["films"])
    # The silent peer stays silent: the bootstrap never learns it.
    silent_id = silent.peer_id()
    assert silent_id not in json.dumps(bootstrap_discover(w["bootstrap"]))
    for suffix in ("", "-wal"):
        if os.path.exists(w["bootstrap"].db_path + suffix):
            with open(w["bootstrap"].db_path + suffix, "rb") as f:
                assert silent_id.encode() not in f.read()
    print(f"\nonion peer on the system tor: start to registered {started:.1f} s")


def test_restarted_onion_peer_keeps_its_address_on_the_same_system_tor(deployment):
    w = deployment
    if "onion" not in w:
        pytest.fail("runs after test_onion_peer_through_the_system_tor_control_socket",
                    pytrace=False)
    onion = w["onion"]
    before = onion_host(onion)
    onion.stop()
    assert w["system"].proc.poll() is None   # the system tor stays up
    _, after = start_onion_peer(w)
    assert after == before
    # Reachable again, from a tor that never visited it (the bootstrap's).
    wait_for(lambda: socks_connect(w["fresh_socks"], f"{after}.onion", 8701), LINK_TIMEOUT,
             "a connection to the restarted onion service", interval=1)


def test_static_onion_service_from_the_torrc(deployment):
    """B: tor keeps the service (HiddenServiceDir); the peer (started with the
    README's command line, see start_static_peer) announces the hostname tor wrote."""
    w = deployment
    static, hostname = w["static"], w["static_hostname"]
    static_id = static.peer_id()
    assert sorted(static.status()["addresses"]) == sorted(
        [f"wss://{hostname}:8701/gossip", f"bittorrent://{hostname}:6881"])
    wait_for(lambda: static.status()["bootstrap"].get(w["bootstrap"].url) == "registered", 30,
             "the static onion peer registered")
    assert hostname in json.dumps(bootstrap_discover(w["bootstrap"]))

    t0 = time.monotonic()
    silent = w.get("silent") or start_silent_peer(w)
    wait_for(lambda: static_id in silent.status()["outbound_peers"], LINK_TIMEOUT,
             "a gossip link from the silent peer to the static onion service")
    linked = time.monotonic() - t0
    found = wait_for(lambda: silent.search(repo="notes", network_only=True, timeout=10),
                     60, "an answer to the PEER_REQUEST for notes")
    assert {verify_signed_record(r)["peer_id"] for r in found} == {static_id}
    # BitTorrent through the torrc's second HiddenServicePort (6881).
    download(silent, "notes", os.path.join(w["base"], "downloads-b"), w["expected"]["notes"])
    print(f"\nstatic onion service: linked after {linked:.1f} s, downloaded after "
          f"{time.monotonic() - t0:.1f} s")


def test_peer_unit_sandbox_reaches_the_system_tor(deployment, tmp_path):
    """The peer unit's ExecStart, with the onion options file line of
    docs/deployment.md, run under the unit's RestrictAddressFamilies= and
    SystemCallFilter= (seccomp, as in test_systemd_units.py): through the
    control socket it publishes its onion service and registers with the onion
    bootstrap; on SIGTERM it unregisters.  (SupplementaryGroups= of the drop-in
    needs a real systemd; test_systemd_units.py checks the drop-in.)"""
    from test_systemd_units import exec_start, log_match, start, state_dir_of, stop

    w = deployment
    with open(DEPLOYMENT) as f:
        [line] = re.findall(r"^PEERNET_PEER_ARGS=.*--onion-only.*$", f.read(), re.M)
    line = line.replace("unix:/run/tor/control", f"unix:{w['control']}")
    assert "https://bootstrap.example.org" in line
    line = line.replace("https://bootstrap.example.org", w["boot_url"])
    name = "peernet-peer.service"
    argv, keys = exec_start(name, tmp_path, [line])
    workdir = state_dir_of(name, tmp_path)
    log_path = tmp_path / "unit.log"
    proc = start(argv, workdir, log_path, keys, name, tmp_path)
    try:
        log_match(log_path, re.escape(f"using the tor at unix:{w['control']}"), proc, PEER_START)
        log_match(log_path, re.escape(f"registered with {w['boot_url']}"), proc, PEER_START)
        with open(os.path.join(workdir, "onion.key")) as f:
            assert f.read().strip()
        proc.send_signal(signal.SIGTERM)
        proc.wait(int(keys["TimeoutStopSec"]))
        assert proc.returncode in (0, -signal.SIGTERM), log_path.read_text()[-3000:]
        assert f"unregistered from {w['boot_url']}" in log_path.read_text()
    finally:
        stop(proc)
