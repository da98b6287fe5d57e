"""A real peernet network on this machine's loopback, shown step by step.

Run: ``python -m peernet.demo [--state-dir DIR]`` (the README's first command).

Starts ``twist bootstrap``, three broadcasting ``twist peer`` processes
(127.0.0.10-12) and one silent peer dialling from 127.0.0.77, as separate
processes.  Shows each peer's table, a repo announcement spreading, the
silent peer finding it through the network, and that no other node holds any
trace of the silent peer; then shuts everything down cleanly.
"""

import argparse
import glob
import json
import os
import sys
import time
import urllib.request

from rich.console import Console
from rich.table import Table

from peernet.devnet import DevNet

console = Console(highlight=False, width=max(110, Console().width))


def short(peer_id):
    return peer_id[:10] + "…"


def traces(paths, needles):
    """(path, needle) pairs where a needle occurs in a file's bytes."""
    found = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        found += [(path, n) for n in needles if n.encode() in data]
    return found


def run(state_dir):
    with DevNet(state_dir, broadcasting=3, silent=1) as net:
        console.print(f"[bold]Started[/bold] twist bootstrap at {net.bootstrap.url}, "
                      f"3 broadcasting peers on 127.0.0.10-12, a silent peer dialling from "
                      f"127.0.0.77 (all separate processes; state in {state_dir})")
        names = {p.peer_id(): p.name for p in net.peers}
        waited = net.wait(net.converged, 30)
        if waited is None:
            console.print("[red]the network did not converge in 30 s[/red]")
            return 1
        console.print(f"Every peer knows every broadcasting peer after {waited:.2f} s.\n")

        peer1 = net.broadcasters[0]
        version = peer1.set_repos([{"name": "films", "size": 734003200, "files": 12}])
        spread = net.wait(lambda: all(
            any(x["peer_id"] == peer1.peer_id() and x["version"] >= version for x in p.peers())
            for p in net.peers), 10, interval=0.01)
        console.print(f"[bold]peer1 announces a repo 'films'[/bold] (PEER_UPDATE): every peer holds "
                      f"it {spread * 1000:.0f} ms later.\n")

        table = Table(title="Each peer's view (links and known broadcasting peers)")
        for col in ("peer", "kind", "peer_id", "links out/in", "knows", "repos seen"):
            table.add_column(col)
        for p in net.peers:
            st = p.status()
            known = [x for x in p.peers() if x["broadcasting"]]
            repos = sorted({r["name"] for x in known for r in x["repos"]})
            table.add_row(p.name, "broadcasting" if st["broadcasting"] else "silent",
                          short(st["peer_id"]),
                          f"{st['links']['outbound']}/{st['links']['inbound']}",
                          ", ".join(sorted(names.get(x["peer_id"], "?") for x in known)),
                          ", ".join(repos) or "-")
        console.print(table)

        silent = net.silent[0]
        results = silent.search(repo="films", network_only=True)
        table = Table(title="The silent peer asks the network: who has 'films'? (PEER_REQUEST)")
        for col in ("answer", "peer_id", "address", "repos", "signature"):
            table.add_column(col)
        from peernet.records import verify_signed_record

        for r in results:
            rec = verify_signed_record(r)
            table.add_row(names.get(rec["peer_id"], "?"), short(rec["peer_id"]),
                          ", ".join(rec["addresses"]),
                          ", ".join(x["name"] for x in rec.get("repos", [])), "verified")
        console.print(table)

        with urllib.request.urlopen(net.bootstrap.url + "/api/bootstrap/discover", timeout=10) as r:
            listed = [names.get(p["record"]["peer_id"], "?") for p in json.load(r)["peers"]]
        console.print(f"The bootstrap server lists: {', '.join(sorted(listed))} "
                      "(never the silent peer).")

        silent_id = silent.peer_id()
        for p in net.broadcasters:
            p.stop()  # clean shutdown: snapshot written, bootstrap unregistered
        with urllib.request.urlopen(net.bootstrap.url + "/api/bootstrap/health", timeout=10) as r:
            left = json.load(r)["peers"]
        console.print(f"Broadcasting peers stopped cleanly; the bootstrap now lists {left} peers.")
        others = [p.log_path for p in net.broadcasters] + [net.bootstrap.log_path]
        for p in net.broadcasters:
            others += glob.glob(os.path.join(p.state_dir, "*"))
        others += glob.glob(net.bootstrap.db_path + "*")
        found = traces(others, ["127.0.0.77", silent_id])
        verdict = "[green]none[/green]" if not found else f"[red]{found}[/red]"
        console.print(f"[bold]Privacy check[/bold]: traces of the silent peer (127.0.0.77, "
                      f"{short(silent_id)}) in the other {len(others)} logs, snapshots and "
                      f"databases: {verdict}")
        return 0 if not found and results else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", default="demo-state",
                        help="where logs, databases, identities and snapshots go")
    args = parser.parse_args(argv)
    state_dir = os.path.abspath(args.state_dir)
    started = time.monotonic()
    status = run(state_dir)
    console.print(f"All processes stopped ({time.monotonic() - started:.1f} s in all).")
    return status


if __name__ == "__main__":
    sys.exit(main())
