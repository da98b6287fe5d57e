"""GossipService: one GossipCore on real sockets (wss + mutual TLS).

This is the reactor-side twin of :mod:`peernet.gossip.memnet`: it feeds the
core link events, frames and time, carries out the actions the core returns,
and keeps the overlay connected.

What a caller may rely on:

* **Links.** Every link is a WebSocket (path ``/gossip``, subprotocol
  ``peernet.2``, binary frames of at most MAX_MESSAGE_BYTES) over TLS 1.3
  with certificates on both sides (:class:`peernet.tls.MutualTLS`).  An
  outbound link pins the peer_id of the signed record it was dialled from; a
  mismatch fails the TLS handshake, before any frame.
* **Connection manager.** About ``target_links`` outbound links to live
  broadcasting peers of the table, half chosen by contact history and half at
  random (:class:`peernet.peer.connector.DialPlanner`), never to itself, at
  most one link per remote peer_id, redialled with exponential backoff and
  jitter.  A broadcasting node accepts at most ``max_inbound`` inbound links
  and refuses further handshakes.
* **Silent mode** (``broadcasting=False``, the default) listens on nothing
  and presents a throwaway certificate, new for every connection, so no
  neighbour ever learns the node's long-term peer_id; its own core never
  publishes a record.
* **Abuse and scores.** Each invalid frame is a Penalty on the remote's
  score (:mod:`peernet.peer.scoring`); a text frame is a Penalty and closes
  the link; frames above FLOOD_RATE per second (after a FLOOD_BURST) are
  dropped unread and penalised.  When the score falls below SCORE_CUT_OFF
  the link is closed and a broadcasting remote refused for a cool-off.
  The same scores measure links (uptime, drops, heartbeat regularity,
  WebSocket ping round trips, answers to our searches) and order dialling
  and search results.  An inbound link from a silent peer is scored under
  an opaque link key, never under an identity, and forgotten when it closes.
* **Privacy.** Nothing here logs, raises or keeps the socket address of an
  inbound connection; logs name links by opaque ids, and name a peer_id only
  for outbound links (those go to broadcasting peers, whose records are
  public anyway).
* **Time** comes from the reactor passed in; the core is ticked by one
  ``callLater`` at ``core.next_wakeup()``, rescheduled after each batch (after
  a received frame only if the tick is not due within RECEIVE_WAKEUP_FLOOR,
  the earliest a frame can make the core due).
"""

import random
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from autobahn.websocket.types import ConnectionDeny
from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from peernet import constants
from peernet.errors import ConfigError, PeernetError
from peernet.gossip.core import Close, GossipCore, Penalty, SearchAnswer, Send, TableChange
from peernet.gossip.table import entry_from_wire
from peernet.identity import NodeIdentity
from peernet.peer.connector import DialPlanner, REFUSE_SECONDS
from peernet.peer.scoring import LinkMeter, PeerScores, is_anonymous, link_key
from peernet.peer.links import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    OPEN_HANDSHAKE_TIMEOUT,
    CLOSE_HANDSHAKE_TIMEOUT,
    GossipClientFactory,
    GossipLink,
    GossipTLSClientEndpoint,
    prepare_frame,
    tls_server_factory,
)
from peernet.records import b64decode, b64encode, canonical_json
from peernet.tls import MutualTLS

log = Logger()

#: Invalid frames that take a peer with a neutral score to the cut-off.
PENALTY_LIMIT = constants.PENALTY_LIMIT
#: Default wait for answers to a network search.
SEARCH_TIMEOUT = 5.0
#: A search ends this long after its latest answer (answers come in a burst).
SEARCH_SETTLE = 0.5
#: Floor for the tick timer, so a core that wants "now" again cannot spin.
MIN_TICK_DELAY = 0.005
#: The earliest wakeup a received frame can give the core, from now: the
#: digest-ping delay (a table change schedules pings that far ahead; every
#: other time the core keeps is further away).  After a frame, the tick is
#: rescheduled only if it is not already due by then (see _tick_after_frame;
#: tests/test_peer_frames.py checks the bound against the real core).
RECEIVE_WAKEUP_FLOOR = constants.DIGEST_PING_DELAY
#: Raw inbound connections (TLS not done yet) allowed beyond max_inbound.
HANDSHAKE_SLACK = 16


@dataclass
class _Search:
    deferred: defer.Deferred
    repo: "str | None"
    peer: "str | None"
    settle: float = SEARCH_SETTLE
    timer: object = None
    settle_timer: object = None
    answered: set = field(default_factory=set)
    #: links the request went out on that have not answered yet (scores)
    asked: set = field(default_factory=set)


