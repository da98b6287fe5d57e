"""GossipCore: the gossip protocol with no I/O.

The core is fed link events, frames and the passage of time, and answers
with a list of actions (frames to send, links to close, table changes,
search answers, penalties).  The Autobahn protocol, the in-memory test
network and the simulator all drive this same object.

Rules (docs/protocol.md has the full text):

* Checks run cheapest first: codec (size, structure, TTL range, fields),
  timestamp window, duplicate filter, then record signatures, verified once
  per unique record.  A push (PEER_ANNOUNCEMENT / PEER_UPDATE) has one
  signature, its record's own (``rsig``; protocol version 2 dropped the
  envelope signature): its message id enters the duplicate filter only after
  that record verified (or was found already verified in the table), so a
  forged copy cannot shadow the genuine one.
* PEER_ANNOUNCEMENT / PEER_UPDATE: applied to the table; if they changed it,
  forwarded (TTL - 1) to the links not known to have it: all of them in the
  early hops (flood phase), then only the eager links (``_relay_targets``).
  The origin pushes its own messages to every link (``_publish_targets``).
* Every table change but a refresh (same version, newer issued_at: digests
  hold record identities, so a refresh changes none; it spreads by push
  alone) schedules a *digest ping* (an early HEARTBEAT) to the
  links not known to hold the change, DIGEST_PING_DELAY later; a neighbour
  whose digest differs pulls the differing buckets (PEER_REQUEST "sync",
  answered by PEER_LIST_RESPONSE).  Regular heartbeats do the same every
  HEARTBEAT_INTERVAL: this anti-entropy is what takes coverage from "most" to
  every live peer holding every live record.
* PEER_REQUEST carries no origin.  A node that knows matching records answers
  on the link the request came from; otherwise it forwards to FANOUT links
  and remembers request id -> inbound link for REQUEST_ROUTE_SECONDS, so the
  answer travels back along the reverse path.
* Silent mode: no own record, HELLO says ``bc: false`` and carries nothing
  that identifies the node.  Nothing the core stores or sends ever contains a
  link's remote identity or address: the table holds only self-signed
  records, and links are known by opaque ids the adapter chooses.
"""

import os
from collections import OrderedDict
from dataclasses import dataclass, field

from pybloom_live import BloomFilter

try:
    import rbloom
except ImportError:  # pragma: no cover - rbloom is in install_requires
    rbloom = None

from peernet import constants
from peernet.errors import PeernetError
from peernet.gossip import codec
from peernet.gossip.codec import MessageType
from peernet.gossip.table import PeerTable, entry_from_wire, lifetime_for, record_hash
from peernet.records import b64decode, b64encode, canonical_json, make_record

#: A sync request is asked back only if we started none on that link this recently.
ASK_BACK_AFTER = 5.0
#: One bucket sync at a time per node: the next waits until the one in
#: progress had no answer frame for this long (or got none for SYNC_TIMEOUT).
#: A newcomer says HELLO on all its links at once and every digest differs;
#: synced from all of them at once, it would take the whole table from each.
SYNC_SETTLE = 1.0
SYNC_TIMEOUT = 5.0
#: A record a digest ping names and we lack is asked for this long after the
#: ping, and only if it is still lacking then: the ping mostly arrives while
#: the push of the same change is still on its way (a wave takes ~0.25-0.4 s
#: over 50 ms links at 1 000-100 000 peers), and asking at once fetched the
#: record a second time.  One ask per record, whichever links named it; if
#: its answer does not bring it, the next naming links (in turn, one more
#: each round: 1, 2, 3 ...) are asked ASK_RETRY later, then twice as long
#: each time, ASK_TRIES rounds at most (then the heartbeats' bucket sync):
#: rounds at +0.25, 0.5, 1.0, 2.0, 4.0 s.
ASK_DELAY = 0.25
ASK_RETRY = 0.25
ASK_TRIES = 5
#: Wanted records (named by pings, not held yet) kept at most.
MAX_WANTS = 1024
#: Per link: which versions of whose records it said it holds (digest pings).
MAX_HOLDS = 4096
#: A message is relayed only while this much of the timestamp window is left.
#: Relayed at the very edge, it would reach the next node outside the window
#: and cost the *honest relay* a penalty: an attacker sending messages 29 s
#: old could get every relay cut off by its neighbours (a partition attack).
#: What such a message taught us still spreads, by digest pings.
RELAY_WINDOW_MARGIN = 5.0

# -- actions ------------------------------------------------------------------------
# Plain slotted dataclasses, not frozen: a frozen one is built through
# object.__setattr__ per field (2.5x slower), and a relayed push makes four or
# five of them.  Nothing changes an action once made.


@dataclass(slots=True)
class Send:
    link: object
    frame: bytes


@dataclass(slots=True)
class Close:
    link: object
    reason: str


@dataclass(slots=True)
class TableChange:
    kind: str  # "added", "updated", "refreshed", "removed"
    peer_id: str


@dataclass(slots=True)
class SearchAnswer:
    request_id: bytes
    peer_ids: tuple


@dataclass(slots=True)
class Penalty:
    """The remote end of ``link`` sent something invalid or abusive."""

    link: object
    code: str
    detail: str = ""


# -- state ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Want:
    """A record digest pings named that we lack (GossipCore._want)."""

    version: int
    due: float  # when to ask (again)
    link_ids: list  # the links that named it, in the order they are asked
    tries: int = 0  # ask rounds done


