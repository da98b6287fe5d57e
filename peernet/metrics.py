"""Prometheus metrics for `twist bootstrap` and `twist peer` (``--metrics ENDPOINT``).

Each service gets its own :class:`prometheus_client.CollectorRegistry` (never
the process-global one), so two services in one test process stay apart.

Most figures are read from the live objects when Prometheus scrapes
(collectors), rather than counted by hooks scattered through the code: link
and table counts from the GossipService, registration counts from the
bootstrap store (asked once per scrape, through its thread), BitTorrent bytes
from libtorrent's session counters (asked by post_session_stats, answered by
an alert).  The only counters fed as things happen are the gossip frames
(one hook, ``GossipService.on_frame``) and the bootstrap's HTTP requests (a
resource wrapping the API).

Privacy: every label is a message type, a direction, a link class or an
endpoint name.  No metric carries a peer_id, an address, an email or a
request path a caller chose, so a silent peer appears in another node's
metrics only as one in a count.
"""

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

import msgpack

import peernet
from peernet.gossip import codec
from peernet.gossip.codec import MessageType

log = Logger()

#: Label values of peernet_gossip_*{type}: the protocol's types, plus frames
#: that are not a peernet message at all.
MESSAGE_TYPES = tuple(t.name for t in MessageType) + ("invalid",)
DIRECTIONS = ("in", "out")
#: The prefix every frame our codec writes starts with, up to the type byte.
# Everything our encoder puts before the type byte (map header, "v", the
# protocol version, "type"), taken from a frame it made.
_SAMPLE_FRAME = codec.encode(MessageType.HEARTBEAT, 0, b"")
_FRAME_PREFIX = _SAMPLE_FRAME[:_SAMPLE_FRAME.index(b"type") + 4]
_TYPE_NAMES = {int(t): t.name for t in MessageType}
#: Buckets of the bootstrap's request latency histogram (seconds).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
#: How long a scrape waits for the figures it must ask for (store, libtorrent).
REFRESH_TIMEOUT = 5.0


def new_registry(service):
    """A registry of its own for one service, with process figures and an info line."""
    # The *_created series double the output and no dashboard uses them.
    disable_created_metrics()
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    registry.register(_Info(service))
    return registry


class _Info:
    def __init__(self, service):
        self.service = service

    def collect(self):
        info = GaugeMetricFamily("peernet_info", "peernet version and service kind (always 1).",
                                 labels=["version", "service"])
        info.add_metric([peernet.__version__, self.service], 1)
        yield info


def frame_type(frame):
    """The message type name of a gossip frame, or "invalid" (cheap: our own
    encoder's frames are recognised by their prefix, others decoded)."""
    if frame[:len(_FRAME_PREFIX)] == _FRAME_PREFIX and len(frame) > len(_FRAME_PREFIX):
        name = _TYPE_NAMES.get(frame[len(_FRAME_PREFIX)])
        if name is not None:
            return name
    try:
        envelope = msgpack.unpackb(frame, raw=False)
        return _TYPE_NAMES.get(envelope.get("type"), "invalid")
    except Exception:  # noqa: BLE001 - any garbage is just "invalid"
        return "invalid"


# -- the peer ------------------------------------------------------------------------


class PeerMetrics:
    """Gossip, table and BitTorrent figures of one `twist peer`.

    Installs itself as ``gossip.on_frame``; ``refresh()`` (run before each
    scrape) asks libtorrent for its counters.
    """

    def __init__(self, registry, gossip, engine=None):
        self.gossip = gossip
        self.engine = engine
        #: the BootstrapAnnouncer, once there is one (registration states)
        self.announcer = None
        messages = Counter("peernet_gossip_messages", "Gossip messages by type and direction.",
                           ["type", "direction"], registry=registry)
        nbytes = Counter("peernet_gossip_bytes", "Gossip frame bytes by type and direction.",
                         ["type", "direction"], registry=registry)
        # Children made up front: every series exists from the start (rate()
        # works from the first scrape) and counting is two dict look-ups.
        self._children = {(t, d): (messages.labels(t, d), nbytes.labels(t, d))
                          for t in MESSAGE_TYPES for d in DIRECTIONS}
        self._torrent = None
        registry.register(_GossipCollector(gossip))
        registry.register(_AnnouncerCollector(self))
        if engine is not None:
            registry.register(_TorrentCollector(self))
        gossip.on_frame = self.frame

    def frame(self, direction, frame):
        count, size = self._children[(frame_type(frame), direction)]
        count.inc()
        size.inc(len(frame))

    def refresh(self):
        if self.engine is None:
            return defer.succeed(None)
        d = self.engine.session_counters()
        d.addCallback(self._got_counters)
        return d

    def _got_counters(self, values):
        if values is not None:
            self._torrent = values


