"""Run the simulator experiments behind docs/benchmarks.md.

    .venv/bin/python benchmarks/sim.py all            # everything (~8-10 min on 2 cores)
    .venv/bin/python benchmarks/sim.py scale --max-n 10000   # skip the 100 000-peer runs
    .venv/bin/python benchmarks/sim.py calibration validation scale ttl compare bandwidth
    .venv/bin/python benchmarks/sim.py compare-latency   # compare on variable latency (~10 min)

Each experiment writes benchmarks/results/sim-<name>.json; benchmarks/report.py
turns them into docs/benchmarks.md and docs/img/*.png.
"""

import argparse
import json
import os
import platform
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from peernet import constants  # noqa: E402
from peernet.sim import experiments as E  # noqa: E402
from peernet.sim import lite  # noqa: E402
from peernet.sim.models import Fixed, Geographic, LogNormal, PerLink, Uniform, wan_cpu  # noqa: E402
from peernet.sim.realnet import SimNetwork  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CURVE_T = [round(0.01 * i, 2) for i in range(0, 201)]  # 0..2 s


def write(name, data):
    data["machine"] = {"python": platform.python_version(), "nproc": os.cpu_count(),
                       "platform": platform.platform()}
    data["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = os.path.join(RESULTS, f"sim-{name}.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)
    print(f"wrote {path}")


def exp_calibration(args):
    out = {"runs": []}
    for n, rounds, fname in ((30, 20, "convergence"), (100, 10, "convergence-100")):
        real = E.load_real(os.path.join(RESULTS, f"{fname}.json"))
        for label, scale in (("measured cost (unfitted)", 1.0),
                             ("calibrated", E.CALIBRATED_SCALE)):
            cpu = E.loopback_cpu(scale=scale) if scale != 1.0 else E.loopback_cpu(
                scale=1.0, publish_overhead_s=0.008, observe_delay_s=0.002)
            c = E.calibrate(n, rounds, cpu=cpu)
            c.update(label=label, real=real, real_file=f"benchmarks/results/{fname}.json")
            out["runs"].append(c)
            print(n, label, round(c["t100"]["median"], 3), round(c["t100"]["p99"], 3),
                  round(c["dup_per_delivery"], 2), "real", real["t100_median"], real["t100_p99"])
    write("calibration", out)


def exp_validation(args):
    out = {"runs": []}
    for n, rounds, lat in ((200, 8, Fixed(0.05)), (1000, 6, Fixed(0.05)),
                           (200, 8, LogNormal(0.05, 0.5))):
        w = time.perf_counter()
        v = E.validate_lite(n, seed=1, rounds=rounds, latency=lat)
        v["wall_s"] = time.perf_counter() - w
        out["runs"].append(v)
        print(n, lat.describe(), v["diff_pct"])
    write("validation", out)


def exp_scale(args):
    plan = [(1000, 4, 5), (10000, 3, 4), (100000, 2, 3)]
    out = {"latency": "fixed 50 ms", "cpu": vars(wan_cpu()), "runs": []}
    for n, seeds, origins in plan:
        if n > args.max_n:
            continue
        rss0 = E.rss_bytes()
        w = time.perf_counter()
        rounds, events, sim_wall, curves = [], 0, 0.0, []
        for seed in range(seeds):
            adj = lite.random_adjacency(n, constants.TARGET_LINKS, random.Random(seed))
            orig = random.Random(f"o{seed}").sample(range(n), origins)
            t = time.perf_counter()
            rs = E.lite_rounds(adj, orig, latency=Fixed(0.05), cpu=wan_cpu(), seed=seed,
                               horizon=20.0, linger=1.0)
            sim_wall += time.perf_counter() - t
            for r in rs:
                res = r["result"]
                curves.append(res.coverage_curve(CURVE_T))
                hops = [h for h in res.hops if h is not None]
                r["hop_hist"] = {h: hops.count(h) for h in sorted(set(hops))}
                events += r["events"]
            rounds += E.strip(rs)
            rss = E.rss_bytes()
        row = {"n": n, "runs": len(rounds), "rounds": rounds,
               "t100": E.summary([r["t100"] for r in rounds]),
               "t50": E.summary([r["t50"] for r in rounds]),
               "dup_per_delivery": E.summary([r["dup_per_delivery"] for r in rounds]),
               "bytes_per_peer_per_update": E.summary([r["bytes_per_peer"] for r in rounds]),
               "max_hops": E.summary([r["max_hops"] for r in rounds]),
               "coverage_curve_t": CURVE_T,
               "coverage_curve_median": [E.pct([c[i] for c in curves], 50) for i in range(len(CURVE_T))],
               "coverage_curve_min": [min(c[i] for c in curves) for i in range(len(CURVE_T))],
               "events": events, "events_per_s": events / sim_wall, "wall_s": time.perf_counter() - w,
               "rss_per_peer_bytes": max(0, rss - rss0) / n}
        out["runs"].append(row)
        print(n, row["t100"]["median"], row["t100"]["p99"], row["dup_per_delivery"]["median"],
              round(row["events_per_s"]), round(row["wall_s"], 1))
    write("scale", out)


