#!/usr/bin/env python3
"""Load benchmark: peernet bootstrap server vs opentracker vs a minimal Twisted site.

Measures requests per second (and wrk's p50/p99 latency) of

* peernet ``GET /api/bootstrap/discover`` (table of --peers registered peers),
* peernet ``POST /api/bootstrap/register`` (every request freshly signed,
  unique nonce, current timestamp; pre-generated before each timed phase),
* opentracker ``GET /announce`` (reference 1: a C tracker, one core),
* a minimal Twisted web resource returning a fixed small JSON body
  (reference 2: the ceiling of Twisted's HTTP stack in one process),

at several concurrency levels (open connections), in one run, with wrk as the
load generator.  See benchmarks/README.md for how to read the figures.

Run with the project's venv (it imports peernet to sign register requests)::

    .venv/bin/python benchmarks/bootstrap_load.py            # full, ~5 min
    .venv/bin/python benchmarks/bootstrap_load.py --quick    # CI smoke, < 60 s

It installs nothing; it needs the Debian packages ``wrk`` and ``opentracker``
(and ``taskset`` from util-linux for core pinning).  Every process it starts
listens on 127.0.0.1 only and is stopped by pid before it exits.
"""

import argparse
import datetime
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

from common import cpu_seconds  # shared by every benchmark
from machine import machine_facts  # shared by every benchmark

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WRK_DIR = HERE / "wrk"
RESULTS_DIR = HERE / "results"

# One whitelisted torrent for opentracker; 20 bytes, url-encoded byte by byte.
INFO_HASH_HEX = "0123456789abcdef0123456789abcdef01234567"
INFO_HASH_URL = "".join("%%%02X" % b for b in bytes.fromhex(INFO_HASH_HEX))
NUMWANT = 16  # = peernet's DISCOVER_DEFAULT_LIMIT, so both return 16 peers

GOSSIP_ADDRESS = "wss://127.0.0.1:9000/gossip"

# The minimal Twisted reference, run as its own process: argv[1] = port.
TWISTED_REFERENCE = r'''
import sys
from twisted.internet import endpoints, reactor
from twisted.web import resource, server

BODY = b'{"status":"ok","peers":[]}'

class Fixed(resource.Resource):
    isLeaf = True
    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return BODY
    render_POST = render_GET

class QuietSite(server.Site):
    def log(self, request):  # no access log, as a lean production site
        pass

endpoints.serverFromString(
    reactor, "tcp:%s:interface=127.0.0.1" % sys.argv[1]).listen(QuietSite(Fixed()))
reactor.run()
'''


class BenchError(Exception):
    """A failure explained in one sentence."""


# -- processes -----------------------------------------------------------------


