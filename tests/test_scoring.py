"""PeerScores and LinkMeter on a fake clock: the formula, decay, penalties,
cool-off, and that the dial planner reads the same scores."""

import random

import pytest
from twisted.internet.task import Clock

from peernet import constants
from peernet.peer.connector import DialPlanner
from peernet.peer.scoring import (
    AVAILABILITY_WEIGHTS,
    PERFORMANCE_WEIGHTS,
    Decaying,
    LinkMeter,
    PeerScores,
    link_key,
)

A, B = "a" * 64, "b" * 64


@pytest.fixture
def clock():
    c = Clock()
    c.advance(1_000_000)  # a realistic, non-zero epoch
    return c


@pytest.fixture
def scores(clock):
    return PeerScores(clock)


def test_unknown_peer_is_neutral_and_the_snapshot_has_the_documented_shape(scores):
    assert scores.total(A) == constants.SCORE_NEUTRAL == 50.0
    assert scores.snapshot(A) == {"total": 50.0, "availability": 0.5, "performance": 0.5,
                                  "penalties": 0.0, "refused_until": None}
    assert sum(AVAILABILITY_WEIGHTS.values()) == pytest.approx(1.0)
    assert sum(PERFORMANCE_WEIGHTS.values()) == pytest.approx(1.0)


def test_formula_parts_by_hand(scores):
    for _ in range(3):
        scores.contact(A, True)
    scores.contact(A, False)
    scores.uptime(A, 1800)
    scores.uptime(A, 0, dropped=True)
    for _ in range(4):
        scores.heard(A, 30.0)  # on time: 4 intervals
    scores.heard(A, 100.0)  # late
    scores.rtt(A, 0.25)
    scores.transfer(A, 3 * 1024 * 1024, 1.0)  # 3 MiB/s
    for _ in range(4):
        scores.asked(A)
    scores.answered(A)
    parts = scores.parts(A)
    ref = constants.UPTIME_REFERENCE
    assert parts["contact"] == pytest.approx(4 / 6)
    assert parts["uptime"] == pytest.approx((1800 + ref) / (1800 + ref + 2 * ref))
    assert parts["regularity"] == pytest.approx(5 / 7)
    assert parts["rtt"] == pytest.approx(0.5)
    assert parts["transfer"] == pytest.approx(0.75)
    assert parts["answers"] == pytest.approx(2 / 6)
    availability = 0.4 * parts["contact"] + 0.3 * parts["uptime"] + 0.3 * parts["regularity"]
    performance = 0.4 * parts["rtt"] + 0.3 * parts["transfer"] + 0.3 * parts["answers"]
    assert scores.availability(A) == pytest.approx(availability)
    assert scores.performance(A) == pytest.approx(performance)
    assert scores.total(A) == pytest.approx(50 * availability + 50 * performance)


def test_good_and_bad_behaviour_move_the_score_both_ways(scores):
    for _ in range(5):
        scores.contact(A, True)
        scores.rtt(A, 0.002)
        scores.contact(B, False)
        scores.rtt(B, 2.0)
    assert scores.total(A) > 50 > scores.total(B)
    assert scores.availability(A) > 0.5 > scores.availability(B)
    assert scores.performance(A) > 0.5 > scores.performance(B)


def test_observations_decay_with_the_stated_half_life(clock, scores):
    for _ in range(8):
        scores.contact(A, False)
    low = scores.total(A)
    d = Decaying(constants.SCORE_HALF_LIFE)
    d.add(8, clock.seconds())
    clock.advance(constants.SCORE_HALF_LIFE)
    assert d.get(clock.seconds()) == pytest.approx(4.0)
    # contact = 1 / (F + 2): 8 failures -> 0.1, one half-life later 4 -> 1/6.
    assert scores.parts(A)["contact"] == pytest.approx(1 / 6)
    middle = scores.total(A)
    clock.advance(20 * constants.SCORE_HALF_LIFE)
    assert low < middle < scores.total(A) == pytest.approx(50.0, abs=0.01)