class _GossipCollector:
    def __init__(self, gossip):
        self.gossip = gossip

    def collect(self):
        gossip = self.gossip
        core = gossip.core
        links = GaugeMetricFamily(
            "peernet_gossip_links",
            "Open gossip links by direction and the remote's class (handshaking until its HELLO).",
            labels=["direction", "remote"])
        counts = {(d, r): 0 for d in ("inbound", "outbound")
                  for r in ("broadcasting", "silent", "handshaking")}
        for link in gossip.open_links():
            state = core.links.get(link.id)
            if state is None or not state.hello_received:
                remote = "handshaking"
            else:
                remote = "broadcasting" if state.remote_broadcasting else "silent"
            counts[("outbound" if link.outbound else "inbound", remote)] += 1
        for key, n in sorted(counts.items()):
            links.add_metric(list(key), n)
        yield links

        now = gossip.reactor.seconds()
        states = {"live": 0, "expired": 0, "tombstone": 0}
        for entry in core.table:
            if entry.is_tombstone:
                states["tombstone"] += 1
            elif entry.expires_at > now:
                states["live"] += 1
            else:
                states["expired"] += 1
        table = GaugeMetricFamily("peernet_table_records",
                                  "Signed records in the peer table (own record included).",
                                  labels=["state"])
        for state, n in states.items():
            table.add_metric([state], n)
        yield table

        yield GaugeMetricFamily("peernet_broadcasting",
                                "1 if this node publishes its record, 0 if it is silent.",
                                value=1 if gossip.broadcasting else 0)
        stats = core.stats
        for name, doc, value in (
                ("peernet_gossip_invalid_messages", "Frames the core refused as invalid.",
                 stats.invalid),
                ("peernet_gossip_duplicate_messages", "Relayed messages already seen (dropped).",
                 stats.duplicates),
                ("peernet_gossip_forwarded_messages", "Messages relayed to other links.",
                 stats.forwarded),
                ("peernet_gossip_penalties", "Penalties given to links for invalid frames.",
                 gossip.penalties_total)):
            yield CounterMetricFamily(name, doc, value=value)


class _AnnouncerCollector:
    """How this peer stands with its configured bootstrap servers (counts only:
    the servers' URLs are not labels)."""

    def __init__(self, owner):
        self.owner = owner

    def collect(self):
        announcer = self.owner.announcer
        states = {"registered": 0, "verification_sent": 0, "failing": 0, "unregistered": 0}
        if announcer is not None:
            results = dict(announcer.last_results)
            for client in announcer.clients:
                result = results.get(client.base_url)
                if result is None or not self.owner.gossip.broadcasting:
                    states["unregistered"] += 1
                elif result == "registered":
                    states["registered"] += 1
                elif result.startswith("verification code sent"):
                    states["verification_sent"] += 1
                else:
                    states["failing"] += 1
        family = GaugeMetricFamily(
            "peernet_peer_bootstrap_servers",
            "Configured bootstrap servers by this peer's registration state (a silent "
            "peer's are all unregistered).", labels=["state"])
        for state, n in states.items():
            family.add_metric([state], n)
        yield family


class _TorrentCollector:
    def __init__(self, owner):
        self.owner = owner

    def collect(self):
        values = self.owner._torrent or {}
        payload = CounterMetricFamily("peernet_torrent_payload_bytes",
                                      "BitTorrent payload bytes sent (up) and received (down).",
                                      labels=["direction"])
        payload.add_metric(["up"], values.get("net.sent_payload_bytes", 0))
        payload.add_metric(["down"], values.get("net.recv_payload_bytes", 0))
        yield payload
        kinds = {"seed": 0, "download": 0}
        for t in self.owner.engine.torrents():
            kinds[t["kind"]] = kinds.get(t["kind"], 0) + 1
        torrents = GaugeMetricFamily("peernet_torrents", "Torrents in the session by kind.",
                                     labels=["kind"])
        for kind, n in sorted(kinds.items()):
            torrents.add_metric([kind], n)
        yield torrents


# -- the bootstrap server -------------------------------------------------------------


