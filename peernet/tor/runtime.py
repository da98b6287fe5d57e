"""TorRuntime: a bootstrapped tor this node sends its traffic through.

Two ways to get one, both ending in the same object:

* :func:`launch_tor` starts a private ``tor`` process with its data directory
  in the node's state directory (so its guards and consensus survive
  restarts), a SOCKS port and a control port on 127.0.0.1 that tor picks
  itself (read back, never raced), cookie authentication, and this process
  as its owner (tor exits when we do, even after ``kill -9``).
* :func:`attach_tor` connects to a running tor's control port (an endpoint
  string such as ``unix:/run/tor/control`` or ``tcp:127.0.0.1:9051``; cookie,
  no-auth or a password file) and uses that tor's SOCKS port.

Either way the call waits until tor reports ``Bootstrapped 100%``, at most
``timeout`` seconds.  Every failure is a :class:`TorUnavailable` whose
message is one sentence for the user (no traceback).

What the runtime offers the rest of the peer:

* :meth:`TorRuntime.stream_endpoint`: a client endpoint to ``(host, port)``
  through the SOCKS port (gossip links, and with :meth:`http_agent` the
  bootstrap API).  Host names, ``.onion`` included, are resolved by tor, so
  no DNS query leaves the machine.
* :meth:`TorRuntime.libtorrent_settings`: libtorrent's SOCKS5 proxy settings.
* :meth:`TorRuntime.map_address`: libtorrent dials IP endpoints only, so an
  onion (or any) host name is given a virtual address by tor's
  ``MAPADDRESS``; a connection to it through the SOCKS port reaches the name.
* :meth:`TorRuntime.publish_onion`: a v3 onion service (ADD_ONION) whose key
  is kept in a file (mode 0600), so the address survives restarts.
"""

import ipaddress
import os
import re
import shutil

from twisted.internet import defer, error as internet_error, protocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.endpoints import TCP4ClientEndpoint, clientFromString, wrapClientTLS
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from peernet.errors import ConfigError, PeernetError

log = Logger()

#: Default bound on tor reaching "Bootstrapped 100%" (launch or attach).
BOOTSTRAP_TIMEOUT = 120.0
#: Connecting to (and authenticating on) a control port.
CONTROL_TIMEOUT = 15.0
#: Adding an onion service (ADD_ONION answers at once; this bounds a stuck tor).
ONION_PUBLISH_TIMEOUT = 30.0
#: Longest wait for a first descriptor upload before announcing anyway.
ONION_UPLOAD_WAIT = 90.0
#: How often the bootstrap progress is polled.
POLL_INTERVAL = 0.25
#: Lines of tor's own output kept for error messages.
OUTPUT_LINES = 40
#: Seconds a launched tor gets to exit after SIGTERM before SIGKILL.
STOP_GRACE = 5.0
#: Connect timeout of the TCP connection to the SOCKS port itself.
SOCKS_CONNECT_TIMEOUT = 10.0


class TorUnavailable(PeernetError):
    """Tor is missing, unreachable, or did not bootstrap: the peer cannot start."""

    code = "tor_unavailable"


def find_tor_binary(path=None):
    """The tor program on ``PATH`` (or ``path``), or None."""
    return shutil.which("tor", path=path)


def check_control_endpoint(reactor, description):
    """Parse a ``--tor-control`` endpoint string now (an option error if bad)."""
    try:
        return clientFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"--tor-control {description!r} is not a client endpoint "
                          f"(e.g. unix:/run/tor/control or tcp:127.0.0.1:9051): {e}")


