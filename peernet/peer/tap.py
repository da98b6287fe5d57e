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
        ["upload-limit", None, "0", "Cap on BitTorrent upload, in KiB/s (0: none)."],
        ["metrics", None, None,
         "Serve Prometheus metrics at /metrics on this endpoint "
         "(e.g. tcp:9101:interface=127.0.0.1); off by default."],
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
        self["bootstrap"].append(check_http_url(url, "--bootstrap"))

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
            self["listen"] = self["listen"] or "tcp:8701"
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
        self["state-dir"] = os.path.abspath(self["state-dir"])
        self["downloads"] = os.path.abspath(
            self["downloads"] or os.path.join(self["state-dir"], "downloads"))
        try:
            os.makedirs(self["state-dir"], mode=0o700, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--state-dir: cannot create {self['state-dir']}: {e.strerror}")


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
    gossip = GossipService(
        reactor, identity, broadcasting=config["broadcast"], listen=config["listen"],
        addresses=config["advertise"] or None, table=table,
        target_links=config["links"], bind_address=config["bind-address"],
    )
    engine = TorrentEngine(
        reactor, state_dir, inbound=config["broadcast"],
        listen_interfaces=(f"{_listen_host(config['listen'])}:{config['torrent-port']}"
                           if config["broadcast"] else None),
        settings={"upload_rate_limit": config["upload-limit"] * 1024})
    engine.setServiceParent(top)
    if config["broadcast"]:
        def torrent_addresses(host):
            return engine.ready.addCallback(
                lambda _: [torrent_address(host, engine.listen_port())])

        gossip.extra_addresses = torrent_addresses
    gossip.setServiceParent(top)
    repos = RepoService(reactor, gossip, engine, state_dir, config["downloads"],
                        initial_shares=config["share"])
    repos.setServiceParent(top)
    gossip.when_started().addErrback(
        lambda f: _fatal(reactor, f"the gossip service could not start: {f.getErrorMessage()}"))
    SnapshotService(reactor, table, state_dir).setServiceParent(top)
    if config["metrics"] is not None:
        from peernet import metrics as metrics_module

        registry = metrics_module.new_registry("peer")
        peer_metrics = metrics_module.PeerMetrics(registry, gossip, engine)
        metrics_module.metrics_service(reactor, COMMAND, config["metrics"], registry,
                                       [peer_metrics.refresh]).setServiceParent(top)

    clients = [BootstrapClient(reactor, url, identity if config["broadcast"] else None)
               for url in config["bootstrap"]]
    announcer = BootstrapAnnouncer(reactor, clients, gossip, email=config["email"])
    announcer.setServiceParent(top)

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
