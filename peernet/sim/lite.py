"""The lite node model: one update spreading over a settled network.

At 10 000 and 100 000 peers a table of every signed record per peer (and
Ed25519 on every hop) does not fit in memory or time, so this model keeps,
per peer, only what decides how ONE new record spreads over a network whose
tables are otherwise converged:

* whether the peer holds the new version (so the table digest differs from a
  neighbour's exactly when one holds it and the other does not);
* per link, whether it is *known* to hold the record (core ``LinkState.known``
  for that one hash), whether a digest ping is pending, and whether a sync
  is outstanding (the core's 5 s rule);

and applies the same rules as ``peernet.gossip.core.GossipCore``:

* the origin pushes PEER_UPDATE (TTL 32) to every link, marks them known, and
  schedules no digest ping (``_publish`` pings only the links it skipped,
  and at these sizes, ``4 * D <= N``, it skips none);
* a push that changes the table is forwarded with TTL-1 (if TTL > 0) to
  ``fanout`` random links other than the source that are not known to hold
  it (marked known); any other push is a duplicate;
* every table change (push or sync answer) schedules a digest ping
  ``DIGEST_PING_DELAY`` plus a random 0 to ``DIGEST_PING_SPREAD`` later on
  every link other than the source that is not known to hold the record and
  has not named it in a ping of its own (coalesced: one per link);
* a digest ping names the change (HEARTBEAT ``recent``; one record tracked,
  so never more than 8); its receiver notes that the sender holds it (no ping
  of its own names it on that link: core ``LinkState.holds``); a receiver
  whose digest differs and which lacks the named record asks for exactly it
  with a link-local PEER_REQUEST ``peer`` ``ASK_DELAY`` after the first ping
  naming it, if the push has not brought it by then (one ask whichever links
  named it; while still lacking, the naming links in turn, one more each
  round, ``ASK_RETRY`` later, doubling, ``ASK_TRIES`` rounds at most: core
  ``_want``), answered by a PEER_LIST_RESPONSE carrying that one record; the
  answer also clears the link's outstanding-sync mark (core: its id is in
  ``sync_ids``);
* every heartbeat, ping or regular, restarts that link's HEARTBEAT_INTERVAL
  timer (``last_heartbeat_sent``), and a regular heartbeat that falls due
  while a ping is pending replaces it (no ``recent``);
* a regular heartbeat (no ``recent``) whose digest differs starts a bucket
  sync unless one is outstanding on that link for < 5 s; the answer carries
  the differing bucket minus records the link is known to hold, and the
  answerer asks back when the buckets differ and it has no sync outstanding
  on that link (``Variant(recent=False)`` applies this to digest pings too:
  the rule before the core named changes in pings);
* a sync or ask answer that brings the record applies it (digest pings, no
  push).

Frame sizes are those of the real codec (:func:`frame_sizes`); processing
time per frame follows a :class:`peernet.sim.models.CpuModel` (one frame at a
time per peer).  The model is validated against the real core at N = 200 and
1000 (``peernet.sim.experiments.validate_lite``).

Not modelled (stated in docs/benchmarks.md): HELLO/link churn during the
spread, records other than the watched one (a sync answer's other records
in the differing bucket count as bytes only: 1 + (N-1)/256 records, the
expected size of the watched record's bucket, none assumed known on the
link), bloom false positives, and per-link ordering under
non-fixed latency is kept FIFO as TCP does.

Record refreshes (same version, newer ``issued_at``) change no digest
(digests hash record identities), so a refresh is a push and nothing else:
``Variant.refresh()``; ``peernet.sim.experiments.idle_model`` turns its cost
into idle bytes per link at the refresh interval an owner picks at N
(``peernet.gossip.table.refresh_interval_for``).

The same engine also runs the comparison protocols on the same network
model: push alone (no digest pings, optional 30 s anti-entropy), a
memberlist/Serf-style gossip and a GossipSub-style mesh (see ``Variant``).
"""

import hashlib
import heapq
import math
import random
from dataclasses import dataclass

from peernet import constants
from peernet.gossip import codec
from peernet.gossip.codec import MessageType
from peernet.gossip.core import ASK_DELAY, ASK_RETRY, ASK_TRIES
from peernet.sim.models import FREE_CPU, FRAME_OVERHEAD_BYTES, Fixed

