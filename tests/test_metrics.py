"""peernet.metrics: collectors read real objects (GossipService, GossipCore,
BootstrapStore on SQLite, the bootstrap API on a loopback port); the text
they expose parses with prometheus_client's own parser."""

import random

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import Clock

from peernet import metrics
from peernet.bootstrap.api import ROUTES, BootstrapAPI
from peernet.bootstrap.store import BootstrapStore
from peernet.gossip import codec
from peernet.gossip.codec import MessageType
from peernet.gossip.core import GossipCore
from peernet.identity import NodeIdentity
from peernet.jsonapi import make_site
from peernet.peer.links import GossipLink
from peernet.peer.transport import GossipService
from peernet.ratelimit import RateLimiter


def registration():
    """(identity, body, signature) of a signed register request (built here: a
    ``from conftest import`` is ambiguous once tests/integration has one)."""
    from peernet.records import make_record, new_nonce, sign_request

    identity = NodeIdentity.generate()
    ts = int(reactor.seconds() * 1000)
    signed = make_record(identity, ["wss://127.0.0.1:8701/gossip"], is_bootstrap=True,
                         is_broadcasting=True, version=1, issued_at_ms=ts)
    body, sig = sign_request(identity, {
        "type": "register", "peer_id": identity.peer_id,
        "public_key": signed["record"]["public_key"], "signed_record": signed,
        "timestamp": ts, "nonce": new_nonce()})
    return identity, body, sig


def samples(registry):
    """{(name, frozenset(labels)): value} of everything the registry exposes, as
    Prometheus would parse it."""
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out, text


def value(found, name, **labels):
    return found[(name, frozenset(labels.items()))]


# -- frame types -----------------------------------------------------------------------


@pytest.mark.parametrize("mtype", list(MessageType))
def test_frame_type_names_each_message_type(mtype):
    frame = codec.encode(mtype, 0, b"\x80")
    assert frame.startswith(metrics._FRAME_PREFIX)  # the fast path
    assert metrics.frame_type(frame) == mtype.name


def test_frame_type_of_other_encodings_and_garbage():
    import msgpack

    # Same envelope, other key order: not our encoder's prefix, still recognised.
    reordered = msgpack.packb({"type": 5, "v": 2, "ttl": 0, "body": b""})
    assert metrics.frame_type(reordered) == "HEARTBEAT"
    for junk in (b"", b"\x00", b"\xc1\xc1", msgpack.packb({"type": 99}), msgpack.packb([1, 2])):
        assert metrics.frame_type(junk) == "invalid"


# -- the peer ----------------------------------------------------------------------------


def linked_service():
    """A silent GossipService with one open outbound link to a broadcasting core,
    HELLOs exchanged through the service's real receive path."""
    clock = Clock()
    clock.advance(1_800_000_000)
    silent = GossipService(clock, NodeIdentity.generate(), rng=random.Random(1))
    registry = metrics.new_registry("peer")
    peer_metrics = metrics.PeerMetrics(registry, silent)
    remote_identity = NodeIdentity.generate()
    remote = GossipCore(remote_identity, clock, random.Random(2), broadcasting=True,
                        addresses=["wss://127.0.0.9:8701/gossip"])
    link = GossipLink(outbound=True, peer_id=remote_identity.peer_id)
    link.opened = True
    silent._links[link.id] = link
    silent.core.link_opened(link.id, True, remote_identity.peer_id)
    [hello] = remote.link_opened("their-side", False)
    return silent, registry, peer_metrics, link, hello, remote_identity


def test_peer_metrics_count_frames_links_and_table():
    silent, registry, _, link, hello, remote_identity = linked_service()
    before, _ = samples(registry)
    assert value(before, "peernet_gossip_links", direction="outbound", remote="handshaking") == 1
    assert value(before, "peernet_gossip_messages_total", type="HELLO", direction="in") == 0

    silent.link_message(link, hello.frame, True)   # the real receive path (hook + core)
    silent.link_message(link, b"\x00garbage", True)
    found, text = samples(registry)
    assert value(found, "peernet_gossip_messages_total", type="HELLO", direction="in") == 1
    assert value(found, "peernet_gossip_bytes_total", type="HELLO", direction="in") == len(hello.frame)
    assert value(found, "peernet_gossip_messages_total", type="invalid", direction="in") == 1
    assert value(found, "peernet_gossip_invalid_messages_total") == 1
    assert value(found, "peernet_gossip_penalties_total") == 1
    assert value(found, "peernet_gossip_links", direction="outbound", remote="broadcasting") == 1
    assert value(found, "peernet_gossip_links", direction="outbound", remote="handshaking") == 0
    assert value(found, "peernet_table_records", state="live") == 1  # the remote's record
    assert value(found, "peernet_broadcasting") == 0
    assert value(found, "peernet_info", version=__import__("peernet").__version__,
                 service="peer") == 1
    # No label carries an identity.
    assert remote_identity.peer_id not in text and silent.identity.peer_id not in text
    assert "127.0.0.9" not in text


def test_peer_metrics_count_frames_sent():
    silent, registry, _, link, hello, _ = linked_service()
    silent.link_message(link, hello.frame, True)
    silent.running = True
    frame = codec.encode(MessageType.HEARTBEAT, 0, b"\x80")
    from peernet.gossip.core import Send

    silent._execute([Send(link.id, frame), Send(link.id, frame)])
    found, _ = samples(registry)
    assert value(found, "peernet_gossip_messages_total", type="HEARTBEAT", direction="out") == 2
    assert value(found, "peernet_gossip_bytes_total", type="HEARTBEAT", direction="out") == 2 * len(frame)