def exp_ttl(args):
    n = min(100000, args.max_n)
    adj = lite.random_adjacency(n, constants.TARGET_LINKS, random.Random(0))
    push = []
    for ttl in (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 32):
        r = lite.simulate(adj, 0, lite.Variant.push_only(ttl=ttl), seed=0, horizon=20)
        push.append({"ttl": ttl, "coverage": r.coverage, "reached": r.covered,
                     "max_hops": max(h for h in r.hops if h is not None)})
        print("push ttl", ttl, r.covered)
    n2 = min(10000, n)
    adj2 = lite.random_adjacency(n2, constants.TARGET_LINKS, random.Random(0))
    full = []
    for ttl in (0, 1, 2, 4, 8, 32):
        r = lite.simulate(adj2, 0, lite.Variant.peernet(ttl=ttl), seed=0, horizon=30)
        full.append({"ttl": ttl, "coverage": r.coverage, "t100": r.t100,
                     "dup_per_delivery": r.dup_per_delivery, "bytes_per_peer": r.bytes_total / n2})
        print("full ttl", ttl, r.t100)
    write("ttl", {"n_push": n, "push_only": push, "n_full": n2, "peernet": full})


def exp_compare(args):
    variants = {
        "peernet (flood phase + eager mesh + digest pings + 30 s anti-entropy)": lite.Variant.peernet(),
        "peernet with one more flood hop (the trade: time for duplicates)":
            lite.Variant.peernet(flood_factor=15.0),
        "peernet before the eager mesh (push to 3 random links + digest pings)":
            lite.Variant.peernet_fanout(),
        "peernet before pings named changes (every digest mismatch: bucket sync)":
            lite.Variant.peernet(recent=False),
        "push fan-out 3 alone": lite.Variant.push_only(),
        "push fan-out 3 + 30 s anti-entropy (no digest pings)": lite.Variant.push_only(heartbeats=True),
        "memberlist/Serf-style (fan-out 3, 200 ms, no pull)": lite.Variant.memberlist(),
        "GossipSub-style (mesh 6, 1 s heartbeat, IHAVE/IWANT)": lite.Variant.gossipsub(),
    }
    out = {"latency": "fixed 50 ms", "runs": []}
    for n, origins in ((1000, 5), (10000, 3), (100000, 1)):
        if n > args.max_n:
            continue
        adj = lite.random_adjacency(n, constants.TARGET_LINKS, random.Random(0))
        orig = random.Random("cmp").sample(range(n), origins)
        for name, var in variants.items():
            horizon = 70.0 if var.kind == "push" and var.heartbeats else 20.0
            rs = E.lite_rounds(adj, orig, variant=var, latency=Fixed(0.05), cpu=wan_cpu(),
                               seed=0, horizon=horizon, linger=1.0)
            cov = [r["coverage"] for r in rs]
            row = {"n": n, "variant": name, "kind": var.kind, "recent": var.recent, "runs": len(rs),
                   "eager_links": var.eager_links, "flood": var.flood,
                   "flood_factor": var.flood_factor,
                   "ours": var == lite.Variant.peernet(),
                   "coverage_min": min(cov), "coverage_median": E.pct(cov, 50),
                   "t100": E.summary([r["t100"] for r in rs]),
                   "t_last": E.summary([r["result"].t_last for r in rs]),
                   "dup_per_delivery": E.summary([r["dup_per_delivery"] for r in rs]),
                   "bytes_per_peer": E.summary([r["bytes_per_peer"] for r in rs]),
                   "bytes_by_kind": rs[0]["bytes_by_kind"],
                   "curve": rs[0]["result"].coverage_curve(CURVE_T)}
            out["runs"].append(row)
            print(n, var.kind, var.heartbeats, row["coverage_min"], row["t100"].get("median"))
    out["curve_t"] = CURVE_T
    write("compare", out)