# event kinds
(PUSH, HB, SREQ, SRESP, PINGS, HBT, ML_MSG, ML_TICK, GS_MSG, GS_TICK, GS_IHAVE, GS_IWANT, PUB,
 AREQ, ARESP, ASKT) = range(16)
KIND_NAMES = ["push", "heartbeat", "sync_req", "sync_resp", "pings", "hb_timer", "ml_msg",
              "ml_tick", "gs_msg", "gs_tick", "gs_ihave", "gs_iwant", "publish",
              "ask_req", "ask_resp", "ask_timer"]
TIMERS = (PINGS, HBT, ML_TICK, GS_TICK, ASKT)
#: kinds that are frames received by a peer (the rest are timers)
FRAME_KINDS = frozenset(k for k in range(16) if k not in TIMERS and k != PUB)
SYNC_RETRY = 5.0  # core._start_sync: no second sync on a link within 5 s


@dataclass
class Variant:
    """Which protocol the lite engine runs.

    ``peernet``: push fan-out + digest pings + 30 s anti-entropy (the real rules);
    ``recent=False`` runs the rule before digest pings named their changes
    (every mismatching heartbeat, ping or not, starts a bucket sync).
    ``push``: push fan-out only (``heartbeats`` adds the 30 s anti-entropy).
    ``memberlist``: every ``interval`` s a peer holding the message sends it to
    ``fanout`` random members (the whole membership, as memberlist/Serf do),
    until it has sent it RetransmitMult(4)·ceil(log10(N+1)) times; no pull.
    ``gossipsub``: eager push to a mesh of degree ``mesh_degree`` built on the
    overlay links; every ``interval`` s (heartbeat) IHAVE to ``mesh_degree``
    non-mesh links for messages seen in the last 3 heartbeats, IWANT pulls.
    """

    kind: str = "peernet"
    fanout: int = constants.FANOUT
    ttl: int = constants.TTL_UPDATE
    pings: bool = True
    heartbeats: bool = True
    recent: bool = True
    ping_delay: float = constants.DIGEST_PING_DELAY
    ping_spread: float = constants.DIGEST_PING_SPREAD
    hb_interval: float = constants.HEARTBEAT_INTERVAL
    interval: float = 0.2
    retransmit_mult: int = 4
    mesh_degree: int = 6
    history: int = 3
    #: peernet push rule (core ``_relay_targets``): ``flood`` forwards to
    #: every link lacking the record while D * (D - 1) ** (hops + 1) <= N,
    #: then over eager links only (each peer marks its first ``eager_links``
    #: outbound links; either end's mark makes a link eager).  With
    #: eager_links 0 and no flood: ``fanout`` random links (the rule before).
    eager_links: int = constants.EAGER_LINKS
    flood: bool = True
    #: flood while D * (D - 1) ** (hops + 1) <= N * flood_factor (1 in the
    #: core; 15 floods one hop more, to show what that costs)
    flood_factor: float = 1.0
    #: NOT the core's rule (an experiment, benchmarks/sim.py compare-latency):
    #: each peer marks as eager the ``eager_links`` of its outbound links with
    #: the lowest latency (as a measured RTT would rank them) instead of its
    #: first dials; either end's mark still makes a link eager.  Needs
    #: ``adj.outbound``; with equal latencies it is the core's rule.
    eager_fastest: bool = False
    #: with ``eager_fastest``: each peer ranks its dials by an RTT estimate
    #: off by a log-normal factor of this sigma (0: the link's true latency)
    rtt_noise: float = 0.0

    @classmethod
    def peernet(cls, **kw):
        return cls("peernet", **kw)

    @classmethod
    def push_only(cls, heartbeats=False, **kw):
        kw.setdefault("eager_links", 0)
        kw.setdefault("flood", False)
        return cls("push", pings=False, heartbeats=heartbeats, **kw)

    @classmethod
    def peernet_fanout(cls, **kw):
        """peernet's rule before the eager mesh: push to ``fanout`` random links."""
        return cls("peernet", eager_links=0, flood=False, **kw)

    @classmethod
    def refresh(cls, **kw):
        """A record refresh (same version, newer ``issued_at``): digests hold
        record identities, so a refresh changes none and starts no digest
        ping, no ask and no bucket sync; it spreads as a PEER_ANNOUNCEMENT
        (TTL 32) by push alone (flood phase, then the eager mesh, as any
        push), and the peers the push misses keep their older copy (same
        digest).  Heartbeats are counted apart (idle model)."""
        return cls("push", pings=False, heartbeats=False, ttl=constants.TTL_ANNOUNCEMENT, **kw)

    @classmethod
    def memberlist(cls, **kw):
        return cls("memberlist", fanout=3, interval=0.2, pings=False, heartbeats=False, **kw)

    @classmethod
    def gossipsub(cls, **kw):
        return cls("gossipsub", interval=1.0, mesh_degree=6, pings=False, heartbeats=False, **kw)