def gossip_address(host, port):
    """``wss://HOST:PORT/gossip`` (IPv6 hosts in brackets)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"wss://{host}:{port}{constants.GOSSIP_PATH}"


def parse_gossip_address(address):
    """``(host, port)`` of a dialable gossip address, or None.

    Only ``wss://HOST[:PORT]/gossip`` is dialable (other schemes in a record,
    such as future torrent or onion addresses, are skipped).
    """
    try:
        parts = urlsplit(address)
        port = parts.port or 443
    except (ValueError, TypeError, AttributeError):
        return None
    if parts.scheme != "wss" or not parts.hostname or parts.path != constants.GOSSIP_PATH:
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    if not 0 < port < 65536:
        return None
    return parts.hostname, port


def is_onion_address(address):
    """True for a URL whose host is a Tor onion service (``*.onion``)."""
    try:
        host = urlsplit(address).hostname or ""
    except (ValueError, TypeError, AttributeError):
        return False
    return host.endswith(".onion")


class GossipService(service.Service):
    """The gossip overlay of one node.  See the module docstring.

    ``GossipService(reactor, identity, *, broadcasting=False, listen=None,
    addresses=None, ...)``:

    * ``identity``: the node's :class:`NodeIdentity` (signs its record; TLS
      identity when broadcasting).
    * ``broadcasting``: publish a record and accept inbound links.
    * ``listen``: server endpoint string (plain stream, e.g.
      ``"tcp:8701:interface=0.0.0.0"``); TLS is added here.  Required when
      broadcasting.
    * ``addresses``: the URLs to announce (``wss://HOST:PORT/gossip``).  If
      None, one is made from the listening port's host and port, which must
      then be a concrete address (not 0.0.0.0 / ::).
    * ``is_bootstrap``, ``repos``, ``table``: passed to the GossipCore.
    * ``target_links``, ``max_inbound``, ``reconnect_base_delay``,
      ``reconnect_max_delay``, ``penalty_limit``, ``refuse_seconds``,
      ``dial_timeout``: connection-manager knobs (defaults from constants).
    * ``bind_address``: local host to dial from (default: any).
    * ``connect_endpoint``: optional ``callable(host, port)`` returning a
      plain stream client endpoint (e.g. through Tor); TLS is added here.
    * ``rng``: a ``random.Random`` (default: ``random.SystemRandom()``).
    """

    name = "gossip"

    def __init__(self, reactor, identity, *, broadcasting=False, listen=None, addresses=None,
                 is_bootstrap=True, repos=(), table=None,
                 target_links=constants.TARGET_LINKS,
                 max_inbound=constants.MAX_INBOUND_LINKS,
                 reconnect_base_delay=constants.RECONNECT_BASE_DELAY,
                 reconnect_max_delay=constants.RECONNECT_MAX_DELAY,
                 penalty_limit=PENALTY_LIMIT, refuse_seconds=REFUSE_SECONDS,
                 dial_timeout=OPEN_HANDSHAKE_TIMEOUT, bind_address=None,
                 connect_endpoint=None, rng=None):
        if broadcasting and listen is None:
            raise ConfigError("a broadcasting node needs an endpoint to listen on")
        self.reactor = reactor
        self.identity = identity
        self.rng = rng if rng is not None else random.SystemRandom()
        self.listen = listen
        self.target_links = target_links
        self.max_inbound = max_inbound
        self.penalty_limit = penalty_limit
        self.dial_timeout = dial_timeout
        self.bind_address = bind_address
        self._connect_endpoint = connect_endpoint
        #: dial ``.onion`` addresses: only a node whose connections go
        #: through Tor can (peernet.tor sets it); others skip them
        self.dial_onions = False
        self._want_broadcasting = broadcasting
        self._addresses = list(addresses) if addresses is not None else None
        #: optional callable(listen_host) -> list (or Deferred of one) of more
        #: addresses to announce next to the gossip address made from the port
        self.extra_addresses = None
        # The core starts silent; a broadcasting node issues its record once
        # its port is listening (the address may only be known then).
        self.core = GossipCore(identity, reactor, self.rng, broadcasting=False,
                               is_bootstrap=is_bootstrap, repos=repos, table=table)
        #: one score per broadcasting peer (and per anonymous inbound link)
        self.scores = PeerScores(reactor, penalty_limit=penalty_limit, cool_off=refuse_seconds)
        self.planner = DialPlanner(reactor, self.rng, reconnect_base_delay,
                                   reconnect_max_delay, refuse_seconds, scores=self.scores)
        self._meters = {}  # link id -> LinkMeter (open links)
        self._probe_call = None
        self.listening_port = None
        #: raw inbound TCP connections (counted by the server protocol)
        self.inbound_connections = 0
        self.penalties_total = 0
        #: links already warned about a clock outside the window (one line each)
        self._clock_warned = set()
        #: links closed for a score below the cut-off; frames dropped over the rate
        self.cut_offs_total = 0
        self.flood_dropped_total = 0
        #: frames we would have relayed to a link above RELAY_RATE (dropped)
        self.relay_dropped_total = 0
        self.rejected_seed_records = 0
        #: optional callable(direction, frame), direction "in" or "out", for
        #: every binary frame received or sent on a link (metrics count them)
        self.on_frame = None
        self._links = {}  # link id -> GossipLink (dialling, handshaking or open)
        self._listeners = []
        self._searches = {}
        self._tick_call = None
        self._maintain_call = None
        self._switching = False
        self._start_outcome = None
        self._start_waiters = []
        self._gone_waiters = []

    # -- lifecycle ---------------------------------------------------------------

    def startService(self):
        super().startService()
        self._start().addBoth(self._start_done)

    def _start_done(self, outcome):
        if isinstance(outcome, defer.Failure):
            # PeernetError: e.g. tor would not add the onion service.
            if outcome.check(CannotListenError, PeernetError):
                # An operational error (port in use, permission denied): the
                # caller reports it in one line; no traceback (log.failure is
                # critical, which twist prints to stderr before logging begins).
                log.error("the gossip service could not start: {error}",
                          error=outcome.getErrorMessage())
            else:
                log.failure("the gossip service could not start", outcome)
        self._start_outcome = outcome
        waiters, self._start_waiters = self._start_waiters, []
        for d in waiters:
            self._fire(d, outcome)

    @staticmethod
    def _fire(d, outcome):
        if isinstance(outcome, defer.Failure):
            d.errback(outcome)
        else:
            d.callback(outcome)

    @defer.inlineCallbacks
    def _start(self):
        if self._want_broadcasting:
            yield self._go_broadcasting(self._addresses)
        self._schedule_tick()
        self._schedule_maintain(0)
        self._probe_call = self.reactor.callLater(constants.RTT_PROBE_INTERVAL, self._probe)
        return self

    def when_started(self):
        """A Deferred firing with the service once it listens (if broadcasting)
        and has begun dialling; it fails if listening failed."""
        d = defer.Deferred()
        if self._start_outcome is None:
            self._start_waiters.append(d)
        else:
            self._fire(d, self._start_outcome)
        return d

    def stopService(self):
        """Close every link (closing handshake, then abort) and stop listening."""
        super().stopService()
        for call in (self._tick_call, self._maintain_call, self._probe_call):
            if call is not None and call.active():
                call.cancel()
        self._tick_call = self._maintain_call = self._probe_call = None
        for rid in list(self._searches):
            self._end_search(rid)
        waits = []
        if self.listening_port is not None:
            waits.append(defer.maybeDeferred(self.listening_port.stopListening))
            self.listening_port = None
        waits.append(self._close_all_links(CLOSE_GOING_AWAY, "shutting down"))
        return defer.gatherResults(waits, consumeErrors=True).addBoth(lambda _: None)

    def _close_all_links(self, code, reason, only=None):
        """Close links (all, or those ``only`` selects); fires when all are gone."""
        links = [l for l in self._links.values() if only is None or only(l)]
        if not links:
            return defer.succeed(None)
        waiters = []
        for link in links:
            d = defer.Deferred()
            self._gone_waiters.append((link, d))
            waiters.append(d)
            link.superseded = True  # our own decision: not the peer's failure
            if link.connect_deferred is not None:
                link.connect_deferred.cancel()
            elif link.opened:
                link.close(code, reason)
                self.core.link_closed(link.id)
            else:
                link.abort()
        all_gone = defer.gatherResults(waiters, consumeErrors=True)

        def force():
            for link in links:
                if not link.lost:
                    link.abort()

        # The closing handshake has its own timeout; this is the backstop.
        timer = self.reactor.callLater(CLOSE_HANDSHAKE_TIMEOUT + 1.0, force)
        all_gone.addBoth(lambda r: timer.cancel() if timer.active() else None)
        return all_gone

    # -- broadcasting --------------------------------------------------------------

    @property
    def broadcasting(self):
        return self.core.broadcasting

    @defer.inlineCallbacks
    def _go_broadcasting(self, addresses):
        if self.listening_port is None:
            if self.listen is None:
                raise ConfigError("broadcasting needs an endpoint to listen on")
            endpoint = serverFromString(self.reactor, self.listen)
            creator = MutualTLS(self.identity, on_peer=self._tls_peer_allowed)
            factory = tls_server_factory(creator, self, admit=self._admit_inbound)
            self.listening_port = yield endpoint.listen(factory)
            host = self.listening_port.getHost()
            log.info("gossip listening on port {port}", port=getattr(host, "port", None))
        if addresses is None:
            addresses = self._addresses
        if addresses is None:
            host = self.listening_port.getHost()
            if host.host in ("0.0.0.0", "::", ""):
                port, self.listening_port = self.listening_port, None
                yield defer.maybeDeferred(port.stopListening)
                raise ConfigError(
                    "the gossip endpoint listens on every interface; give the address "
                    "to announce (wss://HOST:PORT/gossip)")
            addresses = [gossip_address(host.host, host.port)]
        addresses = list(addresses)
        if self.extra_addresses is not None:
            # e.g. the BitTorrent address, known once that engine listens; on
            # the host this node announces for gossip.
            dialable = [parse_gossip_address(a) for a in addresses]
            host_name = next((d[0] for d in dialable if d), self.listening_port.getHost().host)
            extra = yield defer.maybeDeferred(self.extra_addresses, host_name)
            addresses += [a for a in extra if a not in addresses]
        self._addresses = list(addresses)
        self._execute(self.core.set_broadcast(True, self._addresses))

    def set_broadcast(self, on, addresses=None):
        """Turn broadcasting on (listen, publish a record) or off (tombstone,
        stop listening).  Every existing link is closed and redialled, so no
        neighbour links the node's silent and broadcasting lives.  Returns a
        Deferred."""
        return defer.ensureDeferred(self._set_broadcast(on, addresses))

    async def _set_broadcast(self, on, addresses):
        if on == self.core.broadcasting:
            if on and addresses is not None and list(addresses) != self._addresses:
                self._addresses = list(addresses)
                self._execute(self.core.set_broadcast(True, self._addresses))
            return
        # No dialling while the identity changes: a link must never carry
        # both lives (a record sent over a throwaway-key link would tell that
        # neighbour who the silent peer was).
        self._switching = True
        try:
            if on:
                await self._close_all_links(CLOSE_NORMAL, "identity change")
                await self._go_broadcasting(addresses)
            else:
                # The tombstone goes out on the current links before they close.
                self._execute(self.core.set_broadcast(False))
                if self.listening_port is not None:
                    port, self.listening_port = self.listening_port, None
                    await defer.maybeDeferred(port.stopListening)
                await self._close_all_links(CLOSE_NORMAL, "identity change")
        finally:
            self._switching = False
        self._want_broadcasting = on
        self._schedule_maintain(0)

    def set_repos(self, repos):
        """Replace the repos in our record (a PEER_UPDATE when broadcasting)."""
        self._execute(self.core.set_repos(repos))

    # -- observers -----------------------------------------------------------------

    def add_listener(self, listener):
        """``listener(change)`` is called for every TableChange."""
        self._listeners.append(listener)

    def remove_listener(self, listener):
        self._listeners.remove(listener)

    def _emit(self, change):
        # No debug line per change: a Twisted Logger builds and publishes the
        # event even when the level filter drops it (~5-20 us, once per
        # relayed message).  Table changes are on the control API's event
        # stream (/api/events) for whoever wants to watch them.
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.failure("a table listener raised")

    # -- seeding ---------------------------------------------------------------------

    def add_seed_records(self, signed_records):
        """Offer signed records (``{"record": {...}, "signature": b64}`` each, as
        bootstrap servers return them) to the table; each is verified and a bad
        one is skipped.  Returns how many changed the table."""
        now = self.reactor.seconds()
        changed = 0
        for signed in signed_records:
            try:
                record_bytes = canonical_json(signed["record"])
                signature = b64decode(signed["signature"], "signature")
                entry = entry_from_wire(record_bytes, signature, now)
            except (PeernetError, KeyError, TypeError, ValueError):
                self.rejected_seed_records += 1
                continue
            if entry.peer_id == self.identity.peer_id:
                continue
            kind = self.core.table.offer(entry, now)
            if kind is not None:
                changed += 1
                self._emit(TableChange(kind, entry.peer_id))
        if changed:
            self._schedule_maintain(0)
        return changed

    # -- searching -------------------------------------------------------------------

    def search(self, repo=None, peer=None, timeout=SEARCH_TIMEOUT, settle=SEARCH_SETTLE,
               local=True):
        """Signed records of peers sharing ``repo`` (or of ``peer``), as a Deferred
        list of ``{"record", "signature"}``.

        The local table answers at once when it knows a match (unless
        ``local`` is false: then the network is always asked); otherwise a
        PEER_REQUEST goes out and answers are collected until ``timeout``, or
        ``settle`` seconds after the latest answer.  No answer gives [].
        """
        if (repo is None) == (peer is None):
            raise ValueError("search needs exactly one of repo= or peer=")
        if local:
            found = self._matches(repo, peer)
            if found:
                return defer.succeed(self._signed(found))
        try:
            rid, actions = self.core.search(repo=repo, peer=peer)
        except PeernetError as e:
            return defer.fail(e)
        d = defer.Deferred(canceller=lambda _: self._end_search(rid, cancelled=True))
        search = _Search(d, repo, peer, settle)
        search.timer = self.reactor.callLater(timeout, self._end_search, rid)
        self._searches[rid] = search
        for action in actions:
            link = self._links.get(action.link) if isinstance(action, Send) else None
            if link is not None:
                search.asked.add(link.id)
                self.scores.asked(self._score_key(link))
        self._execute(actions)
        return d

    def _matches(self, repo, peer):
        if repo is not None:
            entries = self.core.table.find_repo(repo)
        else:
            entry = self.core.table.get(peer)
            entries = [entry] if entry is not None and not entry.is_tombstone else []
        now = self.reactor.seconds()
        entries = [e for e in entries if e.expires_at > now]
        entries.sort(key=lambda e: self.planner.score(e.peer_id), reverse=True)
        return entries

    @staticmethod
    def _signed(entries):
        return [{"record": e.record, "signature": b64encode(e.signature)} for e in entries]

    def _search_answer(self, answer):
        search = self._searches.get(answer.request_id)
        if search is None:
            return
        search.answered.update(answer.peer_ids)
        if search.settle_timer is not None and search.settle_timer.active():
            search.settle_timer.cancel()
        search.settle_timer = self.reactor.callLater(
            search.settle, self._end_search, answer.request_id)

    def _end_search(self, rid, cancelled=False):
        search = self._searches.pop(rid, None)
        if search is None:
            return
        for timer in (search.timer, search.settle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        if not cancelled:
            # Answers were applied to the table; it holds the newest copy of
            # each (and anything gossip brought meanwhile).
            search.deferred.callback(self._signed(self._matches(search.repo, search.peer)))

    # -- the core's clock ------------------------------------------------------------

    def _schedule_tick(self):
        if not self.running:
            return
        now = self.reactor.seconds()
        when = max(self.core.next_wakeup(), now + MIN_TICK_DELAY)
        call = self._tick_call
        if call is not None and call.active():
            if call.getTime() <= when:
                return
            call.cancel()
        self._tick_call = self.reactor.callLater(when - now, self._tick)

    def _tick_after_frame(self, now):
        """After a received frame: the core's next wakeup moves earlier only
        to a time at least RECEIVE_WAKEUP_FLOOR from now, so a tick already
        due by then stands (no scan of every link's timers per frame)."""
        call = self._tick_call
        if call is not None and call.active() and call.getTime() <= now + RECEIVE_WAKEUP_FLOOR:
            return
        self._schedule_tick()

    def _tick(self):
        self._tick_call = None
        if not self.running:
            return
        try:
            actions = self.core.tick()
        except Exception:
            log.failure("gossip core tick failed")
            actions = []
        self._execute(actions)
        if self.core.table and self._tick_due_for_prune():
            self.planner.prune({e.peer_id for e in self.core.table})

    _last_prune = 0.0

    def _tick_due_for_prune(self):
        now = self.reactor.seconds()
        if now - self._last_prune >= constants.HEARTBEAT_INTERVAL:
            self._last_prune = now
            return True
        return False

    # -- carrying out actions ----------------------------------------------------------

    def _execute(self, actions, received_at=None):
        # A relay is one frame (the same bytes object) sent to several links:
        # framed once for all the inbound ones (links.prepare_frame); an
        # outbound link masks each frame with a fresh key of its own.
        # ``received_at``: the actions answer a frame received then (the
        # tick is rescheduled only if it must be: _tick_after_frame).
        framed = prepared = None
        links = self._links
        on_frame = self.on_frame
        for action in actions:
            if isinstance(action, Send):
                link = links.get(action.link)
                if link is not None:
                    frame = action.frame
                    if on_frame is not None:
                        on_frame("out", frame)
                    try:
                        if link.outbound:
                            link.send_prepared(prepare_frame(frame, masked=True))
                        else:
                            if framed is not frame:
                                framed, prepared = frame, prepare_frame(frame)
                            link.send_prepared(prepared)
                    except Exception:
                        log.failure("sending on gossip link {link_id} failed", link_id=link.id)
                        self._close(link, CLOSE_NORMAL, "send failed")
            elif isinstance(action, Close):
                link = self._links.get(action.link)
                if link is not None:
                    log.info("closing gossip link {link_id}: {reason}",
                             link_id=link.id, reason=action.reason)
                    if action.reason == "missed heartbeats":
                        self.scores.missed_heartbeats(self._score_key(link))
                    self._close(link, CLOSE_NORMAL, action.reason)
                else:
                    self.core.link_closed(action.link)
            elif isinstance(action, TableChange):
                self._emit(action)
                if action.kind in ("added", "updated") and self._outbound_wanted():
                    # A new record may be a peer to dial; with all the
                    # outbound links we want, _maintain would return at once.
                    self._schedule_maintain(0)
                elif action.kind == "removed":
                    self.planner.forget(action.peer_id)
            elif isinstance(action, SearchAnswer):
                self._search_answer(action)
            elif isinstance(action, Penalty):
                self._penalize(action.link, action.code, action.detail)
        if received_at is None:
            self._schedule_tick()
        else:
            self._tick_after_frame(received_at)

    def _close(self, link, code, reason):
        link.close(code, reason)
        self._execute(self.core.link_closed(link.id))

    def _penalize(self, link_id, code, detail):
        link = self._links.get(link_id)
        if link is None or link.closing or link.lost:
            return
        link.penalties += 1
        self.penalties_total += 1
        log.debug("gossip link {link_id}: penalty {code} ({detail})",
                  link_id=link.id, code=code, detail=detail[:200])
        if code == "stale_timestamp" and link.id not in self._clock_warned:
            # A clock outside the window silences a peer entirely (every
            # message refused): one clear line per link, for the operator.
            self._clock_warned.add(link.id)
            log.warn("gossip link {link_id}: message refused: {detail} (is this machine's "
                     "or the other peer's clock wrong? check NTP)", link_id=link.id,
                     detail=detail[:200])
        if self.scores.penalize(self._score_key(link), code):
            self._cut_off(link, "score below the cut-off (invalid or abusive messages)")

    def _score_key(self, link):
        """A broadcasting remote's peer_id, else an opaque key for this link."""
        meter = self._meters.get(link.id)
        if meter is not None and meter.peer_id is not None:
            return meter.peer_id
        remote = self._broadcasting_remote(link)
        if remote is None:
            return link_key(link.id)
        if meter is not None:
            meter.peer_id = remote
        return remote

    def _cut_off(self, link, reason, close=True):
        """Close an abusive link; refuse its peer for a while if it broadcasts.

        ``close=False`` when the link is already being failed (by Autobahn).
        """
        self.cut_offs_total += 1
        remote = self._broadcasting_remote(link)
        if remote is not None:
            self.scores.refuse(remote)
            log.info("gossip link {link_id} closed ({reason}); peer refused for a while "
                     "({peer_id})", link_id=link.id, reason=reason,
                     peer_id=remote if link.outbound else "inbound")
        else:
            log.info("gossip link {link_id} closed ({reason})", link_id=link.id, reason=reason)
        if remote is not None or close:
            link.superseded = True  # accounted for here, not a dial failure to retry
        if close:
            self._close(link, CLOSE_POLICY_VIOLATION, reason)

    def link_oversized(self, link):
        """A frame over MAX_MESSAGE_BYTES: Autobahn is already failing the link
        (close code 1009); no honest peer sends one, so it is a cut-off."""
        if link is None or link.lost:
            return
        self.penalties_total += 1
        self.scores.penalize(self._score_key(link), "oversized")
        self._cut_off(link, f"a frame over {constants.MAX_MESSAGE_BYTES} bytes", close=False)

    def _broadcasting_remote(self, link):
        """The remote's peer_id if it is a broadcasting peer (else None)."""
        if link.outbound:
            return link.peer_id
        state = self.core.links.get(link.id)
        if state is not None and state.remote_broadcasting:
            return link.peer_id
        return None

    # -- link events (called by peernet.peer.links) --------------------------------------

    def _admit_inbound(self):
        return (self.running and self.listening_port is not None
                and self.inbound_connections < self.max_inbound + HANDSHAKE_SLACK)

    def _tls_peer_allowed(self, peer_id):
        # Runs inside the TLS handshake: quick checks only.
        return peer_id != self.identity.peer_id and not self.planner.is_refused(peer_id)

    def inbound_handshake(self, protocol, tls_peer_id):
        """WebSocket upgrade request from an authenticated client."""
        if not self.running or self.listening_port is None:
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "not accepting links")
        if not self._tls_peer_allowed(tls_peer_id):
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "refused")
        inbound = sum(1 for l in self._links.values() if not l.outbound and not l.lost)
        if inbound >= self.max_inbound:
            log.debug("inbound gossip link refused: {n} inbound links already", n=inbound)
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "too many links")
        for other in self._links_with(tls_peer_id):
            # Both sides dialled each other: keep the link dialled by the
            # smaller peer_id, so both ends make the same choice.
            if other.outbound and self.identity.peer_id < tls_peer_id:
                raise ConnectionDeny(409, "duplicate link")
            other.superseded = True
            if other.connect_deferred is not None:
                other.connect_deferred.cancel()
            else:
                self._close(other, CLOSE_NORMAL, "duplicate link")
        link = GossipLink(outbound=False, peer_id=tls_peer_id)
        link.protocol = protocol
        self._links[link.id] = link
        return link

    def _links_with(self, peer_id):
        return [l for l in self._links.values()
                if l.peer_id == peer_id and not l.lost and not l.closing]

    def link_open(self, link):
        if link.lost or link.closing:
            return
        if link.outbound:
            for other in self._links_with(link.peer_id):
                if other is not link and not other.outbound:
                    # A race the handshake check could not see: same rule.
                    if self.identity.peer_id < link.peer_id:
                        other.superseded = True
                        self._close(other, CLOSE_NORMAL, "duplicate link")
                    else:
                        link.superseded = True
                        link.close(CLOSE_NORMAL, "duplicate link")
                        return
            if link.deadline is not None and link.deadline.active():
                link.deadline.cancel()
            link.deadline = None
            self.planner.record_success(link.peer_id)
            log.info("gossip link {link_id} to {peer_id} open", link_id=link.id,
                     peer_id=link.peer_id)
        else:
            log.info("gossip link {link_id} open (inbound)", link_id=link.id)
        link.opened = True
        self._meters[link.id] = LinkMeter(self.reactor.seconds())
        self._ping(link)
        self._execute(self.core.link_opened(link.id, link.outbound, link.peer_id))

    def link_message(self, link, payload, is_binary):
        if link.lost or link.closing or not link.opened:
            return
        if not is_binary:
            self._penalize(link.id, "text_frame", "a text frame (gossip is binary only)")
            if not link.closing:
                self._close(link, CLOSE_UNSUPPORTED_DATA, "binary frames only")
            return
        now = self.reactor.seconds()
        meter = self._meters.get(link.id)
        if meter is not None:
            allowed, gap = meter.frame(now)
            if not allowed:
                # Over the rate: dropped unread (no signature check spent on it).
                self.flood_dropped_total += 1
                if meter.flood_penalty_due():
                    self._penalize(link.id, "flood", f"{meter.excess} frames above the rate")
                return
            if gap is not None:
                key = meter.peer_id
                if key is None:
                    key = self._score_key(link)
                # An anonymous link's availability is never scored (it stays
                # neutral: PeerScores), so its frame gaps are not recorded.
                if not is_anonymous(key):
                    self.scores.heard(key, gap)
        if self.on_frame is not None:
            self.on_frame("in", payload)
        try:
            actions = self.core.receive(link.id, payload)
        except Exception:
            # A bug, not the peer's fault; keep the node running.
            log.failure("gossip core failed on a frame from link {link_id}", link_id=link.id)
            return
        kept = actions
        for i, action in enumerate(actions):
            if isinstance(action, SearchAnswer):
                search = self._searches.get(action.request_id)
                if search is not None and link.id in search.asked:
                    search.asked.discard(link.id)  # one answer per link and search
                    self.scores.answered(self._score_key(link))
            elif isinstance(action, Send) and action.link != link.id:
                # A frame received on one link and sent on another is a relay:
                # capped per link below the receivers' flood limit, so relaying
                # someone's storm never makes this node look like a flooder.
                out = self._meters.get(action.link)
                if out is not None and not out.relay(now):
                    self.relay_dropped_total += 1
                    if kept is actions:
                        kept = actions[:i]
                    continue
            if kept is not actions:
                kept.append(action)
        self._execute(kept, received_at=now)

    def link_lost(self, link):
        if link.lost:
            return
        link.lost = True
        link.connect_deferred = None
        self._links.pop(link.id, None)
        self._clock_warned.discard(link.id)
        if link.deadline is not None and link.deadline.active():
            link.deadline.cancel()
        link.deadline = None
        key = self._score_key(link)
        meter = self._meters.pop(link.id, None)
        if meter is not None and not isinstance(key, tuple):
            # Uptime of a broadcasting peer's link; a drop nobody chose counts.
            dropped = link.outbound and not link.superseded and not link.closing
            self.scores.uptime(key, meter.take_uptime(self.reactor.seconds()), dropped)
        self.scores.forget(link_key(link.id))
        if link.opened:
            log.info("gossip link {link_id} closed", link_id=link.id)
            self._execute(self.core.link_closed(link.id))
        if link.outbound and not link.superseded:
            delay = self.planner.record_failure(link.peer_id, dropped=link.opened)
            if link.opened:
                log.info("link to {peer_id} dropped; redial in {delay:.2f} s",
                         peer_id=link.peer_id, delay=delay)
            else:
                log.info("dial to {peer_id} failed; retry in {delay:.2f} s",
                         peer_id=link.peer_id, delay=delay)
        for waiter in [w for w in self._gone_waiters if w[0] is link]:
            self._gone_waiters.remove(waiter)
            waiter[1].callback(None)
        if link.outbound:
            self._schedule_maintain(0)

    # -- round trips and uptime (scores) --------------------------------------------------

    def _probe(self):
        """Every RTT_PROBE_INTERVAL: credit open links' uptime, ping each link."""
        self._probe_call = None
        if not self.running:
            return
        now = self.reactor.seconds()
        for link in self.open_links():
            meter = self._meters.get(link.id)
            key = self._score_key(link)
            if meter is not None and not isinstance(key, tuple):
                self.scores.uptime(key, meter.take_uptime(now))
            self._ping(link)
        self._probe_call = self.reactor.callLater(constants.RTT_PROBE_INTERVAL, self._probe)

    def _ping(self, link):
        meter = self._meters.get(link.id)
        if meter is None or link.protocol is None:
            return
        meter.ping_payload = self.rng.getrandbits(64).to_bytes(8, "big")
        meter.ping_sent_at = self.reactor.seconds()
        try:
            link.protocol.sendPing(meter.ping_payload)
        except Exception:
            log.failure("ping on gossip link {link_id} failed", link_id=link.id)

    def link_pong(self, link, payload):
        """A WebSocket pong: the round trip of our latest ping, if it matches."""
        meter = self._meters.get(link.id)
        if meter is None or meter.ping_payload is None or payload != meter.ping_payload:
            return  # unsolicited or stale: ignored (Autobahn answers pings itself)
        rtt = self.reactor.seconds() - meter.ping_sent_at
        meter.ping_payload = meter.ping_sent_at = None
        self.scores.rtt(self._score_key(link), rtt)
        # The core keeps the fastest outbound links eager (docs/protocol.md).
        self._execute(self.core.link_rtt(link.id, rtt))

    def peer_score(self, peer_id):
        """The score of a broadcasting peer as the control API shows it."""
        return self.scores.snapshot(peer_id)

    # -- the connection manager ---------------------------------------------------------

    def _schedule_maintain(self, delay):
        if not self.running:
            return
        when = self.reactor.seconds() + max(delay, 0.0)
        call = self._maintain_call
        if call is not None and call.active():
            if call.getTime() <= when:
                return
            call.cancel()
        self._maintain_call = self.reactor.callLater(max(delay, 0.0), self._maintain)

    def _outbound_wanted(self):
        """How many more outbound links the connection manager wants (0: none)."""
        have = 0
        for l in self._links.values():
            if l.outbound and not l.lost and not l.closing:
                have += 1
        return max(0, self.target_links - have)

    def _maintain(self):
        self._maintain_call = None
        if not self.running or self._switching:
            return
        wanted = self._outbound_wanted()
        if not wanted:
            return
        linked = {l.peer_id for l in self._links.values() if not l.lost}
        ready, waiting = [], []
        for entry in self.core.table.live_broadcasting():
            peer_id = entry.peer_id
            if peer_id == self.identity.peer_id or peer_id in linked:
                continue
            if not self._dial_addresses(entry):
                continue
            (ready if self.planner.ready(peer_id) else waiting).append(peer_id)
        chosen = self.planner.choose(ready, wanted)
        for peer_id in chosen:
            self._dial(self.core.table.get(peer_id))
        if len(chosen) < wanted and waiting:
            due = self.planner.next_due(waiting)
            self._schedule_maintain(due - self.reactor.seconds())

    def _dial_addresses(self, entry):
        addresses = [a for a in entry.record["addresses"] if parse_gossip_address(a)
                     and (self.dial_onions or not is_onion_address(a))]
        if self.dial_onions:
            # Through Tor, an onion address first: end to end inside Tor,
            # no exit relay needed.
            addresses.sort(key=lambda a: not is_onion_address(a))
        return addresses

    def _dial(self, entry):
        addresses = self._dial_addresses(entry)
        # Rotate through a peer's addresses as dials to it fail.
        address = addresses[self.planner.history(entry.peer_id).failures % len(addresses)]
        host, port = parse_gossip_address(address)
        link = GossipLink(outbound=True, peer_id=entry.peer_id, address=address)
        self._links[link.id] = link
        # Silent: a throwaway certificate for every connection, so neither
        # this neighbour nor any other can tie our links to one another or
        # to our long-term peer_id.
        identity = self.identity if self.core.broadcasting else NodeIdentity.generate()
        creator = MutualTLS(identity, expected_peer_id=entry.peer_id)
        if self._connect_endpoint is not None:
            plain = self._connect_endpoint(host, port)
        else:
            plain = HostnameEndpoint(self.reactor, host, port, timeout=self.dial_timeout,
                                     bindAddress=self.bind_address)
        factory = GossipClientFactory(self, link, address)
        log.debug("dialling {peer_id} (link {link_id})", peer_id=entry.peer_id, link_id=link.id)
        d = GossipTLSClientEndpoint(creator, plain).connect(factory)
        link.connect_deferred = d
        link.deadline = self.reactor.callLater(self.dial_timeout + 1.0, self._dial_deadline, link)

        def connected(protocol):
            link.connect_deferred = None

        def failed(failure):
            link.connect_deferred = None
            self.link_lost(link)

        d.addCallbacks(connected, failed)

    def _dial_deadline(self, link):
        link.deadline = None
        if link.opened or link.lost:
            return
        if link.connect_deferred is not None:
            link.connect_deferred.cancel()
        else:
            link.abort()

    # -- inspection (safe to show: no inbound identities or addresses) --------------------

    def links_info(self):
        """One dict per link: ``link`` (id), ``outbound``, ``open``, and
        ``peer_id`` for outbound links only (inbound ones stay anonymous)."""
        return [{"link": l.id, "outbound": l.outbound, "open": l.opened and not l.closing,
                 "peer_id": l.peer_id if l.outbound else None}
                for l in self._links.values() if not l.lost]

    def open_links(self, outbound=None):
        return [l for l in self._links.values()
                if l.opened and not l.lost and not l.closing
                and (outbound is None or l.outbound == outbound)]