def read_torrc_lines(path):
    """The option lines of a torrc fragment (comments and blank lines dropped)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"--torrc: cannot read {path}: {e.strerror}")
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "\0" in line:
            raise ConfigError(f"--torrc: {path} is not a text file")
        lines.append(line)
    return lines


def parse_listeners(reply):
    """``GETINFO net/listeners/socks`` value -> [(host, port)] of TCP listeners."""
    out = []
    reply = (reply or "").strip()
    if reply.startswith("net/listeners/socks="):  # get_info_raw keeps the key
        reply = reply[len("net/listeners/socks="):]
    for item in re.findall(r'"([^"]*)"|(\S+)', reply):
        text = item[0] or item[1]
        if text.startswith("unix:"):
            continue
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            continue
        out.append((host.strip("[]"), int(port)))
    return out


def parse_bootstrap_phase(reply):
    """``GETINFO status/bootstrap-phase`` value -> (progress 0-100, summary)."""
    progress = re.search(r"PROGRESS=(\d+)", reply or "")
    summary = re.search(r'SUMMARY="([^"]*)"', reply or "")
    return (int(progress.group(1)) if progress else 0,
            summary.group(1) if summary else "no progress reported")


def _is_ip(host):
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class TorRuntime:
    """A bootstrapped tor (see the module docstring).

    ``tor`` is the :class:`txtorcon.Tor` control connection; ``socks`` the
    ``(host, port)`` of the SOCKS listener used; ``process`` the launched
    tor's process transport (None when attached).
    """

    def __init__(self, reactor, tor, socks, process=None, description=""):
        self.reactor = reactor
        self.tor = tor
        self.socks = socks
        self.process = process
        self.description = description
        self._mapped = {}
        self._onions = []

    # -- outbound streams ------------------------------------------------------------

    def socks_endpoint(self):
        host, port = self.socks
        return TCP4ClientEndpoint(self.reactor, host, port, timeout=SOCKS_CONNECT_TIMEOUT)

    def stream_endpoint(self, host, port):
        """A plain stream client endpoint to ``host:port`` through tor's SOCKS port.

        A refusal by tor (SOCKS error: host unreachable, TTL expired, ...)
        fails the connection with a ``ConnectError``, like a refused TCP
        connection, so callers need no Tor-specific error handling."""
        from txtorcon.endpoints import TorClientEndpoint

        return _SocksErrorsAsConnectErrors(TorClientEndpoint(
            host, int(port), socks_endpoint=self.socks_endpoint(), reactor=self.reactor))

    def http_agent(self, tls_policy=None):
        """An ``IAgent`` whose every connection goes through tor (HTTP and HTTPS;
        for HTTPS the usual CA and host name checks apply)."""
        return Agent.usingEndpointFactory(
            self.reactor, _TorEndpointFactory(self, tls_policy or BrowserLikePolicyForHTTPS()),
            pool=HTTPConnectionPool(self.reactor, persistent=False))

    def libtorrent_settings(self):
        """Settings that send all of a silent peer's BitTorrent traffic to the
        SOCKS port.

        libtorrent opens no listening socket once a proxy is set (a proxy
        overrides listen_interfaces), so these are for silent peers only;
        anonymous mode also drops its user agent and client version.  An
        onion peer's engine listens on loopback for tor instead (see
        peernet.peer.tap).
        """
        import libtorrent as lt

        host, port = self.socks
        return {
            "proxy_type": int(lt.proxy_type_t.socks5),
            "proxy_hostname": host,
            "proxy_port": int(port),
            "proxy_hostnames": True,
            "proxy_peer_connections": True,
            "proxy_tracker_connections": True,
            "anonymous_mode": True,
            "enable_incoming_tcp": False,
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_incoming_utp": False,
            "enable_outgoing_utp": False,
        }

    @defer.inlineCallbacks
    def map_address(self, host):
        """An IP address that tor's SOCKS port maps to ``host`` (IPs pass through).

        libtorrent connects to IP endpoints only; ``MAPADDRESS 0.0.0.0=HOST``
        makes tor pick an unused virtual address (127.192.0.0/10 by default)
        standing for ``HOST``.
        """
        if _is_ip(host):
            return host
        host = host.lower()
        if host in self._mapped:
            return self._mapped[host]
        if not re.fullmatch(r"[a-z0-9.-]{1,253}", host):
            raise PeernetError(f"{host!r} is not a host name tor can map")
        reply = yield self.tor.protocol.queue_command(f"MAPADDRESS 0.0.0.0={host}")
        virtual = reply.strip().split("=", 1)[0].strip()
        if not _is_ip(virtual):
            raise PeernetError(f"tor did not map {host}: {reply.strip()[:200]}")
        self._mapped[host] = virtual
        return virtual

    # -- onion services --------------------------------------------------------------

    @defer.inlineCallbacks
    def publish_onion(self, key_path, ports, timeout=ONION_PUBLISH_TIMEOUT,
                      upload_wait=ONION_UPLOAD_WAIT):
        """Publish a v3 onion service; returns its ``<56 chars>.onion`` host name.

        ``ports``: ``[(onion_port, "127.0.0.1:LOCAL_PORT"), ...]``.  The key
        is read from ``key_path`` if it exists, else created by tor and
        written there (mode 0600) before this returns, so the same address
        comes back after a restart.

        Fires once tor reports a first descriptor upload (HS_DESC UPLOADED),
        or after ``upload_wait`` seconds with a warning: announcing an
        address before its descriptor is on any HSDir makes early visitors'
        tors fail their descriptor fetches and hold back new ones for a
        while, but a slow upload must not stop the peer either.  The service
        lives as long as our control connection (no Detach), so it
        disappears with this peer.
        """
        key = _read_key(key_path)
        targets = " ".join(f"Port={int(virtual)},{target}" for virtual, target in ports)
        uploaded, waiting = set(), {}

        def on_hs_desc(text):
            parts = text.split()
            if len(parts) >= 2 and parts[0] == "UPLOADED":
                uploaded.add(parts[1])
                d = waiting.pop(parts[1], None)
                if d is not None:
                    d.callback(None)

        protocol = self.tor.protocol
        yield protocol.add_event_listener("HS_DESC", on_hs_desc)
        try:
            d = protocol.queue_command(f"ADD_ONION {key or 'NEW:ED25519-V3'} {targets}")
            d.addTimeout(timeout, self.reactor)
            try:
                reply = yield d
            except defer.TimeoutError:
                raise TorUnavailable(f"tor did not add the onion service within {timeout:g} s")
            except Exception as e:  # a refusal by tor (bad key, ...): one sentence
                raise TorUnavailable(
                    f"tor refused to publish the onion service: {_one_line(e)}")
            service = re.search(r"ServiceID=([a-z2-7]{56})", reply)
            if service is None:
                raise TorUnavailable(f"tor answered ADD_ONION oddly: {_one_line(reply)}")
            if key is None:
                new_key = re.search(r"PrivateKey=(ED25519-V3:\S+)", reply)
                if new_key is None:
                    raise TorUnavailable("tor did not hand over the new onion service key")
                _write_key(key_path, new_key.group(1))
            service_id = service.group(1)
            hostname = service_id + ".onion"
            self._onions.append(hostname)
            log.info("onion service {hostname} added; waiting for its descriptor upload",
                     hostname=hostname)
            if service_id not in uploaded:
                done = waiting[service_id] = defer.Deferred()
                done.addTimeout(upload_wait, self.reactor)
                try:
                    yield done
                    log.info("onion service {hostname} descriptor uploaded", hostname=hostname)
                except defer.TimeoutError:
                    log.warn("no descriptor upload of {hostname} reported within {wait:g} s; "
                             "announcing it anyway", hostname=hostname, wait=upload_wait)
        finally:
            try:
                yield protocol.remove_event_listener("HS_DESC", on_hs_desc)
            except Exception:
                pass
        return hostname

    @defer.inlineCallbacks
    def unpublish(self, hostname):
        """Withdraw an onion service published here (DEL_ONION)."""
        if hostname in self._onions:
            self._onions.remove(hostname)
            yield self.tor.protocol.queue_command(f"DEL_ONION {hostname[:-len('.onion')]}")

    # -- stopping ----------------------------------------------------------------------

    @defer.inlineCallbacks
    def close(self):
        """Remove our onion services, close the control connection, and stop a
        launched tor (by its pid; SIGKILL after STOP_GRACE seconds)."""
        for hostname in list(self._onions):
            try:
                yield self.unpublish(hostname)
            except Exception:
                pass
        self._onions = []
        transport = getattr(self.tor.protocol, "transport", None)
        if transport is not None:
            transport.loseConnection()
        if self.process is not None:
            yield _stop_process(self.reactor, self.process)


@implementer(IStreamClientEndpoint)
class _SocksErrorsAsConnectErrors:
    def __init__(self, endpoint):
        self._endpoint = endpoint

    def connect(self, factory):
        from txtorcon.socks import SocksError

        def translate(failure):
            if failure.check(SocksError):
                raise internet_error.ConnectError(
                    string=f"tor could not connect ({_one_line(failure.value)})")
            return failure

        return self._endpoint.connect(factory).addErrback(translate)


@implementer(IAgentEndpointFactory)
class _TorEndpointFactory:
    """``IAgentEndpointFactory``: every HTTP(S) connection through tor."""

    def __init__(self, runtime, tls_policy):
        self.runtime = runtime
        self.tls_policy = tls_policy

    def endpointForURI(self, uri):
        host = uri.host.decode("ascii") if isinstance(uri.host, bytes) else uri.host
        endpoint = self.runtime.stream_endpoint(host, uri.port)
        if uri.scheme == b"https":
            creator = self.tls_policy.creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint


def _read_key(path):
    try:
        with open(path) as f:
            key = f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise TorUnavailable(f"cannot read the onion service key {path}: {e.strerror}")
    if not key.startswith("ED25519-V3:") or "\n" in key or len(key) < 20:
        raise TorUnavailable(f"the onion service key {path} is not a tor ED25519-V3 key; "
                             "move it away to get a new onion address")
    return key


def _write_key(path, key):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.replace(tmp, path)


def _one_line(exc):
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# -- connecting and bootstrapping ------------------------------------------------------


@defer.inlineCallbacks
def _connect_control(reactor, endpoint, description, password_function=None,
                     timeout=CONTROL_TIMEOUT):
    import txtorcon

    d = txtorcon.connect(reactor, endpoint, password_function=password_function)
    d.addTimeout(timeout, reactor)
    try:
        tor = yield d
    except (defer.TimeoutError, defer.CancelledError):
        raise TorUnavailable(f"the tor control port {description} did not answer "
                             f"within {timeout:g} s")
    except internet_error.ConnectionRefusedError:
        raise TorUnavailable(f"cannot reach the tor control port {description}: "
                             "connection refused (is tor running?)")
    except (internet_error.ConnectError, OSError) as e:
        raise TorUnavailable(f"cannot reach the tor control port {description}: "
                             f"{_describe_connect_error(e)}")
    except Exception as e:  # authentication refused, not a tor, ...
        raise TorUnavailable(f"the tor control port {description} refused us: {_one_line(e)}")
    return tor


def _describe_connect_error(e):
    text = _one_line(e)
    if "No such file" in text:
        return "no such socket"
    return text


@defer.inlineCallbacks
def _wait_bootstrapped(reactor, tor, timeout, what, process_failed=None, deadline=None):
    """Poll ``status/bootstrap-phase`` until 100 %, at most ``timeout`` seconds
    (or until ``deadline``, when given)."""
    from twisted.internet.task import deferLater

    if deadline is None:
        deadline = reactor.seconds() + timeout
    summary = "no progress reported"
    while True:
        if process_failed is not None and process_failed():
            raise TorUnavailable(process_failed())
        try:
            reply = yield tor.protocol.get_info_raw("status/bootstrap-phase")
        except Exception as e:
            raise TorUnavailable(f"{what} closed its control connection while "
                                 f"bootstrapping: {_one_line(e)}")
        progress, summary = parse_bootstrap_phase(reply)
        if progress >= 100:
            return
        if reactor.seconds() >= deadline:
            raise TorUnavailable(
                f"{what} did not finish bootstrapping within {timeout:g} s "
                f"(stuck at {progress}%: {summary}); check its network access or "
                "raise --tor-timeout")
        yield deferLater(reactor, POLL_INTERVAL, lambda: None)


@defer.inlineCallbacks
def _socks_listener(tor, control_host=None):
    try:
        reply = yield tor.protocol.get_info_raw("net/listeners/socks")
    except Exception as e:
        raise TorUnavailable(f"tor did not list its SOCKS ports: {_one_line(e)}")
    listeners = parse_listeners(reply)
    if not listeners:
        raise TorUnavailable("tor has no TCP SocksPort; add one to its torrc "
                             "(libtorrent and the peer need a TCP SOCKS port)")
    # Prefer the listener on the host we reach the control port at (a tor
    # serving a network namespace listens on the veth address too).
    for host, port in listeners:
        if host == control_host:
            return host, port
    for host, port in listeners:
        if host.startswith("127.") or host == "::1":
            return host, port
    return listeners[0]


@defer.inlineCallbacks
def attach_tor(reactor, control, timeout=BOOTSTRAP_TIMEOUT, password_file=None):
    """Attach to a running tor (control endpoint string); see the module docstring."""
    endpoint = check_control_endpoint(reactor, control)
    password_function = None
    if password_file is not None:
        def read_password():
            try:
                with open(password_file) as f:
                    return f.read().strip()
            except OSError as e:
                raise TorUnavailable(f"cannot read the tor control password file "
                                     f"{password_file}: {e.strerror}")
        password_function = read_password
    tor = yield _connect_control(reactor, endpoint, control, password_function)
    try:
        yield _wait_bootstrapped(reactor, tor, timeout, f"the tor at {control}")
        host = getattr(endpoint, "_host", None)
        socks = yield _socks_listener(tor, host)
    except BaseException:
        tor.protocol.transport.loseConnection()
        raise
    log.info("using the tor at {control} (SOCKS {host}:{port})", control=control,
             host=socks[0], port=socks[1])
    return TorRuntime(reactor, tor, socks, description=f"the tor at {control}")


class _TorProcess(protocol.ProcessProtocol):
    """Keeps the tail of a launched tor's output and notices its exit."""

    def __init__(self):
        self.lines = []
        self.ended = None
        self._partial = b""
        self.exited = defer.Deferred()

    def outReceived(self, data):
        self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.lines = (self.lines + [line])[-OUTPUT_LINES:]
                log.debug("tor: {line}", line=line)

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended = reason
        self.exited.callback(None)

    def complaint(self):
        """tor's last error (or warning) line, without its time stamp."""
        def last(level):
            for line in reversed(self.lines):
                if level in line:
                    return line.split(level, 1)[1].strip()
            return None

        err, warn = last("[err]"), last("[warn]")
        if err and not (warn and "warnings above" in err):
            return err
        return warn or err or (self.lines[-1] if self.lines else "no output")


