"""Per-peer scores: availability, performance and penalties, with decay.

:class:`PeerScores` holds no sockets and reads time only from the clock it is
given (``clock.seconds()``), so every rule here is tested with
``twisted.internet.task.Clock``.  The gossip transport, the dial planner and
the repo service feed it observations; the connection manager, searches,
seeder lists, the control API, the dashboard and the ``peernet`` command read
it.  docs/protocol.md ("Scoring") states the same formula for users.

The score of a peer (0..100, higher is better)::

    availability = 0.4 contact + 0.3 uptime + 0.3 regularity
    performance  = 0.4 rtt     + 0.3 transfer + 0.3 answers
    total        = 50 availability + 50 performance - penalties

Each part is in [0, 1] and is 0.5 when nothing is known, so an unknown peer
scores SCORE_NEUTRAL (50):

* contact = (S + 1) / (S + F + 2): S successful and F failed dials;
* uptime = (U + R) / (U + R + R (D + 1)): U seconds linked, D drops (links
  we dialled that closed without our closing them), R = UPTIME_REFERENCE
  (a drop "costs" R seconds of uptime);
* regularity = (H + 1) / (H + L + 2): H heartbeat intervals heard on time
  (frame gaps up to 1.5 heartbeat intervals, counted in intervals), L late
  gaps or links closed for missed heartbeats;
* rtt = T / (T + mean RTT), T = RTT_REFERENCE (WebSocket ping/pong);
* transfer = mean rate / (mean rate + RATE_REFERENCE) (torrent payload from
  that seeder);
* answers = (A + 1) / (Q + 2): Q of our searches sent to the peer's link, A
  of them answered on it.

Every count and sum decays with half-life SCORE_HALF_LIFE (means are ratios
of two decaying sums), so old behaviour fades.  Penalties are in score
points, SCORE_NEUTRAL / PENALTY_LIMIT (10) per invalid message times the
weight of its kind (:data:`PENALTY_WEIGHTS`), and decay with half-life
PENALTY_HALF_LIFE.  When the total falls below SCORE_CUT_OFF the caller
closes the link; a broadcasting peer is then refused for a cool-off
(REFUSE_SECONDS, doubled for each repeat offence up to MAX_REFUSE_SECONDS),
and its penalties are capped at that moment so that the total is not below
zero: a flood does not make a peer an outcast for days, and once the cool-off
has passed, the halved penalty has lifted the peer above the cut-off again.

Keys are broadcasting peers' peer_ids (strings).  An inbound link from a
silent peer is scored under :func:`link_key` (a tuple, never a peer_id), only
for abuse: its availability and performance stay neutral, it is dropped when
the link closes, and no listing ever shows it.
"""

from dataclasses import dataclass

from peernet import constants

#: Weight of each penalty kind, in "invalid messages" (default 1).
PENALTY_WEIGHTS = {
    "impersonation": 2.0,  # a record of someone else than the TLS key
    "corrupt_data": 3.0,  # a seeder caught by libtorrent's smart-ban
    "bad_manifest": 1.0,  # files that fail the signed manifest (all seeders share it)
    "flood": 1.0,  # per FLOOD_PENALTY_EVERY frames above the rate limit
}
#: Frame gaps up to this many heartbeat intervals count as regular.
LATE_GAP_INTERVALS = 1.5
AVAILABILITY_WEIGHTS = {"contact": 0.4, "uptime": 0.3, "regularity": 0.3}
PERFORMANCE_WEIGHTS = {"rtt": 0.4, "transfer": 0.3, "answers": 0.3}


def link_key(link_id):
    """The key an anonymous inbound link is scored under (never a peer_id)."""
    return ("link", link_id)


def is_anonymous(key):
    return not isinstance(key, str)


class Decaying:
    """A sum that halves every ``half_life`` seconds."""

    __slots__ = ("half_life", "value", "at")

    def __init__(self, half_life):
        self.half_life = half_life
        self.value = 0.0
        self.at = 0.0

    def get(self, now):
        if not self.value:
            return 0.0
        return self.value * 0.5 ** (max(0.0, now - self.at) / self.half_life)

    def add(self, amount, now):
        self.value = self.get(now) + amount
        self.at = now

    def set(self, value, now):
        self.value = float(value)
        self.at = now


