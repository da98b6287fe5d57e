"""BootstrapAnnouncer: a peer's dealings with its bootstrap servers.

* Broadcasting: register the current signed record with every configured
  server (in parallel), register again after the server's ``reannounce_after``
  hint or as soon as the record changes, and unregister on clean shutdown.
* Always (silent peers included): when the peer knows fewer live broadcasting
  peers than it wants links, ask every server for a ``discover`` sample (in
  parallel) and hand the verified records to the gossip service.

A silent peer never calls register or unregister, and discover sends nothing
that identifies it.
"""

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from peernet import constants
from peernet.errors import PeernetError

log = Logger()

RETRY_DELAY = 30.0
DISCOVER_INTERVAL = 60.0
#: While discover finds nobody (a network that is just starting), ask again
#: after this many seconds, doubling up to DISCOVER_INTERVAL.
DISCOVER_EMPTY_RETRY = 2.0
UNREGISTER_TIMEOUT = 5.0


class BootstrapAnnouncer(Service):
    _empty_discovers = 0

    def __init__(self, reactor, clients, gossip, *, email=None):
        """``clients``: BootstrapClient per server (with the node's identity
        when broadcasting); ``gossip``: the GossipService."""
        self.reactor = reactor
        self.clients = list(clients)
        self.gossip = gossip
        self.email = email
        self._calls = {}
        self._registered_version = {}
        self.last_results = {}  # url -> "registered" / error text, for status

    # -- life cycle -----------------------------------------------------------------

    def startService(self):
        super().startService()
        if not self.clients:
            return
        self._schedule("discover", 0, self.discover_if_needed)
        if self.gossip.broadcasting:
            for client in self.clients:
                self._schedule(("register", client.base_url), 0, self.register, client)

    def stopService(self):
        super().stopService()
        for call in self._calls.values():
            if call.active():
                call.cancel()
        self._calls.clear()
        if not self.gossip.broadcasting:
            return defer.succeed(None)
        return self.unregister_all()

    def _schedule(self, key, delay, fn, *args):
        old = self._calls.get(key)
        if old is not None and old.active():
            old.cancel()
        self._calls[key] = self.reactor.callLater(delay, fn, *args)

    # -- broadcasting -----------------------------------------------------------------

    def record_changed(self):
        """Our record has a new version (or broadcast went on/off): tell the servers."""
        if not self.running:
            return
        for client in self.clients:
            if self.gossip.broadcasting:
                self._schedule(("register", client.base_url), 0, self.register, client)
        if not self.gossip.broadcasting:
            self.unregister_all()

    @defer.inlineCallbacks
    def register(self, client):
        signed = self.gossip.core.own_signed_record()
        if not self.running:
            return
        if signed is None:  # not listening yet; record_changed() calls again
            return
        try:
            answer = yield client.register(signed, email=self.email)
        except PeernetError as e:
            self.last_results[client.base_url] = str(e)
            log.warn("registration with {url} failed: {error}", url=client.base_url, error=str(e))
            self._schedule(("register", client.base_url), RETRY_DELAY, self.register, client)
            return
        if answer.get("status") == "verification_sent":
            self.last_results[client.base_url] = "verification code sent to the email"
            log.warn("bootstrap {url} mailed a verification code to {email}; "
                     "registration waits for it", url=client.base_url, email=self.email)
            return
        self.last_results[client.base_url] = "registered"
        self._registered_version[client.base_url] = signed["record"]["version"]
        self.gossip.add_seed_records(answer.get("peers", []))
        delay = max(10.0, float(answer.get("reannounce_after", 1500)))
        self._schedule(("register", client.base_url), delay, self.register, client)
        log.info("registered with {url}; next in {delay:.0f} s", url=client.base_url, delay=delay)

    def unregister_all(self):
        calls = []
        for client in self.clients:
            if client.base_url in self._registered_version:
                d = client.unregister()
                d.addTimeout(UNREGISTER_TIMEOUT, self.reactor)
                d.addCallbacks(
                    lambda _, url=client.base_url: log.info("unregistered from {url}", url=url),
                    lambda f, url=client.base_url: log.warn(
                        "could not unregister from {url}: {error}", url=url,
                        error=f.getErrorMessage()))
                calls.append(d)
        self._registered_version.clear()
        return defer.DeferredList(calls) if calls else defer.succeed(None)

    # -- discovery ----------------------------------------------------------------------

    @defer.inlineCallbacks
    def discover_if_needed(self):
        if not self.running:
            return
        try:
            known = len(self.gossip.core.table.live_broadcasting())
            if known <= constants.TARGET_LINKS or not self.gossip.open_links():
                results = yield defer.DeferredList(
                    [c.discover(limit=constants.DISCOVER_DEFAULT_LIMIT) for c in self.clients],
                    consumeErrors=True)
                seeds = []
                for ok, answer in results:
                    if ok:
                        seeds.extend(answer.get("peers", []))
                    else:
                        log.warn("discover failed: {error}", error=answer.getErrorMessage())
                if seeds:
                    self.gossip.add_seed_records(seeds)
        finally:
            if self.running:
                me = self.gossip.identity.peer_id
                others = [e for e in self.gossip.core.table.live_broadcasting()
                          if e.peer_id != me]
                if others or self.gossip.open_links():
                    self._empty_discovers = 0
                    delay = DISCOVER_INTERVAL
                else:
                    delay = min(DISCOVER_INTERVAL,
                                DISCOVER_EMPTY_RETRY * 2 ** self._empty_discovers)
                    self._empty_discovers += 1
                self._schedule("discover", delay, self.discover_if_needed)
