#!/usr/bin/env python3
"""Repo transfer over loopback: peernet `get` vs plain libtorrent-to-libtorrent.

One run of this script (see benchmarks/README.md, "transfer.py"):

1. writes SIZE MB of pseudo-random data (10 files, two in a subdirectory) to
   a temporary directory and builds it with ``peernet.torrent.repo.build_repo``
   (the hybrid v1+v2 torrent every peernet seeder publishes);
2. **peernet**: a real ``twist bootstrap``, a broadcasting ``twist peer``
   sharing the directory (``--share big=PATH``, 127.0.0.10) and, for each run,
   a fresh silent ``twist peer`` (127.0.0.77 + run) that learns the repo by
   gossip.  The clock starts when ``POST /api/get`` is sent; the peer's
   ``GET /api/events`` stream (``event: download``) gives the first event
   with progress > 0, "download complete" (progress 1.0, or state
   ``verifying``) and "verified" (state ``done``: every file's SHA-256
   checked against the signed manifest);
3. **reference**: two plain libtorrent sessions, each its own Python process
   started from this file (``_seeder`` / ``_downloader`` roles), with exactly
   ``peernet.torrent.engine.session_settings()`` (silent downloader: no
   listening socket), the same torrent flags as the engine (seed mode, no
   DHT/LSD/PEX, not auto-managed), the same magnet link peernet's downloader
   adds (btih + btmh + name: metadata comes from the seeder), seeder on
   127.0.0.20, downloader ``connect_peer``-ing it right after
   ``add_torrent``.  The clock starts at ``add_torrent``; it stops at
   ``torrent_finished_alert``;
4. two more reference rows: the seeder's address given in
   ``add_torrent_params.peers`` instead of ``connect_peer`` (dialled as the
   torrent starts), and ``connect_peer`` with ``tick_interval`` set on both
   sessions (``--tick-ms``, default 50; 0 drops the row).  libtorrent dials
   ``connect_peer`` peers only once per second, so each reference
   downloader's session idles 1 s + a per-run fraction of a second before
   ``add_torrent``, and peernet's clock starts at the silent peer's spawn +
   3 s + the same fraction: the phase of that second varies over the runs.

First byte is measured three ways (see the README): the harness polls the
destination directory every 2 ms for the first allocated block (same probe
on both sides: "disk"), the reference downloader stamps its first
``block_finished_alert`` ("block"), and peernet's first ``download`` event
with progress > 0 ("event"; events come on the engine's 0.5 s progress tick
and progress counts only hash-checked pieces).

Every process is started here and stopped by pid; every wait is bounded.
The data and all state directories are deleted at the end.

    .venv/bin/python benchmarks/transfer.py            # 200 MB, 3 runs each
    .venv/bin/python benchmarks/transfer.py --quick    # 50 MB, 1 run each
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from common import (  # shared by every benchmark
    cpu_seconds, dist_version, open_event_stream, out_stem, raise_on_sigterm, say, write_results)
from machine import machine_facts as shared_machine_facts  # shared by every benchmark

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_DIR = HERE / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MB = 1_000_000
REPO_NAME = "big"
SEEDER_HOST = "127.0.0.20"
SEEDER_HOST_PEERS = "127.0.0.21"
SEEDER_HOST_TICK = "127.0.0.22"
PEERNET_SEEDER_HOST = "127.0.0.10"
SILENT_HOST_BASE = 77
#: Shares of the repo's size for its files (sum 1.0); a few bytes are moved
#: between files so that no file is a whole number of 16 KiB blocks.
FILE_SHARES = [0.30, 0.225, 0.15, 0.125, 0.075, 0.05, 0.04, 0.02, 0.01, 0.005]
FILE_NAMES = ["a.bin", "b.bin", "c.bin", "d.bin", "e.bin", "f.bin",
              "sub/g.bin", "sub/h.bin", "i.bin", "j.bin"]
SIDES = ("peernet", "reference", "reference-peers", "reference-tick")
RUN_TIMEOUT = 300.0  # one download, any side
PROBE_INTERVAL = 0.002
PROGRESS_TICK = 0.5  # as peernet.torrent.engine.PROGRESS_INTERVAL
#: The reference downloader's session runs this long, plus a per-run fraction
#: of IDLE_SPREAD_S, before add_torrent (see Reference.idle_s).
IDLE_BEFORE_ADD_S = 1.0
IDLE_SPREAD_S = 1.0
#: peernet: the clock starts this long (+ the same fraction) after the silent
#: peer's process was spawned (it must have started and learnt the repo).
PEERNET_IDLE_S = 3.0


# ==========================================================================
# roles run in their own processes: plain libtorrent, nothing from peernet
# ==========================================================================

def _lt_flags(lt, params, seed):
    """The torrent flags TorrentEngine._add (and seed) set."""
    params.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    params.flags |= lt.torrent_flags.disable_dht | lt.torrent_flags.disable_lsd
    params.flags |= lt.torrent_flags.disable_pex
    if seed:
        params.flags |= lt.torrent_flags.seed_mode


def role_seeder(cfg):
    """Seed cfg["torrent"] from cfg["save_path"]; print {"port"}; run until SIGTERM."""
    import libtorrent as lt

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    parent = os.getppid()
    ses = lt.session(cfg["settings"])
    params = lt.add_torrent_params()
    with open(cfg["torrent"], "rb") as f:
        params.ti = lt.torrent_info(f.read())
    params.save_path = cfg["save_path"]
    _lt_flags(lt, params, seed=True)
    ses.add_torrent(params)
    port = None
    deadline = time.monotonic() + 20
    while port is None and time.monotonic() < deadline:
        ses.wait_for_alert(100)
        for a in ses.pop_alerts():
            if isinstance(a, lt.listen_succeeded_alert) and a.socket_type == lt.socket_type_t.tcp:
                port = a.port
            elif isinstance(a, lt.listen_failed_alert):
                print(json.dumps({"error": a.message()}), flush=True)
                return 1
    if port is None:
        print(json.dumps({"error": "no listen_succeeded_alert in 20 s"}), flush=True)
        return 1
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    while not stop.is_set() and os.getppid() == parent:
        ses.wait_for_alert(200)
        ses.pop_alerts()
    ses.pause()
    return 0


def role_downloader(cfg):
    """Download cfg["source"] into cfg["dest"] from cfg["peer"]; print one JSON line.

    Times are time.monotonic() (one clock for every process on Linux).
    """
    import libtorrent as lt

    ses = lt.session(cfg["settings"])
    if cfg["source"].startswith("magnet:"):
        params = lt.parse_magnet_uri(cfg["source"])
    else:
        params = lt.add_torrent_params()
        with open(cfg["source"], "rb") as f:
            params.ti = lt.torrent_info(f.read())
    params.save_path = cfg["dest"]
    _lt_flags(lt, params, seed=False)
    os.makedirs(cfg["dest"], exist_ok=True)
    peer = (cfg["peer"][0], int(cfg["peer"][1]))
    out = {"errors": []}
    # A long-running peer's session ticks with some phase relative to the
    # moment a download is added: idle a while first, like peernet's session.
    idle_until = time.monotonic() + cfg.get("idle_s", 0)
    while time.monotonic() < idle_until:
        ses.wait_for_alert(int(max(1, min(100, (idle_until - time.monotonic()) * 1000))))
        ses.pop_alerts()
    cpu0 = os.times()
    t0 = time.monotonic()
    if cfg.get("peers_in_params"):
        params.peers = [peer]  # known before the torrent starts: dialled at once
    handle = ses.add_torrent(params)
    if not cfg.get("peers_in_params"):
        handle.connect_peer(peer)  # what TorrentEngine does: dialled on a later tick
    out["t_add"] = t0
    deadline = t0 + cfg["timeout"]
    next_tick = t0 + PROGRESS_TICK
    done = False
    while not done and time.monotonic() < deadline:
        ses.wait_for_alert(int(max(1, min(100, (next_tick - time.monotonic()) * 1000))))
        now = time.monotonic()
        for a in ses.pop_alerts():
            if isinstance(a, lt.block_finished_alert):
                out.setdefault("t_first_block", now)
            elif isinstance(a, lt.metadata_received_alert):
                out.setdefault("t_metadata", now)
            elif isinstance(a, lt.state_update_alert):
                for st in a.status:
                    if st.progress > 0:
                        out.setdefault("t_tick_progress", now)
            elif isinstance(a, lt.torrent_finished_alert):
                out["t_finished"] = now
                done = True
            elif isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
                out["errors"].append(a.message())
                done = True
        if now >= next_tick:
            ses.post_torrent_updates()  # as the engine's progress tick does
            next_tick = now + PROGRESS_TICK
    cpu1 = os.times()
    out["cpu_s"] = round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 3)
    st = handle.status()
    out.update(total_wanted=st.total_wanted, total_wanted_done=st.total_wanted_done,
               payload_down=st.total_payload_download, bytes_down=st.total_download,
               is_finished=bool(st.is_finished or st.is_seeding))
    ti = handle.torrent_file()
    if ti is not None:
        out.update(piece_length=ti.piece_length(), num_pieces=ti.num_pieces())
    if not done:
        out["errors"].append(f"not finished after {cfg['timeout']} s")
    print(json.dumps(out), flush=True)
    sys.stdout.flush()
    ses.pause()
    os._exit(0)  # the session's destructor is not part of the measurement


# ==========================================================================
# harness helpers
# ==========================================================================

class Procs:
    """Every subprocess this script starts, stopped by pid."""

    def __init__(self):
        self.procs = []

    def add(self, proc):
        self.procs.append(proc)
        return proc

    def stop(self, proc, timeout=10.0):
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            except ProcessLookupError:
                pass
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self):
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc)
            except Exception:  # noqa: BLE001 - keep stopping the others
                traceback.print_exc()


def start_role(procs, role, cfg, log_path):
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), role, json.dumps(cfg)],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
            start_new_session=True)
    finally:
        log.close()
    return procs.add(proc)


def read_json_line(proc, timeout, what):
    """First stdout line of ``proc`` as JSON, within ``timeout`` seconds."""
    box = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box or not box[0]:
        raise RuntimeError(f"{what}: no answer within {timeout:g} s (exit {proc.poll()})")
    return json.loads(box[0])


def make_data(root, total, seed=20261125):
    """Write ``total`` pseudo-random bytes as len(FILE_SHARES) files under root."""
    rng = random.Random(seed)
    sizes = [int(total * s) for s in FILE_SHARES]
    for i in range(len(sizes) - 1):
        nudge = 1234 + 777 * i
        sizes[i] += nudge if i % 2 else -nudge
    sizes[-1] = total - sum(sizes[:-1])
    for name, size in zip(FILE_NAMES, sizes):
        path = os.path.join(root, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, 1 << 20)
                f.write(rng.randbytes(n))
                left -= n
    return sizes


class DiskProbe(threading.Thread):
    """Poll a directory tree until some file has an allocated block."""

    def __init__(self, root, deadline):
        super().__init__(daemon=True)
        self.root = root
        self.deadline = deadline
        self.t_first = None
        self._halt = threading.Event()

    def _any_data(self):
        stack = [self.root]
        while stack:
            path = stack.pop()
            try:
                with os.scandir(path) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        elif e.is_file(follow_symlinks=False):
                            if e.stat(follow_symlinks=False).st_blocks > 0:
                                return True
            except FileNotFoundError:
                pass
        return False

    def run(self):
        while not self._halt.is_set() and time.monotonic() < self.deadline:
            t = time.monotonic()
            if self._any_data():
                self.t_first = t  # the poll that saw it started at t
                return
            self._halt.wait(PROBE_INTERVAL)

    def stop(self):
        self._halt.set()
        self.join(2)


class DownloadEvents(threading.Thread):
    """``GET /api/events`` of one peer; keeps (monotonic t, job dict) of download events."""

    def __init__(self, node):
        super().__init__(daemon=True, name="peernet-download-events")
        self.node = node
        self.events = []
        self.error = None
        self.cond = threading.Condition()
        self.sock = None

    def open(self, timeout=10.0):
        sock, self._buf = open_event_stream(self.node, timeout)
        sock.settimeout(1.0)
        self.sock = sock
        self._stopping = False
        self.start()

    def run(self):
        buf = self._buf
        try:
            while not self._stopping:
                try:
                    chunk = self.sock.recv(65536)
                except socket.timeout:
                    continue
                t = time.monotonic()
                if not chunk:
                    self.error = "events stream closed"
                    break
                buf += chunk
                *blocks, buf = buf.split(b"\n\n")
                got = []
                for block in blocks:
                    if not block.startswith(b"event: download"):
                        continue
                    for line in block.split(b"\n"):
                        if line.startswith(b"data: "):
                            got.append((t, json.loads(line[6:])))
                if got:
                    with self.cond:
                        self.events.extend(got)
                        self.cond.notify_all()
        except OSError as exc:
            if not self._stopping:
                self.error = f"{type(exc).__name__}: {exc}"
        with self.cond:
            self.cond.notify_all()

    def wait_end(self, job_id, deadline):
        with self.cond:
            while True:
                for _, ev in self.events:
                    if ev.get("id") == job_id and ev.get("state") in ("done", "failed",
                                                                      "cancelled"):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0 or self.error:
                    return None
                self.cond.wait(min(0.2, left))

    def close(self):
        self._stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self.is_alive():
            self.join(3)


def cpu_total_s():
    """(busy, total) jiffies of the whole machine, for 'other load' notes."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return (sum(parts) - idle) / os.sysconf("SC_CLK_TCK"), sum(parts) / os.sysconf("SC_CLK_TCK")