_SIZES = None


def frame_sizes():
    """Bytes on the wire (codec frame + WebSocket/TLS overhead) of each frame
    type, built with the real codec and a real signed record."""
    global _SIZES
    if _SIZES is not None:
        return _SIZES
    from peernet.records import b64decode, canonical_json, make_record
    from peernet.sim.realnet import SimIdentity
    ident = SimIdentity(bytes(32))
    ts = 1_800_000_000_000
    signed = make_record(ident, ["wss://203.0.113.5:8701/gossip"], version=ts, issued_at_ms=ts,
                         repos=[{"name": "convergence-run-00"}])
    rec, rsig = canonical_json(signed["record"]), b64decode(signed["signature"], "signature")
    T = MessageType

    def size(mtype, ttl, fields):
        body = codec.encode_body(mtype, dict({"id": bytes(16), "ts": ts}, **fields))
        return len(codec.encode(mtype, ttl, body)) + FRAME_OVERHEAD_BYTES

    push = size(T.PEER_UPDATE, 32, {"rec": rec, "rsig": rsig})
    hb = size(T.HEARTBEAT, 2, {"digest": bytes(16), "n": 100000, "load": 0})
    # a digest ping naming one change: [peer_id, version, issued_at]
    ping = size(T.HEARTBEAT, 2, {"digest": bytes(16), "n": 100000, "load": 0,
                                 "recent": [[bytes(32), ts, ts]]})
    ask = size(T.PEER_REQUEST, 0, {"peer": "0" * 64})
    ask_resp = size(T.PEER_LIST_RESPONSE, constants.TTL_RESPONSE, {"re": bytes(16), "recs": [[rec, rsig]]})
    sreq0 = size(T.PEER_REQUEST, 0, {"sync": {}})
    sreq256 = size(T.PEER_REQUEST, 0, {"sync": {b: bytes(8) for b in range(256)}})
    resp0 = size(T.PEER_LIST_RESPONSE, 0, {"re": bytes(16), "recs": []})
    resp1 = size(T.PEER_LIST_RESPONSE, 0, {"re": bytes(16), "recs": [[rec, rsig]]})
    hello = size(T.HELLO, 0, {"versions": [1], "bc": True, "rec": rec, "rsig": rsig, "repos": 1,
                              "digest": bytes(16), "n": 100000})
    _SIZES = {"push": push, "heartbeat": hb, "ping": ping, "ask": ask, "ask_resp": ask_resp,
              "sync_req_base": sreq0,
              "sync_req_per_bucket": (sreq256 - sreq0) / 256, "resp_base": resp0,
              "resp_per_record": resp1 - resp0, "hello": hello, "record": len(rec) + 64,
              # a memberlist/Serf user event or GossipSub message carries the
              # same signed record; IHAVE/IWANT carry one 16-byte id
              "ctl": 16 + 16 + FRAME_OVERHEAD_BYTES}
    return _SIZES


class Adjacency(list):
    """Adjacency lists, plus ``eager``: per peer, the set of neighbours whose
    link is eager (None: pick at random when simulating), and ``outbound``:
    per peer, the peers it dialled, in dial order (None: unknown)."""

    eager = None
    outbound = None


def random_adjacency(n, degree_out, rng, eager_links=constants.EAGER_LINKS):
    """Each peer dials ``degree_out`` distinct random peers (as SimNetwork);
    its first ``eager_links`` dials are eager links (as GossipCore marks
    them)."""
    adj = [set() for _ in range(n)]
    eager = [set() for _ in range(n)]
    outbound = [[] for _ in range(n)]
    for v in range(n):
        made, tries = 0, 0
        while made < degree_out and tries < 4 * degree_out + 20:
            tries += 1
            w = rng.randrange(n)
            if w == v or w in adj[v]:
                continue
            adj[v].add(w)
            adj[w].add(v)
            outbound[v].append(w)
            if made < eager_links:
                eager[v].add(w)
                eager[w].add(v)
            made += 1
    out = Adjacency(sorted(s) for s in adj)
    out.eager = eager
    out.outbound = outbound
    return out