def test_penalties_cost_points_decay_and_cut_off_a_neutral_peer_at_the_limit(clock, scores):
    point = constants.SCORE_NEUTRAL / constants.PENALTY_LIMIT
    for i in range(constants.PENALTY_LIMIT - 1):
        assert scores.penalize(A, "bad_signature") is False
        clock.advance(1)
    # Four points off (a little less: they decay for the 4 s this took).
    assert scores.total(A) == pytest.approx(50 - (constants.PENALTY_LIMIT - 1) * point, abs=0.2)
    assert scores.penalize(A, "bad_signature") is True  # below SCORE_CUT_OFF
    assert scores.total(A) < constants.SCORE_CUT_OFF
    # Penalties halve every PENALTY_HALF_LIFE.
    before = scores.penalties(A)
    clock.advance(constants.PENALTY_HALF_LIFE)
    assert scores.penalties(A) == pytest.approx(before / 2)
    assert scores.snapshot(A)["penalties"] == pytest.approx(before / 2, abs=0.001)


def test_penalty_weights_by_kind(scores):
    scores.penalize(A, "corrupt_data")
    scores.penalize(B, "bad_ttl")
    assert scores.penalties(A) == pytest.approx(3 * scores.penalties(B))


def test_refusal_cool_off_doubles_for_repeat_offences_and_lapses(clock, scores):
    for _ in range(10):
        scores.penalize(A, "flood")
    assert scores.total(A) < 0
    until = scores.refuse(A)
    assert until == clock.seconds() + constants.REFUSE_SECONDS
    assert scores.is_refused(A) and scores.snapshot(A)["refused_until"] == until
    # Capped at the moment of refusal: the total is not below zero ...
    assert scores.total(A) == pytest.approx(0.0, abs=1e-6)
    clock.advance(constants.REFUSE_SECONDS - 1)
    assert scores.is_refused(A)
    clock.advance(1)
    assert not scores.is_refused(A) and scores.snapshot(A)["refused_until"] is None
    # ... so after the cool-off the halved penalty has lifted it above the cut-off.
    assert scores.total(A) > constants.SCORE_CUT_OFF
    assert scores.refused_count() == 0
    second = scores.refuse(A)
    assert scores.refused_count() == 1
    assert second == clock.seconds() + 2 * constants.REFUSE_SECONDS
    for _ in range(20):
        scores.refuse(A)
    assert scores.refused_until(A) <= clock.seconds() + constants.MAX_REFUSE_SECONDS


def test_refusal_survives_forget_and_prune_until_it_lapses(clock, scores):
    scores.refuse(A, 10)
    scores.contact(B, True)
    scores.prune(keep=set())
    scores.forget(A)
    assert scores.is_refused(A) and not scores.known(B)
    clock.advance(10)
    scores.forget(A)
    assert not scores.known(A)


def test_anonymous_link_keys_count_only_penalties(scores):
    key = link_key(7)
    assert key != 7 and not isinstance(key, str)  # never a peer_id
    scores.rtt(key, 0.001)
    scores.contact(key, True)
    assert scores.total(key) == 50.0  # neutral: nothing earned by an anonymous link
    scores.penalize(key, "bad_ttl")
    assert scores.total(key) == pytest.approx(50.0 - 10.0)
    scores.prune(keep=set())  # links are not pruned by the table ...
    assert scores.known(key)
    scores.forget(key)  # ... but forgotten when they close
    assert not scores.known(key)


