"""Run a real peernet network of processes on this machine's loopback.

Used by the demo, the integration tests and the benchmarks: every node is a
real ``twist bootstrap`` / ``twist peer`` subprocess; each broadcasting peer
listens on its own 127.0.0.x address, and silent peers dial from their own
(``--bind-address``), so tests can search logs and databases for an address.

Everything started is stopped by pid (``DevNet`` is a context manager), and
every wait is bounded.  Control calls are plain blocking HTTP (this module is
for scripts and tests, not for code running inside a reactor).
"""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

START_TIMEOUT = 30.0


def twist_command():
    twist = os.path.join(os.path.dirname(sys.executable), "twist")
    return [twist] if os.path.exists(twist) else [sys.executable, "-m", "twisted"]



def stop_process(proc, sig=signal.SIGTERM, timeout=15):
    """Send ``sig`` to a running ``proc`` and wait up to ``timeout`` s for it
    to exit, then SIGKILL it (and reap it)."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)

class NodeProcess:
    """One ``twist`` subprocess with its own log file."""

    kind = "node"
    #: extra environment variables (e.g. PATH for tests without tor), and a
    #: command prefix (e.g. ``ip netns exec NS``, which execs: same pid)
    env = None
    prefix = ()

    def __init__(self, workdir, args, name):
        self.workdir = workdir
        self.args = list(args)
        self.name = name
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.proc = None
        self._offset = 0

    def start(self):
        os.makedirs(self.workdir, exist_ok=True)
        self._offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                list(self.prefix) + twist_command() + ["--log-format=text", self.kind]
                + self.args,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, env=dict(os.environ, **self.env) if self.env else None,
            )
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self, since_start=False):
        with open(self.log_path, "rb") as f:
            if since_start:
                f.seek(self._offset)
            return f.read().decode("utf-8", "replace")

    def wait_for_log(self, pattern, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log(since_start=True))
            if match:
                return match
            if not self.running():
                raise RuntimeError(f"{self.name} exited early:\n{self.log(since_start=True)[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: {pattern!r} not seen in {timeout} s")

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc is not None:
            stop_process(self.proc, sig, timeout)

    def kill9(self):
        self.stop(signal.SIGKILL)


class BootstrapNode(NodeProcess):
    kind = "bootstrap"

    def __init__(self, workdir, host="127.0.0.1", extra=(), *, db_path=None, listen=None,
                 scheme="http"):
        self.db_path = db_path or os.path.join(workdir, "bootstrap.sqlite")
        super().__init__(workdir, ["--listen", listen or f"tcp:0:interface={host}",
                                   "--db", self.db_path, *extra], "bootstrap")
        self.host = host
        self.scheme = scheme
        self.port = None

    def start(self):
        super().start()
        self.port = int(self.wait_for_log(r"listening on [\d.]+:(\d+)").group(1))
        return self

    def restart(self):
        """Start again on the same port and database."""
        self.args[1] = f"tcp:{self.port}:interface={self.host}"
        return self.start()

    @property
    def url(self):
        return f"{self.scheme}://{self.host}:{self.port}"

    def health(self, timeout=10):
        """The server's /api/bootstrap/health answer (plain HTTP only)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", "/api/bootstrap/health")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()


class PeerNode(NodeProcess):
    kind = "peer"

    def __init__(self, workdir, name, *, broadcast, host, bootstraps=(), extra=(), env=None,
                 prefix=(), start_timeout=START_TIMEOUT):
        """``host``: a broadcasting peer listens there, a silent one dials from
        there (None: no --bind-address, e.g. with --tor).  ``env``, ``prefix``:
        see NodeProcess; ``start_timeout`` bounds the start (tor takes longer)."""
        self.state_dir = os.path.join(workdir, name)
        args = ["--state-dir", self.state_dir]
        for url in bootstraps:
            args += ["--bootstrap", url]
        if broadcast:
            args += ["--broadcast", "--listen", f"tcp:0:interface={host}"]
        elif host is not None:
            args += ["--bind-address", host]
        super().__init__(workdir, args + list(extra), name)
        self.env = dict(env) if env else None
        self.prefix = tuple(prefix)
        self.start_timeout = start_timeout
        self.host = host
        self.broadcast = broadcast
        self.control_url = None
        self.token = None

    def start(self):
        url_file = os.path.join(self.state_dir, "control.url")
        if os.path.exists(url_file):
            os.unlink(url_file)
        super().start()
        self.wait_for_log(r"control API on http://", timeout=self.start_timeout)
        deadline = time.monotonic() + self.start_timeout
        while not os.path.exists(url_file) and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(url_file) as f:
            self.control_url = f.read().strip()
        with open(os.path.join(self.state_dir, "control.token")) as f:
            self.token = f.read().strip()
        if self.broadcast:
            self.wait_for_log(r"gossip listening on port", timeout=self.start_timeout)
            # "listening" is logged before the node's record is issued; callers
            # that publish repos right away need the node to be broadcasting.
            while not self.status().get("broadcasting"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start broadcasting "
                                       f"within {self.start_timeout} s")
                time.sleep(0.02)
        return self

    # -- control API --------------------------------------------------------------

    def api(self, method, path, body=None, timeout=30):
        parts = urlsplit(self.control_url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, "/api/" + path, body=data, headers=headers)
            resp = conn.getresponse()
            answer = json.loads(resp.read() or b"null")
        finally:
            conn.close()
        if resp.status >= 400:
            raise RuntimeError(f"{self.name} {path}: {resp.status} {answer}")
        return answer

    def status(self):
        return self.api("GET", "status")

    def peers(self):
        return self.api("GET", "peers")["peers"]

    def peer_id(self):
        return self.status()["peer_id"]

    def search(self, repo=None, peer=None, network_only=False, timeout=5):
        query = {"repo": repo} if repo is not None else {"peer": peer}
        query.update(network_only=network_only, timeout=timeout)
        return self.api("POST", "search", query, timeout=timeout + 10)["results"]

    def set_repos(self, repos):
        return self.api("POST", "repos", {"repos": repos})["version"]

    def broadcast(self, on):
        return self.api("POST", "broadcast", {"on": on})


