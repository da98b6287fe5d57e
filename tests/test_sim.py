"""The simulator (peernet/sim): determinism, lite model vs the real core,
calibration against the real-process benchmark, churn."""

import os
import random
import statistics

import pytest

from peernet.sim import experiments as E
from peernet.sim import lite
from peernet.sim.models import Fixed, LogNormal, Uniform, latency_from_spec
from peernet.sim.realnet import SimNetwork

RESULTS = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results")


def _real_trace(seed):
    with SimNetwork(seed=seed, latency=LogNormal(0.02, 0.5), loss=0.01) as net:
        net.build(40, silent=3, degree_out=4)
        net.run(net.now() + 0.5)
        net.publish_update(net.nodes[5], [{"name": "x"}])
        net.run(net.now() + 2.0)
        net.join(degree_out=3)
        net.crash(net.nodes[7])
        net.run(net.now() + 2.0)
        return net.trace_digest(), net.frames_delivered, net.coverage()


def test_real_core_simulation_is_deterministic_per_seed():
    a, b, c = _real_trace(1), _real_trace(1), _real_trace(2)
    assert a == b
    assert a[0] != c[0]
    assert a[2] == 1.0  # loss 1 %: digest pings and anti-entropy still reach everyone


def test_lite_model_is_deterministic_per_seed():
    adj = lite.random_adjacency(2000, 8, random.Random(0))
    runs = [lite.simulate(adj, 3, latency=Uniform(0.03, 0.07), seed=s, loss=0.01) for s in (1, 1, 2)]
    assert runs[0].digest == runs[1].digest
    assert runs[0].digest != runs[2].digest
    assert lite.random_adjacency(50, 4, random.Random(5)) == lite.random_adjacency(50, 4, random.Random(5))


def test_latency_models_keep_links_fifo_and_parse():
    rng = random.Random(0)
    assert latency_from_spec("fixed:0.05").sample(rng) == 0.05
    u = latency_from_spec("uniform:0.01:0.02")
    assert all(0.01 <= u.sample(rng) <= 0.02 for _ in range(100))
    ln = LogNormal(0.05, 0.5)
    xs = [ln.sample(rng) for _ in range(2000)]
    assert 0.04 < statistics.median(xs) < 0.06
    # FIFO: frames on one link never overtake each other (HELLO stays first)
    with SimNetwork(seed=3, latency=Uniform(0.001, 0.2)) as net:
        net.build(30, degree_out=4)
        net.run(net.now() + 1.0)
        net.publish_update(net.nodes[0], [{"name": "y"}])
        assert net.run_until_covered(10.0)
        assert not any(nd.penalties for nd in net.nodes)


def test_lite_model_agrees_with_the_real_core_at_small_n():
    real, info = E.real_rounds(150, seed=4, rounds=4, latency=Fixed(0.05), stagger=True)
    lt = E.lite_rounds(info["adjacency"], [r["origin"] for r in real], latency=Fixed(0.05), seed=4)
    assert all(r["covered"] for r in real) and all(r["covered"] for r in lt)
    t_real = statistics.median(r["t100"] for r in real)
    t_lite = statistics.median(r["t100"] for r in lt)
    assert abs(t_real - t_lite) <= 0.0501  # one 50 ms link delay
    d_real = statistics.fmean(r["dup_per_delivery"] for r in real)
    d_lite = statistics.fmean(r["dup_per_delivery"] for r in lt)
    assert abs(d_real - d_lite) / d_real < 0.15
    # bytes per peer per update (digest pings naming the change, record asks)
    b_real = statistics.median(r["bytes_per_peer"] for r in real)
    b_lite = statistics.median(r["bytes_per_peer"] for r in lt)
    assert abs(b_real - b_lite) / b_real < 0.10
    assert info["penalties"] == 0


