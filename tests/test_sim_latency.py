"""Per-link latency in the simulator (peernet/sim/models.PerLink) and the
compare-latency experiment's candidate rule (Variant.eager_fastest)."""

import heapq
import math
import random
import statistics

import pytest

from peernet.sim import experiments as E
from peernet.sim import lite
from peernet.sim.models import Fixed, Geographic, LogNormal, PerLink, Uniform, latency_from_spec


def test_a_links_latency_is_one_draw_kept_both_ways_and_keyed_by_seed():
    lat = PerLink(Uniform(0.01, 0.09), seed=7)
    d = lat.link(3, 11)
    assert lat.link(11, 3) == d  # both directions
    assert lat.link(3, 11) == d  # and for the whole run, whatever was drawn meanwhile
    rng = random.Random(0)
    assert lat.delay(3, 11, rng) == lat.delay(11, 3, rng) == d  # no jitter: no per-frame draw
    # the same network for every design run with the same seed, another one with another seed
    assert PerLink(Uniform(0.01, 0.09), seed=7).link(3, 11) == d
    others = [PerLink(Uniform(0.01, 0.09), seed=s).link(3, 11) for s in range(8, 14)]
    assert any(x != d for x in others)
    # links differ from each other and follow the base distribution
    xs = [lat.link(a, a + 1 + b) for a in range(60) for b in range(20)]
    assert all(0.01 <= x <= 0.09 for x in xs)
    assert 0.045 < statistics.mean(xs) < 0.055 and len(set(xs)) > 1000
    ln = PerLink(LogNormal(0.05, 0.5), seed=0)
    ys = [ln.link(a, a + 1 + b) for a in range(100) for b in range(20)]
    assert 0.045 < statistics.median(ys) < 0.055
    assert 0.45 < statistics.pstdev([math.log(y) for y in ys]) < 0.55  # sigma 0.5
    with pytest.raises(TypeError):
        lat.sample(rng)  # a per-link model cannot be used as a per-frame one by mistake
    assert latency_from_spec("link-uniform:0.01:0.09").link(1, 2) == PerLink(Uniform(0.01, 0.09)).link(1, 2)


def test_jitter_varies_each_frame_on_top_of_the_links_delay():
    lat = PerLink(LogNormal(0.05, 0.5), jitter=Uniform(0.0, 0.02), seed=1)
    assert not lat.fifo_free
    rng = random.Random(2)
    base = lat.link(4, 9)
    ds = [lat.delay(4, 9, rng) for _ in range(200)]
    assert all(base <= x <= base + 0.02 for x in ds) and len(set(ds)) > 150


def _dijkstra(adj, src, lat):
    dist = {src: 0.0}
    heap = [(0.0, src)]
    while heap:
        d, v = heapq.heappop(heap)
        if d > dist[v]:
            continue
        for w in adj[v]:
            nd = d + lat.link(v, w)
            if nd < dist.get(w, float("inf")):
                dist[w] = nd
                heapq.heappush(heap, (nd, w))
    return dist


def test_a_flood_on_per_link_latency_arrives_along_the_fastest_path():
    # Flooding every link (free CPU): the first copy wins, so every peer gets
    # the update at its shortest-path distance under the links' latencies.
    adj = lite.random_adjacency(400, 4, random.Random(3))
    lat = PerLink(LogNormal(0.05, 0.5), seed=3)
    res = lite.simulate(adj, 0, lite.Variant.peernet(flood_factor=1e9), latency=lat, seed=1)
    dist = _dijkstra(adj, 0, lat)
    assert res.coverage == 1.0
    assert all(abs(res.got_time[v] - dist[v]) < 1e-9 for v in range(400))
    # a fixed-latency network is the hop count times 50 ms instead
    fixed = lite.simulate(adj, 0, lite.Variant.peernet(flood_factor=1e9), latency=Fixed(0.05), seed=1)
    hop_dist = _dijkstra(adj, 0, PerLink(Uniform(0.05, 0.05)))  # 50 ms x hop count
    assert all(abs(fixed.got_time[v] - hop_dist[v]) < 1e-9 for v in range(400))
    assert max(res.got_time) != max(fixed.got_time)
    assert res.digest == lite.simulate(adj, 0, lite.Variant.peernet(flood_factor=1e9), latency=lat,
                                       seed=1).digest


def test_jitter_keeps_links_fifo_in_the_lite_model():
    adj = lite.random_adjacency(1500, 8, random.Random(4))
    lat = PerLink(LogNormal(0.05, 0.5), jitter=Uniform(0.0, 0.02), seed=4)
    a = lite.simulate(adj, 5, latency=lat, seed=2)
    b = lite.simulate(adj, 5, latency=lat, seed=2)
    c = lite.simulate(adj, 5, latency=lat, seed=3)
    assert a.coverage == 1.0 and a.digest == b.digest != c.digest


