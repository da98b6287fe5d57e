"""`twist peer`: a peernet node (silent by default, broadcasting on request)."""

import os
import sys
from urllib.parse import urlsplit

from twisted.application.service import MultiService
from twisted.logger import Logger

from peernet import constants
from peernet.cli import ListeningService, Options as _Options, check_endpoint, check_http_url, die
from peernet.errors import ConfigError, IdentityError, PeernetError

log = Logger()
COMMAND = "twist peer"


class Options(_Options):
    command = COMMAND
    synopsis = "[options]"
    longdesc = (
        "Run a peernet node. By default it is SILENT: it registers nowhere, listens on "
        "nothing, announces nothing and connects outbound only; no other node learns its "
        "address or identity. With --broadcast it publishes a signed record with its "
        "address, registers with the bootstrap servers and accepts gossip links."
    )
    optFlags = [
        ["broadcast", None, "Publish this node (record, bootstrap registration, inbound links)."],
        ["tor", None, "Silent peers only: make every outbound connection (gossip, bootstrap, "
                      "BitTorrent) through Tor."],
        ["onion", None, "With --broadcast: publish a v3 onion service for gossip and BitTorrent "
                        "and announce it; all outbound connections then go through Tor too."],
        ["onion-only", None, "Like --onion, but announce no clearnet address at all "
                             "(listens on 127.0.0.1 for tor only)."],
    ]
    optParameters = [
        ["state-dir", None, "peernet-state", "Directory for the identity, peer snapshot and control token."],
        ["listen", None, None,
         "Endpoint for inbound gossip links (only with --broadcast; default tcp:8701). TLS is added."],
        ["email", None, None, "Email to register with bootstrap servers (anti-Sybil binding)."],
        ["control", None, "tcp:0:interface=127.0.0.1",
         "Endpoint of the local control API (loopback; 'none' to disable)."],
        ["bind-address", None, None, "Local address to dial from (default: any)."],
        ["links", None, str(constants.TARGET_LINKS), "Outbound gossip links to keep (1-64)."],
        ["downloads", None, None, "Directory downloads go to (default: STATE_DIR/downloads)."],
        ["torrent-port", None, "0",
         "BitTorrent listening port (with --broadcast; 0 picks a free one)."],
        ["upload-limit", None, "0",
         "Cap on BitTorrent upload to every peer, LAN and loopback included, in KiB/s "
         "(0: none)."],
        ["metrics", None, None,
         "Serve Prometheus metrics at /metrics on this endpoint "
         "(e.g. tcp:9101:interface=127.0.0.1); off by default."],
        ["tor-control", None, None,
         "Use a running tor: its control port as an endpoint (unix:/run/tor/control, "
         "tcp:127.0.0.1:9051). Default: launch a private tor (data in STATE_DIR/tor)."],
        ["tor-control-password-file", None, None,
         "File holding the --tor-control password (when that tor uses HashedControlPassword)."],
        ["torrc", None, None,
         "Extra torrc lines for the tor this peer launches (private or test Tor networks)."],
        ["tor-timeout", None, None,
         "Seconds tor may take to bootstrap before the peer gives up (default 120)."],
    ]

    def __init__(self):
        super().__init__()
        self["bootstrap"] = []
        self["advertise"] = []
        self["share"] = {}

    def opt_share(self, value):
        """Share a directory as a repo: NAME=PATH (repeatable)."""
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--share {value!r}: give NAME=PATH")
        if name in self["share"]:
            raise ConfigError(f"--share: the repo name {name!r} is given twice")
        from peernet.torrent.repo import check_repo_name

        try:
            check_repo_name(name)
        except PeernetError as e:
            raise ConfigError(f"--share {name!r}: {e}")
        if not os.path.isdir(path):
            raise ConfigError(f"--share {name}: {path} is not a directory")
        self["share"][name] = os.path.abspath(path)

    def opt_bootstrap(self, url):
        """Base URL of a bootstrap server (repeatable)."""
        from peernet.bootstrap.client import check_base_url

        url = check_http_url(url, "--bootstrap")
        check_base_url(url)  # plain http only to loopback/.onion: an option error, not a traceback
        self["bootstrap"].append(url)

    def opt_advertise(self, address):
        """Address to announce: wss://HOST:PORT/gossip or HOST:PORT (repeatable; default: the --listen address)."""
        self["advertise"].append(normalize_advertised(address))

    def postOptions(self):
        from twisted.internet import reactor

        if self["listen"] is not None and not self["broadcast"]:
            raise ConfigError("--listen needs --broadcast (a silent node listens on nothing)")
        if self["advertise"] and not self["broadcast"]:
            raise ConfigError("--advertise needs --broadcast (a silent node announces nothing)")
        if self["email"] is not None and not self["broadcast"]:
            raise ConfigError("--email needs --broadcast (a silent node registers nowhere)")
        if self["broadcast"]:
            # onion-only: tor is the only one to reach us, on loopback
            self["listen"] = self["listen"] or (
                "tcp:0:interface=127.0.0.1" if self["onion-only"] else "tcp:8701")
            check_endpoint(reactor, self["listen"])
        if self["control"] != "none":
            check_endpoint(reactor, self["control"])
        if self["metrics"] is not None:
            check_endpoint(reactor, self["metrics"])
        try:
            self["links"] = int(self["links"])
        except ValueError:
            raise ConfigError(f"--links must be a whole number, not {self['links']!r}")
        if not 1 <= self["links"] <= 64:
            raise ConfigError("--links must be between 1 and 64")
        try:
            self["torrent-port"] = int(self["torrent-port"])
        except ValueError:
            raise ConfigError(f"--torrent-port must be a port number, not {self['torrent-port']!r}")
        if not 0 <= self["torrent-port"] <= 65535:
            raise ConfigError("--torrent-port must be between 0 and 65535")
        try:
            self["upload-limit"] = int(self["upload-limit"])
            if self["upload-limit"] < 0:
                raise ValueError
        except ValueError:
            raise ConfigError("--upload-limit must be a whole number of KiB/s (0: no cap)")
        if self["share"] and not self["broadcast"]:
            raise ConfigError("--share needs --broadcast (a silent node accepts no downloads)")
        self._check_tor(reactor)
        self["state-dir"] = os.path.abspath(self["state-dir"])
        self["downloads"] = os.path.abspath(
            self["downloads"] or os.path.join(self["state-dir"], "downloads"))
        try:
            os.makedirs(self["state-dir"], mode=0o700, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--state-dir: cannot create {self['state-dir']}: {e.strerror}")


    def _check_tor(self, reactor):
        from peernet.tor.runtime import check_control_endpoint, find_tor_binary, read_torrc_lines

        if self["onion-only"]:
            self["onion"] = True
        if self["tor"] and self["broadcast"]:
            raise ConfigError("--tor is for silent peers; a broadcasting peer uses --onion "
                              "(its outbound connections then go through Tor too)")
        if self["onion"] and not self["broadcast"]:
            raise ConfigError("--onion needs --broadcast (a silent peer publishes nothing; "
                              "use --tor)")
        self["use-tor"] = self["tor"] or self["onion"]
        for option in ("tor-control", "tor-control-password-file", "torrc", "tor-timeout"):
            if self[option] is not None and not self["use-tor"]:
                raise ConfigError(f"--{option} needs --tor or --onion")
        if self["tor"] and self["bind-address"] is not None:
            raise ConfigError("--bind-address has no use with --tor (tor makes the connections)")
        if self["onion-only"] and self["advertise"]:
            raise ConfigError("--onion-only announces the onion address only; drop --advertise")
        if self["tor-control-password-file"] is not None and self["tor-control"] is None:
            raise ConfigError("--tor-control-password-file needs --tor-control")
        try:
            self["tor-timeout"] = float(self["tor-timeout"] or 120)
            if not 1 <= self["tor-timeout"] <= 3600:
                raise ValueError
        except ValueError:
            raise ConfigError("--tor-timeout must be a number of seconds from 1 to 3600")
        if not self["use-tor"]:
            return
        try:
            import txtorcon  # noqa: F401
        except ImportError:
            raise ConfigError("--tor and --onion need the txtorcon package (pip install txtorcon)")
        if self["tor-control"] is not None:
            if self["torrc"] is not None:
                raise ConfigError("--torrc configures the tor this peer launches; it cannot "
                                  "change a tor attached with --tor-control")
            check_control_endpoint(reactor, self["tor-control"])
        else:
            self["torrc"] = read_torrc_lines(self["torrc"]) if self["torrc"] else []
            if find_tor_binary() is None:
                raise ConfigError("no tor program found on PATH; install tor (Debian: apt-get "
                                  "install tor) or attach to a running one with --tor-control")


def normalize_advertised(address):
    if "://" not in address:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ConfigError(f"--advertise {address!r}: give wss://HOST:PORT/gossip or HOST:PORT")
        address = f"wss://{host}:{port}{constants.GOSSIP_PATH}"
    parts = urlsplit(address)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "wss" or not parts.hostname or not port:
        raise ConfigError(f"--advertise {address!r}: give wss://HOST:PORT/gossip or HOST:PORT")
    return address


def _fatal(reactor, message):
    """A start-up failure after option parsing: one line, exit status 1."""
    sys.stderr.write(f"{COMMAND}: error: {message}\n")
    sys.stderr.flush()
    # Once the reactor runs, twist has turned sys.stderr into a log stream;
    # the user still gets the line on the real stderr.
    real = sys.__stderr__
    if real is not None and sys.stderr is not real:
        real.write(f"{COMMAND}: error: {message}\n")
        real.flush()
    if reactor.running:
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        reactor.stop()
    else:
        os._exit(1)


def makeService(config, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    from peernet.bootstrap.client import BootstrapClient
    from peernet.control.api import ControlAPI, load_or_create_token
    from peernet.gossip.table import PeerTable
    from peernet.identity import NodeIdentity
    from peernet.jsonapi import make_site
    from peernet.peer.announcer import BootstrapAnnouncer
    from peernet.peer.snapshot import SnapshotService, load_snapshot
    from peernet.peer.repos import RepoService, torrent_address
    from peernet.peer.transport import GossipService
    from peernet.torrent.engine import TorrentEngine

    state_dir = config["state-dir"]
    try:
        identity = NodeIdentity.load_or_create(state_dir)
    except IdentityError as e:
        die(COMMAND, str(e), status=e.exit_status)
    table = PeerTable()
    loaded = load_snapshot(table, state_dir, reactor.seconds())
    if loaded:
        log.info("loaded {n} peer records from the snapshot", n=loaded)

    top = MultiService()
    # With Tor, everything that talks to the network starts behind a gate,
    # once tor is ready (peernet.tor.service.TorGate).
    gate = _tor_gate(reactor, config) if config.get("use-tor") else None
    net_parent = gate or top
    if gate is not None:
        gate.setServiceParent(top)
    gossip = GossipService(
        reactor, identity, broadcasting=config["broadcast"], listen=config["listen"],
        addresses=[] if config.get("onion-only") else (config["advertise"] or None),
        table=table, target_links=config["links"], bind_address=config["bind-address"],
        **(_tor_gossip_options(gate) if gate is not None else {}),
    )
    gossip.dial_onions = gate is not None
    engine = TorrentEngine(
        reactor, state_dir, inbound=config["broadcast"],
        listen_interfaces=(f"{_listen_host(config['listen'])}:{config['torrent-port']}"
                           if config["broadcast"] else None),
        settings={"upload_rate_limit": config["upload-limit"] * 1024})
    engine.setServiceParent(net_parent)
    if config["broadcast"]:
        def torrent_addresses(host):
            return engine.ready.addCallback(
                lambda _: [torrent_address(host, engine.listen_port())])

        gossip.extra_addresses = torrent_addresses
        if config.get("onion"):
            gossip.extra_addresses = _onion_addresses(gate, gossip, engine, state_dir,
                                                      clearnet=not config["onion-only"])
    gossip.setServiceParent(net_parent)
    repos = RepoService(reactor, gossip, engine, state_dir, config["downloads"],
                        initial_shares=config["share"])
    repos.setServiceParent(net_parent)
    if gate is not None:
        def tor_ready(runtime):
            if not config["broadcast"]:
                engine.add_settings(runtime.libtorrent_settings())
                repos.map_host = runtime.map_address
            elif config["onion-only"]:
                # libtorrent cannot both proxy and listen: an onion-only peer
                # seeds through its onion service and dials no seeder itself
                # (that would show its address); silent --tor peers download.
                engine.add_settings({"enable_outgoing_tcp": False,
                                     "enable_outgoing_utp": False})
                repos.map_host = _no_onion_only_downloads

        gate.on_ready = tor_ready
    gossip.when_started().addErrback(
        lambda f: _fatal(reactor, f"the gossip service could not start: {f.getErrorMessage()}"))
    SnapshotService(reactor, table, state_dir).setServiceParent(top)
    if config["metrics"] is not None:
        from peernet import metrics as metrics_module

        registry = metrics_module.new_registry("peer")
        peer_metrics = metrics_module.PeerMetrics(registry, gossip, engine)
        metrics_module.metrics_service(reactor, COMMAND, config["metrics"], registry,
                                       [peer_metrics.refresh]).setServiceParent(top)

    tor_http = {}
    if gate is not None:
        from peernet.tor.service import TorAgent

        tor_http = {"agent": TorAgent(gate), "timeout": TOR_HTTP_TIMEOUT}
    clients = [BootstrapClient(reactor, url, identity if config["broadcast"] else None,
                               **tor_http)
               for url in config["bootstrap"]]
    announcer = BootstrapAnnouncer(reactor, clients, gossip, email=config["email"])
    announcer.setServiceParent(net_parent)
    if config["metrics"] is not None:
        peer_metrics.announcer = announcer

    def on_change(change):
        if change.peer_id == identity.peer_id:
            announcer.record_changed()

    gossip.add_listener(on_change)

    if config["control"] != "none":
        token = load_or_create_token(state_dir)
        api = ControlAPI(reactor, gossip, token, announcer=announcer, repos=repos)
        from peernet.web import dashboard_root  # the dashboard, with the API under /api/

        control = ListeningService(reactor, COMMAND, config["control"],
                                   make_site(dashboard_root(api)))
        control.setServiceParent(top)
        control.on_listening = lambda port: _write_control_url(state_dir, port)
    return top


#: With Tor: a gossip dial (circuit, onion rendezvous, TLS, upgrade) and a
#: bootstrap call may take this long.
TOR_DIAL_TIMEOUT = 60.0
TOR_HTTP_TIMEOUT = 60.0


def _tor_gate(reactor, config):
    """The TorGate of a --tor / --onion peer (launched or attached tor)."""
    from peernet.tor.runtime import attach_tor, launch_tor
    from peernet.tor.service import TorGate

    def get_runtime():
        if config["tor-control"] is not None:
            return attach_tor(reactor, config["tor-control"], timeout=config["tor-timeout"],
                              password_file=config["tor-control-password-file"])
        return launch_tor(reactor, os.path.join(config["state-dir"], "tor"),
                          extra_lines=config["torrc"], timeout=config["tor-timeout"])

    return TorGate(get_runtime, on_ready=lambda runtime: None,
                   on_failure=lambda message: _fatal(reactor, message))


def _no_onion_only_downloads(host):
    from peernet.errors import PeernetError

    raise PeernetError("an onion-only peer dials no seeder (that would show its address); "
                       "download with a silent --tor peer")


def _tor_gossip_options(gate):
    return {"connect_endpoint": lambda host, port: gate.runtime.stream_endpoint(host, port),
            "dial_timeout": TOR_DIAL_TIMEOUT}


def _onion_addresses(gate, gossip, engine, state_dir, clearnet):
    """GossipService.extra_addresses for --onion: publish the onion service for
    the gossip and torrent ports, and announce it (plus the clearnet torrent
    address unless onion-only)."""
    from peernet.peer.repos import torrent_address
    from peernet.peer.transport import gossip_address
    from peernet.tor.onion import ONION_GOSSIP_PORT, ONION_TORRENT_PORT, OnionPublisher

    publisher = OnionPublisher(lambda: gate.runtime, state_dir)

    def local(host, port):
        host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def addresses(host):
        await engine.ready
        listening = gossip.listening_port.getHost()
        onion = await publisher.publish(local(listening.host, listening.port),
                                        local(_engine_host(engine), engine.listen_port()))
        out = [torrent_address(host, engine.listen_port())] if clearnet else []
        return out + [gossip_address(onion, ONION_GOSSIP_PORT),
                      torrent_address(onion, ONION_TORRENT_PORT)]

    from twisted.internet import defer

    return lambda host: defer.ensureDeferred(addresses(host))


def _engine_host(engine):
    """The interface the torrent engine listens on (its first listen interface)."""
    first = engine.listen_interfaces.split(",")[0]
    return first.rpartition(":")[0].strip("[]") or "127.0.0.1"


def _write_control_url(state_dir, port):
    from peernet.control.api import URL_FILE

    host = port.getHost()
    path = os.path.join(state_dir, URL_FILE)
    with open(path, "w") as f:
        f.write(f"http://{host.host}:{host.port}\n")
    log.info("control API on http://{host}:{port}", host=host.host, port=host.port)


def _listen_host(description):
    """The interface a server endpoint string binds (0.0.0.0 when it names none)."""
    for part in description.split(":")[1:]:
        if part.startswith("interface="):
            return part[len("interface="):]
    return "0.0.0.0"