def fresh_dir(base, name):
    path = os.path.join(base, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def settle(path, pause=1.0):
    """Delete a finished download and flush dirty pages before the next run."""
    shutil.rmtree(path, ignore_errors=True)
    os.sync()
    time.sleep(pause)


def _r(x, nd=3):
    return None if x is None else round(x, nd)


# ==========================================================================
# the two sides
# ==========================================================================

class Reference:
    """A plain libtorrent seeder process + one downloader process per run."""

    def __init__(self, procs, workdir, manifest, torrent_path, host, extra_settings, label,
                 runs, peers_in_params=False):
        from peernet.torrent.engine import magnet_uri, session_settings

        self.procs = procs
        self.workdir = workdir
        self.label = label
        self.runs = runs
        self.peers_in_params = peers_in_params
        self.extra = dict(extra_settings)
        self.seed_settings = dict(session_settings(f"{host}:0", True), **self.extra)
        self.dl_settings = dict(session_settings("", False), **self.extra)
        self.magnet = magnet_uri(manifest.summary())
        self.manifest = manifest
        self.torrent_path = torrent_path
        self.host = host
        self.seeder = None
        self.port = None

    def idle_s(self, index):
        """Seconds the downloader's session runs before add_torrent.

        libtorrent dials peers only in its once-per-second housekeeping (the
        part of the tick gated by ``now - m_last_second_tick >= 1 s``), whose
        phase is set when the session starts.  A freshly created session
        would always add the torrent at the same phase (about 0.5 s before
        that tick); peernet's session has been up for a while, so its phase is
        arbitrary.  1 s plus a per-run fraction of a second spreads the phase
        evenly over the runs (0.1, 0.43, 0.77 s for 3 runs; the same
        fractions on every reference row).
        """
        return round(IDLE_BEFORE_ADD_S + IDLE_SPREAD_S * ((index + 0.3) / self.runs % 1.0), 3)

    def start(self):
        self.seeder = start_role(self.procs, "_seeder", {
            "settings": self.seed_settings, "torrent": self.torrent_path,
            "save_path": os.path.dirname(self.manifest.root)},
            os.path.join(self.workdir, f"seeder-{self.host}.log"))
        answer = read_json_line(self.seeder, 30, f"reference seeder {self.host}")
        if "port" not in answer:
            raise RuntimeError(f"reference seeder: {answer}")
        self.port = answer["port"]
        return self

    def run(self, index):
        dest = fresh_dir(self.workdir, f"dl-{self.label}-{index}")
        probe = DiskProbe(dest, time.monotonic() + RUN_TIMEOUT)
        probe.start()
        seeder_cpu0 = cpu_seconds(self.seeder.pid)
        busy0, all0 = cpu_total_s()
        proc = start_role(self.procs, "_downloader", {
            "settings": self.dl_settings, "source": self.magnet, "dest": dest,
            "peer": [self.host, self.port], "timeout": RUN_TIMEOUT,
            "idle_s": self.idle_s(index), "peers_in_params": self.peers_in_params},
            os.path.join(self.workdir, f"downloader-{self.label}.log"))
        try:
            out = read_json_line(proc, RUN_TIMEOUT + 30, f"reference downloader ({self.label})")
            proc.wait(10)
        finally:
            self.procs.stop(proc)
            probe.stop()
        busy1, all1 = cpu_total_s()
        seeder_cpu1 = cpu_seconds(self.seeder.pid)
        t0 = out["t_add"]
        rel = (lambda k: None if out.get(k) is None else out[k] - t0)
        row = {
            "side": self.label, "run": index, "idle_before_add_s": self.idle_s(index),
            "first_byte_disk_s": _r(probe.t_first - t0) if probe.t_first else None,
            "first_byte_block_s": _r(rel("t_first_block")),
            "first_progress_event_s": _r(rel("t_tick_progress")),
            "metadata_s": _r(rel("t_metadata")),
            "complete_s": _r(rel("t_finished")),
            "verified_s": None,
            "downloader_cpu_s": out.get("cpu_s"),
            "seeder_cpu_s": _r(seeder_cpu1 - seeder_cpu0) if seeder_cpu0 is not None else None,
            "machine_busy_cores": _r((busy1 - busy0) / max(1e-9, (all1 - all0)) * os.cpu_count(),
                                     2),
            "payload_bytes": out.get("payload_down"), "wire_bytes": out.get("bytes_down"),
            "piece_length": out.get("piece_length"), "num_pieces": out.get("num_pieces"),
            "errors": out.get("errors") or [],
        }
        if not out.get("is_finished") or out.get("total_wanted_done") != self.manifest.total_size:
            row["errors"].append(f"incomplete: {out.get('total_wanted_done')} of "
                                 f"{self.manifest.total_size} bytes")
        settle(dest)
        return row


class Peernet:
    """twist bootstrap + a sharing broadcasting peer; one fresh silent peer per run."""

    def __init__(self, workdir, data_root, manifest, runs):
        from peernet.devnet import BootstrapNode, DevNet

        self.runs = runs
        self.workdir = os.path.join(workdir, "devnet")
        self.net = DevNet(self.workdir, broadcasting=0, silent=0, bootstrap=False)
        self._bootstrap_cls = BootstrapNode
        self.data_root = data_root
        self.manifest = manifest
        self.seeder = None
        self.share_s = None

    def start(self):
        net = self.net
        net.bootstrap = self._bootstrap_cls(self.workdir).start()
        t = time.monotonic()
        self.seeder = net.add_peer("peer1", broadcast=True, host=PEERNET_SEEDER_HOST,
                                   extra=["--share", f"{REPO_NAME}={self.data_root}"])
        self.seeder.wait_for_log(r"sharing " + REPO_NAME, timeout=300)
        self.share_s = round(time.monotonic() - t, 3)
        shared = self.seeder.api("GET", "repos")["shared"]
        mine = [s for s in shared if s["name"] == REPO_NAME]
        if not mine:
            raise RuntimeError(f"peer1 does not list {REPO_NAME}: {shared}")
        if mine[0]["btih"] != self.manifest.btih or mine[0]["btmh"] != self.manifest.btmh:
            raise RuntimeError(f"peer1 built a different torrent: {mine[0]} vs "
                               f"{self.manifest.summary()}")
        return self

    def stop(self):
        self.net.stop()

    def run(self, index):
        net = self.net
        host = f"127.0.0.{SILENT_HOST_BASE + index}"
        t_spawn = time.monotonic()
        silent = net.add_peer(f"silent{index + 1}", broadcast=False, host=host)
        started = time.monotonic() - t_spawn
        dest = fresh_dir(self.workdir, f"dl-peernet-{index}")
        events = None
        try:
            def knows_repo():
                for p in silent.peers():
                    for r in p.get("repos", ()):
                        if r.get("name") == REPO_NAME and r.get("btih") == self.manifest.btih:
                            return True
                return False

            learnt = net.wait(knows_repo, 60, interval=0.1)
            if learnt is None:
                raise RuntimeError(f"{silent.name} did not learn repo {REPO_NAME} in 60 s")
            events = DownloadEvents(silent)
            events.open()
            # Start the clock at process start + PEERNET_IDLE_S + the same per-run
            # fraction of a second as the reference rows (Reference.idle_s), so
            # the phase of libtorrent's once-per-second dialling varies over the
            # runs instead of being fixed by how long this harness's waits took.
            frac = IDLE_SPREAD_S * ((index + 0.3) / self.runs % 1.0)
            target = t_spawn + PEERNET_IDLE_S + frac
            while target < time.monotonic() + 0.3:
                target += 1.0
            time.sleep(target - time.monotonic())
            idle = time.monotonic() - t_spawn
            probe = DiskProbe(dest, time.monotonic() + RUN_TIMEOUT)
            probe.start()
            cpu0 = cpu_seconds(silent.pid)
            seeder_cpu0 = cpu_seconds(self.seeder.pid)
            busy0, all0 = cpu_total_s()
            t0 = time.monotonic()
            job = silent.api("POST", "get", {"repo": REPO_NAME, "dest": dest})
            t_post = time.monotonic()
            end = events.wait_end(job["id"], t0 + RUN_TIMEOUT)
            t_end = time.monotonic()
            cpu1 = cpu_seconds(silent.pid)
            seeder_cpu1 = cpu_seconds(self.seeder.pid)
            busy1, all1 = cpu_total_s()
            probe.stop()
            evs = [(t, e) for t, e in list(events.events) if e.get("id") == job["id"]]
            first_progress = next((t for t, e in evs if e.get("progress", 0) > 0), None)
            first_source = next((t for t, e in evs if e.get("sources", 0) > 0
                                 or e.get("rate", 0) > 0), None)
            complete = next((t for t, e in evs if e.get("progress", 0) >= 1.0
                             or e.get("state") in ("verifying", "done")), None)
            verifying = next((t for t, e in evs if e.get("state") == "verifying"), None)
            done = next((t for t, e in evs if e.get("state") == "done"), None)
            errors = []
            if end is None:
                errors.append(f"no end event within {RUN_TIMEOUT} s ({events.error or 'timeout'})")
            elif end.get("state") != "done":
                errors.append(f"download ended {end.get('state')}: {end.get('error')}")
            if end and end.get("state") == "done":
                got = sorted((f["path"], f["size"], f["sha256"]) for f in end.get("files", ()))
                want = sorted(tuple(f) for f in self.manifest.files)
                if got != want:
                    errors.append("the verified file list differs from the manifest")
            rel = (lambda t: None if t is None else t - t0)
            row = {
                "side": "peernet", "run": index,
                "peer_start_s": _r(started), "learn_repo_s": _r(learnt),
                "idle_before_add_s": _r(idle),
                "post_get_s": _r(t_post - t0),
                "first_byte_disk_s": _r(rel(probe.t_first)),
                "first_byte_block_s": None,
                "first_progress_event_s": _r(rel(first_progress)),
                "first_source_event_s": _r(rel(first_source)),
                "complete_s": _r(rel(complete)),
                "verifying_event_s": _r(rel(verifying)),
                "verified_s": _r(rel(done)),
                "verify_s": _r(done - complete) if done and complete else None,
                "events": len(evs),
                "downloader_cpu_s": _r(cpu1 - cpu0) if cpu0 is not None else None,
                "seeder_cpu_s": _r(seeder_cpu1 - seeder_cpu0) if seeder_cpu0 is not None
                else None,
                "machine_busy_cores": _r((busy1 - busy0) / max(1e-9, (all1 - all0))
                                         * os.cpu_count(), 2),
                "wall_to_end_s": _r(t_end - t0),
                "errors": errors,
            }
        finally:
            if events is not None:
                events.close()
            silent.stop()
        settle(dest)
        return row


# ==========================================================================
# summary and report
# ==========================================================================

def summarize(rows, size):
    ok = [r for r in rows if not r["errors"]]
    out = {"runs": len(rows), "ok_runs": len(ok)}
    for r in ok:
        if r.get("complete_s") is not None and r.get("first_byte_disk_s") is not None:
            r["data_phase_s"] = round(r["complete_s"] - r["first_byte_disk_s"], 3)

    def stat(key):
        vals = [r[key] for r in ok if r.get(key) is not None]
        if not vals:
            return None
        return {"median": round(statistics.median(vals), 3), "min": round(min(vals), 3),
                "max": round(max(vals), 3), "mean": round(statistics.fmean(vals), 3),
                "values": vals}

    for key in ("first_byte_disk_s", "first_byte_block_s", "first_progress_event_s",
                "metadata_s", "post_get_s", "complete_s", "verified_s", "verify_s",
                "data_phase_s", "downloader_cpu_s", "seeder_cpu_s", "machine_busy_cores",
                "learn_repo_s"):
        st = stat(key)
        if st is not None:
            out[key] = st
    for key in ("complete_s", "verified_s", "data_phase_s"):
        if key in out:
            out[key[:-2] + "_MBps"] = {
                "median": round(size / MB / out[key]["median"], 1),
                "best": round(size / MB / out[key]["min"], 1)}
    return out


def machine_facts():
    fs = None
    try:
        with open("/proc/mounts") as f:
            best = ""
            for line in f:
                dev, mnt, typ = line.split()[:3]
                if tempfile.gettempdir().startswith(mnt) and len(mnt) > len(best):
                    best, fs = mnt, f"{typ} on {mnt} ({dev})"
    except OSError:
        pass
    facts = shared_machine_facts()
    facts["tmp_filesystem"] = fs
    return facts


def versions():
    import libtorrent as lt

    out = {"libtorrent": lt.__version__}
    for dist in ("peernet", "twisted"):
        out[dist] = dist_version(dist)
    return out


def _f(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def table_rows(report):
    """(key, label, summary) for every side, peernet first."""
    labels = {"peernet": "peernet `get` (silent → broadcasting peer)",
              "reference": "libtorrent → libtorrent, peernet's settings, `connect_peer`",
              "reference-peers": "libtorrent, same, seeder in `add_torrent_params.peers`",
              "reference-tick": f"libtorrent, `connect_peer` + `{report['settings']['variant']}`"
                                " (both sessions)"}
    return [(key, labels[key], report["summary"][key]) for key in SIDES
            if report["summary"].get(key)]


def markdown(report):
    s = report["settings"]
    m = report["machine"]
    lines = [
        f"# transfer results{' (quick mode)' if report['mode'] == 'quick' else ''}",
        "",
        f"- date: {report['date']}",
        f"- machine: {m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, "
        f"Python {m['python']}, {m['tmp_filesystem']}; load average before "
        f"{m['loadavg_before']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- repo: {s['size_bytes']:,} bytes of pseudo-random data in {s['files']} files, "
        f"hybrid v1+v2 torrent, piece size {report['repo'].get('piece_length') or '?'} bytes "
        f"({report['repo'].get('num_pieces')} pieces); build_repo {report['repo'].get('build_s')}"
        f" s, peer1's `--share` (start + hash) {report['repo'].get('peernet_share_s')} s",
        f"- {s['runs']} run(s) per side, interleaved (order rotates each round); fresh download "
        "directory each run (deleted, `sync`, 1 s pause); loopback, TCP only; every seeder "
        "reads the same files from a warm page cache",
        f"- wall time {report.get('wall_s')} s",
        "",
        "Seconds from `POST /api/get` (peernet) or `add_torrent` (libtorrent): median (min) "
        "over the runs. MB = 10^6 bytes. 'data phase' = complete − first byte on disk.",
        "",
        "| side | first byte (disk) | complete | verified | MB/s to complete | "
        "MB/s to verified | data phase | MB/s data phase |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def med(sm, key):
        v = sm.get(key)
        return "–" if not v else f"{v['median']:.3f} ({v['min']:.3f})"

    def mbps(sm, key):
        v = sm.get(key)
        return "–" if not v else f"{v['median']:.1f} ({v['best']:.1f})"

    rows = table_rows(report)
    for _, label, sm in rows:
        lines.append(f"| {label} | {med(sm, 'first_byte_disk_s')} | {med(sm, 'complete_s')} | "
                     f"{med(sm, 'verified_s')} | {mbps(sm, 'complete_MBps')} | "
                     f"{mbps(sm, 'verified_MBps')} | {med(sm, 'data_phase_s')} | "
                     f"{mbps(sm, 'data_phase_MBps')} |")
    lines.append("")
    for t in report["targets"]:
        lines.append(f"**{t['text']}**")
        lines.append("")
    lines += [
        "Other first-byte clocks and CPU (median (min)):",
        "",
        "| side | first block alert | first progress event | metadata | downloader CPU s | "
        "seeder CPU s | busy cores (machine) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for _, label, sm in rows:
        lines.append(f"| {label} | {med(sm, 'first_byte_block_s')} | "
                     f"{med(sm, 'first_progress_event_s')} | {med(sm, 'metadata_s')} | "
                     f"{med(sm, 'downloader_cpu_s')} | {med(sm, 'seeder_cpu_s')} | "
                     f"{med(sm, 'machine_busy_cores')} |")
    lines += [
        "",
        "Per run:",
        "",
        "| side | run | idle before add | first byte disk | block alert | progress event | "
        "complete | verified | verify | data phase | POST returned | downloader CPU | "
        "busy cores | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['side']} | {r['run']} | {_f(r.get('idle_before_add_s'), 3)} | "
            f"{_f(r.get('first_byte_disk_s'), 3)} | {_f(r.get('first_byte_block_s'), 3)} | "
            f"{_f(r.get('first_progress_event_s'), 3)} | {_f(r.get('complete_s'), 3)} | "
            f"{_f(r.get('verified_s'), 3)} | {_f(r.get('verify_s'), 3)} | "
            f"{_f(r.get('data_phase_s'), 3)} | {_f(r.get('post_get_s'), 3)} | "
            f"{_f(r.get('downloader_cpu_s'))} | {_f(r.get('machine_busy_cores'))} | "
            f"{'; '.join(r['errors']) or ''} |")
    lines.append("")
    for note in report["notes"]:
        lines.append(f"- {note}")
    if report["errors"]:
        lines.append("")
        lines.append("Errors: " + "; ".join(f"{k}: {v}" for k, v in report["errors"].items()))
    lines.append("")
    lines.append("See benchmarks/README.md (transfer.py) for what each column measures.")
    return "\n".join(lines) + "\n"


def evaluate(report, target=0.9):
    """Throughput ratios peernet / plain libtorrent (`connect_peer` row), medians."""
    p, r = report["summary"].get("peernet"), report["summary"].get("reference")
    if not p or not r or "complete_s" not in r:
        return [{"text": f"target peernet/reference >= {target}: NOT MEASURED", "pass": None}]
    out = []
    for pkey, rkey, what in (
            ("complete_s", "complete_s", "get → download complete vs add_torrent → finished"),
            ("verified_s", "complete_s", "get → verified (state done) vs add_torrent → finished"),
            ("data_phase_s", "data_phase_s", "data phase (first byte → complete), both sides")):
        if pkey not in p or rkey not in r:
            continue
        ratio = r[rkey]["median"] / p[pkey]["median"]
        ok = ratio >= target
        out.append({"key": pkey, "ratio": round(ratio, 3), "pass": ok,
                    "text": f"throughput peernet/libtorrent, {what}: {ratio:.2f} "
                            f"(target >= {target}): {'PASS' if ok else 'FAIL'}"})
    pooled = pooled_data_phase(report)
    if pooled and "data_phase_s" in p:
        ratio = pooled["median"] / p["data_phase_s"]["median"]
        out.append({"key": "data_phase_pooled", "ratio": round(ratio, 3), "pass": ratio >= target,
                    "text": f"throughput peernet/libtorrent, data phase vs both default-settings "
                            f"libtorrent rows pooled ({len(pooled['values'])} runs, median "
                            f"{pooled['median']:.3f} s): {ratio:.2f} (target >= {target}): "
                            f"{'PASS' if ratio >= target else 'FAIL'}"})
    return out


def pooled_data_phase(report):
    """Data-phase times of the two reference rows with peernet's exact settings
    (they differ only in how the seeder's address is given, before the data flows)."""
    vals = [r["data_phase_s"] for r in report["runs"]
            if r["side"] in ("reference", "reference-peers") and not r["errors"]
            and r.get("data_phase_s") is not None]
    if not vals:
        return None
    return {"median": round(statistics.median(vals), 3), "values": vals}


# ==========================================================================
# main
# ==========================================================================

def parse_args(argv):
    ap = argparse.ArgumentParser(description="repo transfer: peernet get vs plain libtorrent")
    ap.add_argument("--quick", action="store_true", help="50 MB, 1 run per side")
    ap.add_argument("--size-mb", type=int, default=None, help="repo size in MB (default 200)")
    ap.add_argument("--runs", type=int, default=None, help="runs per side (default 3)")
    ap.add_argument("--tick-ms", type=int, default=50,
                    help="libtorrent tick_interval for the extra reference row "
                         "(0: no extra row; default 50)")
    ap.add_argument("--skip-peernet", action="store_true")
    ap.add_argument("--out", default=None,
                    help="output path without extension (default benchmarks/results/transfer, "
                         "or transfer-quick with --quick)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    args.size_mb = args.size_mb or (50 if args.quick else 200)
    args.runs = args.runs or (1 if args.quick else 3)
    if not 1 <= args.size_mb <= 20000 or not 1 <= args.runs <= 50:
        ap.error("--size-mb 1..20000, --runs 1..50")
    args.out = out_stem(args.out or RESULTS_DIR / ("transfer-quick" if args.quick else "transfer"))
    return args


def main(argv=None):
    args = parse_args(argv)

    raise_on_sigterm()

    from peernet.torrent.repo import build_repo

    size = args.size_mb * MB
    variant = {"tick_interval": args.tick_ms} if args.tick_ms else None
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "settings": {"size_bytes": size, "files": len(FILE_SHARES), "runs": args.runs,
                     "variant": (", ".join(f"{k}={v}" for k, v in variant.items())
                                 if variant else None),
                     "probe_interval_s": PROBE_INTERVAL},
        "machine": machine_facts(), "versions": versions(), "repo": {},
        "runs": [], "summary": {}, "errors": {}, "notes": [],
    }
    procs = Procs()
    workdir = tempfile.mkdtemp(prefix="peernet-transfer-")
    peernet = None
    t_start = time.monotonic()
    try:
        data_root = os.path.join(workdir, "data", REPO_NAME)
        os.makedirs(data_root)
        t = time.monotonic()
        sizes = make_data(data_root, size)
        say(f"wrote {size / MB:.0f} MB in {len(sizes)} files to {data_root} "
            f"in {time.monotonic() - t:.1f} s")
        t = time.monotonic()
        manifest = build_repo(data_root, REPO_NAME)
        report["repo"]["build_s"] = round(time.monotonic() - t, 3)
        torrent_path = os.path.join(workdir, f"{REPO_NAME}.torrent")
        with open(torrent_path, "wb") as f:
            f.write(manifest.torrent)
        import libtorrent as lt

        ti = lt.torrent_info(manifest.torrent)
        report["repo"].update(btih=manifest.btih, btmh=manifest.btmh,
                              piece_length=ti.piece_length(), num_pieces=ti.num_pieces(),
                              file_sizes=sizes)
        say(f"build_repo: {report['repo']['build_s']} s; piece size {ti.piece_length()}, "
            f"{ti.num_pieces()} pieces, btih {manifest.btih}")

        sides = []
        ref = Reference(procs, workdir, manifest, torrent_path, SEEDER_HOST, {},
                        "reference", args.runs).start()
        sides.append(("reference", ref.run))
        ref_p = Reference(procs, workdir, manifest, torrent_path, SEEDER_HOST_PEERS, {},
                          "reference-peers", args.runs, peers_in_params=True).start()
        sides.append(("reference-peers", ref_p.run))
        if variant:
            ref_t = Reference(procs, workdir, manifest, torrent_path, SEEDER_HOST_TICK,
                              variant, "reference-tick", args.runs).start()
            sides.append(("reference-tick", ref_t.run))
        if not args.skip_peernet:
            say("starting twist bootstrap + peer1 sharing the repo ...")
            peernet = Peernet(workdir, data_root, manifest, args.runs)
            peernet.start()
            report["repo"]["peernet_share_s"] = peernet.share_s
            say(f"  peer1 shares {REPO_NAME} (started and hashed in {peernet.share_s} s)")
            sides.append(("peernet", peernet.run))
        # the page cache is warm for every side: both seeders read the same files
        for i in range(args.runs):
            order = sides[i % len(sides):] + sides[:i % len(sides)]
            for name, run in order:
                try:
                    row = run(i)
                except Exception as exc:  # noqa: BLE001 - recorded, the others still run
                    traceback.print_exc()
                    row = {"side": name, "run": i, "errors": [f"{type(exc).__name__}: {exc}"]}
                report["runs"].append(row)
                say(f"  run {i} {name:<15} first byte disk {_f(row.get('first_byte_disk_s'), 3)}"
                    f"  block {_f(row.get('first_byte_block_s'), 3)}"
                    f"  progress event {_f(row.get('first_progress_event_s'), 3)}"
                    f"  complete {_f(row.get('complete_s'), 3)}"
                    f"  verified {_f(row.get('verified_s'), 3)}"
                    + (f"  ERRORS {row['errors']}" if row["errors"] else ""))
    except KeyboardInterrupt:
        report["errors"]["interrupted"] = "SIGINT/SIGTERM"
        print("interrupted; stopping every process", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        report["errors"]["harness"] = f"{type(exc).__name__}: {exc}"
    finally:
        if peernet is not None:
            try:
                peernet.stop()
            except Exception:  # noqa: BLE001
                traceback.print_exc()
        procs.stop_all()
        if args.keep:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report["wall_s"] = round(time.monotonic() - t_start, 1)
    for side in SIDES:
        rows = [r for r in report["runs"] if r["side"] == side]
        if rows:
            report["summary"][side] = summarize(rows, size)
    report["targets"] = evaluate(report)
    report["notes"] = notes(report)
    md = markdown(report)
    print()
    print(md)
    json_path, md_path = write_results(args.out, report, md, indent=2)
    say(f"wrote {json_path} and {md_path}")
    bad = report["errors"] or any(r["errors"] for r in report["runs"])
    return 1 if bad else 0


def notes(report):
    out = []
    sm = report["summary"]
    p, r = sm.get("peernet"), sm.get("reference")
    rp, rt = sm.get("reference-peers"), sm.get("reference-tick")
    if p and "verify_s" in p:
        out.append(f"peernet's SHA-256 check of every file after the download took "
                   f"{p['verify_s']['median']:.3f} s (median; 'verified' − 'complete').")
    fb = [(name, x["first_byte_disk_s"]) for name, x in
          (("peernet", p), ("libtorrent connect_peer", r),
           ("libtorrent add_torrent_params.peers", rp),
           (f"libtorrent connect_peer + {report['settings']['variant']}", rt))
          if x and "first_byte_disk_s" in x]
    if fb:
        out.append("time to first byte on disk, median / mean / max: "
                   + "; ".join(f"{n} {v['median']:.3f} / {v['mean']:.3f} / {v['max']:.3f} s"
                               for n, v in fb) + ".")
    out.append("libtorrent dials a peer given with `connect_peer` only in its once-per-second "
               "housekeeping (the part of the session tick gated by 1 s), so the wait is "
               "0-1 s depending on the phase, whatever `tick_interval` is; a peer in "
               "`add_torrent_params.peers` is dialled as the torrent starts. The reference "
               "downloader's session runs 1 s + a per-run fraction of a second before "
               "`add_torrent` so its phase varies like a long-running peer's.")
    out.append("'first byte (disk)': the harness polls the download directory every 2 ms "
               "and stamps the first poll that finds an allocated block (same probe on every "
               "side). 'first block alert': the reference downloader's first "
               "block_finished_alert (one 16 KiB block received). 'first progress event': "
               "peernet's first download event with progress > 0 (events come on the engine's "
               "0.5 s tick and progress counts hash-checked pieces only); the reference rows "
               "show the same from post_torrent_updates every 0.5 s after add_torrent "
               "(often none: the download ends before the first tick brings progress).")
    out.append("'complete': peernet = first download event with progress 1.0 or state "
               "'verifying' (the engine's done); libtorrent = torrent_finished_alert. "
               "'verified': peernet's state 'done' event, after the SHA-256 check.")
    for side, x in sm.items():
        busy = x.get("machine_busy_cores")
        if busy and busy["median"] > 1.8:
            out.append(f"{side}: the machine's {os.cpu_count()} cores were nearly saturated "
                       f"during the download (median {busy['median']} busy cores, all "
                       "processes).")
    return out


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] in ("_seeder", "_downloader"):
        cfg = json.loads(sys.argv[2])
        sys.exit((role_seeder if sys.argv[1] == "_seeder" else role_downloader)(cfg))
    sys.exit(main())