@dataclass
class LinkState:
    id: object
    outbound: bool
    #: peer_id proven by TLS; None for a silent peer's ephemeral key is not
    #: distinguished here: the core never stores it anywhere but this field.
    tls_peer_id: "str | None"
    opened_at: float
    last_heard: float
    last_heartbeat_sent: float = 0.0
    hello_received: bool = False
    remote_broadcasting: bool = False
    remote_digest: bytes = b""
    sync_outstanding_since: "float | None" = None
    #: when we last started a sync on this link (answers do not reset it)
    last_sync_started: float = float("-inf")
    #: ids of our recent sync requests on this link (answers may span frames)
    sync_ids: OrderedDict = field(default_factory=OrderedDict)
    ping_due: "float | None" = None
    #: changes to name in the next digest ping: peer_id -> (version, issued_at)
    recent: dict = field(default_factory=dict)
    recent_overflow: bool = False
    #: record hashes this link is known to hold (sent to it or received from it)
    known: OrderedDict = field(default_factory=OrderedDict)
    penalties: int = 0
    #: our eager mark (outbound links only) and the remote end's (HELLO,
    #: heartbeats); pushes past the flood phase go over eager links: ``eager``
    eager_local: bool = False
    eager_remote: bool = False
    #: round-trip time the transport measured (seconds), None before any
    rtt: "float | None" = None
    #: our mark changed: the next heartbeat says so, and goes soon
    announce_eager: bool = False
    #: a bucket sync wanted while another link's was in progress
    sync_deferred: bool = False
    #: peer_id -> version this link named in a digest ping: it holds that
    #: version, so no ping of ours need name it
    holds: dict = field(default_factory=dict)

    @property
    def eager(self):
        """Either end marked this link eager."""
        return self.eager_local or self.eager_remote

    def mark_known(self, h):
        self.known[h] = None
        self.known.move_to_end(h)
        if len(self.known) > 4096:
            self.known.popitem(last=False)


class DuplicateFilter:
    """Two rotating Bloom generations; each lives at least ``period`` seconds.

    Backend: rbloom (Rust) by default, about 0.1 us per check or add; it hashes
    the 16-byte message id with Python's ``hash()``, SipHash keyed at random
    per process, so a remote party cannot grind message ids that land on
    chosen bits of this node's filter.  pybloom-live (pure Python, ~10 us per
    add on hex keys, deterministic public hashes) is the fallback where rbloom
    does not install, and can be chosen with ``backend="pybloom"``.  Both are
    sized by the same capacity and false-positive rate
    (tests/test_dedup_filter.py measures the rate of each).
    """

    def __init__(self, clock, period=constants.DEDUP_GENERATION_SECONDS,
                 capacity=constants.DEDUP_CAPACITY, error_rate=constants.DEDUP_ERROR_RATE,
                 backend=None):
        if backend is None:
            backend = "rbloom" if rbloom is not None else "pybloom"
        if backend not in ("rbloom", "pybloom") or (backend == "rbloom" and rbloom is None):
            raise ValueError(f"no Bloom filter backend {backend!r}")
        self.clock = clock
        self.period = period
        self.capacity = capacity
        self.error_rate = error_rate
        self.backend = backend
        self.current = self._generation()
        self.previous = None
        #: ids added to the current generation (rotation before it fills)
        self.count = 0
        self.started = clock.seconds()

    def _generation(self):
        if self.backend == "rbloom":
            return rbloom.Bloom(self.capacity, self.error_rate)
        return BloomFilter(capacity=self.capacity, error_rate=self.error_rate)

    def _key(self, message_id):
        # pybloom-live hashes a non-str key as str(key): give it the hex form.
        return message_id if self.backend == "rbloom" else message_id.hex()

    def _maybe_rotate(self):
        now = self.clock.seconds()
        # Rotate by age, or before the generation fills (past its capacity
        # the false-positive rate climbs; pybloom even raises).
        if now - self.started >= self.period or self.count >= self.capacity * 0.95:
            self.previous, self.current = self.current, self._generation()
            self.count = 0
            self.started = now

    def seen(self, message_id):
        key = self._key(message_id)
        return key in self.current or (self.previous is not None and key in self.previous)

    def add(self, message_id):
        self._maybe_rotate()
        self.current.add(self._key(message_id))
        self.count += 1


@dataclass
class Stats:
    received: int = 0
    sent: int = 0
    invalid: int = 0
    duplicates: int = 0
    forwarded: int = 0
    by_type_in: dict = field(default_factory=dict)
    by_type_out: dict = field(default_factory=dict)


# -- the core -----------------------------------------------------------------------------