def test_fastest_eager_marks_each_peers_lowest_latency_dials():
    adj = lite.random_adjacency(500, 8, random.Random(5))
    # equal latencies: ties go by dial order, i.e. the core's rule (first 2 dials)
    assert lite._fastest_eager(adj, 2, Fixed(0.05)) == adj.eager
    lat = PerLink(Uniform(0.01, 0.09), seed=5)
    eager = lite._fastest_eager(adj, 2, lat)
    for v, dials in enumerate(adj.outbound):
        best = sorted(dials, key=lambda w: lat.link(v, w))[:2]
        assert all(w in eager[v] and v in eager[w] for w in best)
    marked = [lat.link(v, w) for v, ws in enumerate(eager) for w in ws]
    every = [lat.link(v, w) for v, ws in enumerate(adj) for w in ws]
    assert statistics.mean(marked) < 0.75 * statistics.mean(every)
    with pytest.raises(ValueError):
        lite._fastest_eager(lite.Adjacency(list(adj)), 2, lat)  # no dial order: refused


def test_fastest_eager_is_the_core_rule_on_fixed_latency_and_faster_on_variable():
    adj = lite.random_adjacency(3000, 8, random.Random(6))
    ours, fast = lite.Variant.peernet(), lite.Variant.peernet(eager_fastest=True)
    a = lite.simulate(adj, 1, ours, latency=Fixed(0.05), seed=6)
    b = lite.simulate(adj, 1, fast, latency=Fixed(0.05), seed=6)
    assert a.got_time == b.got_time and a.duplicates == b.duplicates
    lat = PerLink(Uniform(0.01, 0.09), seed=6)
    a = lite.simulate(adj, 1, ours, latency=lat, seed=6)
    b = lite.simulate(adj, 1, fast, latency=lat, seed=6)
    assert a.coverage == b.coverage == 1.0
    assert b.t100 < 0.85 * a.t100
    assert b.dup_per_delivery < 3


def test_lite_model_agrees_with_the_real_core_on_per_link_latency():
    lat = PerLink(Uniform(0.01, 0.09), seed=8)
    real, info = E.real_rounds(150, seed=8, rounds=4, latency=lat, stagger=True)
    lt = E.lite_rounds(info["adjacency"], [r["origin"] for r in real], latency=lat, seed=8)
    assert all(r["covered"] for r in real) and all(r["covered"] for r in lt)
    t_real = statistics.median(r["t100"] for r in real)
    t_lite = statistics.median(r["t100"] for r in lt)
    assert abs(t_real - t_lite) <= 0.005  # measured: equal to the microsecond at N = 150
    d_real = statistics.fmean(r["dup_per_delivery"] for r in real)
    d_lite = statistics.fmean(r["dup_per_delivery"] for r in lt)
    assert abs(d_real - d_lite) / d_real < 0.15
    assert info["penalties"] == 0


def test_geographic_latency_is_a_distance():
    geo = Geographic(0.005, 0.085, seed=2)
    rng = random.Random(0)
    assert geo.link(3, 40) == geo.link(40, 3) == geo.delay(3, 40, rng)
    assert Geographic(0.005, 0.085, seed=2).link(3, 40) == geo.link(3, 40)
    assert Geographic(0.005, 0.085, seed=3).link(3, 40) != geo.link(3, 40)
    for a, b, c in ((1, 2, 3), (10, 500, 77), (8, 9, 1000)):
        assert geo.link(a, c) - geo.base <= (geo.link(a, b) - geo.base) + (geo.link(b, c) - geo.base) + 1e-12
    xs = [geo.link(a, b) for a in range(200) for b in range(a + 1, 200)]
    assert 0.005 <= min(xs) and max(xs) <= 0.005 + 0.085 * math.sqrt(2)
    assert 0.045 < statistics.mean(xs) < 0.053  # ~49 ms over random pairs
    with pytest.raises(TypeError):
        geo.sample(rng)


def test_lite_model_agrees_with_the_real_core_on_geographic_latency():
    lat = Geographic(seed=9)
    real, info = E.real_rounds(120, seed=9, rounds=3, latency=lat, stagger=True)
    lt = E.lite_rounds(info["adjacency"], [r["origin"] for r in real], latency=lat, seed=9)
    assert all(r["covered"] for r in real) and all(r["covered"] for r in lt)
    assert abs(statistics.median(r["t100"] for r in real) - statistics.median(r["t100"] for r in lt)) <= 0.005
    assert info["penalties"] == 0


def test_fastest_eager_with_rtt_noise_ranks_by_each_peers_estimate():
    adj = lite.random_adjacency(800, 8, random.Random(7))
    lat = PerLink(Uniform(0.01, 0.09), seed=7)
    exact = lite._fastest_eager(adj, 2, lat)
    assert lite._fastest_eager(adj, 2, lat, noise=0.0) == exact
    noisy = lite._fastest_eager(adj, 2, lat, noise=0.3)
    assert noisy == lite._fastest_eager(adj, 2, lat, noise=0.3)  # the same estimates every run
    assert noisy != exact

    def mean(e):
        return statistics.mean(lat.link(v, w) for v, ws in enumerate(e) for w in ws)
    every = statistics.mean(lat.link(v, w) for v, ws in enumerate(adj) for w in ws)
    assert mean(exact) < mean(noisy) < every  # worse picks than the truth, better than blind
