#!/usr/bin/env python3
"""Gossip convergence benchmark: peernet vs Serf on this machine.

For N peers on loopback and R rounds, one peer publishes a message (Serf: a
user event with coalescing off) and the time from sending until *every* peer
has it is measured ("time-to-100 %").  Per system it reports the median / p95
/ p99 over rounds, the rounds where some peer missed the message within the
timeout (``misses``: counted, never dropped), and duplicates per delivery.

* The Serf half lives in ``benchmarks/serf_reference.py`` (``run_serf``).
* The peernet half is :func:`run_peernet` below (TO BE WRITTEN).

Targets checked (printed and written, they do not change the exit code):

* ``peernet p99 <= 0.5 x Serf p99`` (and peernet had no misses), and
* ``peernet duplicates per delivery <= 3``.

Run with the project's venv::

    .venv/bin/python benchmarks/convergence.py                 # 30 peers, 20 rounds
    .venv/bin/python benchmarks/convergence.py --quick         # 10 peers, 5 rounds
    .venv/bin/python benchmarks/convergence.py --peers 100 --rounds 40
    .venv/bin/python benchmarks/convergence.py --skip-peernet  # Serf reference only

It writes ``<out>.json`` and ``<out>.md`` (default ``benchmarks/results/
convergence``).  Exit code 0 when every requested half was measured, 1 when a
half could not be measured (serf missing, peernet half not implemented or
failed); the other half's figures are still written.  Needs the Debian package
``serf`` (``apt-get install -y serf``); installs nothing itself.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_DIR = HERE / "results"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import serf_reference  # noqa: E402  (benchmarks/ is not a package)
from serf_reference import (  # noqa: E402,F401  (re-exported for run_peernet)
    DEFAULT_TIMEOUT_S, MAX_AGENTS, SerfUnavailable, percentile, run_serf,
    summarize_rounds,
)

P99_FACTOR = 0.5        # peernet p99 <= 0.5 x Serf p99
MAX_DUPLICATES = 3.0    # duplicates per delivery <= 3


# ==========================================================================
# peernet half  -- TO BE FILLED IN BY THE LEAD
# ==========================================================================

def run_peernet(n, rounds, *, timeout_s=DEFAULT_TIMEOUT_S, log=None):
    """Measure peernet's gossip convergence; return a dict like ``run_serf``.

    Must start ``n`` peernet peers on loopback (127.0.0.1, distinct ports, temp
    dirs, every process/peer stopped in a ``finally``), wait (bounded) until
    the overlay is formed, then run ``rounds`` rounds: one peer (round-robin)
    publishes a fresh message and the time from publishing until every one of
    the ``n`` peers has delivered it to its application is measured with one
    clock (``time.monotonic_ns`` if measured in one process).  A round where
    some peer has not delivered it within ``timeout_s`` is a miss.

    Required keys (times in seconds, ``None`` when not measured):

    * ``tool``: ``"peernet"``; ``n``; ``rounds``; ``timeout_s``
    * ``median_s``, ``p95_s``, ``p99_s``, ``max_s``: over the *completed*
      rounds' time-to-100 %: use ``summarize_rounds(t100_list)`` (``None``
      for a missed round) so both halves use the same percentile definition
      (linear interpolation, ``serf_reference.percentile``)
    * ``misses``: number of rounds where some peer missed the message within
      ``timeout_s``; ``missed_deliveries``: (peer, round) pairs missing
    * ``duplicates_per_delivery``: (copies of the benchmark messages received
      by all peers - deliveries) / deliveries, where a delivery is a peer
      getting a message for the first time (the publisher's own local
      delivery counts as a delivery and is not a received copy, as in
      run_serf)

    Optional keys shown when present: ``messages_per_round``,
    ``delivery_median_s``, ``delivery_p99_s``, ``join_s``, ``wall_s``,
    ``per_round`` (list of {round, sender, t100_s, received, missing}),
    ``version``, ``notes``.
    """
    raise NotImplementedError("run_peernet: the peernet half is not written yet")


# ==========================================================================
# report
# ==========================================================================

def package_versions():
    out = {}
    for dist in ("peernet", "twisted", "autobahn", "msgpack", "cryptography"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    info = serf_reference.serf_version()
    out["serf (deb)"] = info.get("debian_package")
    out["serf version"] = info.get("serf_version")
    return out


def machine_facts():
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "cpu_model": cpu_model, "mem_gib": mem_gib, "kernel": platform.release(),
            "python": platform.python_version(), "python_executable": sys.executable,
            "loadavg_before": list(os.getloadavg())}


ROWS = [
    # key, label, kind ("s" seconds, "n" count, "x" plain number)
    ("median_s", "time-to-100% median", "s"),
    ("p95_s", "time-to-100% p95", "s"),
    ("p99_s", "time-to-100% p99", "s"),
    ("max_s", "time-to-100% max", "s"),
    ("misses", "rounds with a miss", "n"),
    ("missed_deliveries", "missed deliveries", "n"),
    ("delivery_median_s", "per-delivery median", "s"),
    ("delivery_p99_s", "per-delivery p99", "s"),
    ("messages_per_round", "messages received per round", "x"),
    ("duplicates_per_delivery", "duplicates per delivery", "x"),
]


def _fmt(v, kind):
    if v is None:
        return "-"
    if kind == "s":
        return f"{v:.3f} s"
    if kind == "n":
        return str(int(v))
    return f"{v:.2f}"


def _ratio(p, s):
    if p is None or s is None or s == 0:
        return None
    return p / s


def comparison_rows(serf, peer):
    rows = []
    for key, label, kind in ROWS:
        sv = (serf or {}).get(key)
        pv = (peer or {}).get(key)
        r = _ratio(pv, sv) if kind != "n" else None
        rows.append({"key": key, "metric": label, "serf": sv, "peernet": pv,
                     "ratio": r, "kind": kind})
    return rows


def evaluate_targets(serf, peer):
    """The two targets: PASS / FAIL / N/A (not measured)."""
    out = []
    sp, pp = (serf or {}).get("p99_s"), (peer or {}).get("p99_s")
    if sp is None or pp is None:
        out.append({"target": f"peernet p99 <= {P99_FACTOR} x Serf p99",
                    "verdict": "N/A", "detail": "not measured"})
    else:
        limit = P99_FACTOR * sp
        misses = peer.get("misses") or 0
        ok = pp <= limit and misses == 0
        detail = f"peernet {pp:.3f} s vs limit {limit:.3f} s"
        if misses:
            detail += f"; peernet missed {misses} round(s) (a miss fails the target)"
        out.append({"target": f"peernet p99 <= {P99_FACTOR} x Serf p99",
                    "verdict": "PASS" if ok else "FAIL", "detail": detail})
    dpd = (peer or {}).get("duplicates_per_delivery")
    if dpd is None:
        out.append({"target": f"duplicates per delivery <= {MAX_DUPLICATES:g}",
                    "verdict": "N/A", "detail": "not measured"})
    else:
        sd = (serf or {}).get("duplicates_per_delivery")
        detail = f"peernet {dpd:.2f}" + (f" (Serf {sd:.2f})" if sd is not None else "")
        out.append({"target": f"duplicates per delivery <= {MAX_DUPLICATES:g}",
                    "verdict": "PASS" if dpd <= MAX_DUPLICATES else "FAIL",
                    "detail": detail})
    return out


def text_report(report):
    rows = report["comparison"]
    head = ["metric", "Serf", "peernet", "peernet/Serf"]
    body = [[r["metric"], _fmt(r["serf"], r["kind"]), _fmt(r["peernet"], r["kind"]),
             "-" if r["ratio"] is None else f"{r['ratio']:.2f}"] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = [f"convergence: {report['settings']['peers']} peers, "
           f"{report['settings']['rounds']} rounds, timeout "
           f"{report['settings']['timeout_s']} s ({report['mode']} mode)",
           line(head), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    out.append("")
    for t in report["targets"]:
        out.append(f"target {t['target']}: {t['verdict']}  ({t['detail']})")
    for side in ("serf", "peernet"):
        if report["errors"].get(side):
            out.append(f"{side}: NOT MEASURED: {report['errors'][side]}")
    return "\n".join(out)


def markdown_report(report):
    m, v, s = report["machine"], report["versions"], report["settings"]
    lines = [
        "# convergence results",
        "",
        f"- date: {report['date']} ({report['mode']} mode)",
        f"- machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB, "
        f"kernel {m['kernel']}, Python {m['python']}, load average before "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_before'])}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- settings: {s['peers']} peers on 127.0.0.1, {s['rounds']} rounds "
        f"(publisher round-robin), a round is missed if some peer lacks the message "
        f"after {s['timeout_s']} s; Serf: user events with coalescing off, profile "
        f"{s['serf_profile']}, reception via {s['serf_capture']}",
        "- time-to-100%: from sending until the last peer has the message; "
        "median/p95/p99 over completed rounds (linear interpolation), misses counted "
        "separately",
        "- duplicates per delivery: (copies received - deliveries) / deliveries",
        "",
        "| metric | Serf | peernet | peernet/Serf |",
        "|---|---:|---:|---:|",
    ]
    for r in report["comparison"]:
        lines.append(f"| {r['metric']} | {_fmt(r['serf'], r['kind'])} | "
                     f"{_fmt(r['peernet'], r['kind'])} | "
                     f"{'-' if r['ratio'] is None else format(r['ratio'], '.2f')} |")
    lines += ["", "| target | verdict | detail |", "|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['verdict']} | {t['detail']} |")
    errs = {k: e for k, e in report["errors"].items() if e}
    if errs:
        lines += ["", "## Not measured", ""]
        lines += [f"- {k}: {e}" for k, e in errs.items()]
    for side in ("serf", "peernet"):
        res = report.get(side) or {}
        rows = res.get("per_round") or []
        if not rows:
            continue
        lines += ["", f"## {side} per round", "", "| round | sender | t100 | received | missing |",
                  "|---:|---|---:|---:|---|"]
        for row in rows:
            t = row.get("t100_s")
            lines.append(f"| {row.get('round')} | {row.get('sender', '')} | "
                         f"{'MISS' if t is None else format(t, '.3f')} | "
                         f"{row.get('received', '')} | {', '.join(row.get('missing') or []) or '-'} |")
    if (report.get("serf") or {}).get("late_deliveries"):
        lines += ["", "Serf deliveries after the timeout: "
                  + ", ".join(f"round {d['round']} {d['agent']} {d['latency_s']} s"
                              for d in report["serf"]["late_deliveries"])]
    return "\n".join(lines) + "\n"


# ==========================================================================
# main
# ==========================================================================

def parse_args(argv):
    ap = argparse.ArgumentParser(description="peernet vs Serf gossip convergence")
    ap.add_argument("--peers", "-n", type=int, default=30,
                    help=f"peers / agents (1..{MAX_AGENTS}, default 30)")
    ap.add_argument("--rounds", "-r", type=int, default=20, help="rounds (default 20)")
    ap.add_argument("--quick", action="store_true", help="10 peers, 5 rounds")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                    help="per-round timeout in s; later counts as a miss (default 10)")
    ap.add_argument("--out", default=str(RESULTS_DIR / "convergence"),
                    help="output path without extension: writes .json and .md "
                         "(default benchmarks/results/convergence)")
    ap.add_argument("--serf-capture", default="rpc", choices=["rpc", "handler"],
                    help="how Serf receptions are timed (default rpc stream)")
    ap.add_argument("--serf-profile", default="lan", choices=["lan", "wan", "local"])
    ap.add_argument("--skip-serf", action="store_true")
    ap.add_argument("--skip-peernet", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.peers, args.rounds = 10, 5
    if not 1 <= args.peers <= MAX_AGENTS:
        ap.error(f"--peers must be 1..{MAX_AGENTS}")
    if not 1 <= args.rounds <= 10000:
        ap.error("--rounds must be 1..10000")
    out = Path(args.out)
    if out.suffix in (".json", ".md"):
        out = out.with_suffix("")
    args.out = out
    return args


def main(argv=None):
    args = parse_args(argv)

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def say(msg):
        print(msg, flush=True)

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "settings": {"peers": args.peers, "rounds": args.rounds,
                     "timeout_s": args.timeout, "serf_capture": args.serf_capture,
                     "serf_profile": args.serf_profile},
        "machine": machine_facts(),
        "versions": package_versions(),
        "serf": None, "peernet": None, "errors": {},
    }
    t0 = time.monotonic()
    try:
        if not args.skip_serf:
            say(f"== Serf: {args.peers} agents, {args.rounds} rounds")
            try:
                report["serf"] = run_serf(args.peers, args.rounds, timeout_s=args.timeout,
                                          profile=args.serf_profile,
                                          capture=args.serf_capture, log=say)
                say(serf_reference.format_summary(report["serf"]))
            except SerfUnavailable as exc:
                report["errors"]["serf"] = str(exc)
            except Exception as exc:  # noqa: BLE001 - reported, other half still runs
                report["errors"]["serf"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
        if not args.skip_peernet:
            say(f"== peernet: {args.peers} peers, {args.rounds} rounds")
            try:
                report["peernet"] = run_peernet(args.peers, args.rounds,
                                                timeout_s=args.timeout, log=say)
            except NotImplementedError as exc:
                report["errors"]["peernet"] = f"not implemented: {exc}"
            except Exception as exc:  # noqa: BLE001
                report["errors"]["peernet"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
    except KeyboardInterrupt:
        print("interrupted (every started process was stopped); nothing written",
              file=sys.stderr)
        return 130
    report["wall_s"] = round(time.monotonic() - t0, 1)
    report["comparison"] = comparison_rows(report["serf"], report["peernet"])
    report["targets"] = evaluate_targets(report["serf"], report["peernet"])

    print()
    print(text_report(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    md_path.write_text(markdown_report(report))
    print(f"wrote {json_path} and {md_path}")
    return 1 if any(report["errors"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
