#!/usr/bin/env python3
"""Serf reference for the gossip-convergence benchmark.

Starts N Serf agents (Debian package ``serf``) on 127.0.0.1 with distinct
ports, joins them into one cluster, waits (bounded) until every agent sees N
alive members, then runs R rounds: one agent (round-robin) sends a user event
with coalescing off, and the time from sending until *every* agent has
received it is measured.

Reception is captured in one of two ways (``capture=``):

* ``"rpc"`` (default): one RPC ``stream`` connection per agent (filter
  ``user:<event name>``); the arrival time is taken with ``time.monotonic_ns``
  in this process when the stream message is read, the send time with the same
  clock just before the RPC ``event`` command is written.
* ``"handler"``: an event-handler script per agent that appends
  ``<date +%s%N> <payload>`` to a per-agent file; the send time is then taken
  with ``time.time_ns`` (wall clock on both sides).  It includes a fork+exec of
  ``/bin/sh`` per delivery, so it reads a few ms slower on a busy 2-core box.

A round in which some agent has not received the event within ``timeout_s``
(default 10 s) is counted as a *miss* (and the missing agents listed); it is
never silently dropped.  Events that arrive after their round's timeout but
before the cluster is stopped are reported as ``late_deliveries``.

Message counters: every agent sends go-metrics to a UDP statsd listener in
this process; the number of Serf messages received by all agents from the
first event until 3 s after the last one (counter ``serf.msgs.received``, one
sample per user/join/leave/query message handed to Serf by memberlist; in a
settled cluster these are the benchmark's user events) gives the messages and
the duplicates per delivery::

    duplicates_per_delivery = (serf messages received - deliveries) / deliveries

The sender's own delivery is local (no message), so with no loss this is the
number of copies received beyond the first, per delivery.  Each agent
re-gossips an event RetransmitMult (4) x ceil(log10(N+1)) times, so this is
about 7 for 10..99 agents.  The per-round ``msgs`` figure is approximate: one
round's retransmissions can spill into the next round's window.

Importable::

    from serf_reference import run_serf
    figures = run_serf(30, 20)      # dict, see run_serf.__doc__

Runnable::

    python benchmarks/serf_reference.py            # 30 agents, 20 rounds
    python benchmarks/serf_reference.py --quick    # 10 agents, 5 rounds, < 60 s
    python benchmarks/serf_reference.py --peers 100 --rounds 40 --json out.json

Only the Python standard library and ``msgpack`` (in the project venv) are
needed.  Every agent is started in its own session, in a temporary state
directory, and stopped by pid (SIGTERM, then SIGKILL) in a ``finally`` (also
on Ctrl-C / SIGTERM).  Every wait is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

try:
    import msgpack
except ImportError:  # pragma: no cover - the venv has it
    msgpack = None

EVENT_NAME = "convbench"
MAX_AGENTS = 100
DEFAULT_TIMEOUT_S = 10.0


class SerfUnavailable(RuntimeError):
    """The serf binary (Debian package ``serf``) or msgpack is missing."""


# --------------------------------------------------------------------------
# statistics shared with the peernet half (same definition on both sides)
# --------------------------------------------------------------------------

def percentile(values, q):
    """Linear-interpolation percentile (numpy's default), q in [0, 100].

    Returns None for an empty sequence.
    """
    xs = sorted(values)
    if not xs:
        return None
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * (q / 100.0)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    frac = pos - lo
    return float(xs[lo] + (xs[hi] - xs[lo]) * frac)


def summarize_rounds(t100s):
    """median/p95/p99/mean/max over the completed rounds' time-to-100 %."""
    done = [t for t in t100s if t is not None]
    return {
        "median_s": percentile(done, 50),
        "p95_s": percentile(done, 95),
        "p99_s": percentile(done, 99),
        "mean_s": statistics.fmean(done) if done else None,
        "min_s": min(done) if done else None,
        "max_s": max(done) if done else None,
    }


# --------------------------------------------------------------------------
# Serf RPC (msgpack over TCP): handshake, members, event, stream
# --------------------------------------------------------------------------

def _unpacker():
    return msgpack.Unpacker(raw=False, unicode_errors="surrogateescape",
                            strict_map_key=False)


class SerfRPC:
    """Minimal blocking Serf RPC client for request/response commands."""

    def __init__(self, host, port, timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.unpacker = _unpacker()
        self.seq = 0
        self._request("handshake", {"Version": 1})

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _send(self, command, body):
        seq = self.seq
        self.seq += 1
        data = msgpack.packb({"Command": command, "Seq": seq}, use_bin_type=True)
        if body is not None:
            data += msgpack.packb(body, use_bin_type=True)
        self.sock.sendall(data)
        return seq

    def _read_obj(self, deadline):
        while True:
            for obj in self.unpacker:
                return obj
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("serf rpc: no answer")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("serf rpc: connection closed")
            self.unpacker.feed(chunk)

    def _request(self, command, body, has_body=False, timeout=5.0):
        seq = self._send(command, body)
        deadline = time.monotonic() + timeout
        header = self._read_obj(deadline)
        if not isinstance(header, dict) or header.get("Seq") != seq:
            raise RuntimeError(f"serf rpc {command}: unexpected header {header!r}")
        if header.get("Error"):
            raise RuntimeError(f"serf rpc {command}: {header['Error']}")
        return self._read_obj(deadline) if has_body else None

    def members(self):
        # `members` takes no request body (sending {} makes it answer twice).
        return self._request("members", None, has_body=True)["Members"]

    def event(self, name, payload, coalesce=False):
        """Send a user event; returns time.monotonic_ns() and time.time_ns()
        taken just before the request is written."""
        seq = self.seq
        self.seq += 1
        data = msgpack.packb({"Command": "event", "Seq": seq}, use_bin_type=True)
        data += msgpack.packb({"Name": name, "Payload": payload,
                               "Coalesce": bool(coalesce)}, use_bin_type=True)
        t_mono, t_wall = time.monotonic_ns(), time.time_ns()
        self.sock.sendall(data)
        header = self._read_obj(time.monotonic() + 5.0)
        if header.get("Seq") != seq or header.get("Error"):
            raise RuntimeError(f"serf rpc event: {header!r}")
        return t_mono, t_wall


class StreamReader(threading.Thread):
    """RPC `stream` of user:<name> events on one agent; records arrivals."""

    def __init__(self, index, host, port, name, sink, lock, cond):
        super().__init__(name=f"serf-stream-{index}", daemon=True)
        self.index = index
        self.sink = sink    # payload(str) -> {agent index: monotonic_ns}
        self.lock = lock
        self.cond = cond
        self.stopping = False
        self.error = None
        self.ready = threading.Event()
        self.sock = socket.create_connection((host, port), timeout=5.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.name_filter = f"user:{name}"

    def run(self):
        unp = _unpacker()
        try:
            self.sock.sendall(msgpack.packb({"Command": "handshake", "Seq": 0})
                              + msgpack.packb({"Version": 1}))
            self.sock.sendall(msgpack.packb({"Command": "stream", "Seq": 1})
                              + msgpack.packb({"Type": self.name_filter}))
            self.sock.settimeout(1.0)
            acks = 0
            while not self.stopping:
                try:
                    chunk = self.sock.recv(65536)
                except socket.timeout:
                    continue
                now = time.monotonic_ns()
                if not chunk:
                    break
                unp.feed(chunk)
                for obj in unp:
                    if not isinstance(obj, dict):
                        continue
                    if "Event" in obj:
                        if obj.get("Event") != "user":
                            continue
                        payload = obj.get("Payload")
                        if isinstance(payload, bytes):
                            payload = payload.decode("utf-8", "replace")
                        with self.cond:
                            self.sink.setdefault(payload, {}).setdefault(self.index, now)
                            self.cond.notify_all()
                    elif "Seq" in obj:
                        if obj.get("Error"):
                            raise RuntimeError(f"stream: {obj['Error']}")
                        if obj.get("Seq") == 1:
                            acks += 1
                            self.ready.set()
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            if not self.stopping:
                self.error = repr(exc)
        finally:
            self.ready.set()

    def stop(self):
        self.stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


class StatsdListener(threading.Thread):
    """UDP statsd sink: sums samples per metric name (hostname part dropped)."""

    def __init__(self):
        super().__init__(name="serf-statsd", daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.counts = {}   # name -> number of samples
        self.sums = {}     # name -> sum of values
        self.stopping = False

    def run(self):
        while not self.stopping:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            for line in data.decode("utf-8", "replace").splitlines():
                name, _, rest = line.partition(":")
                val, _, _kind = rest.partition("|")
                try:
                    v = float(val)
                except ValueError:
                    continue
                key = _metric_key(name)
                with self.lock:
                    self.counts[key] = self.counts.get(key, 0) + 1
                    self.sums[key] = self.sums.get(key, 0.0) + v

    def snapshot(self):
        with self.lock:
            return dict(self.counts), dict(self.sums)

    def stop(self):
        self.stopping = True
        try:
            self.sock.close()
        except OSError:
            pass


def _metric_key(name):
    # go-metrics keys look like "serf-agent.<hostname>.serf.msgs.received" or
    # "serf-agent.serf.msgs.received": keep from the first known subsystem on.
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p in ("serf", "memberlist", "agent", "runtime"):
            return ".".join(parts[i:])
    return name


# --------------------------------------------------------------------------
# the cluster
# --------------------------------------------------------------------------

def _free_ports(count):
    """`count` distinct ports free for both TCP and UDP on 127.0.0.1."""
    held, ports = [], []
    tries = 0
    while len(ports) < count and tries < count * 20:
        tries += 1
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            t.close()
            u.close()
            continue
        held += [t, u]
        ports.append(port)
    for s in held:
        s.close()
    if len(ports) < count:
        raise RuntimeError("could not find enough free ports")
    return ports


def serf_version(serf_bin=None):
    serf_bin = serf_bin or shutil.which("serf")
    info = {"binary": serf_bin, "serf_version": None, "debian_package": None}
    if not serf_bin:
        return info
    try:
        out = subprocess.run([serf_bin, "version"], capture_output=True,
                             text=True, timeout=10).stdout
        info["serf_version"] = out.splitlines()[0].strip() if out else None
    except (OSError, subprocess.TimeoutExpired):
        pass
    if shutil.which("dpkg-query"):
        try:
            out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "serf"],
                                 capture_output=True, text=True, timeout=10)
            if out.returncode == 0:
                info["debian_package"] = out.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return info


HANDLER_SH = """#!/bin/sh
# Serf user-event handler for the convergence benchmark.
t=$(date +%s%N)
p=$(cat)
echo "$t $p" >> "{dir}/recv-$SERF_SELF_NAME.log"
"""


class SerfCluster:
    """N serf agents on 127.0.0.1; use as a context manager (stops them)."""

    def __init__(self, n, profile="lan", capture="rpc", statsd_port=None,
                 serf_bin=None, log_level="warn", workdir=None):
        if not 1 <= n <= MAX_AGENTS:
            raise ValueError(f"n must be 1..{MAX_AGENTS}")
        self.serf_bin = serf_bin or shutil.which("serf")
        if not self.serf_bin:
            raise SerfUnavailable("serf not found: apt-get install -y serf")
        self.n = n
        self.profile = profile
        self.capture = capture
        self.statsd_port = statsd_port
        self.log_level = log_level
        self._own_tmp = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="serf-bench-"))
        self.procs = []
        self.names = [f"bench-{i:03d}" for i in range(n)]
        ports = _free_ports(2 * n)
        self.bind_ports = ports[:n]
        self.rpc_ports = ports[n:]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def _config(self, i):
        cfg = {
            "node_name": self.names[i],
            "bind": f"127.0.0.1:{self.bind_ports[i]}",
            "advertise": f"127.0.0.1:{self.bind_ports[i]}",
            "rpc_addr": f"127.0.0.1:{self.rpc_ports[i]}",
            "log_level": self.log_level,
            "profile": self.profile,
            "retry_interval": "1s",
        }
        if i > 0:
            # join through agent 0 and, for robustness, the previous agent
            cfg["retry_join"] = sorted({f"127.0.0.1:{self.bind_ports[0]}",
                                        f"127.0.0.1:{self.bind_ports[i - 1]}"})
        if self.statsd_port:
            cfg["statsd_addr"] = f"127.0.0.1:{self.statsd_port}"
        if self.capture == "handler":
            cfg["event_handlers"] = [f"user:{EVENT_NAME}={self.dir / 'handler.sh'}"]
        return cfg

    def start(self, ready_timeout=30.0):
        if self.capture == "handler":
            h = self.dir / "handler.sh"
            h.write_text(HANDLER_SH.replace("{dir}", str(self.dir)))
            h.chmod(0o755)
        for i in range(self.n):
            cfg_path = self.dir / f"agent-{i:03d}.json"
            cfg_path.write_text(json.dumps(self._config(i), indent=1))
            log = open(self.dir / f"agent-{i:03d}.log", "wb")
            try:
                p = subprocess.Popen([self.serf_bin, "agent", f"-config-file={cfg_path}"],
                                     stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=self.dir)
            finally:
                log.close()
            self.procs.append(p)
            if i == 0:
                self._wait_rpc(0, ready_timeout)
        for i in range(1, self.n):
            self._wait_rpc(i, ready_timeout)

    def _wait_rpc(self, i, timeout):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.procs[i].poll() is not None:
                raise RuntimeError(f"agent {i} exited with {self.procs[i].returncode}: "
                                   + self.log_tail(i))
            try:
                SerfRPC("127.0.0.1", self.rpc_ports[i], timeout=1.0).close()
                return
            except (OSError, RuntimeError, TimeoutError) as exc:
                last = exc
                time.sleep(0.05)
        raise TimeoutError(f"agent {i} RPC not ready after {timeout}s: {last!r}")

    def log_tail(self, i, lines=5):
        try:
            text = (self.dir / f"agent-{i:03d}.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def rpc(self, i, timeout=5.0):
        return SerfRPC("127.0.0.1", self.rpc_ports[i], timeout=timeout)

    def wait_members(self, timeout):
        """Until every agent sees n alive members; returns seconds taken."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        pending = set(range(self.n))
        clients = {}
        try:
            while pending and time.monotonic() < deadline:
                for i in sorted(pending):
                    if self.procs[i].poll() is not None:
                        raise RuntimeError(f"agent {i} died: {self.log_tail(i)}")
                    try:
                        c = clients.get(i) or clients.setdefault(i, self.rpc(i))
                        alive = sum(1 for m in c.members() if m.get("Status") == "alive")
                    except (OSError, RuntimeError, TimeoutError):
                        clients.pop(i, None)
                        continue
                    if alive >= self.n:
                        pending.discard(i)
                if pending:
                    time.sleep(0.1)
        finally:
            for c in clients.values():
                c.close()
        if pending:
            raise TimeoutError(f"{len(pending)} agents do not see {self.n} alive members "
                               f"after {timeout}s")
        return time.monotonic() - t0

    def stop(self, grace=5.0):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)   # its own session: pgid == pid
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + grace
        for p in self.procs:
            left = max(0.0, deadline - time.monotonic())
            try:
                p.wait(timeout=left)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    p.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    pass
        self.procs = []
        if self._own_tmp:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# the measurement
# --------------------------------------------------------------------------

def _read_handler_files(directory, names):
    """payload -> {agent index: wall ns} from the handler files."""
    out = {}
    idx = {name: i for i, name in enumerate(names)}
    for name in names:
        f = Path(directory) / f"recv-{name}.log"
        try:
            lines = f.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            t, _, payload = line.partition(" ")
            try:
                out.setdefault(payload.strip(), {}).setdefault(idx[name], int(t))
            except ValueError:
                continue
    return out


def run_serf(n=30, rounds=20, *, timeout_s=DEFAULT_TIMEOUT_S, gap_s=0.5,
             profile="lan", capture="rpc", counters=True, join_timeout_s=None,
             settle_s=1.0, log=None):
    """Run the Serf reference and return its figures as a dict.

    Keys (times in seconds; ``None`` when nothing was measured):

    * ``tool`` ("serf"), ``version`` (binary / Debian package), ``n``,
      ``rounds``, ``capture``, ``profile``, ``timeout_s``
    * ``median_s``, ``p95_s``, ``p99_s``, ``mean_s``, ``min_s``, ``max_s``:
      over the *completed* rounds' time-to-100 % (send -> last agent got it)
    * ``misses``: rounds where some agent had not received the event within
      ``timeout_s``; ``missed_deliveries``: (agent, round) pairs missing;
      ``completed_rounds``
    * ``late_deliveries``: list of {round, agent, latency_s} for events that
      arrived after the timeout but before the end of the run
    * ``delivery_median_s``, ``delivery_p99_s``: over every single
      (agent, round) delivery within the timeout (sender included)
    * ``messages_per_round``, ``duplicates_per_delivery``: from Serf's
      ``serf.msgs.received`` statsd counter over the whole run (``None`` if
      ``counters=False`` or nothing was received);
      ``serf_msgs_received_total``, ``memberlist_udp_packets_received_total``
    * ``per_round``: list of {round, sender, t100_s, t50_s, t90_s, received,
      missing, msgs}
    * ``join_s`` (membership convergence after start), ``start_s``, ``wall_s``
    """
    if msgpack is None:
        raise SerfUnavailable("msgpack is not installed (use the project venv)")
    if capture not in ("rpc", "handler"):
        raise ValueError("capture must be 'rpc' or 'handler'")
    say = log or (lambda *_: None)
    t_start = time.monotonic()
    join_timeout_s = join_timeout_s or (30.0 + 0.5 * n)
    run_id = uuid.uuid4().hex[:8]

    statsd = StatsdListener() if counters else None
    if statsd:
        statsd.start()
    arrivals = {}
    cond = threading.Condition()
    readers = []
    senders = {}
    result = {"tool": "serf", "version": serf_version(), "n": n, "rounds": rounds,
              "capture": capture, "profile": profile, "timeout_s": timeout_s,
              "gap_s": gap_s, "coalesce": False}
    cluster = SerfCluster(n, profile=profile, capture=capture,
                          statsd_port=statsd.port if statsd else None)
    try:
        say(f"starting {n} serf agents in {cluster.dir} ...")
        cluster.start()
        result["start_s"] = round(time.monotonic() - t_start, 3)
        result["join_s"] = round(cluster.wait_members(join_timeout_s), 3)
        say(f"  {n} agents up in {result['start_s']} s, all see {n} alive "
            f"members after {result['join_s']} s more")
        if capture == "rpc":
            for i in range(n):
                r = StreamReader(i, "127.0.0.1", cluster.rpc_ports[i], EVENT_NAME,
                                 arrivals, None, cond)
                readers.append(r)
                r.start()
            for r in readers:
                r.ready.wait(5.0)
            bad = [r.index for r in readers if r.error or not r.ready.is_set()]
            if bad:
                raise RuntimeError(f"stream failed on agents {bad}: "
                                   f"{[readers[i].error for i in bad]}")
        time.sleep(settle_s)
        if statsd:
            # let the join gossip die down before counting messages: wait until
            # no Serf message was received for 1 s (at most 20 s)
            quiet_deadline = time.monotonic() + 20.0
            last = statsd.snapshot()[0].get("serf.msgs.received", 0)
            quiet_since = time.monotonic()
            while time.monotonic() < quiet_deadline:
                time.sleep(0.25)
                cur = statsd.snapshot()[0].get("serf.msgs.received", 0)
                if cur != last:
                    last, quiet_since = cur, time.monotonic()
                elif time.monotonic() - quiet_since >= 1.0:
                    break
            result["quiesce_s"] = round(time.monotonic() - t_start - result["start_s"]
                                        - result["join_s"], 3)

        per_round = []
        sent = {}
        counts_first = statsd.snapshot()[0] if statsd else None
        for rnd in range(rounds):
            sender = rnd % n
            payload = f"{run_id}-{rnd}"
            client = senders.get(sender) or senders.setdefault(sender, cluster.rpc(sender))
            before = statsd.snapshot()[0] if statsd else None
            t_mono, t_wall = client.event(EVENT_NAME, payload.encode(), coalesce=False)
            t0 = t_mono if capture == "rpc" else t_wall
            sent[payload] = (rnd, t0)
            deadline = time.monotonic() + timeout_s
            got = {}
            if capture == "rpc":
                with cond:
                    while time.monotonic() < deadline:
                        got = dict(arrivals.get(payload, {}))
                        if len(got) >= n:
                            break
                        cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
                    got = dict(arrivals.get(payload, {}))
            else:
                while time.monotonic() < deadline:
                    got = _read_handler_files(cluster.dir, cluster.names).get(payload, {})
                    if len(got) >= n:
                        break
                    time.sleep(0.01)
                got = _read_handler_files(cluster.dir, cluster.names).get(payload, {})
            lat = sorted((t - t0) / 1e9 for t in got.values())
            lat = [x for x in lat if x <= timeout_s]
            complete = len(lat) >= n
            time.sleep(gap_s)   # also lets statsd flush this round's counters
            msgs = None
            if statsd:
                after = statsd.snapshot()[0]
                msgs = after.get("serf.msgs.received", 0) - before.get("serf.msgs.received", 0)
            row = {
                "round": rnd, "sender": cluster.names[sender],
                "t100_s": round(lat[-1], 6) if complete else None,
                "t50_s": round(percentile(lat, 50), 6) if lat else None,
                "t90_s": round(lat[math.ceil(0.9 * n) - 1], 6) if len(lat) >= math.ceil(0.9 * n) else None,
                "received": len(lat),
                "missing": [cluster.names[i] for i in range(n)
                            if i not in got or (got[i] - t0) / 1e9 > timeout_s],
                "latencies_s": [round(x, 6) for x in lat],
                "msgs": msgs,
            }
            per_round.append(row)
            say(f"  round {rnd:3d}: sender {row['sender']}  "
                + (f"t100 {row['t100_s']:.3f} s" if complete
                   else f"MISS {n - len(lat)} agent(s) after {timeout_s} s")
                + (f"  msgs {msgs}" if msgs is not None else ""))

        # late arrivals (after their round's timeout, before the end); with
        # counters, also let the last event's retransmissions finish
        time.sleep(max(min(1.0, timeout_s), 3.0 if statsd else 0.0))
        if statsd:
            counts_last = statsd.snapshot()[0]
            result["serf_msgs_received_total"] = (
                counts_last.get("serf.msgs.received", 0)
                - counts_first.get("serf.msgs.received", 0))
            result["memberlist_udp_packets_received_total"] = (
                counts_last.get("memberlist.udp.received", 0)
                - counts_first.get("memberlist.udp.received", 0))
        final = (arrivals if capture == "rpc"
                 else _read_handler_files(cluster.dir, cluster.names))
        late = []
        with cond:
            for row in per_round:
                payload = f"{run_id}-{row['round']}"
                t0 = sent[payload][1]
                for name in row["missing"]:
                    i = cluster.names.index(name)
                    t = final.get(payload, {}).get(i)
                    if t is not None:
                        late.append({"round": row["round"], "agent": name,
                                     "latency_s": round((t - t0) / 1e9, 3)})
        result["late_deliveries"] = late
        result["stream_errors"] = [r.error for r in readers if r.error]
    finally:
        for r in readers:
            r.stop()
        for c in senders.values():
            c.close()
        cluster.stop()
        if statsd:
            statsd.stop()

    t100 = [r["t100_s"] for r in per_round]
    result.update(summarize_rounds(t100))
    result["completed_rounds"] = sum(1 for t in t100 if t is not None)
    result["misses"] = sum(1 for t in t100 if t is None)
    result["missed_deliveries"] = sum(len(r["missing"]) for r in per_round)
    all_lat = [x for r in per_round for x in r["latencies_s"]]
    result["delivery_median_s"] = percentile(all_lat, 50)
    result["delivery_p99_s"] = percentile(all_lat, 99)
    total = result.get("serf_msgs_received_total")
    # every delivery, late ones included: each was one of the messages received
    deliveries = (sum(r["received"] for r in per_round)
                  + len(result.get("late_deliveries", [])))
    if total and deliveries:
        result["messages_per_round"] = total / len(per_round)
        result["duplicates_per_delivery"] = (total - deliveries) / deliveries
    else:
        result["messages_per_round"] = None
        result["duplicates_per_delivery"] = None
    result["per_round"] = per_round
    result["wall_s"] = round(time.monotonic() - t_start, 3)
    return result


def format_summary(res):
    def f(x):
        return "-" if x is None else f"{x:.3f}"
    lines = [
        f"Serf {res['version'].get('debian_package') or res['version'].get('serf_version')}"
        f"  n={res['n']} rounds={res['rounds']} capture={res['capture']} "
        f"profile={res['profile']} coalesce=off",
        f"  time-to-100%: median {f(res['median_s'])} s  p95 {f(res['p95_s'])} s  "
        f"p99 {f(res['p99_s'])} s  max {f(res['max_s'])} s",
        f"  misses: {res['misses']} of {res['rounds']} rounds "
        f"({res['missed_deliveries']} missed deliveries, timeout {res['timeout_s']} s; "
        f"{len(res.get('late_deliveries', []))} arrived late)",
        f"  per delivery: median {f(res['delivery_median_s'])} s  "
        f"p99 {f(res['delivery_p99_s'])} s",
        f"  serf messages received per round: "
        f"{'-' if res['messages_per_round'] is None else round(res['messages_per_round'], 1)}"
        f"  duplicates per delivery: {f(res['duplicates_per_delivery'])}",
        f"  start {res.get('start_s')} s, membership {res.get('join_s')} s, "
        f"wall {res.get('wall_s')} s",
    ]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", "-n", type=int, default=30, help="agents (1..100, default 30)")
    ap.add_argument("--rounds", "-r", type=int, default=20, help="events (default 20)")
    ap.add_argument("--quick", action="store_true", help="n=10, rounds=5 (< 60 s)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                    help="per-round timeout in s; later = miss (default 10)")
    ap.add_argument("--gap", type=float, default=0.5, help="pause between rounds, s")
    ap.add_argument("--profile", default="lan", choices=["lan", "wan", "local"])
    ap.add_argument("--capture", default="rpc", choices=["rpc", "handler"])
    ap.add_argument("--no-counters", action="store_true", help="no statsd listener")
    ap.add_argument("--json", help="write the result dict to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.peers, args.rounds = 10, 5
    if not 1 <= args.peers <= MAX_AGENTS:
        ap.error(f"--peers must be 1..{MAX_AGENTS}")
    if args.rounds < 1 or args.rounds > 10000:
        ap.error("--rounds must be 1..10000")

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C even when started in the background by a shell (SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        res = run_serf(args.peers, args.rounds, timeout_s=args.timeout, gap_s=args.gap,
                       profile=args.profile, capture=args.capture,
                       counters=not args.no_counters,
                       log=lambda m: print(m, flush=True))
    except SerfUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; agents stopped", file=sys.stderr)
        return 130
    print(format_summary(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