def test_heartbeat_regularity_and_missed_heartbeats(scores):
    for _ in range(10):
        scores.heard(A, constants.HEARTBEAT_INTERVAL)
        scores.heard(B, constants.HEARTBEAT_INTERVAL)
    scores.heard(B, 3 * constants.HEARTBEAT_INTERVAL)
    scores.missed_heartbeats(B)
    assert scores.parts(A)["regularity"] == pytest.approx(11 / 12)
    assert scores.parts(B)["regularity"] == pytest.approx(11 / 14)
    # Many quick frames earn no more than the time they cover.
    for _ in range(300):
        scores.heard(A, 0.1)
    assert scores.parts(A)["regularity"] == pytest.approx(12 / 13)


def test_link_meter_rate_limit_and_flood_penalty_cadence(clock):
    meter = LinkMeter(clock.seconds(), rate=100.0, burst=50.0)
    allowed = [meter.frame(clock.seconds())[0] for _ in range(60)]
    assert allowed.count(True) == 50 and meter.excess == 10
    clock.advance(0.105)  # refills 10.5 frames
    assert all(meter.frame(clock.seconds())[0] for _ in range(10))
    assert meter.frame(clock.seconds())[0] is False
    meter.excess = 0
    due = []
    for _ in range(250):
        meter.frame(clock.seconds())
        due.append(meter.flood_penalty_due())
    assert [i + 1 for i, d in enumerate(due) if d] == [1, 101, 201]
    # Relays out on a link: RELAY_BURST at once, then RELAY_RATE per second.
    sent = [meter.relay(clock.seconds()) for _ in range(int(constants.RELAY_BURST) + 10)]
    assert sent.count(True) == constants.RELAY_BURST
    assert constants.RELAY_RATE < constants.FLOOD_RATE  # below what a receiver tolerates
    clock.advance(5)
    ok, gap = meter.frame(clock.seconds())
    assert ok and gap == pytest.approx(5.0)
    assert meter.take_uptime(clock.seconds()) == pytest.approx(5.105)
    assert meter.take_uptime(clock.seconds()) == 0.0


def test_planner_reads_and_feeds_the_same_scores(clock):
    scores = PeerScores(clock)
    planner = DialPlanner(clock, random.Random(3), scores=scores)
    planner.record_success(A)
    planner.record_failure(B)
    assert planner.score(A) == scores.total(A) > 50 > planner.score(B) == scores.total(B)
    planner.record_bad_data(A)
    assert scores.penalties(A) == pytest.approx(3 * constants.SCORE_NEUTRAL / constants.PENALTY_LIMIT)
    planner.refuse(B)
    assert scores.is_refused(B) and not planner.ready(B)
    assert planner.next_due([B]) == scores.refused_until(B)


def test_planner_choice_prefers_high_scores(clock):
    scores = PeerScores(clock)
    planner = DialPlanner(clock, random.Random(4), scores=scores)
    peers = [f"{i:064x}" for i in range(16)]
    # Peer i answers ping in (i + 1) ms; the four fastest must always be chosen.
    for i, p in enumerate(peers):
        scores.rtt(p, (i + 1) / 1000 * 50)
    counts = {p: 0 for p in peers}
    for _ in range(200):
        chosen = planner.choose(peers, 8)
        assert set(chosen[:4]) == set(peers[:4])
        for p in chosen:
            counts[p] += 1
    # The random half still gives every other peer a chance.
    assert all(counts[p] > 0 for p in peers[4:])


def test_bad_arguments(clock):
    with pytest.raises(ValueError):
        PeerScores(clock, penalty_limit=0)
    with pytest.raises(ValueError):
        PeerScores(clock, half_life=0)


# -- where the score is used: search results and seeders (no sockets) -------------------


def _service_with_sharers(clock, n, repo):
    """An unstarted GossipService on ``clock`` whose table holds ``n`` peers
    sharing ``repo`` (each with a bittorrent address and an infohash)."""
    from peernet.identity import NodeIdentity
    from peernet.peer.transport import GossipService
    from peernet.records import make_record

    svc = GossipService(clock, NodeIdentity.generate(), target_links=0)
    records = []
    for i in range(n):
        ident = NodeIdentity.generate()
        records.append(make_record(
            ident, [f"wss://127.0.0.{i + 2}:8701/gossip", f"bittorrent://127.0.0.{i + 2}:6881"],
            version=1, issued_at_ms=int(clock.seconds() * 1000),
            repos=[{"name": repo, "btih": "ab" * 20}]))
    assert svc.add_seed_records(records) == n
    return svc, [r["record"]["peer_id"] for r in records]


