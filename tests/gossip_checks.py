"""Checks on a running DevNet, shared by tests/integration and tests/chaos.

Everything here polls real peers through their control API (or reads their
logs), with a bounded wait; nothing starts or stops a process.
"""

import re
import time
import uuid

CONVERGE_TIMEOUT = 45.0    # start-up convergence of a fresh network
UPDATE_DEADLINE = 5.0      # "an update reaches all peers within a few seconds"


def open_links(peer):
    links = peer.status()["links"]
    return links["outbound"] + links["inbound"]


def wait_converged(net, timeout=CONVERGE_TIMEOUT, peers=None):
    """Every running peer (or every one of ``peers``) holds every running
    broadcasting peer's record and has an open gossip link (records alone may
    come from the bootstrap); returns the seconds waited."""

    def converged():
        members = list(peers) if peers is not None else net.running_peers()
        ids = {p.peer_id() for p in members if p.broadcast}
        return all(ids <= {x["peer_id"] for x in p.peers() if x["broadcasting"]}
                   and open_links(p) >= 1 for p in members)

    waited = net.wait(converged, timeout, interval=0.2)
    assert waited is not None, "the network did not converge in %s s: %s" % (
        timeout, {p.name: p.status()["table"] for p in (peers or net.running_peers())
                  if p.running()})
    return waited


def has_version(peer, peer_id, version, repo=None):
    """``peer``'s table holds ``peer_id``'s record at ``version`` or later
    (and, if given, with ``repo`` in it)."""
    for entry in peer.peers():
        if entry["peer_id"] == peer_id:
            if entry["version"] < version:
                return False
            return repo is None or repo in [r["name"] for r in entry["repos"]]
    return False


def publish(origin):
    """``origin`` publishes a fresh repo; returns (peer_id, repo name, version)."""
    origin_id = origin.peer_id()
    repo = "repo-" + uuid.uuid4().hex[:12]
    return origin_id, repo, origin.set_repos([{"name": repo}])


def wait_every(net, nodes, ready, timeout, interval=0.1):
    """Poll ``ready(p)`` for each of ``nodes`` (a node once ready is not asked
    again) until all are; returns the ones still not ready when ``timeout``
    ran out, [] if none."""
    pending = list(nodes)

    def everyone():
        pending[:] = [p for p in pending if not ready(p)]
        return not pending

    net.wait(everyone, timeout, interval=interval)
    return pending


def publish_and_measure(origin, watchers, net, deadline=UPDATE_DEADLINE):
    """``origin`` publishes a fresh repo; returns (seconds until every watcher
    holds the new version, repo name, version)."""
    start = time.monotonic()
    origin_id, repo, version = publish(origin)
    pending = wait_every(net, watchers, lambda p: has_version(p, origin_id, version, repo),
                         deadline + 10, interval=0.02)
    elapsed = time.monotonic() - start
    assert not pending, (
        f"{origin.name}'s update (version {version}) did not reach "
        f"{[p.name for p in pending]} in {deadline + 10} s")
    return elapsed, repo, version


_OPEN_OUT = re.compile(r"gossip link (\d+) to ([0-9a-f]{64}) open")
_CLOSED = re.compile(r"gossip link (\d+) closed")


def open_outbound_targets(peer):
    """peer_ids of this peer's open outbound links, from its own log."""
    text = peer.log(since_start=True)
    targets = {m.group(1): m.group(2) for m in _OPEN_OUT.finditer(text)}
    for m in _CLOSED.finditer(text):
        targets.pop(m.group(1), None)
    return set(targets.values())
