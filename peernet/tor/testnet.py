"""A private Tor network on 127.0.0.1, built from the Debian ``tor`` binary.

Used by the integration tests (a session fixture) and by ``benchmarks/tor.py``:
three directory authorities (keys made with ``tor-gencert``) and two more relays,
all exits for 127.0.0.0/8 only, with the fast voting schedule of a testing
network.  Then any number of client tors (``start_client``), each with a SOCKS
port and a control port on loopback, able to reach loopback services through an
exit and to host onion services (ADD_ONION / txtorcon).

This module is for scripts and tests, not for code running inside a reactor:
``start()`` blocks (plain subprocesses and polling, every wait bounded).  Every
tor it starts writes its log to ``WORKDIR/<name>.log`` and is stopped by pid in
``stop()``, also when ``start()`` fails; each torrc also names this process as
the owning controller, so a tor never outlives a crashed test run.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time

from peernet.errors import PeernetError

AUTHORITIES = 3
RELAYS = 2
START_TIMEOUT = 180.0
CLIENT_TIMEOUT = 120.0
POLL = 0.2

# The settings every node of the network needs, besides the DirAuthority lines
# (NOTES.md: "Tor private network").  A testing network lowers many defaults at
# once (TestingTorNetwork); the voting schedule makes the first consensus appear
# within seconds, and a fixed circuit build timeout keeps a loaded machine from
# learning a timeout that is too short.
COMMON_LINES = [
    "TestingTorNetwork 1",
    "TestingV3AuthInitialVotingInterval 5",
    "TestingV3AuthInitialVoteDelay 2",
    "TestingV3AuthInitialDistDelay 2",
    "V3AuthVotingInterval 10",
    "V3AuthVoteDelay 2",
    "V3AuthDistDelay 2",
    "LearnCircuitBuildTimeout 0",
    "CircuitBuildTimeout 60",
    "NumCPUs 1",
    # Full descriptors, not microdescriptors: a microdescriptor summarises an
    # exit policy for the public internet only, so exits for 127.0.0.0/8 alone
    # would look like no exits at all (tor ticket 11264) and clients could not
    # reach loopback services.
    "UseMicrodescriptors 0",
]

# Relays (authorities included) are exits for loopback only: clients reach
# loopback test services through the network, nothing else.
RELAY_LINES = [
    "Address 127.0.0.1",
    # skip the ORPort self-test (up to 20 s each): loopback is reachable
    "AssumeReachable 1",
    "ExitRelay 1",
    "ExitPolicyRejectPrivate 0",
    "ExitPolicyRejectLocalInterfaces 0",
    "ExitPolicy accept 127.0.0.0/8:*",
    "ExitPolicy reject *:*",
    "SocksPort 0",
    "ContactInfo peernet-testnet@localhost",
]

# Authorities vote every flag onto every relay at once instead of waiting for
# uptime and bandwidth measurements (an onion service needs HSDirs and guards).
AUTHORITY_LINES = [
    "AuthoritativeDirectory 1",
    "V3AuthoritativeDirectory 1",
    "TestingDirAuthVoteGuard *",
    "TestingDirAuthVoteExit *",
    "TestingDirAuthVoteHSDir *",
    "TestingMinExitFlagThreshold 0",
]

_BOOTSTRAPPED = re.compile(r"Bootstrapped (\d+)%")
_SOCKS_OPENED = re.compile(r"Opened Socks listener connection \(ready\) on 127\.0\.0\.1:(\d+)")


class TorNetworkError(PeernetError):
    """The private Tor network (or a client on it) could not be started."""

    code = "tor_testnet"


def tor_binary():
    """Path of ``tor``, or a TorNetworkError saying how to get it."""
    path = shutil.which("tor")
    if path is None:
        raise TorNetworkError("the tor binary is not installed (apt-get install tor)")
    return path


def free_ports(count):
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent():
    """In the child before exec: SIGTERM when the process that started it dies.

    Belt and braces with __OwningControllerProcess (which some tor roles, e.g.
    directory authorities, were seen to outlive): a crashed test run must not
    leave tor processes behind."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def log_tail(path, lines=25):
    try:
        with open(path, "rb") as f:
            data = f.read()[-20000:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:])