class DevNet:
    """A bootstrap server plus broadcasting and silent peers on loopback.

    Broadcasting peer i listens on 127.0.0.(10 + i); silent peer j dials
    from 127.0.0.(77 + j).  ``workers`` > 1 starts that many peers at a time
    (a 30-peer network starts in a third of the time).
    """

    def __init__(self, workdir, broadcasting=3, silent=1, bootstrap=True, peer_args=(),
                 extra_by_name=None, workers=1):
        self.workdir = os.path.abspath(workdir)
        self.n_broadcasting = broadcasting
        self.n_silent = silent
        self.with_bootstrap = bootstrap
        self.peer_args = list(peer_args)
        self.extra_by_name = dict(extra_by_name or {})
        self.workers = workers
        self.bootstrap = None
        self.broadcasters = []
        self.silent = []

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        os.makedirs(self.workdir, exist_ok=True)
        urls = []
        if self.with_bootstrap:
            self.bootstrap = BootstrapNode(self.workdir).start()
            urls = [self.bootstrap.url]
        specs = [dict(name=f"peer{i + 1}", broadcast=True, host=f"127.0.0.{10 + i}",
                      bootstraps=urls) for i in range(self.n_broadcasting)]
        specs += [dict(name=f"silent{j + 1}", broadcast=False, host=f"127.0.0.{77 + j}",
                       bootstraps=urls) for j in range(self.n_silent)]
        self.add_peers(specs, self.workers)
        return self

    def add_peer(self, name, *, broadcast, host, bootstraps=None, extra=(), env=None,
                 prefix=(), start=True):
        """A new peer (started unless ``start`` is false); it is in
        ``self.peers`` before it starts, so stop() ends it even if starting fails."""
        if bootstraps is None:
            bootstraps = [self.bootstrap.url] if self.bootstrap else []
        extra = self.peer_args + self.extra_by_name.get(name, []) + list(extra)
        node = PeerNode(self.workdir, name, broadcast=broadcast, host=host,
                        bootstraps=bootstraps, extra=extra, env=env, prefix=prefix)
        (self.broadcasters if broadcast else self.silent).append(node)
        return node.start() if start else node

    def add_peers(self, specs, workers=8):
        """Start peers from ``specs`` (add_peer keyword dicts), ``workers`` at a
        time: the threads only wait for log lines and files."""
        nodes = [self.add_peer(start=False, **spec) for spec in specs]
        if workers <= 1:
            for node in nodes:
                node.start()
            return nodes
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(node.start) for node in nodes]:
                future.result()  # re-raises the first start failure
        return nodes

    @property
    def peers(self):
        return self.broadcasters + self.silent

    def running_peers(self):
        return [p for p in self.peers if p.running()]

    def wait(self, predicate, timeout, interval=0.1):
        """Poll ``predicate()`` until true; returns seconds waited, or None."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                if predicate():
                    return time.monotonic() - start
            except (OSError, RuntimeError, ValueError):
                pass
            time.sleep(interval)
        return None

    def converged(self, peer_ids=None):
        """Every running peer's table holds every running broadcasting peer."""
        if peer_ids is None:
            peer_ids = {p.peer_id() for p in self.broadcasters if p.running()}
        for p in self.running_peers():
            have = {x["peer_id"] for x in p.peers() if x["broadcasting"]}
            if not peer_ids <= have:
                return False
        return True

    def stop(self, timeout=15):
        """SIGTERM to every peer at once, then wait for each (SIGKILL after
        ``timeout`` s); the bootstrap last, since peers unregister on the way out."""
        nodes = [n for n in reversed(self.peers) if n.running()]
        for node in nodes:
            node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in nodes:
            try:
                node.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(5)
        if self.bootstrap is not None:
            self.bootstrap.stop()