#: compare-latency: the designs (same graph, same origins, same CPU model)
#: How far a peer's RTT estimate of a link is off the link's latency in the
#: compare-latency runs of our RTT rule: a log-normal factor, sigma 0.3 (drawn
#: once per peer and link), pessimistic for averaged WebSocket pings.
RTT_NOISE = 0.3
LATENCY_DESIGNS = (
    ("ours", "peernet (flood phase + eager mesh on each peer's 2 fastest outbound links by a "
             "measured RTT + digest pings + 30 s anti-entropy)",
     lite.Variant.peernet(eager_fastest=True, rtt_noise=RTT_NOISE)),
    ("dials", "peernet before the RTT rule: each peer's first 2 dials eager, blind to latency",
     lite.Variant.peernet()),
    ("flood+1", "peernet with one more flood hop (the trade: time for duplicates)",
     lite.Variant.peernet(flood_factor=15.0, eager_fastest=True, rtt_noise=RTT_NOISE)),
    ("fanout", "peernet before the eager mesh (push to 3 random links + digest pings)",
     lite.Variant.peernet_fanout()),
    ("memberlist", "memberlist/Serf-style (fan-out 3, 200 ms, no pull)", lite.Variant.memberlist()),
    ("gossipsub", "GossipSub-style (mesh 6, 1 s heartbeat, IHAVE/IWANT)", lite.Variant.gossipsub()),
    ("eager3", "diagnostic, not a proposal: peernet with 3 eager dials per peer (~6 eager links, "
               "as GossipSub's mesh 6), blind to latency", lite.Variant.peernet(eager_links=3)),
    ("fastest", "peernet with exact RTTs (the best its RTT rule can do)",
     lite.Variant.peernet(eager_fastest=True)),
)

def latency_models(seed=0):
    """compare-latency: the network models (per-link draws keyed by ``seed``,
    the same for every design)."""
    return (
        ("fixed", Fixed(0.05)),
        ("uniform", PerLink(Uniform(0.01, 0.09), seed=seed)),
        ("lognormal", PerLink(LogNormal(0.05, 0.5), seed=seed)),
        ("lognormal+jitter", PerLink(LogNormal(0.05, 0.5), jitter=Uniform(0.0, 0.02), seed=seed)),
        ("geographic", Geographic(0.005, 0.085, seed=seed)),
    )


def _eager_latency(adj, var, latency):
    """Mean and median latency of the links a design pushes on past the
    flood phase (the eager mesh; every overlay link for the others)."""
    if not getattr(latency, "per_link", False) or var.kind == "memberlist":
        return None  # memberlist-style sends to any member, not over the overlay
    if var.kind == "peernet" and var.eager_links:
        eager = (lite._fastest_eager(adj, var.eager_links, latency, noise=var.rtt_noise)
                 if var.eager_fastest
                 else lite._pick_eager(adj, var.eager_links, random.Random(0))
                 if var.eager_links != constants.EAGER_LINKS else adj.eager)
        pairs = [(v, w) for v, ws in enumerate(eager) for w in ws if v < w]
    else:
        pairs = [(v, w) for v, ws in enumerate(adj) for w in ws if v < w]
    lat = [latency.link(v, w) for v, w in pairs]
    return {"links_per_peer": 2 * len(pairs) / len(adj), "mean_ms": 1000 * sum(lat) / len(lat),
            "median_ms": 1000 * E.pct(lat, 50)}


def latency_validation(n=150, rounds=4, seed=8):
    """The lite model against the real core (free CPU) on the per-link models:
    same graph, same links' latencies, same origins."""
    rows = []
    for model, latency in latency_models(seed)[1:]:
        real, info = E.real_rounds(n, seed=seed, rounds=rounds, latency=latency, stagger=True)
        lt = E.lite_rounds(info["adjacency"], [r["origin"] for r in real], latency=latency, seed=seed)
        row = {"n": n, "model": model, "latency": latency.describe(), "rounds": rounds,
               "penalties": info["penalties"]}
        for name, rs in (("real", real), ("lite", lt)):
            row[name] = {"t100": [r["t100"] for r in rs],
                         "dup_per_delivery": [r["dup_per_delivery"] for r in rs],
                         "bytes_per_peer": [r["bytes_per_peer"] for r in rs]}
        rows.append(row)
        print("validation", model, [round(x, 4) for x in row["real"]["t100"]],
              [round(x, 4) for x in row["lite"]["t100"]], flush=True)
    return rows


