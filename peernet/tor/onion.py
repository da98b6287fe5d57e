"""OnionPublisher: the onion service of a broadcasting peer (``--onion``).

One v3 onion service carries both of the peer's services on fixed onion
ports, whatever local ports they listen on:

* ``ONION_GOSSIP_PORT`` -> the gossip endpoint (``wss://<56>.onion:8701/gossip``)
* ``ONION_TORRENT_PORT`` -> the BitTorrent port (``bittorrent://<56>.onion:6881``)

The key lives in ``STATE_DIR/onion.key`` (mode 0600), so the address stays
the same across restarts; moving the file away gives a new address.  When the
local ports change (broadcast turned off and on again), the service is
withdrawn and published again under the same key.
"""

import os

from twisted.internet import defer

#: Onion-side ports (fixed, so the announced address never changes).
ONION_GOSSIP_PORT = 8701
ONION_TORRENT_PORT = 6881
KEY_FILE = "onion.key"


class OnionPublisher:
    """``OnionPublisher(get_runtime, state_dir)``; ``get_runtime()`` returns the
    current :class:`TorRuntime` (it exists by the time :meth:`publish` runs)."""

    def __init__(self, get_runtime, state_dir):
        self._get_runtime = get_runtime
        self.key_path = os.path.join(state_dir, KEY_FILE)
        self.hostname = None
        self._targets = None

    @defer.inlineCallbacks
    def publish(self, gossip_target, torrent_target):
        """Publish (or keep) the service for these local ``HOST:PORT`` targets;
        returns the onion host name."""
        targets = (gossip_target, torrent_target)
        if self.hostname is not None and targets == self._targets:
            return self.hostname
        runtime = self._get_runtime()
        if self.hostname is not None:
            yield runtime.unpublish(self.hostname)
            self.hostname = None
        ports = [(ONION_GOSSIP_PORT, gossip_target)]
        if torrent_target is not None:
            ports.append((ONION_TORRENT_PORT, torrent_target))
        self.hostname = yield runtime.publish_onion(self.key_path, ports)
        self._targets = targets
        return self.hostname
