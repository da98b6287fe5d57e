"""Write docs/benchmarks.md and docs/img/*.png from the benchmark results.

    ./scripts/bench.sh                                   # install what it needs, then --real --run
    .venv/bin/python benchmarks/report.py --real --run   # rerun everything, then write (~20 min)
    .venv/bin/python benchmarks/report.py --run          # rerun the simulations only (~8-10 min)
    .venv/bin/python benchmarks/report.py                # write from benchmarks/results/

``--real`` first reruns the real-process benchmarks the report quotes:
``benchmarks/convergence.py`` at 30 and at 100 peers (Serf alongside: needs
the Debian package ``serf``) and ``benchmarks/costs.py``.  Every render copies
costs.py's stored table into the top of docs/costs.md.  ``--run`` calls
``benchmarks/sim.py all`` (add ``--max-n 10000`` to skip the 100 000-peer
runs); it comes after the real runs, since the simulator's calibration is
checked against them.  Plots use matplotlib's Agg backend.
"""

import argparse
import json
import math
import os
import subprocess
import sys

try:
    import matplotlib
except ImportError:  # the bench extra is not in the test install
    sys.exit("report.py draws its plots with matplotlib, which ./scripts/bench.sh installs "
             "(the bench extra) before it runs this script")

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RESULTS = os.path.join(ROOT, "benchmarks", "results")
IMG = os.path.join(ROOT, "docs", "img")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
sys.path.insert(0, ROOT)

from peernet.sim import experiments as E  # noqa: E402

from common import splice_costs  # noqa: E402  (benchmarks/, this script's directory)

RECORD_REFRESH_INTERVAL = 1800.0
HEARTBEAT_INTERVAL = 30.0