class GossipCore:
    """See the module docstring.  ``clock`` has ``seconds()``; ``rng`` is a
    ``random.Random``; ``identity`` signs this node's own record and messages
    (a silent node passes its identity too but never publishes anything)."""

    def __init__(self, identity, clock, rng, *, broadcasting=False, addresses=(),
                 is_bootstrap=True, repos=(), fanout=constants.FANOUT, table=None,
                 random_bytes=os.urandom, dedup=None):
        self.identity = identity
        self.clock = clock
        self.rng = rng
        self.fanout = fanout
        self.table = table if table is not None else PeerTable()
        self.links = {}
        # Injectable so that a simulator run is reproducible from its seed.
        self._random_bytes = random_bytes
        self.dedup = dedup if dedup is not None else DuplicateFilter(clock)
        self.routes = OrderedDict()  # request id -> (link id, expires)
        self.my_requests = {}  # request id -> expires
        self.stats = Stats()
        self.broadcasting = False
        self.own = None  # PeerEntry of our own record while broadcasting
        self._addresses = list(addresses)
        self._is_bootstrap = is_bootstrap
        self._repos = list(repos)
        self._version = 0
        self._next_expiry_check = 0.0
        #: the links whose HELLO arrived, in link order (None: rebuild)
        self._ready = None
        #: next_wakeup()'s answer while no deadline moved earlier (None: rescan)
        self._wakeup = None
        #: the link of the bucket sync in progress, and until when it counts
        #: as in progress (SYNC_TIMEOUT, then SYNC_SETTLE after each answer)
        self._sync_link = None
        self._sync_busy_until = 0.0
        #: records digest pings named that we lack: peer_id -> _Want (ASK_DELAY)
        self._wants = OrderedDict()
        #: the share of the refresh interval after which the own record is
        #: re-signed, drawn per copy in [1 - REFRESH_JITTER, 1]
        self._refresh_share = 1.0
        if broadcasting:
            self._issue_record(broadcasting=True, bump=True)

    def _random_id(self):
        return self._random_bytes(codec.ID_BYTES)

    # -- time ----------------------------------------------------------------------------

    def now(self):
        return self.clock.seconds()

    def now_ms(self):
        return int(self.clock.seconds() * 1000)

    # -- own record ---------------------------------------------------------------------------

    def _issue_record(self, broadcasting, bump):
        if bump:
            # Versions are milliseconds, so they also grow across restarts.
            self._version = max(self._version + 1, self.now_ms())
        # The lifetime grows with the network this node sees, so refreshes
        # (LIFETIME_REFRESHES per lifetime) cost the network the same at any
        # size (docs/protocol.md, "Records").  A tombstone lives at least as
        # long as the record it replaces, so no lingering copy of that record
        # can come back through anti-entropy once the tombstone has lapsed.
        lifetime = lifetime_for(self.table.refreshing_peers(self.now()))
        if not broadcasting and self.own is not None:
            lifetime = max(lifetime, int(self.own.lifetime))
        signed = make_record(
            self.identity, self._addresses if broadcasting else [],
            is_bootstrap=self._is_bootstrap, is_broadcasting=broadcasting,
            version=self._version, issued_at_ms=self.now_ms(),
            repos=self._repos if broadcasting else None,
            lifetime=lifetime if lifetime > constants.RECORD_LIFETIME else None,
        )
        record_bytes = canonical_json(signed["record"])
        entry = entry_from_wire(record_bytes, b64decode(signed["signature"], "signature"), self.now())
        self.own = entry
        self.broadcasting = broadcasting
        self._refresh_share = 1.0 - constants.REFRESH_JITTER * self.rng.random()
        self._wakeup = None  # the refresh is due at another time
        self.table.offer(entry, self.now())
        return entry

    def own_signed_record(self):
        """The own record as the JSON dict the bootstrap API takes, or None."""
        if self.own is None or not self.broadcasting:
            return None
        return {"record": self.own.record, "signature": b64encode(self.own.signature)}

    def set_broadcast(self, on, addresses=None):
        """Turn broadcasting on (new record) or off (tombstone); PEER_UPDATE."""
        if addresses is not None:
            self._addresses = list(addresses)
        if not on and self.own is None:
            return []
        if on and not self._addresses:
            raise PeernetError("broadcasting needs at least one address", code="no_addresses")
        entry = self._issue_record(broadcasting=on, bump=True)
        return self._publish(MessageType.PEER_UPDATE, entry)

    def set_repos(self, repos):
        """Replace the repo list in our record; PEER_UPDATE if broadcasting."""
        self._repos = list(repos)
        if not self.broadcasting:
            return []
        return self._publish(MessageType.PEER_UPDATE, self._issue_record(True, bump=True))

    def _publish(self, mtype, entry):
        ttl = constants.TTL_UPDATE if mtype is MessageType.PEER_UPDATE else constants.TTL_ANNOUNCEMENT
        body = codec.encode_body(mtype, {
            "id": self._random_id(), "ts": self.now_ms(),
            "rec": entry.record_bytes, "rsig": entry.signature,
        })
        # No envelope signature: the record in the body is signed already
        # (entry.signature, by make_record), and that is the one check.
        frame = codec.encode(mtype, ttl, body)
        self.dedup.add(codec.message_id(body))
        actions = []
        for link in self._publish_targets():
            link.mark_known(entry.hash)
            actions.append(self._send(link, frame, mtype))
        if mtype is MessageType.PEER_UPDATE:
            # A new version: the links the push skipped (in a small network
            # all but the eager ones) get a ping naming it, as for any change
            # we apply, so a cut or dead eager link does not leave them
            # waiting for the next heartbeat.  A refresh (same version) names
            # nothing a digest holds; the push carries it.
            self._schedule_pings(entry, None)
        actions.append(TableChange("updated", entry.peer_id))
        return actions

    def _publish_targets(self):
        """Our own push goes to every link, unless our links are more than a
        quarter of the network (``4 * D > N``): in so small a network a flood
        from the origin is mostly duplicates, and the eager links reach
        everyone anyway.  Links still lacking a HELLO get nothing."""
        ready = self._ready_links()
        if 4 * len(self.links) > len(self.table):
            eager = [l for l in ready if l.eager]
            if eager:
                return eager
        return ready

    # -- links ------------------------------------------------------------------------

    def link_opened(self, link_id, outbound, tls_peer_id=None):
        """A transport link is up (TLS done); returns the HELLO to send."""
        now = self.now()
        link = LinkState(link_id, outbound, tls_peer_id, now, now, last_heartbeat_sent=now)
        # Mark the first EAGER_LINKS outbound links eager (the first dials to
        # open: the fastest handshakes); when one closes, the link the
        # connection manager dials to replace it takes its place.  Once round
        # trips are measured, the fastest outbound links hold the marks
        # (link_rtt, _remark_eager).
        link.eager_local = outbound and sum(
            1 for l in self.links.values() if l.outbound and l.eager_local) < constants.EAGER_LINKS
        self.links[link_id] = link
        self._wakeup = None
        body = {
            "id": self._random_id(), "ts": self.now_ms(),
            "versions": [constants.PROTOCOL_VERSION], "bc": self.broadcasting,
            "repos": len(self._repos) if self.broadcasting else 0,
            "digest": self.table.digest(), "n": len(self.table),
        }
        if link.eager_local:
            body["eager"] = True
        if self.broadcasting:
            body["rec"], body["rsig"] = self.own.record_bytes, self.own.signature
            link.mark_known(self.own.hash)
        frame = codec.encode(MessageType.HELLO, 0, codec.encode_body(MessageType.HELLO, body))
        return [self._send(link, frame, MessageType.HELLO)]

    def link_closed(self, link_id):
        link = self.links.pop(link_id, None)
        if link is None:
            return []
        self._ready = self._wakeup = None
        if link_id == self._sync_link:
            self._sync_link = None  # a deferred sync may start at once
        for rid in [r for r, (lid, _) in self.routes.items() if lid == link_id]:
            del self.routes[rid]
        if link.eager_local:
            self._promote_eager()
        return []

    def _promote_eager(self):
        """Fewer than EAGER_LINKS outbound links marked (an eager link closed,
        or marks are being redistributed): the fastest measured ones take the
        missing marks now.  After a close that beats waiting for the
        replacement the connection manager dials (which, unmeasured, would
        take the mark on opening, seconds later); with none measured, that
        replacement still does."""
        outs = [l for l in self.links.values() if l.outbound]
        missing = constants.EAGER_LINKS - sum(1 for l in outs if l.eager_local)
        spare = sorted((l for l in outs if not l.eager_local and l.hello_received
                        and l.rtt is not None), key=lambda l: l.rtt)
        now = self.now()
        for l in spare[:max(0, missing)]:
            l.eager_local = True
            self._announce_eager(l, now)

    def _ready_links(self):
        # Asked two or three times per relayed push: kept until a link opens,
        # closes or says HELLO.  Callers must not change the list.
        ready = self._ready
        if ready is None:
            ready = self._ready = [l for l in self.links.values() if l.hello_received]
        return ready

    def _send(self, link, frame, mtype):
        self.stats.sent += 1
        self.stats.by_type_out[mtype] = self.stats.by_type_out.get(mtype, 0) + 1
        return Send(link.id, frame)

    # -- receiving ----------------------------------------------------------------------

    def receive(self, link_id, frame):
        """Handle one frame from ``link_id``; return the actions it causes."""
        link = self.links.get(link_id)
        if link is None:
            return []
        now = self.now()
        if (self._wakeup is not None and link.hello_received
                and link.last_heard + constants.LINK_DEAD_AFTER <= self._wakeup):
            self._wakeup = None  # that deadline moves later now
        link.last_heard = now
        stats = self.stats
        stats.received += 1
        try:
            msg = codec.decode(frame)
            by_type = stats.by_type_in
            by_type[msg.type] = by_type.get(msg.type, 0) + 1
            if not link.hello_received and msg.type is not MessageType.HELLO:
                raise PeernetError("the first message on a link must be HELLO", code="no_hello")
            skew = msg.body["ts"] / 1000.0 - now
            if abs(skew) > constants.CLOCK_SKEW_SECONDS:
                raise PeernetError(
                    f"its timestamp is {skew:+.0f} s off this node's clock, outside the "
                    f"\u00b1{constants.CLOCK_SKEW_SECONDS} s window", code="stale_timestamp")
            if msg.type in codec.RELAYED_TYPES and self.dedup.seen(msg.id):
                self.stats.duplicates += 1
                return []
            handler = self._handlers[msg.type]
            return handler(self, link, msg)
        except PeernetError as e:
            self.stats.invalid += 1
            link.penalties += 1
            return [Penalty(link_id, e.code, str(e))]

    def _handle_hello(self, link, msg):
        if link.hello_received:
            raise PeernetError("a second HELLO on one link", code="duplicate_hello")
        body = msg.body
        if constants.PROTOCOL_VERSION not in body["versions"]:
            return [Close(link.id, "no common protocol version")]
        actions = []
        if body["bc"]:
            entry = self._entry(body["rec"], body["rsig"])
            if link.tls_peer_id is None or entry.peer_id != link.tls_peer_id:
                # A record of somebody else than the key on this TLS link.
                raise PeernetError("HELLO record does not match the TLS identity",
                                   code="impersonation")
            if entry.is_tombstone:
                raise PeernetError("a broadcasting HELLO with a tombstone", code="bad_record")
            link.mark_known(entry.hash)
            # A record new to us in a HELLO from a peer whose table is no
            # bigger than ours is a peer that just joined (or restarted with a
            # new version): its HELLOs on all its links are its publish, so we
            # forward the record as the first hop of that push (a
            # PEER_ANNOUNCEMENT of our own making, as a relay may wrap a
            # self-signed record) instead of leaving it to digest pings and
            # asks, which took ~1.6 s to reach 300 peers.  A record we hold
            # already changes nothing and goes nowhere; and when the sender's
            # table is the bigger one, we are the newcomer, whose every
            # neighbour's record is news to it only.
            push = (self._hello_push(entry), link) if body["n"] <= len(self.table) else None
            actions += self._apply(entry, source=link, push=push)
        link.hello_received = True
        self._ready = self._wakeup = None
        link.eager_remote = body.get("eager", False)
        link.remote_broadcasting = body["bc"]
        link.remote_digest = body["digest"]
        if link.remote_digest != self.table.digest():
            actions += self._start_sync(link)
        return actions

    def _hello_push(self, entry):
        """A PEER_ANNOUNCEMENT carrying ``entry`` as its origin would publish
        it (TTL_ANNOUNCEMENT), made here (see _handle_hello)."""
        fields = {"id": self._random_id(), "ts": self.now_ms(),
                  "rec": entry.record_bytes, "rsig": entry.signature}
        body = codec.encode_body(MessageType.PEER_ANNOUNCEMENT, fields)
        msg_id = codec.message_id(body)
        self.dedup.add(msg_id)
        return codec.Message(MessageType.PEER_ANNOUNCEMENT, constants.TTL_ANNOUNCEMENT,
                             fields, body, msg_id)

    def _handle_push(self, link, msg):
        # The record's self-signature is the push's only signature.  _entry
        # verifies it, or finds this exact record (bytes and signature)
        # already verified in the table; either way the record is genuine,
        # and only then does the id enter the duplicate filter.  Whoever
        # wrapped it (origin or a relay re-stamping id/ts) cannot change what
        # it does: a record no newer than ours changes nothing (no relay,
        # counted as a duplicate below), a newer one is genuine news, and its
        # issued_at bounds its life whatever the envelope says.
        entry = self._entry(msg.body["rec"], msg.body["rsig"])
        self.dedup.add(msg.id)
        link.mark_known(entry.hash)
        actions = self._apply(entry, source=link, push=(msg, link))
        if not actions:
            self.stats.duplicates += 1  # a message that taught us nothing
        return actions

    def _handle_request(self, link, msg):
        self.dedup.add(msg.id)
        body = msg.body
        if "sync" in body:
            if msg.ttl != 0:
                raise PeernetError("a sync request is link-local (ttl 0)", code="bad_ttl")
            return self._answer_sync(link, msg)
        if "peer" in body:
            entry = self.table.get(body["peer"])
            # A link-local ask (ttl 0) is anti-entropy: tombstones count too.
            wanted = entry is not None and (msg.ttl == 0 or not entry.is_tombstone)
            matches = [entry] if wanted else []
        else:
            matches = self.table.find_repo(body["repo"])
        if matches:
            self.rng.shuffle(matches)
            return self._respond(link, msg.id, matches, constants.TTL_RESPONSE)
        if msg.ttl == 0 or not self._relayable(msg):
            return []
        self._remember_route(msg.id, link.id)
        targets = self._pick(exclude={link.id}, count=self.fanout)
        frame = codec.relay(msg, msg.ttl - 1)
        self.stats.forwarded += len(targets)
        return [self._send(t, frame, msg.type) for t in targets]

    def _handle_response(self, link, msg):
        self.dedup.add(msg.id)
        body = msg.body
        rid = body["re"]
        entries, actions = [], []
        for record_bytes, signature in body["recs"]:
            try:
                entries.append(self._entry(record_bytes, signature))
            except PeernetError as e:
                actions.append(Penalty(link.id, "bad_record", str(e)))
        for entry in entries:
            link.mark_known(entry.hash)
            actions += self._apply(entry, source=link)
        if rid in link.sync_ids:
            link.sync_outstanding_since = None
            if link.id == self._sync_link:
                # More answer frames may follow: the sync settles SYNC_SETTLE
                # after the last one.
                self._sync_busy_until = self.now() + SYNC_SETTLE
                self._wakeup = None
            return actions
        if rid in self.my_requests:
            peer_ids = tuple(e.peer_id for e in entries if not e.is_tombstone)
            return actions + [SearchAnswer(rid, peer_ids)]
        route = self.routes.get(rid)
        if route is not None:
            target = self.links.get(route[0])
            if target is not None and msg.ttl > 0 and self._relayable(msg):
                self.stats.forwarded += 1
                actions.append(self._send(target, codec.relay(msg, msg.ttl - 1), msg.type))
            return actions
        # An answer whose route expired: its records (self-signed) were
        # still worth keeping; nothing more to do.
        return actions

    def _handle_heartbeat(self, link, msg):
        link.remote_digest = msg.body["digest"]
        # The remote end moved its mark on this link (HELLO said it first;
        # a heartbeat without the field leaves it as it was).
        eager = msg.body.get("eager")
        if eager is not None:
            link.eager_remote = eager
        recent = msg.body.get("recent")
        if recent:
            # A digest ping names changes its sender holds: no ping of ours
            # need name them on this link (whether or not we hold them yet).
            holds = link.holds
            for peer_id_bytes, version, _ in recent:
                peer_id = peer_id_bytes.hex()
                if holds.get(peer_id, -1) < version:
                    holds[peer_id] = version
                    if len(holds) > MAX_HOLDS:
                        del holds[next(iter(holds))]
        if link.remote_digest == self.table.digest():
            return []
        if not recent:
            return self._start_sync(link)
        # A digest ping naming what changed: ask for exactly those records we
        # lack (one small request each) instead of whole buckets.  Any other
        # difference is left to the next regular heartbeat's bucket sync.
        # Digests hold identities, not issue times: a copy of the named
        # version, whatever its issued_at, is not lacking.
        for peer_id_bytes, version, _ in recent:
            peer_id = peer_id_bytes.hex()
            entry = self.table.get(peer_id)
            if entry is None or entry.record["version"] < version:
                self._want(peer_id, version, link)
        return []

    def _want(self, peer_id, version, link):
        """A ping named a record we lack: ask for it ASK_DELAY from now if the
        push has not brought it by then (tick)."""
        want = self._wants.get(peer_id)
        if want is None or want.version < version:
            due = self.now() + ASK_DELAY
            self._wants[peer_id] = _Want(version, due, [link.id])
            if len(self._wants) > MAX_WANTS:
                self._wants.popitem(last=False)
            if self._wakeup is not None and due < self._wakeup:
                self._wakeup = due
        elif want.version == version and link.id not in want.link_ids:
            want.link_ids.append(link.id)

    def _ask_wanted(self, now):
        actions = []
        for peer_id, want in list(self._wants.items()):
            if want.due > now:
                continue
            entry = self.table.get(peer_id)
            if entry is not None and entry.record["version"] >= want.version:
                del self._wants[peer_id]  # the push (or a sync) brought it
                continue
            # the naming links in turn, one more each round (those gone dropped)
            link_ids = want.link_ids
            asked = []
            while link_ids and len(asked) <= want.tries:
                link = self.links.get(link_ids.pop(0))
                if link is not None and link.hello_received:
                    asked.append(link.id)
                    actions += self._ask_for_record(link, peer_id)
            link_ids.extend(asked)
            want.tries += 1
            if link_ids and want.tries < ASK_TRIES:
                want.due = now + ASK_RETRY * 2 ** (want.tries - 1)
            else:
                del self._wants[peer_id]
        return actions

    def _ask_for_record(self, link, peer_id):
        body = codec.encode_body(MessageType.PEER_REQUEST, {
            "id": self._random_id(), "ts": self.now_ms(), "peer": peer_id})
        # The answer is handled like a sync answer (link-local, solicited).
        link.sync_ids[codec.message_id(body)] = None
        while len(link.sync_ids) > 32:
            link.sync_ids.popitem(last=False)
        return [self._send(link, codec.encode(MessageType.PEER_REQUEST, 0, body),
                           MessageType.PEER_REQUEST)]

    _handlers = {
        MessageType.HELLO: _handle_hello,
        MessageType.PEER_ANNOUNCEMENT: _handle_push,
        MessageType.PEER_UPDATE: _handle_push,
        MessageType.PEER_REQUEST: _handle_request,
        MessageType.PEER_LIST_RESPONSE: _handle_response,
        MessageType.HEARTBEAT: _handle_heartbeat,
    }

    def _entry(self, record_bytes, signature):
        h = record_hash(record_bytes)
        known = self.table.known_copy(record_bytes, signature, record_hash=h)
        if known is not None:
            return known
        return entry_from_wire(record_bytes, signature, self.now(), record_hash=h)

    # -- table changes and spreading ------------------------------------------------

    def _apply(self, entry, source, push=None):
        """Offer ``entry`` to the table; on change, forward and schedule pings."""
        if self.own is not None and entry.peer_id == self.identity.peer_id:
            # Nobody else can sign our record; a copy of an old one is ignored.
            if entry.order > self.own.order and self.broadcasting:
                # A newer record of ours than we know: we restarted from an
                # older state.  Move past it so the network takes ours.
                self._version = entry.record["version"]
                return self._publish(MessageType.PEER_UPDATE,
                                     self._issue_record(True, bump=True))
            return []
        kind = self.table.offer(entry, self.now())
        if kind is None:
            return []
        actions = [TableChange(kind, entry.peer_id)]
        if push is not None:
            msg, from_link = push
            if msg.ttl > 0 and self._relayable(msg):
                targets = self._relay_targets(msg, from_link, entry.hash)
                frame = codec.relay(msg, msg.ttl - 1)
                for t in targets:
                    t.mark_known(entry.hash)
                    actions.append(self._send(t, frame, msg.type))
                self.stats.forwarded += len(targets)
        if kind == "refreshed":
            # Same identity, so no digest changed: nothing for a ping to name
            # and nothing for a neighbour to sync.  The push carries it.
            return actions
        self._schedule_pings(entry, source)
        return actions

    def _schedule_pings(self, entry, source):
        """A digest ping naming ``entry``, DIGEST_PING_DELAY (+ spread) from
        now, to every ready link but ``source`` not known to hold it."""
        due = self.now() + constants.DIGEST_PING_DELAY + constants.DIGEST_PING_SPREAD * self.rng.random()
        version = entry.record["version"]
        for link in self._ready_links():
            if link is source or entry.hash in link.known or link.holds.get(entry.peer_id, -1) >= version:
                continue
            if link.ping_due is None:
                link.ping_due = due
                if self._wakeup is not None and due < self._wakeup:
                    self._wakeup = due
            # Name the change in the ping, so the neighbour pulls exactly it.
            if entry.peer_id in link.recent or len(link.recent) < codec.MAX_RECENT:
                link.recent[entry.peer_id] = entry.order
            else:
                link.recent_overflow = True

    def _relayable(self, msg):
        """Enough of the timestamp window left to relay ``msg`` safely."""
        skew = msg.body["ts"] / 1000.0 - self.now()
        return abs(skew) <= constants.CLOCK_SKEW_SECONDS - RELAY_WINDOW_MARGIN

    def _link_holds(self, link, peer_id, order):
        if link.holds.get(peer_id, -1) >= order[0]:
            return True  # it named that version (or a newer) in a digest ping
        entry = self.table.get(peer_id)
        return entry is not None and entry.order == order and entry.hash in link.known

    def link_rtt(self, link_id, rtt):
        """The transport measured a round trip on ``link_id`` (seconds).  The
        eager marks go to the EAGER_LINKS fastest outbound links: over a
        network whose links differ in latency, pushes past the flood phase
        then take the fast paths (docs/protocol.md, "Eager links")."""
        link = self.links.get(link_id)
        if link is None or not rtt >= 0:
            return []
        link.rtt = rtt if link.rtt is None else (link.rtt + rtt) / 2
        self._remark_eager()
        return []

    def _remark_eager(self):
        outs = [l for l in self._ready_links() if l.outbound]
        if len(outs) <= constants.EAGER_LINKS or any(l.rtt is None for l in outs):
            return  # all of them are marked, or not every one measured yet
        self._promote_eager()  # marks missing: the fastest take them
        eager = [l for l in outs if l.eager_local]
        others = sorted((l for l in outs if not l.eager_local), key=lambda l: l.rtt)
        changed = []
        while others:
            slow = max(eager, key=lambda l: (l.rtt, outs.index(l)))  # ties: the later dial
            if not others[0].rtt < constants.EAGER_SWAP_RATIO * slow.rtt:
                break
            eager.remove(slow)
            eager.append(others.pop(0))
            changed += [slow, eager[-1]]
        now = self.now()
        for l in changed:
            l.eager_local = l in eager
            self._announce_eager(l, now)

    def _announce_eager(self, link, now):
        """Tell the other end of ``link`` its eager mark at the next tick."""
        link.announce_eager = True
        if link.ping_due is None or link.ping_due > now:
            link.ping_due = now
        self._wakeup = None

    def _relay_targets(self, msg, from_link, record_hash):
        """Where a push that changed our table goes next (docs/protocol.md, "Push").

        Flood phase: while the wave this node would start is no bigger than
        the network, ``D * (D - 1) ** (hops + 1) <= N`` (D our links, N our
        table, hops those the push already made), forward to every link that
        lacks the record: early hops are cheap (few peers hold it yet) and
        flooding them takes the most hops off the spread.  After that, only
        the eager links that lack it: the eager mesh is connected, so the push
        still reaches everyone, at about 2 duplicates per delivery.  A node
        with no eager link falls back to FANOUT random links.
        """
        ready = self._ready_links()
        d = len(self.links)
        hops = constants.MAX_TTL_BY_TYPE[msg.type] - msg.ttl
        flood = d * (d - 1) ** (hops + 1) <= len(self.table)
        if not flood and not any(l.eager for l in ready):
            return self._pick(exclude={from_link.id}, count=self.fanout, lacking=record_hash)
        return [l for l in ready if l is not from_link and record_hash not in l.known
                and (flood or l.eager)]

    def _pick(self, exclude, count, lacking=None):
        candidates = [l for l in self._ready_links()
                      if l.id not in exclude and (lacking is None or lacking not in l.known)]
        if len(candidates) <= count:
            return candidates
        return self.rng.sample(candidates, count)

    # -- anti-entropy ---------------------------------------------------------------

    def _start_sync(self, link):
        now = self.now()
        if link.sync_outstanding_since is not None and now - link.sync_outstanding_since < SYNC_TIMEOUT:
            return []
        if (self._sync_link is not None and self._sync_link != link.id
                and now < self._sync_busy_until):
            # One sync at a time: this one waits for the one in progress, and
            # goes only if our digest still differs from the link's then
            # (tick), which after a newcomer's first sync it mostly does not.
            if not link.sync_deferred:
                link.sync_deferred = True
                # never due sooner than a digest ping would be (the transport
                # skips rescheduling its tick after a frame for less)
                self._sync_busy_until = max(self._sync_busy_until,
                                            now + constants.DIGEST_PING_DELAY)
                self._wakeup = None
            return []
        link.sync_deferred = False
        self._sync_link = link.id
        self._sync_busy_until = now + SYNC_TIMEOUT
        self._wakeup = None
        body = codec.encode_body(MessageType.PEER_REQUEST, {
            "id": self._random_id(), "ts": self.now_ms(),
            "sync": self.table.bucket_hashes()})
        # Answers name the request by its message id (hash of the body).
        link.sync_outstanding_since = now
        link.last_sync_started = now
        link.sync_ids[codec.message_id(body)] = None
        if len(link.sync_ids) > 8:
            link.sync_ids.popitem(last=False)
        return [self._send(link, codec.encode(MessageType.PEER_REQUEST, 0, body),
                           MessageType.PEER_REQUEST)]

    def _start_deferred_sync(self):
        """The first deferred link whose digest still differs from ours syncs;
        the others whose digest now agrees are done."""
        digest = self.table.digest()
        for link in self._ready_links():
            if not link.sync_deferred:
                continue
            if link.remote_digest == digest:
                link.sync_deferred = False
                continue
            actions = self._start_sync(link)
            if actions:
                return actions
        return []

    def _answer_sync(self, link, msg):
        differing = self.table.differing_buckets(msg.body["sync"])
        entries = [e for e in self.table.in_buckets(differing) if e.hash not in link.known]
        actions = self._respond(link, msg.id, entries, 0, allow_empty=True)
        if differing and self.now() - link.last_sync_started >= ASK_BACK_AFTER:
            # They may hold something we lack in those buckets: ask back, but
            # not when this request answers our own recent sync (that would
            # make two peers sync each other on every round trip while
            # changes are in flight).
            actions += self._start_sync(link)
        return actions

    def _respond(self, link, request_id, entries, ttl, allow_empty=False):
        actions = []
        chunk = constants.MAX_RECORDS_PER_RESPONSE
        batches = [entries[i:i + chunk] for i in range(0, len(entries), chunk)]
        if not batches and allow_empty:
            batches = [[]]
        for batch in batches:
            body = {"id": self._random_id(), "ts": self.now_ms(), "re": request_id,
                    "recs": [e.wire() for e in batch]}
            # Keep each frame under the limit even with large records.
            while batch and len(codec.encode_body(MessageType.PEER_LIST_RESPONSE, body)) > constants.MAX_MESSAGE_BYTES - 200:
                batch = batch[: len(batch) // 2]
                body["recs"] = [e.wire() for e in batch]
            for e in batch:
                link.mark_known(e.hash)
            body_bytes = codec.encode_body(MessageType.PEER_LIST_RESPONSE, body)
            self.dedup.add(codec.message_id(body_bytes))
            frame = codec.encode(MessageType.PEER_LIST_RESPONSE, ttl, body_bytes)
            actions.append(self._send(link, frame, MessageType.PEER_LIST_RESPONSE))
        return actions

    def _remember_route(self, request_id, link_id):
        self.routes[request_id] = (link_id, self.now() + constants.REQUEST_ROUTE_SECONDS)
        while len(self.routes) > constants.MAX_REQUEST_ROUTES:
            self.routes.popitem(last=False)

    # -- searching -------------------------------------------------------------------

    def search(self, repo=None, peer=None):
        """Ask the network; returns (request_id, actions). Answers arrive as
        SearchAnswer actions from later receive() calls."""
        fields = {"id": self._random_id(), "ts": self.now_ms()}
        if repo is not None:
            fields["repo"] = repo
        else:
            fields["peer"] = peer
        body = codec.encode_body(MessageType.PEER_REQUEST, fields)
        frame = codec.encode(MessageType.PEER_REQUEST, constants.TTL_REQUEST, body)
        rid = codec.message_id(body)
        self.dedup.add(rid)
        self.my_requests[rid] = self.now() + constants.REQUEST_ROUTE_SECONDS
        links = self._pick(exclude=set(), count=max(self.fanout, constants.TARGET_LINKS))
        return rid, [self._send(l, frame, MessageType.PEER_REQUEST) for l in links]

    # -- time passing -------------------------------------------------------------------

    def next_wakeup(self):
        """The earliest time tick() has something to do.

        Kept between calls (the transport asks after every frame) and dropped
        whenever a deadline can have moved earlier: a link opened, closed or
        said HELLO, a digest ping was scheduled, the own record was re-issued,
        a tick ran, or the link whose silence deadline was the answer spoke.
        Code that changes a link's timers from outside calls
        :meth:`timers_changed`."""
        if self._wakeup is None:
            self._wakeup = self._scan_wakeup()
        return self._wakeup

    def timers_changed(self):
        """Link timers were set from outside the core (the simulator)."""
        self._wakeup = None

    def _scan_wakeup(self):
        times = [self._next_expiry_check]
        for link in self.links.values():
            times.append(link.last_heartbeat_sent + constants.HEARTBEAT_INTERVAL)
            times.append(link.last_heard + constants.LINK_DEAD_AFTER if link.hello_received
                         else link.opened_at + constants.HELLO_TIMEOUT)
            if link.ping_due is not None:
                times.append(link.ping_due)
        if self.broadcasting and self.own is not None:
            times.append(self._refresh_due())
        if any(l.sync_deferred for l in self.links.values()):
            times.append(self._sync_busy_until)
        if self._wants:
            times.append(min(w.due for w in self._wants.values()))
        return min(times)

    def _refresh_due(self):
        """When the own record is re-signed: LIFETIME_REFRESHES times per
        the lifetime it declares (every 30 min for the default 2 h), each
        time a random 0-10 % early (REFRESH_JITTER), so owners that started
        together drift apart instead of refreshing in lockstep."""
        return (self.own.record["issued_at"] / 1000.0
                + self.own.lifetime / constants.LIFETIME_REFRESHES * self._refresh_share)

    def tick(self):
        """Do what is due: digest pings, heartbeats, dead links, expiry, refresh."""
        now = self.now()
        actions = []
        digest = self.table.digest()
        for link in list(self.links.values()):
            silent_for = now - link.last_heard
            if not link.hello_received and now - link.opened_at >= constants.HELLO_TIMEOUT:
                actions.append(Close(link.id, "no valid HELLO in time"))
                self.link_closed(link.id)
                continue
            if silent_for >= constants.LINK_DEAD_AFTER:
                actions.append(Close(link.id, "missed heartbeats"))
                self.link_closed(link.id)
                continue
            if not link.hello_received:
                continue
            ping = link.ping_due is not None and link.ping_due <= now
            if ping and link.recent and not link.recent_overflow:
                # Name only what the link has not shown it holds meanwhile (it
                # sent us the push, or we pushed it there): with the eager mesh
                # most neighbours have the change before the ping is due.
                link.recent = {pid: order for pid, order in link.recent.items()
                               if not self._link_holds(link, pid, order)}
                if (not link.recent and not link.announce_eager and
                        now - link.last_heartbeat_sent < constants.HEARTBEAT_INTERVAL):
                    link.ping_due = None
                    continue
            if ping or now - link.last_heartbeat_sent >= constants.HEARTBEAT_INTERVAL:
                link.ping_due = None
                link.last_heartbeat_sent = now
                fields = {"id": self._random_id(), "ts": self.now_ms(),
                          "digest": digest, "n": len(self.table), "load": 0}
                if link.announce_eager:
                    fields["eager"] = link.eager_local
                    link.announce_eager = False
                if ping and link.recent and not link.recent_overflow:
                    fields["recent"] = [[bytes.fromhex(pid), v, ia]
                                        for pid, (v, ia) in link.recent.items()]
                link.recent = {}
                link.recent_overflow = False
                body = codec.encode_body(MessageType.HEARTBEAT, fields)
                actions.append(self._send(
                    link, codec.encode(MessageType.HEARTBEAT, constants.TTL_HEARTBEAT, body),
                    MessageType.HEARTBEAT))
        if now >= self._sync_busy_until or self._sync_link not in self.links:
            actions += self._start_deferred_sync()
        if self._wants:
            actions += self._ask_wanted(now)
        if now >= self._next_expiry_check:
            self._next_expiry_check = now + 1.0
            for peer_id in self.table.expire(now):
                actions.append(TableChange("removed", peer_id))
            for rid in [r for r, (_, exp) in self.routes.items() if exp <= now]:
                del self.routes[rid]
            for rid in [r for r, exp in self.my_requests.items() if exp <= now]:
                del self.my_requests[rid]
        if self.broadcasting and self.own is not None and now >= self._refresh_due():
            actions += self._publish(MessageType.PEER_ANNOUNCEMENT,
                                     self._issue_record(True, bump=False))
        self._wakeup = None  # timers moved
        return actions
