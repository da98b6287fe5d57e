"""Which broadcasting peers to dial, and when: contact history, backoff, refusals.

:class:`DialPlanner` holds no sockets and reads time from the clock it is
given, so its rules are tested with ``twisted.internet.task.Clock``.  It only
ever names broadcasting peers (by the peer_id of their signed record): a
silent peer is never dialled, so it never appears here.

Rules a caller may rely on:

* **Choice**: of the candidates offered, half (rounded up) are the best by
  :meth:`DialPlanner.score` (the peer's total in
  :class:`peernet.peer.scoring.PeerScores`) and the rest are drawn at random
  from the remainder, so the overlay neither collapses onto a few favourites
  nor ignores what worked before.
* **Backoff**: after ``n`` consecutive failures a peer is not dialled again
  for ``min(max_delay, base_delay * 2**(n-1))`` seconds, scaled by a random
  factor in [0.5, 1.0] (jitter, so peers that lost the same neighbour do not
  redial in lock-step).  A success resets the count.  A link that was open
  and then dropped counts as one failure, so the first redial comes after
  about ``base_delay``.
* **Refusal**: a peer that abused a link is refused (neither dialled nor
  accepted) for a cooling-off time.  Scores and refusals live in one place,
  :class:`peernet.peer.scoring.PeerScores`; the planner feeds it contact
  successes, failures and bad data, and reads it back.
"""

from dataclasses import dataclass

from peernet import constants
from peernet.peer.scoring import PeerScores

#: How long a peer that was cut off for abuse stays refused (first offence).
REFUSE_SECONDS = constants.REFUSE_SECONDS


@dataclass
class ContactHistory:
    successes: int = 0
    #: consecutive failures since the last success
    failures: int = 0
    last_success: "float | None" = None
    last_failure: "float | None" = None
    #: earliest time the peer may be dialled again
    next_attempt: float = 0.0
    #: times the peer served data that failed verification (torrents)
    bad_data: int = 0


class DialPlanner:
    """Contact history, backoff and refusals per broadcasting peer_id.

    ``DialPlanner(clock, rng, base_delay=RECONNECT_BASE_DELAY,
    max_delay=RECONNECT_MAX_DELAY, refuse_seconds=REFUSE_SECONDS, scores=None)``;
    ``clock`` has ``seconds()``, ``rng`` is a ``random.Random``, ``scores`` a
    shared :class:`PeerScores` (a new one with ``refuse_seconds`` as its
    cool-off if None).
    """

    def __init__(self, clock, rng, base_delay=constants.RECONNECT_BASE_DELAY,
                 max_delay=constants.RECONNECT_MAX_DELAY, refuse_seconds=REFUSE_SECONDS,
                 scores=None):
        if not 0 < base_delay <= max_delay:
            raise ValueError("need 0 < base_delay <= max_delay")
        self.clock = clock
        self.rng = rng
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.refuse_seconds = refuse_seconds
        self.scores = scores if scores is not None else PeerScores(clock, cool_off=refuse_seconds)
        self._history = {}

    # -- history -------------------------------------------------------------------

    def history(self, peer_id):
        """The ContactHistory of ``peer_id`` (a fresh one if unknown); read-only use."""
        return self._history.get(peer_id) or ContactHistory()

    def _entry(self, peer_id):
        entry = self._history.get(peer_id)
        if entry is None:
            entry = self._history[peer_id] = ContactHistory()
        return entry

    def record_success(self, peer_id):
        """A link to ``peer_id`` opened (TLS pin matched, WebSocket accepted)."""
        entry = self._entry(peer_id)
        entry.successes += 1
        entry.failures = 0
        entry.last_success = self.clock.seconds()
        entry.next_attempt = 0.0
        self.scores.contact(peer_id, True)

    def record_failure(self, peer_id, dropped=False):
        """A dial failed or (``dropped``) an open link dropped; returns the
        backoff delay chosen.  Only a failed dial counts against the peer's
        contact score: a drop is scored as uptime by the transport."""
        entry = self._entry(peer_id)
        entry.failures += 1
        now = self.clock.seconds()
        entry.last_failure = now
        if not dropped:
            self.scores.contact(peer_id, False)
        delay = self.backoff_delay(entry.failures)
        entry.next_attempt = now + delay
        return delay

    def record_bad_data(self, peer_id, code="corrupt_data"):
        """``peer_id`` served data that failed a hash (``corrupt_data``) or
        manifest (``bad_manifest``) check: a penalty on its score."""
        self._entry(peer_id).bad_data += 1
        self.scores.penalize(peer_id, code)

    def backoff_delay(self, failures):
        """The (jittered) wait after ``failures`` consecutive failures."""
        if failures <= 0:
            return 0.0
        # Cap the exponent first: 2**large would only be capped afterwards.
        raw = self.base_delay * 2 ** min(failures - 1, 32)
        return min(self.max_delay, raw) * self.rng.uniform(0.5, 1.0)

    def forget(self, peer_id):
        """Drop the history and score of a peer that left the table."""
        self._history.pop(peer_id, None)
        self.scores.forget(peer_id)

    def prune(self, keep):
        """Keep history and scores only for peer_ids in ``keep``; refusals stay
        until they lapse."""
        for peer_id in [p for p in self._history if p not in keep]:
            del self._history[peer_id]
        self.scores.prune(keep)

    # -- refusals -------------------------------------------------------------------

    def refuse(self, peer_id, seconds=None):
        """Refuse ``peer_id`` for ``seconds`` (default: the scores' cool-off,
        doubled per repeat offence); returns the time it ends."""
        return self.scores.refuse(peer_id, seconds)

    def is_refused(self, peer_id):
        return self.scores.is_refused(peer_id)

    # -- choosing ---------------------------------------------------------------------

    def ready(self, peer_id):
        """True when ``peer_id`` is neither refused nor waiting out a backoff."""
        if self.is_refused(peer_id):
            return False
        entry = self._history.get(peer_id)
        return entry is None or entry.next_attempt <= self.clock.seconds()

    def next_due(self, peer_ids):
        """Earliest time one of ``peer_ids`` leaves backoff or refusal, or None."""
        times = []
        for peer_id in peer_ids:
            until = self.scores.refused_until(peer_id)
            entry = self._history.get(peer_id)
            t = max(until or 0.0, entry.next_attempt if entry else 0.0)
            times.append(t)
        return min(times) if times else None

    def score(self, peer_id):
        """Higher is better: the peer's total score (0..100, 50 when unknown;
        see :mod:`peernet.peer.scoring`).  Contact successes raise it, dial
        failures lower it, so a peer that just failed sits below an unknown
        one until it has proven itself again."""
        return self.scores.total(peer_id)

    def choose(self, peer_ids, count):
        """Pick up to ``count`` of ``peer_ids``: half by score, half at random."""
        peer_ids = list(dict.fromkeys(peer_ids))
        if count <= 0 or not peer_ids:
            return []
        if len(peer_ids) <= count:
            self.rng.shuffle(peer_ids)
            return peer_ids
        # Random tie-break so equal scores do not always favour the same peers.
        keyed = sorted(peer_ids, key=lambda p: (self.score(p), self.rng.random()), reverse=True)
        by_score = (count + 1) // 2
        chosen = keyed[:by_score]
        chosen += self.rng.sample(keyed[by_score:], count - by_score)
        return chosen
