#!/usr/bin/env python3
"""Gossip convergence benchmark: peernet vs Serf on this machine.

For N peers on loopback and R rounds, one peer publishes a message (Serf: a
user event with coalescing off) and the time from sending until *every* peer
has it is measured ("time-to-100 %").  Per system it reports the median / p95
/ p99 over rounds, the rounds where some peer missed the message within the
timeout (``misses``: counted, never dropped), and duplicates per delivery.

* The Serf half lives in ``benchmarks/serf_reference.py`` (``run_serf``).
* The peernet half is :func:`run_peernet` below (DevNet processes, events
  streams; see its docstring).

Targets checked (printed and written, they do not change the exit code):

* ``peernet p99 <= 0.5 x Serf p99`` (and peernet had no misses), and
* ``peernet duplicates per delivery <= 3``.

Run with the project's venv::

    .venv/bin/python benchmarks/convergence.py                 # 30 peers, 20 rounds
    .venv/bin/python benchmarks/convergence.py --quick         # 10 peers, 5 rounds
    .venv/bin/python benchmarks/convergence.py --peers 100 --rounds 40
    .venv/bin/python benchmarks/convergence.py --skip-peernet  # Serf reference only

It writes ``<out>.json`` and ``<out>.md`` (default ``benchmarks/results/
convergence``).  Exit code 0 when every requested half was measured, 1 when a
half could not be measured (serf missing, peernet half not implemented or
failed); the other half's figures are still written.  Needs the Debian package
``serf`` (``apt-get install -y serf``); installs nothing itself.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import selectors
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_DIR = HERE / "results"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import serf_reference  # noqa: E402  (benchmarks/ is not a package)
from common import dist_version, open_event_stream, out_stem, raise_on_sigterm, say, write_results  # noqa: E402
from machine import machine_facts  # noqa: E402  (shared by every benchmark)
from serf_reference import (  # noqa: E402,F401  (re-exported for run_peernet)
    DEFAULT_TIMEOUT_S, MAX_AGENTS, SerfUnavailable, percentile, run_serf,
    summarize_rounds,
)

P99_FACTOR = 0.5        # peernet p99 <= 0.5 x Serf p99
MAX_DUPLICATES = 3.0    # duplicates per delivery <= 3


# ==========================================================================
# peernet half
# ==========================================================================

#: quiet window measured before the rounds: background frames / duplicates
#: (heartbeats, refreshes) per second, to show what they add to a round
BASELINE_S = 3.0
#: pause after every round (the brief: let the network settle ~0.5 s)
PEERNET_GAP_S = 0.5


class EventStreams(threading.Thread):
    """One ``GET /api/events`` stream per peer, all read by this one thread.

    A single ``selectors`` loop over N raw sockets (HTTP/1.0, so the body is
    the bare event stream, no chunking) keeps the measuring client to one
    mostly idle thread.  Every ``event: table`` is stamped with
    ``time.monotonic()`` when the bytes holding it come out of ``recv``, so a
    time includes the event's trip from the peer to this client.
    ``arrivals[origin_peer_id][listener_index]`` is the list of
    ``(version, t)`` seen, in order.
    """

    def __init__(self, nodes):
        super().__init__(name="peernet-events", daemon=True)
        self.nodes = nodes
        self.arrivals = {}
        self.cond = threading.Condition()
        self.events = 0
        self.errors = []
        self.closed = set()
        self._stopping = False
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)

    def open(self, timeout=10.0):
        """Open every stream (blocking) and wait for each server's greeting."""
        for i, node in enumerate(self.nodes):
            sock, rest = open_event_stream(node, timeout)
            sock.setblocking(False)
            self._sel.register(sock, selectors.EVENT_READ, [i, rest])
        self.start()

    def run(self):
        try:
            while not self._stopping:
                for key, _ in self._sel.select(timeout=1.0):
                    if key.data is None:
                        self._wake_r.recv(64)
                        continue
                    try:
                        chunk = key.fileobj.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        chunk = b""
                        self.errors.append(f"{self.nodes[key.data[0]].name}: {exc}")
                    t = time.monotonic()
                    if not chunk:
                        self._sel.unregister(key.fileobj)
                        key.fileobj.close()
                        self.closed.add(key.data[0])
                        continue
                    key.data[1] += chunk
                    self._parse(key.data, t)
        except Exception as exc:  # noqa: BLE001 - reported by run_peernet
            self.errors.append(f"reader: {type(exc).__name__}: {exc}")

    def _parse(self, data, t):
        index, buf = data
        *blocks, data[1] = buf.split(b"\n\n")
        got = []
        for block in blocks:
            if not block.startswith(b"event: table"):
                continue        # the greeting comment
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    ev = json.loads(line[6:])
                    if ev.get("version") is not None:
                        got.append((ev["peer_id"], ev["version"]))
        if got:
            with self.cond:
                for origin, version in got:
                    self.arrivals.setdefault(origin, {}).setdefault(index, []).append(
                        (version, t))
                self.events += len(got)
                self.cond.notify_all()

    def first_at_least(self, origin, index, version):
        """Monotonic time ``index`` first reported ``origin`` at >= version."""
        for v, t in self.arrivals.get(origin, {}).get(index, ()):
            if v >= version:
                return t
        return None

    def stop(self):
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self.is_alive():
            self.join(5.0)
        for key in list(self._sel.get_map().values()):
            try:
                key.fileobj.close()
            except OSError:
                pass
        self._sel.close()
        self._wake_w.close()