class Processes:
    """Every child process this script starts; stop_all() ends them by pid."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.children = []  # (name, Popen, log path)

    def start(self, name, argv, cpu=None, cwd=None, env=None):
        log_path = self.workdir / f"{name}.log"
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + list(argv)  # taskset execs: same pid
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=cwd, env=env, start_new_session=True,  # Ctrl-C reaches only us
            )
        self.children.append((name, proc, log_path))
        return proc

    def log_tail(self, proc, lines=8):
        for _name, p, log_path in self.children:
            if p is proc:
                try:
                    text = log_path.read_text(errors="replace").strip().splitlines()
                except OSError:
                    return ""
                return "\n".join(text[-lines:])
        return ""

    def stop(self, proc, timeout=5.0):
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=timeout)

    def stop_all(self):
        for _name, proc, _log in reversed(self.children):
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                print(f"warning: could not stop pid {proc.pid}: {exc}", file=sys.stderr)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=2.0):
    """(status, body bytes) or raises OSError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(procs, proc, name, url, deadline_s):
    """Poll ``url`` until 200; bounded by deadline_s and by the process living."""
    end = time.monotonic() + deadline_s
    last = "no answer"
    for _ in range(int(deadline_s / 0.05) + 1):
        if proc.poll() is not None:
            raise BenchError(
                f"{name} exited with code {proc.returncode} before answering "
                f"{url}; its output ends with: {procs.log_tail(proc) or '(nothing)'}")
        try:
            status, _ = http_get(url, timeout=1.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        if time.monotonic() > end:
            break
        time.sleep(0.05)
    raise BenchError(f"{name} did not answer 200 on {url} within {deadline_s:.0f} s (last: {last}).")


def system_cpu():
    """(busy seconds excluding softirq, softirq seconds) summed over all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    tck = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq) / tck, softirq / tck


def background_load(seconds=1.0):
    """Cores' worth of CPU used by other processes while this script idles."""
    b0, s0 = system_cpu()
    time.sleep(seconds)
    b1, s1 = system_cpu()
    return (b1 - b0) / seconds


# -- servers -------------------------------------------------------------------


def start_opentracker(procs, cpu):
    port = free_port()
    root = procs.workdir / "opentracker"
    root.mkdir()
    (root / "whitelist.txt").write_text(INFO_HASH_HEX + "\n")
    conf = root / "opentracker.conf"
    # tcp only (no udp socket); it chroots to rootdir and drops to "nobody".
    conf.write_text(
        f"listen.tcp 127.0.0.1:{port}\n"
        f"access.whitelist ./whitelist.txt\n"
        f"tracker.rootdir {root}\n"
        f"tracker.user nobody\n"
    )
    os.chmod(root, 0o755)
    proc = procs.start("opentracker", ["opentracker", "-f", str(conf)], cpu=cpu)
    base = f"http://127.0.0.1:{port}"
    probe = (f"{base}/announce?info_hash={INFO_HASH_URL}&peer_id=-BL0001-probeprobe00"
             f"&port=9&uploaded=0&downloaded=0&left=0&compact=1&numwant=1")
    wait_ready(procs, proc, "opentracker", probe, 10)
    _, body = http_get(probe)
    if b"failure reason" in body:
        raise BenchError(f"opentracker refused the benchmark torrent: {body[:200]!r}")
    return proc, base


def populate_opentracker(base, peers, deadline_s=60):
    """Announce ``peers`` distinct peers (same ids/ports as wrk/announce.lua)."""
    end = time.monotonic() + deadline_s
    for k in range(1, peers + 1):
        url = (f"{base}/announce?info_hash={INFO_HASH_URL}&peer_id=-BL0001-{k:012d}"
               f"&port={10000 + k}&uploaded=0&downloaded=0&left=0&compact=1&numwant=0"
               f"&event=started")
        status, body = http_get(url)
        if status != 200 or b"failure reason" in body:
            raise BenchError(f"opentracker announce {k} failed: HTTP {status} {body[:120]!r}")
        if time.monotonic() > end:
            raise BenchError(f"populating opentracker took over {deadline_s} s.")


def start_twisted_reference(procs, cpu):
    port = free_port()
    proc = procs.start("twisted-min", [sys.executable, "-c", TWISTED_REFERENCE, str(port)],
                       cpu=cpu)
    base = f"http://127.0.0.1:{port}"
    wait_ready(procs, proc, "the minimal Twisted server", base + "/", 20)
    return proc, base


def peernet_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def start_peernet(procs, cpu, db_path):
    if not (REPO / "peernet" / "bootstrap").is_dir():
        raise BenchError("peernet/bootstrap/ does not exist yet, so the peernet server cannot start.")
    port = free_port()
    # `python -m twisted bootstrap` from the repo root finds the plugin in
    # twisted/plugins/ whether or not the project is pip-installed.
    argv = [sys.executable, "-m", "twisted", "bootstrap",
            "--listen", f"tcp:{port}:interface=127.0.0.1", "--db", str(db_path),
            "--rate-ip", "1000000/1", "--rate-email", "1000000/1"]
    proc = procs.start("peernet-bootstrap", argv, cpu=cpu, cwd=str(REPO), env=peernet_env())
    base = f"http://127.0.0.1:{port}"
    wait_ready(procs, proc, "the peernet bootstrap server", base + "/api/bootstrap/health", 30)
    return proc, base, " ".join(argv[1:])


# -- signed register requests ----------------------------------------------------


class RegisterBodies:
    """Makes validly signed register requests from a pool of identities.

    Each request has its own nonce and the current timestamp; each identity's
    record version goes up by one per request, so a refresh is never older
    than what the server holds.
    """

    def __init__(self, pool_size):
        from peernet.identity import NodeIdentity

        self.identities = [NodeIdentity.generate() for _ in range(pool_size)]
        self.versions = [0] * pool_size
        self.next = 0

    def make(self, count):
        """``count`` (signature, body bytes) pairs stamped with the time now."""
        from peernet.records import make_record, new_nonce, sign_request

        out = []
        now_ms = int(time.time() * 1000)
        for _ in range(count):
            k = self.next
            self.next = (k + 1) % len(self.identities)
            ident = self.identities[k]
            self.versions[k] += 1
            signed = make_record(ident, [GOSSIP_ADDRESS], version=self.versions[k],
                                 issued_at_ms=now_ms)
            fields = {"type": "register", "peer_id": ident.peer_id,
                      "public_key": signed["record"]["public_key"],
                      "signed_record": signed, "timestamp": now_ms, "nonce": new_nonce()}
            body, sig = sign_request(ident, fields)
            out.append((sig, body))
        return out

    @staticmethod
    def write(pairs, path):
        with open(path, "wb") as f:
            for sig, body in pairs:
                if b"\n" in body or b"\t" in body:
                    raise BenchError("a register body contains a newline or tab, which the wrk file format cannot carry.")
                f.write(sig.encode("ascii") + b"\t" + body + b"\n")


def populate_peernet(base, bodies, peers, deadline_s=120):
    """Register ``peers`` peers one by one (keep-alive), checking every answer."""
    import http.client
    from peernet.records import SIGNATURE_HEADER

    host, port = base.rsplit("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    end = time.monotonic() + deadline_s
    done = 0
    try:
        while done < peers:
            batch = bodies.make(min(200, peers - done))  # fresh timestamps per batch
            for sig, body in batch:
                conn.request("POST", "/api/bootstrap/register", body=body,
                             headers={"Content-Type": "application/json",
                                      SIGNATURE_HEADER: sig})
                resp = conn.getresponse()
                answer = resp.read()
                if resp.status != 200:
                    raise BenchError(
                        f"registering peer {done + 1} of {peers} failed with HTTP "
                        f"{resp.status}: {answer[:300].decode(errors='replace')}")
                done += 1
                if time.monotonic() > end:
                    raise BenchError(f"populating the peernet server took over {deadline_s} s.")
    finally:
        conn.close()
    status, body = http_get(base + "/api/bootstrap/health")
    return json.loads(body) if status == 200 else {}


# -- wrk -----------------------------------------------------------------------


class Wrk:
    def __init__(self, procs, cpu, timeout_s=5):
        self.procs = procs
        self.cpu = cpu
        self.timeout_s = timeout_s
        self.common = (WRK_DIR / "common.lua").read_text()
        self.version = subprocess.run(["wrk", "-v"], capture_output=True, text=True,
                                      timeout=10).stdout.splitlines()[0].strip()

    def script(self, name):
        path = self.procs.workdir / f"wrk-{name}.lua"
        if not path.exists():
            path.write_text(self.common + "\n" + (WRK_DIR / f"{name}.lua").read_text())
        return path

    def run(self, url, connections, duration_s, script="plain", args=(), headers=(),
            server_pid=None):
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s",
                f"--timeout={self.timeout_s}s", "--latency", "-s", str(self.script(script))]
        for h in headers:
            argv += ["-H", h]
        argv += [url] + (["--"] + list(args) if args else [])
        if self.cpu is not None:
            argv = ["taskset", "-c", str(self.cpu)] + argv
        before_srv = cpu_seconds(server_pid) if server_pid else None
        before_kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        before_sys = system_cpu()
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=duration_s + 60)
        except BaseException:
            self.procs.stop(proc)
            raise
        wall = time.monotonic() - t0
        after_sys = system_cpu()
        after_kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        after_srv = cpu_seconds(server_pid) if server_pid else None
        match = re.search(r"^BENCHJSON (.*)$", out.decode(errors="replace"), re.M)
        if proc.returncode != 0 or not match:
            raise BenchError(
                f"wrk failed on {url} (exit {proc.returncode}): "
                f"{(err or out).decode(errors='replace').strip()[-300:]}")
        res = json.loads(match.group(1))
        secs = res["duration_us"] / 1e6
        res["rps"] = res["requests"] / secs if secs > 0 else 0.0
        wrk_cpu = ((after_kids.ru_utime + after_kids.ru_stime)
                   - (before_kids.ru_utime + before_kids.ru_stime))
        res["wrk_cpu_pct"] = 100.0 * wrk_cpu / wall if wall > 0 else None
        res["softirq_cpu_pct"] = 100.0 * (after_sys[1] - before_sys[1]) / wall
        busy = after_sys[0] - before_sys[0]
        if before_srv is not None and after_srv is not None:
            res["server_cpu_pct"] = 100.0 * (after_srv - before_srv) / wall
            # requests served per second of server CPU: comparable even when
            # the server was not saturated (load generator bound)
            used = after_srv - before_srv
            res["per_cpu_s"] = res["requests"] / used if used > 0 else None
            # CPU used by anything else on the machine (other users' jobs):
            # a large figure means the row was measured on a busy machine.
            res["other_cpu_pct"] = max(0.0, 100.0 * (busy - wrk_cpu - used) / wall)
        else:
            res["other_cpu_pct"] = None
            res["server_cpu_pct"] = None
            res["per_cpu_s"] = None
        return res