class LiteResult:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def coverage_curve(self, times):
        got = sorted(t for t in self.got_time if t is not None)
        out, i = [], 0
        for t in times:
            while i < len(got) and got[i] - self.t0 <= t:
                i += 1
            out.append(i / self.n)
        return out


def simulate(adj, origin, variant=None, latency=None, cpu=FREE_CPU, seed=0, horizon=10.0,
             loss=0.0, stop_when_covered=True, linger=0.0, t0=0.0):
    """Spread one update from ``origin`` over the graph ``adj`` (adjacency
    lists).  Returns a LiteResult with per-peer arrival times and hops,
    duplicate and byte counts, and the engine's event count."""
    variant = variant or Variant.peernet()
    latency = latency or Fixed(0.05)
    rng = random.Random(f"{seed}/lite")
    net_rng = random.Random(f"{seed}/lite-net")
    n = len(adj)
    sizes = frame_sizes()
    # expected records in the watched record's bucket, and non-empty buckets
    # (the sync request carries one hash per non-empty bucket)
    nb = constants.DIGEST_BUCKETS
    bucket_records = 1 + (n - 1) / nb
    nonempty_buckets = nb * (1 - (1 - 1 / nb) ** n)
    sreq_size = int(sizes["sync_req_base"] + sizes["sync_req_per_bucket"] * nonempty_buckets)
    resp_frames = max(1, math.ceil(bucket_records / constants.MAX_RECORDS_PER_RESPONSE))
    ping_size = sizes["ping"] if variant.recent else sizes["heartbeat"]
    ping_flag = 2 if variant.recent else 0

    has = bytearray(n)
    got_time = [None] * n
    hops = [None] * n
    via = [None] * n
    known = {}  # v -> set of neighbours known to hold the record
    told = {}  # v -> neighbours that named the record in a digest ping (core LinkState.holds)
    wants = {}  # v -> [neighbours to ask, in turn; asks sent] (core GossipCore._wants)
    ping_pending = {}  # v -> set of neighbours with a digest ping pending
    sync_out = {}  # (v, w) -> time of v's outstanding sync on link v-w
    hb_next = {}  # (v, w) -> when v's regular heartbeat on v-w is due, once a ping moved it
    busy = [0.0] * n if cpu.enabled else None
    bytes_out = [0] * n
    frames_in = [0] * n
    dups = 0
    sent_by_kind = [0] * len(KIND_NAMES)
    bytes_by_kind = [0] * len(KIND_NAMES)
    heap = []
    seq = 0
    per_link = getattr(latency, "per_link", False)
    fixed = latency.fifo_free and not per_link  # one delay for every frame
    lat_fixed = latency.sample(net_rng) if fixed else 0.0
    link_free = {}
    link_lat = {}  # per-link latency: (src, dst) -> delay, drawn on first use
    jitter = getattr(latency, "jitter", None) if per_link else None
    covered = 0
    events = 0
    recv_s, send_s = cpu.recv_s, cpu.send_s

    # per-variant state
    budget = {}
    ml_limit = variant.retransmit_mult * math.ceil(math.log10(n + 1))
    mesh = None
    gs_seen_at = {}
    if variant.kind == "gossipsub":
        mesh = _build_mesh(adj, variant.mesh_degree, rng)
    eager = None
    if variant.kind in ("peernet", "push") and variant.eager_links:
        eager = getattr(adj, "eager", None)
        if variant.eager_fastest:
            eager = _fastest_eager(adj, variant.eager_links, latency, noise=variant.rtt_noise)
        elif eager is None or variant.eager_links != constants.EAGER_LINKS:
            eager = _pick_eager(adj, variant.eager_links, rng)

    def push_event(t, kind, dst, src, arg):
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, seq, kind, dst, src, arg))

    out = []  # sends produced while handling one event: (kind, dst, src, arg, size)

    def flush(t):
        """Send what ``out`` holds, departing at ``t``."""
        nonlocal seq
        for kind, dst, src, arg, size in out:
            bytes_out[src] += size
            sent_by_kind[kind] += 1
            bytes_by_kind[kind] += size
            if loss and net_rng.random() < loss:
                continue
            if fixed:
                at = t + lat_fixed
            elif per_link:
                key = (src, dst)
                d = link_lat.get(key)
                if d is None:
                    d = link_lat[key] = link_lat[(dst, src)] = latency.link(src, dst)
                at = t + d
                if jitter is not None:
                    at += jitter.sample(net_rng)
                    prev = link_free.get(key, 0.0)
                    if at < prev:
                        at = prev
                    link_free[key] = at
            else:
                at = t + latency.sample(net_rng)
                key = (src, dst)
                prev = link_free.get(key, 0.0)
                if at < prev:
                    at = prev
                link_free[key] = at
            seq += 1
            heapq.heappush(heap, (at, seq, kind, dst, src, arg))
        out.clear()

    def deliver_to(v, t, how, hop):
        nonlocal covered
        has[v] = 1
        got_time[v] = t
        hops[v] = hop
        via[v] = how
        covered += 1

    def schedule_pings(v, source, t):
        if not variant.pings:
            return
        kv = known.get(v, ())
        tv = told.get(v, ())
        pend = ping_pending.setdefault(v, set())
        new = [w for w in adj[v] if w != source and w not in kv and w not in pend and w not in tv]
        if new:
            pend.update(new)
            push_event(t + variant.ping_delay + variant.ping_spread * rng.random(), PINGS, v, v,
                       tuple(new))

    def start_sync(v, w, t):
        key = (v, w)
        since = sync_out.get(key)
        if since is not None and t - since < SYNC_RETRY:
            return
        sync_out[key] = t
        out.append((SREQ, w, v, has[v], sreq_size))

    # -- publish ---------------------------------------------------------------
    deliver_to(origin, t0, "origin", 0)
    if variant.kind in ("peernet", "push"):
        kv = known.setdefault(origin, set())
        d = len(adj[origin])
        targets = adj[origin]
        if variant.flood and eager is not None and eager[origin] and 4 * d > n:
            targets = sorted(eager[origin])  # core _publish_targets
        for w in targets:
            kv.add(w)
            out.append((PUSH, w, origin, variant.ttl, sizes["push"]))
    elif variant.kind == "memberlist":
        budget[origin] = ml_limit
        push_event(t0, ML_TICK, origin, origin, 0)
    elif variant.kind == "gossipsub":
        gs_seen_at[origin] = t0
        for w in adj[origin]:  # flood publish (v1.1 default)
            out.append((GS_MSG, w, origin, 0, sizes["push"]))
        _gs_schedule_tick(push_event, origin, t0, variant.interval, rng)
    flush(t0)

    # regular heartbeats: one timer per directed link, random phase
    if variant.heartbeats:
        hbi = variant.hb_interval
        for v in range(n):
            for w in adj[v]:
                first = t0 + rng.random() * hbi
                if first - t0 <= horizon:
                    push_event(first, HBT, v, w, 0)

    end = t0 + horizon
    while heap:
        t, _, kind, v, src, arg = heapq.heappop(heap)
        if t > end:
            break
        events += 1
        if busy is not None and kind not in TIMERS and busy[v] > t:
            push_event(busy[v], kind, v, src, arg)
            continue
        if kind in FRAME_KINDS:
            frames_in[v] += 1
        if kind == PUSH:
            kv = known.get(v)
            if kv is None:
                kv = known[v] = set()
            kv.add(src)
            if has[v]:
                dups += 1
            else:
                deliver_to(v, t, "push", variant.ttl - arg)
                if arg > 0:
                    cands = [w for w in adj[v] if w != src and w not in kv]
                    d = len(adj[v])
                    wave = d * (d - 1) ** (variant.ttl - arg + 1)
                    if variant.flood and wave <= n * variant.flood_factor:
                        pass  # flood phase: every link lacking it
                    elif eager is not None and eager[v]:
                        cands = [w for w in cands if w in eager[v]]
                    elif len(cands) > variant.fanout:
                        cands = rng.sample(cands, variant.fanout)
                    for w in cands:
                        kv.add(w)
                        out.append((PUSH, w, v, arg - 1, sizes["push"]))
                schedule_pings(v, src, t)
        elif kind == PINGS:
            pend = ping_pending.get(v)
            nxt = t + variant.hb_interval
            kv = known.get(v, ())
            tv = told.get(v, ())
            for w in arg:
                if w in pend:  # not replaced by a regular heartbeat meanwhile
                    pend.discard(w)
                    if w in kv or w in tv:
                        continue  # core: the link showed it holds the change; no ping
                    hb_next[(v, w)] = nxt  # core: last_heartbeat_sent = now
                    out.append((HB, w, v, has[v] | ping_flag, ping_size))
        elif kind == HBT:
            due = hb_next.get((v, src))
            if due is not None and due > t + 1e-9:
                # a digest ping restarted this link's heartbeat interval
                if due - t0 <= horizon:
                    push_event(due, HBT, v, src, 0)
                continue
            pend = ping_pending.get(v)
            if pend:
                pend.discard(src)  # the regular heartbeat goes instead (no recent)
            out.append((HB, src, v, has[v], sizes["heartbeat"]))
            hb_next[(v, src)] = t + variant.hb_interval
            if t + variant.hb_interval - t0 <= horizon:
                push_event(t + variant.hb_interval, HBT, v, src, 0)
        elif kind == HB:
            if arg & 3 == 3:
                told.setdefault(v, set()).add(src)  # core: the ping named it, src holds it
            if (arg & 1) != has[v]:
                if not arg & 2:
                    start_sync(v, src, t)
                elif not has[v]:
                    # the ping names the record and we lack it: ask for exactly
                    # it ASK_DELAY later if the push has not brought it by then
                    # (one ask, whichever links named it; core _want)
                    want = wants.get(v)
                    if want is None:
                        wants[v] = [[src], 0]
                        push_event(t + ASK_DELAY, ASKT, v, v, 0)
                    elif src not in want[0]:
                        want[0].append(src)
                # (a named record we hold: the rest is left to the regular heartbeat)
        elif kind == ASKT:
            want = wants.get(v)
            if want is not None:
                if has[v]:
                    del wants[v]
                else:
                    wl = want[0]
                    asked = wl[:want[1] + 1]  # the naming links in turn, one more each round
                    del wl[:len(asked)]
                    wl.extend(asked)
                    for w in asked:
                        out.append((AREQ, w, v, 0, sizes["ask"]))
                    want[1] += 1
                    if want[1] < ASK_TRIES:
                        push_event(t + ASK_RETRY * 2 ** (want[1] - 1), ASKT, v, v, 0)
                    else:
                        del wants[v]
        elif kind == AREQ:
            carries = has[v]
            if carries:
                known.setdefault(v, set()).add(src)
            out.append((ARESP, src, v, carries, sizes["ask_resp"]))
        elif kind == ARESP or kind == SRESP:
            sync_out.pop((v, src), None)  # core: an ask's answer id is in sync_ids too
            if arg:
                known.setdefault(v, set()).add(src)
                if not has[v]:
                    deliver_to(v, t, "sync", None)
                    schedule_pings(v, src, t)
        elif kind == SREQ:
            differing = arg != has[v]
            carries = 0
            if differing and has[v]:
                kv = known.setdefault(v, set())
                if src not in kv:
                    carries = 1
                    kv.add(src)
            nrec = bucket_records if differing else 0
            if differing and not carries and has[v]:
                nrec -= 1  # the record itself is known on this link
            nframes = resp_frames if nrec else 1
            per = sizes["resp_base"]
            total = int(per * nframes + sizes["resp_per_record"] * nrec)
            out.append((SRESP, src, v, carries, total))
            if differing and (v, src) not in sync_out:
                start_sync(v, src, t)
        elif kind == ML_MSG:
            if has[v]:
                dups += 1
            else:
                deliver_to(v, t, "push", arg + 1)
                budget[v] = ml_limit
                # joins the node's own gossip ticks (random phase)
                nxt = t + (rng.random() * variant.interval)
                push_event(nxt, ML_TICK, v, v, 0)
        elif kind == ML_TICK:
            left = budget.get(v, 0)
            if left > 0:
                hop = hops[v] or 0
                for _ in range(min(variant.fanout, left)):
                    w = rng.randrange(n - 1)
                    w = w + 1 if w >= v else w
                    out.append((ML_MSG, w, v, hop, sizes["push"]))
                budget[v] = left - variant.fanout
                if budget[v] > 0:
                    push_event(t + variant.interval, ML_TICK, v, v, 0)
        elif kind in (GS_MSG, GS_IWANT):
            if kind == GS_IWANT:
                out.append((GS_MSG, src, v, hops[v] or 0, sizes["push"]))
            elif has[v]:
                dups += 1
            else:
                deliver_to(v, t, "push", arg + 1)
                gs_seen_at[v] = t
                for w in mesh[v]:
                    if w != src and w != origin:
                        out.append((GS_MSG, w, v, arg + 1, sizes["push"]))
                _gs_schedule_tick(push_event, v, t, variant.interval, rng)
        elif kind == GS_TICK:
            seen = gs_seen_at.get(v)
            if seen is not None and t - seen <= variant.history * variant.interval:
                others = [w for w in adj[v] if w not in mesh[v]]
                if len(others) > variant.mesh_degree:
                    others = rng.sample(others, variant.mesh_degree)
                for w in others:
                    out.append((GS_IHAVE, w, v, 0, sizes["ctl"]))
                push_event(t + variant.interval, GS_TICK, v, v, 0)
        elif kind == GS_IHAVE:
            if not has[v]:
                out.append((GS_IWANT, src, v, 0, sizes["ctl"]))
        if out:
            depart = t
            if busy is not None:
                if kind in TIMERS:
                    depart = max(t, busy[v]) + send_s * len(out)
                else:
                    depart = t + recv_s + send_s * len(out)
                busy[v] = depart
            flush(depart)
        elif busy is not None and kind not in TIMERS:
            busy[v] = t + recv_s
        if stop_when_covered and covered == n:
            # let the tail (duplicates already in flight) drain for ``linger``
            if linger <= 0:
                break
            end = min(end, t + linger)
            stop_when_covered = False

    got = [x for x in got_time if x is not None]
    return LiteResult(
        n=n, origin=origin, t0=t0, covered=covered, coverage=covered / n,
        t100=(max(got) - t0) if covered == n else None,
        t_last=max(got) - t0, got_time=got_time, hops=hops, via=via,
        duplicates=dups, dup_per_delivery=dups / max(1, n - 1), events=events,
        sent_by_kind={KIND_NAMES[k]: c for k, c in enumerate(sent_by_kind) if c},
        bytes_by_kind={KIND_NAMES[k]: c for k, c in enumerate(bytes_by_kind) if c},
        bytes_total=sum(bytes_out), frames_in=sum(frames_in),
        digest=hashlib.sha256(repr((got_time, hops, dups)).encode()).hexdigest(),
        variant=variant.kind)