@dataclass
class PeerScore:
    """What is known about one key; read it through :class:`PeerScores`."""

    half_life: float
    penalty_half_life: float
    contact_ok: Decaying = None
    contact_failed: Decaying = None
    up_seconds: Decaying = None
    drops: Decaying = None
    on_time: Decaying = None
    late: Decaying = None
    rtt_sum: Decaying = None
    rtt_n: Decaying = None
    rate_sum: Decaying = None
    rate_n: Decaying = None
    asked: Decaying = None
    answered: Decaying = None
    penalty: Decaying = None
    refused_until: "float | None" = None
    offences: int = 0

    def __post_init__(self):
        for name in ("contact_ok", "contact_failed", "up_seconds", "drops", "on_time", "late",
                     "rtt_sum", "rtt_n", "rate_sum", "rate_n", "asked", "answered"):
            setattr(self, name, Decaying(self.half_life))
        self.penalty = Decaying(self.penalty_half_life)


class PeerScores:
    """Scores per key (see the module docstring).

    ``PeerScores(clock, *, penalty_limit=PENALTY_LIMIT, cool_off=REFUSE_SECONDS,
    max_cool_off=MAX_REFUSE_SECONDS, cut_off=SCORE_CUT_OFF,
    half_life=SCORE_HALF_LIFE, penalty_half_life=PENALTY_HALF_LIFE)``.
    """

    def __init__(self, clock, *, penalty_limit=constants.PENALTY_LIMIT,
                 cool_off=constants.REFUSE_SECONDS, max_cool_off=constants.MAX_REFUSE_SECONDS,
                 cut_off=constants.SCORE_CUT_OFF, half_life=constants.SCORE_HALF_LIFE,
                 penalty_half_life=constants.PENALTY_HALF_LIFE):
        if penalty_limit < 1 or half_life <= 0 or penalty_half_life <= 0 or cool_off < 0:
            raise ValueError("need penalty_limit >= 1, positive half-lives, cool_off >= 0")
        self.clock = clock
        self.penalty_point = constants.SCORE_NEUTRAL / penalty_limit
        self.cool_off = cool_off
        self.max_cool_off = max(cool_off, max_cool_off)
        self.cut_off = cut_off
        self.half_life = half_life
        self.penalty_half_life = penalty_half_life
        self._scores = {}

    def _now(self):
        return self.clock.seconds()

    def _get(self, key):
        score = self._scores.get(key)
        if score is None:
            score = self._scores[key] = PeerScore(self.half_life, self.penalty_half_life)
        return score

    def known(self, key):
        return key in self._scores

    # -- observations -------------------------------------------------------------

    def contact(self, key, ok):
        """A dial to ``key`` succeeded (``ok``) or failed."""
        s = self._get(key)
        (s.contact_ok if ok else s.contact_failed).add(1.0, self._now())

    def uptime(self, key, seconds, dropped=False):
        """``seconds`` more of a link to ``key`` being up; ``dropped``: the
        link (one we dialled) then closed without our closing it."""
        s = self._get(key)
        now = self._now()
        if seconds > 0:
            s.up_seconds.add(float(seconds), now)
        if dropped:
            s.drops.add(1.0, now)

    def heard(self, key, gap):
        """A frame from ``key`` arrived ``gap`` seconds after the previous one
        on the same link (heartbeats are due every HEARTBEAT_INTERVAL)."""
        if gap is None or gap < 0:
            return
        s = self._get(key)
        interval = constants.HEARTBEAT_INTERVAL
        if gap > LATE_GAP_INTERVALS * interval:
            s.late.add(1.0, self._now())
        else:
            s.on_time.add(gap / interval, self._now())

    def missed_heartbeats(self, key):
        """A link to ``key`` was closed because its heartbeats stopped."""
        self._get(key).late.add(1.0, self._now())

    def rtt(self, key, seconds):
        s = self._get(key)
        now = self._now()
        s.rtt_sum.add(max(0.0, float(seconds)), now)
        s.rtt_n.add(1.0, now)

    def transfer(self, key, nbytes, seconds):
        """``key`` sent ``nbytes`` of torrent payload over ``seconds``."""
        if seconds <= 0 or nbytes < 0:
            return
        s = self._get(key)
        now = self._now()
        s.rate_sum.add(nbytes / seconds, now)
        s.rate_n.add(1.0, now)

    def asked(self, key):
        """One of our searches went out on ``key``'s link."""
        self._get(key).asked.add(1.0, self._now())

    def answered(self, key):
        """An answer to one of our searches came back on ``key``'s link."""
        self._get(key).answered.add(1.0, self._now())

    # -- penalties and refusals -----------------------------------------------------------

    def penalize(self, key, code="invalid", weight=None):
        """Charge ``key`` for something invalid or abusive; True when its total
        is now below the cut-off (the caller closes the link, and refuses a
        broadcasting peer with :meth:`refuse`)."""
        if weight is None:
            weight = PENALTY_WEIGHTS.get(code, 1.0)
        s = self._get(key)
        s.penalty.add(weight * self.penalty_point, self._now())
        return self.total(key) < self.cut_off

    def refuse(self, key, seconds=None):
        """Refuse ``key`` for a cool-off (by default REFUSE_SECONDS doubled per
        earlier offence); returns the time it is refused until."""
        s = self._get(key)
        now = self._now()
        s.offences += 1
        if seconds is None:
            seconds = min(self.max_cool_off, self.cool_off * 2 ** min(s.offences - 1, 32))
        s.refused_until = max(s.refused_until or 0.0, now + seconds)
        base = self._base(key, s, now)
        if s.penalty.get(now) > base:
            s.penalty.set(base, now)
        return s.refused_until

    def refused_until(self, key):
        """When ``key``'s cool-off ends, or None if it is not refused now."""
        s = self._scores.get(key)
        if s is None or s.refused_until is None:
            return None
        if s.refused_until <= self._now():
            s.refused_until = None
            return None
        return s.refused_until

    def is_refused(self, key):
        return self.refused_until(key) is not None

    def refused_count(self):
        """How many peers are in a cool-off now."""
        return sum(1 for key in list(self._scores) if self.refused_until(key) is not None)

    # -- reading ------------------------------------------------------------------------------

    def availability(self, key):
        s = self._scores.get(key)
        if s is None or is_anonymous(key):
            return 0.5
        return self._availability(s, self._now())

    def performance(self, key):
        s = self._scores.get(key)
        if s is None or is_anonymous(key):
            return 0.5
        return self._performance(s, self._now())

    def penalties(self, key):
        s = self._scores.get(key)
        return 0.0 if s is None else s.penalty.get(self._now())

    def total(self, key):
        s = self._scores.get(key)
        if s is None:
            return constants.SCORE_NEUTRAL
        now = self._now()
        return self._base(key, s, now) - s.penalty.get(now)

    def parts(self, key):
        """Each part of the formula, in [0, 1] (for docs and diagnosis)."""
        s = self._scores.get(key)
        if s is None or is_anonymous(key):
            return {name: 0.5 for name in (*AVAILABILITY_WEIGHTS, *PERFORMANCE_WEIGHTS)}
        return self._parts(s, self._now())

    def snapshot(self, key):
        """``{"total", "availability", "performance", "penalties",
        "refused_until"}``, as the control API shows it (rounded)."""
        return {
            "total": round(self.total(key), 3),
            "availability": round(self.availability(key), 4),
            "performance": round(self.performance(key), 4),
            "penalties": round(self.penalties(key), 3),
            "refused_until": self.refused_until(key),
        }

    def _base(self, key, s, now):
        if is_anonymous(key):
            return constants.SCORE_NEUTRAL
        return 50.0 * self._availability(s, now) + 50.0 * self._performance(s, now)

    def _parts(self, s, now):
        ok, failed = s.contact_ok.get(now), s.contact_failed.get(now)
        up, drops = s.up_seconds.get(now), s.drops.get(now)
        ref = constants.UPTIME_REFERENCE
        on_time, late = s.on_time.get(now), s.late.get(now)
        rtt_n = s.rtt_n.get(now)
        if rtt_n > 1e-9:
            mean_rtt = s.rtt_sum.get(now) / rtt_n
            rtt = constants.RTT_REFERENCE / (constants.RTT_REFERENCE + mean_rtt)
        else:
            rtt = 0.5
        rate_n = s.rate_n.get(now)
        if rate_n > 1e-9:
            mean_rate = s.rate_sum.get(now) / rate_n
            transfer = mean_rate / (mean_rate + constants.RATE_REFERENCE)
        else:
            transfer = 0.5
        asked, answered = s.asked.get(now), s.answered.get(now)
        return {
            "contact": (ok + 1.0) / (ok + failed + 2.0),
            "uptime": (up + ref) / (up + ref + ref * (drops + 1.0)),
            "regularity": (on_time + 1.0) / (on_time + late + 2.0),
            "rtt": rtt,
            "transfer": transfer,
            # More answers than questions (several answers on one link) count as all answered.
            "answers": (min(answered, asked) + 1.0) / (asked + 2.0),
        }

    def _availability(self, s, now):
        parts = self._parts(s, now)
        return sum(w * parts[name] for name, w in AVAILABILITY_WEIGHTS.items())

    def _performance(self, s, now):
        parts = self._parts(s, now)
        return sum(w * parts[name] for name, w in PERFORMANCE_WEIGHTS.items())

    # -- housekeeping ------------------------------------------------------------------------

    def forget(self, key):
        """Drop everything about ``key`` (a peer that left the table, a closed
        anonymous link); a running refusal is kept until it lapses."""
        s = self._scores.get(key)
        if s is None:
            return
        if self.refused_until(key) is not None:
            return
        del self._scores[key]

    def prune(self, keep):
        """Keep scores only for peer_ids in ``keep``, anonymous links still
        scored, and running refusals."""
        for key in [k for k in self._scores if not is_anonymous(k) and k not in keep]:
            self.forget(key)

    def keys(self):
        return list(self._scores)


