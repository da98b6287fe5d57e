"""A real peernet bootstrap server on loopback, used the way peers use it.

Run: ``python -m peernet.demo [--state-dir DIR]`` (the README's first command).

It starts ``twist bootstrap`` as a subprocess with its SQLite database in the
state directory, registers three broadcasting sample peers with signed
records (their identities persist in the state directory), asks for a
discover sample as a silent peer would (no identity), shows what the server
refuses, unregisters one peer, and stops the server.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import time

from rich.console import Console
from rich.table import Table
from twisted.internet import defer, task

from peernet.errors import PeernetError
from peernet.identity import NodeIdentity

console = Console(highlight=False, width=max(110, Console().width))

SAMPLE_PEERS = [
    ("alice", "127.0.0.11", "alice@example.org"),
    ("bob", "127.0.0.12", "bob@example.org"),
    ("carol", "127.0.0.13", None),
]


def start_bootstrap(state_dir):
    """Start `twist bootstrap` on 127.0.0.1 (free port); return (process, url)."""
    log_path = os.path.join(state_dir, "bootstrap.log")
    offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    twist = os.path.join(os.path.dirname(sys.executable), "twist")
    command = [twist] if os.path.exists(twist) else [sys.executable, "-m", "twisted"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            command + ["--log-format=text", "bootstrap",
                       "--listen", "tcp:0:interface=127.0.0.1",
                       "--db", os.path.join(state_dir, "bootstrap.sqlite")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(log_path, "rb") as f:
            f.seek(offset)
            match = re.search(rb"listening on [\d.]+:(\d+)", f.read())
        if match:
            return proc, f"http://127.0.0.1:{int(match.group(1))}"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"demo: the bootstrap server did not start; see {log_path}")


def short(peer_id):
    return peer_id[:12] + "…"


async def run(reactor, state_dir, url):
    from peernet.bootstrap.client import BootstrapClient
    from peernet.records import make_record

    now_ms = int(reactor.seconds() * 1000)
    table = Table(title="1. Broadcasting peers register signed records")
    for col in ("peer", "peer_id", "address", "email", "expires in", "reannounce after"):
        table.add_column(col)
    clients = {}
    for name, host, email in SAMPLE_PEERS:
        identity = NodeIdentity.load_or_create(os.path.join(state_dir, f"peer-{name}"))
        client = BootstrapClient(reactor, url, identity)
        clients[name] = (identity, client)
        # Each run gets a higher version: a record never goes backwards.
        record = make_record(identity, [f"wss://{host}:8701/gossip"],
                             version=now_ms, issued_at_ms=now_ms)
        answer = await client.register(record, email=email)
        table.add_row(name, short(identity.peer_id), record["record"]["addresses"][0],
                      email or "-", f"{answer['expires_at'] - reactor.seconds():.0f} s",
                      f"{answer['reannounce_after']:.0f} s")
    console.print(table)

    silent = BootstrapClient(reactor, url)  # no identity: a silent peer
    answer = await silent.discover(limit=16)
    table = Table(title="2. A silent peer asks for a sample (no identity sent, nothing stored)")
    for col in ("peer_id", "addresses", "bootstrap?", "signature"):
        table.add_column(col)
    for entry in answer["peers"]:
        r = entry["record"]
        table.add_row(short(r["peer_id"]), ", ".join(r["addresses"]),
                      "yes" if r["is_bootstrap"] else "no", "verified")
    console.print(table)

    console.print("[bold]3. What the server refuses[/bold] (nothing is written):")
    mallory = NodeIdentity.generate()
    attempts = [
        ("a silent peer trying to register",
         BootstrapClient(reactor, url, mallory).register(
             make_record(mallory, ["wss://127.0.0.66:1/gossip"], is_broadcasting=False,
                         version=1, issued_at_ms=now_ms))),
        ("a second peer claiming alice's email",
         BootstrapClient(reactor, url, mallory).register(
             make_record(mallory, ["wss://127.0.0.66:1/gossip"], version=1,
                         issued_at_ms=now_ms), email="alice@example.org")),
        ("an older version of bob's record",
         clients["bob"][1].register(make_record(clients["bob"][0], ["wss://127.0.0.66:1/gossip"],
                                                version=1, issued_at_ms=now_ms))),
    ]
    for what, d in attempts:
        try:
            await d
            console.print(f"  - {what}: [red]accepted?![/red]")
        except PeernetError as e:
            console.print(f"  - {what}: [green]refused[/green] ({e})")

    await clients["carol"][1].unregister()
    answer = await silent.discover()
    names = {clients[n][0].peer_id: n for n in clients}
    left = sorted(names.get(e["record"]["peer_id"], "?") for e in answer["peers"])
    console.print(f"[bold]4. carol unregisters[/bold]: discover now returns {', '.join(left)}")
    health = await silent.health()
    console.print(
        f"[bold]5. Health[/bold]: {health['peers']} live peers, {health['emails']} bound "
        f"emails, schema v{health['schema_version']}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", default="demo-state",
                        help="where the database, logs and sample identities live")
    args = parser.parse_args(argv)
    state_dir = os.path.abspath(args.state_dir)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    proc, url = start_bootstrap(state_dir)
    console.print(f"[bold]twist bootstrap[/bold] (pid {proc.pid}) serving {url}, "
                  f"database {os.path.join(state_dir, 'bootstrap.sqlite')}")
    status = 0
    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor, state_dir, url)))
    except SystemExit as e:
        status = e.code or 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    console.print(f"bootstrap stopped; its log is {os.path.join(state_dir, 'bootstrap.log')}")
    return status


if __name__ == "__main__":
    sys.exit(main())