def exp_compare_latency(args):
    """The compare designs on the same graphs with variable latency per link."""
    out = {"models": {name: lat.describe() for name, lat in latency_models()},
           "cpu": vars(wan_cpu()), "designs": {k: name for k, name, _ in LATENCY_DESIGNS},
           "validation": latency_validation(), "runs": []}
    for n, origins in ((1000, 5), (10000, 3), (100000, 1)):
        if n > args.max_n:
            continue
        adj = lite.random_adjacency(n, constants.TARGET_LINKS, random.Random(0))
        orig = random.Random("cmp").sample(range(n), origins)
        for model, latency in latency_models():
            for key, name, var in LATENCY_DESIGNS:
                w = time.perf_counter()
                rs = E.lite_rounds(adj, orig, variant=var, latency=latency, cpu=wan_cpu(),
                                   seed=0, horizon=20.0, linger=1.0)
                cov = [r["coverage"] for r in rs]
                row = {"n": n, "model": model, "latency": latency.describe(), "design": key,
                       "variant": name, "runs": len(rs), "origins": orig,
                       "coverage_min": min(cov), "coverage_median": E.pct(cov, 50),
                       "t100": E.summary([r["t100"] for r in rs]),
                       "t50": E.summary([r["t50"] for r in rs]),
                       "t_last": E.summary([r["result"].t_last for r in rs]),
                       "dup_per_delivery": E.summary([r["dup_per_delivery"] for r in rs]),
                       "bytes_per_peer": E.summary([r["bytes_per_peer"] for r in rs]),
                       "max_hops": E.summary([r["max_hops"] for r in rs]),
                       "via_sync": E.summary([r["via_sync"] for r in rs]),
                       "bytes_by_kind": rs[0]["bytes_by_kind"],
                       "push_links": _eager_latency(adj, var, latency),
                       "wall_s": time.perf_counter() - w}
                out["runs"].append(row)
                print(n, model, key, f"{row['coverage_min']:.4f}", f3(row["t100"].get("median")),
                      f3(row["t100"].get("p99")), f"{row['dup_per_delivery']['median']:.2f}",
                      round(row["bytes_per_peer"]["median"]), round(row["wall_s"], 1), flush=True)
            write("compare-latency", out)  # partial results survive an interrupted run
    write("compare-latency", out)


def f3(x):
    return "-" if x is None else f"{x:.3f}"


def _bandwidth_run(n, silent, duration, churn_per_hour, seed=3):
    """Real cores, 50 ms links: bytes/s per peer over ``duration`` s, with
    churn (joins = departures; departures half graceful, half crashes)."""
    with SimNetwork(seed=seed, latency=Fixed(0.05)) as net:
        net.build(n, silent=silent)
        net.run(net.now() + 2.0)
        rng = random.Random(f"{seed}/churn")
        b0, t0 = net.bytes_sent, net.now()
        rate = churn_per_hour * n / 3600.0  # departures per second (and joins)
        events = {"join": 0, "leave": 0, "crash": 0}
        t = t0
        if rate > 0:
            schedule = []
            while True:
                t += rng.expovariate(2 * rate)
                if t >= t0 + duration:
                    break
                schedule.append((t, rng.choice(["join", "join", "leave", "crash"])))
            for when, what in schedule:
                net.run(when)
                live = [nd for nd in net.nodes if nd.alive]
                if what == "join":
                    net.join()
                else:
                    victim = rng.choice(live)
                    neighbours = [net.nodes[o] for o, _ in victim.links.values()]
                    if what == "leave":
                        net.leave(victim, linger=0.5)
                    else:
                        net.crash(victim)
                    for nb in neighbours:  # the connection manager redials after ~1 s
                        net.clock.callLater(1.0 + rng.random(), net.repair, nb)
                events[what] += 1
        net.run(t0 + duration)
        live = [nd for nd in net.nodes if nd.alive]
        links = sum(len(nd.links) for nd in live) / 2
        total = net.bytes_sent - b0
        return {"n": n, "silent": silent, "duration_s": duration, "churn_per_hour": churn_per_hour,
                "events": events, "bytes_per_peer_per_s": total / len(live) / duration,
                "bytes_per_link_per_s": total / links / duration,
                "links_per_peer": 2 * links / len(live), "penalties": sum(len(nd.penalties) for nd in net.nodes)}


