"""Helpers for the adversarial suite: run the hostile peer process, watch the
honest processes (delivery, crashes, memory, log lines, scores).

Not a test module (no ``test_`` prefix); the tests next to it import it by
name, which pytest's default import mode allows (the directory of the test
file is on ``sys.path``).
"""

import json
import os
import select
import subprocess
import sys
import time
import uuid

from peernet.identity import NodeIdentity

HOSTILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostile_peer.py")

#: An update must reach every honest peer within this, attack or not (the
#: machine is shared and loaded: generous, but bounded).
DELIVERY_DEADLINE = 30.0
#: Stated memory bound: no honest process grows by more than this during
#: one attack (RSS from /proc/PID/status, before vs. after).
RSS_GROWTH_BOUND_KIB = 16 * 1024
#: Signs of a crash or an unhandled error in a process log.
CRASH_MARKERS = ("Traceback", "Unhandled Error", "Unhandled error", "#critical]")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def gossip_address(peer):
    return next(a for a in peer.status()["addresses"] if a.startswith("wss://"))


class Hostile:
    """One hostile_peer.py process; ``events`` collects its JSON lines."""

    def __init__(self, workdir, target, attack, *args):
        self.target = target
        self.events = []
        self._buffer = b""
        self.stderr_path = os.path.join(workdir, f"hostile-{uuid.uuid4().hex[:8]}.err")
        self._stderr = open(self.stderr_path, "wb")
        status = target.status()
        self.proc = subprocess.Popen(
            [sys.executable, HOSTILE, "--target", gossip_address(target),
             "--pin", status["peer_id"], "--attack", attack, *map(str, args)],
            stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL)

    def _read(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return False
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        if not chunk:
            return None
        self._buffer += chunk
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self.events.append(json.loads(line))
        return True

    def wait_event(self, name, timeout):
        """The first event called ``name`` (waits up to ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name:
                    return event
                if event["event"] == "error":
                    raise AssertionError(f"the hostile peer failed:\n{event['error']}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"hostile peer: no {name!r} event in {timeout} s; "
                                     f"events {self.events}; stderr {self.stderr()[-2000:]}")
            if self._read(min(left, 0.5)) is None:
                if not any(e["event"] == name for e in self.events):
                    raise AssertionError(f"hostile peer exited without {name!r}: "
                                         f"{self.events}; stderr {self.stderr()[-2000:]}")

    def result(self, timeout=120):
        result = self.wait_event("result", timeout)
        self.proc.wait(10)
        return result

    def stderr(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stderr.close()
        self.proc.stdout.close()


class Watch:
    """Honest processes observed across one attack: memory, logs, liveness."""

    def __init__(self, net):
        self.net = net
        self.nodes = [p for p in net.peers if p.running()]
        if net.bootstrap is not None and net.bootstrap.running():
            self.nodes.append(net.bootstrap)
        self.rss_before = {n.name: rss_kib(n.pid) for n in self.nodes}
        self.offsets = {n.name: len(n.log(since_start=True)) for n in self.nodes}

    def new_log(self, node):
        return node.log(since_start=True)[self.offsets[node.name]:]

    def assert_healthy(self):
        """Every honest process still runs, logged no crash, and stayed in bound."""
        growth = {}
        for node in self.nodes:
            assert node.running(), f"{node.name} died:\n{node.log()[-3000:]}"
            text = self.new_log(node)
            for marker in CRASH_MARKERS:
                assert marker not in text, f"{node.name} logged {marker!r}:\n{text[-4000:]}"
            growth[node.name] = rss_kib(node.pid) - self.rss_before[node.name]
        worst = max(growth.values())
        assert worst <= RSS_GROWTH_BOUND_KIB, f"RSS grew too much (KiB): {growth}"
        return growth


def has_version(peer, peer_id, version, repo):
    for entry in peer.peers():
        if entry["peer_id"] == peer_id:
            return entry["version"] >= version and repo in [r["name"] for r in entry["repos"]]
    return False


def publish(origin):
    """``origin`` publishes a fresh repo; returns (peer_id, version, repo)."""
    repo = "adv-" + uuid.uuid4().hex[:10]
    version = origin.set_repos([{"name": repo}])
    return origin.peer_id(), version, repo


def assert_delivered(net, update, deadline=DELIVERY_DEADLINE):
    """Every running peer (the silent one too) holds ``update``: 100 %."""
    peer_id, version, repo = update
    watchers = [p for p in net.running_peers() if p.peer_id() != peer_id]
    pending = list(watchers)

    def everyone():
        pending[:] = [p for p in pending if not has_version(p, peer_id, version, repo)]
        return not pending

    waited = net.wait(everyone, deadline, interval=0.1)
    assert waited is not None, (
        f"update {repo} (v{version}) reached {len(watchers) - len(pending)}/{len(watchers)} "
        f"peers in {deadline} s; missing: {[p.name for p in pending]}")
    return waited


def peer_entry(peer, peer_id):
    return next((e for e in peer.peers() if e["peer_id"] == peer_id), None)


def identity_of(peer):
    """The long-term identity of a peer process (read from its state directory:
    the test knows it; the attacker is given only what it names)."""
    return NodeIdentity.load(peer.state_dir)