class LinkMeter:
    """Per-link measurements the transport keeps next to a link: when it
    opened, when its last frame came (heartbeat regularity), a token bucket
    against floods, and the WebSocket ping in flight (round trip)."""

    __slots__ = ("opened_at", "accounted_at", "last_frame", "tokens", "refilled_at",
                 "excess", "ping_payload", "ping_sent_at", "rate", "burst", "peer_id",
                 "relay_tokens", "relay_refilled_at", "relay_rate", "relay_burst")

    def __init__(self, now, rate=constants.FLOOD_RATE, burst=constants.FLOOD_BURST):
        self.opened_at = now
        self.accounted_at = now  # uptime handed to PeerScores up to here
        self.last_frame = None
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.refilled_at = now
        self.excess = 0
        self.ping_payload = None
        self.ping_sent_at = None
        #: the broadcasting remote's peer_id once known (kept after the core
        #: has forgotten the link, so its last events are scored too)
        self.peer_id = None
        self.relay_rate = constants.RELAY_RATE
        self.relay_burst = constants.RELAY_BURST
        self.relay_tokens = self.relay_burst
        self.relay_refilled_at = now

    def relay(self, now):
        """True if one more relayed frame may go out on this link now
        (RELAY_RATE per second after a RELAY_BURST); False: drop it."""
        tokens = self.relay_tokens + (now - self.relay_refilled_at) * self.relay_rate
        if tokens > self.relay_burst:
            tokens = self.relay_burst
        self.relay_refilled_at = now
        if tokens >= 1.0:
            self.relay_tokens = tokens - 1.0
            return True
        self.relay_tokens = tokens
        return False

    def frame(self, now):
        """Account one received frame: ``(allowed, gap)``.  ``allowed`` is
        False when the link is over its rate (the frame should be dropped);
        ``gap`` is the time since the previous frame (None for the first)."""
        tokens = self.tokens + (now - self.refilled_at) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.refilled_at = now
        gap = None if self.last_frame is None else now - self.last_frame
        self.last_frame = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True, gap
        self.tokens = tokens
        self.excess += 1
        return False, gap

    def flood_penalty_due(self):
        """True for the first excess frame and every FLOOD_PENALTY_EVERY-th after."""
        return self.excess % constants.FLOOD_PENALTY_EVERY == 1 or constants.FLOOD_PENALTY_EVERY == 1

    def take_uptime(self, now):
        seconds = max(0.0, now - self.accounted_at)
        self.accounted_at = now
        return seconds
