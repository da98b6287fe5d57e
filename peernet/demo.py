"""A real peernet network on this machine's loopback, shown step by step.

Run: ``python -m peernet.demo [--state-dir DIR]`` (the README's first command).

Starts ``twist bootstrap``, three broadcasting ``twist peer`` processes
(127.0.0.10-12, one sharing a repo) and one silent peer dialling from
127.0.0.77, as separate processes.  Shows each peer's table, the repo's
announcement spreading, the silent peer finding it through the network and
downloading it with every file's SHA-256 checked, and that no other node holds
any trace of the silent peer; then shuts everything down cleanly.
"""

import argparse
import glob
import hashlib
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


def sample_repo(path):
    """A small sample repo to share (the same bytes on every run)."""
    files = {"README.txt": b"peernet demo repo\n" * 100,
             "clips/intro.bin": hashlib.sha256(b"intro").digest() * 200_000,
             "clips/outro.bin": hashlib.sha256(b"outro").digest() * 100_000}
    for rel, data in files.items():
        full = os.path.join(path, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
    return path


def run(state_dir):
    films = sample_repo(os.path.join(state_dir, "shared", "films"))
    peer_args = {"peer1": ["--share", f"films={films}"]}
    with DevNet(state_dir, broadcasting=3, silent=1, extra_by_name=peer_args) as net:
        console.print(f"[bold]Started[/bold] twist bootstrap at {net.bootstrap.url}, "
                      f"3 broadcasting peers on 127.0.0.10-12, a silent peer dialling from "
                      f"127.0.0.77 (all separate processes; state in {state_dir})")
        names = {p.peer_id(): p.name for p in net.peers}
        waited = net.wait(net.converged, 30)
        if waited is None:
            console.print("[red]the network did not converge in 30 s[/red]")
            return 1
        console.print(f"Every peer knows every broadcasting peer after {waited:.2f} s.\n")

        spread = net.wait(lambda: all(
            any(r["name"] == "films" for x in p.peers() for r in x["repos"])
            for p in net.peers), 20, interval=0.01)
        console.print(f"[bold]peer1 shares the directory {films} as repo 'films'[/bold] "
                      f"(hashed, a hybrid v1+v2 torrent, seeded, announced in a PEER_UPDATE): "
                      f"every peer holds it {spread:.2f} s after the network converged.\n")

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

        dest = os.path.join(state_dir, "silent-downloads")
        job = silent.api("POST", "get", {"repo": "films", "dest": dest})
        end = time.monotonic() + 60
        while job["state"] not in ("done", "failed") and time.monotonic() < end:
            time.sleep(0.1)
            job = next(j for j in silent.api("GET", "downloads")["downloads"]
                       if j["id"] == job["id"])
        table = Table(title=f"The silent peer downloads 'films' over BitTorrent: {job['state']}"
                            f" (every file's SHA-256 checked against the signed record)")
        for col in ("file", "bytes", "sha256"):
            table.add_column(col)
        for f in job["files"]:
            table.add_row(f["path"], f"{f['size']:,}", f["sha256"])
        console.print(table)
        if job["state"] != "done":
            console.print(f"[red]download failed: {job['error']}[/red]")
            return 1

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