def test_digest_pings_pull_named_records_not_buckets():
    # real core: the spread asks for the one record; no bucket sync without
    # a regular heartbeat (build() opens every link at once: none due for 30 s).
    # The eager mesh reaches everyone on a lossless network, so 20 % of the
    # frames are lost here: the peers the push misses pull by digest ping.
    with SimNetwork(seed=2, latency=Fixed(0.05), count_types=True, loss=0.2) as net:
        net.build(120, degree_out=4)
        net.run(net.now() + 0.5)
        net.publish_update(net.nodes[0], [{"name": "z"}])
        assert net.run_until_covered(5.0)
        net.run(net.now() + 1.0)
        kinds = net.sent_by_type
        assert kinds["HEARTBEAT recent"] > 0 and kinds["PEER_REQUEST peer"] > 0
        assert kinds["PEER_REQUEST sync"] == 0 and kinds["HEARTBEAT"] == 0
        assert any(nd.got[1] == "sync" for nd in net.nodes if nd.got)
    # lite: the same without regular heartbeats; the old rule syncs buckets
    adj = lite.random_adjacency(3000, 8, random.Random(2))
    # (under the random fan-out-3 push, where a fifth of the peers pull)
    new = lite.simulate(adj, 0, lite.Variant.peernet_fanout(heartbeats=False), seed=2)
    old = lite.simulate(adj, 0, lite.Variant.peernet_fanout(heartbeats=False, recent=False), seed=2)
    assert new.coverage == old.coverage == 1.0
    assert "sync_req" not in new.sent_by_kind and new.sent_by_kind["ask_req"] > 0
    assert old.sent_by_kind["sync_req"] > 0 and "ask_req" not in old.sent_by_kind
    assert new.bytes_total < 0.5 * old.bytes_total


def test_calibration_matches_the_real_30_peer_benchmark():
    c = E.calibrate(30, 8)
    real = E.load_real(os.path.join(RESULTS, "convergence.json"))
    assert abs(c["dup_per_delivery"] - real["dup_per_delivery"]) / real["dup_per_delivery"] < 0.10
    assert abs(c["frames_per_round"] - real["frames_per_round"]) / real["frames_per_round"] < 0.15
    # Since the eager mesh, every round finishes with the push (it used to be
    # bimodal: the push, ~0.03 s, or a digest ping, ~0.1 s), so the median is
    # the stable figure; the real run's p99 is its one or two slowest rounds,
    # which on this shared machine is whatever else ran then.  Stated margin 35 %.
    assert abs(c["t100"]["median"] - real["t100_median"]) / real["t100_median"] < 0.35


def test_churn_joins_leaves_and_crashes_keep_the_survivors_converged():
    with SimNetwork(seed=9, latency=Fixed(0.02)) as net:
        net.build(60, silent=5, degree_out=4)
        net.run(net.now() + 0.5)
        newcomer = net.join(degree_out=4)
        leaver, victim = net.nodes[10], net.nodes[11]
        neighbours = [net.nodes[o] for o, _ in victim.links.values()]
        net.leave(leaver, linger=0.5)
        net.crash(victim)
        for nb in neighbours:
            net.clock.callLater(1.0, net.repair, nb, 4)
        net.run(net.now() + 5.0)
        pid = newcomer.core.identity.peer_id
        live = [nd for nd in net.nodes if nd.alive]
        assert len(newcomer.core.table) >= 60  # got the whole table
        assert all(nd.core.table.get(pid) is not None for nd in live)  # everyone learned it
        gone = leaver.core.identity.peer_id
        assert all(nd.core.table.get(gone).is_tombstone for nd in live)
        assert not any(nd.penalties for nd in net.nodes)


def test_push_alone_stalls_and_the_comparison_variants_run():
    adj = lite.random_adjacency(3000, 8, random.Random(1))
    push = lite.simulate(adj, 0, lite.Variant.push_only(), seed=1)
    ours = lite.simulate(adj, 0, lite.Variant.peernet(), seed=1)
    assert 0.85 < push.coverage < 0.995 and ours.coverage == 1.0
    ml = lite.simulate(adj, 0, lite.Variant.memberlist(), seed=1)
    gs = lite.simulate(adj, 0, lite.Variant.gossipsub(), seed=1)
    assert ml.coverage == 1.0 and gs.coverage == 1.0
    assert ours.t100 < ml.t100
    assert ours.dup_per_delivery < 3 < ml.dup_per_delivery