def test_inbound_link_from_a_silent_peer_is_counted_as_silent():
    clock = Clock()
    clock.advance(1_800_000_000)
    node = GossipService(clock, NodeIdentity.generate(), broadcasting=True,
                         listen="tcp:0:interface=127.0.0.1", rng=random.Random(3))
    registry = metrics.new_registry("peer")
    metrics.PeerMetrics(registry, node)
    stranger = NodeIdentity.generate()   # a silent peer's throwaway key
    link = GossipLink(outbound=False, peer_id=stranger.peer_id)
    link.opened = True
    node._links[link.id] = link
    node.core.link_opened(link.id, False, stranger.peer_id)
    silent_core = GossipCore(stranger, clock, random.Random(4))
    [hello] = silent_core.link_opened("x", True)
    node.link_message(link, hello.frame, True)
    found, text = samples(registry)
    assert value(found, "peernet_gossip_links", direction="inbound", remote="silent") == 1
    assert value(found, "peernet_gossip_links", direction="inbound", remote="broadcasting") == 0
    assert stranger.peer_id not in text


# -- the bootstrap server ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bootstrap_metrics_over_http(tmp_path):
    store = BootstrapStore(reactor, str(tmp_path / "b.sqlite"))
    await store.open()
    registry = metrics.new_registry("bootstrap")
    boot = metrics.BootstrapMetrics(registry, store, ROUTES)
    api = BootstrapAPI(reactor, store, ip_limiter=RateLimiter(reactor, 100, 60),
                       email_limiter=RateLimiter(reactor, 100, 60))
    port = reactor.listenTCP(0, make_site(boot.timed(api)), interface="127.0.0.1")
    mport = reactor.listenTCP(0, make_site(metrics.MetricsResource(
        reactor, registry, [lambda: boot.refresh(reactor)])), interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}/api/bootstrap/"
    try:
        identity, body, sig = registration()
        r = await treq.post(base + "register", body,
                            headers={"Content-Type": "application/json", "Peernet-Signature": sig})
        assert r.code == 200
        await r.content()
        r = await treq.post(base + "register", body,   # the same nonce again: refused
                            headers={"Content-Type": "application/json", "Peernet-Signature": sig})
        assert r.code == 409
        await r.content()
        for _ in range(3):
            await (await treq.get(base + "discover")).content()
        await (await treq.get(base + "no-such-thing-" + identity.peer_id)).content()

        r = await treq.get(f"http://127.0.0.1:{mport.getHost().port}/metrics")
        assert r.code == 200
        assert r.headers.getRawHeaders("Content-Type")[0].startswith("text/plain")
        text = (await r.content()).decode()
        found = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                found[(s.name, frozenset(s.labels.items()))] = s.value
        assert value(found, "peernet_bootstrap_registrations", kind="all") == 1
        assert value(found, "peernet_bootstrap_store_up") == 1
        assert value(found, "peernet_bootstrap_requests_total", endpoint="register", code="200") == 1
        assert value(found, "peernet_bootstrap_requests_total", endpoint="register", code="409") == 1
        assert value(found, "peernet_bootstrap_requests_total", endpoint="discover", code="200") == 3
        assert value(found, "peernet_bootstrap_requests_total", endpoint="other", code="404") == 1
        assert value(found, "peernet_bootstrap_request_duration_seconds_count",
                     endpoint="discover") == 3
        assert value(found, "peernet_bootstrap_request_duration_seconds_bucket",
                     endpoint="register", le="+Inf") == 2
        assert identity.peer_id not in text   # not even from the 404's path
        r = await treq.get(f"http://127.0.0.1:{mport.getHost().port}/other")
        assert r.code == 404
        await r.content()
    finally:
        await port.stopListening()
        await mport.stopListening()
        await store.close()


@pytest_twisted.ensureDeferred
async def test_scrape_survives_a_failing_refresh():
    registry = metrics.new_registry("bootstrap")

    class Broken:
        def counts(self, now):
            from twisted.internet.defer import fail

            return fail(RuntimeError("database gone"))

    boot = metrics.BootstrapMetrics(registry, Broken(), ROUTES)
    mport = reactor.listenTCP(0, make_site(metrics.MetricsResource(
        reactor, registry, [lambda: boot.refresh(reactor)])), interface="127.0.0.1")
    try:
        r = await treq.get(f"http://127.0.0.1:{mport.getHost().port}/metrics")
        assert r.code == 200
        found = {}
        for family in text_string_to_metric_families((await r.content()).decode()):
            for s in family.samples:
                found[(s.name, frozenset(s.labels.items()))] = s.value
        assert value(found, "peernet_bootstrap_store_up") == 0
    finally:
        await mport.stopListening()


def test_registries_are_independent():
    a, b = metrics.new_registry("peer"), metrics.new_registry("peer")
    clock = Clock()
    for registry in (a, b):
        metrics.PeerMetrics(registry, GossipService(clock, NodeIdentity.generate()))
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("peernet_gossip_messages_total",
                                     {"type": "HELLO", "direction": "in"}) is None