def test_search_results_are_ordered_by_score(clock):
    svc, ids = _service_with_sharers(clock, 5, "films")
    order = [ids[3], ids[0], ids[4], ids[1], ids[2]]
    for rank, peer_id in enumerate(order):  # ids[3] best, ids[2] worst
        for _ in range(5 - rank):
            svc.scores.contact(peer_id, True)
        for _ in range(rank):
            svc.scores.penalize(peer_id, "bad_ttl")
    results = []
    svc.search(repo="films").addCallback(results.append)
    assert [r["record"]["peer_id"] for r in results[0]] == order
    # The control API's search returns exactly this list; a refused peer's
    # score shows why it comes last.
    svc.scores.refuse(ids[2])
    assert svc.peer_score(ids[2])["refused_until"] == clock.seconds() + constants.REFUSE_SECONDS


def test_seeders_are_handed_over_best_score_first_and_refused_last(clock, tmp_path):
    from peernet.peer.repos import RepoService

    svc, ids = _service_with_sharers(clock, 4, "films")
    repos = RepoService(clock, svc, None, str(tmp_path), str(tmp_path / "dl"))
    svc.scores.rtt(ids[2], 0.001)  # fastest
    svc.scores.rtt(ids[0], 0.1)
    svc.scores.rtt(ids[1], 2.0)  # slow
    svc.scores.rtt(ids[3], 0.001)
    svc.scores.refuse(ids[3], 60)  # but cooling off
    records = [e.record for e in svc.core.table.live_broadcasting()]
    summary, seeders = repos._sources(records, name="films")
    assert summary["name"] == "films"
    assert list(seeders.values()) == [ids[2], ids[0], ids[1], ids[3]]
    assert list(seeders)[0] == ("127.0.0.4", 6881)  # (host, port) for libtorrent


def test_a_good_download_credits_each_seeders_transfer_rate(clock, tmp_path):
    from types import SimpleNamespace

    from peernet.peer.repos import DownloadJob, RepoService

    svc, ids = _service_with_sharers(clock, 2, "films")
    repos = RepoService(clock, svc, None, str(tmp_path), str(tmp_path / "dl"))
    job = DownloadJob({"name": "films"}, str(tmp_path), {("h1", 1): ids[0], ("h2", 2): ids[1]})
    job.started_at = clock.seconds()
    job.download = SimpleNamespace(sources={("h1", 1): 40 * 1024 * 1024, ("h2", 2): 1024 * 1024})
    clock.advance(10)
    repos._score_transfers(job)
    assert svc.scores.parts(ids[0])["transfer"] == pytest.approx(4 / 5)  # 4 MiB/s
    assert svc.scores.parts(ids[1])["transfer"] == pytest.approx(0.1 / 1.1)
    assert svc.scores.total(ids[0]) > svc.scores.total(ids[1])


def test_a_dropped_link_costs_uptime_not_contact(clock):
    scores = PeerScores(clock)
    planner = DialPlanner(clock, random.Random(5), scores=scores)
    planner.record_success(A)
    planner.record_failure(A, dropped=True)  # the transport also reports the drop as uptime
    scores.uptime(A, 60, dropped=True)
    assert scores.parts(A)["contact"] == pytest.approx(2 / 3)
    assert scores.parts(A)["uptime"] < 0.5
    assert planner.history(A).failures == 1  # but it backs off all the same
    planner.record_failure(B)
    assert scores.parts(B)["contact"] == pytest.approx(1 / 3)
