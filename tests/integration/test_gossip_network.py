"""A real gossip network on loopback: one `twist bootstrap`, ten broadcasting
`twist peer --broadcast` processes (127.0.0.10 ... 127.0.0.19) and one silent
`twist peer` dialling from 127.0.0.77 (see peernet/devnet.py).

What is checked, against real processes talking TLS WebSockets:

- broadcasting peers find each other through the bootstrap server, which
  registers exactly the broadcasting peers;
- an update (PEER_UPDATE) reaches every peer, the silent one included, within
  a few seconds, also with the bootstrap killed;
- a silent peer's PEER_REQUEST is answered with a verifiable signed record;
- kill -9 of three peers is noticed by their neighbours, and the rest still
  converge;
- a peer restarted from its snapshot rejoins with every bootstrap down;
- PRIVACY: no other node's log, snapshot, API answer or bootstrap database
  holds the silent peer's address, peer_id or public key.

Networks are shared where the tests leave them healthy (module fixtures); the
tests that break a network start their own.  Every wait is bounded, and every
process is stopped by pid (DevNet is a context manager).
"""

import base64
import hashlib
import http.client
import json
import os
import re
import time
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from peernet import constants
from peernet.devnet import DevNet
from peernet.records import verify_signed_record

pytestmark = pytest.mark.slow

N_BROADCASTING = 10
SILENT_HOST = "127.0.0.77"
CONVERGE_TIMEOUT = 45.0    # start-up convergence of a fresh network
UPDATE_DEADLINE = 5.0      # "an update reaches all peers within a few seconds"
NOTICE_TIMEOUT = 15.0      # a kill -9 must be noticed well before heartbeats time out
REJOIN_TIMEOUT = 30.0


# -- helpers -------------------------------------------------------------------------------