def _refresh_run(n, silent, duration, rate, seed=5, warmup=2.0):
    """Real cores, 50 ms links, random heartbeat phases: every peer's record
    refreshes (same version, new issued_at, as GossipCore.tick does every
    refresh_interval_for(N)) at Poisson times, ``rate`` refreshes per second
    network-wide.  Each peer then sees ``rate`` refreshes per second:
    rate = N / refresh_interval_for(N) (experiments.refresh_rate) is the real
    rate at N peers (N / 1800 before the interval grew with N).  Counts bytes by frame kind
    and, per bucket sync answered, the differing buckets (to scale the sync
    answers to larger N, where a bucket holds N/256 records)."""
    from peernet.gossip.core import GossipCore
    from peernet.gossip.table import PeerTable
    stats = {"answers": 0, "buckets": 0, "askback": 0, "started": 0}
    orig = PeerTable.differing_buckets
    orig_start, orig_answer = GossipCore._start_sync, GossipCore._answer_sync
    answering = []

    def counting(self, theirs):
        out = orig(self, theirs)
        stats["answers"] += 1
        stats["buckets"] += len(out)
        return out

    def start(self, link):  # measurement only: which rule started each bucket sync
        actions = orig_start(self, link)
        if actions:
            stats["started"] += 1
            stats["askback"] += bool(answering)
        return actions

    def answer(self, link, msg):
        answering.append(1)
        try:
            return orig_answer(self, link, msg)
        finally:
            answering.pop()
    PeerTable.differing_buckets = counting
    GossipCore._start_sync, GossipCore._answer_sync = start, answer
    try:
        with SimNetwork(seed=seed, latency=Fixed(0.05), count_types=True) as net:
            net.build(n, silent=silent)
            net.run(net.now() + warmup)
            net.stagger_heartbeats()
            net.run(net.now() + 0.5)
            rng = random.Random(f"{seed}/refresh")
            bc = [nd for nd in net.nodes if nd.broadcasting]
            t = t0 = net.now()
            b0, types0 = net.bytes_sent, net.bytes_by_type.copy()
            frames0 = net.sent_by_type.copy()
            stats.update(answers=0, buckets=0, askback=0, started=0)
            refreshes = 0
            refreshed = set()
            while True:
                t += rng.expovariate(rate)
                if t >= t0 + duration:
                    break
                net.run(t)
                node = rng.choice(bc)
                net.refresh(node)
                refreshed.add(node.core.identity.peer_id)
                refreshes += 1
            net.run(t0 + duration)
            live = [nd for nd in net.nodes if nd.alive]
            links = sum(len(nd.links) for nd in live) / 2
            total = net.bytes_sent - b0
            per_s = lambda c: {k: v / len(live) / duration for k, v in c.items() if v}  # noqa: E731
            covered = all(nd.core.table.digest() == live[0].core.table.digest() for nd in live)
            # Digests hold record identities, so they agree whatever copy a
            # holder has: also count how many (holder, refreshed record) pairs
            # hold the owner's latest issue (a refresh the push missed stays older).
            latest = {nd.core.identity.peer_id: nd.core.own.order for nd in bc
                      if nd.alive and nd.core.identity.peer_id in refreshed}
            pairs = fresh = 0
            for nd in live:
                for pid, order in latest.items():
                    if pid == nd.core.identity.peer_id:
                        continue
                    e = nd.core.table.get(pid)
                    pairs += 1
                    fresh += e is not None and e.order >= order
            return {"n": n, "silent": silent, "duration_s": duration, "refresh_rate_per_s": rate,
                    "refreshes": refreshes, "bytes_per_peer_per_s": total / len(live) / duration,
                    "bytes_per_link_per_s": total / links / duration,
                    "links_per_peer": 2 * links / len(live),
                    "bytes_by_kind_per_peer_per_s": per_s(net.bytes_by_type - types0),
                    "frames_by_kind_per_peer_per_s": per_s(net.sent_by_type - frames0),
                    "sync_answers_per_peer_per_s": stats["answers"] / len(live) / duration,
                    "differing_buckets_per_answer": stats["buckets"] / max(1, stats["answers"]),
                    "syncs_started_per_peer_per_s": stats["started"] / len(live) / duration,
                    "syncs_started_by_ask_back": stats["askback"] / max(1, stats["started"]),
                    "tables_equal_at_end": covered,
                    "latest_copy_share": fresh / max(1, pairs),
                    "penalties": sum(len(nd.penalties) for nd in net.nodes)}
    finally:
        PeerTable.differing_buckets = orig
        GossipCore._start_sync, GossipCore._answer_sync = orig_start, orig_answer