class TorProcess:
    """One tor subprocess: its torrc, data directory and log file in ``workdir``."""

    def __init__(self, workdir, name, lines):
        self.workdir = workdir
        self.name = name
        self.data_dir = os.path.join(workdir, name)
        self.torrc_path = os.path.join(workdir, f"{name}.torrc")
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.lines = list(lines)
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # tor refuses a group-readable DataDirectory
        torrc = [
            f"DataDirectory {self.data_dir}",
            f"Nickname {self.name.replace('-', '')}",
            "Log notice stdout",
            "RunAsDaemon 0",
            # tor exits by itself if this (the controlling) process dies
            f"__OwningControllerProcess {os.getpid()}",
        ] + self.lines
        with open(self.torrc_path, "w") as f:
            f.write("\n".join(torrc) + "\n")
        env = dict(os.environ, MALLOC_ARENA_MAX="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [tor_binary(), "-f", self.torrc_path, "--ignore-missing-torrc"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=self.workdir, preexec_fn=_die_with_parent,
            )
        return self

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def bootstrapped(self):
        """Highest "Bootstrapped N%" seen in the log (0 if none)."""
        found = _BOOTSTRAPPED.findall(self.log())
        return max((int(n) for n in found), default=0)

    def failure(self, what):
        status = self.proc.poll() if self.proc else None
        state = "exited with status %s" % status if status is not None else "still running"
        return TorNetworkError(
            f"{what} ({self.name} {state}); last lines of {self.log_path}:\n"
            + log_tail(self.log_path))

    def stop(self, timeout=10.0):
        """Stop by pid: SIGTERM (tor exits at once), SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        except ProcessLookupError:
            pass


class TorClientProcess(TorProcess):
    """A client tor on the private network with a SOCKS port and a control port.

    It can host onion services (ADD_ONION through the control port, e.g. with
    txtorcon).  Control authentication is by cookie (``cookie_path``), which
    txtorcon finds by itself through PROTOCOLINFO.
    """

    socks_port = None
    control_port = None

    @property
    def control_endpoint(self):
        """Twisted client endpoint string of the control port."""
        return f"tcp:127.0.0.1:{self.control_port}"

    @property
    def socks_endpoint(self):
        return f"tcp:127.0.0.1:{self.socks_port}"

    @property
    def cookie_path(self):
        return os.path.join(self.data_dir, "control_auth_cookie")

    def wait_ready(self, timeout):
        """Block until the ports are known and tor has bootstrapped 100%."""
        port_file = os.path.join(self.data_dir, "control.port")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise self.failure(f"client tor {self.name} stopped before bootstrapping")
            log = self.log()
            if self.socks_port is None:
                m = _SOCKS_OPENED.search(log)
                if m:
                    self.socks_port = int(m.group(1))
            if self.control_port is None and os.path.exists(port_file):
                with open(port_file) as f:
                    m = re.search(r"PORT=127\.0\.0\.1:(\d+)", f.read())
                if m:
                    self.control_port = int(m.group(1))
            if (self.socks_port and self.control_port
                    and "Bootstrapped 100%" in log):
                return self
            time.sleep(POLL)
        raise self.failure(f"client tor {self.name} did not bootstrap within {timeout:.0f} s")


class PrivateTorNetwork:
    """Three directory authorities and two relays on 127.0.0.1, plus clients.

    ``PrivateTorNetwork(workdir, base_port=None)``: with ``base_port`` the
    relays use consecutive ports from there (ORPort, and DirPort for the
    authorities); without it, ports the kernel reported free.

    ``start(timeout)`` returns once the consensus lists every relay as Running
    and a probe client reached "Bootstrapped 100%" (so circuits really build).
    ``stop()`` stops every tor started here, clients included; it is
    idempotent and also runs when ``start()`` fails.
    """

    def __init__(self, workdir, base_port=None, authorities=AUTHORITIES, relays=RELAYS):
        self.workdir = os.path.abspath(workdir)
        self.base_port = base_port
        self.n_authorities = authorities
        self.n_relays = relays
        self.authorities = []
        self.relays = []
        self.clients = []
        self.dir_authority_lines = []
        self.started_at = None
        self.ready_after = None  # seconds from start() to a usable network
        self._next_port = base_port
        self._stopped = False

    # -- public interface ----------------------------------------------------

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def processes(self):
        return self.authorities + self.relays + self.clients

    @property
    def pids(self):
        return [p.pid for p in self.processes if p.pid is not None]

    def client_torrc_lines(self):
        """The "Key value" lines a client or onion-service tor needs to join.

        Usable as torrc lines, or as txtorcon config items (split each at the
        first space; DirAuthority appears several times, so collect it as a list).
        """
        if not self.dir_authority_lines:
            raise TorNetworkError("the private Tor network is not started")
        return list(COMMON_LINES) + list(self.dir_authority_lines)

    def description(self):
        """What another process needs to join this network (JSON-able); see attach()."""
        if not self.dir_authority_lines:
            raise TorNetworkError("the private Tor network is not started")
        return {"dir_authority_lines": list(self.dir_authority_lines),
                "ready_after": self.ready_after,
                "relays": [p.name for p in self.authorities + self.relays]}

    @classmethod
    def attach(cls, description, workdir):
        """A handle on a network another process started (``description()``).

        It starts and stops only its own client tors (in ``workdir``); the
        authorities and relays stay with the process that started them.
        """
        network = cls(workdir)
        network.dir_authority_lines = list(description["dir_authority_lines"])
        network.ready_after = description.get("ready_after")
        os.makedirs(network.workdir, exist_ok=True)
        return network

    def client_config(self):
        """``client_torrc_lines()`` as a dict for txtorcon's TorConfig: key -> value,
        or key -> list of values for a repeated key (DirAuthority)."""
        config = {}
        for line in self.client_torrc_lines():
            key, value = line.split(" ", 1)
            if key in config:
                if not isinstance(config[key], list):
                    config[key] = [config[key]]
                config[key].append(value)
            elif key == "DirAuthority":
                config[key] = [value]
            else:
                config[key] = value
        return config

    def start(self, timeout=START_TIMEOUT):
        """Start the network; block until it is usable or raise TorNetworkError."""
        if self.authorities or self._stopped:
            raise TorNetworkError("a PrivateTorNetwork starts once; make a new one")
        self.started_at = time.monotonic()
        deadline = self.started_at + timeout
        try:
            tor_binary()
            if shutil.which("tor-gencert") is None:
                raise TorNetworkError("tor-gencert is not installed (apt-get install tor)")
            os.makedirs(self.workdir, exist_ok=True)
            self._make_authorities()
            for i in range(self.n_relays):
                (orport,) = self._ports(1)
                self.relays.append(TorProcess(
                    self.workdir, f"relay{i}",
                    COMMON_LINES + RELAY_LINES + self.dir_authority_lines
                    + [f"ORPort 127.0.0.1:{orport}"]))
            for node in self.authorities + self.relays:
                node.start()
            self._wait_consensus(deadline)
            probe = self.start_client(
                "probe", timeout=max(1.0, deadline - time.monotonic()))
            probe.stop()
            self.clients.remove(probe)
            self.ready_after = time.monotonic() - self.started_at
            return self
        except BaseException:
            self.stop()
            self.dir_authority_lines = []  # nobody may join a network that failed
            raise

    def start_client(self, name, socks_port=None, control_port=None, timeout=CLIENT_TIMEOUT,
                     extra_lines=(), wait=True):
        """Start a client tor named ``name``; block until it has bootstrapped 100%.

        Ports default to ones tor picks itself (read back from its log and
        ControlPortWriteToFile), so they cannot be raced.  Stopped by ``stop()``.
        With ``wait=False`` it returns at once (ports not known yet): call the
        client's ``wait_ready(timeout)`` later, e.g. to start several in parallel.
        """
        if not self.dir_authority_lines:
            raise TorNetworkError("the private Tor network is not started")
        if self._stopped:
            raise TorNetworkError("the private Tor network was stopped")
        if any(c.name == name and c.running() for c in self.clients):
            raise TorNetworkError(f"a client tor named {name!r} is already running")
        # a stopped client's name (and data directory) may be used again
        self.clients = [c for c in self.clients if c.name != name]
        data_dir = os.path.join(self.workdir, name)
        lines = self.client_torrc_lines() + [
            f"SocksPort 127.0.0.1:{socks_port or 'auto'}",
            f"ControlPort 127.0.0.1:{control_port or 'auto'}",
            f"ControlPortWriteToFile {os.path.join(data_dir, 'control.port')}",
            "CookieAuthentication 1",
        ] + list(extra_lines)
        client = TorClientProcess(self.workdir, name, lines)
        port_file = os.path.join(data_dir, "control.port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        self.clients.append(client)
        try:
            client.start()
            return client.wait_ready(timeout) if wait else client
        except BaseException:
            client.stop()
            self.clients.remove(client)
            raise

    def stop(self):
        """Stop every tor started here (clients first), by pid.  Idempotent."""
        self._stopped = True
        for node in reversed(self.processes):
            try:
                node.stop()
            except Exception:  # keep stopping the others
                if node.proc is not None and node.proc.poll() is None:
                    node.proc.kill()

    # -- building the network ------------------------------------------------

    def _ports(self, count):
        if self.base_port is None:
            return free_ports(count)
        ports = list(range(self._next_port, self._next_port + count))
        self._next_port += count
        return ports

    def _make_authorities(self):
        """Keys and certificates for each authority, then the DirAuthority lines."""
        specs = []
        for i in range(self.n_authorities):
            name = f"auth{i}"
            orport, dirport = self._ports(2)
            data_dir = os.path.join(self.workdir, name)
            keys = os.path.join(data_dir, "keys")
            os.makedirs(keys, mode=0o700, exist_ok=True)
            os.chmod(data_dir, 0o700)
            self._run([
                "tor-gencert", "--create-identity-key", "-m", "12",
                "-a", f"127.0.0.1:{dirport}",
                "-i", os.path.join(keys, "authority_identity_key"),
                "-s", os.path.join(keys, "authority_signing_key"),
                "-c", os.path.join(keys, "authority_certificate"),
                "--passphrase-fd", "0",
            ], stdin=b"\n", what=f"tor-gencert for {name}")
            with open(os.path.join(keys, "authority_certificate")) as f:
                v3ident = re.search(r"^fingerprint ([0-9A-F]{40})$", f.read(), re.M).group(1)
            # The relay identity fingerprint: tor makes the key and prints it.
            out = self._run([
                tor_binary(), "--ignore-missing-torrc", "-f", os.devnull,
                "--DataDirectory", data_dir, "--ORPort", str(orport),
                "--DirAuthority", "x 127.0.0.1:1 " + "F" * 40,
                "--list-fingerprint", "--quiet",
            ], what=f"tor --list-fingerprint for {name}")
            # "Nickname AAAA BBBB ... (10 groups of 4 hex digits)"
            fingerprint = "".join(out.strip().splitlines()[-1].split()[-10:])
            if not re.fullmatch(r"[0-9A-F]{40}", fingerprint):
                raise TorNetworkError(f"could not read the fingerprint of {name}: {out!r}")
            specs.append((name, orport, dirport))
            self.dir_authority_lines.append(
                f"DirAuthority {name} orport={orport} no-v2 v3ident={v3ident} "
                f"127.0.0.1:{dirport} {fingerprint}")
        for name, orport, dirport in specs:
            self.authorities.append(TorProcess(
                self.workdir, name,
                COMMON_LINES + RELAY_LINES + AUTHORITY_LINES + self.dir_authority_lines
                + [f"ORPort 127.0.0.1:{orport}", f"DirPort 127.0.0.1:{dirport}"]))

    def _run(self, argv, what, stdin=None):
        env = dict(os.environ, MALLOC_ARENA_MAX="1")
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, timeout=60, env=env)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise TorNetworkError(f"{what} failed: {e}") from None
        if done.returncode != 0:
            raise TorNetworkError(
                f"{what} failed with status {done.returncode}: "
                + (done.stderr + done.stdout).decode("utf-8", "replace")[-2000:])
        return done.stdout.decode("utf-8", "replace")

    def running_relays(self):
        """Nicknames listed as Running in the newest consensus an authority holds."""
        best = set()
        for auth in self.authorities:
            path = os.path.join(auth.data_dir, "cached-consensus")
            try:
                with open(path) as f:
                    text = f.read()
            except OSError:
                continue
            running, nick = set(), None
            for line in text.splitlines():
                if line.startswith("r "):
                    nick = line.split()[1]
                elif line.startswith("s ") and nick is not None:
                    if "Running" in line.split():
                        running.add(nick)
                    nick = None
            if len(running) > len(best):
                best = running
        return best

    def _wait_consensus(self, deadline):
        wanted = {p.name.replace("-", "") for p in self.authorities + self.relays}
        while time.monotonic() < deadline:
            for node in self.authorities + self.relays:
                if not node.running():
                    raise node.failure(f"tor {node.name} stopped while the network started")
            if wanted <= self.running_relays():
                return
            time.sleep(POLL * 2)
        laggard = min(self.authorities + self.relays, key=lambda n: n.bootstrapped())
        raise laggard.failure(
            "the private Tor network had no consensus listing every relay as Running "
            f"in time (running: {sorted(self.running_relays()) or 'none'})")
