"""A real gossip network on loopback: one `twist bootstrap`, ten broadcasting
`twist peer --broadcast` processes (127.0.0.10 ... 127.0.0.19) and one silent
`twist peer` dialling from 127.0.0.77 (see peernet/devnet.py).

What is checked, against real processes talking TLS WebSockets:

- broadcasting peers find each other through the bootstrap server, which
  registers exactly the broadcasting peers;
- an update (PEER_UPDATE) reaches every peer, the silent one included, within
  a few seconds;
- a silent peer's PEER_REQUEST is answered with a verifiable signed record;
- PRIVACY: no other node's log, snapshot, API answer or bootstrap database
  holds the silent peer's address, peer_id or public key.

Failures (bootstrap killed, kill -9 of peers, restart from the snapshot with
every bootstrap down, partitions, clock skew) are the chaos suite's, in
tests/chaos/ (docs/chaos.md).  The network here is shared by the tests that
leave it healthy (a module fixture); the privacy test starts its own.  Every
wait is bounded, and every process is stopped by pid (DevNet is a context
manager).
"""

import base64
import hashlib
import http.client
import json
import os
import time
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from peernet import constants
from peernet.devnet import DevNet
from peernet.records import verify_signed_record
from gossip_checks import open_links, publish_and_measure, wait_converged, UPDATE_DEADLINE

pytestmark = pytest.mark.slow

N_BROADCASTING = 10
SILENT_HOST = "127.0.0.77"


# -- helpers -------------------------------------------------------------------------------


def bootstrap_get(bootstrap, path, timeout=5):
    conn = http.client.HTTPConnection(bootstrap.host, bootstrap.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A healthy network shared by the tests that leave it healthy."""
    with DevNet(tmp_path_factory.mktemp("gossipnet"), broadcasting=N_BROADCASTING,
                silent=1) as devnet:
        wait_converged(devnet)
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


# -- 4. PRIVACY: nothing about the silent peer anywhere else ---------------------------------


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