# -- report --------------------------------------------------------------------


def package_versions():
    out = {}
    for dist in ("twisted", "cryptography", "jsonschema", "peernet"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    for deb in ("wrk", "opentracker"):
        try:
            out[deb + " (deb)"] = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", deb], capture_output=True,
                text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            out[deb + " (deb)"] = None
    return out


def fmt_rate(x):
    return "-" if x is None else f"{x:,.0f}"


def fmt_ms(us):
    return "-" if us is None else f"{us / 1000:.2f}"


def fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}"


def fmt_pct(x):
    return "-" if x is None else f"{x:.0f}"


TABLE_HEADER = ["endpoint", "conns", "req/s", "p50 ms", "p99 ms", "errors",
                "srv CPU%", "wrk CPU%", "other CPU%", "req/CPU-s", "x opentracker", "x twisted-min"]


def table_rows(rows):
    out = []
    for r in rows:
        if r.get("skipped"):
            out.append([r["endpoint"], str(r["connections"]), "not run"]
                       + ["-"] * (len(TABLE_HEADER) - 3))
            continue
        out.append([r["endpoint"], str(r["connections"]), fmt_rate(r["rps"]),
                    fmt_ms(r["p50_us"]), fmt_ms(r["p99_us"]), str(r["bad"]),
                    fmt_pct(r["server_cpu_pct"]), fmt_pct(r["wrk_cpu_pct"]),
                    fmt_pct(r.get("other_cpu_pct")), fmt_rate(r.get("per_cpu_s")), fmt_ratio(r.get("vs_opentracker")), fmt_ratio(r.get("vs_twisted"))])
    return out