@defer.inlineCallbacks
def launch_tor(reactor, data_dir, extra_lines=(), timeout=BOOTSTRAP_TIMEOUT, tor_binary=None):
    """Start a private tor for this node; see the module docstring."""
    from twisted.internet.task import deferLater

    tor_binary = tor_binary or find_tor_binary()
    if tor_binary is None:
        raise TorUnavailable("no tor program found on PATH; install tor (Debian: "
                             "apt-get install tor) or attach to a running one with --tor-control")
    data_dir = os.path.abspath(data_dir)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    os.chmod(data_dir, 0o700)  # tor refuses a group- or world-readable DataDirectory
    port_file = os.path.join(data_dir, "control.port")
    if os.path.exists(port_file):
        os.unlink(port_file)
    torrc = os.path.join(data_dir, "torrc")
    lines = [
        f"DataDirectory {data_dir}",
        # A circuit per destination: an exit or a relay cannot tell that two
        # gossip links (or a link and a bootstrap call) come from one peer.
        "SocksPort 127.0.0.1:auto IsolateDestAddr IsolateDestPort",
        "ControlPort 127.0.0.1:auto",
        f"ControlPortWriteToFile {port_file}",
        "CookieAuthentication 1",
        f"CookieAuthFile {os.path.join(data_dir, 'control_auth_cookie')}",
        f"__OwningControllerProcess {os.getpid()}",
        "Log notice stdout",
        *extra_lines,
    ]
    with open(torrc, "w") as f:
        f.write("\n".join(lines) + "\n")
    watcher = _TorProcess()
    try:
        process = reactor.spawnProcess(
            watcher, tor_binary, [tor_binary, "-f", torrc, "--defaults-torrc", os.devnull],
            env={"HOME": data_dir, "PATH": os.environ.get("PATH", "")}, path=data_dir)
    except OSError as e:
        raise TorUnavailable(f"cannot run {tor_binary}: {e.strerror}")

    def failed():
        if watcher.ended is None:
            return None
        return f"tor exited at start: {watcher.complaint()}"

    deadline = reactor.seconds() + timeout
    try:
        # tor writes the control port file once it listens on it.
        while True:
            if failed():
                raise TorUnavailable(failed())
            port = _read_port_file(port_file)
            if port is not None:
                break
            if reactor.seconds() >= deadline:
                raise TorUnavailable(f"tor did not open its control port within {timeout:g} s "
                                     f"({watcher.complaint()})")
            yield deferLater(reactor, 0.05, lambda: None)
        endpoint = TCP4ClientEndpoint(reactor, port[0], port[1], timeout=CONTROL_TIMEOUT)
        tor = yield _connect_control(reactor, endpoint, f"{port[0]}:{port[1]}")
        # Tor exits when this control connection closes, whatever happens to us.
        yield tor.protocol.queue_command("TAKEOWNERSHIP")
        yield _wait_bootstrapped(reactor, tor, timeout, "tor", process_failed=failed,
                                 deadline=deadline)
        socks = yield _socks_listener(tor)
    except BaseException:
        yield _stop_process(reactor, process, watcher)
        raise
    runtime = TorRuntime(reactor, tor, socks, process=process, description="a private tor")
    runtime._watcher = watcher
    log.info("private tor bootstrapped (pid {pid}, SOCKS {host}:{port})", pid=process.pid,
             host=socks[0], port=socks[1])
    return runtime


def _read_port_file(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    match = re.search(r"PORT=([\d.]+):(\d+)", text)
    return (match.group(1), int(match.group(2))) if match else None


@defer.inlineCallbacks
def _stop_process(reactor, process, watcher=None):
    """SIGTERM a launched tor by its pid, SIGKILL after STOP_GRACE seconds."""
    from twisted.internet.task import deferLater

    watcher = watcher or getattr(process, "proto", None)
    if process.pid is None:
        return
    try:
        process.signalProcess("TERM")
    except internet_error.ProcessExitedAlready:
        return
    deadline = reactor.seconds() + STOP_GRACE
    while process.pid is not None and reactor.seconds() < deadline:
        yield deferLater(reactor, 0.05, lambda: None)
    if process.pid is not None:
        try:
            process.signalProcess("KILL")
        except internet_error.ProcessExitedAlready:
            pass