def _post_repos(node, repos, timeout=10.0):
    """POST /api/repos; returns (t_send, version): t_send is time.monotonic()
    taken after connecting, just before the request is written."""
    parts = urlsplit(node.control_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.connect()
        body = json.dumps({"repos": repos}).encode()
        t_send = time.monotonic()
        conn.request("POST", "/api/repos", body=body,
                     headers={"Authorization": f"Bearer {node.token}",
                              "Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = json.loads(resp.read() or b"null")
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"{node.name} POST /api/repos: {resp.status} {answer}")
    return t_send, answer["version"]


def _stats(nodes):
    """Every peer's status stats (received, sent, invalid, duplicates)."""
    return [node.status()["stats"] for node in nodes]


def _cpu_seconds(pids):
    """utime + stime of these processes (from /proc), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def _delta(after, before, key):
    return [a[key] - b[key] for a, b in zip(after, before)]


def run_peernet(n, rounds, *, timeout_s=DEFAULT_TIMEOUT_S, log=None, gap_s=PEERNET_GAP_S,
                keep_dir=False):
    """Measure peernet's gossip convergence; return a dict like ``run_serf``.

    Must start ``n`` peernet peers on loopback (127.0.0.1, distinct ports, temp
    dirs, every process/peer stopped in a ``finally``), wait (bounded) until
    the overlay is formed, then run ``rounds`` rounds: one peer (round-robin)
    publishes a fresh message and the time from publishing until every one of
    the ``n`` peers has delivered it to its application is measured with one
    clock (``time.monotonic_ns`` if measured in one process).  A round where
    some peer has not delivered it within ``timeout_s`` is a miss.

    Required keys (times in seconds, ``None`` when not measured):

    * ``tool``: ``"peernet"``; ``n``; ``rounds``; ``timeout_s``
    * ``median_s``, ``p95_s``, ``p99_s``, ``max_s``: over the *completed*
      rounds' time-to-100 %: use ``summarize_rounds(t100_list)`` (``None``
      for a missed round) so both halves use the same percentile definition
      (linear interpolation, ``serf_reference.percentile``)
    * ``misses``: number of rounds where some peer missed the message within
      ``timeout_s``; ``missed_deliveries``: (peer, round) pairs missing
    * ``duplicates_per_delivery``: (copies of the benchmark messages received
      by all peers - deliveries) / deliveries, where a delivery is a peer
      getting a message for the first time (the publisher's own local
      delivery counts as a delivery and is not a received copy, as in
      run_serf)

    Optional keys shown when present: ``messages_per_round``,
    ``delivery_median_s``, ``delivery_p99_s``, ``join_s``, ``wall_s``,
    ``per_round`` (list of {round, sender, t100_s, received, missing}),
    ``version``, ``notes``.

    How it is done here: :class:`peernet.devnet.DevNet` starts a real ``twist
    bootstrap`` and ``n`` ``twist peer --broadcast`` processes, peer i
    listening on 127.0.0.(10 + i).  A "message" is a ``POST /api/repos`` on
    the publisher (a PEER_UPDATE with a new version V); a peer has it when
    its ``GET /api/events`` stream reports the publisher's peer_id at a
    version >= V (one stream per peer, opened before the first round, read by
    one selectors thread: :class:`EventStreams`).  Duplicates come from the
    deltas of every peer's ``stats.duplicates`` over the rounds (see the
    ``notes`` for the exact definition).
    """
    from peernet.devnet import BootstrapNode, DevNet

    say = log or (lambda *_: None)
    if n < 2:
        raise ValueError("peernet needs at least 2 peers")
    if n > 245:
        raise ValueError("peers listen on 127.0.0.(10 + i): at most 245")
    t_start = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    workdir = tempfile.mkdtemp(prefix="peernet-conv-")
    result = {"tool": "peernet", "version": {"peernet": dist_version("peernet")},
              "n": n, "rounds": rounds, "timeout_s": timeout_s, "gap_s": gap_s,
              "workdir": workdir}
    net = DevNet(workdir, broadcasting=0, silent=0, bootstrap=False)
    streams = None
    per_round = []
    ok = False
    try:
        say(f"starting 1 bootstrap + {n} broadcasting peers in {workdir} ...")
        # The bootstrap's default register limit (60/60 s per client IP) would
        # throttle 100 peers registering from 127.0.0.1: raise it.
        net.bootstrap = BootstrapNode(workdir, extra=["--rate-ip", "100000/1"]).start()
        for i in range(n):
            net.add_peer(f"peer{i + 1}", broadcast=True, host=f"127.0.0.{10 + i}")
        nodes = list(net.broadcasters)
        result["start_s"] = round(time.monotonic() - t_start, 3)
        ids = [node.peer_id() for node in nodes]
        join_timeout = 30.0 + 0.5 * n
        waited = net.wait(lambda: net.converged(set(ids)), join_timeout, interval=0.5)
        if waited is None:
            sizes = [node.status()["table"]["broadcasting"] for node in nodes]
            raise RuntimeError(f"no convergence within {join_timeout:.0f} s: "
                               f"table sizes {sorted(sizes)}")
        result["join_s"] = round(waited, 3)
        say(f"  {n} peers up in {result['start_s']} s, every table holds all {n} "
            f"after {result['join_s']} s more")
        links = [node.status()["links"] for node in nodes]
        result["links_per_peer"] = {
            "outbound_mean": round(statistics.fmean(l["outbound"] for l in links), 2),
            "inbound_mean": round(statistics.fmean(l["inbound"] for l in links), 2),
            "total_mean": round(statistics.fmean(l["outbound"] + l["inbound"] for l in links), 2)}

        streams = EventStreams(nodes)
        streams.open()
        # Quiet baseline: what the network does with no publication at all
        # (heartbeats, digest pings, syncs left from the join).
        time.sleep(1.0)
        base0, tb0 = _stats(nodes), time.monotonic()
        time.sleep(BASELINE_S)
        base1, tb1 = _stats(nodes), time.monotonic()
        span = tb1 - tb0
        result["baseline"] = {
            "window_s": round(span, 3),
            "frames_received_per_s": round(sum(_delta(base1, base0, "received")) / span, 3),
            "duplicates_per_s": round(sum(_delta(base1, base0, "duplicates")) / span, 3),
            "table_events": 0,
        }
        say(f"  quiet baseline over {span:.1f} s: "
            f"{result['baseline']['frames_received_per_s']:.1f} frames/s received, "
            f"{result['baseline']['duplicates_per_s']:.2f} duplicates/s (all peers)")

        before = base1
        sent = {}
        t_rounds0 = time.monotonic()
        cpu0 = time.process_time()
        pids = [x.pid for x in nodes] + [net.bootstrap.pid]
        peers_cpu0 = _cpu_seconds(pids)
        for rnd in range(rounds):
            sender = rnd % n
            origin = ids[sender]
            others = [i for i in range(n) if i != sender]
            cpu_before = _cpu_seconds(pids)
            t0, version = _post_repos(nodes[sender],
                                      [{"name": f"convergence-{run_id}-{rnd}"}])
            sent[rnd] = t0
            deadline = t0 + timeout_s
            with streams.cond:
                while True:
                    got = {i: streams.first_at_least(origin, i, version) for i in others}
                    if all(t is not None for t in got.values()):
                        break
                    left = deadline - time.monotonic()
                    if left <= 0 or streams.errors:
                        break
                    streams.cond.wait(min(0.1, left))
            round_cpu = _cpu_seconds(pids) - cpu_before
            lat = {i: t - t0 for i, t in got.items() if t is not None and t - t0 <= timeout_s}
            missing = [nodes[i].name for i in others if i not in lat]
            time.sleep(gap_s)
            after = _stats(nodes)
            dups = _delta(after, before, "duplicates")
            recv = _delta(after, before, "received")
            before = after
            complete = not missing
            ordered = sorted(lat.values())
            row = {
                "round": rnd, "sender": nodes[sender].name, "version": version,
                "t100_s": round(ordered[-1], 6) if complete else None,
                "t50_s": round(percentile(ordered, 50), 6) if ordered else None,
                "received": len(lat), "missing": missing,
                "latencies_s": [round(x, 6) for x in ordered],
                "slowest": nodes[max(lat, key=lat.get)].name if lat else None,
                "duplicates": sum(dups), "frames_received": sum(recv),
                "peers_cpu_s": round(round_cpu, 3),
            }
            per_round.append(row)
            say(f"  round {rnd:3d}: sender {row['sender']:<7}  "
                + (f"t100 {row['t100_s']:.3f} s (last {row['slowest']})" if complete
                   else f"MISS {len(missing)} peer(s) after {timeout_s} s: "
                        f"{', '.join(missing[:10])}")
                + f"  duplicates {row['duplicates']}  frames {row['frames_received']}"
                + f"  peers' CPU {row['peers_cpu_s']:.2f} s")
            if streams.errors:
                raise RuntimeError(f"events stream failed: {streams.errors}")
            if streams.closed:
                raise RuntimeError("events stream closed by "
                                   f"{[nodes[i].name for i in sorted(streams.closed)]}")
        rounds_span = time.monotonic() - t_rounds0
        peers_cpu = _cpu_seconds(pids) - peers_cpu0
        result["peers_cpu_s_per_round"] = round(peers_cpu / rounds, 3)
        result["peers_cpu_s_per_round_propagation"] = round(
            statistics.fmean(r["peers_cpu_s"] for r in per_round), 3)
        result["peers_cpu_pct"] = round(100.0 * peers_cpu / rounds_span, 1)
        result["rounds_span_s"] = round(rounds_span, 3)
        say(f"  peers' CPU during the rounds: {result['peers_cpu_s_per_round']} s per round "
            f"({result['peers_cpu_s_per_round_propagation']} s of it from the POST to the "
            f"last delivery), "
            f"{result['peers_cpu_pct']} % of one core on average "
            f"({os.cpu_count()} CPUs; {gap_s} s gap + status polls included)")
        result["client_cpu_pct"] = round(100.0 * (time.process_time() - cpu0) / rounds_span, 1)
        say(f"  measuring client: {result['client_cpu_pct']} % of one core during the rounds "
            f"(events read: {streams.events})")

        # late deliveries: after their round's timeout, before the end
        time.sleep(min(1.0, timeout_s))
        late = []
        with streams.cond:
            for row in per_round:
                sender = next(k for k, x in enumerate(nodes) if x.name == row["sender"])
                for name in row["missing"]:
                    i = next(k for k, x in enumerate(nodes) if x.name == name)
                    t = streams.first_at_least(ids[sender], i, row["version"])
                    if t is not None:
                        late.append({"round": row["round"], "peer": name,
                                     "latency_s": round(t - sent[row["round"]], 3)})
        result["late_deliveries"] = late
        result["dead_peers"] = [x.name for x in nodes if not x.running()]
        ok = True
    finally:
        if streams is not None:
            streams.stop()
        net.stop()
        if ok and not keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not ok:
            say(f"  (peer logs kept in {workdir})")

    t100 = [r["t100_s"] for r in per_round]
    result.update(summarize_rounds(t100))
    result["completed_rounds"] = sum(1 for t in t100 if t is not None)
    result["misses"] = sum(1 for t in t100 if t is None)
    result["missed_deliveries"] = sum(len(r["missing"]) for r in per_round)
    all_lat = [x for r in per_round for x in r["latencies_s"]]
    result["delivery_median_s"] = percentile(all_lat, 50)
    result["delivery_p99_s"] = percentile(all_lat, 99)
    total_dups = sum(r["duplicates"] for r in per_round)
    deliveries = (n - 1) * len(per_round)
    result["duplicates_total"] = total_dups
    result["deliveries"] = deliveries
    result["duplicates_per_delivery"] = total_dups / deliveries if deliveries else None
    # the same with the publisher's own delivery counted (run_serf's convention)
    result["duplicates_per_delivery_incl_publisher"] = (
        total_dups / (n * len(per_round)) if per_round else None)
    bg = result["baseline"]["duplicates_per_s"] * rounds_span
    result["baseline_duplicates_expected"] = round(bg, 2)
    result["duplicates_per_delivery_minus_baseline"] = (
        max(0.0, total_dups - bg) / deliveries if deliveries else None)
    result["messages_per_round"] = (sum(r["frames_received"] for r in per_round)
                                    / len(per_round)) if per_round else None
    result["per_round"] = per_round
    result["wall_s"] = round(time.monotonic() - t_start, 3)
    result["notes"] = [
        "time-to-100%: from time.monotonic() just before the POST /api/repos is "
        "written to the publisher until the last other peer's GET /api/events "
        "stream line reporting the publisher at version >= V came out of recv() "
        "in the benchmark process: it includes the publisher's HTTP handling and "
        "each event's delivery (loopback HTTP) to the measuring client",
        "the publisher's own delivery is not timed (it is local); per-delivery "
        "figures are over the n-1 other peers",
        "duplicates per delivery: the sum over all peers of the delta of status "
        "stats.duplicates over the rounds, divided by (n-1) deliveries per round. "
        "stats.duplicates counts relayed-type frames (PEER_ANNOUNCEMENT/UPDATE/"
        "REQUEST/LIST_RESPONSE) dropped by the duplicate filter plus pushes that "
        "changed nothing in the table, i.e. copies of the PEER_UPDATE beyond the "
        "first; heartbeats and digest pings are never counted, and a record that "
        "arrives again inside an anti-entropy PEER_LIST_RESPONSE is not counted "
        "(the status API does not expose it)",
        f"background: a {BASELINE_S:.0f} s quiet window before the rounds is "
        "measured; its duplicate rate times the rounds' duration is "
        "'baseline_duplicates_expected' (heartbeats every 30 s add frames, not "
        "duplicates)",
        "messages received per round: all gossip frames received by all peers "
        f"per round including the {gap_s} s gap (PEER_UPDATE copies, digest "
        "pings, heartbeats, sync requests/answers)",
        "measuring client: one thread reads all n event streams with selectors; "
        "its CPU use during the rounds (status polls in the gaps included) is "
        "'client_cpu_pct' (% of one core)",
        "peers' CPU: utime+stime of all peer processes (and the bootstrap) "
        "over the rounds, from /proc; 'peers_cpu_s_per_round' and "
        "'peers_cpu_pct' (% of one core, averaged over rounds and gaps); per round, "
        "'peers_cpu_s' is the CPU they used from just before the POST until the "
        "last delivery was seen (compare with t100 x CPUs: saturation)",
        "bootstrap started with --rate-ip 100000/1 so that all peers can "
        "register from 127.0.0.1",
    ]
    return result


# ==========================================================================
# report
# ==========================================================================

def package_versions():
    out = {}
    for dist in ("peernet", "twisted", "autobahn", "msgpack", "cryptography"):
        out[dist] = dist_version(dist)
    info = serf_reference.serf_version()
    out["serf (deb)"] = info.get("debian_package")
    out["serf version"] = info.get("serf_version")
    return out


ROWS = [
    # key, label, kind ("s" seconds, "n" count, "x" plain number)
    ("median_s", "time-to-100% median", "s"),
    ("p95_s", "time-to-100% p95", "s"),
    ("p99_s", "time-to-100% p99", "s"),
    ("max_s", "time-to-100% max", "s"),
    ("misses", "rounds with a miss", "n"),
    ("missed_deliveries", "missed deliveries", "n"),
    ("delivery_median_s", "per-delivery median", "s"),
    ("delivery_p99_s", "per-delivery p99", "s"),
    ("messages_per_round", "messages received per round", "x"),
    ("duplicates_per_delivery", "duplicates per delivery", "x"),
]


def _fmt(v, kind):
    if v is None:
        return "-"
    if kind == "s":
        return f"{v:.3f} s"
    if kind == "n":
        return str(int(v))
    return f"{v:.2f}"


def _ratio(p, s):
    if p is None or s is None or s == 0:
        return None
    return p / s


def comparison_rows(serf, peer):
    rows = []
    for key, label, kind in ROWS:
        sv = (serf or {}).get(key)
        pv = (peer or {}).get(key)
        r = _ratio(pv, sv) if kind != "n" else None
        rows.append({"key": key, "metric": label, "serf": sv, "peernet": pv,
                     "ratio": r, "kind": kind})
    return rows


def evaluate_targets(serf, peer):
    """The two targets: PASS / FAIL / N/A (not measured)."""
    out = []
    sp, pp = (serf or {}).get("p99_s"), (peer or {}).get("p99_s")
    if sp is None or pp is None:
        out.append({"target": f"peernet p99 <= {P99_FACTOR} x Serf p99",
                    "verdict": "N/A", "detail": "not measured"})
    else:
        limit = P99_FACTOR * sp
        misses = peer.get("misses") or 0
        ok = pp <= limit and misses == 0
        detail = f"peernet {pp:.3f} s vs limit {limit:.3f} s"
        if misses:
            detail += f"; peernet missed {misses} round(s) (a miss fails the target)"
        out.append({"target": f"peernet p99 <= {P99_FACTOR} x Serf p99",
                    "verdict": "PASS" if ok else "FAIL", "detail": detail})
    dpd = (peer or {}).get("duplicates_per_delivery")
    if dpd is None:
        out.append({"target": f"duplicates per delivery <= {MAX_DUPLICATES:g}",
                    "verdict": "N/A", "detail": "not measured"})
    else:
        sd = (serf or {}).get("duplicates_per_delivery")
        detail = f"peernet {dpd:.2f}" + (f" (Serf {sd:.2f})" if sd is not None else "")
        out.append({"target": f"duplicates per delivery <= {MAX_DUPLICATES:g}",
                    "verdict": "PASS" if dpd <= MAX_DUPLICATES else "FAIL",
                    "detail": detail})
    return out


def text_report(report):
    rows = report["comparison"]
    head = ["metric", "Serf", "peernet", "peernet/Serf"]
    body = [[r["metric"], _fmt(r["serf"], r["kind"]), _fmt(r["peernet"], r["kind"]),
             "-" if r["ratio"] is None else f"{r['ratio']:.2f}"] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = [f"convergence: {report['settings']['peers']} peers, "
           f"{report['settings']['rounds']} rounds, timeout "
           f"{report['settings']['timeout_s']} s ({report['mode']} mode)",
           line(head), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    out.append("")
    for t in report["targets"]:
        out.append(f"target {t['target']}: {t['verdict']}  ({t['detail']})")
    for side in ("serf", "peernet"):
        if report["errors"].get(side):
            out.append(f"{side}: NOT MEASURED: {report['errors'][side]}")
    for note in (report.get("peernet") or {}).get("notes") or []:
        out.append(f"peernet note: {note}")
    return "\n".join(out)


def markdown_report(report):
    m, v, s = report["machine"], report["versions"], report["settings"]
    lines = [
        "# convergence results",
        "",
        f"- date: {report['date']} ({report['mode']} mode)",
        f"- machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB, "
        f"kernel {m['kernel']}, Python {m['python']}, load average before "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_before'])}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- settings: {s['peers']} peers on 127.0.0.1, {s['rounds']} rounds "
        f"(publisher round-robin), a round is missed if some peer lacks the message "
        f"after {s['timeout_s']} s; Serf: user events with coalescing off, profile "
        f"{s['serf_profile']}, reception via {s['serf_capture']}",
        "- time-to-100%: from sending until the last peer has the message; "
        "median/p95/p99 over completed rounds (linear interpolation), misses counted "
        "separately",
        "- duplicates per delivery: (copies received - deliveries) / deliveries",
        "",
        "| metric | Serf | peernet | peernet/Serf |",
        "|---|---:|---:|---:|",
    ]
    for r in report["comparison"]:
        lines.append(f"| {r['metric']} | {_fmt(r['serf'], r['kind'])} | "
                     f"{_fmt(r['peernet'], r['kind'])} | "
                     f"{'-' if r['ratio'] is None else format(r['ratio'], '.2f')} |")
    lines += ["", "| target | verdict | detail |", "|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['verdict']} | {t['detail']} |")
    pn = report.get("peernet") or {}
    if pn.get("notes"):
        lines += ["", "## peernet: how it was measured", ""]
        lines += [f"- {note}" for note in pn["notes"]]
        extra = {k: pn.get(k) for k in (
            "join_s", "links_per_peer", "baseline", "duplicates_per_delivery_incl_publisher",
            "peers_cpu_s_per_round", "peers_cpu_s_per_round_propagation", "peers_cpu_pct",
            "client_cpu_pct") if pn.get(k) is not None}
        lines += [f"- {k}: {v}" for k, v in extra.items()]
    errs = {k: e for k, e in report["errors"].items() if e}
    if errs:
        lines += ["", "## Not measured", ""]
        lines += [f"- {k}: {e}" for k, e in errs.items()]
    for side in ("serf", "peernet"):
        res = report.get(side) or {}
        rows = res.get("per_round") or []
        if not rows:
            continue
        lines += ["", f"## {side} per round", "", "| round | sender | t100 | received | missing |",
                  "|---:|---|---:|---:|---|"]
        for row in rows:
            t = row.get("t100_s")
            lines.append(f"| {row.get('round')} | {row.get('sender', '')} | "
                         f"{'MISS' if t is None else format(t, '.3f')} | "
                         f"{row.get('received', '')} | {', '.join(row.get('missing') or []) or '-'} |")
    if (report.get("serf") or {}).get("late_deliveries"):
        lines += ["", "Serf deliveries after the timeout: "
                  + ", ".join(f"round {d['round']} {d['agent']} {d['latency_s']} s"
                              for d in report["serf"]["late_deliveries"])]
    return "\n".join(lines) + "\n"


# ==========================================================================
# main
# ==========================================================================

def parse_args(argv):
    ap = argparse.ArgumentParser(description="peernet vs Serf gossip convergence")
    ap.add_argument("--peers", "-n", type=int, default=30,
                    help=f"peers / agents (1..{MAX_AGENTS}, default 30)")
    ap.add_argument("--rounds", "-r", type=int, default=20, help="rounds (default 20)")
    ap.add_argument("--quick", action="store_true", help="10 peers, 5 rounds")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                    help="per-round timeout in s; later counts as a miss (default 10)")
    ap.add_argument("--out", default=str(RESULTS_DIR / "convergence"),
                    help="output path without extension: writes .json and .md "
                         "(default benchmarks/results/convergence)")
    ap.add_argument("--serf-capture", default="rpc", choices=["rpc", "handler"],
                    help="how Serf receptions are timed (default rpc stream)")
    ap.add_argument("--serf-profile", default="lan", choices=["lan", "wan", "local"])
    ap.add_argument("--skip-serf", action="store_true")
    ap.add_argument("--skip-peernet", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.peers, args.rounds = 10, 5
    if not 1 <= args.peers <= MAX_AGENTS:
        ap.error(f"--peers must be 1..{MAX_AGENTS}")
    if not 1 <= args.rounds <= 10000:
        ap.error("--rounds must be 1..10000")
    args.out = out_stem(args.out)
    return args


def main(argv=None):
    args = parse_args(argv)

    raise_on_sigterm()
    signal.signal(signal.SIGINT, signal.default_int_handler)

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "settings": {"peers": args.peers, "rounds": args.rounds,
                     "timeout_s": args.timeout, "serf_capture": args.serf_capture,
                     "serf_profile": args.serf_profile},
        "machine": machine_facts(),
        "versions": package_versions(),
        "serf": None, "peernet": None, "errors": {},
    }
    t0 = time.monotonic()
    try:
        if not args.skip_serf:
            say(f"== Serf: {args.peers} agents, {args.rounds} rounds")
            try:
                report["serf"] = run_serf(args.peers, args.rounds, timeout_s=args.timeout,
                                          profile=args.serf_profile,
                                          capture=args.serf_capture, log=say)
                say(serf_reference.format_summary(report["serf"]))
            except SerfUnavailable as exc:
                report["errors"]["serf"] = str(exc)
            except Exception as exc:  # noqa: BLE001 - reported, other half still runs
                report["errors"]["serf"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
        if not args.skip_peernet:
            say(f"== peernet: {args.peers} peers, {args.rounds} rounds")
            try:
                report["peernet"] = run_peernet(args.peers, args.rounds,
                                                timeout_s=args.timeout, log=say)
            except NotImplementedError as exc:
                report["errors"]["peernet"] = f"not implemented: {exc}"
            except Exception as exc:  # noqa: BLE001
                report["errors"]["peernet"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
    except KeyboardInterrupt:
        print("interrupted (every started process was stopped); nothing written",
              file=sys.stderr)
        return 130
    report["wall_s"] = round(time.monotonic() - t0, 1)
    report["comparison"] = comparison_rows(report["serf"], report["peernet"])
    report["targets"] = evaluate_targets(report["serf"], report["peernet"])

    print()
    print(text_report(report))
    json_path, md_path = write_results(args.out, report, markdown_report(report))
    print(f"wrote {json_path} and {md_path}")
    return 1 if any(report["errors"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
