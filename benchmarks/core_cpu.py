#!/usr/bin/env python3
"""CPU per relayed PEER_UPDATE inside one GossipCore, no sockets (issue 9).

The in-process half of ``benchmarks/costs.py``'s CPU measurement: the same
workload (a table preloaded with M signed records, 8 ready links, M
PEER_UPDATE frames carrying a new version of each record, past the flood
phase, so relayed over the 3 eager links) fed straight into
``GossipCore.receive`` on a virtual clock, so the protocol's own cost is
seen without TLS, Autobahn or the reactor.  Reports
µs per message (process CPU time) and, with ``--profile``, the top functions
by cumulative time (cProfile).

    .venv/bin/python benchmarks/core_cpu.py [--messages 3000] [--rounds 3] [--profile]
"""

import argparse
import cProfile
import os
import pstats
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from peernet import constants  # noqa: E402
from peernet.gossip import codec  # noqa: E402
from peernet.gossip.codec import MessageType  # noqa: E402
from peernet.gossip.core import GossipCore  # noqa: E402
from peernet.gossip.memnet import HeapClock  # noqa: E402
from peernet.gossip.table import entry_from_wire  # noqa: E402
from peernet.identity import NodeIdentity  # noqa: E402

# the same keys, records and frames as costs.py's socket measurement
from costs import EAGER_SINKS, Key, build_frames, wire_record  # noqa: E402

START = 1_800_000_000.0


def setup(keys, links=8):
    clock = HeapClock(START)
    core = GossipCore(NodeIdentity.generate(), clock, random.Random(1), broadcasting=True,
                      addresses=["gossip://127.0.0.10:1"])
    ts = int(START * 1000)
    for key in keys:
        rb, rsig = wire_record(key, 1, ts)
        core.table.offer(entry_from_wire(rb, rsig, START), START)
    fields = {"id": os.urandom(16), "ts": ts, "versions": [constants.PROTOCOL_VERSION],
              "bc": False, "repos": 0, "digest": core.table.digest(), "n": len(core.table)}

    def hello(eager):
        return codec.encode(MessageType.HELLO, 0,
                            codec.encode_body(MessageType.HELLO, dict(fields, eager=eager)))

    # As in costs.py: past the flood phase the push goes over the eager links,
    # EAGER_SINKS links that marked themselves eager plus one outbound link of
    # ours (its mark set here as the connection manager's dial sets it).
    for i in range(links):
        outbound = i == links - 1
        core.link_opened(i, outbound=outbound, tls_peer_id=None)
        if outbound:
            core.links[i].eager_local = True
        core.receive(i, hello(1 <= i <= EAGER_SINKS))
    return clock, core


def run(core, clock, frames):
    relayed = 0
    t0 = time.process_time()
    for frame in frames:
        clock.advance(0.002)
        for a in core.receive(0, frame):
            relayed += type(a).__name__ == "Send"
        if core.next_wakeup() <= clock.seconds():
            core.tick()
    return (time.process_time() - t0) / len(frames) * 1e6, relayed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    keys = [Key("core_cpu", i) for i in range(args.messages)]
    clock, core = setup(keys)
    results = []
    for r in range(args.rounds + (1 if args.profile else 0)):
        frames = build_frames(keys, 2 + r, int(clock.seconds() * 1000))
        if args.profile and r == args.rounds:
            prof = cProfile.Profile()
            prof.enable()
            run(core, clock, frames)
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
            break
        us, relayed = run(core, clock, frames)
        if relayed < 3 * len(frames):
            raise SystemExit(f"only {relayed} relays for {len(frames)} frames")
        results.append(us)
        print(f"round {r + 1}: {us:.1f} us per message ({relayed} sends)")
    results.sort()
    print(f"median {results[len(results) // 2]:.1f} us per relayed PEER_UPDATE")


if __name__ == "__main__":
    main()
