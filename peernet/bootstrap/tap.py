"""`twist bootstrap`: the discovery server that knows only broadcasting peers."""

import os
import sqlite3

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.logger import Logger

from peernet import constants
from peernet.bootstrap import store as store_module
from peernet.cli import ListeningService, Options as _Options, check_endpoint, check_http_url, die
from peernet.errors import ConfigError, ServiceUnavailable
from peernet.ratelimit import RateLimiter, parse_rate

log = Logger()
COMMAND = "twist bootstrap"


class Options(_Options):
    command = COMMAND
    synopsis = "[options]"
    longdesc = (
        "Run a peernet bootstrap server: broadcasting peers register their signed "
        "records here, and anyone (silent peers included) asks for a random sample "
        "of them. Only broadcasting peers are ever stored; discover callers are not "
        "recorded anywhere."
    )
    optParameters = [
        ["db", None, "peernet-bootstrap.sqlite",
         "SQLite database file (created with its schema when missing), or a "
         "postgresql://user[:password]@host[:port]/dbname URL shared by several "
         "bootstrap processes (needs pip install 'peernet[postgresql]')."],
        ["ttl", None, str(constants.BOOTSTRAP_DEFAULT_TTL),
         "Seconds a registration stays live without being renewed (60-86400)."],
        ["smtp", None, None,
         "Verify emails by mailing a code through this server: "
         "smtp://[user:password@]host[:port]. Without it, the first peer to "
         "register an email keeps it until its key releases it."],
        ["smtp-from", None, "peernet-bootstrap@localhost", "Sender address of code emails."],
        ["rate-ip", None, "60/60",
         "register/unregister requests allowed per client IP, as N/SECONDS."],
        ["rate-email", None, "10/3600", "Registrations allowed per email, as N/SECONDS."],
        ["metrics", None, None,
         "Serve Prometheus metrics at /metrics on this endpoint "
         "(e.g. tcp:9100:interface=127.0.0.1); off by default."],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = []
        self["federate"] = []

    def opt_listen(self, description):
        """Endpoint to serve HTTP on, repeatable (ssl:PORT:privateKey=KEY:certKey=CERT for HTTPS; default tcp:8600:interface=127.0.0.1)."""
        from twisted.internet import reactor

        check_endpoint(reactor, description)
        self["listen"].append(description)

    def opt_federate(self, url):
        """Base URL of another bootstrap server to tell registrants about (repeatable)."""
        self["federate"].append(check_http_url(url, "--federate"))

    def postOptions(self):
        if not self["listen"]:
            self["listen"] = ["tcp:8600:interface=127.0.0.1"]
        if self["metrics"] is not None:
            from twisted.internet import reactor

            check_endpoint(reactor, self["metrics"])
        try:
            self["ttl"] = int(self["ttl"])
        except ValueError:
            raise ConfigError(f"--ttl must be a whole number of seconds, not {self['ttl']!r}")
        if not 60 <= self["ttl"] <= 86400:
            raise ConfigError("--ttl must be between 60 and 86400 seconds")
        for name in ("rate-ip", "rate-email"):
            try:
                self[name] = parse_rate(self[name])
            except ValueError as e:
                raise ConfigError(f"--{name}: {e}")
        if self["smtp"] is not None:
            from peernet.bootstrap.mailer import SMTPMailer
            from twisted.internet import reactor

            self["mailer"] = SMTPMailer.from_url(reactor, self["smtp"], self["smtp-from"])
        else:
            self["mailer"] = None
        if store_module.is_postgres_url(self["db"]):
            from peernet.bootstrap import pgstore

            pgstore.prepare(self["db"])
        else:
            self["db"] = os.path.abspath(self["db"])
            _prepare_database(self["db"])


def _prepare_database(path):
    """Create or upgrade the schema now, before the reactor runs, so that a
    bad --db is a one-line error at start rather than a failing request."""
    if not os.path.isdir(os.path.dirname(path)):
        raise ConfigError(f"--db: the directory {os.path.dirname(path)} does not exist")
    try:
        conn = store_module._connect(path)
        try:
            store_module.create_or_upgrade(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"--db: cannot use {path}: {e}")
    except OSError as e:
        raise ConfigError(f"--db: cannot use {path}: {e.strerror}")


class StoreService(Service):
    """Opens the store at start-up; closes it (and its thread) at shutdown."""

    def __init__(self, store, federate):
        self.store = store
        self.federate = federate

    #: Seconds between attempts to record --federate while a shared
    #: database (PostgreSQL) is unreachable.
    RETRY_SECONDS = 2.0

    def startService(self):
        super().startService()
        self._retry = None
        self.store.open().addCallback(lambda _: self._record_federation()).addErrback(
            self._failed)

    def _record_federation(self):
        d = self.store.set_bootstrap_nodes(self.federate, "config", self.store.reactor.seconds())

        def unavailable(failure):
            # A database server that went away after start-up: keep serving
            # (requests get 503 meanwhile) and try again.
            failure.trap(ServiceUnavailable)
            if self.running:
                self._retry = self.store.reactor.callLater(
                    self.RETRY_SECONDS, self._record_federation)

        return d.addErrback(unavailable)

    def _failed(self, failure):
        log.failure("the database could not be opened", failure)
        self.store.reactor.stop()

    def stopService(self):
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        return self.store.close()


def makeService(config, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    from peernet.bootstrap.api import BootstrapAPI
    from peernet.jsonapi import make_site
    from peernet.bootstrap.store import BootstrapStore

    top = MultiService()
    store_class = BootstrapStore
    if store_module.is_postgres_url(config["db"]):
        from peernet.bootstrap.pgstore import PostgresStore as store_class
    store = store_class(
        reactor, config["db"], ttl=config["ttl"],
        email_verification=config["mailer"] is not None,
    )
    api = BootstrapAPI(
        reactor, store,
        ip_limiter=RateLimiter(reactor, *config["rate-ip"]),
        email_limiter=RateLimiter(reactor, *config["rate-email"]),
        mailer=config["mailer"],
    )
    metrics = None
    if config["metrics"] is not None:
        from peernet import metrics as metrics_module
        from peernet.bootstrap.api import ROUTES

        registry = metrics_module.new_registry("bootstrap")
        metrics = metrics_module.BootstrapMetrics(registry, store, ROUTES)
        api = metrics.timed(api)
    site = make_site(api)
    # Listeners start first: a port in use then exits before any thread exists
    # (the store's worker thread would keep a dying process alive).  Requests
    # that arrive before the store is open wait in its queue behind open().
    for description in config["listen"]:
        ListeningService(reactor, COMMAND, description, site).setServiceParent(top)
    if metrics is not None:
        # After the API listeners (their "listening on" lines come first) and
        # before the store (a port in use must exit before its thread exists).
        metrics_module.metrics_service(
            reactor, COMMAND, config["metrics"], registry,
            [lambda: metrics.refresh(reactor)]).setServiceParent(top)
    StoreService(store, config["federate"]).setServiceParent(top)

    def sweep():
        d = store.sweep(reactor.seconds())
        d.addErrback(lambda f: log.failure("expiry sweep failed", f))
        return d

    sweeper = TimerService(constants.SWEEP_INTERVAL_SECONDS, sweep)
    sweeper.clock = reactor
    sweeper.setServiceParent(top)
    return top


__all__ = ["Options", "makeService", "die"]
