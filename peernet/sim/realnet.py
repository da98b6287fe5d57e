"""A discrete-event network of REAL GossipCores (codec, Ed25519, table, rules).

Built on :class:`peernet.gossip.memnet.HeapClock`; the action handling follows
:class:`peernet.gossip.memnet.MemoryNetwork` (links and wake-ups are its base
:class:`~peernet.gossip.memnet.LinkedCores`) and adds what a simulator needs:

* latency models per frame with FIFO links (``peernet.sim.models``), frame loss;
* a CPU model: per-frame processing time, one frame at a time per peer, and
  optionally a shared pool of CPUs (many processes on one machine);
* churn: joins (a fresh peer dials ``degree_out`` peers and syncs the table),
  graceful leaves (a tombstone PEER_UPDATE, then the links close), crashes
  (links drop, nothing is said), and silent peers;
* determinism: identities come from seeded Ed25519 keys, every random choice
  from seeded ``random.Random`` streams, and the 16-byte message ids the core
  draws come from a seeded stream (``random_bytes=``); a SHA-256 over every delivered
  frame (time, sender, receiver, bytes) is the run's trace digest;
* accounting: bytes and frames in/out per peer, and the time and path (push
  hop count or anti-entropy) by which each peer got a watched record.

Two memory-saving substitutions, neither of which changes a rule:

* identities carry no X.509 certificate (the core never reads it: TLS is not
  simulated, a link's ``tls_peer_id`` is what TLS would have proven);
* the duplicate filter is an exact two-generation set with the core's
  rotation period instead of two 100 000-id Bloom filters (~360 KB each per
  peer, 1e-6 false positives); a simulated peer sees far fewer ids.

``build(..., converged=True)`` starts from tables that already hold every
broadcasting record (each table filled with the same verified entries), so
an experiment measures the spread of one new update over a settled network
instead of the O(N^2) initial exchange.
"""

import collections
import hashlib
import random

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peernet import constants
from peernet.gossip.codec import MessageType
from peernet.gossip.core import Close, GossipCore, Penalty, Send, TableChange
from peernet.gossip.memnet import HeapClock, LinkedCores
from peernet.identity import peer_id_for, spki_der
from peernet.sim.models import FREE_CPU, FRAME_OVERHEAD_BYTES, Fixed

START = 1_800_000_000.0


class SimIdentity:
    """What GossipCore uses of a NodeIdentity, from a seeded Ed25519 key."""

    __slots__ = ("private_key", "public_key_der", "peer_id", "certificate")

    def __init__(self, secret32):
        self.private_key = Ed25519PrivateKey.from_private_bytes(secret32)
        self.public_key_der = spki_der(self.private_key.public_key())
        self.peer_id = peer_id_for(self.public_key_der)
        self.certificate = None

    def sign(self, data):
        return self.private_key.sign(data)


class ExactDedup:
    """Same interface and rotation as core.DuplicateFilter, exact sets."""

    def __init__(self, clock, period=constants.DEDUP_GENERATION_SECONDS):
        self.clock, self.period = clock, period
        self.current, self.previous = set(), set()
        self.started = clock.seconds()

    def seen(self, message_id):
        return message_id in self.current or message_id in self.previous

    def add(self, message_id):
        now = self.clock.seconds()
        if now - self.started >= self.period:
            self.previous, self.current = self.current, set()
            self.started = now
        self.current.add(message_id)


def frame_type(frame):
    try:
        return msgpack.unpackb(frame, raw=False)["type"]
    except Exception:
        return 0


def frame_kind(frame):
    """A frame's type name, split where the rules differ: HEARTBEAT with or
    without ``recent`` (a digest ping naming its changes), PEER_REQUEST
    ``sync`` / ``peer`` / ``repo``, PEER_LIST_RESPONSE link-local (ttl 0) or not."""
    env = msgpack.unpackb(frame, raw=False)
    mtype = MessageType(env["type"])
    name = mtype.name
    if mtype in (MessageType.HEARTBEAT, MessageType.PEER_REQUEST):
        body = msgpack.unpackb(env["body"], raw=False, strict_map_key=False)
        if mtype is MessageType.HEARTBEAT:
            name += " recent" if "recent" in body else ""
        else:
            name += " " + next(k for k in ("sync", "peer", "repo") if k in body)
    elif mtype is MessageType.PEER_LIST_RESPONSE:
        name += " ttl0" if env["ttl"] == 0 else ""
    return name


def frame_ttl(frame):
    try:
        return msgpack.unpackb(frame, raw=False)["ttl"]
    except Exception:
        return -1


