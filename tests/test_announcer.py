"""BootstrapAnnouncer against a real in-process bootstrap server over loopback HTTP.

The announcer's timers run on a task.Clock (so "register again after the
server's hint" is checked without waiting 25 minutes); the HTTP traffic, the
gossip service and the bootstrap server run on the real reactor.
"""

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint

from peernet.bootstrap.api import BootstrapAPI
from peernet.bootstrap.client import BootstrapClient
from peernet.bootstrap.store import BootstrapStore
from peernet.identity import NodeIdentity
from peernet.jsonapi import make_site
from peernet.peer.announcer import BootstrapAnnouncer
from peernet.peer.transport import GossipService
from peernet.ratelimit import RateLimiter


async def wait_for(predicate, timeout=10.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return True
        await task.deferLater(reactor, 0.02, lambda: None)
    return predicate()


@pytest.fixture
def bootstrap(tmp_path):
    store = BootstrapStore(reactor, tmp_path / "db.sqlite", ttl=3600)
    pytest_twisted.blockon(store.open())
    api = BootstrapAPI(reactor, store, ip_limiter=RateLimiter(reactor, 1000, 1),
                       email_limiter=RateLimiter(reactor, 1000, 1))
    port = pytest_twisted.blockon(
        TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(make_site(api)))
    yield store, f"http://127.0.0.1:{port.getHost().port}"
    pytest_twisted.blockon(port.stopListening())
    pytest_twisted.blockon(store.close())


@pytest_twisted.ensureDeferred
async def test_register_reannounce_on_hint_record_change_and_unregister(bootstrap):
    store, url = bootstrap
    identity = NodeIdentity.generate()
    gossip = GossipService(reactor, identity, broadcasting=True,
                           listen="tcp:0:interface=127.0.0.1")
    gossip.startService()
    await gossip.when_started()
    clock = task.Clock()
    clock.advance(reactor.seconds())
    client = BootstrapClient(reactor, url, identity)
    announcer = BootstrapAnnouncer(clock, [client], gossip)
    try:
        announcer.startService()
        clock.advance(0)
        assert await wait_for(lambda: identity.peer_id in store.live._entries)
        assert await wait_for(lambda: announcer.last_results.get(client.base_url) == "registered")
        # The next registration is due after the server's hint (42-50 % of 1 h).
        [due] = [c for c in clock.getDelayedCalls() if c.func == announcer.register]
        delay = due.getTime() - clock.seconds()
        assert 0.42 * 3600 - 1 <= delay <= 0.5 * 3600 + 1
        first_expiry = store.live._entries[identity.peer_id][2]
        await task.deferLater(reactor, 0.05, lambda: None)  # the server clock moves on
        clock.advance(delay)
        assert await wait_for(lambda: store.live._entries[identity.peer_id][2] > first_expiry)
        # A new record version is registered at once, not at the next hint.
        gossip.set_repos([{"name": "films"}])
        announcer.record_changed()
        clock.advance(0)
        assert await wait_for(lambda: '"films"' in store.live._entries[identity.peer_id][0])
    finally:
        await announcer.stopService()
        await gossip.stopService()
    assert identity.peer_id not in store.live._entries  # unregistered on shutdown
    assert (await store.counts(reactor.seconds()))["peers"] == 0


@pytest_twisted.ensureDeferred
async def test_silent_node_never_registers_but_discovers(bootstrap):
    store, url = bootstrap
    publisher = NodeIdentity.generate()
    pub_gossip = GossipService(reactor, publisher, broadcasting=True,
                               listen="tcp:0:interface=127.0.0.1")
    pub_gossip.startService()
    await pub_gossip.when_started()
    pub = BootstrapAnnouncer(reactor, [BootstrapClient(reactor, url, publisher)], pub_gossip)
    silent_identity = NodeIdentity.generate()
    silent = GossipService(reactor, silent_identity)
    silent.startService()
    await silent.when_started()
    announcer = BootstrapAnnouncer(reactor, [BootstrapClient(reactor, url)], silent)
    try:
        pub.startService()
        assert await wait_for(lambda: publisher.peer_id in store.live._entries)
        announcer.startService()
        assert await wait_for(lambda: silent.core.table.get(publisher.peer_id) is not None)
        assert silent_identity.peer_id not in store.live._entries
    finally:
        await announcer.stopService()
        await pub.stopService()
        await silent.stopService()
        await pub_gossip.stopService()
    assert (await store.counts(reactor.seconds()))["peers"] == 0


@pytest_twisted.ensureDeferred
async def test_discover_retries_soon_while_the_network_is_empty(bootstrap):
    """A silent peer started before anyone registered asks again after 2, 4, 8 ...
    seconds (not the 60 s interval), so it finds the first publisher quickly."""
    from peernet.peer.announcer import DISCOVER_EMPTY_RETRY, DISCOVER_INTERVAL

    store, url = bootstrap
    silent = GossipService(reactor, NodeIdentity.generate())
    silent.startService()
    await silent.when_started()
    clock = task.Clock()
    announcer = BootstrapAnnouncer(clock, [BootstrapClient(reactor, url)], silent)
    publisher = NodeIdentity.generate()
    pub_gossip = GossipService(reactor, publisher, broadcasting=True,
                               listen="tcp:0:interface=127.0.0.1")
    pub = BootstrapAnnouncer(reactor, [BootstrapClient(reactor, url, publisher)], pub_gossip)

    def next_discover():
        [call] = [c for c in clock.getDelayedCalls() if c.func == announcer.discover_if_needed]
        return call.getTime() - clock.seconds()

    try:
        announcer.startService()
        clock.advance(0)
        delays = []
        for _ in range(3):   # nobody registered: 2, 4, 8 s
            assert await wait_for(lambda: any(c.func == announcer.discover_if_needed
                                              for c in clock.getDelayedCalls()))
            delays.append(next_discover())
            clock.advance(delays[-1])
        assert delays == [DISCOVER_EMPTY_RETRY, 2 * DISCOVER_EMPTY_RETRY, 4 * DISCOVER_EMPTY_RETRY]
        pub_gossip.startService()
        await pub_gossip.when_started()
        pub.startService()
        assert await wait_for(lambda: publisher.peer_id in store.live._entries)
        assert await wait_for(lambda: any(c.func == announcer.discover_if_needed
                                          for c in clock.getDelayedCalls()))
        clock.advance(next_discover())
        assert await wait_for(lambda: silent.core.table.get(publisher.peer_id) is not None)
        # Someone known: back to the normal interval.
        assert await wait_for(lambda: any(c.func == announcer.discover_if_needed
                                          and c.getTime() - clock.seconds() == DISCOVER_INTERVAL
                                          for c in clock.getDelayedCalls()))
    finally:
        await announcer.stopService()
        await pub.stopService()
        await silent.stopService()
        await pub_gossip.stopService()