class BootstrapMetrics:
    """Registrations and HTTP figures of one `twist bootstrap`.

    ``timed(api)`` wraps the API resource to count and time requests;
    ``refresh()`` (run before each scrape) asks the store for its counts.
    """

    def __init__(self, registry, store, routes):
        self.store = store
        self.routes = frozenset(routes)
        self.requests = Counter(
            "peernet_bootstrap_requests",
            "HTTP requests by endpoint and status code (the outcome: 200 registered, "
            "202 verification sent, 4xx refused, 5xx failed).",
            ["endpoint", "code"], registry=registry)
        self.latency = Histogram(
            "peernet_bootstrap_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by endpoint.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        self._counts = None
        self._store_up = 0
        registry.register(_BootstrapCollector(self))

    def timed(self, resource):
        return _TimedResource(resource, self)

    def endpoint(self, request, prefix):
        path = request.path.decode("latin-1")
        name = path[len(prefix):] if path.startswith(prefix) else None
        # Only known names become label values: a caller cannot mint series.
        return name if name in self.routes else "other"

    def refresh(self, reactor):
        d = self.store.counts(reactor.seconds())

        def got(counts):
            self._counts, self._store_up = counts, 1

        def failed(failure):
            self._store_up = 0
            log.warn("metrics: the store did not answer: {error}",
                     error=failure.getErrorMessage())

        d.addCallbacks(got, failed)
        return d


class _BootstrapCollector:
    def __init__(self, owner):
        self.owner = owner

    def collect(self):
        counts = self.owner._counts or {}
        live = GaugeMetricFamily(
            "peernet_bootstrap_registrations",
            "Live registrations (broadcasting peers), all and bootstrap-capable only.",
            labels=["kind"])
        live.add_metric(["all"], counts.get("peers", 0))
        live.add_metric(["bootstrap"], counts.get("bootstrap_peers", 0))
        yield live
        yield GaugeMetricFamily("peernet_bootstrap_federated_servers",
                                "Bootstrap servers this one tells registrants about.",
                                value=counts.get("bootstrap_servers", 0))
        yield GaugeMetricFamily("peernet_bootstrap_emails", "Emails bound to a peer.",
                                value=counts.get("emails", 0))
        yield GaugeMetricFamily("peernet_bootstrap_store_up",
                                "1 if the store answered the latest scrape, else 0.",
                                value=self.owner._store_up)


class _TimedResource(Resource):
    """Passes every request to ``resource`` and records its endpoint, status
    code and duration when the response ends (or the client goes away)."""

    isLeaf = True

    def __init__(self, resource, metrics):
        super().__init__()
        self.resource = resource
        self.metrics = metrics

    def render(self, request):
        started = time.perf_counter()
        endpoint = self.metrics.endpoint(request, getattr(self.resource, "prefix", "/"))

        def done(_):
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            self.metrics.requests.labels(endpoint, str(request.code)).inc()

        request.notifyFinish().addBoth(done)
        return self.resource.render(request)


# -- serving /metrics -----------------------------------------------------------------


class MetricsResource(Resource):
    """``GET /metrics``: run the refreshers (bounded), then the text exposition."""

    isLeaf = True

    def __init__(self, reactor, registry, refreshers=()):
        super().__init__()
        self.reactor = reactor
        self.registry = registry
        self.refreshers = list(refreshers)

    def render_GET(self, request):
        if request.path != b"/metrics":
            request.setResponseCode(404)
            request.setHeader("Content-Type", "text/plain; charset=utf-8")
            return b"metrics are at /metrics\n"
        waits = []
        for refresh in self.refreshers:
            d = defer.maybeDeferred(refresh)
            d.addErrback(lambda f: log.warn("metrics refresh failed: {error}",
                                            error=f.getErrorMessage()))
            waits.append(d)
        d = defer.gatherResults(waits, consumeErrors=True)
        d.addTimeout(REFRESH_TIMEOUT, self.reactor)
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def write(_):
            if gone:
                return
            body = generate_latest(self.registry)
            request.setHeader("Content-Type", CONTENT_TYPE_LATEST)
            request.setHeader("Content-Length", str(len(body)))
            request.write(body)
            request.finish()

        d.addBoth(write)
        return server.NOT_DONE_YET

    render_HEAD = render_GET


def metrics_service(reactor, command, description, registry, refreshers=()):
    """A ListeningService serving ``/metrics`` on ``description``."""
    from peernet.cli import ListeningService
    from peernet.jsonapi import make_site

    service = ListeningService(reactor, command, description,
                               make_site(MetricsResource(reactor, registry, refreshers)))
    service.on_listening = lambda port: log.info(
        "metrics on http://{host}:{port}/metrics", host=port.getHost().host,
        port=port.getHost().port)
    return service