class SimNode:
    __slots__ = ("index", "core", "alive", "links", "wakeup", "bytes_in",
                 "bytes_out", "frames_in", "frames_out", "penalties", "got", "broadcasting",
                 "joined_at", "inbox", "running", "queued")

    def __init__(self, index, core, broadcasting, now):
        self.index = index
        self.core = core
        self.alive = True
        self.links = {}  # link id -> (other index, other's link id)
        self.wakeup = None
        self.bytes_in = self.bytes_out = self.frames_in = self.frames_out = 0
        self.penalties = []
        self.got = None  # (time, how, hops) for the watched record
        self.broadcasting = broadcasting
        self.joined_at = now
        self.inbox = collections.deque()
        self.running = self.queued = False


class SimNetwork(LinkedCores):
    """See the module docstring.  Use as a context manager (or call
    ``close()``) so the seeded message-id source is removed afterwards."""

    def __init__(self, seed=0, latency=None, loss=0.0, cpu=FREE_CPU, start=START,
                 trace=True, count_types=False):
        self.seed = seed
        self.clock = HeapClock(start)
        self.latency = latency if latency is not None else Fixed(0.05)
        self.loss = loss
        self.cpu = cpu
        self.rng = random.Random(f"{seed}/topology")  # graph, churn, origins
        self.net_rng = random.Random(f"{seed}/network")  # latency, loss
        self.key_rng = random.Random(f"{seed}/keys")
        self.id_rng = random.Random(f"{seed}/ids")
        self.core_rng = random.Random(f"{seed}/cores")
        self.nodes = []
        self.frames_sent = self.frames_lost = self.frames_delivered = 0
        self.bytes_sent = 0
        #: with ``count_types``: frames and bytes sent per kind (frame_kind())
        self.count_types = count_types
        self.sent_by_type = collections.Counter()
        self.bytes_by_type = collections.Counter()
        self._next_link = 0
        self._link_free = {}  # (from, to link) -> last scheduled delivery (FIFO)
        self._free_cores = cpu.cores  # None: every peer has its own CPU
        self._runq = collections.deque()
        self._trace = hashlib.sha256() if trace else None
        self.watch = None  # (peer_id, order) of the record being followed

    # -- lifecycle -------------------------------------------------------------

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def now(self):
        return self.clock.seconds()

    def trace_digest(self):
        return self._trace.hexdigest() if self._trace else None

    # -- building --------------------------------------------------------------

    def add_node(self, broadcasting=True, **kw):
        index = len(self.nodes)
        identity = SimIdentity(self.key_rng.randbytes(32))
        addresses = [f"wss://10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}:8701/gossip"]
        core = GossipCore(identity, self.clock, random.Random(self.core_rng.random()),
                          broadcasting=broadcasting,
                          addresses=addresses if broadcasting else (),
                          random_bytes=self.id_rng.randbytes, dedup=ExactDedup(self.clock), **kw)
        node = SimNode(index, core, broadcasting, self.now())
        self.nodes.append(node)
        return node

    def build(self, n, silent=0, degree_out=constants.TARGET_LINKS, converged=True):
        """n broadcasting + ``silent`` silent peers, each dialling ``degree_out``
        random broadcasting peers; tables pre-filled when ``converged``."""
        for _ in range(n):
            self.add_node(True)
        for _ in range(silent):
            self.add_node(False)
        if converged:
            entries = [nd.core.own for nd in self.nodes if nd.broadcasting]
            for nd in self.nodes:
                table = nd.core.table
                for e in entries:
                    if e.peer_id != nd.core.identity.peer_id:
                        table.offer(e, self.now())
        self.random_graph(degree_out)
        for nd in self.nodes:
            self._schedule(nd)
        return self

    def stagger_heartbeats(self):
        """Give every link a random phase of its HEARTBEAT_INTERVAL timer, as
        in a network whose links opened at different times (``build`` opens
        them all at once, so without this no regular heartbeat falls within
        the first 30 s)."""
        now = self.now()
        for nd in self.nodes:
            for link in nd.core.links.values():
                link.last_heartbeat_sent = now - self.rng.random() * constants.HEARTBEAT_INTERVAL
            nd.core.timers_changed()
            self._schedule(nd)

    def random_graph(self, degree_out):
        targets = [nd.index for nd in self.nodes if nd.broadcasting]
        for nd in self.nodes:
            self.dial_random(nd, degree_out, targets)

    def dial_random(self, node, count, targets=None):
        targets = targets if targets is not None else [
            x.index for x in self.nodes if x.alive and x.broadcasting]
        linked = {o for o, _ in node.links.values()}
        linked.add(node.index)
        made, tries = 0, 0
        while made < count and tries < 4 * count + 20:
            tries += 1
            other = targets[self.rng.randrange(len(targets))]
            if other in linked or not self.nodes[other].alive:
                continue
            linked.add(other)
            self.connect(node, self.nodes[other])
            made += 1
        return made

    def connect(self, a, b):
        if not (a.alive and b.alive):
            return
        self._next_link += 1
        la, lb = (self._next_link, a.index), (self._next_link, b.index)
        a.links[la] = (b.index, lb)
        b.links[lb] = (a.index, la)
        a_id = a.core.identity.peer_id if a.core.broadcasting else f"ephemeral-a{self._next_link}"
        b_id = b.core.identity.peer_id if b.core.broadcasting else f"ephemeral-b{self._next_link}"
        self.process(a, a.core.link_opened(la, True, b_id))
        self.process(b, b.core.link_opened(lb, False, a_id))

    def adjacency(self):
        """Undirected adjacency lists (live links) with each peer's eager
        neighbours (``GossipCore``'s LinkState.eager), for the lite model."""
        from peernet.sim.lite import Adjacency
        adj = Adjacency(sorted({o for o, _ in nd.links.values()}) for nd in self.nodes)
        adj.eager = [{nd.links[lid][0] for lid, link in nd.core.links.items()
                      if link.eager and lid in nd.links} for nd in self.nodes]
        return adj

    # -- churn -------------------------------------------------------------------

    def join(self, degree_out=constants.TARGET_LINKS, broadcasting=True):
        """A new peer with an empty table dials ``degree_out`` live peers."""
        node = self.add_node(broadcasting)
        self.dial_random(node, degree_out)
        self._schedule(node)
        return node

    def crash(self, node):
        self.kill(node)
        node.inbox.clear()

    def leave(self, node, linger=1.0):
        """Graceful: broadcast off (tombstone PEER_UPDATE), close after ``linger``."""
        if node.broadcasting:
            self.process(node, node.core.set_broadcast(False))
        self.clock.callLater(linger, self.crash, node)

    def repair(self, node, degree_out=constants.TARGET_LINKS):
        """What the connection manager does: top the outbound links back up."""
        if not node.alive:
            return 0
        outbound = sum(1 for link in node.core.links.values() if link.outbound)
        made = self.dial_random(node, degree_out - outbound) if outbound < degree_out else 0
        self._schedule(node)
        return made

    def refresh(self, node):
        """What ``GossipCore.tick`` does when a broadcasting peer's record is
        RECORD_REFRESH_INTERVAL old: the same version with a new ``issued_at``,
        pushed as a PEER_ANNOUNCEMENT.  Lets an experiment spread refreshes
        over time instead of waiting 30 min of simulated time."""
        core = node.core
        if not (node.alive and core.broadcasting and core.own is not None):
            return
        self.process(node, core._publish(MessageType.PEER_ANNOUNCEMENT,
                                         core._issue_record(True, bump=False)))

    # -- publishing and watching ------------------------------------------------------

    def publish_update(self, node, repos):
        """``set_repos`` on ``node``; watch its new record.  Returns the time
        the publish takes effect (after the CPU model's publish overhead)."""
        for nd in self.nodes:
            nd.got = None
        delay = self.cpu.publish_overhead_s

        def go():
            actions = node.core.set_repos(repos)
            self.watch = (node.core.identity.peer_id, node.core.own.order)
            node.got = (self.now(), "origin", 0)
            self.process(node, actions)
        if delay:
            self.clock.callLater(delay, go)
        else:
            go()
        return self.now() + delay

    def coverage(self):
        live = [nd for nd in self.nodes if nd.alive]
        return sum(1 for nd in live if nd.got is not None) / len(live)

    def run(self, until):
        self.clock.advance(max(0.0, until - self.now()))

    def run_until_covered(self, timeout, step=0.05):
        start = self.now()
        while self.now() - start < timeout:
            self.clock.advance(step)
            if self.watch is not None and all(nd.got is not None for nd in self.nodes if nd.alive):
                return True
        return False

    # -- action processing -------------------------------------------------------------

    def process(self, node, actions):
        depart = self.now()
        for action in actions:
            if isinstance(action, Send):
                self._send(node, action, depart)
            elif isinstance(action, Close):
                self._close(node, action.link)
            elif isinstance(action, TableChange):
                pass
            elif isinstance(action, Penalty):
                node.penalties.append(action)
        self._schedule(node)

    def _send(self, node, action, depart):
        if action.link not in node.links:
            return
        other_index, other_link = node.links[action.link]
        size = len(action.frame) + FRAME_OVERHEAD_BYTES
        if self.count_types:
            kind = frame_kind(action.frame)
            self.sent_by_type[kind] += 1
            self.bytes_by_type[kind] += size
        self.frames_sent += 1
        self.bytes_sent += size
        node.frames_out += 1
        node.bytes_out += size
        if self.loss and self.net_rng.random() < self.loss and node.core.links.get(
                action.link) is not None and node.core.links[action.link].hello_received:
            self.frames_lost += 1  # never the HELLO: a link without one is useless
            return
        if getattr(self.latency, "per_link", False):  # models.PerLink
            at = depart + self.latency.delay(node.index, other_index, self.net_rng)
        else:
            at = depart + self.latency.sample(self.net_rng)
        if not self.latency.fifo_free:
            key = action.link
            at = max(at, self._link_free.get(key, 0.0))
            self._link_free[key] = at
        self.clock.callLater(at - self.now(), self._deliver, other_index, other_link,
                             action.frame, node.index)

    def _deliver(self, index, link, frame, sender):
        node = self.nodes[index]
        if not node.alive or link not in node.links:
            return
        if self.cpu.enabled:
            node.inbox.append((link, frame, sender))
            self._ready(node)
            return
        self._handle(node, link, frame, sender)

    def _handle(self, node, link, frame, sender):
        """Run one received frame through the core now; returns its actions."""
        now = self.now()
        self.frames_delivered += 1
        node.frames_in += 1
        node.bytes_in += len(frame) + FRAME_OVERHEAD_BYTES
        if self._trace is not None:
            self._trace.update(b"%r|%d|%d|" % (now, sender, node.index))
            self._trace.update(frame)
        had = node.got
        actions = node.core.receive(link, frame)
        if self.watch is not None and had is None:
            self._check_watch(node, actions, frame)
        if not self.cpu.enabled:
            self.process(node, actions)
        return actions

    # CPU model: a peer runs one job (a received frame or a tick) at a time;
    # with cpu.cores set, at most that many peers run at once (FIFO).  The
    # core sees the frame when the job starts; its frames leave when it ends.

    def _ready(self, node):
        if not node.running and not node.queued and node.inbox:
            node.queued = True
            self._runq.append(node)
        self._dispatch()

    def _dispatch(self):
        while self._runq and (self._free_cores is None or self._free_cores > 0):
            node = self._runq.popleft()
            node.queued = False
            if not node.alive or not node.inbox:
                continue
            item = node.inbox.popleft()
            node.running = True
            if self._free_cores is not None:
                self._free_cores -= 1
            if item is None:  # a tick
                actions = node.core.tick()
                cost = 0.0
            else:
                link, frame, sender = item
                if link not in node.links:
                    actions, cost = [], 0.0
                else:
                    actions = self._handle(node, link, frame, sender)
                    cost = self.cpu.recv_s
            cost += self.cpu.send_s * sum(1 for a in actions if isinstance(a, Send))
            self.clock.callLater(cost, self._finish, node, actions)

    def _finish(self, node, actions):
        node.running = False
        if self._free_cores is not None:
            self._free_cores += 1
        if node.alive:
            self.process(node, actions)
            if node.inbox:
                node.queued = True
                self._runq.append(node)
        self._dispatch()

    def _check_watch(self, node, actions, frame):
        pid, order = self.watch
        for a in actions:
            if isinstance(a, TableChange) and a.peer_id == pid:
                e = node.core.table.get(pid)
                if e is not None and e.order >= order:
                    mtype = frame_type(frame)
                    if mtype in (MessageType.PEER_UPDATE, MessageType.PEER_ANNOUNCEMENT):
                        how, hops = "push", constants.TTL_UPDATE - frame_ttl(frame)
                    else:
                        how, hops = "sync", None
                    node.got = (self.now() + self.cpu.observe_delay_s, how, hops)
                return

    def _tick(self, node):
        node.wakeup = None
        if not node.alive:
            return
        if self.cpu.enabled:
            node.inbox.append(None)
            self._ready(node)
            return
        self.process(node, node.core.tick())

    # -- measuring -------------------------------------------------------------------------

    def duplicates(self):
        return sum(nd.core.stats.duplicates for nd in self.nodes)

    def totals(self):
        return {"frames_sent": self.frames_sent, "frames_delivered": self.frames_delivered,
                "frames_lost": self.frames_lost, "bytes_sent": self.bytes_sent}
