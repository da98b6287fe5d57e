"""An in-memory network of GossipCores on a virtual clock.

Used by the unit tests (and as the base of the simulator): frames travel
between cores through ``clock.callLater`` with a per-link latency, so a test
of minutes of gossip among hundreds of nodes runs in seconds and is
deterministic for a given seed.  There are no sockets and no TLS here; a
link's ``tls_peer_id`` is what TLS would have proven (a broadcasting node's
peer_id, or a random throwaway id for a silent node).
"""

import heapq
import itertools
import random

from peernet.gossip.core import Close, GossipCore, Penalty, Send, TableChange
from peernet.identity import NodeIdentity


class _Call:
    __slots__ = ("time", "seq", "fn", "args", "cancelled", "done")

    def __init__(self, time, seq, fn, args):
        self.time, self.seq, self.fn, self.args = time, seq, fn, args
        self.cancelled = self.done = False

    def __lt__(self, other):
        return (self.time, self.seq) < (other.time, other.seq)

    def getTime(self):
        return self.time

    def active(self):
        return not (self.cancelled or self.done)

    def cancel(self):
        self.cancelled = True


class HeapClock:
    """A virtual clock like twisted.internet.task.Clock, with a heap instead of a
    sorted list, so hundreds of thousands of pending calls stay cheap."""

    def __init__(self, start=0.0):
        self._now = float(start)
        self._heap = []
        self._seq = itertools.count()

    def seconds(self):
        return self._now

    def callLater(self, delay, fn, *args):
        call = _Call(self._now + max(0.0, delay), next(self._seq), fn, args)
        heapq.heappush(self._heap, call)
        return call

    def advance(self, amount):
        """Run every call due within ``amount`` seconds, in time order."""
        end = self._now + amount
        heap = self._heap
        while heap and heap[0].time <= end:
            call = heapq.heappop(heap)
            if call.cancelled:
                continue
            self._now = max(self._now, call.time)
            call.done = True
            call.fn(*call.args)
        self._now = end

    def pending(self):
        return sum(1 for c in self._heap if c.active())


class Node:
    def __init__(self, net, index, core):
        self.net = net
        self.index = index
        self.core = core
        self.alive = True
        self.changes = []  # (time, TableChange)
        self.penalties = []
        self.links = {}  # link id -> (other node index, other side's link id)
        self.wakeup = None


class LinkedCores:
    """Links and wake-up timers of cores on one clock, shared by
    :class:`MemoryNetwork` and the simulator's ``SimNetwork``.

    A subclass has ``clock``, ``nodes`` (each with ``core``, ``alive``,
    ``links`` and ``wakeup``), ``process(node, actions)`` and ``_tick(node)``.
    """

    def kill(self, node):
        """Crash a node: its links drop (the other ends see the close)."""
        node.alive = False
        for link, (other_index, other_link) in list(node.links.items()):
            other = self.nodes[other_index]
            other.links.pop(other_link, None)
            if other.alive:
                self.process(other, other.core.link_closed(other_link))
        node.links.clear()
        if node.wakeup is not None and node.wakeup.active():
            node.wakeup.cancel()

    def _close(self, node, link):
        peer = node.links.pop(link, None)
        node.core.link_closed(link)
        if peer is not None:
            other = self.nodes[peer[0]]
            if other.links.pop(peer[1], None) is not None and other.alive:
                self.process(other, other.core.link_closed(peer[1]))

    def _schedule(self, node):
        if not node.alive:
            return
        when = max(node.core.next_wakeup(), self.clock.seconds())
        if node.wakeup is not None and node.wakeup.active():
            if node.wakeup.getTime() <= when:
                return
            node.wakeup.cancel()
        node.wakeup = self.clock.callLater(when - self.clock.seconds(), self._tick, node)


class MemoryNetwork(LinkedCores):
    def __init__(self, clock, seed=0, latency=0.001, loss=0.0):
        self.clock = clock
        self.rng = random.Random(seed)
        self.latency = latency if callable(latency) else (lambda a, b: latency)
        self.loss = loss
        self.nodes = []
        self.frames_sent = 0
        self._next_link = 0

    def add_node(self, broadcasting=True, identity=None, **kw):
        index = len(self.nodes)
        identity = identity or NodeIdentity.generate()
        addresses = [f"wss://127.0.{index // 250}.{index % 250 + 1}:8701/gossip"] if broadcasting else []
        core = GossipCore(identity, self.clock, random.Random(self.rng.random()),
                          broadcasting=broadcasting, addresses=addresses, **kw)
        node = Node(self, index, core)
        self.nodes.append(node)
        self._schedule(node)
        return node

    def connect(self, a, b):
        """Open a link from node a (outbound) to node b (inbound)."""
        if not (a.alive and b.alive):
            return
        self._next_link += 1
        la, lb = ("L", self._next_link, a.index), ("L", self._next_link, b.index)
        a.links[la] = (b.index, lb)
        b.links[lb] = (a.index, la)
        a_id = a.core.identity.peer_id if a.core.broadcasting else f"ephemeral-{self._next_link}"
        b_id = b.core.identity.peer_id if b.core.broadcasting else f"ephemeral-b{self._next_link}"
        self.process(a, a.core.link_opened(la, True, b_id))
        self.process(b, b.core.link_opened(lb, False, a_id))

    def random_graph(self, degree_out=4):
        """Each node dials ``degree_out`` distinct random broadcasting nodes."""
        targets = [n for n in self.nodes if n.core.broadcasting]
        for node in self.nodes:
            choices = [t for t in targets if t is not node]
            for other in self.rng.sample(choices, min(degree_out, len(choices))):
                if not any(o == other.index for o, _ in node.links.values()):
                    self.connect(node, other)

    # -- action processing -----------------------------------------------------------

    def process(self, node, actions):
        for action in actions:
            if isinstance(action, Send):
                self._send(node, action)
            elif isinstance(action, Close):
                self._close(node, action.link)
            elif isinstance(action, TableChange):
                node.changes.append((self.clock.seconds(), action))
            elif isinstance(action, Penalty):
                node.penalties.append(action)
        self._schedule(node)

    def _send(self, node, action):
        if action.link not in node.links:
            return
        other_index, other_link = node.links[action.link]
        self.frames_sent += 1
        if self.loss and self.rng.random() < self.loss:
            return
        delay = self.latency(node.index, other_index)
        self.clock.callLater(delay, self._deliver, other_index, other_link, action.frame)

    def _deliver(self, index, link, frame):
        node = self.nodes[index]
        if not node.alive or link not in node.links:
            return
        self.process(node, node.core.receive(link, frame))

    def _tick(self, node):
        node.wakeup = None
        if node.alive:
            self.process(node, node.core.tick())

    # -- measuring ----------------------------------------------------------------------

    def run_until(self, predicate, timeout, step=0.01):
        """Advance the clock in steps until predicate() or timeout; returns elapsed."""
        start = self.clock.seconds()
        while not predicate():
            if self.clock.seconds() - start >= timeout:
                return None
            self.clock.advance(step)
        return self.clock.seconds() - start

    def live(self):
        return [n for n in self.nodes if n.alive]

    def coverage(self, peer_id, order):
        """Fraction of live nodes whose table holds ``peer_id`` at ``order`` or newer."""
        live = self.live()
        have = 0
        for n in live:
            e = n.core.table.get(peer_id)
            if n.core.identity.peer_id == peer_id or (e is not None and e.order >= order):
                have += 1
        return have / len(live)
