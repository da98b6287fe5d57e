"""A private PostgreSQL cluster for tests: initdb in a fresh directory, listening
on 127.0.0.1 and a socket in that directory, stopped by pid afterwards.

The cluster uses the Debian ``postgresql`` package (scripts/test.sh installs it).
``initdb`` refuses to run as root, so as root the cluster belongs to the
``postgres`` user.  fsync is off: the tests check behaviour, not durability.
"""

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

PG_USER = "peernet"
START_ATTEMPTS = 3


def pg_bin(name):
    """The path of a PostgreSQL server program: Debian keeps them in a versioned
    directory (the newest installed version wins); elsewhere, on PATH."""
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    if found:
        return found
    raise RuntimeError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """One test cluster.  ``start()``, ``url(dbname)``, ``create_database()``,
    ``stop()`` (also to simulate an outage; ``start()`` again on the same port)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="peernet-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = None
        self.pid = None
        self._as_root = os.geteuid() == 0
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run([pg_bin("initdb"), "--no-sync", "-D", self.data, "-A", "trust",
                   "-U", PG_USER, "-E", "UTF8"])

    def _run(self, argv, check=True):
        if self._as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stdout}")
        return result

    def start(self):
        ports = [self.port] if self.port else [free_port() for _ in range(START_ATTEMPTS)]
        for port in ports:
            options = (f"-p {port} -k {self.dir} -c listen_addresses=127.0.0.1"
                       " -c fsync=off -c full_page_writes=off -c max_connections=200")
            result = self._run([pg_bin("pg_ctl"), "-D", self.data, "-o", options,
                                "-l", os.path.join(self.dir, "log"), "-w", "-t", "60",
                                "start"], check=False)
            if result.returncode == 0:
                self.port = port
                with open(os.path.join(self.data, "postmaster.pid")) as f:
                    self.pid = int(f.readline())
                return self
        with open(os.path.join(self.dir, "log")) as f:
            raise RuntimeError(f"PostgreSQL did not start:\n{result.stdout}\n{f.read()[-2000:]}")

    def stop(self):
        """Stop the postmaster by pid (immediate shutdown), waiting until it is gone."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        try:
            os.kill(pid, signal.SIGQUIT)  # PostgreSQL's "immediate shutdown"
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            if _is_zombie(pid):
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
        # A stale pid file would make the next start wait for nothing.
        try:
            os.unlink(os.path.join(self.data, "postmaster.pid"))
        except FileNotFoundError:
            pass

    def destroy(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, dbname="postgres"):
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix="t"):
        """A new empty database; its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


# -- pytest fixtures (import them by name into a test module) ---------------------

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def postgres_cluster():
    """One private PostgreSQL cluster for the test session, stopped by pid."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def postgres_url(postgres_cluster):
    """The URL of a new, empty database on the session's cluster."""
    return postgres_cluster.create_database()