def text_table(rows):
    data = [TABLE_HEADER] + table_rows(rows)
    widths = [max(len(row[i]) for row in data) for i in range(len(TABLE_HEADER))]
    lines = []
    for n, row in enumerate(data):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows):
    lines = ["| " + " | ".join(TABLE_HEADER) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(TABLE_HEADER) - 1)) + "|"]
    for row in table_rows(rows):
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# -- the run -------------------------------------------------------------------

# endpoint key -> (label, reference used for "x twisted-min")
ENDPOINTS = {
    "announce": "opentracker GET /announce (conn/request)",
    "twisted": "twisted-min GET (keep-alive)",
    "twisted_close": "twisted-min GET (conn/request)",
    "discover": "peernet GET discover (keep-alive)",
    "discover_close": "peernet GET discover (conn/request)",
    "register": "peernet POST register (keep-alive)",
}
# like-for-like Twisted reference for each endpoint
TWISTED_REF = {"twisted": "twisted", "twisted_close": "twisted_close",
               "discover": "twisted", "discover_close": "twisted_close",
               "register": "twisted", "announce": "twisted_close"}
CLOSES = {"announce", "twisted_close", "discover_close"}  # one TCP connection per request


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="CI smoke mode: 2 concurrency levels, 2 s phases (< 60 s total)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                   help="comma-separated connection counts (default 1,8,32,64; quick: 8,32)")
    p.add_argument("--duration", type=int, help="seconds per timed phase (default 10; quick: 2)")
    p.add_argument("--peers", type=int, default=1000,
                   help="peers registered before measuring discover (default 1000)")
    p.add_argument("--identities", type=int, default=2000,
                   help="distinct identities the register phases cycle through (default 2000)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin servers and wrk to separate cores with taskset")
    p.add_argument("--skip-peernet", action="store_true",
                   help="measure only the two references (for testing the harness)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR,
                   help="directory for bootstrap_load.json/.md (default benchmarks/results)")
    args = p.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = [8, 32] if args.quick else [1, 8, 32, 64]
    if args.duration is None:
        args.duration = 2 if args.quick else 10
    if args.duration > 20:
        p.error("--duration must be at most 20 s: register bodies carry a timestamp "
                "that the server accepts for only 30 s")
    if min(args.concurrency) < 1 or max(args.concurrency) > 1000:
        p.error("--concurrency values must be between 1 and 1000")
    return args