def _previous_refresh_runs():
    """The refresh-load runs of the stored sim-bandwidth.json from before
    refreshes stopped changing digests (kept for the report's before/after)."""
    try:
        with open(os.path.join(RESULTS, "sim-bandwidth.json")) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return None
    if "before_identity_digests" in old:
        return old["before_identity_digests"]
    if "lite_refresh" not in old:  # the file predates this change
        return {"refresh": old.get("refresh"), "date": old.get("date"),
                "note": "same experiment, core before identity digests (refresh = "
                        "digest change: pings, asks, bucket syncs), 30-min refreshes"}
    return None


def exp_bandwidth(args):
    before = _previous_refresh_runs()
    sizes = lite.frame_sizes()
    # Refreshes on the lite model (push only) and the idle traffic they make
    # at the refresh interval an owner picks at each N.
    lite_rows = []
    for n, spreads in ((1000, 12), (10000, 12), (100000, 8)):
        if n > args.max_n:
            continue
        w = time.perf_counter()
        r = E.lite_refreshes(n, spreads=spreads)
        r["idle"] = E.idle_model(n, r["bytes_per_peer_per_refresh"]["median"], r["miss_run"],
                                 r["links_per_peer"], sizes)
        r["wall_s"] = time.perf_counter() - w
        lite_rows.append(r)
        print("lite refresh", n, round(r["bytes_per_peer_per_refresh"]["median"]),
              round(r["push_coverage"]["median"], 4), r["miss_run"],
              "idle B/s per link", round(r["idle"]["per_link"], 1), round(r["wall_s"], 1))
    n, silent, dur = 500, 50, 120.0
    idle = _bandwidth_run(n, silent, dur, 0.0)
    print("idle", idle)
    churn = _bandwidth_run(n, silent, dur, 1.0)
    print("churn 100%/h", churn)
    churn3 = _bandwidth_run(n, silent, dur, 3.0)
    print("churn 300%/h", churn3)
    refresh = []
    # Real cores under refresh load.  Every peer sees every refresh, so the
    # load a peer handles is the network-wide rate N / interval(N) whatever
    # N is: 500 peers at that rate (the same, 1 / REFRESH_SECONDS_PER_PEER,
    # at every N from 360 up to the cap); then 200 peers at the rates the old
    # 30-min interval gave 10 000 and 100 000 peers (overlapping refreshes:
    # identity digests keep them push-only), as before this change.
    for rn, label, rate, rdur in (
            (500, "now, any N >= 360", E.refresh_rate(500), 600.0),
            (200, "30-min interval at 10 000 peers", 10000 / 1800.0, 20.0),
            (200, "30-min interval at 100 000 peers", 100000 / 1800.0, 6.0)):
        w = time.perf_counter()
        r = _refresh_run(rn, 0 if rn < 500 else silent, rdur, rate)
        r["label"] = label
        r["wall_s"] = time.perf_counter() - w
        refresh.append(r)
        print("refresh", rn, label, round(rate, 2), round(r["bytes_per_link_per_s"], 1),
              r["sync_answers_per_peer_per_s"], r["latest_copy_share"], round(r["wall_s"]))
    out = {"lite_refresh": lite_rows, "real": [idle, churn, churn3], "refresh": refresh,
           "sizes": sizes,
           "constants": {k: getattr(constants, k) for k in (
               "RECORD_LIFETIME", "RECORD_REFRESH_INTERVAL", "LIFETIME_REFRESHES",
               "REFRESH_SECONDS_PER_PEER", "MAX_RECORD_LIFETIME", "HEARTBEAT_INTERVAL")}}
    if before:
        out["before_identity_digests"] = before
    write("bandwidth", out)


EXPERIMENTS = {"calibration": exp_calibration, "validation": exp_validation, "scale": exp_scale,
               "ttl": exp_ttl, "compare": exp_compare, "bandwidth": exp_bandwidth,
               "compare-latency": exp_compare_latency}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="+", choices=list(EXPERIMENTS) + ["all"])
    p.add_argument("--max-n", type=int, default=100000)
    args = p.parse_args(argv)
    names = [x for x in EXPERIMENTS if x != "compare-latency"] if "all" in args.experiments \
        else args.experiments
    for name in names:
        w = time.perf_counter()
        EXPERIMENTS[name](args)
        print(f"{name}: {time.perf_counter() - w:.1f} s")


if __name__ == "__main__":
    main()