def bootstrap_get(bootstrap, path, timeout=5):
    conn = http.client.HTTPConnection(bootstrap.host, bootstrap.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def wait_converged(net, timeout=CONVERGE_TIMEOUT):
    """Every running peer holds every running broadcasting peer's record and
    has an open gossip link (records alone may come from the bootstrap)."""

    def converged():
        return net.converged() and all(open_links(p) >= 1 for p in net.running_peers())

    waited = net.wait(converged, timeout, interval=0.2)
    assert waited is not None, "the network did not converge in %s s: %s" % (
        timeout, {p.name: p.status()["table"] for p in net.running_peers()})
    return waited


def has_version(peer, peer_id, version, repo=None):
    for entry in peer.peers():
        if entry["peer_id"] == peer_id:
            if entry["version"] < version:
                return False
            return repo is None or repo in [r["name"] for r in entry["repos"]]
    return False


def publish_and_measure(origin, watchers, net, deadline=UPDATE_DEADLINE):
    """``origin`` publishes a fresh repo; returns (seconds until every watcher
    holds the new version, repo name, version)."""
    origin_id = origin.peer_id()
    repo = "repo-" + uuid.uuid4().hex[:12]
    start = time.monotonic()
    version = origin.set_repos([{"name": repo}])
    pending = list(watchers)

    def everyone():
        pending[:] = [p for p in pending if not has_version(p, origin_id, version, repo)]
        return not pending

    waited = net.wait(everyone, deadline + 10, interval=0.02)
    elapsed = time.monotonic() - start
    assert waited is not None, (
        f"{origin.name}'s update (version {version}) did not reach "
        f"{[p.name for p in pending]} in {deadline + 10} s")
    return elapsed, repo, version


def open_links(peer):
    links = peer.status()["links"]
    return links["outbound"] + links["inbound"]


_OPEN_OUT = re.compile(r"gossip link (\d+) to ([0-9a-f]{64}) open")
_CLOSED = re.compile(r"gossip link (\d+) closed")


def open_outbound_targets(peer):
    """peer_ids of this peer's open outbound links, from its own log."""
    text = peer.log(since_start=True)
    targets = {m.group(1): m.group(2) for m in _OPEN_OUT.finditer(text)}
    for m in _CLOSED.finditer(text):
        targets.pop(m.group(1), None)
    return set(targets.values())


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A healthy network shared by the tests that leave it healthy."""
    with DevNet(tmp_path_factory.mktemp("gossipnet"), broadcasting=N_BROADCASTING,
                silent=1) as devnet:
        wait_converged(devnet)
        yield devnet


@pytest.fixture(scope="module")
def net_no_bootstrap(tmp_path_factory):
    """A converged network whose only bootstrap server has been killed -9."""
    with DevNet(tmp_path_factory.mktemp("nobootstrap"), broadcasting=N_BROADCASTING,
                silent=1) as devnet:
        wait_converged(devnet)
        devnet.bootstrap.kill9()
        assert not devnet.bootstrap.running()
        yield devnet


# -- 1. discovery through the bootstrap server --------------------------------------------


def test_broadcasting_peers_find_each_other_through_the_bootstrap(net):
    wait_converged(net)
    ids = {p.peer_id() for p in net.broadcasters}
    assert len(ids) == N_BROADCASTING
    silent_id = net.silent[0].peer_id()
    for peer in net.peers:
        table = {e["peer_id"] for e in peer.peers() if e["broadcasting"]}
        own = peer.peer_id()
        assert ids - {own} <= table, f"{peer.name} lacks {ids - {own} - table}"
        assert silent_id not in table
        assert open_links(peer) >= 1, f"{peer.name} has no open gossip link"

    # every broadcasting peer is registered, and nothing else is
    def registered():
        return bootstrap_get(net.bootstrap, "/api/bootstrap/health")[1]["peers"] == N_BROADCASTING

    assert net.wait(registered, 15) is not None
    status, health = bootstrap_get(net.bootstrap, "/api/bootstrap/health")
    assert status == 200 and health["peers"] == N_BROADCASTING, health
    status, found = bootstrap_get(net.bootstrap, "/api/bootstrap/discover?limit=100")
    assert status == 200
    assert {item["record"]["peer_id"] for item in found["peers"]} == ids
    for peer in net.broadcasters:
        assert set(peer.status()["bootstrap"].values()) == {"registered"}, peer.status()
    assert net.silent[0].status()["broadcasting"] is False


# -- 2. an update reaches everyone -----------------------------------------------------------


def test_update_reaches_every_peer_within_seconds(net):
    wait_converged(net)
    origin = net.broadcasters[0]
    watchers = [p for p in net.peers if p is not origin]
    assert net.silent[0] in watchers
    elapsed, repo, version = publish_and_measure(origin, watchers, net)
    print(f"update from {origin.name} reached {len(watchers)} peers in {elapsed:.3f} s")
    assert elapsed < UPDATE_DEADLINE, f"update took {elapsed:.2f} s"
    # a second update from another origin: same result
    origin2 = net.broadcasters[-1]
    elapsed2, _, _ = publish_and_measure(origin2, [p for p in net.peers if p is not origin2], net)
    assert elapsed2 < UPDATE_DEADLINE, f"update took {elapsed2:.2f} s"


# -- 3. a silent peer's PEER_REQUEST ---------------------------------------------------------


def test_silent_peer_finds_a_record_by_peer_request(net):
    wait_converged(net)
    silent = net.silent[0]
    owner = net.broadcasters[3]
    owner_id = owner.peer_id()
    repo = "wanted-" + uuid.uuid4().hex[:12]
    owner.set_repos([{"name": repo}])

    # network_only: the silent peer must ask the network (PEER_REQUEST), not
    # its own table; retry briefly while the owner's update is still spreading
    results = []
    deadline = time.monotonic() + 15
    while not results and time.monotonic() < deadline:
        results = silent.search(repo=repo, network_only=True, timeout=3)
    assert results, f"no answer to a PEER_REQUEST for {repo}"
    records = [verify_signed_record(r) for r in results]  # raises if forged
    assert {rec["peer_id"] for rec in records} == {owner_id}
    record = records[0]
    assert repo in [r["name"] for r in record["repos"]]
    assert record["is_broadcasting"] is True
    assert record["addresses"] == owner.status()["addresses"]
    assert record["addresses"][0].startswith(f"wss://{owner.host}:")

    # by peer_id too
    by_id = silent.search(peer=owner_id, network_only=True, timeout=3)
    assert by_id and verify_signed_record(by_id[0])["peer_id"] == owner_id

    # a repo nobody shares: an empty answer, within the timeout
    start = time.monotonic()
    assert silent.search(repo="nobody-has-" + uuid.uuid4().hex, network_only=True,
                         timeout=2) == []
    assert time.monotonic() - start < 10


# -- 4. the bootstrap dies, gossip goes on ---------------------------------------------------


def test_gossip_goes_on_after_the_bootstrap_is_killed(net_no_bootstrap):
    net = net_no_bootstrap
    assert not net.bootstrap.running()
    with pytest.raises(OSError):
        bootstrap_get(net.bootstrap, "/api/bootstrap/health", timeout=2)
    origin = net.broadcasters[1]
    watchers = [p for p in net.running_peers() if p is not origin]
    assert len(watchers) >= N_BROADCASTING  # the silent peer included
    elapsed, _, _ = publish_and_measure(origin, watchers, net)
    print(f"update without bootstrap reached {len(watchers)} peers in {elapsed:.3f} s")
    assert elapsed < UPDATE_DEADLINE, f"update took {elapsed:.2f} s"


# -- 5. kill -9 of three peers ---------------------------------------------------------------


def test_kill9_of_three_peers_is_noticed_and_the_rest_converge(tmp_path):
    with DevNet(tmp_path, broadcasting=N_BROADCASTING, silent=1) as net:
        wait_converged(net)
        ids = {p.name: p.peer_id() for p in net.peers}
        victims = [net.broadcasters[i] for i in (2, 5, 8)]
        victim_ids = {ids[v.name] for v in victims}
        survivors = [p for p in net.peers if p not in victims]

        # which links touch a victim, from both ends' own logs: the survivor's
        # outbound links to a victim, and the victim's outbound links to it
        victim_out = {v.name: open_outbound_targets(v) for v in victims}
        touching = {}
        for s in survivors:
            out = open_outbound_targets(s) & victim_ids
            inbound = sum(1 for v in victims if ids[s.name] in victim_out[v.name])
            touching[s.name] = (out, len(out) + inbound)
        assert sum(n for _, n in touching.values()) >= len(victims), touching
        before = {s.name: open_links(s) for s in survivors}
        log_mark = {s.name: len(s.log(since_start=True)) for s in survivors}

        for v in victims:
            v.kill9()
        assert not any(v.running() for v in victims)

        def noticed():
            for s in survivors:
                out, n_touch = touching[s.name]
                later = s.log(since_start=True)[log_mark[s.name]:]
                # each outbound link to a victim is seen dropped ...
                if any(f"link to {pid} dropped" not in later for pid in out):
                    return False
                # ... and the open-link count fell by every link that touched
                # a victim (new links opened since then are allowed for)
                opened = len(re.findall(r"gossip link \d+ .*open", later))
                if open_links(s) > before[s.name] - n_touch + opened:
                    return False
            return True

        waited = net.wait(noticed, NOTICE_TIMEOUT, interval=0.2)
        assert waited is not None, (
            f"kill -9 not noticed in {NOTICE_TIMEOUT} s: before {before}, touching "
            f"{touching}, now { {s.name: s.status()['links'] for s in survivors} }")
        after = {s.name: open_links(s) for s in survivors}
        assert sum(after.values()) < sum(before.values()), (before, after)
        live_others = len(survivors) - 1
        for s in survivors:
            assert after[s.name] <= live_others, (s.name, after[s.name])
        print(f"kill -9 of 3 noticed in {waited:.2f} s; links {before} -> {after}")

        # the rest still converge on a later update, and still hold each other
        origin = survivors[0]
        elapsed, _, _ = publish_and_measure(origin, [p for p in survivors if p is not origin],
                                            net)
        assert elapsed < UPDATE_DEADLINE, f"update took {elapsed:.2f} s"
        assert net.converged({ids[p.name] for p in survivors if p.broadcast})


# -- 6. restart from the snapshot with every bootstrap down ----------------------------------


def test_restart_from_snapshot_rejoins_with_every_bootstrap_down(net_no_bootstrap):
    net = net_no_bootstrap
    assert not net.bootstrap.running()
    wait_converged(net)
    peer = net.broadcasters[4]
    peer_id = peer.peer_id()
    others = [p for p in net.running_peers() if p is not peer]
    other_ids = {p.peer_id() for p in others if p.broadcast}
    snapshot = os.path.join(peer.state_dir, "peers.snapshot")
    stopped_at = time.time()

    peer.stop()  # SIGTERM: a clean shutdown writes the snapshot
    assert not peer.running()
    assert os.path.getmtime(snapshot) >= stopped_at - 1
    data = open(snapshot, "rb").read()
    assert all(pid.encode() in data for pid in other_ids), "snapshot lacks some peers"

    peer.start()  # same state directory, the bootstrap still dead
    assert net.bootstrap.running() is False
    assert peer.peer_id() == peer_id
    assert re.search(r"loaded \d+ peer records from the snapshot", peer.log(since_start=True))

    def rejoined():
        return peer.status()["links"]["outbound"] >= 1

    assert net.wait(rejoined, REJOIN_TIMEOUT) is not None, peer.log(since_start=True)[-3000:]
    assert other_ids <= {e["peer_id"] for e in peer.peers() if e["broadcasting"]}

    # it sees a fresh update from another peer ...
    elapsed, _, _ = publish_and_measure(net.broadcasters[0], [peer], net, deadline=10)
    assert elapsed < 10
    # ... and everyone sees its own new record (new address after the restart)
    new_address = peer.status()["addresses"]
    elapsed, _, _ = publish_and_measure(peer, others, net, deadline=10)
    assert elapsed < 10
    for p in others:
        entry = next(e for e in p.peers() if e["peer_id"] == peer_id)
        assert entry["addresses"] == new_address


# -- 7. PRIVACY: nothing about the silent peer anywhere else ---------------------------------


def _tcp_local_addresses(pid):
    """Local IPv4 addresses of established TCP sockets of process ``pid``."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "01" and inode in inodes:  # ESTABLISHED
                raw = bytes.fromhex(local.split(":")[0])[::-1]
                found.add(".".join(str(b) for b in raw))
    return found


def _needles(peer_id, public_key_der, address):
    raw_key = public_key_der[-32:]
    return {
        "address": address.encode(),
        "peer_id": peer_id.encode(),
        "peer_id (upper case)": peer_id.upper().encode(),
        "peer_id (raw digest)": bytes.fromhex(peer_id),
        "public key (DER)": public_key_der,
        "public key (base64 DER)": base64.b64encode(public_key_der),
        "public key (raw)": raw_key,
        "public key (hex)": raw_key.hex().encode(),
        "public key (base64 raw)": base64.b64encode(raw_key).rstrip(b"="),
        "public key (urlsafe base64 DER)": base64.urlsafe_b64encode(public_key_der).rstrip(b"="),
    }


def _hits(data, needles):
    return sorted(name for name, needle in needles.items() if needle in data)


def test_privacy_no_node_holds_the_silent_peers_address_id_or_key(tmp_path):
    workdir = tmp_path / "privacy"
    with DevNet(workdir, broadcasting=N_BROADCASTING, silent=1) as net:
        silent = net.silent[0]
        started = time.monotonic()
        assert silent.host == SILENT_HOST
        wait_converged(net)
        status = silent.status()
        silent_id = status["peer_id"]
        assert status["broadcasting"] is False and status["addresses"] == []
        assert status["links"]["outbound"] >= 1 and status["links"]["inbound"] == 0

        with open(os.path.join(silent.state_dir, "identity", "node.crt"), "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        assert hashlib.sha256(der).hexdigest() == silent_id  # the right key
        silent_needles = _needles(silent_id, der, SILENT_HOST)

        # the silent peer really dials from 127.0.0.77 (so the scan has
        # something to miss), and never listens for gossip
        assert SILENT_HOST in _tcp_local_addresses(silent.pid)

        # it searches and is answered; updates and heartbeats flow
        owner = net.broadcasters[2]
        repo = "secret-" + uuid.uuid4().hex[:10]
        owner.set_repos([{"name": repo}])
        results = []
        deadline = time.monotonic() + 15
        while not results and time.monotonic() < deadline:
            results = silent.search(repo=repo, network_only=True, timeout=3)
        assert results and verify_signed_record(results[0])["peer_id"] == owner.peer_id()
        assert silent.search(peer=net.broadcasters[7].peer_id(), network_only=True, timeout=3)
        assert silent.search(repo="nobody-" + uuid.uuid4().hex, network_only=True,
                             timeout=2) == []   # forwarded through the whole network
        publish_and_measure(net.broadcasters[5], [silent], net, deadline=10)
        sent_before = silent.status()["stats"]["sent"]
        # regular HEARTBEATs: every link has carried at least one by now
        remaining = constants.HEARTBEAT_INTERVAL + 3 - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)
        assert silent.status()["stats"]["sent"] > sent_before
        assert silent.status()["links"]["outbound"] >= 1

        # the other nodes' API answers, while everything is still running
        api = {p.name: {"peers": p.api("GET", "peers"), "status": p.api("GET", "status")}
               for p in net.broadcasters}
        api_text = {name: json.dumps(answer).encode() for name, answer in api.items()}
        first = net.broadcasters[0]
        first_id = first.peer_id()
        # the bootstrap database as it is while every peer is registered
        # (clean shutdown unregisters them, deleting their rows)
        live_database = b""
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(net.bootstrap.db_path + suffix):
                with open(net.bootstrap.db_path + suffix, "rb") as f:
                    live_database += f.read()

        # stop the broadcasting peers cleanly while the silent peer is still
        # linked (each writes its snapshot at shutdown), then the rest
        for peer in net.broadcasters:
            peer.stop()
        silent.stop()
        net.bootstrap.stop()

    # -- scan everything that is not the silent peer's own ----------------------------------
    silent_own = {os.path.join(str(workdir), "silent1"), os.path.join(str(workdir), "silent1.log")}
    files = {}
    for root, dirs, names in os.walk(workdir):
        if any(root == p or root.startswith(p + os.sep) for p in silent_own):
            continue
        for name in names:
            path = os.path.join(root, name)
            if path in silent_own:
                continue
            with open(path, "rb") as f:
                files[os.path.relpath(path, workdir)] = f.read()
    for peer in net.broadcasters:
        assert f"{peer.name}.log" in files
        assert os.path.join(peer.name, "peers.snapshot") in files
    assert "bootstrap.log" in files and "bootstrap.sqlite" in files
    sources = dict(files)
    sources["bootstrap database while running"] = live_database
    sources.update({f"{name} /api/peers + /api/status": text for name, text in api_text.items()})

    leaks = {}
    for source, data in sources.items():
        hits = _hits(data, silent_needles)
        if hits:
            leaks[source] = hits
    assert not leaks, f"the silent peer is visible in other nodes' data: {leaks}"

    # sanity: the same scan DOES find a broadcasting peer in the same places
    first_needles = _needles(first_id, _public_key_der(files, first), first.host)
    for other in net.broadcasters[1:]:
        snap = files[os.path.join(other.name, "peers.snapshot")]
        assert {"address", "peer_id", "public key (base64 DER)"} <= set(
            _hits(snap, first_needles)), other.name
        assert {"address", "peer_id"} <= set(_hits(api_text[other.name], first_needles))
    assert {"address", "peer_id", "public key (base64 DER)"} <= set(
        _hits(live_database, first_needles))
    # logs name peers: broadcasting peers' logs name the peers they dialled
    all_ids = {e["peer_id"] for answer in api.values() for e in answer["peers"]["peers"]}
    logs = b"".join(files[f"{p.name}.log"] for p in net.broadcasters)
    assert sum(pid.encode() in logs for pid in all_ids) >= 2


def _public_key_der(files, peer):
    """DER public key of a broadcasting peer, from its own certificate file."""
    cert = x509.load_pem_x509_certificate(files[os.path.join(peer.name, "identity", "node.crt")])
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