def _gs_schedule_tick(push_event, v, t, interval, rng):
    push_event(t + rng.random() * interval, GS_TICK, v, v, 0)


def _build_mesh(adj, degree, rng):
    """A symmetric mesh on the overlay: each peer grafts random links until it
    has ``degree`` mesh peers (the other side accepts up to 2x degree)."""
    n = len(adj)
    mesh = [set() for _ in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    for v in order:
        cands = [w for w in adj[v] if w not in mesh[v] and len(mesh[w]) < 2 * degree]
        rng.shuffle(cands)
        for w in cands:
            if len(mesh[v]) >= degree:
                break
            mesh[v].add(w)
            mesh[w].add(v)
    return mesh



def _fastest_eager(adj, k, latency, noise=0.0):
    """Each peer marks the ``k`` outbound links with the lowest latency
    (ties: dial order); a link is eager at both ends if either end marked
    it.  ``noise`` > 0: each peer ranks by its own estimate of each link,
    the latency times a log-normal factor of that sigma (a measured RTT's
    error; drawn per peer and link, the same in every run).  Not the core's
    rule: see ``Variant.eager_fastest``."""
    outbound = getattr(adj, "outbound", None)
    if outbound is None:
        raise ValueError("eager_fastest needs an adjacency with outbound dials (random_adjacency)")
    link = latency.link if getattr(latency, "per_link", False) else (lambda a, b: 0.0)
    if noise:
        true_link = link

        def link(a, b):
            return true_link(a, b) * random.Random(f"rtt/{a}/{b}").lognormvariate(0.0, noise)
    eager = [set() for _ in range(len(adj))]
    for v, dials in enumerate(outbound):
        ranked = sorted(range(len(dials)), key=lambda i: (link(v, dials[i]), i))
        for i in ranked[:k]:
            eager[v].add(dials[i])
            eager[dials[i]].add(v)
    return eager


def _pick_eager(adj, k, rng):
    """Eager sets for an adjacency without dial order: each peer marks ``k``
    random links; a link is eager at both ends if either end marked it."""
    eager = [set() for _ in range(len(adj))]
    for v, ws in enumerate(adj):
        for w in (rng.sample(list(ws), k) if len(ws) > k else ws):
            eager[v].add(w)
            eager[w].add(v)
    return eager