def check_tools(pin):
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed; install the Debian package `wrk` (apt-get install wrk).")
    if shutil.which("opentracker") is None:
        raise BenchError("opentracker is not installed; install the Debian package `opentracker` (apt-get install opentracker).")
    if pin and shutil.which("taskset") is None:
        raise BenchError("taskset is not installed; install the Debian package `util-linux` or pass --no-pin.")


def check_python_env(need_peernet):
    """Twisted (reference server) and peernet (request signing) must import."""
    sys.path.insert(0, str(REPO))
    try:
        import twisted.web.server  # noqa: F401
        if need_peernet:
            import peernet.records  # noqa: F401
    except ImportError as exc:
        raise BenchError(f"cannot import what this benchmark needs ({exc}); run this script with the "
                         f"project's venv, e.g. .venv/bin/python benchmarks/bootstrap_load.py.")


def main(argv=None):
    args = parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    try:
        check_tools(pin)
        check_python_env(not args.skip_peernet)
    except BenchError as exc:
        print(f"bootstrap_load: {exc}", file=sys.stderr)
        return 1
    server_cpu, wrk_cpu = (cpus[1], cpus[0]) if pin else (None, None)
    pin_note = (f"each server pinned to CPU {server_cpu}, wrk (1 thread) to CPU {wrk_cpu} "
                f"with taskset" if pin else "no core pinning (--no-pin or fewer than 2 CPUs); "
                "wrk (1 thread) and the server share the cores")

    started = datetime.datetime.now(datetime.timezone.utc)
    idle_load = background_load(1.0)
    rows, notes, peernet_info = [], [], {}
    peernet_error = None
    workdir = tempfile.mkdtemp(prefix="peernet-bench-")
    os.chmod(workdir, 0o755)  # opentracker drops to "nobody" and must reach its rootdir
    procs = Processes(workdir)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    print(f"bootstrap_load: {len(args.concurrency)} concurrency levels {args.concurrency}, "
          f"{args.duration} s per phase; {pin_note}.", flush=True)
    if idle_load > 0.2:
        print(f"warning: other processes use {idle_load:.1f} cores before the run starts; "
              f"figures will be lower and noisier than on an idle machine.", flush=True)
    try:
        wrk = Wrk(procs, wrk_cpu)

        def measure(key, url, server_proc, **kw):
            for c in args.concurrency:
                res = wrk.run(url, c, args.duration, server_pid=server_proc.pid, **kw)
                add_row(key, c, res)

        def add_row(key, c, res):
            # opentracker and Connection: close runs end every connection on
            # purpose; wrk reports each end as a read error, so those are not
            # failures there.
            bad = (res["connect_errors"] + res["write_errors"] + res["status_errors"]
                   + res["timeouts"] + (0 if key in CLOSES else res["read_errors"]))
            row = {"endpoint": ENDPOINTS[key], "key": key, "connections": c,
                   "duration_s": args.duration, "bad": bad, **res}
            rows.append(row)
            print(f"  {row['endpoint']:<42} c={c:<4} {res['rps']:>10,.0f} req/s  "
                  f"p50 {fmt_ms(res['p50_us'])} ms  p99 {fmt_ms(res['p99_us'])} ms  "
                  f"errors {bad}  srv CPU {fmt_pct(res['server_cpu_pct'])}%  "
                  f"wrk CPU {fmt_pct(res['wrk_cpu_pct'])}%  "
                  f"other CPU {fmt_pct(res.get('other_cpu_pct'))}%", flush=True)
            if ((res.get("wrk_cpu_pct") or 0) >= 90
                    and (res.get("server_cpu_pct") or 100) < 85):
                notes.append(f"{row['endpoint']} c={c}: wrk used "
                             f"{res['wrk_cpu_pct']:.0f}% of its core while the server used "
                             f"{res['server_cpu_pct']:.0f}% of its own: the load generator "
                             f"was the limit, so this rate is a lower bound for the server "
                             f"(compare req/CPU-s).")
            if (res.get("other_cpu_pct") or 0) > 25:
                notes.append(f"{row['endpoint']} c={c}: other processes used "
                             f"{res['other_cpu_pct']:.0f}% of a core during the phase; "
                             f"this figure is likely low.")

        # 1. opentracker
        ot_proc, ot_base = start_opentracker(procs, server_cpu)
        populate_opentracker(ot_base, args.peers)
        measure("announce", ot_base + "/", ot_proc, script="announce",
                args=(INFO_HASH_URL, str(args.peers), str(NUMWANT)))
        procs.stop(ot_proc)

        # 2. minimal Twisted
        tw_proc, tw_base = start_twisted_reference(procs, server_cpu)
        measure("twisted", tw_base + "/", tw_proc)
        measure("twisted_close", tw_base + "/", tw_proc, headers=("Connection: close",))
        procs.stop(tw_proc)

        # 3. peernet
        if args.skip_peernet:
            peernet_error = "skipped (--skip-peernet)"
        else:
            try:
                pn_proc, pn_base, pn_cmd = start_peernet(procs, server_cpu,
                                                         Path(workdir) / "bootstrap.sqlite")
            except BenchError as exc:
                peernet_error = str(exc)
        if peernet_error is None:
            peernet_info["command"] = pn_cmd
            t0 = time.monotonic()
            health = populate_peernet(pn_base, RegisterBodies(args.peers), args.peers)
            peernet_info["populate_s"] = round(time.monotonic() - t0, 2)
            peernet_info["health_after_populate"] = health
            print(f"  peernet: registered {args.peers} peers in {peernet_info['populate_s']} s; "
                  f"health: {health}", flush=True)
            discover_url = pn_base + "/api/bootstrap/discover"
            status, body = http_get(discover_url)
            if status != 200:
                raise BenchError(f"GET /api/bootstrap/discover answered HTTP {status}: {body[:200]!r}")
            sample = json.loads(body)
            peernet_info["discover_body_bytes"] = len(body)
            peernet_info["discover_peers_returned"] = len(sample.get("peers", []))
            measure("discover", discover_url, pn_proc)
            measure("discover_close", discover_url, pn_proc, headers=("Connection: close",))

            # register: fresh signed bodies generated just before each phase
            reg = RegisterBodies(args.identities)  # not the populate identities
            estimate = 3000.0  # req/s guess for the first phase, then the best seen
            best = 0.0
            for c in args.concurrency:
                count = int(max(estimate * 1.5, 500) * args.duration) + 200
                g0 = time.monotonic()
                pairs = reg.make(count)
                gen_s = time.monotonic() - g0
                path = Path(workdir) / f"register-{c}.txt"
                RegisterBodies.write(pairs, path)
                res = wrk.run(pn_base + "/", c, args.duration, script="register",
                              args=(str(path),), server_pid=pn_proc.pid)
                res["bodies_generated"] = count
                res["generation_s"] = round(gen_s, 2)
                add_row("register", c, res)
                if res["exhausted"]:
                    notes.append(f"register c={c}: all {count} pre-generated requests were "
                                 f"used before {args.duration} s; the rate is over the "
                                 f"shorter time wrk ran.")
                non200 = {s: n for s, n in res["statuses"].items() if s != "200"}
                if non200:
                    notes.append(f"register c={c}: non-200 answers {non200} (not counted "
                                 f"as successful registrations).")
                best = max(best, res["rps"])
                estimate = max(best, 200.0)
            health_status, health_body = http_get(pn_base + "/api/bootstrap/health")
            if health_status == 200:
                peernet_info["health_after_run"] = json.loads(health_body)
            procs.stop(pn_proc)
        else:
            for key in ("discover", "discover_close", "register"):
                for c in args.concurrency:
                    rows.append({"endpoint": ENDPOINTS[key], "key": key, "connections": c,
                                 "skipped": True})
    except KeyboardInterrupt:
        print("interrupted; stopping the processes started by this run", file=sys.stderr)
        procs.stop_all()
        return 130
    except BenchError as exc:
        procs.stop_all()
        print(f"bootstrap_load: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, old_term)
        shutil.rmtree(workdir, ignore_errors=True)

    # ratios, by concurrency
    by = {(r["key"], r["connections"]): r for r in rows if not r.get("skipped")}
    for r in rows:
        if r.get("skipped"):
            continue
        ot = by.get(("announce", r["connections"]))
        tw = by.get((TWISTED_REF[r["key"]], r["connections"]))
        r["vs_opentracker"] = r["rps"] / ot["rps"] if ot and ot["rps"] else None
        r["vs_twisted"] = r["rps"] / tw["rps"] if tw and tw["rps"] else None

    target = evaluate_target(rows, by, args.concurrency, peernet_error)
    report = {
        "benchmark": "bootstrap_load",
        "date": started.isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": machine_facts(),
        "versions": dict(package_versions(), wrk_banner=wrk.version),
        "settings": {"concurrency": args.concurrency, "duration_s": args.duration,
                     "peers": args.peers, "register_identities": args.identities,
                     "pinning": pin_note, "wrk_threads": 1, "numwant": NUMWANT,
                     "other_load_before_run_cores": round(idle_load, 2)},
        "peernet": {"error": peernet_error, **peernet_info},
        "results": rows,
        "target": target,
        "notes": notes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bootstrap_load.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "bootstrap_load.md").write_text(markdown_report(report))

    print()
    print(text_table(rows))
    print()
    for n in notes:
        print("note: " + n)
    if peernet_error:
        print(f"peernet not measured: {peernet_error}")
    print(target["summary"])
    print(f"wrote {args.out / 'bootstrap_load.json'} and {args.out / 'bootstrap_load.md'}")
    return 0 if peernet_error is None or args.skip_peernet else 1


def evaluate_target(rows, by, levels, peernet_error):
    """discover >= 0.5 x opentracker announce, per concurrency level."""
    if peernet_error:
        return {"verdict": "NOT EVALUATED",
                "summary": f"target discover >= 0.5 x opentracker announce: NOT EVALUATED "
                           f"(peernet server not measured)"}
    per_level = []
    for c in levels:
        ot = by.get(("announce", c))
        for key in ("discover_close", "discover"):
            d = by.get((key, c))
            if ot and d:
                per_level.append({"connections": c, "endpoint": key,
                                  "ratio": d["rps"] / ot["rps"]})
    def verdict(key):
        ratios = [p["ratio"] for p in per_level if p["endpoint"] == key]
        return ("PASS" if ratios and min(ratios) >= 0.5 else "FAIL"), ratios
    like, like_r = verdict("discover_close")
    keep, keep_r = verdict("discover")
    fmt = lambda rs: ", ".join(f"c={c}: {r:.2f}" for c, r in zip(levels, rs))
    summary = (f"target discover >= 0.5 x opentracker announce (like for like, one TCP "
               f"connection per request, every level): {like} [{fmt(like_r)}]; "
               f"with keep-alive discover: {keep} [{fmt(keep_r)}]")
    return {"verdict": like, "verdict_keepalive": keep, "per_level": per_level,
            "summary": summary}


def markdown_report(report):
    m, v, s = report["machine"], report["versions"], report["settings"]
    lines = [
        "# bootstrap_load results",
        "",
        f"- date: {report['date']} ({report['mode']} mode)",
        f"- machine: {m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, "
        f"Python {m['python']}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- settings: concurrency {s['concurrency']}, {s['duration_s']} s per phase, "
        f"{s['peers']} peers registered before discover, register cycles through "
        f"{s['register_identities']} identities, opentracker numwant={s['numwant']}",
        f"- {s['pinning']}",
        f"- other processes' load just before the run: "
        f"{s['other_load_before_run_cores']} cores",
        "",
        markdown_table(report["results"]),
        "",
        f"**{report['target']['summary']}**",
        "",
    ]
    if report["peernet"].get("error"):
        lines += [f"peernet not measured: {report['peernet']['error']}", ""]
    for n in report["notes"]:
        lines.append(f"- note: {n}")
    lines += ["", "See benchmarks/README.md for what each row measures.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