def load(name):
    path = os.path.join(RESULTS, f"sim-{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def f3(x):
    return "-" if x is None else f"{x:.3f}"


def fb(x):
    if x is None:
        return "-"
    for unit, div in (("MB", 1e6), ("kB", 1e3)):
        if x >= div:
            return f"{x / div:.1f} {unit}"
    return f"{x:.0f} B"


def save(fig, name):
    path = os.path.join(IMG, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"img/{name}"


def fig_coverage(scale):
    fig, ax = plt.subplots(figsize=(7, 4))
    for row in scale["runs"]:
        t = row["coverage_curve_t"]
        ax.plot(t, [100 * c for c in row["coverage_curve_median"]], label=f"N = {row['n']:,} (median)")
        ax.fill_between(t, [100 * c for c in row["coverage_curve_min"]],
                        [100 * c for c in row["coverage_curve_median"]], alpha=0.2)
    ax.set_xlabel("time since publish (s), 50 ms links")
    ax.set_ylabel("peers holding the update (%)")
    ax.set_xlim(0, 1.2)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Coverage over time (shaded: slowest run)")
    return save(fig, "sim-coverage.png")


def fig_t100(scale):
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [r["n"] for r in scale["runs"]]
    ax.plot(ns, [r["t100"]["median"] for r in scale["runs"]], "o-", label="median")
    ax.plot(ns, [r["t100"]["p99"] for r in scale["runs"]], "s--", label="p99")
    ax.axhspan(50, 250, color="red", alpha=0.1, label="seed's claim: 50-250 s")
    ax.axhline(5, color="orange", ls=":", label="issue target: 5 s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("peers")
    ax.set_ylabel("time to 100 % (s)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title("Time to 100 % coverage, 50 ms links")
    return save(fig, "sim-t100.png")


def fig_ttl(ttl):
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [r["ttl"] for r in ttl["push_only"]]
    ax.plot(xs, [r["reached"] for r in ttl["push_only"]], "o-",
            label=f"push fan-out 3 alone, N = {ttl['n_push']:,}")
    ax.axhline(59000, color="red", ls=":", label="seed: TTL 32 reaches ~59 000")
    ax.axhline(ttl["n_push"], color="gray", ls="--", lw=0.8, label="all peers")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("TTL")
    ax.set_ylabel("peers reached by push")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Peers reached vs TTL (push only; anti-entropy reaches the rest)")
    return save(fig, "sim-ttl.png")


def fig_compare(cmp_, n):
    rows = [r for r in cmp_["runs"] if r["n"] == n]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for r in rows:
        ax.plot(cmp_["curve_t"], [100 * c for c in r["curve"]], label=r["variant"])
    ax.set_xlabel("time since publish (s), 50 ms links")
    ax.set_ylabel("peers holding the update (%)")
    ax.set_xlim(0, 2)
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"Same network model, N = {n:,}: coverage over time")
    return save(fig, f"sim-compare-{n}.png")


LAT_ORDER = ("ours", "dials", "flood+1", "fanout", "memberlist", "gossipsub", "eager3", "fastest")
LAT_SHORT = {"ours": "peernet (ours: 2 fastest dials eager, RTT estimates off by sigma 0.3)",
             "dials": "ours before the RTT rule (first 2 dials eager)",
             "flood+1": "ours + 1 flood hop", "fanout": "ours before the eager mesh",
             "memberlist": "memberlist/Serf-style", "gossipsub": "GossipSub-style",
             "eager3": "3 eager dials, blind to latency (diagnostic)",
             "fastest": "ours with exact RTTs (best case)"}


def lat_pick(lat, n, model, design):
    return next((r for r in lat["runs"] if r["n"] == n and r["model"] == model
                 and r["design"] == design), None)


def fig_compare_latency(lat):
    ns = sorted({r["n"] for r in lat["runs"]})
    models = list(lat["models"])
    designs = [d for d in LAT_ORDER if d != "memberlist" and any(r["design"] == d for r in lat["runs"])]
    fig, axes = plt.subplots(1, len(ns), figsize=(5.0 * len(ns), 4.4), sharey=True, squeeze=False)
    width = 0.8 / len(designs)
    for ax, n in zip(axes[0], ns):
        for i, d in enumerate(designs):
            ys = []
            for m in models:
                r = lat_pick(lat, n, m, d)
                ys.append(r["t100"].get("median") or 0 if r else 0)
            ax.bar([j + (i - len(designs) / 2 + 0.5) * width for j in range(len(models))], ys, width,
                   label=LAT_SHORT[d])
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels([m.replace("+", "\n+") for m in models], fontsize=7)
        ax.set_title(f"N = {n:,}")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("time-to-100 %, median (s)")
    top = max((r["t100"].get("median") or 0) for r in lat["runs"] if r["design"] in designs)
    axes[0][0].set_ylim(0, top * 1.75)  # room for the legend above the bars
    axes[0][0].legend(fontsize=6.5, loc="upper left")
    fig.suptitle("Same designs, same graphs: fixed 50 ms vs latency per link (memberlist-style: off scale, see table)",
                 fontsize=9)
    return save(fig, "sim-compare-latency.png")


def span(xs, fmt):
    lo, hi = format(min(xs), fmt), format(max(xs), fmt)
    return lo if lo == hi else f"{lo}-{hi}"


def latency_verdict(lat):
    """(short verdict, sentences): who wins on the variable-latency models, by how much."""
    ns = sorted({r["n"] for r in lat["runs"]})
    varm = [m for m in lat["models"] if m != "fixed"]
    cells = []  # (n, model, ours, gs, ml, fast)
    for n in ns:
        for m in lat["models"]:
            got = [lat_pick(lat, n, m, d) for d in ("ours", "gossipsub", "memberlist", "dials")]
            if got[0] and got[1]:
                cells.append((n, m, *got))
    var_cells = [c for c in cells if c[1] in varm]
    if not var_cells:
        return None, []
    t = lambda r: r["t100"].get("median") if r and r["t100"].get("n") else None  # noqa: E731
    dup = lambda r: r["dup_per_delivery"]["median"]  # noqa: E731
    out = []
    gaps = [(t(o) - t(g), (t(o) - t(g)) / t(g), n, m) for n, m, o, g, _, _ in var_cells
            if t(o) is not None and t(g) is not None]
    lose = [x for x in gaps if x[0] > 0.0005]
    win = [x for x in gaps if x[0] < -0.0005]
    od = [dup(c[2]) for c in var_cells]
    gd = [dup(c[3]) for c in var_cells]
    if len(lose) == len(gaps):
        short = (f"FAIL vs GossipSub-style on variable latency: ours is {1000 * min(x[0] for x in lose):.0f}-"
                 f"{1000 * max(x[0] for x in lose):.0f} ms ({100 * min(x[1] for x in lose):.0f}-"
                 f"{100 * max(x[1] for x in lose):.0f} %) slower to 100 % in every model and N")
    elif len(win) == len(gaps):
        short = (f"PASS vs GossipSub-style on variable latency: ours is {1000 * min(-x[0] for x in win):.0f}-"
                 f"{1000 * max(-x[0] for x in win):.0f} ms faster in every model and N")
    else:
        short = (f"MIXED vs GossipSub-style on variable latency: ours faster in {len(win)}, slower in "
                 f"{len(lose)} of {len(gaps)} (model, N) cells")
    out.append(short + f", at {span(od, '.1f')} duplicates per delivery against its "
               f"{span(gd, '.1f')}.")
    mlr = [(t(c[4]) / t(c[2]), c[0], c[1]) for c in var_cells if c[4] and t(c[4]) and t(c[2])]
    if mlr:
        beat = all(x[0] > 1 for x in mlr)
        out.append(f"memberlist/Serf-style: {span([x[0] for x in mlr], '.1f')}x ours' time "
                   f"({'ours wins everywhere' if beat else 'not everywhere slower'}).")
    fc = [c for c in var_cells if c[5] is not None and t(c[5]) and t(c[3])]
    if fc:
        bgap = [(t(c[5]) - t(c[3])) / t(c[3]) for c in fc]
        out.append(f"Before the RTT rule (each peer's first 2 dials eager, blind to latency) the same "
                   f"network gave {100 * min(bgap):+.0f} to {100 * max(bgap):+.0f} % against "
                   f"GossipSub-style.")
    fixed = [c for c in cells if c[1] == "fixed"]
    if fixed:
        fg = [(t(c[2]) - t(c[3])) for c in fixed if t(c[2]) and t(c[3])]
        if fg:
            out.append(f"On fixed 50 ms links (every link ranks alike) ours is {1000 * min(fg):+.0f} to "
                       f"{1000 * max(fg):+.0f} ms against GossipSub-style: the same number of hops, "
                       "a tie.")
    return short, out


def fig_bandwidth(model_rows, bw):
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    labels = [f"N={r['n']:,}" for r in model_rows]
    x = list(range(len(labels)))
    per_link = lambda v, r: v * 2 / r["links"] if v is not None else 0  # noqa: E731
    ax.bar([i - 0.27 for i in x], [per_link(r["hb"], r) for r in model_rows], width=0.27,
           label="heartbeats only")
    ax.bar(x, [r["idle_link"] or 0 for r in model_rows], width=0.27,
           label="+ refreshes now (push only, interval max(30 min, N x 5 s))")
    ax.bar([i + 0.27 for i in x], [per_link(r["before_idle"], r) for r in model_rows], width=0.27,
           label="before: 30-min refreshes spread like updates", color="lightgray")
    now = [r for r in (bw or {}).get("refresh", []) if r.get("label", "").startswith("now")]
    if now:
        ax.axhline(now[0]["bytes_per_link_per_s"], color="red", ls="--", lw=1,
                   label=f"real cores, {now[0]['n']} peers at the refresh rate of any N >= 360")
    ax.axhline(100, color="orange", ls=":", label="target: 100 B/s per link")
    ax.set_xticks(x)
    ax.set_xticklabels(labels)
    ax.set_yscale("log")
    ax.set_ylabel("idle bytes per link per second")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Idle traffic per link (both directions)")
    return save(fig, "sim-bandwidth.png")


def fig_calibration(cal):
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    runs = [r for r in cal["runs"] if r["label"] == "calibrated"]
    unf = [r for r in cal["runs"] if r["label"] != "calibrated"]
    labels, real, sim, simu = [], [], [], []
    for r, u in zip(runs, unf):
        for q, key in (("median", "t100_median"), ("p99", "t100_p99")):
            labels.append(f"N={r['n']} {q}")
            real.append(r["real"][key])
            sim.append(r["t100"][q])
            simu.append(u["t100"][q])
    x = range(len(labels))
    ax.bar([i - 0.27 for i in x], real, width=0.27, label="real processes")
    ax.bar([i for i in x], sim, width=0.27, label="simulator, calibrated")
    ax.bar([i + 0.27 for i in x], simu, width=0.27, label="simulator, measured cost")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels)
    ax.set_ylabel("time to 100 % (s)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("Calibration against benchmarks/convergence.py")
    return save(fig, "sim-calibration.png")


def latency_section(w, lat):
    w("## Variable latency: the same designs when links differ (issue 9)\n")
    w(f"![compare latency]({fig_compare_latency(lat)})\n")
    w("Command: `.venv/bin/python benchmarks/sim.py compare-latency && .venv/bin/python "
      "benchmarks/report.py` (writes `benchmarks/results/sim-compare-latency.json`; not part of "
      "`sim.py all`; 19-24 min on this 2-core machine, most of it the 100 000-peer runs: `--max-n 10000` skips those). "
      "Same graphs and origins as 'compare' (one graph per N, 8 dials per peer; 5, 3 and 1 updates "
      "from random origins at 1 000, 10 000 and 100 000 peers), same per-frame CPU "
      f"({1e6 * lat['cpu']['recv_s']:.0f} us per frame received, {1e6 * lat['cpu']['send_s']:.0f} us per "
      "frame sent, one frame at a time per peer), the same designs as 'compare' (the variants that only "
      "change bytes or never reach 100 % are left out). Network models: every one but 'fixed' makes "
      "latency a property of the link (`peernet.sim.models.PerLink`, `Geographic`): drawn once per "
      "link, keyed by the link and a seed, kept for the run, both ways, the same for every design: "
      + "; ".join(f"**{k}**: {v.removeprefix(k + ': ')}" for k, v in lat["models"].items())
      + ". Log-normal sigma 0.5: the middle 50 % of links are 36-70 ms, 5 % are over 114 ms; the jitter "
      "is drawn per frame and links stay FIFO (as TCP). The geographic model (`models.Geographic`, "
      "5-125 ms, mean ~49 ms) is not in the brief: independent draws per link have no triangle "
      "inequality, distances do (peers near each other share fast paths), so it checks that a rule "
      "which ranks links by latency does not only win on independent draws. p99 is over the runs "
      "(with 5, 3 and 1 runs: the slowest).\n")
    short, sentences = latency_verdict(lat)
    if sentences:
        w("**Verdict (computed from the table):** " + " ".join(sentences) + "\n")
    ns = sorted({r["n"] for r in lat["runs"]})
    models = list(lat["models"])
    w("Time-to-100 % median (s), ours against GossipSub-style, and ours before the RTT rule:\n")
    w("| peers | model | peernet (ours) | GossipSub-style | ours - GossipSub | memberlist/Serf-style | "
      "before: first 2 dials eager | before - GossipSub |")
    w("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in ns:
        for m in models:
            o, g, ml, f = (lat_pick(lat, n, m, d) for d in ("ours", "gossipsub", "memberlist", "dials"))
            if not (o and g):
                continue
            to, tg = o["t100"].get("median"), g["t100"].get("median")
            tf = f["t100"].get("median") if f else None
            w(f"| {n:,} | {m} | {f3(to)} | {f3(tg)} | "
              f"{'-' if to is None or tg is None else f'{1000 * (to - tg):+.0f} ms ({100 * (to - tg) / tg:+.0f} %)'} | "
              f"{f3(ml['t100'].get('median')) if ml else '-'} | {f3(tf)} | "
              f"{'-' if tf is None or tg is None else f'{1000 * (tf - tg):+.0f} ms ({100 * (tf - tg) / tg:+.0f} %)'} |")
    w("")
    val = lat.get("validation")
    if val:
        parts = []
        for v in val:
            tr, tl = v["real"]["t100"], v["lite"]["t100"]
            worst = max(abs(a - b) for a, b in zip(tr, tl))
            dr = sum(v["real"]["dup_per_delivery"]) / len(tr)
            dl = sum(v["lite"]["dup_per_delivery"]) / len(tl)
            parts.append(f"{v['model']}: time-to-100 % differs by at most {1000 * worst:.1f} ms over "
                         f"{v['rounds']} updates, duplicates {dr:.2f} real vs {dl:.2f} lite")
        w(f"The lite model against the real core (`peernet.sim.realnet`, {val[0]['n']} peers, free CPU, "
          "the same per-link latencies; `sim.py compare-latency` runs it first, "
          "`tests/test_sim_latency.py` checks it): " + "; ".join(parts) + " (with jitter the two "
          "draw each frame's jitter from different random streams, so only the links agree).\n")
    why = []
    for n in ns:
        o = lat_pick(lat, n, "uniform", "ours") or lat_pick(lat, n, "lognormal", "ours")
        b = lat_pick(lat, n, o["model"], "dials") if o else None
        e3 = lat_pick(lat, n, o["model"], "eager3") if o else None
        g = lat_pick(lat, n, o["model"], "gossipsub") if o else None
        if o and b and e3 and g and o.get("push_links") and b.get("push_links") and e3.get("push_links"):
            why.append((n, o, b, e3, g))
    if why:
        n, o, b, e3, g = why[-1]
        w("**Why the eager links are picked by round trip.** Past the flood phase (every "
          "link while D(D-1)^(hops+1) <= N: the origin's links at 1 000 peers, one level more at 10 000, "
          "two at 100 000; there the first copy takes the fastest of many paths) a push goes over the "
          f"eager mesh only, ~{b['push_links']['links_per_peer']:.1f} eager links per peer, and the last "
          "peers are reached over that sparse mesh, so a slow link on their few eager paths sets the "
          "arrival time. With each peer's first 2 dials eager (the rule before), picked blind to latency "
          f"(mean {b['push_links']['mean_ms']:.0f} ms on {b['model']} at N = {n:,}), that took "
          f"{f3(b['t100'].get('median'))} s against GossipSub's {f3(g['t100'].get('median'))} s: its "
          "degree-6 mesh gives each late peer more paths and the first copy wins (at 2x our duplicates). "
          f"More eager links close part of the gap at that price: 3 eager dials "
          f"({e3['push_links']['links_per_peer']:.1f} eager links per peer) took "
          f"{f3(e3['t100'].get('median'))} s at {e3['dup_per_delivery']['median']:.2f} duplicates per "
          "delivery. Picking WHICH links are eager does better at no cost: the core marks each peer's "
          "2 outbound links with the lowest measured round trip (docs/protocol.md, 'Eager links'); with "
          "estimates off by a log-normal factor of sigma 0.3 the eager links average "
          f"{o['push_links']['mean_ms']:.0f} ms, {f3(o['t100'].get('median'))} s to 100 % at "
          f"{o['dup_per_delivery']['median']:.2f} duplicates per delivery. GossipSub-style is run as "
          "specified, its mesh blind to latency (v1.1 grafts by score, not RTT); the same trick on its "
          "mesh would speed it up too, at its 5+ duplicates per delivery.\n")
        w("How the simulation models the rule: `lite.Variant(eager_fastest=True, rtt_noise=0.3)` ranks "
          "each peer's 8 dials by the link's latency times a log-normal error (sigma 0.3, drawn once per "
          "peer and link) and marks the 2 lowest (ties: dial order); the core starts from its first 2 "
          "dials to open and moves the marks once every outbound link has a measured round trip, only "
          "for a link below 0.8x the slowest marked one (`GossipCore.link_rtt`); the simulation does "
          "not count the few heartbeats that announce a moved mark. On fixed 50 ms links every link "
          "ranks alike and the rule changes nothing but which random pair is marked. With per-frame "
          "jitter only (no link property) there is nothing to rank.\n")
    for n in ns:
        w(f"All designs at {n:,} peers:\n")
        w("| model | design | runs | coverage (min) | time-to-100 % median | p99 | last arrival (median) | "
          "half reached (median) | max hops (median) | reached by a pull (median) | duplicates / delivery | "
          "bytes / peer / update | push links / peer, mean latency |")
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m in models:
            for d in LAT_ORDER:
                r = lat_pick(lat, n, m, d)
                if not r:
                    continue
                pl = r.get("push_links")
                pls = "-" if not pl else f"{pl['links_per_peer']:.1f}, {pl['mean_ms']:.0f} ms"
                w(f"| {m} | {LAT_SHORT[d]} | {r['runs']} | {100 * r['coverage_min']:.1f} % | "
                  f"{f3(r['t100'].get('median'))} s | {f3(r['t100'].get('p99'))} s | "
                  f"{f3(r['t_last'].get('median'))} s | {f3(r['t50'].get('median'))} s | "
                  f"{r['max_hops']['median']:.0f} | "
                  f"{r['via_sync']['median']:.0f} ({100 * r['via_sync']['median'] / n:.1f} %) | "
                  f"{r['dup_per_delivery']['median']:.2f} | "
                  f"{fb(r['bytes_per_peer']['median'])} | "
                  f"{pls} |")
        w("")
    w("'reached by a pull': peers whose first copy came from a digest ping's ask (or, for GossipSub, "
      "counted as push: IWANT answers are pushes here) rather than from a push. "
      "Designs: as in 'compare' (peernet, one more flood hop, peernet before the eager mesh, "
      "memberlist/Serf-style with every pair of members its own link latency, GossipSub-style), "
      "ours before the RTT rule (first 2 dials eager), and two rows that are not the core: '3 eager "
      "dials' (diagnostic: what more eager links buy) and ours with exact RTTs (the best the rule "
      "can do). 'push links' = the links a design pushes on past the flood "
      "phase: the eager mesh for ours and its variants, every overlay link for the others (GossipSub's "
      "mesh is 6 of them, chosen blind to latency). Left out: push fan-out 3 alone (never reaches 100 %), "
      "push + 30 s anti-entropy (tens of seconds, set by the heartbeat, not by latency), and 'before "
      "pings named changes' (the same push, so the same times; only its bytes differ).\n")


def _real_frame_cost(cal):
    """The real runs' CPU per frame (peers' CPU from POST to last delivery /
    frames), from the convergence files the calibration was compared with."""
    runs = []
    for path in {r["real_file"] for r in cal["runs"]}:
        with open(os.path.join(ROOT, path)) as f:
            runs.append(json.load(f)["peernet"])
    return " and ".join(
        f"{1000 * p['peers_cpu_s_per_round_propagation'] / p['messages_per_round']:.2f} ms "
        f"at {p['n']} peers" for p in sorted(runs, key=lambda p: p["n"]))


COSTS_DOC = os.path.join(ROOT, "docs", "costs.md")


def costs_page():
    """docs/costs.md with costs.py's stored table (benchmarks/results/costs.md)
    as its measured part, rewritten when that changed it; returns the text.
    Done on every render, so a rerun of costs.py followed by this script (or
    --real) never leaves the page quoting an older run."""
    with open(COSTS_DOC) as f:
        doc = f.read()
    measured_path = os.path.join(RESULTS, "costs.md")
    if not os.path.exists(measured_path):
        return doc
    with open(measured_path) as f:
        page = splice_costs(f.read(), doc)
    if page != doc:
        with open(COSTS_DOC, "w") as f:
            f.write(page)
    return page


def run_real():
    """Rerun the real-process benchmarks the report quotes, in the order the
    report reads them; any failure stops here (check=True), before a page is
    written from a mix of old and new figures."""
    bench = os.path.join(ROOT, "benchmarks")
    runs = [
        ["convergence.py"],
        ["convergence.py", "--peers", "100", "--rounds", "10",
         "--out", os.path.join(RESULTS, "convergence-100")],
        ["costs.py"],
    ]
    for args in runs:
        subprocess.run([sys.executable, os.path.join(bench, args[0])] + args[1:], check=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", action="store_true",
                   help="first rerun convergence.py (30 and 100 peers) and costs.py (~10 min)")
    p.add_argument("--run", action="store_true", help="run benchmarks/sim.py all first")
    p.add_argument("--max-n", type=int, default=100000)
    args = p.parse_args(argv)
    if args.real:
        run_real()
    if args.run:
        subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "sim.py"), "all",
                        "--max-n", str(args.max_n)], check=True)
    os.makedirs(IMG, exist_ok=True)
    from peernet.sim.lite import frame_sizes
    sizes = frame_sizes()
    cal, val, scale, ttl, cmp_, bw, lat = (load(x) for x in (
        "calibration", "validation", "scale", "ttl", "compare", "bandwidth", "compare-latency"))
    L = []
    w = L.append
    w("# Benchmarks: simulated scale, calibrated against real processes\n")
    w("Generated by `benchmarks/report.py` from `benchmarks/results/`. Regenerate everything "
      "(the real-process runs, the simulations, this page, the plots) with one command, which "
      "first installs what it needs on a fresh machine (the `bench` extra: matplotlib, numpy, "
      "py-spy; the Debian package serf):\n")
    w("```sh\n./scripts/bench.sh                                   # ~20 min on this 2-core machine\n"
      ".venv/bin/python benchmarks/report.py --real --run   # the same, once installed\n"
      ".venv/bin/python benchmarks/report.py --run          # the simulations only, ~8-10 min\n"
      ".venv/bin/python benchmarks/report.py                # only rewrite from the stored JSON\n```\n")
    w("Single experiments: `.venv/bin/python benchmarks/sim.py calibration|validation|scale|ttl|"
      "compare|bandwidth [--max-n 10000]` (each writes `benchmarks/results/sim-<name>.json`). "
      "The real-process figures come from `benchmarks/convergence.py` "
      "(`benchmarks/results/convergence*.json`, see benchmarks/README.md) and "
      "`benchmarks/costs.py` (`benchmarks/results/costs.*`, copied to the top of docs/costs.md); "
      "`--real` reruns both.\n")

    # -- headline ------------------------------------------------------------------
    model_rows = []
    before = {}  # N -> bytes per peer per update under the rule before pings named changes
    if cmp_:
        for r in cmp_["runs"]:
            if r["kind"] == "peernet" and r.get("recent") is False:
                before[r["n"]] = r["bytes_per_peer"]["median"]
    hb = 16 * sizes["heartbeat"] / HEARTBEAT_INTERVAL
    # Idle traffic now: heartbeats + refreshes (push only, at the interval an
    # owner picks at N) + lapsed-copy restores: sim-bandwidth.json's lite rows.
    idle_now = {r["n"]: r["idle"] for r in (bw or {}).get("lite_refresh", [])}
    if scale:
        w("## Headline (lite model, 50 ms links, links as the real peers make them: 8 outbound, ~16 per peer)\n")
        w("| peers | runs | time-to-100 % median | p99 | max push hops | duplicates / delivery | "
          "bytes sent / peer / update | idle B/s per peer: heartbeats | idle B/s per peer incl. refreshes | "
          "idle B/s per link incl. refreshes |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in scale["runs"]:
            n = r["n"]
            per_update = r["bytes_per_peer_per_update"]["median"]
            b = before.get(n)
            im = idle_now.get(n)
            model_rows.append({
                "n": n, "hb": hb, "per_update": per_update, "before_per_update": b,
                "links": im["links_per_peer"] if im else 16,
                "idle": im["per_peer"] if im else None, "idle_link": im["per_link"] if im else None,
                "model": im,
                # before this change: every 30-min refresh spread like an update
                "before_idle": hb + n / RECORD_REFRESH_INTERVAL * per_update})
            w(f"| {n:,} | {r['runs']} | {f3(r['t100']['median'])} s | {f3(r['t100']['p99'])} s | "
              f"{r['max_hops']['max']:.0f} | {r['dup_per_delivery']['median']:.2f} | {fb(per_update)} | "
              f"{hb:.0f} | {fb(im['per_peer']) + '/s' if im else '-'} | "
              f"{fb(im['per_link']) + '/s' if im else '-'} |")
        w("")
        if any(m["before_per_update"] for m in model_rows):
            w("Before the core change (digest pings without `recent`, every mismatch a bucket sync; "
              "same lite model with `Variant(recent=False)`, compare experiment): bytes / peer / update "
              + ", ".join(f"{fb(m['before_per_update'])} ({m['n']:,})" for m in model_rows if m["before_per_update"])
              + ". Time-to-100 % and duplicates are unchanged by the change.\n")
        w("Idle traffic in this table is modelled, not simulated for days (`.venv/bin/python "
          "benchmarks/sim.py bandwidth`, `peernet.sim.experiments.idle_model`): heartbeats = ~16 "
          f"links x {sizes['heartbeat']} B / 30 s; refreshes = N / interval(N) per second, interval = "
          "max(30 min, N x 5 s), x the bytes one refresh costs each peer in the lite model (a refresh "
          "changes no digest, so it is a push and nothing else: "
          + "/".join(fb(x["bytes_per_peer_per_refresh"]["median"]) for x in (bw or {}).get("lite_refresh", []))
          + " per peer at " + "/".join(f"{x['n']:,}" for x in (bw or {}).get("lite_refresh", []))
          + " peers); plus the bucket "
          "syncs that restore a copy lapsed at a holder the push missed three times in a row. A link "
          "carries both ends' traffic (per link = 2 x per peer / links per peer). Every peer sees one "
          "refresh per 5 s at any N from 360 up, so overlapping spreads do not grow with N either; "
          "real cores at that rate: see 'Bandwidth'.\n")

    # -- claims --------------------------------------------------------------------
    w("## The seed's claims and the issue's targets next to the measurements\n")
    w("| claim / target | measured | verdict |")
    w("|---|---|---|")
    if ttl:
        p32 = next(r for r in ttl["push_only"] if r["ttl"] == 32)
        p8 = next((r for r in ttl["push_only"] if r["ttl"] == 8), None)
        w(f"| \"TTL 32 reaches ~59 000 peers\" | push alone at TTL 32 reaches {p32['reached']:,} of "
          f"{ttl['n_push']:,} ({100 * p32['coverage']:.1f} %) using at most {p32['max_hops']} hops"
          + (f"; TTL 8 reaches {p8['reached']:,}" if p8 else "") +
          "; peernet's push (flood phase, then the eager mesh) reaches 100 % | UNDERSTATED: "
          "59 000 is 3^10 = 59 049, a fan-out-3 tree; TTL above ~12 changes nothing, a random "
          "fan-out-3 push stalls by its randomness, not by TTL |")
    if scale:
        big = scale["runs"][-1]
        w(f"| \"50-250 s to full convergence\" | {big['n']:,} peers: median "
          f"{f3(big['t100']['median'])} s, p99 {f3(big['t100']['p99'])} s | "
          f"PASS, ~{50 / big['t100']['p99']:.0f}x faster than the seed's best case |")
        ns = [r["n"] for r in scale["runs"]]
        hops = [r["max_hops"]["median"] for r in scale["runs"]]
        decades = max(1e-9, math.log10(ns[-1] / ns[0]))
        per_hops = (hops[-1] - hops[0]) / decades
        per_s = (scale["runs"][-1]["t100"]["median"] - scale["runs"][0]["t100"]["median"]) / decades
        w(f"| \"gossip O(log n)\" | max push hops {', '.join(f'{h:.0f}' for h in hops)} and "
          f"t100 {', '.join(f3(r['t100']['median']) for r in scale['runs'])} s at N = "
          f"{', '.join(f'{x:,}' for x in ns)} | PASS: each 10x in N adds ~{per_hops:.1f} hops / "
          f"~{per_s:.2f} s |")
        w(f"| issue: 100 % of 100 000 peers within 5 s at 50 ms links | "
          f"{'p99 ' + f3(big['t100']['p99']) + ' s' if big['n'] == 100000 else 'not run'} | "
          f"{'PASS' if big['n'] == 100000 and big['t100']['p99'] < 5 else '-'} |")
        dmax = max(r["dup_per_delivery"]["max"] for r in scale["runs"])
        real_d = []
        for name in ("convergence", "convergence-100"):
            try:
                real_d.append(E.load_real(os.path.join(RESULTS, name + ".json")))
            except (OSError, KeyError, ValueError):
                pass
        worst = max([dmax] + [r["dup_per_delivery"] for r in real_d])
        w(f"| issue: at most 3 duplicates per delivery | at most {dmax:.2f} (50 ms links); "
          + " / ".join(f"{r['dup_per_delivery']:.2f}" for r in real_d) + " at "
          + " / ".join(str(r["n"]) for r in real_d) + " real loopback peers | "
          f"{'PASS' if worst <= 3 else 'FAIL'} |")
    if model_rows and all(m["idle_link"] is not None for m in model_rows):
        hb_link = 2 * sizes["heartbeat"] / HEARTBEAT_INTERVAL
        worst = max(model_rows, key=lambda m: m["idle_link"])
        now = [r for r in (bw or {}).get("refresh", []) if r.get("label", "").startswith("now")]
        extra = ""
        if now:
            extra = (f"; real cores ({now[0]['n']} peers, the refresh rate of any N >= 360, "
                     f"{now[0]['duration_s']:.0f} s): {now[0]['bytes_per_link_per_s']:.0f} B/s per link")
        ok = worst["idle_link"] < 100 and all(r["bytes_per_link_per_s"] < 100 for r in now)
        w(f"| issue: idle traffic under 100 B/s per link | heartbeats alone {hb_link:.1f} B/s per link; "
          f"with refreshes (push only, every max(30 min, N x 5 s)): "
          + ", ".join(f"{m['idle_link']:.0f} B/s ({m['n']:,} peers)" for m in model_rows)
          + f" per link{extra}; before: "
          + ", ".join(f"{fb(m['before_idle'] * 2 / m['links'])}/s" for m in model_rows)
          + f" | {'PASS' if ok else 'FAIL'} at every N; the price is a crashed peer's record "
          "lingering one lifetime: "
          + ", ".join(f"{m['model']['lifetime_s'] / 3600:.1f} h" if m['model']['lifetime_s'] < 2 * 86400
                      else f"{m['model']['lifetime_s'] / 86400:.1f} days" for m in model_rows)
          + " (docs/protocol.md, 'Refreshes and idle traffic') |")
    if cmp_:
        rows = {r["kind"] + str(r["variant"]): r for r in cmp_["runs"] if r["n"] == max(x["n"] for x in cmp_["runs"])}
        all_n = sorted({r["n"] for r in cmp_["runs"]})

        def pick(n, test):
            return next((r for r in cmp_["runs"] if r["n"] == n and test(r)), None)

        parts, verdicts = [], []
        for n in all_n:
            ours = pick(n, lambda r: r.get("ours"))
            ml = pick(n, lambda r: r["kind"] == "memberlist")
            gs = pick(n, lambda r: r["kind"] == "gossipsub")
            if not (ours and ml and gs):
                continue
            t, tm, tg = (x["t100"].get("median") for x in (ours, ml, gs))
            parts.append(f"N = {n:,}: ours {f3(t)} s ({ours['dup_per_delivery']['median']:.1f} dup), "
                         f"memberlist-style {f3(tm)} s, GossipSub-style {f3(tg)} s "
                         f"({gs['dup_per_delivery']['median']:.1f} dup)")
            verdicts.append((n, t < tm, t < tg, t - tg))
        more = pick(all_n[-1], lambda r: r["kind"] == "peernet" and r.get("flood_factor", 1) > 1)
        if verdicts:
            beat_ml = all(v[1] for v in verdicts)
            beat_gs = [v for v in verdicts if v[2]]
            worst_gap = max(v[3] for v in verdicts)
            verdict = ("PASS vs memberlist-style" if beat_ml else "FAIL vs memberlist-style") + "; "
            if len(beat_gs) == len(verdicts):
                verdict += "PASS vs GossipSub-style"
            else:
                verdict += (f"vs GossipSub-style: same number of 50 ms hops at every N, ours "
                            f"{1000 * worst_gap:+.0f} ms at worst (per-frame CPU of the flood "
                            f"phase), at half its duplicates: a tie, not a win")
                if more:
                    verdict += (f". One more flood hop beats it ({f3(more['t100'].get('median'))} s "
                                f"at N = {more['n']:,}) but costs "
                                f"{more['dup_per_delivery']['median']:.1f} duplicates per delivery, "
                                f"over the 3 the issue allows")
            w(f"| issue: our time-to-100 % beats memberlist/Serf-style and GossipSub-style | "
              f"{'; '.join(parts)} | {verdict} |")
        push = next(r for r in rows.values() if r["kind"] == "push" and "alone" in r["variant"])
        if lat:
            short, _ = latency_verdict(lat)
            if short:
                w("| issue: the same, on variable latency (each link's latency fixed for the run: uniform "
                  "10-90 ms, log-normal median 50 ms sigma 0.5, + per-frame jitter, geographic) | see "
                  "'Variable latency' "
                  f"| {short}; details there |")
        w(f"| protocol.md: push fan-out 3 alone reaches about 94 % | {100 * push['coverage_median']:.1f} % "
          f"(N = {push['n']:,}) | close: ~96 % with 16 links per peer |")
    costs_path = os.path.join(RESULTS, "costs.json")
    if os.path.exists(costs_path):
        with open(costs_path) as f:
            costs = json.load(f)
        cpu = costs["summary"]["cpu"]
        verify = costs.get("verify_us", {}).get("libsodium")
        checks = costs.get("checks_us") or {}
        floor = ""
        if verify:
            floor_us = (cpu["relay3"] + verify + checks.get("decode", 0.0)
                        + checks.get("record_checks", 0.0))
            floor = (f"; floor: a bare relay to 3 + the one signature check ({verify:.0f} us) + "
                     f"decode and record checks = {floor_us / cpu['echo']:.2f}x the echo")
        verdict = "PASS" if cpu["ratio_vs_echo"] <= 2 else "FAIL"
        pinned = costs["summary"].get("cpu_pinned")
        if pinned:
            verdict += (f" (pinned: {pinned['peer']:.0f} us vs echo {pinned['echo']:.0f} us, "
                        f"{pinned['ratio_vs_echo']:.1f}x, "
                        + ("PASS" if pinned["ratio_vs_echo"] <= 2 else "FAIL") + ")")
        w(f"| issue: CPU per relayed message at most 2x a bare Autobahn echo of the same frame | "
          f"{cpu['peer']:.0f} us vs echo {cpu['echo']:.0f} us in the same run, kernel's placement "
          f"({cpu['ratio_vs_echo']:.1f}x; {cpu['ratio_vs_relay3']:.1f}x a bare relay to 3 links) | "
          f"{verdict}{floor}; the ratio moves with the host's load and with placement (every run of "
          f"two days, both placements, two host states, and why the floor sets it: docs/costs.md, "
          f"'Fourth pass' to 'Sixth pass'); "
          f"one Ed25519 signature per PEER_UPDATE since protocol version 2, "
          f"the rest is CPython per-message work (see 'Real-process costs') |")
    w("")

    # -- figures -------------------------------------------------------------------
    if scale:
        w("## Coverage over time and time-to-100 %\n")
        w(f"![coverage]({fig_coverage(scale)})\n")
        w(f"![t100]({fig_t100(scale)})\n")
        w("Command: `.venv/bin/python benchmarks/sim.py scale && .venv/bin/python benchmarks/report.py`. "
          "Runs: 1 000 peers 4 graphs x 5 origins, 10 000 peers 3 x 4, 100 000 peers 2 x 3; each "
          "peer also spends 0.17 ms per frame received + 0.11 ms per frame sent on its own CPU "
          "(the cost per frame measured in the real 100-peer run). Time is quantised by the "
          "fixed 50 ms link delay.\n")
        w("| peers | t50 median | t100 median | t100 p99 | t100 max | duplicates / delivery (median, max) | "
          "peers reached by a pull: digest-ping ask or sync (median) |")
        w("|---:|---:|---:|---:|---:|---:|---:|")
        for r in scale["runs"]:
            vs = sorted(x["via_sync"] for x in r["rounds"])
            w(f"| {r['n']:,} | {f3(r['t50']['median'])} s | {f3(r['t100']['median'])} s | "
              f"{f3(r['t100']['p99'])} s | {f3(r['t100']['max'])} s | "
              f"{r['dup_per_delivery']['median']:.2f}, {r['dup_per_delivery']['max']:.2f} | "
              f"{vs[len(vs) // 2]:,} ({100 * vs[len(vs) // 2] / r['n']:.1f} %) |")
        w("")
        w("Bytes one update costs each peer, by frame type (median run):\n")
        w("| peers | push | digest pings / heartbeats | record asks (PEER_REQUEST peer) | their answers | "
          "bucket sync requests | bucket sync answers | total |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in scale["runs"]:
            mr = sorted(r["rounds"], key=lambda x: x["bytes_per_peer"])[len(r["rounds"]) // 2]
            k = mr["bytes_by_kind"]
            w(f"| {r['n']:,} | {fb(k.get('push'))} | {fb(k.get('heartbeat'))} | {fb(k.get('ask_req'))} | "
              f"{fb(k.get('ask_resp'))} | {fb(k.get('sync_req'))} | {fb(k.get('sync_resp'))} | "
              f"{fb(mr['bytes_per_peer'])} |")
        w("")
        big = scale["runs"][-1]
        mr = sorted(big["rounds"], key=lambda x: x["bytes_per_peer"])[len(big["rounds"]) // 2]
        share = (mr["bytes_by_kind"].get("sync_req", 0) + mr["bytes_by_kind"].get("sync_resp", 0)) / mr["bytes_per_peer"]
        w("The bucket syncs left are those a regular 30 s heartbeat starts when it falls on a link "
          "whose ends differ during the spread (regular heartbeats carry no `recent`); at "
          f"{big['n']:,} peers one such sync moves a whole bucket (~{big['n'] / 256:.0f} records, "
          f"~{fb(big['n'] / 256 * sizes['resp_per_record'])}) each way, so these few syncs are "
          f"{100 * share:.0f} % of the bytes. The lite model gives each link a random heartbeat phase, "
          "as a quiet network has; under a steady stream of changes the digest pings restart every link's "
          "30 s timer and regular heartbeats hardly ever fire.\n")
    if ttl:
        w("## Hops and TTL\n")
        w(f"![ttl]({fig_ttl(ttl)})\n")
        w("Command: `.venv/bin/python benchmarks/sim.py ttl && .venv/bin/python benchmarks/report.py`.\n")
        w("| TTL | push alone: peers reached (of %s) | max hops used |" % f"{ttl['n_push']:,}")
        w("|---:|---:|---:|")
        for r in ttl["push_only"]:
            w(f"| {r['ttl']} | {r['reached']:,} ({100 * r['coverage']:.1f} %) | {r['max_hops']} |")
        w("")
        w(f"Full protocol (flood phase + eager mesh + digest pings + anti-entropy) at "
          f"{ttl['n_full']:,} peers: the TTL only changes how far the push goes; the pull reaches "
          "everyone anyway.\n")
        w("| TTL | coverage | time-to-100 % | duplicates / delivery | bytes / peer / update |")
        w("|---:|---:|---:|---:|---:|")
        for r in ttl["peernet"]:
            w(f"| {r['ttl']} | {100 * r['coverage']:.1f} % | {f3(r['t100'])} s | {r['dup_per_delivery']:.2f} | "
              f"{fb(r['bytes_per_peer'])} |")
        w("")
    if cmp_:
        w("## Push alone vs push + anti-entropy, and the other designs on the same model\n")
        for n in sorted({r["n"] for r in cmp_["runs"]}):
            img = fig_compare(cmp_, n)
            if img and n >= 10000:
                w(f"![compare {n}]({img})\n")
        w("Command: `.venv/bin/python benchmarks/sim.py compare && .venv/bin/python benchmarks/report.py`. "
          "Same graph (for the overlay designs), same 50 ms links, same per-frame CPU. memberlist/Serf-style: "
          "every 200 ms a holder sends the message to 3 random members of the whole membership "
          "(memberlist's gossip), each holder transmits it RetransmitMult 4 x ceil(log10(N+1)) times, "
          "no pull (Serf's 30 s push-pull syncs membership, not user events). GossipSub-style: flood "
          "publish to all links, eager forwarding to a symmetric mesh of degree 6 built on the same "
          "overlay links, every 1 s heartbeat IHAVE to 6 non-mesh links for messages of the last 3 "
          "heartbeats, IWANT pulls them. 'push + 30 s anti-entropy' ran 70 s of simulated time. "
          "peernet's push (docs/protocol.md, 'Push'): every link while D(D-1)^(hops+1) <= N, then "
          "the eager mesh (each peer's first 2 outbound links, both ends); 'one more flood hop' "
          "floods while D(D-1)^(hops+1) <= 15 N. With fixed 50 ms links time-to-100 % moves in "
          "steps of one hop, so designs that need the same number of hops differ only by their "
          "per-frame CPU (a few ms).\n")
        w("| peers | design | runs | coverage (min) | time-to-100 % median | last arrival (median) | "
          "duplicates / delivery | bytes / peer / update |")
        w("|---:|---|---:|---:|---:|---:|---:|---:|")
        for r in cmp_["runs"]:
            w(f"| {r['n']:,} | {r['variant']} | {r['runs']} | {100 * r['coverage_min']:.1f} % | "
              f"{f3(r['t100'].get('median'))} s | {f3(r['t_last'].get('median'))} s | "
              f"{r['dup_per_delivery']['median']:.2f} | {fb(r['bytes_per_peer']['median'])} |")
        w("")
    if lat:
        latency_section(w, lat)
    w("## Bandwidth: idle, with record refreshes, and under churn\n")
    if model_rows and any(m["model"] for m in model_rows):
        w(f"![bandwidth]({fig_bandwidth(model_rows, bw)})\n")
        w("Idle traffic with every peer refreshing its record (lite model; `.venv/bin/python "
          "benchmarks/sim.py bandwidth`). A refresh (same version, newer `issued_at`) changes no "
          "digest, so it spreads by push alone; an owner refreshes every max(30 min, N x 5 s) and "
          "declares 4 intervals as its record's lifetime (docs/protocol.md, 'Refreshes and idle "
          "traffic'). 'Before' = 30-min refreshes each costing what an update costs (digest pings, "
          "asks), one spread at a time, as the previous report modelled it:\n")
        w("| peers | refresh interval | lifetime (crashed peer lingers) | refreshes / s seen by each peer | "
          "bytes / peer / refresh | push reaches | lapse chance (3 misses in a row) | heartbeats B/s per link | "
          "refreshes B/s per link | restores B/s per link | idle B/s per link now | before |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        lite_rows = {r["n"]: r for r in bw["lite_refresh"]}
        for m in model_rows:
            im, lr = m["model"], lite_rows.get(m["n"])
            if not im:
                continue
            life = im["lifetime_s"]
            life_s = f"{life / 3600:.1f} h" if life < 2 * 86400 else f"{life / 86400:.1f} days"
            iv = im["refresh_interval_s"]
            iv_s = f"{iv / 3600:.1f} h" if iv < 2 * 86400 else f"{iv / 86400:.1f} days"
            w(f"| {m['n']:,} | {iv_s} | {life_s} | {im['refreshes_per_s']:.2f} | "
              f"{fb(lr['bytes_per_peer_per_refresh']['median'])} | "
              f"{100 * lr['push_coverage']['median']:.1f} % | {lr['miss_run']:.1e} | "
              f"{im['heartbeats_per_link']:.1f} | {im['refreshes_per_link']:.1f} | "
              f"{im['restores_per_link']:.2f} | {im['per_link']:.0f} B/s | "
              f"{fb(m['before_idle'] * 2 / m['links'])}/s |")
        w("")
    if bw and bw.get("refresh"):
        old = (bw.get("before_identity_digests") or {}).get("refresh") or []
        w("Real cores under refresh load (`.venv/bin/python benchmarks/sim.py bandwidth`): converged "
          "tables, 50 ms links, random heartbeat phases, records refreshed as `GossipCore.tick` does "
          "(same version, new `issued_at` and lifetime, PEER_ANNOUNCEMENT) at Poisson times. Every "
          "peer sees every refresh, so the load on one peer is the network-wide rate N / interval(N): "
          "0.2 per second at every N from 360 peers up (first row). The other rows run the rates the "
          "old fixed 30-min interval gave 10 000 and 100 000 peers, to show what identity digests "
          "alone do to overlapping refreshes. Bytes include heartbeats. 'Latest copy' = share of "
          "(holder, refreshed record) pairs holding the owner's newest refresh at the end (push alone; "
          "the rest hold an older copy of the same version).\n")
        w("| run | peers | refreshes / s | B/s per peer | B/s per link | before: old core, same run at "
          "its 30-min rate (B/s per link) | "
          "pings (`recent`) B/s per peer | bucket syncs answered / peer / s | latest copy | penalties |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for i, r in enumerate(bw["refresh"]):
            k = r["bytes_by_kind_per_peer_per_s"]
            o = old[i] if i < len(old) and old[i]["n"] == r["n"] else None
            w(f"| {r.get('label', '-')} | {r['n']:,} | {r['refreshes'] / r['duration_s']:.2f} "
              f"({r['refreshes']} in {r['duration_s']:.0f} s; rate {r['refresh_rate_per_s']:.2f}) | "
              f"{fb(r['bytes_per_peer_per_s'])}/s | {fb(r['bytes_per_link_per_s'])}/s | "
              f"{fb(o['bytes_per_link_per_s']) + '/s (' + format(o['refresh_rate_per_s'], '.2f') + ' / s)' if o else '-'} | "
              f"{fb(k.get('HEARTBEAT recent', 0))}/s | {r['sync_answers_per_peer_per_s']:.4f} | "
              f"{100 * r.get('latest_copy_share', float('nan')):.1f} % | {r['penalties']} |")
        w("")
        hi = bw["refresh"][-1]
        kinds = ", ".join(f"{k} {fb(v)}/s" for k, v in sorted(
            hi["bytes_by_kind_per_peer_per_s"].items(), key=lambda kv: -kv[1]))
        w(f"By frame kind at {hi['refresh_rate_per_s']:.1f} refreshes / s ({hi['n']} peers, measured): "
          f"{kinds}.\n")
        w("What the runs show: refreshes now cost their pushes and nothing else, at any rate: no "
          "digest pings, no record asks, no bucket syncs (before, at the 100 000-peer rate, pings "
          "and whole-bucket syncs were more than half the bytes). What is left grows with the rate "
          "of refreshes each peer sees, which is why the interval grows with N: at the rate every "
          "N >= 360 now produces, real cores measure well under the 100 B/s per link target.\n")

    if bw:
        w("Heartbeats and churn, real cores: 500 broadcasting + 50 silent peers, 50 ms links, 120 s "
          "of simulated time after the tables converged. Churn: joins at the same rate as departures "
          "(half graceful leaves with a tombstone, half crashes); neighbours redial after 1-2 s. "
          "Records are not refreshed within these 120 s, so the idle row is heartbeats only.\n")
        w("| scenario | events (join/leave/crash) | bytes / peer / s | bytes / link / s | penalties |")
        w("|---|---|---:|---:|---:|")
        for r in bw["real"]:
            name = "idle" if not r["churn_per_hour"] else f"churn {100 * r['churn_per_hour']:.0f} % of peers per hour"
            e = r["events"]
            w(f"| {name} | {e['join']}/{e['leave']}/{e['crash']} | {r['bytes_per_peer_per_s']:.0f} | "
              f"{r['bytes_per_link_per_s']:.0f} | {r['penalties']} |")
        w("")
        w("Churn now costs less (before the change: 5205 / 14402 B/s per peer at 100 % / 300 % per "
          "hour, 651 / 1800 B/s per link): the newcomer's and the leavers' records spread by named "
          "pulls. What is left is mostly joins, which the change did not touch: a newcomer's HELLO "
          "digest differs on every one of its ~8 links, it syncs with all of them at once and "
          "receives the whole table from each (N x ~400 B, 8 times).\n")

    # -- calibration -----------------------------------------------------------------
    if cal:
        w("## Calibration against the real-process benchmark\n")
        w(f"![calibration]({fig_calibration(cal)})\n")
        w("Command: `.venv/bin/python benchmarks/sim.py calibration`. The simulator runs the real "
          "GossipCore, same shape as the real run: N converged peers each dialling 8, publishers "
          "round-robin, 0.5 s between rounds. Model of the 2-core machine: 0.1 ms loopback links; "
          "every frame costs its peer CPU (0.17 ms per frame received + 0.11 ms per frame sent at "
          "scale 1, the cost measured in the first real runs), one frame at a time per peer, all "
          "peers share 2 CPUs; fixed delays for the HTTP POST before the first frame and for the "
          f"SSE event to the client. 'calibrated' scales the per-frame cost by {E.CALIBRATED_SCALE:g} "
          "with 12 ms / 4 ms delays, fitted by hand to both runs: the model runs a peer as soon as a "
          "core is free, while the kernel wakes 100 processes on 2 cores with a latency of its own, "
          "which the fit absorbs (the real runs' own per-frame cost, peers' CPU from POST to last "
          f"delivery / frames, is {_real_frame_cost(cal)}: one factor cannot fit both sizes).\n")
        w("| N | model | t100 median (real) | t100 p99 (real) | duplicates / delivery (real) | frames / round (real) | "
          "margin t100 median / p99 / duplicates |")
        w("|---:|---|---:|---:|---:|---:|---:|")
        for r in cal["runs"]:
            real = r["real"]
            m = lambda a, b: f"{100 * (a - b) / b:+.0f} %"  # noqa: E731
            w(f"| {r['n']} | {r['label']} | {f3(r['t100']['median'])} s ({f3(real['t100_median'])}) | "
              f"{f3(r['t100']['p99'])} s ({f3(real['t100_p99'])}) | {r['dup_per_delivery']:.2f} "
              f"({real['dup_per_delivery']:.2f}) | {r['frames_per_round']:.0f} ({real['frames_per_round']:.0f}) | "
              f"{m(r['t100']['median'], real['t100_median'])} / {m(r['t100']['p99'], real['t100_p99'])} / "
              f"{m(r['dup_per_delivery'], real['dup_per_delivery'])} |")
        w("")
        def margin(label, key, q=None):
            out = []
            for r in cal["runs"]:
                if r["label"] != label:
                    continue
                real = r["real"]
                if key == "t100":
                    a_, b_ = r["t100"][q], real["t100_" + q]
                else:
                    a_, b_ = r[key], real[key]
                out.append(100 * (a_ - b_) / b_)
            return f"{min(out):+.0f} % to {max(out):+.0f} %" if out else "-"
        w(f"Stated margin (simulator vs real, N = 30 and 100): duplicates per delivery "
          f"{margin('calibrated', 'dup_per_delivery')} and frames per round "
          f"{margin('calibrated', 'frames_per_round')} with no fitting; time-to-100 % median "
          f"{margin('calibrated', 't100', 'median')} and p99 {margin('calibrated', 't100', 'p99')} "
          f"after calibration ({margin('measured cost (unfitted)', 't100', 'median')} median with the "
          "unfitted cost). Not reproduced: the real per-delivery median is larger than the "
          "simulated one, because the real figure also carries the SSE stream of every event to "
          "one client thread reading N sockets, which the model holds to a fixed 4 ms.\n")

    if val:
        w("## The lite model against the real core\n")
        w("Command: `.venv/bin/python benchmarks/sim.py validation`. Same graph (taken from the "
          "real-core network), same latency model and the same origins; the random choices (fan-out "
          "targets) differ, so the comparison is of distributions.\n")
        w("| N | latency | rounds | t100 median real / lite | t50 median real / lite | duplicates real / lite | "
          "bytes / peer / update real / lite | peers reached by sync real / lite |")
        w("|---:|---|---:|---:|---:|---:|---:|---:|")
        for v in val["runs"]:
            R, Li = v["real"], v["lite"]
            w(f"| {v['n']:,} | {v['latency']} | {v['rounds']} | {f3(R['t100']['median'])} / {f3(Li['t100']['median'])} s | "
              f"{f3(R['t50']['median'])} / {f3(Li['t50']['median'])} s | "
              f"{R['dup_per_delivery']['median']:.2f} / {Li['dup_per_delivery']['median']:.2f} | "
              f"{fb(R['bytes_per_peer']['median'])} / {fb(Li['bytes_per_peer']['median'])} | "
              f"{R['via_sync']['median']:.0f} / {Li['via_sync']['median']:.0f} |")
        w("")
        def rng_pct(key):
            ds = [v["diff_pct"][key] for v in val["runs"] if v["diff_pct"].get(key) is not None]
            return f"{min(ds):+.1f} % to {max(ds):+.1f} %"
        w(f"Stated margin (lite vs real, medians): time-to-100 % equal with fixed links (to the 50 ms "
          f"quantum) and within one link delay with log-normal links (t100 {rng_pct('t100')}, t50 "
          f"{rng_pct('t50')}); duplicates per "
          f"delivery {rng_pct('dup_per_delivery')}; bytes per peer per update {rng_pct('bytes_per_peer')}. "
          "The lite model's frame sizes come from a record with a public address and one repo name "
          f"(push {sizes['push']} B); the validation network's records are ~13 B shorter, which is "
          "~2 % of the bytes. The real network gets a fresh random heartbeat phase per link before "
          "each round (`SimNetwork.stagger_heartbeats`), as the lite model has per spread; otherwise "
          "every link's 30 s timer was last restarted by the previous round's digest pings and no "
          "regular heartbeat (nor the bucket sync it may start) would fall within a round.\n")

    # -- the simulator -------------------------------------------------------------------
    w("## The simulator\n")
    w("Code: `peernet/sim/` (tests: `tests/test_sim.py`).\n")
    w("- `realnet.SimNetwork`: discrete-event on `peernet.gossip.memnet.HeapClock`, driving the real "
      "`GossipCore` (real codec, real Ed25519 signatures and verification, real table and rules). "
      "Latency models per frame (`models.Fixed`, `Uniform`, `LogNormal`; links stay FIFO like TCP), "
      "frame loss (never the HELLO), a CPU model (per-frame cost, one frame at a time per peer, "
      "optional shared CPU pool), churn (`join`, `leave` = tombstone then close, `crash`, `repair` = "
      "the connection manager's redial), `refresh` (what `tick` does when a record is due for its refresh), "
      "silent peers, per-kind byte counts (`count_types`). Deterministic per seed: seeded Ed25519 keys, "
      "seeded `random.Random` streams, and the core's message ids drawn from a seeded stream "
      "(`GossipCore(random_bytes=...)`); `trace_digest()` hashes every delivered frame.")
    w("- `lite.simulate`: the lite node model for 10 000 and 100 000 peers (below), also running "
      "push-only, memberlist/Serf-style and GossipSub-style variants on the same engine.")
    w("")
    w("Simplifications, all of them:\n")
    w("1. Real-core runs start from converged tables (every table holds every record; the entries "
      "are shared objects) and measure one update at a time; the initial O(N^2) exchange is not "
      "simulated (the join experiment does simulate a newcomer's full sync).")
    w("2. No TLS or WebSocket: a link's `tls_peer_id` is what TLS would have proven; identities "
      "carry no certificate; byte counts add 26 B per frame for the WebSocket header and the TLS "
      "record overhead, not TCP/IP headers.")
    w("3. The duplicate filter is an exact two-generation set with the core's 60 s rotation "
      "instead of two 100 000-id Bloom filters (0.7 MB per peer); the Bloom's 1e-6 false "
      "positives are not modelled.")
    w("4. Message ids come from a seeded stream instead of `os.urandom` (`GossipCore(random_bytes=)`; "
      "the exact duplicate filter is passed as `dedup=`).")
    w("5. The lite model (10 000 and 100 000 peers) tracks ONE record over otherwise converged "
      "tables: per peer whether it holds the new version, per link 'known to hold it', pending "
      "digest pings and outstanding syncs; it applies the core's rules (the origin pushes to all "
      "links, or to its eager links when they are more than a quarter of the network, and "
      "schedules no ping; a push that changed the table goes on with TTL-1 to every link not "
      "known to hold it while D(D-1)^(hops+1) <= N, then to the eager links only; digest pings "
      "0.05 s plus a random 0-0.45 s after any table change to links other than the source not "
      "known to hold it and that have not named it in a ping of their own, coalesced, naming the "
      "change (`recent`); a receiver lacking the named record asks for it with a link-local "
      "PEER_REQUEST `peer` 0.25 s after the first ping naming it, if the push has not brought it "
      "by then (one ask whichever links named it; retries with one more naming link each round), "
      "and the answer carries that one record and clears the link's outstanding-sync mark; every "
      "heartbeat restarts its link's 30 s timer and a regular heartbeat due while a ping is "
      "pending goes instead of it; regular heartbeats at a random phase per link carry no "
      "`recent` and start a bucket sync on mismatch with the 5 s per-link rule; the answerer "
      "asks back when buckets differ and it has no sync outstanding). One record is tracked, so "
      "a ping never overflows `recent` (8), and the one-sync-at-a-time rule never applies; "
      "overlapping spreads and joins are measured with real cores instead (Bandwidth). "
      "A bucket sync answer is counted as the watched record's whole bucket (1 + (N-1)/256 "
      "records, none assumed known on the link: at 100 000 peers a link's 4096-entry `known` list "
      "cannot cover a bucket); the other records' bytes are counted, their effect (none: equal "
      "copies) is not simulated. `Variant(recent=False)` runs the rule before the change. No link "
      "churn during a spread; no Bloom false positives.")
    w("6. CPU: a peer's per-frame cost is a constant per frame received and per frame sent (the "
      "real benchmark's average), not per type; in the WAN runs each peer has its own CPU.")
    w("7. Graph: each peer dials 8 uniformly random peers (the real connection manager picks half "
      "by contact score, half at random; with fresh peers that is uniform).")
    w("8. Loss drops whole frames (a relay shedding load); TCP would retransmit instead.")
    w("")
    w("### Speed and memory of the simulator\n")
    w("| model | peers | simulated frames (events) per wall second | memory per simulated peer |")
    w("|---|---:|---:|---:|")
    if val:
        for v in val["runs"][:2]:
            i = v["real_info"]
            w(f"| real GossipCore | {v['n']:,} | {i['frames_per_s_wall']:,.0f} frames/s | "
              f"{fb(i['rss_per_peer_bytes'])} (converged table of {v['n']:,} records) |")
    if scale:
        for r in scale["runs"]:
            w(f"| lite | {r['n']:,} | {r['events_per_s']:,.0f} events/s | "
              f"{fb(r['rss_per_peer_bytes']) if r['rss_per_peer_bytes'] > 100 else 'below RSS resolution'} |")
    w("")
    w("Real-core memory grows with N^2 (every peer holds every record: ~100 B per table entry, "
      "shared record objects), so it is used up to a few thousand peers; the lite model holds "
      "O(links) per peer. One 100 000-peer lite run (graph + spread) takes ~10 s of wall time without the CPU model and ~25 s with it (the `scale` experiment: 6 such runs in ~2.5 min); `benchmarks/report.py --run` takes ~8-10 min in all.\n")
    w("Frame sizes used for byte counts (real codec, a real signed record with one repo, plus 26 B "
      "of WebSocket/TLS overhead): " + ", ".join(f"{k} {v:.0f} B" if isinstance(v, (int, float)) else k
                                                 for k, v in sizes.items()) + ".\n")
    w("## Recommended core changes (found by the simulator)\n")
    w("Done since the first report: digest pings name their changes (`recent`) and the receiver "
      "pulls exactly those records (was: 1. 'Pull exactly what changed'); `GossipCore` takes "
      "`random_bytes=` and `dedup=` (was: 3). Per update this cut the bytes per peer "
      + (", ".join(f"{fb(m['before_per_update'])} -> {fb(m['per_update'])} ({m['n']:,} peers)"
                   for m in model_rows if m["before_per_update"]) if model_rows else "")
      + " with the same time-to-100 % and duplicates. Still open, in order of the bytes at stake:\n")
    loadrun = ((bw or {}).get("before_identity_digests") or {}).get("refresh") or []
    loadtxt = (f"{loadrun[-1]['sync_answers_per_peer_per_s']:.0f} bucket syncs answered per peer per "
               f"second at {round(loadrun[-1]['refresh_rate_per_s'] * RECORD_REFRESH_INTERVAL):,} "
               "peers' 30-min refresh rate, before refreshes stopped changing digests") if loadrun else "the refresh-load runs"
    w("0. **Refreshes are not changes** (done: digests hash record identities, so a refresh "
      "starts no ping and no sync; the refresh interval grows with N; see 'Bandwidth'). Under "
      "overlapping refreshes this removed what items 1-3 below were mostly about; they still "
      "apply to real changes (joins, updates, leaves) in flight at once.")
    w("1. **Stop the sync ask-back loop** (done in the core after these runs: a sync request is asked back only if we started no sync on that link in the last 5 s; the lite model and these figures predate it). `_answer_sync` asks back whenever buckets differ and no "
      "sync of ours is outstanding on the link, and an answer that arrives clears that mark, so "
      "while changes are in flight two peers keep syncing each other every round trip (see "
      f"Bandwidth: {loadtxt}). "
      "Ask back only once per received sync that we did not start, or only for buckets the "
      "answer did not explain, and not again within the 5 s window of the last sync on the link.")
    w("2. **Do not fall back to a bucket sync when `recent` overflows.** With more than 8 pending "
      "changes the ping carries no `recent` and the receiver syncs whole buckets (each ~160 kB at "
      "100 000 peers). Split the pending changes over several pings of 8 (or raise the limit); a "
      "bucket sync should only be the 30 s backstop.")
    w("3. **Make the backstop a backstop.** A regular heartbeat that finds a mismatch while spreads "
      "are in flight (always, at 100 000 peers) starts a sync of whole buckets for records that "
      "pushes and pings deliver within a second. Compare digests only for changes older than a "
      "few seconds (e.g. keep a digest of the table as of 5 s ago), or let the bucket sync name "
      "record ids and versions instead of sending records, then pull the missing ones.")
    w("4. **Join with one sync at a time.** A newcomer's HELLO digest differs on all its links and "
      "it syncs the full table from each at once; sync with one link first and only compare "
      "digests on the others afterwards.")
    # The real-process cost figures come from benchmarks/costs.py (docs/costs.md).
    if os.path.exists(COSTS_DOC):
        text = costs_page().strip()
        w("")
        w(text if text.startswith("## ") else "## Real-process costs\n\n" + text)
    with open(DOC, "w") as f:
        f.write("\n".join(L) + "\n")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
