"""TorGate: nothing that talks to the network starts before tor is ready.

A peer with ``--tor`` or ``--onion`` puts its gossip service, torrent engine,
repo service and bootstrap announcer *under* a TorGate instead of directly
under the top service.  The gate first gets a :class:`TorRuntime` (launched or
attached), hands it to ``on_ready`` (which points the children at tor: SOCKS
endpoints, proxy settings, the onion service), and only then starts its
children.  So no child ever opens a connection while tor is missing, and a
tor that cannot be had stops the process with one sentence (``on_failure``).
"""

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.error import ConnectError
from twisted.logger import Logger
from twisted.web.iweb import IAgent
from zope.interface import implementer

from peernet.errors import PeernetError

log = Logger()


class TorGate(MultiService):
    """``TorGate(get_runtime, on_ready, on_failure)``.

    * ``get_runtime()``: a Deferred of a :class:`TorRuntime`.
    * ``on_ready(runtime)``: called before the children start (may return a
      Deferred).
    * ``on_failure(message)``: called with one sentence if either fails.

    ``runtime`` is None until tor is ready; ``ready`` gives a Deferred that
    fires with the runtime once the children have been started.
    """

    name = "tor"

    def __init__(self, get_runtime, on_ready, on_failure):
        super().__init__()
        self._get_runtime = get_runtime
        self.on_ready = on_ready
        self._on_failure = on_failure
        self.runtime = None
        self._children_started = False
        self._starting = None
        self._waiters = []

    def startService(self):
        Service.startService(self)  # the children wait for tor
        self._starting = defer.ensureDeferred(self._start())

    async def _start(self):
        try:
            runtime = await self._get_runtime()
            if not self.running:  # stopped meanwhile
                await runtime.close()
                return
            self.runtime = runtime
            await defer.maybeDeferred(self.on_ready, runtime)
        except PeernetError as e:
            self._on_failure(str(e))
            return
        except Exception as e:  # a bug: still one line for the user, details in the log
            log.failure("tor start-up failed")
            self._on_failure(f"tor start-up failed: {e}")
            return
        if not self.running:
            return
        self._children_started = True
        for child in self:
            child.startService()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self.runtime)

    def when_ready(self):
        d = defer.Deferred()
        if self._children_started:
            d.callback(self.runtime)
        else:
            self._waiters.append(d)
        return d

    @defer.inlineCallbacks
    def stopService(self):
        if self._children_started:
            yield MultiService.stopService(self)
        else:
            Service.stopService(self)
        self._children_started = False
        if self.runtime is not None:
            runtime, self.runtime = self.runtime, None
            try:
                yield runtime.close()
            except Exception:
                log.failure("stopping tor failed")


@implementer(IAgent)
class TorAgent:
    """An ``IAgent`` that sends each request through the gate's tor.

    Made before tor is ready (the bootstrap clients are built at start-up);
    used only after, since the services that call it start behind the gate.
    """

    def __init__(self, gate, tls_policy=None):
        self._gate = gate
        self._tls_policy = tls_policy

    def request(self, method, uri, headers=None, bodyProducer=None):
        runtime = self._gate.runtime
        if runtime is None:
            return defer.fail(ConnectError(string="tor is not ready"))
        return runtime.http_agent(self._tls_policy).request(method, uri, headers, bodyProducer)
